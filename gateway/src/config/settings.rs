//! Typed settings: defaults < file (`busgate.toml`) < environment (`BUSGATE_…`, `__` between
//! levels: `BUSGATE_NATS__URL`, `BUSGATE_HTTP__LISTEN`). Validated before any port is bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use busgate_shared::config::{ClientSpec, ConfigSpec, RouteSpec, ServiceSpec};
use busgate_shared::runtime::LogFormat;
use busgate_shared::validate::{OrderIdRule, DEFAULT_ORDER_ID_PATTERN};
use busgate_shared::Error;
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// Why settings could not be used.
/// Everything a gateway instance is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The NATS connection.
    pub nats: NatsSettings,
    /// The public listener.
    pub http: HttpSettings,
    /// The admin listener.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Asynchronous requests.
    pub jobs: JobsSettings,
    /// Signed callbacks.
    pub callbacks: CallbackSettings,
    /// Where `/metrics` is served.
    pub metrics: MetricsSettings,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Internal services. When absent, the built-in `service1` and `service2`.
    pub services: BTreeMap<String, ServiceSpec>,
    /// Routes. When absent, the built-in `order` route.
    pub routes: BTreeMap<String, RouteSpec>,
    /// Clients of the public API (seeded into an empty store like services and routes; their
    /// keys as hashes). Usually made through the admin API instead.
    pub clients: BTreeMap<String, ClientSpec>,
    /// Who may call the public API.
    pub auth: AuthSettings,
}

/// `[auth]`: how public requests name their client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `required` (the default): every public request but the health endpoints and
    /// `/metrics` names a configured client with an API key (or a JWT of a configured issuer).
    /// `none`: requests without credentials are served as the anonymous client (logged as a
    /// warning at start); credentials that are sent are still checked.
    pub mode: AuthMode,
    /// Issuers whose JWTs name a client (`[[auth.issuers]]`); none by default.
    pub issuers: Vec<IssuerSettings>,
}

/// `auth.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request needs credentials.
    #[default]
    Required,
    /// Requests without credentials are anonymous.
    None,
}

/// The `[nats]` section: one type for every Busgate process (see `busgate_shared::nats`).
pub use busgate_shared::nats::NatsSettings;

/// The public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on (port 0 picks a free port; the log says which).
    pub listen: SocketAddr,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// What an `order_id` must match (anchored regex).
    pub order_id_pattern: String,
    /// The share of the traces Busgate starts (requests without a `traceparent`) that are
    /// marked sampled, 0.0 to 1.0. Busgate records no spans itself, so by default it starts
    /// them unsampled; tracers downstream that follow their parent's decision record the
    /// marked ones. A caller's `traceparent` keeps its own flags.
    pub trace_sample_ratio: f64,
    /// A connection that has not sent a whole request head within this is closed; hyper arms
    /// the same timer while a kept-alive connection waits for its next request, so it is the
    /// idle keep-alive timeout too. Both listeners.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request body must have arrived whole within this, counted from when the gateway
    /// starts reading it; past it: 408 and the connection closes.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open connections per listener; past it a new connection is accepted and closed at once.
    pub max_connections: usize,
    /// Requests in flight on the public listener (health and metrics not counted); past it:
    /// 503 `overloaded` with `Retry-After`.
    pub max_in_flight: usize,
    /// Header fields in a request head; past it: 431 and the connection closes.
    pub max_headers: usize,
    /// Bytes of a request head (request line and header fields); past it: 431 and the
    /// connection closes.
    pub max_header_bytes: usize,
}

/// The admin listener.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token of the admin API, at least [`MIN_ADMIN_TOKEN`] visible ASCII characters.
    /// Without it (and without `token_file`) the admin listener is not served.
    pub token: String,
    /// A file holding the token instead (a mounted secret), read at start; surrounding
    /// whitespace is ignored. Every instance given the same file uses the same token.
    pub token_file: String,
}

