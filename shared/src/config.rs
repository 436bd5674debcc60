//! The configuration schema: services, routes, targets, merge, clients. Stored as settings today and as
//! KV documents once configuration is dynamic; the same types and the same [`ConfigSpec::validate`]
//! guard both.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::caching::{CacheSpec, LateSpec};
pub use crate::client::{ClientSpec, KeySpec, RateSpec, MAX_DESCRIPTION, MAX_KEYS, MAX_RATE};
use crate::compose::Node;
pub use crate::resilience::{BreakerSpec, HedgeAfter, HedgeSpec, RetrySpec};
pub use crate::upstream::{SecretSource, UpstreamSpec};
use crate::{validate, Error};

/// A whole configuration: what a gateway instance runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Internal services by name; each is reached on `busgate.svc.<name>`.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Routes by name.
    pub routes: BTreeMap<String, RouteSpec>,
    /// Clients of the public API by name (absent in older documents: none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clients: BTreeMap<String, ClientSpec>,
}

/// An internal service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSpec {
    /// How long a gather waits for this service unless the target says otherwise.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Free text for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The HTTP service behind it, called by `busgate-worker adapters`; absent: served some
    /// other way (a single-service adapter, a native NATS service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSpec>,
    /// Replies kept and served again (`crate::caching`); absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    /// Concurrent identical requests share one publish (on unless `false`).
    #[serde(skip_serializing_if = "crate::caching::is_coalesce_default")]
    pub coalesce: bool,
    /// Its circuit breaker; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSpec>,
    /// Its retries; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Its hedged requests; absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgeSpec>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            timeout: Duration::from_millis(800),
            description: String::new(),
            upstream: None,
            cache: None,
            coalesce: crate::caching::coalesce_default(),
            breaker: None,
            retry: None,
            hedge: None,
        }
    }
}

/// A route: which HTTP requests it answers, which services it asks, how it merges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// The HTTP requests this route answers.
    pub bindings: Vec<HttpBinding>,
    /// The whole gather ends by then, whatever the targets say.
    #[serde(with = "humantime_serde", default = "default_deadline")]
    pub deadline: Duration,
    /// The services asked, in merge order.
    pub targets: Vec<TargetSpec>,
    /// How the answers are merged.
    #[serde(default)]
    pub merge: MergeSpec,
    /// The `operation` sent to services; the route name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Keeps a partial answer's late sources listened to after the answer (`crate::caching`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late: Option<LateSpec>,
}

fn default_deadline() -> Duration {
    Duration::from_secs(1)
}

/// HTTP methods a binding may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET`: the `order_id` comes from the path.
    Get,
    /// `POST`: the `order_id` comes from the path or from the JSON body field `order_id`.
    Post,
}

impl HttpMethod {
    /// The method's name as HTTP spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
        }
    }
}

/// One HTTP method and path that a route answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBinding {
    /// The method.
    pub method: HttpMethod,
    /// The path: literal segments and at most one `{order_id}` segment.
    pub path: String,
}

/// One segment of a binding's path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// Must equal this text.
    Literal(String),
    /// Captures the `order_id`.
    OrderId,
}

/// The placeholder for the order id in a path.
pub const ORDER_ID_PLACEHOLDER: &str = "{order_id}";

/// Paths the gateway serves itself; no route may bind below them.
pub const RESERVED_PATH_PREFIXES: &[&str] = &["/health", "/metrics", "/api/requests"];

impl HttpBinding {
    /// Parses the path into segments, checking its syntax.
    pub fn segments(&self, field: &str) -> Result<Vec<Segment>, Error> {
        let path = &self.path;
        let Some(rest) = path.strip_prefix('/') else {
            return Err(Error::invalid(field, "must start with /"));
        };
        if path.len() > 256 {
            return Err(Error::invalid(field, "longer than 256 characters"));
        }
        let mut segments = Vec::new();
        for seg in rest.split('/') {
            if seg == ORDER_ID_PLACEHOLDER {
                if segments.contains(&Segment::OrderId) {
                    return Err(Error::invalid(field, "{order_id} may appear only once"));
                }
                segments.push(Segment::OrderId);
            } else if seg.is_empty() {
                return Err(Error::invalid(field, "has an empty segment"));
            } else if seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
            {
                segments.push(Segment::Literal(seg.to_owned()));
            } else {
                return Err(Error::invalid(
                    field,
                    format!("segment {seg:?} may use only A-Z a-z 0-9 - _ . ~ or be {{order_id}}"),
                ));
            }
        }
        if self.method == HttpMethod::Get && !segments.contains(&Segment::OrderId) {
            return Err(Error::invalid(
                field,
                "a GET binding needs {order_id} in its path",
            ));
        }
        for reserved in RESERVED_PATH_PREFIXES {
            if path == reserved || path.starts_with(&format!("{reserved}/")) {
                return Err(Error::invalid(
                    field,
                    format!("{reserved} is served by the gateway itself"),
                ));
            }
        }
        Ok(segments)
    }
}

