//! The one builder for the gateway settings that the tests, the benchmark and the perf scripts
//! start gateways with (the settings file, `busgate.toml`: see the gateway's settings module).
//!
//! Services and routes are the schema's own types ([`busgate_shared::config`]), so a fixture
//! cannot drift from what the gateway reads; the rest (`[log]`, `[jobs]`, `[callbacks]`) is
//! what the tests set. [`Settings::to_toml`] writes it out; [`Route::to_json`] is the same route
//! as the admin API's document. The NATS URL, the listeners, the admin token and the log format
//! of a test gateway come from its environment ([`crate::gateway::Gateway::start`]).
//!
//! ```
//! use std::time::Duration;
//! use busgate_tests::fixture::{Route, Settings};
//!
//! let toml = Settings::builtin()
//!     .service("ghost", Duration::from_millis(800))
//!     .route("ghost", Route::get("/api/ghost/{order_id}").target("ghost").optional("service1"))
//!     .to_toml();
//! assert!(toml.contains("[routes.ghost]"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use busgate_shared::config::{
    ClientSpec, ConfigSpec, MergeSpec, RouteSpec, ServiceSpec, TargetSpec,
};
use serde_json::{json, Map, Value};

/// Gateway settings. Nothing set is an empty file: the gateway's defaults, with its built-in
/// services and routes.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    log_level: Option<String>,
    nats_url: Option<String>,
    http: Map<String, Value>,
    jobs: Jobs,
    callbacks: Option<Callbacks>,
    metrics_listener: Option<String>,
    auth_mode: Option<&'static str>,
    jwt_issuers: Vec<Value>,
    services: BTreeMap<String, ServiceSpec>,
    routes: BTreeMap<String, RouteSpec>,
    clients: BTreeMap<String, ClientSpec>,
}

/// `[jobs]`: what is not set keeps the gateway's default.
#[derive(Debug, Clone, Default)]
struct Jobs {
    ack_wait: Option<Duration>,
    concurrency: Option<usize>,
    requests_max_msgs: Option<i64>,
    results_max_bytes: Option<i64>,
    result_ttl: Option<Duration>,
    max_event_streams: Option<usize>,
    max_waiters: Option<usize>,
    max_deliver: Option<u32>,
    replicas: Option<usize>,
}

/// `[callbacks]`: what is not set keeps the gateway's default.
#[derive(Debug, Clone, Default)]
pub struct Callbacks {
    secret: String,
    retry: Vec<Duration>,
    timeout: Option<Duration>,
    allow: Vec<String>,
}

impl Callbacks {
    /// Callbacks signed with `secret` (`whsec_<base64>`).
    pub fn signed(secret: &str) -> Callbacks {
        Callbacks {
            secret: secret.to_owned(),
            ..Callbacks::default()
        }
    }

    /// The delays before each retry.
    pub fn retry(mut self, delays: &[Duration]) -> Callbacks {
        self.retry = delays.to_vec();
        self
    }

    /// The timeout of one delivery attempt.
    pub fn timeout(mut self, timeout: Duration) -> Callbacks {
        self.timeout = Some(timeout);
        self
    }

    /// A special address (`127.0.0.0/8`, a host, …) that callbacks may reach anyway.
    pub fn allow(mut self, address: &str) -> Callbacks {
        self.allow.push(address.to_owned());
        self
    }
}

impl Settings {
    /// The gateway's built-in configuration written out: `service1` and `service2` (800 ms)
    /// and the `order` route (`POST /api/order`, `GET /api/orders/{order_id}`, deadline 1 s,
    /// service1 required, service2 optional). Change parts with [`Self::service`] and
    /// [`Self::route`].
    pub fn builtin() -> Settings {
        let ConfigSpec {
            services, routes, ..
        } = ConfigSpec::builtin();
        Settings {
            services,
            routes,
            ..Settings::default()
        }
    }

    /// `[log] level`.
    pub fn log_level(mut self, level: &str) -> Settings {
        self.log_level = Some(level.to_owned());
        self
    }

