//! Typed settings: defaults < file (`busgate.toml`) < environment (`BUSGATE_…`, `__` between
//! levels: `BUSGATE_NATS__URL`, `BUSGATE_HTTP__LISTEN`). Validated before any port is bound.
//!
//! One file per section ([`http`], [`admin`], [`jobs`], [`callbacks`], [`auth`], [`observe`]
//! for logging and metrics; `[nats]` is `busgate_shared::nats::NatsSettings`), and [`load`]:
//! reading them and checking every rule. Every type is re-exported here.

pub mod admin;
pub mod auth;
pub mod callbacks;
pub mod http;
pub mod jobs;
pub mod load;
pub mod observe;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use busgate_shared::config::{ClientSpec, ConfigSpec, RouteSpec, ServiceSpec};
use serde::{Deserialize, Serialize};

/// The `[nats]` section: one type for every Busgate process (see `busgate_shared::nats`).
pub use busgate_shared::nats::NatsSettings;

pub use self::admin::{AdminSettings, MIN_ADMIN_TOKEN};
pub use self::auth::{
    validate_issuers, validate_throttle, AnonymousSettings, AuthMode, AuthSettings, IssuerSettings,
    JwtAlgorithm, MAX_JWT_LEEWAY, MIN_JWT_SECRET,
};
pub use self::callbacks::{callback_key, CallbackSettings};
pub use self::http::{ClientHeader, HttpSettings, TlsSettings};
pub use self::jobs::{Discard, JobsSettings, StreamLimits};
pub use self::observe::{LogSettings, MetricsListener, MetricsSettings};

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
    /// Traces over OTLP (`[telemetry]`; off unless an endpoint is set here or in `OTEL_*`).
    pub telemetry: busgate_shared::telemetry::TelemetrySettings,
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
    /// The file these settings were read from, if any: a gateway compares its configuration
    /// with the store's at start (not a setting).
    #[serde(skip)]
    pub config_file: Option<std::path::PathBuf>,
}

impl Settings {
    /// The same settings with every secret replaced by `***` (NATS credentials in `nats.url`,
    /// `admin.token`, `callbacks.secret`, a JWKS URL's user, password and query): what
    /// `check-config` prints. A secret that is set
    /// shows as `***`, one that is not as `""`, so the output still says which are set.
    pub fn redacted(&self) -> Settings {
        let mut copy = self.clone();
        copy.nats = copy.nats.redacted();
        for secret in [&mut copy.admin.token, &mut copy.callbacks.secret] {
            *secret = redacted(secret).to_owned();
        }
        for issuer in &mut copy.auth.issuers {
            issuer.jwks_url = issuer.redacted_jwks_url();
        }
        copy
    }

    /// The configuration part (services, routes and clients).
    pub fn config_spec(&self) -> ConfigSpec {
        ConfigSpec {
            services: self.services.clone(),
            routes: self.routes.clone(),
            clients: self.clients.clone(),
        }
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
            telemetry: Default::default(),
            shutdown_grace: Duration::from_secs(10),
            services: builtin.services,
            routes: builtin.routes,
            clients: BTreeMap::new(),
            auth: AuthSettings::default(),
            config_file: None,
        }
    }
}