// Debug by hand for the three sections that hold secrets (NatsSettings' is in busgate_shared):
// `{:?}` of the settings shows none.

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl std::fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("secret", &redacted(&self.secret))
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("allow", &self.allow)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl Settings {
    /// The same settings with every secret replaced by `***` (NATS credentials in `nats.url`,
    /// `admin.token`, `callbacks.secret`): what `check-config` prints. A secret that is set
    /// shows as `***`, one that is not as `""`, so the output still says which are set.
    pub fn redacted(&self) -> Settings {
        let mut copy = self.clone();
        copy.nats = copy.nats.redacted();
        for secret in [&mut copy.admin.token, &mut copy.callbacks.secret] {
            *secret = redacted(secret).to_owned();
        }
        copy
    }
}

/// `***` for a secret that is set, `""` for one that is not.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "***"
    }
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 32;

impl AdminSettings {
    /// The admin token from `token` or `token_file`, checked; `None` when neither is set.
    pub fn resolve_token(&self) -> Result<Option<String>, Error> {
        let token = match (self.token.is_empty(), self.token_file.is_empty()) {
            (true, true) => return Ok(None),
            (false, false) => {
                return Err(Error::invalid("admin", "set token or token_file, not both"))
            }
            (false, true) => self.token.clone(),
            (true, false) => std::fs::read_to_string(&self.token_file)
                .map_err(|e| {
                    Error::invalid(
                        "admin.token_file",
                        format!("cannot read {}: {}", self.token_file, e.kind()),
                    )
                })?
                .trim()
                .to_owned(),
        };
        let field = if self.token.is_empty() {
            "admin.token_file"
        } else {
            "admin.token"
        };
        if token.len() < MIN_ADMIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                field,
                format!("the token must be at least {MIN_ADMIN_TOKEN} visible ASCII characters"),
            ));
        }
        Ok(Some(token))
    }
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// The listener that serves `/metrics`; the other one answers 404 there.
    pub listener: MetricsListener,
}

/// A listener, as `metrics.listener` names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsListener {
    /// The public listener (`http.listen`): where scrapers find it without extra setup.
    #[default]
    Public,
    /// The admin listener (`admin.listen`), without the admin token.
    Admin,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `busgate=debug` (RUST_LOG wins when set).
    pub level: String,
}

/// Asynchronous requests (JetStream work queue and KV results).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSettings {
    /// How long status documents (results) are kept.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
    /// How long an instance may hold a request before another instance gets it.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries after which a request that keeps failing ends as `failed`.
    pub max_deliver: u32,
    /// Asynchronous gathers one instance runs at once.
    pub concurrency: usize,
    /// How long an `Idempotency-Key` maps to its request.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// The longest `Prefer: wait=N` honoured.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How long a server-sent events stream stays open at most (clients reconnect).
    #[serde(with = "humantime_serde")]
    pub events_max: Duration,
    /// Replicas of every stream and bucket (1 to 5; 3 on a 3-node cluster): the work queue,
    /// the callback queue, status documents, idempotency keys and the configuration.
    pub replicas: usize,
    /// Server-sent event streams open at once on one instance; past it: 503 `overloaded`.
    pub max_event_streams: usize,
    /// Submits waiting on `Prefer: wait=N` at once on one instance; past it: 503 `overloaded`.
    pub max_waiters: usize,
    /// Bounds of the work queue of asynchronous requests (`BUSGATE_REQUESTS`).
    pub requests: StreamLimits,
    /// Bounds of the queue of callback deliveries (`BUSGATE_CALLBACKS`).
    pub callbacks: StreamLimits,
    /// Bytes the status documents (`busgate-results`) may take; a full bucket refuses submits.
    pub results_max_bytes: i64,
    /// Bytes the idempotency keys (`busgate-idempotency`) may take.
    pub idempotency_max_bytes: i64,
}