    /// `[nats] url` (a test gateway's environment names its server, and wins over this).
    pub fn nats_url(mut self, url: &str) -> Settings {
        self.nats_url = Some(url.to_owned());
        self
    }

    /// `[http] order_id_pattern`: what an `order_id` must match.
    pub fn order_id_pattern(mut self, pattern: &str) -> Settings {
        self.http
            .insert("order_id_pattern".into(), pattern.to_owned().into());
        self
    }

    /// `[http] header_timeout`: a request head must arrive whole within it (and a kept-alive
    /// connection may be idle that long).
    pub fn http_header_timeout(mut self, timeout: Duration) -> Settings {
        self.http.insert("header_timeout".into(), duration(timeout));
        self
    }

    /// `[http] body_timeout`: a request body must arrive whole within it.
    pub fn http_body_timeout(mut self, timeout: Duration) -> Settings {
        self.http.insert("body_timeout".into(), duration(timeout));
        self
    }

    /// `[http] max_connections`: open connections per listener.
    pub fn http_max_connections(mut self, max: usize) -> Settings {
        self.http.insert("max_connections".into(), max.into());
        self
    }

    /// `[http] max_in_flight`: requests in flight past which the edge sheds load.
    pub fn http_max_in_flight(mut self, max: usize) -> Settings {
        self.http.insert("max_in_flight".into(), max.into());
        self
    }

    /// `[http] max_header_bytes`: the size of a request head.
    pub fn http_max_header_bytes(mut self, max: usize) -> Settings {
        self.http.insert("max_header_bytes".into(), max.into());
        self
    }

    /// `[jobs] max_event_streams`: open event streams per instance.
    pub fn jobs_max_event_streams(mut self, max: usize) -> Settings {
        self.jobs.max_event_streams = Some(max);
        self
    }

    /// `[jobs] max_waiters`: submits waiting on `Prefer: wait` per instance.
    pub fn jobs_max_waiters(mut self, max: usize) -> Settings {
        self.jobs.max_waiters = Some(max);
        self
    }

    /// `[jobs] ack_wait`: how long an instance may hold a request before another gets it.
    pub fn jobs_ack_wait(mut self, ack_wait: Duration) -> Settings {
        self.jobs.ack_wait = Some(ack_wait);
        self
    }

    /// `[jobs] concurrency`: asynchronous gathers one instance runs at once.
    pub fn jobs_concurrency(mut self, concurrency: usize) -> Settings {
        self.jobs.concurrency = Some(concurrency);
        self
    }

    /// `[jobs] results_max_bytes`: the size of the bucket of status documents.
    pub fn jobs_results_max_bytes(mut self, max_bytes: i64) -> Settings {
        self.jobs.results_max_bytes = Some(max_bytes);
        self
    }

    /// `[jobs] result_ttl`: how long a status document is kept.
    pub fn jobs_result_ttl(mut self, ttl: Duration) -> Settings {
        self.jobs.result_ttl = Some(ttl);
        self
    }

    /// `[jobs] max_deliver`: deliveries after which a request that keeps failing is final.
    pub fn jobs_max_deliver(mut self, max_deliver: u32) -> Settings {
        self.jobs.max_deliver = Some(max_deliver);
        self
    }

    /// `[jobs] replicas`: replicas of the streams and buckets (3 on a 3-node cluster).
    pub fn jobs_replicas(mut self, replicas: usize) -> Settings {
        self.jobs.replicas = Some(replicas);
        self
    }

    /// `[jobs.requests] max_msgs`: how many asynchronous requests the work queue holds.
    pub fn jobs_requests_max_msgs(mut self, max_msgs: i64) -> Settings {
        self.jobs.requests_max_msgs = Some(max_msgs);
        self
    }

    /// `metrics.listener`: `public` or `admin`.
    pub fn metrics_listener(mut self, listener: &str) -> Settings {
        self.metrics_listener = Some(listener.to_owned());
        self
    }

