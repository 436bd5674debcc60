//! A client of the public API as configuration: its routes, rate limit and API-key hashes, and
//! their validation (split out of `config`, which re-exports these types).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{validate, Error};

/// A client of the public API: who it is, which routes it may use, its limits, and the hashes
/// of its live API keys (never a key itself).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSpec {
    /// Free text for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The routes it may use, by name; empty: every route.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Its request rate (GCRA); absent: no rate limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateSpec>,
    /// Asynchronous requests it may have pending at once, across the gateway instances (each
    /// holds its share, see `docs/clients.md`); absent: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u32>,
    /// Event streams it may have open at once (per gateway instance); absent: no cap but the
    /// instance's own (`jobs.max_event_streams`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
    /// Its live API keys, as hashes. Managed through `/admin/v1/clients/{name}/keys`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeySpec>,
}

/// A rate: `per_second` requests a second on average, `burst` at once after a quiet spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Requests allowed at once; `per_second` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateSpec {
    /// The burst in force.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.per_second)
    }
}

/// One API key of a client: its id (public, names it in the admin API and logs), the hex
/// SHA-256 of the secret, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// The key's id.
    pub id: String,
    /// Lower-case hex SHA-256 of the secret.
    pub hash: String,
    /// When it was made (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created: String,
}

/// The longest `description` of a service or a client, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;
/// The most keys a client may have at once (rotation needs two; a few more for stragglers).
pub const MAX_KEYS: usize = 16;
/// The highest rate and burst a client may be given.
pub const MAX_RATE: u32 = 1_000_000;

impl ClientSpec {
    /// Checks the client; `is_route` says whether a route of that name exists.
    pub(crate) fn validate(&self, at: &str, is_route: impl Fn(&str) -> bool) -> Result<(), Error> {
        if self.description.len() > MAX_DESCRIPTION {
            return Err(Error::invalid(
                format!("{at}.description"),
                format!("longer than {MAX_DESCRIPTION} characters"),
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !is_route(route) {
                return Err(Error::invalid(
                    format!("{at}.routes[{i}]"),
                    format!("no route named {route:?}"),
                ));
            }
        }
        if let Some(rate) = &self.rate {
            if !(1..=MAX_RATE).contains(&rate.per_second) {
                return Err(Error::invalid(
                    format!("{at}.rate.per_second"),
                    format!("must be between 1 and {MAX_RATE}"),
                ));
            }
            if !(1..=MAX_RATE).contains(&rate.burst()) {
                return Err(Error::invalid(
                    format!("{at}.rate.burst"),
                    format!("must be between 1 and {MAX_RATE}"),
                ));
            }
        }
        for (field, value) in [
            ("max_pending", self.max_pending),
            ("max_streams", self.max_streams),
        ] {
            if value == Some(0) {
                return Err(Error::invalid(
                    format!("{at}.{field}"),
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
        }
        if self.keys.len() > MAX_KEYS {
            return Err(Error::invalid(
                format!("{at}.keys"),
                format!("at most {MAX_KEYS} keys"),
            ));
        }
        let mut ids = BTreeSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            validate::name(&format!("{at}.keys[{i}].id"), &key.id)?;
            if !ids.insert(&key.id) {
                return Err(Error::invalid(
                    format!("{at}.keys[{i}].id"),
                    "two keys with this id",
                ));
            }
            let hex = key.hash.len() == 64
                && key
                    .hash
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !hex {
                return Err(Error::invalid(
                    format!("{at}.keys[{i}].hash"),
                    "must be 64 lower-case hex digits (SHA-256)",
                ));
            }
            if key.created.len() > 64 {
                return Err(Error::invalid(
                    format!("{at}.keys[{i}].created"),
                    "longer than 64 characters",
                ));
            }
        }
        Ok(())
    }
}