/// Bounds of a JetStream stream. When one is reached, `discard` says what gives way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamLimits {
    /// Messages the stream may hold.
    pub max_msgs: i64,
    /// Bytes the stream may hold.
    pub max_bytes: i64,
    /// `new`: a full stream refuses new messages (a submit gets 503 `queue-full`; nothing
    /// accepted is lost). `old`: the oldest messages are dropped to make room, losing accepted
    /// work; only for those who prefer new work over old.
    pub discard: Discard,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_msgs: 1_000_000,
            max_bytes: 1 << 30,
            discard: Discard::New,
        }
    }
}

/// What gives way in a full stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Refuse new messages.
    New,
    /// Drop the oldest.
    Old,
}

impl Default for JobsSettings {
    fn default() -> Self {
        JobsSettings {
            result_ttl: Duration::from_secs(24 * 3600),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            concurrency: 256,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            max_wait: Duration::from_secs(30),
            events_max: Duration::from_secs(300),
            replicas: 1,
            max_event_streams: 1024,
            max_waiters: 1024,
            requests: StreamLimits::default(),
            callbacks: StreamLimits::default(),
            results_max_bytes: 1 << 30,
            idempotency_max_bytes: 256 << 20,
        }
    }
}

/// Signed callbacks (Standard Webhooks).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackSettings {
    /// The signing secret, `whsec_<base64>`. Callbacks are refused while it is empty.
    pub secret: String,
    /// Delays before each retry; after the last one the delivery is given up.
    pub retry: Vec<humantime_serde::Serde<Duration>>,
    /// Timeout of one delivery attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Hosts, IPs or CIDRs that callbacks may reach although they are loopback, private,
    /// link-local, CGNAT or metadata addresses (e.g. `127.0.0.0/8`, `::1`, `hooks.internal`),
    /// each with an optional port (`hooks.internal:8443`, `[::1]:9000`, `10.0.0.0/8:9000`):
    /// callbacks go to ports 80 and 443, and to the ports the allowlist names.
    pub allow: Vec<String>,
    /// Deliveries one instance makes at once; the others wait in the stream.
    pub concurrency: usize,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        // The Standard Webhooks schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
        let retry = [5, 300, 1800, 7200, 18_000, 36_000, 36_000]
            .into_iter()
            .map(|s| humantime_serde::Serde::from(Duration::from_secs(s)))
            .collect();
        CallbackSettings {
            secret: String::new(),
            retry,
            timeout: Duration::from_secs(10),
            allow: Vec::new(),
            concurrency: 64,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        let builtin = ConfigSpec::builtin();
        Settings {
            nats: NatsSettings::default(),
            http: HttpSettings::default(),
            admin: AdminSettings::default(),
            log: LogSettings::default(),
            jobs: JobsSettings::default(),
            callbacks: CallbackSettings::default(),
            metrics: MetricsSettings::default(),
            shutdown_grace: Duration::from_secs(10),
            services: builtin.services,
            routes: builtin.routes,
            clients: BTreeMap::new(),
            auth: AuthSettings::default(),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            body_limit: 64 * 1024,
            order_id_pattern: DEFAULT_ORDER_ID_PATTERN.into(),
            trace_sample_ratio: 0.0,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_in_flight: 4096,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
        }
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: String::new(),
            token_file: String::new(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Settings {
    /// Loads settings from an optional TOML file and the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, GatewayError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(
                config::File::from(file)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BUSGATE")
                .source(Some(settings_env(std::env::vars())))
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("callbacks.allow")
                .with_list_parse_key("callbacks.retry"),
        );
        Ok(builder.build()?.try_deserialize()?)
    }

    /// The top-level keys, as environment variables spell them (`BUSGATE_<KEY>…`).
    const TOP_LEVEL: [&'static str; 12] = [
        "NATS",
        "HTTP",
        "ADMIN",
        "LOG",
        "JOBS",
        "CALLBACKS",
        "METRICS",
        "SHUTDOWN_GRACE",
        "SERVICES",
        "ROUTES",
        "CLIENTS",
        "AUTH",
    ];

    /// The configuration part (services, routes and clients).
    pub fn config_spec(&self) -> ConfigSpec {
        ConfigSpec {
            services: self.services.clone(),
            routes: self.routes.clone(),
            clients: self.clients.clone(),
        }
    }

    /// Checks every rule; returns the compiled `order_id` rule on success.
    pub fn validate(&self) -> Result<OrderIdRule, GatewayError> {
        self.config_spec().validate()?;
        if !(1024..=16 * 1024 * 1024).contains(&self.http.body_limit) {
            return Err(Error::invalid(
                "http.body_limit",
                "must be between 1024 and 16777216 bytes",
            )
            .into());
        }
        if !(0.0..=1.0).contains(&self.http.trace_sample_ratio) {
            return Err(
                Error::invalid("http.trace_sample_ratio", "must be between 0.0 and 1.0").into(),
            );
        }
        self.validate_edge_limits()?;
        if !self.nats.instance.is_empty() {
            busgate_shared::validate::name("nats.instance", &self.nats.instance)?;
        }
        if self.nats.url.trim().is_empty() {
            return Err(Error::invalid("nats.url", "must not be empty").into());
        }
        // The request path's connection reads the same list (see `busgate_shared::wire`).
        if let Err(e) = busgate_shared::wire::parse_servers(&self.nats.url) {
            return Err(Error::invalid("nats.url", format!("{}: {}", e.url, e.reason)).into());
        }
        self.nats.validate()?;
        if self.shutdown_grace > Duration::from_secs(600) {
            return Err(Error::invalid("shutdown_grace", "must be at most 600s").into());
        }
        if self.jobs.ack_wait < Duration::from_secs(1)
            || self.jobs.max_deliver == 0
            || self.jobs.concurrency == 0
        {
            return Err(Error::invalid(
                "jobs",
                "ack_wait must be at least 1s, max_deliver and concurrency at least 1",
            )
            .into());
        }
        // JetStream replicates a stream on at most 5 nodes.
        if !(1..=5).contains(&self.jobs.replicas) {
            return Err(Error::invalid("jobs.replicas", "must be 1 to 5").into());
        }
        for (field, limits) in [
            ("jobs.requests", &self.jobs.requests),
            ("jobs.callbacks", &self.jobs.callbacks),
        ] {
            if limits.max_msgs < 1 || limits.max_bytes < 1024 {
                return Err(Error::invalid(
                    field,
                    "max_msgs must be at least 1 and max_bytes at least 1024",
                )
                .into());
            }
        }
        if self.jobs.results_max_bytes < 1024 || self.jobs.idempotency_max_bytes < 1024 {
            return Err(Error::invalid(
                "jobs",
                "results_max_bytes and idempotency_max_bytes must be at least 1024",
            )
            .into());
        }
        if self.jobs.result_ttl < Duration::from_secs(1)
            || self.jobs.idempotency_ttl < Duration::from_secs(1)
        {
            return Err(Error::invalid(
                "jobs",
                "result_ttl and idempotency_ttl must be at least 1s",
            )
            .into());
        }
        if !self.callbacks.secret.is_empty() {
            callback_key(&self.callbacks.secret)?;
        }
        if self.callbacks.retry.is_empty()
            || self.callbacks.timeout.is_zero()
            || !(1..=10_000).contains(&self.callbacks.concurrency)
        {
            return Err(Error::invalid(
                "callbacks",
                "retry needs at least one delay, timeout must be positive and concurrency between 1 and 10000",
            )
            .into());
        }
        self.admin.resolve_token()?;
        validate_issuers(&self.auth.issuers)?;
        crate::config::allowlist::Allowlist::parse(&self.callbacks.allow)?;
        Ok(OrderIdRule::new(&self.http.order_id_pattern)?)
    }
}

