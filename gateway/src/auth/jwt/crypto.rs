//! The `jsonwebtoken` crate's cryptography, over `ring`: verification of HS256, RS256, ES256
//! and EdDSA, nothing else.
//!
//! Why not one of the crate's own providers: `aws_lc_rs` needs cmake and a C build, and
//! `rust_crypto` pulls rsa, p256, p384, ed25519-dalek and second copies of sha2 and hmac. ring
//! is already built for rustls and async-nats, and its verifiers are the ones rustls trusts.
//! The gateway never signs a token, so signing and the JWK helpers answer an error.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as ring_sig;

/// The provider: verifiers only.
static RING: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(unsupported()),
        rsa_pub_components_from_public_key: |_| Err(unsupported()),
        ec_pub_components_from_private_key: |_, _| Err(unsupported()),
        ed_pub_components_from_private_key: |_, _| Err(unsupported()),
        compute_digest: |_, _| Err(unsupported()),
    },
};

/// Makes [`RING`] the process's provider. Idempotent; nothing else in the gateway installs
/// one (the crate has no provider feature enabled), so the first call wins.
pub(super) fn install() {
    let _ = RING.install_default();
}

fn unsupported() -> Error {
    ErrorKind::Provider("not supported by the gateway's provider".into()).into()
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(unsupported())
}

/// A public key or secret, parsed as far as ring lets it be ahead of a verification.
enum Key {
    Hmac(ring::hmac::Key),
    /// Modulus (no leading zeros) and exponent, as a JWK gives them.
    RsaComponents {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// `RSAPublicKey` in DER (PKCS#1).
    RsaDer(Vec<u8>),
    /// An uncompressed P-256 point.
    P256(Vec<u8>),
    /// 32 bytes.
    Ed25519(Vec<u8>),
}

struct RingVerifier {
    alg: Algorithm,
    key: Key,
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    // The key's family must be the algorithm's: an RSA public key is never an HMAC secret.
    let family = match alg {
        Algorithm::HS256 => AlgorithmFamily::Hmac,
        Algorithm::RS256 => AlgorithmFamily::Rsa,
        Algorithm::ES256 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    if key.family() != family {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = match (alg, key.kind()) {
        (Algorithm::HS256, DecodingKeyKind::SecretOrDer(secret)) => {
            Key::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
        }
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => Key::RsaComponents {
            n: strip_leading_zeros(n).to_vec(),
            e: strip_leading_zeros(e).to_vec(),
        },
        (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => Key::RsaDer(der.clone()),
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => Key::P256(point.clone()),
        (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(x)) => Key::Ed25519(x.clone()),
        _ => return Err(ErrorKind::InvalidKeyFormat.into()),
    };
    Ok(Box::new(RingVerifier { alg: *alg, key }))
}

/// ring wants integers of minimal width; some key sets pad the modulus with a zero byte.
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match &self.key {
            // Constant-time comparison of the tag.
            Key::Hmac(key) => ring::hmac::verify(key, msg, sig).is_ok(),
            // 2048 to 8192 bits: shorter RSA keys are refused.
            Key::RsaComponents { n, e } => ring_sig::RsaPublicKeyComponents { n, e }
                .verify(&ring_sig::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            Key::RsaDer(der) => {
                ring_sig::UnparsedPublicKey::new(&ring_sig::RSA_PKCS1_2048_8192_SHA256, der)
                    .verify(msg, sig)
                    .is_ok()
            }
            // JWS carries ECDSA signatures as r || s, not DER.
            Key::P256(point) => {
                ring_sig::UnparsedPublicKey::new(&ring_sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            Key::Ed25519(x) => ring_sig::UnparsedPublicKey::new(&ring_sig::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
