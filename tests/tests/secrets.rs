//! End-to-end: secrets stay secret, problems carry their request id, callbacks refuse without
//! telling what a name resolved to, and adapters refuse `..` and bodies the bus cannot carry.
//!
//! The secrets are distinctive strings, so a search for them in a log, an output or a process's
//! argv cannot match anything else.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use busgate_tests::fixture::{Callbacks, Settings};
use busgate_tests::gateway::up_command;
use busgate_tests::support::{self, bin, Gateway, NatsServer, Proc, Stack, Worker, ADMIN_TOKEN};
use serde_json::{json, Value};

const NATS_USER: &str = "busgate";
const NATS_PASSWORD: &str = "nats-pw-7f3a9c1e5b";
/// A valid callback secret (the Standard Webhooks example key).
const CALLBACK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn settings_file(text: &str) -> tempfile::NamedTempFile {
    busgate_tests::fixture::file(text, ".toml")
}

fn check_config(file: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin("busgate"))
        .args(["check-config", "--config"])
        .arg(file)
        .env_remove("BUSGATE_NATS__URL")
        .env_remove("BUSGATE_ADMIN__TOKEN")
        .output()
        .expect("check-config runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A gateway on a NATS server that requires a password, with an admin token: neither appears
/// in its log (from start to shutdown), in an adapter's log, or in `check-config` output.
#[tokio::test]
async fn the_nats_password_and_admin_token_reach_no_log_and_no_check_config_output() {
    let nats = NatsServer::start_with_auth(NATS_USER, NATS_PASSWORD);
    assert!(nats.url.contains(NATS_PASSWORD));
    let demo = Worker::demo("service1");
    let adapter = Worker::adapter(&nats, "service1", &demo.1);
    let mut gateway = Gateway::start(&nats, &Settings::builtin()).await;
    // Connected with the password: an answer came over NATS.
    let answer = reqwest::get(gateway.url("/api/orders/A1"))
        .await
        .expect("answer");
    assert_eq!(answer.status(), 200);
    let listening = gateway.proc.wait_for_message("listening");
    assert_eq!(
        listening["nats"],
        format!("nats://***@127.0.0.1:{}", nats.port),
        "the URL is logged, redacted"
    );
    assert_eq!(gateway.proc.terminate(Duration::from_secs(15)), Some(0));
    for proc in [&gateway.proc, &adapter] {
        for secret in [NATS_PASSWORD, ADMIN_TOKEN] {
            let leaks: Vec<String> = proc
                .lines()
                .into_iter()
                .filter(|l| l.contains(secret))
                .collect();
            assert!(
                leaks.is_empty(),
                "{}: {secret} logged: {leaks:?}",
                proc.name
            );
        }
    }

    // check-config prints the effective settings with every secret as ***.
    let file = settings_file(&format!(
        "[nats]\nurl = \"{}\"\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n[callbacks]\nsecret = \"{CALLBACK_SECRET}\"\n",
        nats.url
    ));
    let (code, text) = check_config(file.path());
    assert_eq!(code, Some(0), "{text}");
    let printed: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        printed["nats"]["url"],
        format!("nats://***@127.0.0.1:{}", nats.port)
    );
    assert_eq!(printed["admin"]["token"], "***");
    assert_eq!(printed["callbacks"]["secret"], "***");
    for secret in [NATS_PASSWORD, ADMIN_TOKEN, &CALLBACK_SECRET[6..]] {
        assert!(!text.contains(secret), "check-config printed {secret}");
    }

    // The worker's --help names the variable it reads the URL from, not the URL.
    let help = Command::new(bin("busgate-worker"))
        .arg("--help")
        .env("BUSGATE_NATS__URL", &nats.url)
        .output()
        .expect("busgate-worker --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("BUSGATE_NATS__URL"), "{help}");
    assert!(!help.contains(NATS_PASSWORD), "{help}");

    // A short token is refused (exit 64) without being repeated; a missing token file is named.
    let short = "short-admin-token-1234";
    let file = settings_file(&format!("[admin]\ntoken = \"{short}\"\n"));
    let (code, text) = check_config(file.path());
    assert_eq!(code, Some(64), "{text}");
    assert!(
        text.contains("admin.token") && !text.contains(short),
        "{text}"
    );
    let missing = "/nonexistent/busgate-admin-token-file";
    let file = settings_file(&format!("[admin]\ntoken_file = \"{missing}\"\n"));
    let (code, text) = check_config(file.path());
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains(missing), "{text}");
}