    /// `[auth] mode = "required"` written out: public requests need a client's key. (A test
    /// gateway whose settings say nothing about `[auth]` runs with `mode = "none"`: see
    /// [`crate::gateway::Gateway::start`].)
    pub fn auth_required(mut self) -> Settings {
        self.auth_mode = Some("required");
        self
    }

    /// `[auth] mode = "none"` written out: requests without credentials are anonymous. For the
    /// benchmark's and perf scripts' gateways, which measure routes, not clients.
    pub fn auth_none(mut self) -> Settings {
        self.auth_mode = Some("none");
        self
    }

    /// One `[[auth.issuers]]` entry (see the gateway's `IssuerSettings`), written as given.
    pub fn jwt_issuer(mut self, issuer: Value) -> Settings {
        self.jwt_issuers.push(issuer);
        self
    }

    /// The `[auth] mode` these settings write, if any.
    pub fn auth_mode(&self) -> Option<&'static str> {
        self.auth_mode
    }

    /// `[callbacks]`.
    pub fn callbacks(mut self, callbacks: Callbacks) -> Settings {
        self.callbacks = Some(callbacks);
        self
    }

    /// `[services.<name>]` with `timeout` (added, or replacing one of that name).
    pub fn service(mut self, name: &str, timeout: Duration) -> Settings {
        let spec = ServiceSpec {
            timeout,
            ..ServiceSpec::default()
        };
        self.services.insert(name.to_owned(), spec);
        self
    }

    /// Coalescing of `service` (an existing one) on or off (`coalesce`; on by default).
    pub fn coalesce(mut self, service: &str, on: bool) -> Settings {
        if let Some(spec) = self.services.get_mut(service) {
            spec.coalesce = on;
        }
        self
    }

    /// Coalescing off for every service so far: a benchmark that asks for one order id over
    /// and over measures gathers, not coalescing.
    pub fn no_coalescing(mut self) -> Settings {
        for spec in self.services.values_mut() {
            spec.coalesce = false;
        }
        self
    }

    /// The cache of `service` (an existing one).
    pub fn cache(mut self, service: &str, cache: busgate_shared::config::CacheSpec) -> Settings {
        if let Some(spec) = self.services.get_mut(service) {
            spec.cache = Some(cache);
        }
        self
    }

    /// The circuit breaker of `service` (an existing one).
    pub fn breaker(
        mut self,
        service: &str,
        breaker: busgate_shared::config::BreakerSpec,
    ) -> Settings {
        if let Some(spec) = self.services.get_mut(service) {
            spec.breaker = Some(breaker);
        }
        self
    }

    /// `[services.<name>]` as `spec` says (added, or replacing one of that name).
    pub fn service_spec(mut self, name: &str, spec: ServiceSpec) -> Settings {
        self.services.insert(name.to_owned(), spec);
        self
    }

    /// `[routes.<name>]` (added, or replacing one of that name).
    pub fn route(mut self, name: &str, route: Route) -> Settings {
        self.routes.insert(name.to_owned(), route.spec);
        self
    }

    /// `service` with `deadline` as its timeout, and the route `route` (`GET path`) to it alone
    /// with the same deadline: a route held as long as its service is.
    pub fn held(self, route: &str, path: &str, service: &str, deadline: Duration) -> Settings {
        self.service(service, deadline)
            .route(route, Route::get(path).deadline(deadline).target(service))
    }

    /// `[clients.<name>]`: a client seeded with the configuration (its keys as hashes).
    pub fn client(mut self, name: &str, spec: ClientSpec) -> Settings {
        self.clients.insert(name.to_owned(), spec);
        self
    }

    /// The settings file.
    pub fn to_toml(&self) -> String {
        let mut doc = Map::new();
        if let Some(level) = &self.log_level {
            doc.insert("log".into(), json!({ "level": level }));
        }
        if let Some(url) = &self.nats_url {
            doc.insert("nats".into(), json!({ "url": url }));
        }
        if !self.http.is_empty() {
            doc.insert("http".into(), self.http.clone().into());
        }
        let mut jobs = Map::new();
        if let Some(max) = self.jobs.max_event_streams {
            jobs.insert("max_event_streams".into(), max.into());
        }
        if let Some(max) = self.jobs.max_waiters {
            jobs.insert("max_waiters".into(), max.into());
        }
        if let Some(ack_wait) = self.jobs.ack_wait {
            jobs.insert("ack_wait".into(), duration(ack_wait));
        }
        if let Some(concurrency) = self.jobs.concurrency {
            jobs.insert("concurrency".into(), concurrency.into());
        }
        if let Some(max_bytes) = self.jobs.results_max_bytes {
            jobs.insert("results_max_bytes".into(), max_bytes.into());
        }
        if let Some(ttl) = self.jobs.result_ttl {
            jobs.insert("result_ttl".into(), duration(ttl));
        }
        if let Some(max_deliver) = self.jobs.max_deliver {
            jobs.insert("max_deliver".into(), max_deliver.into());
        }
        if let Some(replicas) = self.jobs.replicas {
            jobs.insert("replicas".into(), replicas.into());
        }
        if let Some(max_msgs) = self.jobs.requests_max_msgs {
            jobs.insert("requests".into(), json!({ "max_msgs": max_msgs }));
        }
        if !jobs.is_empty() {
            doc.insert("jobs".into(), jobs.into());
        }
        if let Some(c) = &self.callbacks {
            let mut callbacks = Map::new();
            if !c.secret.is_empty() {
                callbacks.insert("secret".into(), c.secret.clone().into());
            }
            if !c.retry.is_empty() {
                let retry = c.retry.iter().copied().map(duration).collect();
                callbacks.insert("retry".into(), Value::Array(retry));
            }
            if let Some(timeout) = c.timeout {
                callbacks.insert("timeout".into(), duration(timeout));
            }
            if !c.allow.is_empty() {
                callbacks.insert("allow".into(), c.allow.clone().into());
            }
            doc.insert("callbacks".into(), callbacks.into());
        }
        if self.auth_mode.is_some() || !self.jwt_issuers.is_empty() {
            let mut auth = Map::new();
            if let Some(mode) = self.auth_mode {
                auth.insert("mode".into(), mode.into());
            }
            if !self.jwt_issuers.is_empty() {
                auth.insert("issuers".into(), self.jwt_issuers.clone().into());
            }
            doc.insert("auth".into(), auth.into());
        }
        if let Some(listener) = &self.metrics_listener {
            doc.insert("metrics".into(), json!({ "listener": listener }));
        }
        if !self.services.is_empty() {
            doc.insert("services".into(), to_json(&self.services));
        }
        if !self.routes.is_empty() {
            doc.insert("routes".into(), to_json(&self.routes));
        }
        if !self.clients.is_empty() {
            doc.insert("clients".into(), to_json(&self.clients));
        }
        toml::document(&doc)
    }
}

