//! End-to-end: upstreams as configuration. A real nats-server, the real `busgate gateway`,
//! `busgate-worker adapters` processes started before any service exists, and a real HTTP
//! server (in this test process) as the upstream.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use busgate_tests::fixture::Settings;
use busgate_tests::support::{self, bin, eventually, serve, Gateway, NatsServer, Proc, TestCa};
use serde_json::{json, Value};

/// What the upstream saw: calls per `X-Worker` header, and every `X-Secret` value.
#[derive(Default)]
struct Seen {
    by_worker: HashMap<String, usize>,
    secrets: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn note(seen: &Shared, headers: &HeaderMap) {
    let mut seen = seen.lock().expect("seen");
    let worker = headers
        .get("x-worker")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    *seen.by_worker.entry(worker).or_default() += 1;
    if let Some(secret) = headers.get("x-secret").and_then(|v| v.to_str().ok()) {
        seen.secrets.push(secret.to_owned());
    }
}

/// A real HTTP server on a free port with one path per behaviour; returns its base URL.
async fn upstream() -> (String, Shared) {
    let seen = Shared::default();
    let app = axum::Router::new()
        // `/a/{id}` and `/b/{id}`: the same answer, naming which one was asked.
        .route(
            "/{from}/{id}",
            get(
                |State(s): State<Shared>,
                 h: HeaderMap,
                 Path((from, id)): Path<(String, String)>| async move {
                    if from != "a" && from != "b" {
                        return StatusCode::NOT_FOUND.into_response();
                    }
                    note(&s, &h);
                    axum::Json(json!({"from": from, "id": id})).into_response()
                },
            ),
        )
        .route("/text/{id}", get(|| async { "plain words, not JSON" }))
        .route(
            "/big/{id}",
            get(|| async { axum::Json(json!({"blob": "x".repeat(2 * 1024 * 1024)})) }),
        )
        .route(
            "/redirect/{id}",
            get(|| async { (StatusCode::FOUND, [("location", "/a/elsewhere")]).into_response() }),
        )
        .route(
            "/fail/{id}",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/slow/{id}",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                axum::Json(json!({}))
            }),
        )
        .with_state(seen.clone());
    (serve(app).await, seen)
}

/// `busgate-worker adapters` on `nats`, with `WORKER_NAME` (sent as `X-Worker` by services
/// that ask for it) and `extra` environment; ready once it follows the configuration.
fn adapters(nats: &NatsServer, worker: &str, extra: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(bin("busgate-worker"));
    cmd.arg("adapters")
        .env("BUSGATE_NATS__URL", &nats.url)
        .env("BUSGATE_LOG__FORMAT", "json")
        .env("WORKER_NAME", worker);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Proc::spawn(&format!("adapters-{worker}"), cmd)
}

async fn admin(
    gateway: &Gateway,
    method: &str,
    path: &str,
    if_match: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let answer = gateway.admin_send(method, path, if_match, body).await;
    (answer.status, answer.body)
}

/// Creates `name` among `kind` (`services`, `routes`) through the admin API; asserts 201.
async fn create(gateway: &Gateway, kind: &str, name: &str, spec: Value) {
    let body = json!({"name": name, "spec": spec});
    let path = format!("/admin/v1/{kind}");
    let (status, answer) = admin(gateway, "POST", &path, None, Some(&body)).await;
    assert_eq!(status, 201, "{kind}/{name}: {answer}");
}

fn service(url: &str) -> Value {
    json!({"timeout": "2s", "upstream": {"url": url, "headers": {"X-Worker": {"env": "WORKER_NAME"}}}})
}

/// The test upstream, a NATS server and a gateway on it with the built-in settings.
async fn upstream_and_gateway() -> (String, Shared, NatsServer, Gateway) {
    let (base, seen) = upstream().await;
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    (base, seen, nats, gateway)
}

