//! JWTs from configured issuers (`[[auth.issuers]]`): which client a bearer token names.
//!
//! [`Issuers`] is built once at start from the settings (HS256 secrets are read then) and is a
//! cheap handle. [`Issuers::verify`] bounds the token's size, reads its header and its `iss`
//! without trusting them to pick the issuer, then lets `jsonwebtoken` verify it with that
//! issuer's pinned algorithm and key: the header's `alg` must be the pinned one (`none` never
//! is, nor HS256 for a public-key issuer), and `exp`, `nbf`, `iss` and `aud` are checked with
//! the issuer's leeway. The client's name is the issuer's `client_claim`, a non-empty string.
//! Public keys come from the issuer's key set ([`jwks`]), cached by `kid`.

mod crypto;
pub mod jwks;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use busgate_shared::Error;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::settings::{IssuerSettings, JwtAlgorithm};

use self::jwks::Jwks;

/// The longest token looked at; a longer one is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The longest client name a claim may carry.
pub const MAX_CLIENT_NAME: usize = 256;

/// Why a token does not name a client. Every one is a 401 `unauthorized`; the messages name
/// no byte of the token or of a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not three base64url parts, or a header or payload that is not a JSON object.
    #[error("token is not a well-formed jwt")]
    Malformed,
    /// No `iss`, or one no issuer is configured for.
    #[error("token issuer is not configured")]
    UnknownIssuer,
    /// The header's `alg` is not the issuer's (`none` included).
    #[error("token algorithm is not the issuer's")]
    WrongAlgorithm,
    /// A key-set issuer's token without `kid`.
    #[error("token has no key id")]
    MissingKeyId,
    /// The `kid` is not in the issuer's key set, even after the refetch the rate allowed.
    #[error("token key id is not known")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is not valid")]
    BadSignature,
    /// `exp` is past, leeway included.
    #[error("token has expired")]
    Expired,
    /// `nbf` is ahead, leeway included.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `aud` names none of the issuer's audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `iss` is not the issuer's.
    #[error("token issuer does not match")]
    WrongIssuer,
    /// A required claim is absent (`exp`, `iss`, `aud` or the client claim); names it.
    #[error("token has no {0} claim")]
    MissingClaim(String),
    /// A claim of the wrong type, or a client claim that is not a usable name; names it.
    #[error("token claim {0} is not valid")]
    InvalidClaim(String),
}

/// The configured issuers, by `iss`. Cheap to clone.
#[derive(Clone, Default)]
pub struct Issuers {
    by_iss: Arc<HashMap<String, Issuer>>,
}

/// One issuer, ready to verify.
struct Issuer {
    /// The pinned algorithm as the header spells it.
    alg: &'static str,
    validation: Validation,
    client_claim: String,
    keys: Keys,
}

enum Keys {
    /// HS256: the shared secret.
    Secret(Arc<DecodingKey>),
    /// RS256, ES256, EdDSA: the issuer's key set.
    Set(Arc<Jwks>),
}

