//! Who is calling: the client a public request comes from, by its API key (or, once the JWT
//! issuers are wired in, by a bearer JWT), and the limits that client is held to.
//!
//! A request names its client with `Authorization: Bearer <key>` or `X-API-Key: <key>`. An API
//! key is `bgk_` and 43 base64url characters (32 bytes from the operating system's CSPRNG);
//! the gateway knows only its SHA-256 (see [`hash_key`]). Checking one is a hash of the
//! presented key and a map lookup in the snapshot in force: no lock, no allocation, no I/O.
//! A bearer token without the key prefix that is shaped like a JWT goes to the one JWT hook,
//! `Authenticator::verify_jwt`.
//! Anything else (no credentials, two, a malformed header, an oversize or garbage token, an
//! unknown or revoked key) is refused with 401 before the body is read or anything published.
//!
//! Refused credentials are counted per client address ([`throttle`]): past
//! `auth.max_failures_per_minute`, an address's credentials are not even checked (429). With
//! `[auth.anonymous]` limits, each client address is an anonymous client of its own
//! ([`anonymous`]).
//!
//! Owns: [`Authenticator`], [`Caller`] and key generation. May use: `config` (the snapshot's
//! clients, `[auth]` settings), `metrics`, `error`.

pub mod anonymous;
pub mod jwt;
pub mod throttle;

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config::clients::{Client, KeyHash};
use crate::config::settings::AuthMode;
use crate::config::snapshot::Snapshot;
use crate::error::{Credentials, ErrorKind, GatewayError};

/// What every API key starts with: recognisable in a leaked log or a secret scanner's rules.
pub const KEY_PREFIX: &str = "bgk_";
/// Random bytes in a key.
pub const KEY_BYTES: usize = 32;
/// Characters of a key: the prefix and the base64url (unpadded) of [`KEY_BYTES`].
pub const KEY_LEN: usize = KEY_PREFIX.len() + 43;
/// The longest credential read (a JWT with a few claims is well under it).
pub const MAX_CREDENTIAL: usize = 8 * 1024;

/// The `X-API-Key` header.
const API_KEY_HEADER: &str = "x-api-key";

/// The client a request comes from.
#[derive(Debug, Clone)]
pub struct Caller(Option<Arc<Client>>);

impl Caller {
    /// The anonymous caller of `auth.mode = "none"`.
    pub fn anonymous() -> Self {
        Caller(None)
    }

    /// A configured client.
    pub fn client(client: Arc<Client>) -> Self {
        Caller(Some(client))
    }

    /// The client's name; empty for the anonymous caller.
    pub fn name(&self) -> &str {
        self.0.as_ref().map_or("", |c| &c.name.0)
    }

    /// The configured client, if any.
    pub fn get(&self) -> Option<&Arc<Client>> {
        self.0.as_ref()
    }
}

/// Checks credentials against the snapshot in force.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    mode: AuthMode,
    /// The configured JWT issuers (none: every JWT is refused).
    issuers: jwt::Issuers,
    /// Refused credentials per client address (`auth.max_failures_per_minute`; `None`: off).
    throttle: Option<Arc<throttle::Throttle>>,
    /// The anonymous client's limits per address (`[auth.anonymous]`; `None`: no limits).
    anonymous: Option<Arc<anonymous::Anonymous>>,
}