/// Every instance uses the same admin token, from a secret file; a gateway without one does
/// not serve the admin listener, and generates no token to log.
#[tokio::test]
async fn instances_share_a_token_from_a_file_and_none_is_generated() {
    let nats = NatsServer::start();
    let token = "file-admin-token-5c2e8a0b4d6f1e3a9b7c";
    let file = settings_file(&format!("{token}\n"));
    let path = file.path().display().to_string();
    let from_file = |cmd: &mut Command| {
        cmd.env_remove("BUSGATE_ADMIN__TOKEN")
            .env("BUSGATE_ADMIN__TOKEN_FILE", &path);
    };
    let a = Gateway::start_with(&nats, &Settings::default(), from_file).await;
    let b = Gateway::start_with(&nats, &Settings::default(), from_file).await;
    let http = reqwest::Client::new();
    for gateway in [&a, &b] {
        let url = gateway.admin_url("/admin/v1/services");
        for (bearer, status) in [(token, 200), (ADMIN_TOKEN, 401)] {
            let answer = http.get(&url).bearer_auth(bearer).send().await;
            assert_eq!(answer.expect("answer").status(), status, "{url}");
        }
        assert!(
            !gateway.proc.logged(token),
            "{} logged the token",
            gateway.proc.name
        );
    }

    // No token: the public listener serves, the admin listener does not, and the log says so.
    let mut cmd = Command::new(bin("busgate"));
    cmd.arg("gateway")
        .env_remove("BUSGATE_ADMIN__TOKEN")
        .env_remove("BUSGATE_ADMIN__TOKEN_FILE")
        .env("BUSGATE_NATS__URL", &nats.url)
        .env("BUSGATE_HTTP__LISTEN", "127.0.0.1:0")
        .env("BUSGATE_ADMIN__LISTEN", "127.0.0.1:0")
        .env("BUSGATE_LOG__FORMAT", "json");
    let mut tokenless = Proc::spawn("gateway without a token", cmd);
    tokenless.wait_for_message(
        "admin.token and admin.token_file are not set: the admin listener is not served",
    );
    let addr = tokenless.wait_for_message("listening")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    // Serving (so its signal handler is in place, too).
    support::eventually(support::READY_WITHIN, || async {
        matches!(http.get(format!("http://{addr}/health/live")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    assert_eq!(tokenless.terminate(Duration::from_secs(15)), Some(0));
    assert!(
        !tokenless.logged("admin listening"),
        "an admin listener was served without a token"
    );
    // Nothing that looks like a generated token (32 hex digits) was logged.
    for line in tokenless.lines() {
        let hex_run = line
            .split(|c: char| !c.is_ascii_hexdigit())
            .any(|run| run.len() >= 32);
        assert!(!hex_run, "{line}");
    }
}

/// The pids of `parent`'s children, from /proc.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// Two consecutive free ports on loopback (for `up`'s two demo services).
fn two_free_ports() -> u16 {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = first.local_addr().expect("addr").port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free ports");
}

/// `busgate up` with a settings file whose NATS URL carries a password: its children get the
/// URL in their environment, so neither it nor the generated admin token is in any child's
/// argv (what `ps` shows every user); the token is in the banner and in no log line.
#[tokio::test]
async fn busgate_up_keeps_secrets_out_of_argv_and_logs() {
    let nats = NatsServer::start_with_auth(NATS_USER, NATS_PASSWORD);
    let file = settings_file(&Settings::builtin().nats_url(&nats.url).to_toml());
    let data = tempfile::tempdir().expect("data dir");
    let cmd = up_command(file.path(), data.path(), two_free_ports());
    let mut up = Proc::spawn("busgate up", cmd);
    let token = up.wait_for(Duration::from_secs(40), |line| {
        let (_, rest) = line.split_once("Authorization: Bearer ")?;
        Some(rest.trim_end().trim_end_matches(')').to_owned())
    });
    assert!(token.len() >= 32, "{token}");
    // The banner names the client `demo` and its key; the key works, nothing without it.
    let key = up.wait_for(Duration::from_secs(40), |line| {
        let (_, rest) = line.split_once("client key ")?;
        Some(rest.split_whitespace().next()?.to_owned())
    });
    assert!(key.starts_with("bgk_"), "{key}");
    let gateway = up.wait_for(Duration::from_secs(5), |line| {
        let (_, rest) = line.split_once("  gateway   ")?;
        Some(rest.trim().to_owned())
    });
    let http = reqwest::Client::new();
    let with_key = http
        .get(format!("{gateway}/api/orders/A1"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(with_key.status(), 200);
    let without = http
        .get(format!("{gateway}/api/orders/A1"))
        .send()
        .await
        .expect("request");
    assert_eq!(without.status(), 401);

    let kids = children(up.pid().as_raw() as u32);
    assert!(kids.len() >= 4, "two demos and two adapters: {kids:?}");
    let mut adapters = 0;
    for pid in &kids {
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
        for secret in [NATS_PASSWORD, token.as_str()] {
            assert!(
                !argv.contains(secret),
                "argv of {pid} holds a secret: {argv}"
            );
        }
        if argv.contains(" adapter ") {
            adapters += 1;
            // The URL went through the environment instead.
            let env = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
            let env = String::from_utf8_lossy(&env);
            assert!(
                env.split('\0')
                    .any(|v| v == format!("BUSGATE_NATS__URL={}", nats.url)),
                "adapter {pid} has no BUSGATE_NATS__URL"
            );
        }
    }
    // One adapter process serves every demo service (one NATS connection per merge).
    assert_eq!(adapters, 1, "{kids:?}");

    assert_eq!(up.terminate(Duration::from_secs(30)), Some(0));
    for line in up.lines() {
        assert!(
            !line.contains(NATS_PASSWORD),
            "busgate up printed the password: {line}"
        );
        if line.contains(&token) {
            assert!(
                line.starts_with("  admin "),
                "the token outside the banner: {line}"
            );
        }
        if line.contains(&key) {
            assert!(
                line.starts_with("  client key ") || line.starts_with("  export BUSGATE_KEY="),
                "the client key outside the banner: {line}"
            );
        }
    }
    for log in std::fs::read_dir(data.path().join("logs"))
        .expect("logs")
        .flatten()
    {
        let text = std::fs::read_to_string(log.path()).expect("log");
        for secret in [NATS_PASSWORD, token.as_str()] {
            assert!(
                !text.contains(secret),
                "{} holds a secret",
                log.path().display()
            );
        }
    }
}

/// Every answer of the public listener has a `Busgate-Request-Id`, and every problem document
/// the same id: configured routes, built-in paths, their 404s and 405s, `request-not-found`.
#[tokio::test]
async fn every_answer_and_problem_carries_its_request_id() {
    let stack = Stack::start(&Settings::default()).await;
    let http = reqwest::Client::new();
    let unknown = "01900000-0000-7000-8000-000000000000";
    let cases: Vec<(&str, String, Option<&str>, u16)> = vec![
        ("GET", "/api/orders/A1".into(), None, 200),
        ("GET", "/api/orders/missing-A1".into(), None, 404),
        ("POST", "/api/order".into(), Some("{nope"), 400),
        ("GET", "/nope".into(), None, 404),
        ("DELETE", "/api/orders/A1".into(), None, 405),
        ("GET", "/health/live".into(), None, 200),
        ("GET", "/health/ready".into(), None, 200),
        ("PUT", "/health/live".into(), None, 405),
        ("POST", "/metrics".into(), None, 405),
        ("GET", "/api/requests/not-a-uuid".into(), None, 404),
        ("GET", format!("/api/requests/{unknown}"), None, 404),
        ("GET", format!("/api/requests/{unknown}/events"), None, 404),
        ("DELETE", format!("/api/requests/{unknown}"), None, 405),
    ];
    for (method, path, body, status) in cases {
        let mut request = http.request(method.parse().expect("method"), stack.gateway.url(&path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        // `request-not-found` needs JetStream; it may still be starting.
        let until = Instant::now() + support::READY_WITHIN;
        let response = loop {
            let response = request
                .try_clone()
                .expect("clone")
                .send()
                .await
                .expect("answer");
            if response.status() != 503 || Instant::now() > until {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(response.status(), status, "{method} {path}");
        let id = response
            .headers()
            .get("busgate-request-id")
            .unwrap_or_else(|| panic!("{method} {path}: no Busgate-Request-Id"))
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(uuid_like(&id), "{method} {path}: {id}");
        let problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
        if status >= 400 {
            assert!(problem, "{method} {path}: not a problem document");
            let doc: Value = response.json().await.expect("json");
            assert_eq!(doc["request_id"], id.as_str(), "{method} {path}: {doc}");
        }
    }
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.bytes().filter(|b| *b == b'-').count() == 4
}

async fn submit_callback(gateway: &Gateway, url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(gateway.url("/api/order"))
        .json(&json!({"order_id": "CB1", "callback_url": url}))
        .send()
        .await
        .expect("answer")
}

/// A refused callback says "refused" and a class, never the address a name resolved to; the
/// log has the detail with the request id. Ports: 80 and 443, plus what the allowlist names.
#[tokio::test]
async fn callback_refusals_name_no_address_and_ports_follow_the_allowlist() {
    let open = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = open.local_addr().expect("addr").port();
    let settings = Settings::default()
        .callbacks(Callbacks::signed(CALLBACK_SECRET).allow(&format!("127.0.0.1:{port}")));
    let stack = Stack::start(&settings).await;
    let cases = [
        // A name that resolves to loopback and one that does not resolve: the same words.
        ("http://localhost/x".to_owned(), "refused: host not allowed"),
        (
            "http://busgate-nx.invalid/x".to_owned(),
            "refused: host not allowed",
        ),
        (
            "http://10.0.0.5/x".to_owned(),
            "refused: address not allowed",
        ),
        (
            "http://[64:ff9b:1::a00:5]/x".to_owned(),
            "refused: address not allowed",
        ),
        (
            "http://[2001::5]/x".to_owned(),
            "refused: address not allowed",
        ),
        (
            "http://8.8.8.8:8080/x".to_owned(),
            "refused: port not allowed",
        ),
        // The allowlisted address, on another port than the one it names.
        (
            format!("http://127.0.0.1:{}/x", port.wrapping_add(1)),
            "refused: address not allowed",
        ),
        (
            "http://127.0.0.1/x".to_owned(),
            "refused: address not allowed",
        ),
    ];
    let mut localhost_detail = String::new();
    for (url, words) in &cases {
        let response = submit_callback(&stack.gateway, url).await;
        assert_eq!(response.status(), 400, "{url}");
        let id = response.headers()["busgate-request-id"]
            .to_str()
            .expect("id")
            .to_owned();
        let problem: Value = response.json().await.expect("json");
        assert_eq!(
            problem["type"], "urn:busgate:problem:callback-refused",
            "{url}"
        );
        let detail = problem["detail"].as_str().expect("detail");
        assert!(detail.contains(words), "{url}: {detail}");
        for leak in [
            "127.0.0.1",
            "::1",
            "10.0.0.5",
            "8.8.8.8",
            "localhost",
            "invalid",
            "resolves",
        ] {
            assert!(!detail.contains(leak), "{url}: {detail}");
        }
        // The log has the detail, with this request's id.
        let logged = stack.gateway.proc.wait_for(support::READY_WITHIN, |line| {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["message"] == "callback_url refused" && v["request_id"] == id.as_str())
                .then(|| v["detail"].as_str().unwrap_or_default().to_owned())
        });
        if url.contains("localhost") {
            localhost_detail = logged;
        }
    }
    // What localhost resolved to is in the log, not in the answer.
    assert!(
        localhost_detail.contains("127.0.0.1") || localhost_detail.contains("::1"),
        "{localhost_detail}"
    );
    // The port the allowlist names is accepted.
    let accepted = submit_callback(&stack.gateway, &format!("http://127.0.0.1:{port}/x")).await;
    assert_eq!(accepted.status(), 202);
}

type Seen = Arc<Mutex<Vec<String>>>;

/// An upstream that records every request target and answers `body` to each.
async fn recording_upstream(body: String) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: axum::http::Uri| {
            let seen = seen.clone();
            let body = body.clone();
            async move {
                seen.lock().expect("seen").push(uri.to_string());
                ([("content-type", "application/json")], body)
            }
        }
    });
    (support::serve(app).await, seen)
}

/// With an `order_id` pattern that lets dots through, `.` and `..` are refused by the adapter
/// before a URL is built: the upstream sees no request that could walk its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_order_ids_never_walk_the_upstream_path() {
    let nats = NatsServer::start();
    let (base, seen) = recording_upstream(r#"{"ok":true}"#.into()).await;
    let _adapter = Worker::adapter(&nats, "service1", &base);
    let settings = Settings::builtin().order_id_pattern("^[A-Za-z0-9._-]{1,64}$");
    let gateway = Gateway::start(&nats, &settings).await;
    let http = reqwest::Client::new();
    for id in ["..", "."] {
        let response = http
            .post(gateway.url("/api/order"))
            .json(&json!({ "order_id": id }))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 502, "{id}");
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["type"], "urn:busgate:problem:upstream-error");
        assert_eq!(
            problem["sources"]["service1"]["error"]["code"],
            "bad_request"
        );
    }
    assert!(seen.lock().expect("seen").is_empty(), "{:?}", seen.lock());
    // Dots inside an id are an ordinary path segment.
    let response = http
        .post(gateway.url("/api/order"))
        .json(&json!({ "order_id": "a..b" }))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
    assert_eq!(*seen.lock().expect("seen"), ["/order/a..b"]);
}

/// An upstream body larger than the server's max_payload is answered at once with
/// `upstream_too_large`, not left to become a 504 at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_over_max_payload_is_an_error_at_once() {
    let nats = NatsServer::start_with_max_payload(64 * 1024);
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(100 * 1024));
    let (base, seen) = recording_upstream(big).await;
    let _adapter = Worker::adapter(&nats, "service1", &base);
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let started = Instant::now();
    let response = reqwest::get(gateway.url("/api/orders/A1"))
        .await
        .expect("answer");
    let took = started.elapsed();
    println!("upstream_too_large answered in {took:?}");
    assert_eq!(response.status(), 502);
    let problem: Value = response.json().await.expect("json");
    assert_eq!(
        problem["sources"]["service1"]["error"]["code"], "upstream_too_large",
        "{problem}"
    );
    // The built-in route's deadline is 1 s and service1's timeout 800 ms.
    assert!(took < Duration::from_millis(700), "answered after {took:?}");
    assert_eq!(seen.lock().expect("seen").len(), 1);
}

/// JWT issuers: `check-config` exits 64 on a bad issuer before anything starts, and neither it
/// nor an error ever shows an HS256 secret (only the name of its file).
#[test]
fn jwt_issuer_settings_are_checked_and_their_secret_never_shown() {
    const SECRET: &str = "jwt-secret-4d8e2a6c0f1b3e5a7c9d2f4b6a8c0e1f";
    let secret = settings_file(&format!("{SECRET}\n"));
    let short = settings_file("jwt-short-2b4d\n");
    let path = |f: &tempfile::NamedTempFile| f.path().display().to_string();
    let good = settings_file(&format!(
        "[[auth.issuers]]\nissuer = \"internal\"\naudience = \"busgate\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n\n\
         [[auth.issuers]]\nissuer = \"https://idp.example\"\naudience = [\"busgate\"]\nalgorithm = \"EdDSA\"\njwks_url = \"https://idp.example/jwks\"\n",
        path(&secret)
    ));
    let (code, text) = check_config(good.path());
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&path(&secret)),
        "the file's name is shown: {text}"
    );
    assert!(!text.contains(SECRET), "{text}");
    for (what, issuer) in [
        (
            "HS256 with a key set",
            format!("algorithm = \"HS256\"\nsecret_file = \"{}\"\njwks_url = \"https://idp.example/jwks\"", path(&secret)),
        ),
        ("RS256 without a key set", "algorithm = \"RS256\"".to_owned()),
        ("a key set URL that is none", "algorithm = \"ES256\"\njwks_url = \"idp.example\"".to_owned()),
        ("a short secret", format!("algorithm = \"HS256\"\nsecret_file = \"{}\"", path(&short))),
        ("alg none", "algorithm = \"none\"\njwks_url = \"https://idp.example/jwks\"".to_owned()),
        ("an inline secret", format!("algorithm = \"HS256\"\nsecret = \"{SECRET}\"")),
    ] {
        let file = settings_file(&format!(
            "[[auth.issuers]]\nissuer = \"x\"\naudience = \"busgate\"\n{issuer}\n"
        ));
        let (code, text) = check_config(file.path());
        assert_eq!(code, Some(64), "{what}: {text}");
        assert!(text.contains("auth"), "{what}: the error names the section: {text}");
        for secret in [SECRET, "jwt-short-2b4d"] {
            assert!(!text.contains(secret), "{what}: {text}");
        }
    }
}
