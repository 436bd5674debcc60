//! The compiled configuration a request runs on, and the lookup of a route by method and path.
//!
//! A [`Snapshot`] is immutable; the gateway holds the current one in an `ArcSwap` and a request
//! loads it once, so a request runs on one configuration from start to end.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use busgate_shared::config::{ConfigSpec, HttpMethod, MergeStrategy, Segment};
use busgate_shared::{subject, Error};

use crate::config::clients::Clients;
use crate::metrics::Name;
use crate::resilience::Guard;

/// A validated, compiled configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// What it was compiled from.
    pub spec: ConfigSpec,
    /// The clients, with the index of their keys.
    pub clients: Clients,
    bindings: Vec<Binding>,
    routes: std::collections::BTreeMap<String, Arc<Route>>,
    /// The guards of the services that have a breaker, retries or hedging, by service.
    guards: std::collections::BTreeMap<String, Arc<Guard>>,
}

#[derive(Debug)]
struct Binding {
    method: HttpMethod,
    segments: Vec<Segment>,
    route: Arc<Route>,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// The route's name.
    pub name: Name,
    /// The `operation` sent to services.
    pub operation: String,
    /// The whole gather ends by then.
    pub deadline: Duration,
    /// The services asked, in merge order.
    pub targets: Vec<Target>,
    /// How replies are merged.
    pub merge: MergeStrategy,
    /// For `deep`: target indices from highest to lowest priority.
    pub priority: Vec<usize>,
    /// How long a partial answer's late sources are still listened to (`late.grace`).
    pub late: Option<Duration>,
    /// Replies beyond one per target that retries and hedges may bring (0: no target has a
    /// guard).
    pub extra_replies: usize,
    /// The graph when a target waits for others; `None`: every target is asked at once.
    pub graph: Option<Box<crate::config::graph::Graph>>,
}

/// A compiled target.
#[derive(Debug)]
pub struct Target {
    /// The service's name.
    pub service: Name,
    /// The target's name in data and `sources`: its `as` alias, or the service's name.
    pub name: Name,
    /// `busgate.svc.<service>`.
    pub subject: Box<str>,
    /// Whether its failure fails the request.
    pub required: bool,
    /// How long the gather waits for it (never beyond the route's deadline).
    pub timeout: Duration,
    /// When it is asked; always when `None`.
    pub when: Option<When>,
    /// What is done to its data before the merge; nothing when `None`.
    pub transform: Option<Transform>,
    /// The service's cache; none when `None`.
    pub cache: Option<busgate_shared::config::CacheSpec>,
    /// Whether concurrent identical requests to it share one publish.
    pub coalesce: bool,
    /// Its service's breaker, retries and hedging; `None` (no lock, no cost) without them.
    pub guard: Option<Arc<Guard>>,
}

/// A compiled [`busgate_shared::config::Condition`].
#[derive(Debug)]
pub struct When {
    /// `(lower-case name, value)` the request header must have.
    pub header: Option<(String, String)>,
    /// Client names allowed.
    pub clients: Option<Vec<String>>,
    /// Pattern the order id must match.
    pub order_id: Option<regex::Regex>,
    /// Stable share of order ids.
    pub percent: Option<f64>,
}

/// Per-target `allow` / `deny` / `rename` of top-level fields.
#[derive(Debug, Default)]
pub struct Transform {
    /// Kept fields (all when empty).
    pub allow: Vec<String>,
    /// Dropped fields.
    pub deny: Vec<String>,
    /// Renamed fields.
    pub rename: Vec<(String, String)>,
}

/// Where a condition reads request headers from (the HTTP request, or a stored job).
pub trait Headers: Sync {
    /// The value of a header (name in lower case).
    fn get_header(&self, name: &str) -> Option<&str>;
}

