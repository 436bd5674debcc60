//! `[auth]`: the mode of public requests and the issuers of JWTs (`[[auth.issuers]]`), with
//! their rules.

use std::time::Duration;

use busgate_shared::Error;
use serde::{Deserialize, Serialize};

/// `[auth]`: how public requests name their client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `required` (the default): every public request but the health endpoints and
    /// `/metrics` names a configured client with an API key (or a JWT of a configured issuer).
    /// `none`: requests without credentials are served as the anonymous client (logged as a
    /// warning at start); credentials that are sent are still checked.
    pub mode: AuthMode,
    /// Issuers whose JWTs name a client (`[[auth.issuers]]`); none by default.
    pub issuers: Vec<IssuerSettings>,
    /// Refused credentials (401) one client address may send in a minute; past them its
    /// requests with credentials are answered 429 `too-many-failures` until the minute from
    /// its first failure is over (per instance; IPv6 by /64). 0: off. At most
    /// [`MAX_FAILURES_PER_MINUTE`].
    pub max_failures_per_minute: u32,
    /// `[auth.anonymous]`: with `mode = "none"`, the anonymous client's limits, applied per
    /// client address (none by default: no limits).
    pub anonymous: AnonymousSettings,
}

/// `[auth.anonymous]`: what each client address may do as the anonymous client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnonymousSettings {
    /// Requests per second (and burst) per address, shared among the instances.
    pub rate: Option<busgate_shared::config::RateSpec>,
    /// Asynchronous requests pending per address, shared among the instances.
    pub max_pending: Option<u32>,
    /// Event streams open per address on one instance.
    pub max_streams: Option<u32>,
}

/// The highest `auth.max_failures_per_minute` (the throttle's count has 12 bits).
pub const MAX_FAILURES_PER_MINUTE: u32 = 4000;

/// `auth.max_failures_per_minute` by default: far above a misconfigured client's retries,
/// far below a brute force.
pub const DEFAULT_MAX_FAILURES_PER_MINUTE: u32 = 20;

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            mode: AuthMode::default(),
            issuers: Vec::new(),
            max_failures_per_minute: DEFAULT_MAX_FAILURES_PER_MINUTE,
            anonymous: AnonymousSettings::default(),
        }
    }
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

    /// `jwks_url` as `check-config` shows it: scheme, host, port and path; a user, a password,
    /// a query or a fragment (where a key set's access token may hide) each become `***`, so
    /// the output still says they are there. A URL that does not parse shows as `***`.
    pub fn redacted_jwks_url(&self) -> String {
        if self.jwks_url.is_empty() {
            return String::new();
        }
        let Ok(url) = url::Url::parse(&self.jwks_url) else {
            return "***".to_owned();
        };
        let credentials = !url.username().is_empty() || url.password().is_some();
        let mut out = format!(
            "{}://{}{}{}{}",
            url.scheme(),
            if credentials { "***@" } else { "" },
            url.host_str().unwrap_or_default(),
            url.port().map(|p| format!(":{p}")).unwrap_or_default(),
            url.path()
        );
        if url.query().is_some() {
            out.push_str("?***");
        }
        if url.fragment().is_some() {
            out.push_str("#***");
        }
        out
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

/// Checks `auth.max_failures_per_minute` and `[auth.anonymous]`.
pub fn validate_throttle(auth: &AuthSettings) -> Result<(), Error> {
    if auth.max_failures_per_minute > MAX_FAILURES_PER_MINUTE {
        return Err(Error::invalid(
            "auth.max_failures_per_minute",
            format!("at most {MAX_FAILURES_PER_MINUTE}"),
        ));
    }
    let anonymous = &auth.anonymous;
    if anonymous
        .rate
        .is_some_and(|r| r.per_second == 0 || r.burst() == 0)
    {
        return Err(Error::invalid(
            "auth.anonymous.rate",
            "per_second and burst must be at least 1",
        ));
    }
    for (field, value) in [
        ("auth.anonymous.max_pending", anonymous.max_pending),
        ("auth.anonymous.max_streams", anonymous.max_streams),
    ] {
        if value == Some(0) {
            return Err(Error::invalid(field, "must be at least 1"));
        }
    }
    Ok(())
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
