//! One issuer's JSON Web Key Set: fetched over HTTP(S) with a deadline and a size cap, cached
//! by `kid`.
//!
//! A cached `kid` costs an atomic load: no lock, no await, no network. An unknown `kid` fetches
//! the set again, at most once per [`MIN_REFETCH`]: concurrent misses wait for the one fetch
//! under way (single flight) and the misses after it are refused at once. A set older than
//! `jwks_refresh` is fetched again in a task of its own, which ends within the fetch deadline,
//! so that keys the issuer withdrew stop counting. A failed fetch keeps the keys held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::JwtError;

/// The shortest time between two fetches of one issuer's set.
pub const MIN_REFETCH: Duration = Duration::from_secs(60);

/// The largest key set body read; past it the fetch fails.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Keys kept from one set at most (a set is a handful in practice).
const MAX_KEYS: usize = 64;

/// The keys of one fetch.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    /// When the set was fetched; `None` before the first success.
    fetched: Option<Instant>,
}

/// One issuer's key set and how to fetch it again.
pub(super) struct Jwks {
    /// The issuer, for log lines.
    issuer: String,
    url: reqwest::Url,
    http: reqwest::Client,
    alg: Algorithm,
    timeout: Duration,
    refresh: Duration,
    keys: ArcSwap<KeySet>,
    /// Held for the whole of a fetch (single flight); holds when the last fetch started.
    fetching: Arc<Mutex<Option<Instant>>>,
}

/// Why a fetch failed: a class, never the URL (it may carry credentials) nor the body.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed ({0})")]
    Request(&'static str),
    #[error("status {0}")]
    Status(u16),
    #[error("body larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("body is not a key set")]
    NotASet,
    #[error("no usable key in the set")]
    NoKey,
}

