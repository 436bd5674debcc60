//! Reading settings (defaults < file < environment) and checking every rule before any port is
//! bound: a failure is a [`StartupError`] (exit code 64).

use std::path::Path;
use std::time::Duration;

use busgate_shared::validate::OrderIdRule;
use busgate_shared::Error;

use super::{callback_key, validate_issuers, validate_throttle, Settings};
use crate::error::StartupError;

impl Settings {
    /// Loads settings from an optional TOML file and the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, StartupError> {
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
                .with_list_parse_key("callbacks.retry")
                .with_list_parse_key("http.trusted_proxies"),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.config_file = file.map(Path::to_path_buf);
        Ok(settings)
    }

    /// The top-level keys, as environment variables spell them (`BUSGATE_<KEY>…`).
    const TOP_LEVEL: [&'static str; 13] = [
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
        "TELEMETRY",
    ];

    /// Checks every rule; returns the compiled `order_id` rule on success.
    pub fn validate(&self) -> Result<OrderIdRule, StartupError> {
        self.check().map_err(StartupError::InvalidSettings)
    }

    /// Every rule, the first broken one as the contract's error (it names the field).
    fn check(&self) -> Result<OrderIdRule, Error> {
        self.config_spec().validate()?;
        if !(1024..=16 * 1024 * 1024).contains(&self.http.body_limit) {
            return Err(Error::invalid(
                "http.body_limit",
                "must be between 1024 and 16777216 bytes",
            ));
        }
        if !(0.0..=1.0).contains(&self.http.trace_sample_ratio) {
            return Err(Error::invalid(
                "http.trace_sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        self.validate_edge_limits()?;
        self.telemetry.validate()?;
        self.http.check_edge()?;
        if !self.nats.instance.is_empty() {
            busgate_shared::validate::name("nats.instance", &self.nats.instance)?;
        }
        if self.nats.url.trim().is_empty() {
            return Err(Error::invalid("nats.url", "must not be empty"));
        }
        // The request path's connection reads the same list (see `busgate_shared::wire`).
        if let Err(e) = busgate_shared::wire::parse_servers(&self.nats.url) {
            return Err(Error::invalid(
                "nats.url",
                format!("{}: {}", e.url, e.reason),
            ));
        }
        self.nats.validate()?;
        if self.shutdown_grace > Duration::from_secs(600) {
            return Err(Error::invalid("shutdown_grace", "must be at most 600s"));
        }
        if self.jobs.ack_wait < Duration::from_secs(1)
            || self.jobs.max_deliver == 0
            || self.jobs.concurrency == 0
        {
            return Err(Error::invalid(
                "jobs",
                "ack_wait must be at least 1s, max_deliver and concurrency at least 1",
            ));
        }
        // JetStream replicates a stream on at most 5 nodes.
        if !(1..=5).contains(&self.jobs.replicas) {
            return Err(Error::invalid("jobs.replicas", "must be 1 to 5"));
        }
        for (field, limits) in [
            ("jobs.requests", &self.jobs.requests),
            ("jobs.callbacks", &self.jobs.callbacks),
        ] {
            if limits.max_msgs < 1 || limits.max_bytes < 1024 {
                return Err(Error::invalid(
                    field,
                    "max_msgs must be at least 1 and max_bytes at least 1024",
                ));
            }
        }
        if self.jobs.results_max_bytes < 1024 || self.jobs.idempotency_max_bytes < 1024 {
            return Err(Error::invalid(
                "jobs",
                "results_max_bytes and idempotency_max_bytes must be at least 1024",
            ));
        }
        if self.jobs.result_ttl < Duration::from_secs(1)
            || self.jobs.idempotency_ttl < Duration::from_secs(1)
        {
            return Err(Error::invalid(
                "jobs",
                "result_ttl and idempotency_ttl must be at least 1s",
            ));
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
            ));
        }
        self.admin.resolve_token()?;
        validate_issuers(&self.auth.issuers)?;
        validate_throttle(&self.auth)?;
        crate::config::allowlist::Allowlist::parse(&self.callbacks.allow)?;
        OrderIdRule::new(&self.http.order_id_pattern)
    }
}

impl Settings {
    /// The limits of slow and greedy clients and of load.
    fn validate_edge_limits(&self) -> Result<(), Error> {
        let http = &self.http;
        let timeouts = Duration::from_millis(100)..=Duration::from_secs(600);
        if !timeouts.contains(&http.header_timeout) || !timeouts.contains(&http.body_timeout) {
            return Err(Error::invalid(
                "http",
                "header_timeout and body_timeout must be between 100ms and 600s",
            ));
        }
        if http.max_connections == 0 || http.max_in_flight == 0 {
            return Err(Error::invalid(
                "http",
                "max_connections and max_in_flight must be at least 1",
            ));
        }
        if !(1..=1000).contains(&http.max_headers) {
            return Err(Error::invalid(
                "http.max_headers",
                "must be between 1 and 1000",
            ));
        }
        if !(1024..=1024 * 1024).contains(&http.max_header_bytes) {
            return Err(Error::invalid(
                "http.max_header_bytes",
                "must be between 1024 and 1048576 bytes",
            ));
        }
        if self.jobs.max_event_streams == 0 || self.jobs.max_waiters == 0 {
            return Err(Error::invalid(
                "jobs",
                "max_event_streams and max_waiters must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The `BUSGATE_…` variables that are settings. Others (`BUSGATE_HOME` of the install script,
/// a tool's own) are left alone instead of failing as unknown keys; a typo inside a known
/// section (`BUSGATE_HTTP__LISTN`) still fails.
pub(super) fn settings_env(
    vars: impl Iterator<Item = (String, String)>,
) -> config::Map<String, String> {
    vars.filter(|(name, _)| {
        let Some(rest) = name.strip_prefix("BUSGATE_") else {
            return false;
        };
        let top = rest.split("__").next().unwrap_or_default();
        Settings::TOP_LEVEL.contains(&top)
    })
    .collect()
}