/// What a request presented.
#[derive(Debug, PartialEq, Eq)]
enum Presented<'a> {
    /// Nothing.
    Nothing,
    /// An API key (not yet checked for shape).
    ApiKey(&'a str),
    /// A bearer token that is not an API key but is shaped like a JWT.
    Jwt(&'a str),
}

impl Authenticator {
    /// An authenticator in `mode`.
    pub fn new(mode: AuthMode) -> Self {
        Authenticator {
            mode,
            issuers: jwt::Issuers::default(),
            throttle: None,
            anonymous: None,
        }
    }

    /// The same, holding each client address to the anonymous client's limits (none: the
    /// anonymous caller has no limits).
    pub fn with_anonymous(mut self, limits: Option<anonymous::Anonymous>) -> Self {
        self.anonymous = limits.map(Arc::new);
        self
    }

    /// The anonymous client's table of addresses, when it has limits.
    pub fn anonymous(&self) -> Option<&anonymous::Anonymous> {
        self.anonymous.as_deref()
    }

    /// The same, throttling an address after `max_failures_per_minute` refused credentials
    /// (0: never).
    pub fn with_throttle(mut self, max_failures_per_minute: u32) -> Self {
        self.throttle = throttle::Throttle::new(max_failures_per_minute).map(Arc::new);
        self
    }

    /// The table of failures, when on.
    pub fn throttle(&self) -> Option<&throttle::Throttle> {
        self.throttle.as_deref()
    }

    /// The same, also taking JWTs of `issuers`.
    pub fn with_issuers(mut self, issuers: jwt::Issuers) -> Self {
        self.issuers = issuers;
        self
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The caller of a request with `headers` from the client at `address` (when known), or a
    /// 401 refusal; 429 `too-many-failures` without checking anything when credentials come
    /// from an address that is throttled.
    pub async fn authenticate(
        &self,
        snapshot: &Snapshot,
        headers: &HeaderMap,
        address: Option<IpAddr>,
    ) -> Result<Caller, GatewayError> {
        let Some((throttle, address)) = self.throttle.as_deref().zip(address) else {
            return self.caller(snapshot, presented(headers), address).await;
        };
        let presented = presented(headers);
        if !matches!(presented, Ok(Presented::Nothing)) {
            if let Err(retry_after) = throttle.check(address) {
                return Err(ErrorKind::TooManyFailures { retry_after }.into());
            }
        }
        let result = self.caller(snapshot, presented, Some(address)).await;
        if let Err(GatewayError {
            kind: ErrorKind::ClientUnauthorized(why),
            ..
        }) = &result
        {
            if *why != Credentials::Missing {
                throttle.failed(address);
            }
        }
        result
    }

    /// The caller of what a request presented.
    async fn caller(
        &self,
        snapshot: &Snapshot,
        presented: Result<Presented<'_>, GatewayError>,
        address: Option<IpAddr>,
    ) -> Result<Caller, GatewayError> {
        match presented? {
            Presented::Nothing => match self.mode {
                // No address (a trusted proxy that named no client): not counted by address,
                // as failed credentials are not; one allowance for all of them would let one
                // abuser spend it for everyone behind the proxy.
                AuthMode::None => Ok(match (&self.anonymous, address) {
                    (Some(limits), Some(address)) => Caller::client(limits.client(address)),
                    _ => Caller::anonymous(),
                }),
                AuthMode::Required => {
                    Err(ErrorKind::ClientUnauthorized(Credentials::Missing).into())
                }
            },
            Presented::ApiKey(key) => api_key(snapshot, key).map(Caller::client),
            // Boxed: the common (API key) path keeps a small future.
            Presented::Jwt(token) => {
                let name = Box::pin(self.verify_jwt(token)).await?;
                snapshot
                    .clients
                    .by_name(&name)
                    .cloned()
                    .map(Caller::client)
                    .ok_or_else(|| ErrorKind::ClientUnauthorized(Credentials::Invalid).into())
            }
        }
    }
}

impl Authenticator {
    /// A bearer token shaped like a JWT: `Ok` names the client (by the issuer's configured
    /// claim), which [`Authenticator::authenticate`] then requires to be a configured client.
    /// Every refusal is the same 401; why is logged at debug level (the reasons name no key
    /// and no token content).
    async fn verify_jwt(&self, token: &str) -> Result<String, GatewayError> {
        self.issuers.verify(token).await.map_err(|e| {
            tracing::debug!(error = %e, "bearer token refused");
            ErrorKind::ClientUnauthorized(Credentials::Invalid).into()
        })
    }
}

/// The credential a request carries, refusing what is malformed.
fn presented(headers: &HeaderMap) -> Result<Presented<'_>, GatewayError> {
    let refuse = |why| Err(GatewayError::from(ErrorKind::ClientUnauthorized(why)));
    let mut authorization = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let mut api_key = headers.get_all(API_KEY_HEADER).iter();
    let (auth, key) = (authorization.next(), api_key.next());
    if authorization.next().is_some()
        || api_key.next().is_some()
        || (auth.is_some() && key.is_some())
    {
        return refuse(Credentials::Ambiguous);
    }
    if let Some(value) = key {
        if value.len() > MAX_CREDENTIAL {
            return refuse(Credentials::Malformed);
        }
        let Ok(value) = value.to_str() else {
            return refuse(Credentials::Malformed);
        };
        return Ok(Presented::ApiKey(value.trim()));
    }
    let Some(value) = auth else {
        return Ok(Presented::Nothing);
    };
    if value.len() > MAX_CREDENTIAL {
        return refuse(Credentials::Malformed);
    }
    let Ok(value) = value.to_str() else {
        return refuse(Credentials::Malformed);
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return refuse(Credentials::Malformed);
    };
    let token = token.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return refuse(Credentials::Malformed);
    }
    if token.starts_with(KEY_PREFIX) {
        Ok(Presented::ApiKey(token))
    } else if jwt::looks_like_jwt(token) {
        Ok(Presented::Jwt(token))
    } else {
        refuse(Credentials::Invalid)
    }
}