impl Settings {
    /// The limits of slow and greedy clients and of load.
    fn validate_edge_limits(&self) -> Result<(), GatewayError> {
        let http = &self.http;
        let timeouts = Duration::from_millis(100)..=Duration::from_secs(600);
        if !timeouts.contains(&http.header_timeout) || !timeouts.contains(&http.body_timeout) {
            return Err(Error::invalid(
                "http",
                "header_timeout and body_timeout must be between 100ms and 600s",
            )
            .into());
        }
        if http.max_connections == 0 || http.max_in_flight == 0 {
            return Err(Error::invalid(
                "http",
                "max_connections and max_in_flight must be at least 1",
            )
            .into());
        }
        if !(1..=1000).contains(&http.max_headers) {
            return Err(Error::invalid("http.max_headers", "must be between 1 and 1000").into());
        }
        if !(1024..=1024 * 1024).contains(&http.max_header_bytes) {
            return Err(Error::invalid(
                "http.max_header_bytes",
                "must be between 1024 and 1048576 bytes",
            )
            .into());
        }
        if self.jobs.max_event_streams == 0 || self.jobs.max_waiters == 0 {
            return Err(Error::invalid(
                "jobs",
                "max_event_streams and max_waiters must be at least 1",
            )
            .into());
        }
        Ok(())
    }
}

