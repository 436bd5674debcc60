//! The JWT matrix against key sets served by a real HTTP server on a free port. Keys are made
//! here: ring makes P-256 and Ed25519 pairs, `openssl genpkey` the RSA ones (ring cannot).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self as sig, KeyPair as _};
use serde_json::{json, Value};

use super::jwks::{MAX_JWKS_BYTES, MIN_REFETCH};
use super::*;
use crate::config::settings::{IssuerSettings, JwtAlgorithm, Settings};

const RS: &str = "https://rs.example";
const ES: &str = "https://es.example";
const ED: &str = "https://ed.example";
const HS: &str = "https://hs.example";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A private key that signs tokens.
enum Signer {
    Hmac(Vec<u8>),
    Rsa(sig::RsaKeyPair),
    Ec(sig::EcdsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

/// A token with this header and these claims, signed by `signer` whatever the header says.
fn token(header: Value, claims: &Value, signer: &Signer) -> String {
    let message = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).expect("json")),
        b64(&serde_json::to_vec(claims).expect("json"))
    );
    let rng = SystemRandom::new();
    let signature = match signer {
        Signer::Hmac(secret) => ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            message.as_bytes(),
        )
        .as_ref()
        .to_vec(),
        Signer::Rsa(pair) => {
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(&sig::RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut out)
                .expect("rsa sign");
            out
        }
        Signer::Ec(pair) => pair
            .sign(&rng, message.as_bytes())
            .expect("ecdsa sign")
            .as_ref()
            .to_vec(),
        Signer::Ed(pair) => pair.sign(message.as_bytes()).as_ref().to_vec(),
    };
    format!("{message}.{}", b64(&signature))
}

/// Two RSA keys (PKCS#1 DER, what `genpkey -outform DER` writes), made once per test process: `openssl genpkey` takes a while.
fn rsa_ders() -> &'static [Vec<u8>; 2] {
    static KEYS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let make = || {
            let out = std::process::Command::new("openssl")
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
                .expect("openssl genpkey (the tests make their RSA keys with it)");
            assert!(out.status.success(), "openssl genpkey failed");
            out.stdout
        };
        [make(), make()]
    })
}

fn rsa(i: usize) -> sig::RsaKeyPair {
    sig::RsaKeyPair::from_der(&rsa_ders()[i]).expect("rsa der")
}

fn rsa_jwk(kid: &str, pair: &sig::RsaKeyPair) -> Value {
    let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
}

fn ec_jwk(kid: &str, pair: &sig::EcdsaKeyPair) -> Value {
    let point = pair.public_key().as_ref();
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..65])})
}

fn ed_jwk(kid: &str, pair: &sig::Ed25519KeyPair) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())})
}

/// What the key set server answers for one path.
#[derive(Clone)]
enum Answer {
    Set(Value),
    Status(StatusCode),
    /// A body past [`MAX_JWKS_BYTES`].
    Huge,
    /// No answer for a minute.
    Hang,
}

/// A key set server: one answer per path, and how many requests each path had.
#[derive(Clone, Default)]
struct KeyServer {
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    hits: Arc<Mutex<HashMap<String, u64>>>,
    base: String,
}