/// A service that a route asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The service's name.
    pub service: String,
    /// A required target that fails fails the request; an optional one leaves `complete: false`.
    #[serde(default = "yes")]
    pub required: bool,
    /// Overrides the service's timeout; never more than the route's deadline.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// When the target is asked; always when absent. Every condition given must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Only these top-level fields of the source's data are kept (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These top-level fields of the source's data are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Top-level fields renamed (`from = "to"`), after `allow`/`deny`, before the merge.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// The target's name in data, `sources`, `needs` and pointers (the service's when absent):
    /// one service asked twice takes two names. See [`crate::compose`].
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Names of targets whose answers this one waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Attribute name → JSON Pointer into the data gathered so far (`/service1/customer_id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub with: BTreeMap<String, String>,
}

impl TargetSpec {
    /// A required target with no conditions or transforms.
    pub fn new(service: impl Into<String>, required: bool) -> Self {
        TargetSpec {
            service: service.into(),
            required,
            timeout: None,
            when: None,
            allow: Vec::new(),
            deny: Vec::new(),
            rename: BTreeMap::new(),
            alias: None,
            needs: Vec::new(),
            with: BTreeMap::new(),
        }
    }
}

/// Conditions that decide whether a target is asked for a request. All given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Condition {
    /// A request header must equal a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderEquals>,
    /// The client (its name) must be one of these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<String>>,
    /// The `order_id` must match this regular expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id_matches: Option<String>,
    /// A stable share of order ids, 0 to 100 (hash-based: the same order id always gets the
    /// same decision), for a gradual rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// A value of the data gathered so far (see [`crate::compose::FieldCondition`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<crate::compose::FieldCondition>,
}

/// `header: { name, equals }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEquals {
    /// Header name (case-insensitive).
    pub name: String,
    /// The value it must have.
    pub equals: String,
}

fn yes() -> bool {
    true
}

/// How replies are merged into one answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeSpec {
    /// The strategy.
    pub strategy: MergeStrategy,
    /// For `deep`: services from highest to lowest priority; a field present in several
    /// sources takes the value of the highest. Targets not listed follow in route order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub priority: Vec<String>,
}

/// Merge strategies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeStrategy {
    /// Each source's data under its service name: `{"service1":{…},"service2":{…}}`.
    #[default]
    Namespace,
    /// Objects merged into one, recursively, in a declared priority order (deterministic:
    /// never "the slowest wins").
    Deep,
}

impl TargetSpec {
    /// The target's name: its alias, or its service's name.
    pub fn name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.service)
    }

    /// The target as the graph's checks see it.
    pub fn node<'a>(&'a self, placeholders: &'a [String]) -> Node<'a> {
        Node {
            name: self.name(),
            alias: self.alias.as_deref(),
            service: &self.service,
            needs: &self.needs,
            with: &self.with,
            field: self.when.as_ref().and_then(|w| w.field.as_ref()),
            placeholders,
        }
    }
}

impl TargetSpec {
    fn validate_transforms(&self, field: &str) -> Result<(), Error> {
        if !self.allow.is_empty() && !self.deny.is_empty() {
            return Err(Error::invalid(
                format!("{field}.deny"),
                "use allow or deny, not both",
            ));
        }
        for (list, name) in [(&self.allow, "allow"), (&self.deny, "deny")] {
            if let Some(i) = list.iter().position(|f| f.is_empty() || f.len() > 128) {
                return Err(Error::invalid(
                    format!("{field}.{name}[{i}]"),
                    "must be 1 to 128 characters",
                ));
            }
        }
        let mut targets = BTreeSet::new();
        for (from, to) in &self.rename {
            if from.is_empty() || to.is_empty() || to.len() > 128 {
                return Err(Error::invalid(
                    format!("{field}.rename.{from}"),
                    "names must be 1 to 128 characters",
                ));
            }
            if !targets.insert(to) {
                return Err(Error::invalid(
                    format!("{field}.rename.{from}"),
                    format!("two fields renamed to {to:?}"),
                ));
            }
        }
        Ok(())
    }
}