/// `text` in a temporary file ending in `suffix` (`.toml`), deleted when dropped.
pub fn file(text: &str, suffix: &str) -> tempfile::NamedTempFile {
    use std::io::Write as _;
    let mut file = tempfile::Builder::new()
        .suffix(suffix)
        .tempfile()
        .expect("temporary file");
    file.write_all(text.as_bytes())
        .expect("write temporary file");
    file
}

/// A route: its bindings, deadline, targets and merge, as [`RouteSpec`] has them.
#[derive(Debug, Clone)]
pub struct Route {
    spec: RouteSpec,
}

impl Route {
    /// Bound to `GET path`; no targets yet; the schema's defaults for the rest (deadline 1 s,
    /// namespace merge).
    pub fn get(path: &str) -> Route {
        Route::bound(json!([{ "method": "GET", "path": path }]))
    }

    /// The built-in `order` route's bindings (`POST /api/order`, `GET /api/orders/{order_id}`)
    /// and deadline; no targets yet.
    pub fn order() -> Route {
        let mut spec = ConfigSpec::builtin()
            .routes
            .remove("order")
            .expect("the built-in order route");
        spec.targets.clear();
        Route { spec }
    }

    /// A route with `bindings` and the schema's defaults, as the gateway reads one without them.
    fn bound(bindings: Value) -> Route {
        let spec = serde_json::from_value(json!({ "bindings": bindings, "targets": [] }))
            .expect("a route document");
        Route { spec }
    }