impl std::fmt::Debug for Issuers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: no key, no secret.
        f.debug_struct("Issuers")
            .field("issuers", &self.by_iss.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Issuers {
    /// The issuers of the settings, checked; HS256 secrets are read now. No key set is
    /// fetched here: the first token of each issuer does it (or [`Issuers::warm`]). Errors
    /// name the issuer's field (`auth.issuers[0].…`), never a secret.
    pub fn new(settings: &[IssuerSettings]) -> Result<Issuers, Error> {
        crate::config::settings::validate_issuers(settings)?;
        crypto::install();
        // reqwest here is built without a TLS provider of its own: the process's rustls one.
        busgate_shared::runtime::install_crypto_provider();
        let mut by_iss = HashMap::new();
        for (i, s) in settings.iter().enumerate() {
            let field = format!("auth.issuers[{i}]");
            let (alg, name) = match s.algorithm {
                JwtAlgorithm::HS256 => (Algorithm::HS256, "HS256"),
                JwtAlgorithm::RS256 => (Algorithm::RS256, "RS256"),
                JwtAlgorithm::ES256 => (Algorithm::ES256, "ES256"),
                JwtAlgorithm::EdDSA => (Algorithm::EdDSA, "EdDSA"),
            };
            let keys = if alg == Algorithm::HS256 {
                let secret = s.resolve_secret(&field)?;
                let key = DecodingKey::from_secret(&secret)
                    .map_err(|_| Error::invalid(field.clone(), "unusable HS256 secret"))?;
                Keys::Secret(Arc::new(key))
            } else {
                let jwks = Jwks::new(
                    &s.issuer,
                    s.jwks_url(&field)?,
                    alg,
                    s.jwks_timeout,
                    s.jwks_refresh,
                )
                .map_err(|_| Error::invalid(field.clone(), "cannot build the key set client"))?;
                Keys::Set(Arc::new(jwks))
            };
            let mut validation = Validation::new(alg);
            validation.leeway = s.leeway.as_secs();
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = true;
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.set_issuer(&[&s.issuer]);
            validation.set_audience(&s.audience);
            by_iss.insert(
                s.issuer.clone(),
                Issuer {
                    alg: name,
                    validation,
                    client_claim: s.client_claim.clone(),
                    keys,
                },
            );
        }
        Ok(Issuers {
            by_iss: Arc::new(by_iss),
        })
    }

    /// The key set of issuer `iss`, for tests that move its clock.
    #[cfg(test)]
    fn jwks(&self, iss: &str) -> Arc<Jwks> {
        match &self.by_iss[iss].keys {
            Keys::Set(jwks) => jwks.clone(),
            Keys::Secret(_) => panic!("{iss} has no key set"),
        }
    }

    /// True when no issuer is configured: every JWT is then refused.
    pub fn is_empty(&self) -> bool {
        self.by_iss.is_empty()
    }

    /// Fetches every key set once, for a start without a first slow token. Failures are
    /// logged and keep nothing from working later; counts as the minute's fetch of each set.
    pub async fn warm(&self) {
        let sets = self.by_iss.values().filter_map(|i| match &i.keys {
            Keys::Set(jwks) => Some(jwks.warm()),
            Keys::Secret(_) => None,
        });
        futures::future::join_all(sets).await;
    }

    /// The name of the client `token` stands for, from its issuer's `client_claim`, once the
    /// token is verified. A network call only for a `kid` not cached (see [`jwks`]).
    pub async fn verify(&self, token: &str) -> Result<String, JwtError> {
        let (header, payload) = parts(token)?;
        let header: Header = decode_part(header)?;
        let unverified: Unverified = decode_part(payload)?;
        let iss = match unverified.iss {
            Some(Value::String(iss)) => iss,
            Some(_) => return Err(JwtError::InvalidClaim("iss".into())),
            None => return Err(JwtError::UnknownIssuer),
        };
        let issuer = self.by_iss.get(&iss).ok_or(JwtError::UnknownIssuer)?;
        if header.alg != issuer.alg {
            return Err(JwtError::WrongAlgorithm);
        }
        let key = match &issuer.keys {
            Keys::Secret(key) => key.clone(),
            Keys::Set(jwks) => {
                let kid = header.kid.ok_or(JwtError::MissingKeyId)?;
                jwks.key(&kid).await?
            }
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &issuer.validation)
            .map_err(|e| refusal(e.kind()))?;
        client_name(&data.claims, &issuer.client_claim)
    }
}

/// Whether `token` has the shape of a JWT (three base64url parts, a header that is a JSON
/// object with an `alg`), so that the authenticator can tell one from an API key. Says
/// nothing of its validity.
pub fn looks_like_jwt(token: &str) -> bool {
    parts(token)
        .and_then(|(header, _)| decode_part::<Header>(header))
        .is_ok()
}

/// The header fields that matter before verification.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The one claim read before verification: which issuer to verify with.
#[derive(Deserialize)]
struct Unverified {
    #[serde(default)]
    iss: Option<Value>,
}

/// The header and payload parts of a token of the right size and shape.
fn parts(token: &str) -> Result<(&str, &str), JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut split = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (split.next(), split.next(), split.next(), split.next())
    else {
        return Err(JwtError::Malformed);
    };
    let base64url = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !(base64url(header) && base64url(payload) && base64url(signature)) {
        return Err(JwtError::Malformed);
    }
    Ok((header, payload))
}

/// A base64url part as a JSON object of type `T`.
fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, JwtError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// The client claim: a non-empty string of at most [`MAX_CLIENT_NAME`] bytes, no control
/// characters.
fn client_name(claims: &Map<String, Value>, claim: &str) -> Result<String, JwtError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Err(JwtError::MissingClaim(claim.to_owned())),
        Some(Value::String(name))
            if !name.is_empty()
                && name.len() <= MAX_CLIENT_NAME
                && !name.chars().any(char::is_control) =>
        {
            Ok(name.clone())
        }
        Some(_) => Err(JwtError::InvalidClaim(claim.to_owned())),
    }
}

/// The refusal for a `jsonwebtoken` error.
fn refusal(kind: &JwtErrorKind) -> JwtError {
    match kind {
        JwtErrorKind::InvalidSignature => JwtError::BadSignature,
        JwtErrorKind::ExpiredSignature => JwtError::Expired,
        JwtErrorKind::ImmatureSignature => JwtError::NotYetValid,
        JwtErrorKind::InvalidAudience => JwtError::WrongAudience,
        JwtErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        JwtErrorKind::InvalidAlgorithm
        | JwtErrorKind::UnsupportedAlgorithm
        | JwtErrorKind::InvalidAlgorithmName => JwtError::WrongAlgorithm,
        // Spec claim names (`exp`, `iss`, `aud`), not token content.
        JwtErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim.clone()),
        JwtErrorKind::InvalidClaimFormat(claim) => JwtError::InvalidClaim(claim.clone()),
        // A key the provider cannot use counts as a signature that does not verify with it.
        JwtErrorKind::InvalidKeyFormat
        | JwtErrorKind::InvalidRsaKey(_)
        | JwtErrorKind::InvalidEcdsaKey
        | JwtErrorKind::InvalidEddsaKey => JwtError::BadSignature,
        _ => JwtError::Malformed,
    }
}
