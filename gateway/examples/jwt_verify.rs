//! What one `Issuers::verify` costs per algorithm, with the key cached: a timing loop, not a
//! benchmark suite. Run it optimised and on a quiet machine:
//!
//! ```text
//! cargo run --release -p busgate-gateway --example jwt_verify
//! ```
//!
//! Keys are made here (ring for P-256 and Ed25519, `openssl genpkey` for RSA); the key sets are
//! served by a local HTTP server on a free port and fetched once, at the first token.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use busgate_gateway::auth::jwt::Issuers;
use busgate_gateway::config::settings::{IssuerSettings, JwtAlgorithm};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair as _};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signed(alg: &str, kid: &str, iss: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
    let claims =
        json!({"iss": iss, "aud": "busgate", "sub": "acme", "exp": exp, "iat": exp - 3600});
    let message = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).expect("json")),
        b64(&serde_json::to_vec(&claims).expect("json"))
    );
    let signature = sign(message.as_bytes());
    format!("{message}.{}", b64(&signature))
}

fn issuer(iss: &str, algorithm: JwtAlgorithm, jwks_url: String) -> IssuerSettings {
    IssuerSettings {
        issuer: iss.into(),
        audience: vec!["busgate".into()],
        algorithm,
        secret_file: String::new(),
        secret_env: String::new(),
        jwks_url,
        client_claim: "sub".into(),
        leeway: Duration::from_secs(30),
        jwks_refresh: Duration::from_secs(3600),
        jwks_timeout: Duration::from_secs(5),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let rng = SystemRandom::new();
    let rsa_der = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-outform",
            "DER",
        ])
        .output()
        .expect("openssl genpkey")
        .stdout;
    let rsa = sig::RsaKeyPair::from_der(&rsa_der).expect("rsa key");
    let ec_doc = sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("ec key");
    let ec =
        sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref(), &rng)
            .expect("ec key");
    let ed_doc = sig::Ed25519KeyPair::generate_pkcs8(&rng).expect("ed key");
    let ed = sig::Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).expect("ed key");

    let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let point = ec.public_key().as_ref().to_vec();
    let sets: [(&str, Value); 3] = [
        (
            "rs",
            json!({"keys": [{"kty": "RSA", "kid": "k", "n": b64(&c.n), "e": b64(&c.e)}]}),
        ),
        (
            "es",
            json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": b64(&point[1..33]), "y": b64(&point[33..65])}]}),
        ),
        (
            "ed",
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": b64(ed.public_key().as_ref())}]}),
        ),
    ];
    let mut app = axum::Router::new();
    for (name, set) in sets {
        app = app.route(
            &format!("/{name}"),
            axum::routing::get(move || async move { axum::Json(set) }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("dir");
    let secret = b"0123456789abcdefghijklmnopqrstuvwxyz".to_vec();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, &secret).expect("write");
    let mut hs = issuer("hs", JwtAlgorithm::HS256, String::new());
    hs.secret_file = secret_file.display().to_string();
    let issuers = Issuers::new(&[
        hs,
        issuer("rs", JwtAlgorithm::RS256, format!("{base}/rs")),
        issuer("es", JwtAlgorithm::ES256, format!("{base}/es")),
        issuer("ed", JwtAlgorithm::EdDSA, format!("{base}/ed")),
    ])
    .expect("issuers");

    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let tokens = [
        (
            "HS256",
            signed("HS256", "k", "hs", |m| {
                ring::hmac::sign(&hmac, m).as_ref().to_vec()
            }),
            50_000,
        ),
        (
            "RS256",
            signed("RS256", "k", "rs", |m| {
                let mut out = vec![0; rsa.public().modulus_len()];
                rsa.sign(&sig::RSA_PKCS1_SHA256, &rng, m, &mut out)
                    .expect("sign");
                out
            }),
            10_000,
        ),
        (
            "ES256",
            signed("ES256", "k", "es", |m| {
                ec.sign(&rng, m).expect("sign").as_ref().to_vec()
            }),
            10_000,
        ),
        (
            "EdDSA",
            signed("EdDSA", "k", "ed", |m| ed.sign(m).as_ref().to_vec()),
            10_000,
        ),
    ];
    for (alg, token, n) in &tokens {
        // The first call fetches the key set; the loop measures cached keys only.
        assert_eq!(issuers.verify(token).await.as_deref(), Ok("acme"), "{alg}");
        let start = Instant::now();
        for _ in 0..*n {
            std::hint::black_box(issuers.verify(std::hint::black_box(token)).await.ok());
        }
        let per_call = start.elapsed() / *n;
        println!(
            "{alg}: {per_call:?} per verify ({n} calls, token {} bytes)",
            token.len()
        );
    }
}