impl Jwks {
    pub(super) fn new(
        issuer: &str,
        url: reqwest::Url,
        alg: Algorithm,
        timeout: Duration,
        refresh: Duration,
    ) -> reqwest::Result<Jwks> {
        // The URL is the operator's, so no SSRF guard; no redirects and no proxy all the same,
        // so that the keys come from where the settings say.
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("busgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Jwks {
            issuer: issuer.to_owned(),
            url,
            http,
            alg,
            timeout,
            refresh,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetching: Arc::new(Mutex::new(None)),
        })
    }

    /// The key named `kid`: from the cache, or after one fetch when the rate allows it.
    pub(super) async fn key(self: &Arc<Self>, kid: &str) -> Result<Arc<DecodingKey>, JwtError> {
        let set = self.keys.load();
        if let Some(key) = set.by_kid.get(kid) {
            if set.fetched.is_some_and(|at| at.elapsed() >= self.refresh) {
                self.refresh_in_background();
            }
            return Ok(key.clone());
        }
        drop(set);
        let mut last = self.fetching.lock().await;
        // The fetch this one waited for may have brought the key.
        if let Some(key) = self.keys.load().by_kid.get(kid) {
            return Ok(key.clone());
        }
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return Err(JwtError::UnknownKey);
        }
        *last = Some(Instant::now());
        self.fetch_and_keep().await;
        drop(last);
        self.keys
            .load()
            .by_kid
            .get(kid)
            .cloned()
            .ok_or(JwtError::UnknownKey)
    }

    /// Fetches the set once now (at start, say), unless a fetch is under way or was made less
    /// than [`MIN_REFETCH`] ago. True when keys are held afterwards.
    pub(super) async fn warm(&self) -> bool {
        if let Ok(mut last) = self.fetching.try_lock() {
            if !last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
                *last = Some(Instant::now());
                self.fetch_and_keep().await;
            }
        }
        self.keys.load().fetched.is_some()
    }

    /// Moves this set's clock back by `by`: its last fetch and its keys' age, as if that time
    /// had passed (tests of the rate and of the refresh against a real server).
    #[cfg(test)]
    pub(super) async fn backdate(&self, by: Duration) {
        let mut last = self.fetching.lock().await;
        *last = last.and_then(|at| at.checked_sub(by));
        let set = self.keys.load();
        self.keys.store(Arc::new(KeySet {
            by_kid: set.by_kid.clone(),
            fetched: set.fetched.and_then(|at| at.checked_sub(by)),
        }));
    }

    /// A fetch of a stale set in a task of its own, unless one is under way or the rate says
    /// no. The task ends within the fetch deadline.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(mut last) = self.fetching.clone().try_lock_owned() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        let jwks = self.clone();
        tokio::spawn(async move {
            jwks.fetch_and_keep().await;
            drop(last);
        });
    }

    /// One fetch; the new set replaces the old on success, the old one stays on failure.
    async fn fetch_and_keep(&self) {
        match self.fetch().await {
            Ok(by_kid) => {
                debug!(issuer = %self.issuer, keys = by_kid.len(), "key set fetched");
                self.keys.store(Arc::new(KeySet {
                    by_kid,
                    fetched: Some(Instant::now()),
                }));
            }
            Err(e) => {
                let held = self.keys.load().by_kid.len();
                warn!(issuer = %self.issuer, url = %redact(&self.url), error = %e, keys_held = held, "cannot fetch the key set, keeping the keys held");
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, FetchError> {
        let work = async {
            let mut response = self
                .http
                .get(self.url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| FetchError::Request(class(&e)))?;
            if !response.status().is_success() {
                return Err(FetchError::Status(response.status().as_u16()));
            }
            if response
                .content_length()
                .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
            {
                return Err(FetchError::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| FetchError::Request(class(&e)))?
            {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(FetchError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            parse(&body, self.alg)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }
}

/// What kind of failure, in a word: reqwest's own words carry the URL.
fn class(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "other"
    }
}

/// The URL for a log line: scheme, host, port and path; no credentials, no query.
fn redact(url: &reqwest::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

/// The keys of a set that fit `alg`, by `kid`. A key without `kid`, meant for encryption, for
/// another algorithm, of another type, or malformed is left out; so is any symmetric (`oct`)
/// key: a key set never supplies a secret.
fn parse(body: &[u8], alg: Algorithm) -> Result<HashMap<String, Arc<DecodingKey>>, FetchError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(|_| FetchError::NotASet)?;
    let mut by_kid = HashMap::new();
    for raw in set.keys {
        if by_kid.len() == MAX_KEYS {
            break;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if let Some(usage) = &jwk.common.public_key_use {
            if *usage != PublicKeyUse::Signature {
                continue;
            }
        }
        if let Some(key_alg) = jwk.common.key_algorithm {
            if Algorithm::try_from(key_alg).ok() != Some(alg) {
                continue;
            }
        }
        if let Some(key) = decoding_key(&jwk, alg) {
            by_kid.entry(kid).or_insert_with(|| Arc::new(key));
        }
    }
    if by_kid.is_empty() {
        return Err(FetchError::NoKey);
    }
    Ok(by_kid)
}

/// The key of a JWK when its type fits `alg`.
fn decoding_key(jwk: &Jwk, alg: Algorithm) -> Option<DecodingKey> {
    match (alg, &jwk.algorithm) {
        (Algorithm::RS256, AlgorithmParameters::RSA(_)) => DecodingKey::from_jwk(jwk).ok(),
        (Algorithm::ES256, AlgorithmParameters::EllipticCurve(p))
            if p.curve == EllipticCurve::P256 =>
        {
            DecodingKey::from_jwk(jwk).ok()
        }
        (Algorithm::EdDSA, AlgorithmParameters::OctetKeyPair(p))
            if p.curve == EllipticCurve::Ed25519 =>
        {
            DecodingKey::from_jwk(jwk).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signature_keys_of_the_pinned_algorithm_are_kept() {
        let set = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "other-alg", "alg": "ES256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "garbage"},
            "not a key"
        ]});
        let body = serde_json::to_vec(&set).expect("json");
        let keys = parse(&body, Algorithm::EdDSA).expect("one key");
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["ed"]);
        assert!(matches!(
            parse(&body, Algorithm::ES256),
            Err(FetchError::NoKey)
        ));
        assert!(matches!(
            parse(b"{\"keys\": 3}", Algorithm::EdDSA),
            Err(FetchError::NotASet)
        ));
        assert!(matches!(
            parse(b"[]", Algorithm::EdDSA),
            Err(FetchError::NotASet)
        ));
    }

    #[test]
    fn log_lines_show_no_credentials_or_query() {
        let url =
            reqwest::Url::parse("https://user:pa55@idp.example:8443/keys?token=t0k").expect("url");
        assert_eq!(redact(&url), "https://idp.example:8443/keys");
    }

    /// A key set server that never answers: every fetch fails by its deadline, which is what
    /// the rate limit must hold against.
    fn unreachable() -> Arc<Jwks> {
        // Port 9 on a TEST-NET-1 address: nothing answers there; the deadline ends each fetch.
        let url = reqwest::Url::parse("http://192.0.2.1:9/jwks").expect("url");
        Arc::new(
            Jwks::new(
                "https://idp.example",
                url,
                Algorithm::EdDSA,
                Duration::from_millis(100),
                Duration::from_secs(600),
            )
            .expect("client"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_fetch_at_most_once_a_minute() {
        busgate_shared::runtime::install_crypto_provider();
        let jwks = unreachable();
        assert_eq!(jwks.key("a").await.err(), Some(JwtError::UnknownKey));
        let first = jwks.fetching.lock().await.expect("a fetch was made");
        // Within the minute: refused at once, no fetch started.
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(jwks.key("b").await.err(), Some(JwtError::UnknownKey));
        assert_eq!(*jwks.fetching.lock().await, Some(first));
        assert!(!jwks.warm().await, "no keys, and no fetch either");
        assert_eq!(*jwks.fetching.lock().await, Some(first));
        // After it: one more fetch.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(jwks.key("b").await.err(), Some(JwtError::UnknownKey));
        let second = jwks.fetching.lock().await.expect("a fetch");
        assert!(second > first);
    }
}