/// The signature algorithm of an issuer's tokens: pinned, a token whose header names another
/// one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret (`secret_file` or `secret_env`).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, keys (2048 bits or more) from `jwks_url`.
    RS256,
    /// ECDSA on P-256 with SHA-256, keys from `jwks_url`.
    ES256,
    /// Ed25519, keys from `jwks_url`.
    EdDSA,
}

/// One issuer of JWTs (`[[auth.issuers]]`). The secret of an HS256 issuer is never written
/// here: it comes from a file or an environment variable, read at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The `iss` claim of its tokens, exactly.
    pub issuer: String,
    /// The `aud` values accepted: a token must name at least one (one string or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// The one algorithm its tokens are signed with.
    pub algorithm: JwtAlgorithm,
    /// HS256: a file holding the shared secret (surrounding whitespace ignored).
    #[serde(default)]
    pub secret_file: String,
    /// HS256: the name of an environment variable holding the shared secret.
    #[serde(default)]
    pub secret_env: String,
    /// RS256, ES256, EdDSA: where its JSON Web Key Set is served (`http` or `https`).
    #[serde(default)]
    pub jwks_url: String,
    /// The claim whose value is the client's name.
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// Clock skew allowed when checking `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// How long a fetched key set is used before it is fetched again (on the next token after
    /// that, in the background); an unknown `kid` fetches sooner, at most once a minute.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Deadline of one key set fetch, connection included.
    #[serde(default = "default_jwks_timeout", with = "humantime_serde")]
    pub jwks_timeout: Duration,
}