impl Headers for axum::http::HeaderMap {
    fn get_header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Headers for Vec<(String, String)> {
    fn get_header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl When {
    /// Whether the target is asked for this request.
    pub fn holds(&self, salt: &str, order_id: &str, client: &str, headers: &dyn Headers) -> bool {
        if let Some((name, value)) = &self.header {
            if headers.get_header(name) != Some(value.as_str()) {
                return false;
            }
        }
        if let Some(clients) = &self.clients {
            if !clients.iter().any(|c| c == client) {
                return false;
            }
        }
        if let Some(pattern) = &self.order_id {
            if !pattern.is_match(order_id) {
                return false;
            }
        }
        if let Some(percent) = self.percent {
            if !busgate_shared::config::in_rollout(salt, order_id, percent) {
                return false;
            }
        }
        true
    }
}

impl Route {
    /// Lower-case names of the request headers any condition of this route reads (and
    /// `cache-control` when a target has a cache: an asynchronous request keeps its `no-cache`).
    pub fn condition_headers(&self) -> impl Iterator<Item = &str> {
        let cached = self.targets.iter().any(|t| t.cache.is_some());
        self.targets
            .iter()
            .filter_map(|t| t.when.as_ref()?.header.as_ref().map(|(n, _)| n.as_str()))
            .chain(cached.then_some("cache-control"))
    }
}

/// What a request's method and path lead to.
#[derive(Debug)]
pub enum Lookup<'s, 'p> {
    /// A route answers it. `order_id` is the raw path segment when the path carries one.
    Found {
        /// The route.
        route: &'s Arc<Route>,
        /// The (still percent-encoded) path segment in the `{order_id}` position.
        path_order_id: Option<&'p str>,
    },
    /// The path is bound, but not for this method; the methods that are.
    MethodNotAllowed(Vec<&'static str>),
    /// Nothing is bound at this path.
    NotFound,
}

impl Snapshot {
    /// Validates and compiles a configuration.
    pub fn compile(spec: ConfigSpec) -> Result<Self, Error> {
        spec.validate()?;
        let guards: std::collections::BTreeMap<String, Arc<Guard>> = spec
            .services
            .iter()
            .filter_map(|(name, service)| {
                let guard = Guard::compile(&Name(Arc::from(name.as_str())), service)?;
                Some((name.clone(), guard))
            })
            .collect();
        let mut bindings = Vec::new();
        let mut routes = std::collections::BTreeMap::new();
        for (name, route) in &spec.routes {
            let targets = route
                .targets
                .iter()
                .map(|t| {
                    let spec_of = spec.services.get(&t.service);
                    let service_timeout = spec_of.map(|s| s.timeout).unwrap_or(route.deadline);
                    let service = Name(Arc::from(t.service.as_str()));
                    Target {
                        name: match &t.alias {
                            Some(alias) => Name(Arc::from(alias.as_str())),
                            None => service.clone(),
                        },
                        service,
                        subject: subject::service(&t.service).into(),
                        required: t.required,
                        timeout: t.timeout.unwrap_or(service_timeout).min(route.deadline),
                        when: t.when.as_ref().map(|w| When {
                            header: w
                                .header
                                .as_ref()
                                .map(|h| (h.name.to_ascii_lowercase(), h.equals.clone())),
                            clients: w.clients.clone(),
                            // Validated by `spec.validate()` above.
                            order_id: w
                                .order_id_matches
                                .as_ref()
                                .and_then(|p| regex::Regex::new(p).ok()),
                            percent: w.percent,
                        }),
                        transform: (!t.allow.is_empty()
                            || !t.deny.is_empty()
                            || !t.rename.is_empty())
                        .then(|| Transform {
                            allow: t.allow.clone(),
                            deny: t.deny.clone(),
                            rename: t
                                .rename
                                .iter()
                                .map(|(a, b)| (a.clone(), b.clone()))
                                .collect(),
                        }),
                        cache: spec_of.and_then(|s| s.cache),
                        coalesce: spec_of.is_none_or(|s| s.coalesce),
                        guard: guards.get(&t.service).cloned(),
                    }
                })
                .collect::<Vec<_>>();
            let mut priority: Vec<usize> = route
                .merge
                .priority
                .iter()
                .filter_map(|name| route.targets.iter().position(|t| t.name() == name))
                .collect();
            for i in 0..route.targets.len() {
                if !priority.contains(&i) {
                    priority.push(i);
                }
            }
            let extra_replies = targets_extra(&targets);
            let compiled = Arc::new(Route {
                name: Name(Arc::from(name.as_str())),
                operation: route.operation.clone().unwrap_or_else(|| name.clone()),
                deadline: route.deadline,
                targets,
                merge: route.merge.strategy,
                priority,
                late: route.late.map(|l| l.grace),
                extra_replies,
                graph: crate::config::graph::compile(route).map(Box::new),
            });
            routes.insert(name.clone(), compiled.clone());
            for (i, b) in route.bindings.iter().enumerate() {
                bindings.push(Binding {
                    method: b.method,
                    segments: b.segments(&format!("routes.{name}.bindings[{i}].path"))?,
                    route: compiled.clone(),
                });
            }
        }
        Ok(Snapshot {
            clients: Clients::compile(&spec.clients),
            spec,
            bindings,
            routes,
            guards,
        })
    }

    /// Takes over the state of the clients (see [`Clients::inherit`]) and of the services'
    /// guards (see [`Guard::inherit`]) of the snapshot this one replaces.
    pub fn inherit(&mut self, previous: &Snapshot) {
        self.clients.inherit(&previous.clients);
        for (name, guard) in &self.guards {
            if let Some(old) = previous.guards.get(name) {
                guard.inherit(old);
            }
        }
    }

    /// The guards of the services that have a breaker, retries or hedging, by service.
    pub fn guards(&self) -> &std::collections::BTreeMap<String, Arc<Guard>> {
        &self.guards
    }

    /// A route by name.
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.get(name)
    }

    /// Finds the route for a method and path.
    pub fn lookup<'s, 'p>(&'s self, method: &Method, path: &'p str) -> Lookup<'s, 'p> {
        let mut allowed = Vec::new();
        for binding in &self.bindings {
            let Some(path_order_id) = matches(&binding.segments, path) else {
                continue;
            };
            if method.as_str() == binding.method.as_str() {
                return Lookup::Found {
                    route: &binding.route,
                    path_order_id,
                };
            }
            if !allowed.contains(&binding.method.as_str()) {
                allowed.push(binding.method.as_str());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            allowed.sort_unstable();
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

/// Replies beyond one per target that the targets' guards may bring.
fn targets_extra(targets: &[Target]) -> usize {
    targets
        .iter()
        .filter_map(|t| t.guard.as_ref())
        .map(|g| g.extra_replies())
        .sum()
}

/// Whether `path` fits the segments; on a fit, the `{order_id}` segment if there is one.
fn matches<'p>(segments: &[Segment], path: &'p str) -> Option<Option<&'p str>> {
    let mut parts = path.strip_prefix('/')?.split('/');
    let mut order_id = None;
    for segment in segments {
        let part = parts.next()?;
        match segment {
            Segment::Literal(text) if text == part => {}
            Segment::Literal(_) => return None,
            Segment::OrderId => order_id = Some(part),
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Some(order_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Snapshot {
        Snapshot::compile(ConfigSpec::builtin()).expect("compile")
    }

    #[test]
    fn builtin_routes_are_found() {
        let s = builtin();
        match s.lookup(&Method::GET, "/api/orders/A1") {
            Lookup::Found {
                route,
                path_order_id,
            } => {
                assert_eq!(&*route.name.0, "order");
                assert_eq!(path_order_id, Some("A1"));
                assert_eq!(route.targets.len(), 2);
                assert!(route.targets[0].required && !route.targets[1].required);
                assert_eq!(&*route.targets[0].subject, "busgate.svc.service1");
                assert_eq!(route.targets[0].timeout, Duration::from_millis(800));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.lookup(&Method::POST, "/api/order"),
            Lookup::Found {
                path_order_id: None,
                ..
            }
        ));
    }

    #[test]
    fn wrong_method_and_unknown_paths() {
        let s = builtin();
        match s.lookup(&Method::PUT, "/api/order") {
            Lookup::MethodNotAllowed(allow) => assert_eq!(allow, ["POST"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.lookup(&Method::DELETE, "/api/orders/1"),
            Lookup::MethodNotAllowed(_)
        ));
        for path in [
            "/api/orders",
            "/api/orders/",
            "/api/orders/1/x",
            "/api/orderz",
            "/",
            "",
            "api/order",
        ] {
            let found = s.lookup(&Method::GET, path);
            assert!(
                matches!(found, Lookup::NotFound) || path == "/api/orders/",
                "{path}: {found:?}"
            );
        }
    }

    #[test]
    fn conditions_decide_per_request() {
        let when = When {
            header: Some(("x-tier".into(), "gold".into())),
            clients: Some(vec!["acme".into()]),
            order_id: Some(regex::Regex::new("^VIP-").expect("regex")),
            percent: None,
        };
        let gold = vec![("x-tier".to_owned(), "gold".to_owned())];
        let plain: Vec<(String, String)> = Vec::new();
        assert!(when.holds("s", "VIP-1", "acme", &gold));
        assert!(!when.holds("s", "VIP-1", "acme", &plain), "header missing");
        assert!(
            !when.holds("s", "VIP-1", "other", &gold),
            "client not listed"
        );
        assert!(
            !when.holds("s", "A-1", "acme", &gold),
            "order id does not match"
        );
        let none = When {
            header: None,
            clients: None,
            order_id: None,
            percent: Some(0.0),
        };
        assert!(!none.holds("s", "A", "", &plain), "0% asks nobody");
        let all = When {
            percent: Some(100.0),
            ..none
        };
        assert!(all.holds("s", "A", "", &plain), "100% asks everybody");
    }

    #[test]
    fn target_timeout_is_capped_by_the_deadline() {
        let mut spec = ConfigSpec::builtin();
        spec.services.get_mut("service2").expect("s2").timeout = Duration::from_secs(5);
        let s = Snapshot::compile(spec).expect("compile");
        let Lookup::Found { route, .. } = s.lookup(&Method::POST, "/api/order") else {
            panic!("found")
        };
        assert_eq!(route.targets[1].timeout, Duration::from_secs(1));
    }
}
