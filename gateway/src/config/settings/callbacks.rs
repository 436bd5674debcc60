//! `[callbacks]`: signed callbacks (Standard Webhooks): the secret, the retry schedule, the
//! allowlist.

use std::time::Duration;

use base64::Engine as _;
use busgate_shared::Error;
use serde::{Deserialize, Serialize};

use super::redacted;

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