fn route(path: &str, targets: Value) -> Value {
    json!({"bindings": [{"method": "GET", "path": path}], "deadline": "3s", "targets": targets})
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A service created through the admin API answers within a second with no process started
/// after it; a changed upstream moves the traffic; a deleted service leaves its queue group.
#[tokio::test]
async fn a_service_created_through_the_admin_api_is_served_followed_and_left() {
    let (base, _, nats, gateway) = upstream_and_gateway().await;
    let follower = adapters(&nats, "a", &[]);
    follower.wait_for(support::READY_WITHIN, |l| {
        l.contains("nats connected").then_some(())
    });

    let created = Instant::now();
    let billing = service(&format!("{base}/a/{{order_id}}"));
    create(&gateway, "services", "billing", billing).await;
    let bill = route("/api/bill/{order_id}", json!([{"service": "billing"}]));
    create(&gateway, "routes", "bill", bill).await;
    let url = gateway.url("/api/bill/A-1");
    eventually(Duration::from_secs(1), || async {
        get_json(&url).await.1["data"]["billing"]["from"] == "a"
    })
    .await;
    assert!(created.elapsed() < Duration::from_secs(3));
    let (_, answer) = get_json(&url).await;
    assert_eq!(answer["data"]["billing"]["id"], "A-1");

    // The live instance says which mode serves it and from where.
    let client = nats.client().await;
    let info = client
        .request("$SRV.INFO.billing", "".into())
        .await
        .expect("info");
    let info: Value = serde_json::from_slice(&info.payload).expect("json");
    assert_eq!(info["metadata"]["busgate.mode"], "adapters");
    assert_eq!(
        info["metadata"]["busgate.upstream"],
        format!("{base}/a/{{order_id}}")
    );

    // Requests keep flowing while the upstream changes: none is dropped or fails.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (url, stop) = (url.clone(), stop.clone());
        async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(get_json(&url).await.0);
            }
            statuses
        }
    });
    let (status, body) = admin(
        &gateway,
        "PUT",
        "/admin/v1/services/billing",
        Some("*"),
        Some(&service(&format!("{base}/b/{{order_id}}"))),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(2), || async {
        get_json(&url).await.1["data"]["billing"]["from"] == "b"
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = load.await.expect("load");
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let (status, _) = admin(&gateway, "DELETE", "/admin/v1/routes/bill", Some("*"), None).await;
    assert_eq!(status, 204);
    let (status, _) = admin(
        &gateway,
        "DELETE",
        "/admin/v1/services/billing",
        Some("*"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let subject = busgate_shared::subject::service("billing");
    eventually(Duration::from_secs(3), || {
        let client = client.clone();
        let subject = subject.clone();
        async move {
            matches!(
                client.request(subject, "{}".into()).await,
                Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders
            )
        }
    })
    .await;
    assert!(follower.logged("leaving its queue group"));
}

/// Two `adapters` processes share a service's load through its queue group, counted at the
/// upstream by the `X-Worker` header each takes from its own environment.
#[tokio::test]
async fn two_adapters_processes_share_the_load() {
    let (base, seen, nats, gateway) = upstream_and_gateway().await;
    let first = adapters(&nats, "one", &[]);
    let second = adapters(&nats, "two", &[]);
    let (status, _) = admin(
        &gateway,
        "POST",
        "/admin/v1/services",
        None,
        Some(&json!({"name": "billing", "spec": service(&format!("{base}/a/{{order_id}}"))})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = admin(
        &gateway,
        "POST",
        "/admin/v1/routes",
        None,
        Some(&json!({"name": "bill", "spec": route("/api/bill/{order_id}", json!([{"service": "billing"}]))})),
    )
    .await;
    assert_eq!(status, 201);
    for proc in [&first, &second] {
        proc.wait_for(support::READY_WITHIN, |l| {
            (l.contains("\"serving\"") && l.contains("billing")).then_some(())
        });
    }
    seen.lock().expect("seen").by_worker.clear();
    let http = reqwest::Client::new();
    for i in 0..200 {
        let response = http
            .get(gateway.url(&format!("/api/bill/o{i}")))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200);
    }
    let seen = seen.lock().expect("seen");
    let one = seen.by_worker.get("one").copied().unwrap_or(0);
    let two = seen.by_worker.get("two").copied().unwrap_or(0);
    assert_eq!(one + two, 200, "{:?}", seen.by_worker);
    assert!(one >= 80 && two >= 80, "{:?}", seen.by_worker);
}

/// Every kind of bad upstream is its own `error` code in `sources`, at once: none waits for
/// the route's 3 s deadline.
#[tokio::test]
async fn bad_upstreams_give_their_codes_at_once() {
    let (base, _) = upstream().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused = format!(
        "http://{}/x/{{order_id}}",
        closed.local_addr().expect("addr")
    );
    drop(closed);
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let _follower = adapters(&nats, "a", &[]);
    let cases = [
        ("ok", format!("{base}/a/{{order_id}}"), None, None),
        ("unreach", refused, None, Some("upstream_unreachable")),
        (
            "text",
            format!("{base}/text/{{order_id}}"),
            None,
            Some("upstream_bad_body"),
        ),
        (
            "big",
            format!("{base}/big/{{order_id}}"),
            None,
            Some("upstream_too_large"),
        ),
        (
            "redir",
            format!("{base}/redirect/{{order_id}}"),
            None,
            Some("upstream_redirect"),
        ),
        (
            "fail",
            format!("{base}/fail/{{order_id}}"),
            None,
            Some("upstream_status"),
        ),
        (
            "slow",
            format!("{base}/slow/{{order_id}}"),
            Some("300ms"),
            Some("upstream_timeout"),
        ),
        (
            "nokey",
            format!("{base}/a/{{order_id}}"),
            None,
            Some("upstream_secret_missing"),
        ),
    ];
    let mut targets = Vec::new();
    for (name, url, timeout, _) in &cases {
        let mut upstream = json!({"url": url});
        if let Some(t) = timeout {
            upstream["timeout"] = json!(t);
        }
        if *name == "nokey" {
            upstream["headers"] = json!({"X-Secret": {"env": "BUSGATE_TEST_UNSET_KEY"}});
        }
        let (status, body) = admin(
            &gateway,
            "POST",
            "/admin/v1/services",
            None,
            Some(&json!({"name": name, "spec": {"timeout": "3s", "upstream": upstream}})),
        )
        .await;
        assert_eq!(status, 201, "{name}: {body}");
        targets.push(json!({"service": name, "required": *name == "ok"}));
    }
    let (status, body) = admin(
        &gateway,
        "POST",
        "/admin/v1/routes",
        None,
        Some(&json!({"name": "faults", "spec": route("/api/faults/{order_id}", json!(targets))})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = gateway.url("/api/faults/A1");
    // Served once every service answers something other than no responders.
    eventually(Duration::from_secs(5), || async {
        let (_, body) = get_json(&url).await;
        cases
            .iter()
            .all(|(name, ..)| body["sources"][name]["status"] != "no_responders")
    })
    .await;
    let started = Instant::now();
    let (status, body) = get_json(&url).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert_eq!(body["complete"], false);
    for (name, _, _, code) in &cases {
        match code {
            None => assert_eq!(body["sources"][name]["status"], "ok", "{body}"),
            Some(code) => {
                assert_eq!(body["sources"][name]["status"], "error", "{name}: {body}");
                assert_eq!(
                    body["sources"][name]["error"]["code"], *code,
                    "{name}: {body}"
                );
            }
        }
    }
}

/// Bad upstreams are 422s naming the field; so is one aimed at the gateway itself.
#[tokio::test]
async fn upstream_validation_names_the_field() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let admin_port = gateway.admin.rsplit(':').next().expect("port").to_owned();
    let public_port = gateway.base.rsplit(':').next().expect("port").to_owned();
    let cases = [
        (json!({"url": "http://h/{ID}"}), "services.x.upstream.url"),
        (
            json!({"url": "http://h/{order_id"}),
            "services.x.upstream.url",
        ),
        (
            json!({"url": "ftp://h/{order_id}"}),
            "services.x.upstream.url",
        ),
        (
            json!({"url": "http://user:pw@h/{order_id}"}),
            "services.x.upstream.url",
        ),
        (
            json!({"url": "http://h/{order_id}", "timeout": "0ms"}),
            "services.x.upstream.timeout",
        ),
        (
            json!({"url": "http://h/{order_id}", "concurrency": 0}),
            "services.x.upstream.concurrency",
        ),
        (
            json!({"url": "http://h/{order_id}", "headers": {"Bad Name": {"env": "K"}}}),
            "services.x.upstream.headers.Bad Name",
        ),
        (
            json!({"url": "http://h/{order_id}", "headers": {"X-Key": "plain-secret"}}),
            "services.x.upstream.headers.X-Key",
        ),
        (
            json!({"url": format!("http://localhost:{admin_port}/admin/v1/{{order_id}}")}),
            "services.x.upstream.url",
        ),
        (
            json!({"url": format!("http://0.0.0.0:{public_port}/api/orders/{{order_id}}")}),
            "services.x.upstream.url",
        ),
        (
            json!({"url": "http://127.0.0.1:8222/varz?x={order_id}"}),
            "services.x.upstream.url",
        ),
    ];
    for (upstream, field) in cases {
        let (status, body) = admin(
            &gateway,
            "POST",
            "/admin/v1/services",
            None,
            Some(&json!({"name": "x", "spec": {"upstream": upstream}})),
        )
        .await;
        assert_eq!(status, 422, "{upstream}: {body}");
        assert_eq!(body["field"], field, "{upstream}: {body}");
        assert!(!body.to_string().contains("plain-secret"), "{body}");
    }
}

/// A header's secret reaches the upstream, and never KV, the export or any log line.
#[tokio::test]
async fn header_secrets_never_reach_kv_export_or_logs() {
    const SECRET: &str = "s3cret-api-key-7f1e";
    let (base, seen, nats, gateway) = upstream_and_gateway().await;
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{SECRET}\n")).expect("write");
    let follower = adapters(&nats, "a", &[("BILLING_KEY", SECRET)]);
    for (name, source) in [
        ("envkey", json!({"env": "BILLING_KEY"})),
        ("filekey", json!({"file": key_file.display().to_string()})),
    ] {
        let spec = json!({"upstream": {"url": format!("{base}/a/{{order_id}}"), "headers": {"X-Secret": source}}});
        let (status, body) = admin(
            &gateway,
            "POST",
            "/admin/v1/services",
            None,
            Some(&json!({"name": name, "spec": spec})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = admin(
        &gateway,
        "POST",
        "/admin/v1/routes",
        None,
        Some(&json!({"name": "keyed", "spec": route("/api/keyed/{order_id}", json!([{"service": "envkey"}, {"service": "filekey"}]))})),
    )
    .await;
    assert_eq!(status, 201);
    let url = gateway.url("/api/keyed/A1");
    eventually(Duration::from_secs(3), || async {
        get_json(&url).await.0 == 200
    })
    .await;
    assert!(
        seen.lock()
            .expect("seen")
            .secrets
            .iter()
            .filter(|s| *s == SECRET)
            .count()
            >= 2
    );

    let (_, export) = admin(&gateway, "GET", "/admin/v1/config", None, None).await;
    assert_eq!(
        export["services"]["envkey"]["upstream"]["headers"]["X-Secret"]["env"],
        "BILLING_KEY"
    );
    assert!(!export.to_string().contains(SECRET));
    let client = nats.client().await;
    let kv = async_nats::jetstream::new(client)
        .get_key_value(busgate_shared::subject::CONFIG_BUCKET)
        .await
        .expect("kv");
    for key in ["services.envkey", "services.filekey"] {
        let value = kv.get(key).await.expect("get").expect("present");
        assert!(!String::from_utf8_lossy(&value).contains(SECRET));
    }
    for proc in [&gateway.proc, &follower] {
        assert!(!proc.logged(SECRET), "{} logged the secret", proc.name);
    }
}

/// An `https://` upstream is called over TLS, verified against the CA the adapter's machine
/// trusts (`SSL_CERT_FILE` here): `openssl s_server` serving a JSON file, with a certificate
/// from the harness's test CA.
#[tokio::test]
async fn an_https_upstream_is_called_over_verified_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let d = dir.path();
    let test_ca = TestCa::new();
    let (cert, key) = test_ca.issue("leaf", &["localhost", "127.0.0.1"]);
    std::fs::create_dir(d.join("orders")).expect("mkdir");
    std::fs::write(d.join("orders/A1"), r#"{"over":"tls"}"#).expect("file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut server = Command::new("openssl");
    server
        .args(["s_server", "-quiet", "-WWW", "-cert", &cert, "-key", &key])
        .args(["-accept", &port.to_string()])
        .current_dir(d);
    let _server = Proc::spawn("openssl s_server", server);
    eventually(Duration::from_secs(5), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;

    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let ca = test_ca.ca_file.clone();
    // First an adapter that does not trust the test CA: the call is refused.
    let mut untrusting = adapters(&nats, "u", &[]);
    let url = format!("https://localhost:{port}/orders/{{order_id}}");
    create(
        &gateway,
        "services",
        "secure",
        json!({"upstream": {"url": url}}),
    )
    .await;
    let secure = route("/api/secure/{order_id}", json!([{"service": "secure"}]));
    create(&gateway, "routes", "secure", secure).await;
    let url = gateway.url("/api/secure/A1");
    eventually(Duration::from_secs(5), || async {
        get_json(&url).await.1["sources"]["secure"]["error"]["code"] == "upstream_unreachable"
    })
    .await;
    untrusting.kill();
    let _follower = adapters(&nats, "a", &[("SSL_CERT_FILE", &ca)]);
    eventually(Duration::from_secs(5), || async {
        get_json(&url).await.1["data"]["secure"]["over"] == "tls"
    })
    .await;
}