impl Condition {
    fn validate(&self, field: &str) -> Result<(), Error> {
        if let Some(h) = &self.header {
            let ok = !h.name.is_empty()
                && h.name.len() <= 64
                && h.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(Error::invalid(
                    format!("{field}.header.name"),
                    "not a header name",
                ));
            }
        }
        if let Some(clients) = &self.clients {
            for (i, client) in clients.iter().enumerate() {
                validate::name(&format!("{field}.clients[{i}]"), client)?;
            }
        }
        if let Some(pattern) = &self.order_id_matches {
            if pattern.len() > 256 {
                return Err(Error::invalid(
                    format!("{field}.order_id_matches"),
                    "longer than 256 characters",
                ));
            }
            regex::Regex::new(pattern).map_err(|e| {
                Error::invalid(
                    format!("{field}.order_id_matches"),
                    format!("not a regex: {e}"),
                )
            })?;
        }
        if let Some(p) = self.percent {
            if !(0.0..=100.0).contains(&p) {
                return Err(Error::invalid(
                    format!("{field}.percent"),
                    "must be between 0 and 100",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `order_id` falls in the first `percent` % of the stable hash space of
/// `(salt, order_id)`: the same order id always gets the same decision, and the shares of
/// different targets (salted with their names) are independent.
pub fn in_rollout(salt: &str, order_id: &str, percent: f64) -> bool {
    let h = salt
        .bytes()
        .chain(std::iter::once(0))
        .chain(order_id.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    // Finalize (murmur3 fmix64) so that nearby ids spread evenly.
    let mut x = h;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    let bucket = x % 10_000;
    (bucket as f64) < percent * 100.0
}

/// The longest deadline a route may have.
pub const MAX_DEADLINE: Duration = Duration::from_secs(300);

impl ConfigSpec {
    /// The built-in configuration: `service1`, `service2` and the `order` route
    /// (`POST /api/order`, `GET /api/orders/{order_id}`; service1 required, service2 optional).
    pub fn builtin() -> Self {
        let service = ServiceSpec::default();
        let services = BTreeMap::from([
            ("service1".to_owned(), service.clone()),
            ("service2".to_owned(), service),
        ]);
        let order = RouteSpec {
            bindings: vec![
                HttpBinding {
                    method: HttpMethod::Post,
                    path: "/api/order".into(),
                },
                HttpBinding {
                    method: HttpMethod::Get,
                    path: "/api/orders/{order_id}".into(),
                },
            ],
            deadline: default_deadline(),
            targets: vec![
                TargetSpec::new("service1", true),
                TargetSpec::new("service2", false),
            ],
            merge: MergeSpec::default(),
            operation: None,
            late: None,
        };
        ConfigSpec {
            services,
            routes: BTreeMap::from([("order".to_owned(), order)]),
            clients: BTreeMap::new(),
        }
    }

    /// Checks the whole configuration; the error names the first offending field.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, svc) in &self.services {
            validate::name(&format!("services.{name}"), name)?;
            if svc.description.len() > MAX_DESCRIPTION {
                return Err(Error::invalid(
                    format!("services.{name}.description"),
                    format!("longer than {MAX_DESCRIPTION} characters"),
                ));
            }
            if svc.timeout.is_zero() || svc.timeout > MAX_DEADLINE {
                return Err(Error::invalid(
                    format!("services.{name}.timeout"),
                    "must be between 1ms and 300s",
                ));
            }
            if let Some(upstream) = &svc.upstream {
                upstream.validate(&format!("services.{name}.upstream"))?;
            }
            if let Some(cache) = &svc.cache {
                cache.validate(&format!("services.{name}.cache"))?;
            }
            if let Some(breaker) = &svc.breaker {
                breaker.validate(&format!("services.{name}.breaker"))?;
            }
            if let Some(retry) = &svc.retry {
                retry.validate(&format!("services.{name}.retry"))?;
            }
            if let Some(hedge) = &svc.hedge {
                hedge.validate(&format!("services.{name}.hedge"))?;
            }
        }
        let mut bound = BTreeSet::new();
        for (name, route) in &self.routes {
            let at = format!("routes.{name}");
            validate::name(&at, name)?;
            if route.deadline.is_zero() || route.deadline > MAX_DEADLINE {
                return Err(Error::invalid(
                    format!("{at}.deadline"),
                    "must be between 1ms and 300s",
                ));
            }
            if route.bindings.is_empty() {
                return Err(Error::invalid(
                    format!("{at}.bindings"),
                    "needs at least one binding",
                ));
            }
            for (i, binding) in route.bindings.iter().enumerate() {
                let field = format!("{at}.bindings[{i}].path");
                let segments = binding.segments(&field)?;
                if !bound.insert((binding.method, segments)) {
                    return Err(Error::invalid(
                        field,
                        format!(
                            "{} {} is bound by another route or binding",
                            binding.method.as_str(),
                            binding.path
                        ),
                    ));
                }
            }
            if route.targets.is_empty() {
                return Err(Error::invalid(
                    format!("{at}.targets"),
                    "needs at least one target",
                ));
            }
            for (i, target) in route.targets.iter().enumerate() {
                let field = format!("{at}.targets[{i}]");
                let Some(service) = self.services.get(&target.service) else {
                    return Err(Error::invalid(
                        format!("{field}.service"),
                        format!("no service named {:?}", target.service),
                    ));
                };
                let timeout = target.timeout.unwrap_or(service.timeout);
                if target.timeout.is_some_and(|t| t.is_zero()) {
                    return Err(Error::invalid(
                        format!("{field}.timeout"),
                        "must be at least 1ms",
                    ));
                }
                if target.timeout.is_some() && timeout > route.deadline {
                    return Err(Error::invalid(
                        format!("{field}.timeout"),
                        "must not exceed the route's deadline",
                    ));
                }
                target.validate_transforms(&field)?;
                if let Some(when) = &target.when {
                    when.validate(&format!("{field}.when"))?;
                }
            }
            let placeholders: Vec<Vec<String>> = (route.targets.iter())
                .map(|t| {
                    crate::compose::placeholders(
                        self.services
                            .get(&t.service)
                            .and_then(|s| s.upstream.as_ref()),
                    )
                })
                .collect();
            let nodes: Vec<Node<'_>> = route
                .targets
                .iter()
                .zip(&placeholders)
                .map(|(t, p)| t.node(p))
                .collect();
            crate::compose::validate_route(&at, &nodes)?;
            for (i, service) in route.merge.priority.iter().enumerate() {
                if !route.targets.iter().any(|t| t.name() == service) {
                    return Err(Error::invalid(
                        format!("{at}.merge.priority[{i}]"),
                        format!("{service:?} is not a target of this route"),
                    ));
                }
            }
            if let Some(op) = &route.operation {
                validate::name(&format!("{at}.operation"), op)?;
            }
            if let Some(late) = &route.late {
                late.validate(&format!("{at}.late"))?;
            }
        }
        let mut hashes = BTreeSet::new();
        for (name, client) in &self.clients {
            let at = format!("clients.{name}");
            validate::name(&at, name)?;
            client.validate(&at, |route| self.routes.contains_key(route))?;
            for (i, key) in client.keys.iter().enumerate() {
                if !hashes.insert(&key.hash) {
                    return Err(Error::invalid(
                        format!("{at}.keys[{i}].hash"),
                        "the same key is given to another client or twice",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<(), Error>) -> String {
        match result {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn builtin_is_valid() {
        ConfigSpec::builtin()
            .validate()
            .expect("builtin config is valid");
    }

    #[test]
    fn unknown_target_service_is_named() {
        let mut spec = ConfigSpec::builtin();
        spec.routes.get_mut("order").expect("order").targets[1].service = "nope".into();
        assert_eq!(field_of(spec.validate()), "routes.order.targets[1].service");
    }

    #[test]
    fn duplicate_binding_is_refused() {
        let mut spec = ConfigSpec::builtin();
        let mut other = spec.routes["order"].clone();
        other.bindings.truncate(1);
        spec.routes.insert("again".into(), other);
        assert_eq!(field_of(spec.validate()), "routes.order.bindings[0].path");
    }

    #[test]
    fn target_timeout_cannot_exceed_deadline() {
        let mut spec = ConfigSpec::builtin();
        spec.routes.get_mut("order").expect("order").targets[0].timeout =
            Some(Duration::from_secs(2));
        assert_eq!(field_of(spec.validate()), "routes.order.targets[0].timeout");
    }

    #[test]
    fn rollout_shares_are_close_to_the_setting_and_stable() {
        for percent in [0.0, 10.0, 25.0, 50.0, 90.0, 100.0] {
            let hits = (0..10_000)
                .filter(|i| in_rollout("service2", &format!("ord-{i}"), percent))
                .count();
            let share = hits as f64 / 100.0;
            assert!((share - percent).abs() <= 2.0, "{percent}%: got {share}%");
        }
        assert!((0..100).all(|i| {
            let id = format!("A{i}");
            in_rollout("s", &id, 33.0) == in_rollout("s", &id, 33.0)
        }));
    }

    #[test]
    fn conditions_and_transforms_are_checked() {
        let mut spec = ConfigSpec::builtin();
        let target = &mut spec.routes.get_mut("order").expect("order").targets[1];
        target.when = Some(Condition {
            percent: Some(150.0),
            ..Default::default()
        });
        assert_eq!(
            field_of(spec.validate()),
            "routes.order.targets[1].when.percent"
        );
        let target = &mut spec.routes.get_mut("order").expect("order").targets[1];
        target.when = Some(Condition {
            order_id_matches: Some("([".into()),
            ..Default::default()
        });
        assert_eq!(
            field_of(spec.validate()),
            "routes.order.targets[1].when.order_id_matches"
        );
        let target = &mut spec.routes.get_mut("order").expect("order").targets[1];
        target.when = None;
        target.allow = vec!["a".into()];
        target.deny = vec!["b".into()];
        assert_eq!(field_of(spec.validate()), "routes.order.targets[1].deny");
        let route = spec.routes.get_mut("order").expect("order");
        route.targets[1].deny.clear();
        route.merge.priority = vec!["nope".into()];
        assert_eq!(field_of(spec.validate()), "routes.order.merge.priority[0]");
    }

    #[test]
    fn clients_are_checked() {
        let mut spec = ConfigSpec::builtin();
        let key = |id: &str, hash: &str| KeySpec {
            id: id.into(),
            hash: hash.into(),
            created: String::new(),
        };
        let good = "a".repeat(64);
        spec.clients.insert(
            "acme".into(),
            ClientSpec {
                routes: vec!["order".into()],
                rate: Some(RateSpec {
                    per_second: 5,
                    burst: None,
                }),
                keys: vec![key("k1", &good)],
                ..Default::default()
            },
        );
        spec.validate().expect("valid");
        fn client(spec: &mut ConfigSpec) -> &mut ClientSpec {
            spec.clients.get_mut("acme").expect("acme")
        }
        client(&mut spec).routes = vec!["nope".into()];
        assert_eq!(field_of(spec.validate()), "clients.acme.routes[0]");
        client(&mut spec).routes.clear();
        client(&mut spec).rate = Some(RateSpec {
            per_second: 0,
            burst: None,
        });
        assert_eq!(field_of(spec.validate()), "clients.acme.rate.per_second");
        client(&mut spec).rate = None;
        client(&mut spec).max_pending = Some(0);
        assert_eq!(field_of(spec.validate()), "clients.acme.max_pending");
        client(&mut spec).max_pending = None;
        client(&mut spec).keys.push(key("k2", "XYZ"));
        assert_eq!(field_of(spec.validate()), "clients.acme.keys[1].hash");
        client(&mut spec).keys[1] = key("k2", &good);
        spec.clients.insert("other".into(), ClientSpec::default());
        assert_eq!(field_of(spec.validate()), "clients.acme.keys[1].hash");
        client(&mut spec).keys.pop();
        spec.clients.get_mut("other").expect("other").keys = vec![key("k1", &good)];
        assert_eq!(field_of(spec.validate()), "clients.other.keys[0].hash");
    }

    #[test]
    fn paths_are_checked() {
        let b = |method, path: &str| HttpBinding {
            method,
            path: path.into(),
        };
        assert_eq!(
            b(HttpMethod::Get, "/api/orders/{order_id}")
                .segments("p")
                .expect("ok"),
            vec![
                Segment::Literal("api".into()),
                Segment::Literal("orders".into()),
                Segment::OrderId
            ]
        );
        assert!(b(HttpMethod::Post, "/api/order").segments("p").is_ok());
        for bad in [
            "api",
            "/a//b",
            "/a/{id}",
            "/a/{order_id}/{order_id}",
            "/health/x",
            "/metrics",
            "/a/b c",
        ] {
            assert!(b(HttpMethod::Post, bad).segments("p").is_err(), "{bad}");
        }
        assert!(b(HttpMethod::Get, "/api/order").segments("p").is_err());
    }

    #[test]
    fn routes_parse_from_toml_shaped_json_with_human_durations() {
        let spec: RouteSpec = serde_json::from_value(serde_json::json!({
            "bindings": [{"method": "GET", "path": "/x/{order_id}"}],
            "deadline": "250ms",
            "targets": [{"service": "a", "timeout": "100ms"}, {"service": "b", "required": false}]
        }))
        .expect("parse");
        assert_eq!(spec.deadline, Duration::from_millis(250));
        assert!(spec.targets[0].required);
        assert!(!spec.targets[1].required);
        assert_eq!(spec.targets[0].timeout, Some(Duration::from_millis(100)));
        let unknown = serde_json::from_value::<RouteSpec>(serde_json::json!({
            "bindings": [], "targets": [], "colour": "red"
        }));
        assert!(unknown.is_err());
    }
}