/// The client of an API key, or 401.
fn api_key(snapshot: &Snapshot, key: &str) -> Result<Arc<Client>, GatewayError> {
    let refused = || GatewayError::from(ErrorKind::ClientUnauthorized(Credentials::Invalid));
    let well_formed = key.len() == KEY_LEN
        && key.starts_with(KEY_PREFIX)
        && key[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(refused());
    }
    let presented = hash_key(key);
    match snapshot.clients.by_key(&presented) {
        // The map finds the entry by the digest; the final comparison is constant-time anyway,
        // so that nothing about a stored digest shows in the timing of an answer.
        Some((stored, client)) if constant_time_eq(stored, &presented) => Ok(client.clone()),
        _ => Err(refused()),
    }
}

/// Whether two digests are equal, in time independent of where they differ.
fn constant_time_eq(a: &KeyHash, b: &KeyHash) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The SHA-256 of a key: all the gateway stores of it. A plain hash (no salt, no slow KDF) is
/// right for these: a key is 256 random bits, so neither a dictionary nor brute force has
/// anything to work on, and a slow hash would only slow every request. (Passwords, chosen by
/// people, would need Argon2; API keys made here do not.)
pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// A new key: `(id, secret)`. The secret is shown once, to whoever asked for it; only
/// [`hash_key`] of it is kept.
pub fn new_key() -> (String, String) {
    let mut secret = [0u8; KEY_BYTES];
    rand::fill(&mut secret);
    let mut id = [0u8; 6];
    rand::fill(&mut id);
    let id = format!("k{}", hex::encode(id));
    let secret = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    (id, secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use busgate_shared::config::{ClientSpec, ConfigSpec, KeySpec};

    fn snapshot_with(secret: &str) -> Snapshot {
        let mut spec = ConfigSpec::builtin();
        spec.clients.insert(
            "acme".into(),
            ClientSpec {
                keys: vec![KeySpec {
                    id: "k1".into(),
                    hash: hex::encode(hash_key(secret)),
                    created: String::new(),
                }],
                ..Default::default()
            },
        );
        Snapshot::compile(spec).expect("compile")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        h
    }

    fn refusal(result: Result<Caller, GatewayError>) -> Credentials {
        match result {
            Err(GatewayError {
                kind: ErrorKind::ClientUnauthorized(why),
                ..
            }) => why,
            other => panic!("expected a 401, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_long_random_and_prefixed() {
        let (id, a) = new_key();
        let (_, b) = new_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_LEN);
        assert!(a.starts_with(KEY_PREFIX));
        busgate_shared::validate::name("id", &id).expect("a valid id");
    }

    #[tokio::test]
    async fn keys_are_found_in_either_header_and_everything_else_is_refused() {
        let (_, secret) = new_key();
        let snapshot = snapshot_with(&secret);
        let auth = Authenticator::new(AuthMode::Required);
        let bearer = format!("Bearer {secret}");
        for h in [
            headers(&[("authorization", &bearer)]),
            headers(&[("authorization", &format!("bearer  {secret}"))]),
            headers(&[("x-api-key", &secret)]),
        ] {
            let caller = auth
                .authenticate(&snapshot, &h, None)
                .await
                .expect("accepted");
            assert_eq!(caller.name(), "acme");
        }
        let (_, other) = new_key();
        let long = format!("Bearer bgk_{}", "a".repeat(MAX_CREDENTIAL));
        let cases: Vec<(HeaderMap, Credentials)> = vec![
            (headers(&[]), Credentials::Missing),
            (
                headers(&[("authorization", &format!("Bearer {other}"))]),
                Credentials::Invalid,
            ),
            (headers(&[("x-api-key", &other)]), Credentials::Invalid),
            (
                headers(&[("authorization", &format!("Basic {secret}"))]),
                Credentials::Malformed,
            ),
            (
                headers(&[("authorization", "Bearer")]),
                Credentials::Malformed,
            ),
            (
                headers(&[("authorization", "Bearer a b")]),
                Credentials::Malformed,
            ),
            (headers(&[("authorization", &long)]), Credentials::Malformed),
            (
                headers(&[("authorization", "Bearer garbage")]),
                Credentials::Invalid,
            ),
            (
                headers(&[("authorization", "Bearer bgk_short")]),
                Credentials::Invalid,
            ),
            (
                headers(&[("authorization", "Bearer a.b.c")]),
                Credentials::Invalid,
            ),
            (
                headers(&[("authorization", &bearer), ("x-api-key", &secret)]),
                Credentials::Ambiguous,
            ),
            (
                headers(&[("authorization", &bearer), ("authorization", &bearer)]),
                Credentials::Ambiguous,
            ),
        ];
        for (h, why) in cases {
            assert_eq!(
                refusal(auth.authenticate(&snapshot, &h, None).await),
                why,
                "{h:?}"
            );
        }
        let open = Authenticator::new(AuthMode::None);
        let anonymous = open
            .authenticate(&snapshot, &headers(&[]), None)
            .await
            .expect("anonymous");
        assert_eq!(anonymous.name(), "");
        assert_eq!(
            refusal(
                open.authenticate(&snapshot, &headers(&[("x-api-key", &other)]), None)
                    .await
            ),
            Credentials::Invalid,
            "credentials sent are checked in every mode"
        );
    }

    /// Past the limit an address's credentials are refused unchecked (429), a good key too;
    /// other addresses, and requests without credentials, are not.
    #[tokio::test]
    async fn failed_credentials_throttle_their_address() {
        let (_, secret) = new_key();
        let snapshot = snapshot_with(&secret);
        let auth = Authenticator::new(AuthMode::None).with_throttle(3);
        let (abuser, other): (IpAddr, IpAddr) = ([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
        let bad = headers(&[("x-api-key", "bgk_wrong")]);
        let good = headers(&[("x-api-key", &secret)]);
        for _ in 0..3 {
            assert_eq!(
                refusal(auth.authenticate(&snapshot, &bad, Some(abuser)).await),
                Credentials::Invalid
            );
            // Nothing sent is no failure.
            auth.authenticate(&snapshot, &headers(&[]), Some(abuser))
                .await
                .expect("anonymous");
        }
        for h in [&bad, &good] {
            match auth.authenticate(&snapshot, h, Some(abuser)).await {
                Err(GatewayError {
                    kind: ErrorKind::TooManyFailures { retry_after },
                    ..
                }) => assert!(retry_after <= throttle::WINDOW),
                other => panic!("expected a 429, got {other:?}"),
            }
        }
        auth.authenticate(&snapshot, &headers(&[]), Some(abuser))
            .await
            .expect("anonymous still served");
        auth.authenticate(&snapshot, &good, Some(other))
            .await
            .expect("another address is not throttled");
        let off = Authenticator::new(AuthMode::Required).with_throttle(0);
        assert!(off.throttle().is_none());
    }

    /// A request without an address limits count (its peer a trusted proxy that named no
    /// client) is not held to one address's anonymous allowance, which every such request
    /// would share (one abuser spending it for all); an address is.
    #[tokio::test]
    async fn no_address_is_no_shared_anonymous_allowance() {
        let (_, secret) = new_key();
        let snapshot = snapshot_with(&secret);
        let auth = Authenticator::new(AuthMode::None).with_anonymous(anonymous::Anonymous::new(
            None,
            Some(1),
            None,
        ));
        for _ in 0..2 {
            let caller = auth
                .authenticate(&snapshot, &headers(&[]), None)
                .await
                .expect("anonymous");
            assert!(caller.get().is_none(), "held to a shared allowance");
        }
        let address: IpAddr = [192, 0, 2, 1].into();
        let caller = auth
            .authenticate(&snapshot, &headers(&[]), Some(address))
            .await
            .expect("anonymous");
        assert!(caller.get().is_some(), "an address is held to its own");
        assert_eq!(auth.anonymous().map(|a| a.tracked()), Some(1));
    }

    #[test]
    fn jwt_shapes() {
        assert!(jwt::looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJz.c2ln"));
        assert!(!jwt::looks_like_jwt("a.b"));
        assert!(!jwt::looks_like_jwt("a.b.c.d"));
        assert!(!jwt::looks_like_jwt("a..c"));
        assert!(!jwt::looks_like_jwt("a.b.c="));
    }
}