fn default_client_claim() -> String {
    "sub".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `audience = "x"` or `audience = ["x", "y"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// The shortest HS256 secret accepted: 256 bits, the size of the hash (RFC 7518, 3.2).
pub const MIN_JWT_SECRET: usize = 32;

/// The longest `leeway` accepted.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(300);

impl IssuerSettings {
    /// The HS256 secret from `secret_file` or `secret_env`, checked; errors name the file or
    /// the variable, never a byte of the secret. `field` names the issuer in errors.
    pub fn resolve_secret(&self, field: &str) -> Result<Vec<u8>, Error> {
        let secret = match (self.secret_file.is_empty(), self.secret_env.is_empty()) {
            (false, false) | (true, true) => {
                return Err(Error::invalid(
                    field,
                    "HS256 needs secret_file or secret_env, exactly one",
                ))
            }
            (false, true) => std::fs::read(&self.secret_file).map_err(|e| {
                Error::invalid(
                    format!("{field}.secret_file"),
                    format!("cannot read {}: {}", self.secret_file, e.kind()),
                )
            })?,
            (true, false) => std::env::var_os(&self.secret_env)
                .ok_or_else(|| {
                    Error::invalid(
                        format!("{field}.secret_env"),
                        format!("the environment variable {} is not set", self.secret_env),
                    )
                })?
                .into_encoded_bytes(),
        };
        let secret = secret.trim_ascii();
        if secret.len() < MIN_JWT_SECRET {
            return Err(Error::invalid(
                field,
                format!("the HS256 secret must be at least {MIN_JWT_SECRET} bytes"),
            ));
        }
        Ok(secret.to_vec())
    }

    /// Checks this issuer's rules (the secret of HS256 is read); `field` names it in errors.
    pub fn validate(&self, field: &str) -> Result<(), Error> {
        if self.issuer.is_empty() {
            return Err(Error::invalid(
                format!("{field}.issuer"),
                "must not be empty",
            ));
        }
        if self.audience.is_empty() || self.audience.iter().any(String::is_empty) {
            return Err(Error::invalid(
                format!("{field}.audience"),
                "name at least one audience, none empty",
            ));
        }
        if self.client_claim.is_empty() {
            return Err(Error::invalid(
                format!("{field}.client_claim"),
                "must not be empty",
            ));
        }
        if self.leeway > MAX_JWT_LEEWAY {
            return Err(Error::invalid(
                format!("{field}.leeway"),
                "must be at most 300s",
            ));
        }
        if self.algorithm == JwtAlgorithm::HS256 {
            if !self.jwks_url.is_empty() {
                return Err(Error::invalid(
                    field,
                    "HS256 takes a secret (secret_file or secret_env), not jwks_url",
                ));
            }
            self.resolve_secret(field)?;
            return Ok(());
        }
        if !self.secret_file.is_empty() || !self.secret_env.is_empty() {
            return Err(Error::invalid(
                field,
                format!(
                    "{:?} takes jwks_url, not secret_file or secret_env",
                    self.algorithm
                ),
            ));
        }
        self.jwks_url(field)?;
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.jwks_timeout) {
            return Err(Error::invalid(
                format!("{field}.jwks_timeout"),
                "must be between 100ms and 60s",
            ));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(24 * 3600)).contains(&self.jwks_refresh)
        {
            return Err(Error::invalid(
                format!("{field}.jwks_refresh"),
                "must be between 60s and 24h",
            ));
        }
        Ok(())
    }

    /// `jwks_url`, parsed: `http` or `https` with a host. The error does not repeat the URL
    /// (it may carry credentials).
    pub fn jwks_url(&self, field: &str) -> Result<url::Url, Error> {
        let field = format!("{field}.jwks_url");
        if self.jwks_url.is_empty() {
            return Err(Error::invalid(
                field,
                format!("{:?} needs the URL of a key set", self.algorithm),
            ));
        }
        let url = url::Url::parse(&self.jwks_url)
            .map_err(|e| Error::invalid(field.clone(), format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(Error::invalid(
                field,
                "must be an http or https URL with a host",
            ));
        }
        Ok(url)
    }
}

/// Checks every issuer and that no two share an `issuer`.
pub fn validate_issuers(issuers: &[IssuerSettings]) -> Result<(), Error> {
    let mut seen = std::collections::HashSet::new();
    for (i, issuer) in issuers.iter().enumerate() {
        let field = format!("auth.issuers[{i}]");
        issuer.validate(&field)?;
        if !seen.insert(issuer.issuer.as_str()) {
            return Err(Error::invalid(
                format!("{field}.issuer"),
                format!("{} is configured twice", issuer.issuer),
            ));
        }
    }
    Ok(())
}

/// The HMAC key of a `whsec_<base64>` callback secret: at least 16 bytes.
pub fn callback_key(secret: &str) -> Result<Vec<u8>, Error> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| Error::invalid("callbacks.secret", "must be whsec_ followed by base64"))?;
    if key.len() < 16 {
        return Err(Error::invalid(
            "callbacks.secret",
            "must hold at least 16 bytes of key",
        ));
    }
    Ok(key)
}

/// The `BUSGATE_…` variables that are settings. Others (`BUSGATE_HOME` of the install script,
/// a tool's own) are left alone instead of failing as unknown keys; a typo inside a known
/// section (`BUSGATE_HTTP__LISTN`) still fails.
fn settings_env(vars: impl Iterator<Item = (String, String)>) -> config::Map<String, String> {
    vars.filter(|(name, _)| {
        let Some(rest) = name.strip_prefix("BUSGATE_") else {
            return false;
        };
        let top = rest.split("__").next().unwrap_or_default();
        Settings::TOP_LEVEL.contains(&top)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn only_settings_are_read_from_the_environment() {
        let vars = [
            ("BUSGATE_NATS__URL", "nats://x:4222"),
            ("BUSGATE_HOME", "/opt/busgate"),
            ("BUSGATE_TEST_LOGS", "1"),
            ("BUSGATE_SHUTDOWN_GRACE", "3s"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let kept = settings_env(vars.into_iter());
        let mut names: Vec<_> = kept.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["BUSGATE_NATS__URL", "BUSGATE_SHUTDOWN_GRACE"]);
    }

    #[test]
    fn replicas_are_1_to_5() {
        for (replicas, ok) in [(0, false), (1, true), (3, true), (5, true), (6, false)] {
            let mut s = Settings::default();
            s.jobs.replicas = replicas;
            assert_eq!(s.validate().is_ok(), ok, "{replicas}");
        }
    }

    #[test]
    fn the_metrics_listener_is_public_unless_set_and_checked() {
        assert_eq!(
            Settings::default().metrics.listener,
            MetricsListener::Public
        );
        let vars =
            [("BUSGATE_METRICS__LISTENER", "admin")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            settings_env(vars.into_iter()).len(),
            1,
            "read from the environment"
        );
        let f = write("[metrics]\nlistener = \"admin\"\n");
        let s = Settings::load(Some(f.path())).expect("load");
        assert_eq!(s.metrics.listener, MetricsListener::Admin);
        let f = write("[metrics]\nlistener = \"both\"\n");
        assert!(matches!(
            Settings::load(Some(f.path())),
            Err(GatewayError {
                kind: ErrorKind::LoadSettings(_),
                ..
            })
        ));
    }

    #[test]
    fn admin_tokens_are_long_and_come_from_settings_or_a_file() {
        let admin = |token: &str, token_file: &str| AdminSettings {
            token: token.into(),
            token_file: token_file.into(),
            ..AdminSettings::default()
        };
        assert_eq!(admin("", "").resolve_token().expect("none"), None);
        let long = "x".repeat(MIN_ADMIN_TOKEN);
        assert_eq!(
            admin(&long, "").resolve_token().expect("long enough"),
            Some(long.clone())
        );
        for short in ["test-admin-token", &"x".repeat(MIN_ADMIN_TOKEN - 1)] {
            let e = admin(short, "").resolve_token().expect_err("too short");
            assert!(!e.to_string().contains(short), "{e}");
        }
        let spaced = format!("{} x", "y".repeat(MIN_ADMIN_TOKEN));
        assert!(admin(&spaced, "").resolve_token().is_err());
        let file = write(&format!("{long}\n"));
        let path = file.path().display().to_string();
        assert_eq!(
            admin("", &path).resolve_token().expect("from the file"),
            Some(long.clone())
        );
        assert!(admin(&long, &path).resolve_token().is_err(), "both set");
        let missing = "/nonexistent/busgate-admin-token";
        let e = admin("", missing)
            .resolve_token()
            .expect_err("missing file");
        assert!(e.to_string().contains(missing), "{e}");
        let mut s = Settings::default();
        s.admin.token = "short".into();
        assert!(matches!(
            s.validate(),
            Err(GatewayError {
                kind: ErrorKind::InvalidSettings(_),
                ..
            })
        ));
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let mut s = Settings::default();
        s.nats.url = "nats://u:nats-pass-9@h:4222".into();
        s.admin.token = "admin-token-9".repeat(3);
        s.callbacks.secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into();
        let text = format!("{s:?}");
        for secret in ["nats-pass-9", "admin-token-9", "c2VjcmV0"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("nats://***@h:4222"), "{text}");
    }

    #[test]
    fn defaults_are_valid_and_builtin() {
        let s = Settings::default();
        s.validate().expect("valid");
        assert_eq!(s.http.listen.port(), 8080);
        assert_eq!(s.admin.listen.to_string(), "127.0.0.1:9090");
        assert!(s.routes.contains_key("order"));
        assert_eq!(s.services["service1"].timeout, Duration::from_millis(800));
    }

    #[test]
    fn file_values_override_defaults_and_replace_routes() {
        let f = write(
            r#"
shutdown_grace = "3s"
[http]
listen = "127.0.0.1:0"
[services.a]
timeout = "250ms"
[routes.only]
deadline = "500ms"
bindings = [{ method = "GET", path = "/x/{order_id}" }]
targets = [{ service = "a" }]
"#,
        );
        let s = Settings::load(Some(f.path())).expect("load");
        s.validate().expect("valid");
        assert_eq!(s.shutdown_grace, Duration::from_secs(3));
        assert_eq!(s.http.listen.port(), 0);
        assert_eq!(s.http.body_limit, 64 * 1024);
        assert_eq!(s.services.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(s.routes["only"].deadline, Duration::from_millis(500));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let f = write("[http]\nlisten = \"127.0.0.1:0\"\nport = 3\n");
        assert!(matches!(
            Settings::load(Some(f.path())),
            Err(GatewayError {
                kind: ErrorKind::LoadSettings(_),
                ..
            })
        ));
        let f = write("[http]\nbody_limit = 10\n");
        let s = Settings::load(Some(f.path())).expect("load");
        assert!(matches!(
            s.validate(),
            Err(GatewayError {
                kind: ErrorKind::InvalidSettings(_),
                ..
            })
        ));
        let f = write("[http]\norder_id_pattern = \"[a-z]+\"\n");
        let s = Settings::load(Some(f.path())).expect("load");
        assert!(matches!(
            s.validate(),
            Err(GatewayError {
                kind: ErrorKind::InvalidSettings(_),
                ..
            })
        ));
        for ratio in ["1.5", "-0.1", "nan"] {
            let f = write(&format!("[http]\ntrace_sample_ratio = {ratio}\n"));
            let s = Settings::load(Some(f.path())).expect("load");
            assert!(
                matches!(
                    s.validate(),
                    Err(GatewayError {
                        kind: ErrorKind::InvalidSettings(_),
                        ..
                    })
                ),
                "{ratio} must be refused"
            );
        }
        for bad in [
            "[http]\nheader_timeout = \"0s\"\n",
            "[http]\nbody_timeout = \"1h\"\n",
            "[http]\nmax_in_flight = 0\n",
            "[http]\nmax_connections = 0\n",
            "[http]\nmax_headers = 0\n",
            "[http]\nmax_header_bytes = 100\n",
            "[jobs]\nmax_event_streams = 0\n",
            "[jobs]\nmax_waiters = 0\n",
        ] {
            let s = Settings::load(Some(write(bad).path())).expect("load");
            assert!(
                matches!(
                    s.validate(),
                    Err(GatewayError {
                        kind: ErrorKind::InvalidSettings(_),
                        ..
                    })
                ),
                "{bad} must be refused"
            );
        }
        let f = write("[http]\ntrace_sample_ratio = 0.5\n");
        let s = Settings::load(Some(f.path())).expect("load");
        s.validate().expect("0.5 is a ratio");
        assert_eq!(s.http.trace_sample_ratio, 0.5);
    }

    #[test]
    fn queue_limits_are_validated() {
        let mut s = Settings::default();
        s.jobs.requests.max_msgs = 0;
        assert!(matches!(
            s.validate(),
            Err(GatewayError {
                kind: ErrorKind::InvalidSettings(_),
                ..
            })
        ));
        let mut s = Settings::default();
        s.jobs.results_max_bytes = 10;
        assert!(s.validate().is_err());
        let mut s = Settings::default();
        s.jobs.callbacks.discard = Discard::Old;
        assert!(s.validate().is_ok());
    }
}