    /// The whole gather ends by then.
    pub fn deadline(mut self, deadline: Duration) -> Route {
        self.spec.deadline = deadline;
        self
    }

    /// Asks `service`, required.
    pub fn target(mut self, service: &str) -> Route {
        self.spec.targets.push(TargetSpec::new(service, true));
        self
    }

    /// Asks `service`, required, once the targets `needs` answered (a composed route's later
    /// stage).
    pub fn target_after(mut self, service: &str, needs: &[&str]) -> Route {
        let mut target = TargetSpec::new(service, true);
        target.needs = needs.iter().map(|n| (*n).to_owned()).collect();
        self.spec.targets.push(target);
        self
    }

    /// Asks `service`, required, only for requests of the clients named (`when.clients`).
    pub fn target_for_clients(mut self, service: &str, clients: &[&str]) -> Route {
        let mut target = TargetSpec::new(service, true);
        target.when = Some(busgate_shared::config::Condition {
            clients: Some(clients.iter().map(|c| (*c).to_owned()).collect()),
            ..Default::default()
        });
        self.spec.targets.push(target);
        self
    }

    /// Asks `service`, optional: its failure leaves `complete: false`.
    pub fn optional(mut self, service: &str) -> Route {
        self.spec.targets.push(TargetSpec::new(service, false));
        self
    }

    /// Keeps a partial answer's late sources listened to for `grace` (`late.grace`).
    pub fn late(mut self, grace: Duration) -> Route {
        self.spec.late = Some(busgate_shared::config::LateSpec { grace });
        self
    }

    /// Asks `service`, required, waiting `timeout` for it instead of the service's timeout.
    pub fn target_with_timeout(mut self, service: &str, timeout: Duration) -> Route {
        let mut target = TargetSpec::new(service, true);
        target.timeout = Some(timeout);
        self.spec.targets.push(target);
        self
    }

    /// Asks `target` as given (aliases, `needs`, `with`, conditions: a composed route).
    pub fn target_spec(mut self, target: TargetSpec) -> Route {
        self.spec.targets.push(target);
        self
    }

    /// How the answers are merged (the schema's default: each under its service's name).
    pub fn merge(mut self, merge: MergeSpec) -> Route {
        self.spec.merge = merge;
        self
    }

    /// The route as the admin API takes it (`PUT /admin/v1/routes/<name>`).
    pub fn to_json(&self) -> Value {
        to_json(&self.spec)
    }
}

fn to_json(value: &impl serde::Serialize) -> Value {
    serde_json::to_value(value).expect("settings are JSON")
}

/// A duration as the settings spell one (`2s`, `800ms`).
fn duration(d: Duration) -> Value {
    let text = if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    };
    text.into()
}

/// JSON-shaped settings written as TOML: a table per section and per entry of a section of
/// named entries (`[services.n1]`, `[routes.order]`), everything deeper inline.
mod toml {
    use super::*;

    /// Sections and named entries get a table header; deeper tables are inline.
    const HEADER_DEPTH: usize = 2;

    pub(super) fn document(doc: &Map<String, Value>) -> String {
        let mut out = String::new();
        table(&mut out, &[], doc);
        out
    }

    fn table(out: &mut String, path: &[&str], map: &Map<String, Value>) {
        let (tables, values): (Vec<_>, Vec<_>) = entries(map)
            .into_iter()
            .partition(|(_, v)| v.is_object() && path.len() < HEADER_DEPTH);
        if !path.is_empty() && (!values.is_empty() || tables.is_empty()) {
            let header: Vec<String> = path.iter().map(|k| key(k)).collect();
            let _ = writeln!(out, "[{}]", header.join("."));
        }
        for (k, v) in values {
            let _ = writeln!(out, "{} = {}", key(k), inline(v));
        }
        for (k, v) in tables {
            let path = [path, &[k.as_str()]].concat();
            table(out, &path, v.as_object().expect("a table"));
        }
    }