impl KeyServer {
    async fn start() -> KeyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = KeyServer {
            base,
            ..KeyServer::default()
        };
        let app = axum::Router::new()
            .route("/{name}", axum::routing::get(serve_set))
            .with_state(server.clone());
        // Ends with the test's runtime.
        tokio::spawn(async move { axum::serve(listener, app).await });
        server
    }

    fn answer(&self, name: &str, answer: Answer) {
        self.answers
            .lock()
            .expect("lock")
            .insert(name.into(), answer);
    }

    fn hits(&self, name: &str) -> u64 {
        self.hits
            .lock()
            .expect("lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }
}

async fn serve_set(State(server): State<KeyServer>, Path(name): Path<String>) -> Response {
    *server
        .hits
        .lock()
        .expect("lock")
        .entry(name.clone())
        .or_default() += 1;
    let answer = server.answers.lock().expect("lock").get(&name).cloned();
    match answer {
        Some(Answer::Set(set)) => axum::Json(set).into_response(),
        Some(Answer::Status(status)) => status.into_response(),
        Some(Answer::Huge) => {
            let pad = "x".repeat(MAX_JWKS_BYTES + 1);
            axum::Json(json!({"keys": [], "pad": pad})).into_response()
        }
        Some(Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn issuer(iss: &str, algorithm: JwtAlgorithm, jwks_url: &str) -> IssuerSettings {
    IssuerSettings {
        issuer: iss.into(),
        audience: vec!["busgate".into(), "busgate-eu".into()],
        algorithm,
        secret_file: String::new(),
        secret_env: String::new(),
        jwks_url: jwks_url.into(),
        client_claim: "sub".into(),
        leeway: Duration::from_secs(30),
        jwks_refresh: Duration::from_secs(600),
        // Room for a loaded machine; the hanging server of `failed_fetches_keep_the_keys_held`
        // shows that the deadline holds.
        jwks_timeout: Duration::from_secs(2),
    }
}

/// Four issuers (one per algorithm) over one key set server.
struct Fixture {
    issuers: Issuers,
    server: KeyServer,
    rsa: Signer,
    rsa_other: Signer,
    ec: Signer,
    ed: Signer,
    hs: Signer,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let server = KeyServer::start().await;
    let (rsa_pair, rsa_other) = (rsa(0), rsa(1));
    let rng = SystemRandom::new();
    let ec_der = sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .expect("ec key");
    let ec =
        sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, ec_der.as_ref(), &rng)
            .expect("ec pkcs8");
    let ed_der = sig::Ed25519KeyPair::generate_pkcs8(&rng).expect("ed key");
    let ed = sig::Ed25519KeyPair::from_pkcs8(ed_der.as_ref()).expect("ed pkcs8");
    server.answer(
        "rs",
        Answer::Set(json!({"keys": [rsa_jwk("rs-1", &rsa_pair), rsa_jwk("rs-2", &rsa_other)]})),
    );
    server.answer("es", Answer::Set(json!({"keys": [ec_jwk("es-1", &ec)]})));
    server.answer("ed", Answer::Set(json!({"keys": [ed_jwk("ed-1", &ed)]})));
    // The shared secret of the HS256 issuer, in a file: 40 random letters and digits.
    let secret: String = {
        let mut bytes = [0u8; 40];
        ring::rand::SecureRandom::fill(&rng, &mut bytes).expect("random");
        bytes
            .iter()
            .map(|b| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(*b) % 36]))
            .collect()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_file = dir.path().join("hs.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write secret");
    let mut hs = issuer(HS, JwtAlgorithm::HS256, "");
    hs.secret_file = secret_file.display().to_string();
    let mut es = issuer(ES, JwtAlgorithm::ES256, &server.url("es"));
    es.client_claim = "client_id".into();
    let issuers = Issuers::new(&[
        issuer(RS, JwtAlgorithm::RS256, &server.url("rs")),
        es,
        issuer(ED, JwtAlgorithm::EdDSA, &server.url("ed")),
        hs,
    ])
    .expect("issuers");
    Fixture {
        issuers,
        server,
        rsa: Signer::Rsa(rsa_pair),
        rsa_other: Signer::Rsa(rsa_other),
        ec: Signer::Ec(ec),
        ed: Signer::Ed(ed),
        hs: Signer::Hmac(secret.into_bytes()),
        _dir: dir,
    }
}

/// Claims of a valid token of `iss` for client `acme`.
fn claims(iss: &str) -> Value {
    json!({"iss": iss, "aud": "busgate", "sub": "acme", "client_id": "acme", "exp": now() + 300})
}

fn header(alg: &str, kid: Option<&str>) -> Value {
    match kid {
        Some(kid) => json!({"alg": alg, "typ": "JWT", "kid": kid}),
        None => json!({"alg": alg, "typ": "JWT"}),
    }
}

/// A fixture's way to sign claims as one issuer.
type MakeToken = fn(&Fixture, &Value) -> String;

impl Fixture {
    fn rs(&self, claims: &Value) -> String {
        token(header("RS256", Some("rs-1")), claims, &self.rsa)
    }
    fn hs(&self, claims: &Value) -> String {
        token(header("HS256", None), claims, &self.hs)
    }
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_name_their_client() {
    let f = fixture().await;
    let tokens = [
        f.rs(&claims(RS)),
        token(header("RS256", Some("rs-2")), &claims(RS), &f.rsa_other),
        token(header("ES256", Some("es-1")), &claims(ES), &f.ec),
        token(header("EdDSA", Some("ed-1")), &claims(ED), &f.ed),
        f.hs(&claims(HS)),
    ];
    for t in &tokens {
        assert!(looks_like_jwt(t), "{t}");
        assert_eq!(f.issuers.verify(t).await, Ok("acme".to_owned()), "{t}");
    }
    // ES's client claim is `client_id`: its `sub` does not count.
    let mut c = claims(ES);
    c["client_id"] = json!("globex");
    let t = token(header("ES256", Some("es-1")), &c, &f.ec);
    assert_eq!(f.issuers.verify(&t).await, Ok("globex".to_owned()));
    // An audience list naming one of the issuer's audiences.
    let mut c = claims(HS);
    c["aud"] = json!(["someone-else", "busgate-eu"]);
    assert_eq!(f.issuers.verify(&f.hs(&c)).await, Ok("acme".to_owned()));
    // One fetch per key set, then from the cache.
    for t in &tokens {
        f.issuers.verify(t).await.expect("still valid");
    }
    assert_eq!(
        [
            f.server.hits("rs"),
            f.server.hits("es"),
            f.server.hits("ed")
        ],
        [1, 1, 1]
    );
}

#[tokio::test]
async fn exp_and_nbf_are_checked_with_the_leeway() {
    let f = fixture().await;
    let cases = [
        (json!({"exp": now() - 60}), Err(JwtError::Expired)),
        (json!({"exp": now() - 10}), Ok("acme".to_owned())),
        (json!({"nbf": now() + 60}), Err(JwtError::NotYetValid)),
        (json!({"nbf": now() + 10}), Ok("acme".to_owned())),
        (json!({"nbf": now() - 10}), Ok("acme".to_owned())),
        // jsonwebtoken reads a non-numeric `exp` as none.
        (
            json!({"exp": "tomorrow"}),
            Err(JwtError::MissingClaim("exp".into())),
        ),
    ];
    for (change, expected) in cases {
        let issuers: [(&str, MakeToken); 2] = [(RS, Fixture::rs), (HS, Fixture::hs)];
        for (iss, make) in issuers {
            let mut c = claims(iss);
            for (k, v) in change.as_object().expect("object") {
                c[k] = v.clone();
            }
            assert_eq!(
                f.issuers.verify(&make(&f, &c)).await,
                expected,
                "{iss} {change}"
            );
        }
    }
}

#[tokio::test]
async fn audience_issuer_and_client_claim_are_checked() {
    let f = fixture().await;
    let with = |iss: &str, key: &str, value: Value| {
        let mut c = claims(iss);
        c[key] = value;
        c
    };
    let without = |iss: &str, key: &str| {
        let mut c = claims(iss);
        c.as_object_mut().expect("object").remove(key);
        c
    };
    for (c, expected) in [
        (with(RS, "aud", json!("other")), JwtError::WrongAudience),
        (with(RS, "aud", json!(["a", "b"])), JwtError::WrongAudience),
        (without(RS, "aud"), JwtError::MissingClaim("aud".into())),
        (without(RS, "exp"), JwtError::MissingClaim("exp".into())),
        (without(RS, "iss"), JwtError::UnknownIssuer),
        (
            with(RS, "iss", json!("https://evil.example")),
            JwtError::UnknownIssuer,
        ),
        (
            with(RS, "iss", json!(7)),
            JwtError::InvalidClaim("iss".into()),
        ),
        (without(RS, "sub"), JwtError::MissingClaim("sub".into())),
        (
            with(RS, "sub", json!(null)),
            JwtError::MissingClaim("sub".into()),
        ),
        (
            with(RS, "sub", json!("")),
            JwtError::InvalidClaim("sub".into()),
        ),
        (
            with(RS, "sub", json!(42)),
            JwtError::InvalidClaim("sub".into()),
        ),
        // jsonwebtoken refuses a spec claim of the wrong shape while reading the claims.
        (with(RS, "sub", json!(["acme"])), JwtError::Malformed),
        (
            with(RS, "sub", json!("x".repeat(MAX_CLIENT_NAME + 1))),
            JwtError::InvalidClaim("sub".into()),
        ),
        (
            with(RS, "sub", json!("ac\nme")),
            JwtError::InvalidClaim("sub".into()),
        ),
    ] {
        assert_eq!(f.issuers.verify(&f.rs(&c)).await, Err(expected), "{c}");
    }
    // A token of the HS issuer that says it is of the RS issuer is verified as the RS
    // issuer's, and refused; so is a valid HS token whose iss was changed after signing.
    let t = token(header("HS256", None), &claims(RS), &f.hs);
    assert_eq!(f.issuers.verify(&t).await, Err(JwtError::WrongAlgorithm));
    let valid = f.hs(&claims(HS));
    let mut parts: Vec<&str> = valid.split('.').collect();
    let forged = b64(&serde_json::to_vec(&with(HS, "sub", json!("admin"))).expect("json"));
    parts[1] = &forged;
    assert_eq!(
        f.issuers.verify(&parts.join(".")).await,
        Err(JwtError::BadSignature)
    );
}

#[tokio::test]
async fn alg_none_and_key_confusion_are_refused() {
    let f = fixture().await;
    // `alg: none`, with an empty signature and with one.
    for iss in [RS, HS] {
        let unsigned = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_vec(&claims(iss)).expect("json"))
        );
        assert_eq!(f.issuers.verify(&unsigned).await, Err(JwtError::Malformed));
        let t = format!("{unsigned}AAAA");
        assert_eq!(f.issuers.verify(&t).await, Err(JwtError::WrongAlgorithm));
        for alg in ["None", "NONE", "nOnE", "HS512", "RS512", "PS256", ""] {
            let t = token(header(alg, Some("rs-1")), &claims(iss), &f.hs);
            assert_eq!(
                f.issuers.verify(&t).await,
                Err(JwtError::WrongAlgorithm),
                "{alg}"
            );
        }
    }
    // HS256 signed with the RS256 issuer's public key: as DER, as the JWK's modulus, as PEM.
    let Signer::Rsa(pair) = &f.rsa else {
        unreachable!()
    };
    let der = pair.public().as_ref().to_vec();
    let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
    let pem = format!(
        "-----BEGIN RSA PUBLIC KEY-----\n{}\n-----END RSA PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    for public in [der, c.n.clone(), pem.into_bytes()] {
        let t = token(
            header("HS256", Some("rs-1")),
            &claims(RS),
            &Signer::Hmac(public),
        );
        assert_eq!(f.issuers.verify(&t).await, Err(JwtError::WrongAlgorithm));
    }
    // Another issuer's algorithm, and another key under a known kid.
    let t = token(header("ES256", Some("es-1")), &claims(ED), &f.ec);
    assert_eq!(f.issuers.verify(&t).await, Err(JwtError::WrongAlgorithm));
    let t = token(header("RS256", Some("rs-1")), &claims(RS), &f.rsa_other);
    assert_eq!(f.issuers.verify(&t).await, Err(JwtError::BadSignature));
    let t = token(header("EdDSA", Some("es-1")), &claims(ED), &f.ed);
    assert_eq!(f.issuers.verify(&t).await, Err(JwtError::UnknownKey));
    let t = token(
        header("HS256", None),
        &claims(HS),
        &Signer::Hmac(b"x".repeat(40)),
    );
    assert_eq!(f.issuers.verify(&t).await, Err(JwtError::BadSignature));
    let t = token(header("RS256", None), &claims(RS), &f.rsa);
    assert_eq!(f.issuers.verify(&t).await, Err(JwtError::MissingKeyId));
}

#[tokio::test]
async fn oversize_and_garbage_tokens_are_refused_before_any_fetch() {
    let f = fixture().await;
    let mut c = claims(RS);
    c["pad"] = json!("p".repeat(MAX_TOKEN_BYTES));
    let big = f.rs(&c);
    assert_eq!(f.issuers.verify(&big).await, Err(JwtError::TooLarge));
    let header_only = b64(br#"{"alg":"RS256","kid":"rs-1"}"#);
    let body = b64(&serde_json::to_vec(&claims(RS)).expect("json"));
    for garbage in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        "..".into(),
        "###.###.###".into(),
        format!("{header_only}.{body}.sig.extra"),
        format!("{header_only}.{body}.si+g/"),
        format!("{}.{body}.c2ln", b64(b"not json")),
        format!("{}.{body}.c2ln", b64(b"[1,2]")),
        format!("{header_only}.{}.c2ln", b64(b"not json")),
        format!("{header_only}.{}.c2ln", b64(b"\"a string\"")),
        format!("{}.{body}.c2ln", b64(br#"{"typ":"JWT"}"#)),
        "bgk_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ".into(),
        "\u{0}.\u{0}.\u{0}".into(),
    ] {
        let got = f.issuers.verify(&garbage).await;
        assert_eq!(got, Err(JwtError::Malformed), "{garbage:?}");
        if !garbage.starts_with(&header_only) {
            assert!(!looks_like_jwt(&garbage), "{garbage:?}");
        }
    }
    // A signature that is base64url but not of this token.
    let t = format!("{header_only}.{body}.c2ln");
    assert!(looks_like_jwt(&t));
    assert_eq!(f.issuers.verify(&t).await, Err(JwtError::BadSignature));
    assert_eq!(
        f.server.hits("rs"),
        1,
        "only the last token fetched the keys"
    );
    // No message repeats a byte of a token.
    for e in [
        JwtError::Malformed,
        JwtError::BadSignature,
        JwtError::TooLarge,
    ] {
        assert!(!e.to_string().contains("rs-1"), "{e}");
    }
}

#[tokio::test]
async fn an_unknown_kid_fetches_once_and_concurrent_misses_share_it() {
    let f = fixture().await;
    assert_eq!(f.server.hits("rs"), 0, "nothing is fetched at start");
    // 16 tokens at once, before any key is held: one fetch serves them all.
    let t = f.rs(&claims(RS));
    let results = futures::future::join_all((0..16).map(|_| f.issuers.verify(&t))).await;
    assert!(
        results.iter().all(|r| r.as_deref() == Ok("acme")),
        "{results:?}"
    );
    assert_eq!(f.server.hits("rs"), 1);
    // Unknown kids within the minute: refused at once, no fetch; known ones still pass.
    for kid in ["rs-3", "rs-4", "rs-3"] {
        let t = token(header("RS256", Some(kid)), &claims(RS), &f.rsa);
        assert_eq!(
            f.issuers.verify(&t).await,
            Err(JwtError::UnknownKey),
            "{kid}"
        );
    }
    let unknown: Vec<_> = (0..16)
        .map(|i| {
            token(
                header("RS256", Some(&format!("x-{i}"))),
                &claims(RS),
                &f.rsa,
            )
        })
        .collect();
    let results = futures::future::join_all(unknown.iter().map(|t| f.issuers.verify(t))).await;
    assert!(results.iter().all(|r| *r == Err(JwtError::UnknownKey)));
    assert_eq!(f.issuers.verify(&t).await.as_deref(), Ok("acme"));
    assert_eq!(f.server.hits("rs"), 1);
    // Another issuer's set is its own: its first token fetches it.
    let t = token(header("EdDSA", Some("ed-1")), &claims(ED), &f.ed);
    assert_eq!(f.issuers.verify(&t).await.as_deref(), Ok("acme"));
    assert_eq!((f.server.hits("rs"), f.server.hits("ed")), (1, 1));
}

#[tokio::test]
async fn a_refetch_after_the_minute_brings_new_keys_and_drops_withdrawn_ones() {
    let f = fixture().await;
    f.issuers.warm().await;
    assert_eq!(f.server.hits("rs"), 1);
    let Signer::Rsa(other) = &f.rsa_other else {
        unreachable!()
    };
    // The issuer rotates: rs-3 in, rs-1 out.
    f.server
        .answer("rs", Answer::Set(json!({"keys": [rsa_jwk("rs-3", other)]})));
    let new = token(header("RS256", Some("rs-3")), &claims(RS), &f.rsa_other);
    assert_eq!(f.issuers.verify(&new).await, Err(JwtError::UnknownKey));
    assert_eq!(f.server.hits("rs"), 1, "warm counted as the minute's fetch");
    f.issuers.jwks(RS).backdate(MIN_REFETCH).await;
    assert_eq!(f.issuers.verify(&new).await.as_deref(), Ok("acme"));
    assert_eq!(f.server.hits("rs"), 2);
    let old = f.rs(&claims(RS));
    assert_eq!(f.issuers.verify(&old).await, Err(JwtError::UnknownKey));
    assert_eq!(f.server.hits("rs"), 2);
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stale_set_is_fetched_again_in_the_background() {
    let f = fixture().await;
    let t = f.rs(&claims(RS));
    assert_eq!(f.issuers.verify(&t).await.as_deref(), Ok("acme"));
    // Older than jwks_refresh (600s): the next token still passes at once, with the keys held,
    // and a fetch starts beside it.
    f.issuers.jwks(RS).backdate(Duration::from_secs(601)).await;
    f.server.answer("rs", Answer::Status(StatusCode::NOT_FOUND));
    assert_eq!(f.issuers.verify(&t).await.as_deref(), Ok("acme"));
    eventually("a background fetch", || f.server.hits("rs") == 2).await;
    // It failed: the keys held still verify, and the next token starts no other fetch.
    assert_eq!(f.issuers.verify(&t).await.as_deref(), Ok("acme"));
    assert_eq!(f.server.hits("rs"), 2);
}

#[tokio::test]
async fn failed_fetches_keep_the_keys_held() {
    let f = fixture().await;
    let t = f.rs(&claims(RS));
    assert_eq!(f.issuers.verify(&t).await.as_deref(), Ok("acme"));
    let unknown = token(header("RS256", Some("rs-9")), &claims(RS), &f.rsa);
    let empty = json!({"keys": [{"kty": "oct", "kid": "rs-9", "k": b64(&[7; 32])}]});
    for (i, answer) in [
        Answer::Status(StatusCode::INTERNAL_SERVER_ERROR),
        Answer::Huge,
        Answer::Set(json!({"not": "a set"})),
        Answer::Set(empty),
        Answer::Hang,
    ]
    .into_iter()
    .enumerate()
    {
        f.server.answer("rs", answer);
        f.issuers.jwks(RS).backdate(MIN_REFETCH).await;
        // The fetch ends by its deadline (2s) even when the server never answers (60s).
        let refused = tokio::time::timeout(Duration::from_secs(10), f.issuers.verify(&unknown))
            .await
            .expect("within the fetch deadline");
        assert_eq!(refused, Err(JwtError::UnknownKey), "answer {i}");
        assert_eq!(f.server.hits("rs"), 2 + i as u64);
        assert_eq!(
            f.issuers.verify(&t).await.as_deref(),
            Ok("acme"),
            "answer {i}"
        );
    }
    // An unreachable server: the same.
    let mut s = issuer(RS, JwtAlgorithm::RS256, "http://127.0.0.1:9/jwks");
    s.jwks_timeout = Duration::from_millis(200);
    let alone = Issuers::new(&[s]).expect("issuers");
    assert_eq!(alone.verify(&t).await, Err(JwtError::UnknownKey));
}

#[test]
fn bad_issuer_settings_are_refused_before_start() {
    let dir = tempfile::tempdir().expect("dir");
    let short = dir.path().join("short");
    std::fs::write(&short, "short-secret-9\n").expect("write");
    let long = dir.path().join("long");
    std::fs::write(&long, "l".repeat(32)).expect("write");
    let hs = |f: &dyn Fn(&mut IssuerSettings)| {
        let mut s = issuer(HS, JwtAlgorithm::HS256, "");
        s.secret_file = long.display().to_string();
        f(&mut s);
        s
    };
    let rs = |f: &dyn Fn(&mut IssuerSettings)| {
        let mut s = issuer(RS, JwtAlgorithm::RS256, "https://idp.example/jwks");
        f(&mut s);
        s
    };
    assert!(Issuers::new(&[hs(&|_| {}), rs(&|_| {})]).is_ok());
    let bad: Vec<(&str, Vec<IssuerSettings>)> = vec![
        (
            "hs with jwks_url",
            vec![hs(&|s| s.jwks_url = "https://idp.example/jwks".into())],
        ),
        ("hs without secret", vec![hs(&|s| s.secret_file.clear())]),
        ("hs with both", vec![hs(&|s| s.secret_env = "HOME".into())]),
        (
            "short secret",
            vec![hs(&|s| s.secret_file = short.display().to_string())],
        ),
        (
            "missing file",
            vec![hs(&|s| s.secret_file = "/nonexistent/jwt".into())],
        ),
        (
            "unset env",
            vec![hs(&|s| {
                s.secret_file.clear();
                s.secret_env = "BUSGATE_TEST_NO_SUCH_VARIABLE".into();
            })],
        ),
        ("rs without jwks_url", vec![rs(&|s| s.jwks_url.clear())]),
        (
            "rs with a secret",
            vec![rs(&|s| s.secret_file = long.display().to_string())],
        ),
        (
            "not a url",
            vec![rs(&|s| s.jwks_url = "idp.example/jwks".into())],
        ),
        (
            "ftp",
            vec![rs(&|s| s.jwks_url = "ftp://idp.example/jwks".into())],
        ),
        ("no audience", vec![rs(&|s| s.audience.clear())]),
        (
            "empty audience",
            vec![rs(&|s| s.audience = vec![String::new()])],
        ),
        ("empty issuer", vec![rs(&|s| s.issuer.clear())]),
        ("empty claim", vec![rs(&|s| s.client_claim.clear())]),
        ("leeway", vec![rs(&|s| s.leeway = Duration::from_secs(301))]),
        ("timeout", vec![rs(&|s| s.jwks_timeout = Duration::ZERO)]),
        (
            "refresh",
            vec![rs(&|s| s.jwks_refresh = Duration::from_secs(1))],
        ),
        ("twice", vec![rs(&|_| {}), rs(&|_| {})]),
    ];
    for (what, issuers) in bad {
        let e = Issuers::new(&issuers).expect_err(what);
        assert!(
            matches!(e, busgate_shared::Error::Invalid { .. }),
            "{what}: {e}"
        );
        assert!(!e.to_string().contains("short-secret-9"), "{what}: {e}");
        let mut settings = Settings::default();
        settings.auth.issuers = issuers;
        assert!(settings.validate().is_err(), "{what}");
    }
    // A URL with credentials is not repeated in the error.
    let e = Issuers::new(&[rs(&|s| s.jwks_url = "ftp://u:pa55w0rd@idp.example/".into())])
        .expect_err("ftp");
    assert!(!e.to_string().contains("pa55w0rd"), "{e}");
}

#[test]
fn issuers_load_from_the_settings_file_and_show_no_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "top-secret-value-".repeat(3)).expect("write");
    let file = dir.path().join("busgate.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[[auth.issuers]]
issuer = "https://idp.example"
audience = "busgate"
algorithm = "RS256"
jwks_url = "https://idp.example/.well-known/jwks.json"

[[auth.issuers]]
issuer = "internal"
audience = ["busgate", "busgate-eu"]
algorithm = "HS256"
secret_file = "{}"
client_claim = "client"
leeway = "5s"
"#,
            secret.display()
        ),
    )
    .expect("write");
    let settings = Settings::load(Some(&file)).expect("load");
    settings.validate().expect("valid");
    let issuers = &settings.auth.issuers;
    assert_eq!(issuers.len(), 2);
    assert_eq!(issuers[0].audience, ["busgate"]);
    assert_eq!(issuers[0].client_claim, "sub");
    assert_eq!(issuers[0].leeway, Duration::from_secs(30));
    assert_eq!(issuers[1].audience, ["busgate", "busgate-eu"]);
    assert_eq!(issuers[1].leeway, Duration::from_secs(5));
    let built = Issuers::new(issuers).expect("issuers");
    let shown = [
        format!("{settings:?}"),
        format!("{built:?}"),
        serde_json::to_string(&settings.redacted()).expect("json"),
    ];
    for text in shown {
        assert!(!text.contains("top-secret-value"), "{text}");
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[auth.issuers]]\nissuer = \"x\"\naudience = \"a\"\nalgorithm = \"none\"\njwks_url = \"https://x/\"\n",
    )
    .expect("write");
    assert!(
        Settings::load(Some(&bad)).is_err(),
        "alg none is no algorithm"
    );
    std::fs::write(
        &bad,
        "[[auth.issuers]]\nissuer = \"x\"\naudience = \"a\"\nalgorithm = \"RS256\"\njwks_url = \"https://x/\"\nsecret = \"inline\"\n",
    )
    .expect("write");
    assert!(Settings::load(Some(&bad)).is_err(), "no inline secret");
}

#[test]
fn the_size_bound_is_exact() {
    let shaped = |len: usize| format!("aaaa.bbbb.{}", "c".repeat(len - 10));
    assert_eq!(shaped(MAX_TOKEN_BYTES).len(), MAX_TOKEN_BYTES);
    assert!(parts(&shaped(MAX_TOKEN_BYTES)).is_ok());
    assert_eq!(parts(&shaped(MAX_TOKEN_BYTES + 1)), Err(JwtError::TooLarge));
    assert_eq!(
        parts(&"a.".repeat(MAX_TOKEN_BYTES)),
        Err(JwtError::TooLarge),
        "the size is checked before the dots are counted"
    );
}