    /// The entries that have a value (TOML has no null: absent is the same), by key.
    fn entries(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
        let mut entries: Vec<_> = map.iter().filter(|(_, v)| !v.is_null()).collect();
        entries.sort_by_key(|(k, _)| *k);
        entries
    }

    fn key(k: &str) -> String {
        let bare = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if bare {
            k.to_owned()
        } else {
            string(k)
        }
    }

    /// A basic string: JSON's escapes are TOML's, but TOML escapes DEL too.
    fn string(s: &str) -> String {
        serde_json::to_string(s)
            .expect("a string")
            .replace('\u{7f}', "\\u007F")
    }

    fn inline(v: &Value) -> String {
        match v {
            Value::Null => panic!("TOML has no null"),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => string(s),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(inline).collect();
                format!("[{}]", items.join(", "))
            }
            Value::Object(map) => {
                let entries: Vec<String> = entries(map)
                    .into_iter()
                    .map(|(k, v)| format!("{} = {}", key(k), inline(v)))
                    .collect();
                if entries.is_empty() {
                    "{}".to_owned()
                } else {
                    format!("{{ {} }}", entries.join(", "))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busgate_shared::config::MergeStrategy;

    #[test]
    fn nothing_set_is_an_empty_file() {
        assert_eq!(Settings::default().to_toml(), "");
    }

    #[test]
    fn sections_and_named_entries_are_tables_and_the_rest_is_inline() {
        let toml = Settings::default()
            .log_level("warn")
            .http_header_timeout(Duration::from_secs(1))
            .http_max_in_flight(8)
            .jobs_ack_wait(Duration::from_secs(2))
            .callbacks(
                Callbacks::signed("whsec_x")
                    .retry(&[Duration::from_millis(100); 2])
                    .allow("127.0.0.0/8"),
            )
            .service("n1", Duration::from_millis(800))
            .route(
                "hold",
                Route::get("/bench/hold/{order_id}")
                    .deadline(Duration::from_secs(30))
                    .target_with_timeout("n1", Duration::from_secs(30))
                    .optional("n2")
                    .merge(MergeSpec {
                        strategy: MergeStrategy::Deep,
                        priority: vec!["n2".into()],
                    }),
            )
            .to_toml();
        let expected = r#"[callbacks]
allow = ["127.0.0.0/8"]
retry = ["100ms", "100ms"]
secret = "whsec_x"
[http]
header_timeout = "1s"
max_in_flight = 8
[jobs]
ack_wait = "2s"
[log]
level = "warn"
[routes.hold]
bindings = [{ method = "GET", path = "/bench/hold/{order_id}" }]
deadline = "30s"
merge = { priority = ["n2"], strategy = "deep" }
targets = [{ required = true, service = "n1", timeout = "30s" }, { required = false, service = "n2" }]
[services.n1]
timeout = "800ms"
"#;
        assert_eq!(toml, expected);
    }

    #[test]
    fn the_builtin_order_route_is_order_with_service1_and_optional_service2() {
        let builtin = ConfigSpec::builtin();
        let written = Settings::builtin().route(
            "order",
            Route::order().target("service1").optional("service2"),
        );
        assert_eq!(written.routes, builtin.routes);
        assert_eq!(written.services, builtin.services);
        assert_eq!(
            Route::get("/x/{order_id}").spec.deadline,
            builtin.routes["order"].deadline
        );
    }

    #[test]
    fn keys_and_strings_are_quoted_when_toml_needs_it() {
        assert_eq!(toml::document(&Map::new()), "");
        let doc = json!({ "a b": { "k.x": "q\"\u{7f}" } });
        let text = toml::document(doc.as_object().expect("object"));
        assert_eq!(text, "[\"a b\"]\n\"k.x\" = \"q\\\"\\u007F\"\n");
    }
}
