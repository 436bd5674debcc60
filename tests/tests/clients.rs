//! End-to-end: clients of the public API (API keys, scope, limits) on a real nats-server with
//! real gateways, made and changed through the admin API as an operator would.

use busgate_tests::fixture::{Route, Settings};
use busgate_tests::support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use support::{
    eventually, header, http, native_services, request_id, submit_request, ClientKey, Gateway,
    NatsServer,
};

/// Settings whose gateways require a client's key.
fn required() -> Settings {
    Settings::builtin().auth_required()
}

async fn get_with(gateway: &Gateway, path: &str, key: &str) -> reqwest::Response {
    http()
        .get(gateway.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("request")
}

async fn status_of(gateway: &Gateway, path: &str, key: &str) -> u16 {
    get_with(gateway, path, key).await.status().as_u16()
}

async fn admin(gateway: &Gateway, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    gateway.admin_request(method, path)
}

/// Waits until `check` holds, and asserts it did within a second.
async fn within_a_second<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let since = Instant::now();
    eventually(Duration::from_secs(1), check).await;
    let took = since.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// `GET path` on the admin API, as text.
async fn admin_text(gateway: &Gateway, path: &str) -> String {
    let answer = admin(gateway, reqwest::Method::GET, path)
        .await
        .send()
        .await;
    answer.expect("admin get").text().await.expect("text")
}

/// Replaces client `name`'s spec with `spec`, `If-Match` its current `ETag`.
async fn put_client(gateway: &Gateway, name: &str, spec: &Value) -> reqwest::Response {
    let path = format!("/admin/v1/clients/{name}");
    let current = admin(gateway, reqwest::Method::GET, &path)
        .await
        .send()
        .await
        .expect("read");
    admin(gateway, reqwest::Method::PUT, &path)
        .await
        .header("if-match", current.headers()["etag"].clone())
        .json(spec)
        .send()
        .await
        .expect("put")
}

/// Revokes key `id` of client `name`; returns the status.
async fn revoke(gateway: &Gateway, name: &str, id: &str) -> u16 {
    let path = format!("/admin/v1/clients/{name}/keys/{id}");
    admin(gateway, reqwest::Method::DELETE, &path)
        .await
        .send()
        .await
        .expect("revoke")
        .status()
        .as_u16()
}

/// Submits `path` asynchronously as `key`; returns the request id.
async fn submit(gateway: &Gateway, path: &str, key: &str, idempotency: Option<&str>) -> String {
    let mut request = http().get(gateway.url(path)).header("x-api-key", key);
    if let Some(k) = idempotency {
        request = request.header("idempotency-key", k);
    }
    request_id(&submit_request(request).await.1)
}

/// Every value ever written to `busgate-config`, history included, as text.
async fn config_bucket_text(nats: &NatsServer) -> String {
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value(busgate_shared::subject::CONFIG_BUCKET)
        .await
        .expect("bucket");
    let mut keys = kv.keys().await.expect("keys");
    let mut text = String::new();
    while let Some(key) = keys.next().await {
        let key = key.expect("key");
        let mut history = kv.history(&key).await.expect("history");
        while let Some(entry) = history.next().await {
            text.push_str(&String::from_utf8_lossy(&entry.expect("entry").value));
        }
    }
    text
}

/// Create → use → a second key (both work) → revoke the first on one instance → refused on
/// the other within 1 s; a rate set on one instance is in force on the other within 1 s; no
/// secret is in KV (history included), either gateway's log, the export or the history.
#[tokio::test(flavor = "multi_thread")]
async fn key_lifecycle_across_two_instances() {
    let (nats, _services) = native_services();
    let a = Gateway::start(&nats, &required()).await;
    let b = Gateway::start(&nats, &required()).await;
    let first = a
        .client(
            "acme",
            json!({"description": "Acme Corp", "routes": ["order"]}),
        )
        .await;
    assert!(first.secret.starts_with("bgk_") && first.secret.len() >= 47);
    // Without a key: 401 with a challenge.
    let refused = http()
        .get(b.url("/api/orders/A1"))
        .send()
        .await
        .expect("get");
    assert_eq!(refused.status(), 401);
    assert!(header(refused.headers(), "www-authenticate").starts_with("Bearer"));
    eventually(Duration::from_secs(2), || async {
        status_of(&b, "/api/orders/A1", &first.secret).await == 200
    })
    .await;
    assert_eq!(status_of(&a, "/api/orders/A1", &first.secret).await, 200);

    let second: Value = admin(&a, reqwest::Method::POST, "/admin/v1/clients/acme/keys")
        .await
        .send()
        .await
        .expect("add key")
        .json()
        .await
        .expect("json");
    let second = ClientKey {
        id: second["id"].as_str().expect("id").to_owned(),
        secret: second["secret"].as_str().expect("secret").to_owned(),
    };
    eventually(Duration::from_secs(2), || async {
        status_of(&b, "/api/orders/A1", &second.secret).await == 200
    })
    .await;
    assert_eq!(status_of(&b, "/api/orders/A1", &first.secret).await, 200);

    assert_eq!(revoke(&a, "acme", &first.id).await, 204);
    within_a_second(|| async { status_of(&b, "/api/orders/A1", &first.secret).await == 401 }).await;
    assert_eq!(status_of(&b, "/api/orders/A1", &second.secret).await, 200);
    assert_eq!(status_of(&a, "/api/orders/A1", &first.secret).await, 401);
    // Revoking it again: 404, it is gone.
    assert_eq!(revoke(&a, "acme", &first.id).await, 404);

    // A rate set on A holds on B within a second; the PUT keeps the keys.
    let rate = json!({"routes": ["order"], "rate": {"per_second": 1, "burst": 1}});
    let put = put_client(&a, "acme", &rate).await;
    assert_eq!(put.status(), 200);
    within_a_second(|| async {
        let _ = status_of(&b, "/api/orders/A1", &second.secret).await;
        status_of(&b, "/api/orders/A1", &second.secret).await == 429
    })
    .await;

    // A PUT that brings keys is refused, naming the field.
    let keys = json!({"keys": [{"id": "k1", "hash": "a".repeat(64)}]});
    let smuggled = put_client(&a, "acme", &keys).await;
    assert_eq!(smuggled.status(), 422);
    let problem: Value = smuggled.json().await.expect("json");
    assert_eq!(problem["field"], "clients.acme.keys");

    // No secret anywhere but in the answers that made them.
    let export = admin_text(&a, "/admin/v1/config").await;
    let history = admin_text(&a, "/admin/v1/clients/acme/history").await;
    assert!(export.contains("\"hash\""), "{export}");
    let kv = config_bucket_text(&nats).await;
    assert!(kv.contains("clients") || kv.contains("hash"), "{kv}");
    for secret in [&first.secret, &second.secret] {
        let body = &secret["bgk_".len()..];
        assert!(!kv.contains(body), "a secret in KV");
        assert!(!export.contains(body), "a secret in the export");
        assert!(!history.contains(body), "a secret in the history");
        for gateway in [&a, &b] {
            assert!(!gateway.proc.logged(body), "a secret in a log");
        }
    }
}

/// Another client's request id is 404, byte for byte as an id that does not exist: polls,
/// event streams and idempotency replays.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_visible_to_their_client_only() {
    let (nats, _services) = native_services();
    let gateway = Gateway::start(&nats, &required()).await;
    let acme = gateway.client("acme", json!({})).await;
    let other = gateway.client("other", json!({})).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let key = format!("key-{i}");
        ids.push(submit(&gateway, "/api/orders/A1", &acme.secret, Some(&key)).await);
    }
    // The owner sees them.
    for id in &ids {
        let path = format!("/api/requests/{id}");
        eventually(Duration::from_secs(5), || async {
            let r = get_with(&gateway, &path, &acme.secret).await;
            r.status() == 200 && r.json::<Value>().await.expect("json")["client"] == "acme"
        })
        .await;
    }
    // What an unknown id looks like to `other` (its own poll id aside).
    let normalise = |body: &str, id: &str| -> Value {
        let mut v: Value = serde_json::from_str(&body.replace(id, "ID")).expect("json");
        v["request_id"] = Value::Null;
        v
    };
    let unknown = "01900000-0000-7000-8000-000000000000";
    let answer = get_with(&gateway, &format!("/api/requests/{unknown}"), &other.secret).await;
    assert_eq!(answer.status(), 404);
    let unknown_body = normalise(&answer.text().await.expect("text"), unknown);
    for i in 0..100 {
        let id = &ids[i % ids.len()];
        let poll = get_with(&gateway, &format!("/api/requests/{id}"), &other.secret).await;
        assert_eq!(poll.status(), 404);
        let body = poll.text().await.expect("text");
        assert_eq!(normalise(&body, id), unknown_body, "{body}");
        let events = get_with(
            &gateway,
            &format!("/api/requests/{id}/events"),
            &other.secret,
        )
        .await;
        assert_eq!(events.status(), 404);
        let body = events.text().await.expect("text");
        assert_eq!(normalise(&body, id), unknown_body, "{body}");
    }
    // The same idempotency key from another client is another client's key: never acme's id.
    for i in 0..100 {
        let key = format!("key-{}", i % ids.len());
        let replay = submit(&gateway, "/api/orders/A1", &other.secret, Some(&key)).await;
        assert!(
            !ids.contains(&replay),
            "another client's request id came back"
        );
    }
    // And the owner's replay is still its own.
    assert_eq!(
        submit(&gateway, "/api/orders/A1", &acme.secret, Some("key-0")).await,
        ids[0]
    );
}

/// Over its rate a client gets 429 with the headers, and recovers after the window; another
/// client is unaffected at the same moment; the cap on pending requests holds.
#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_per_client() {
    let (nats, _services) = native_services();
    let _silent = nats.silent("ghost").await;
    // One delivery: a timed-out request is final at once (a timeout is transient and
    // retried otherwise), so the held ones end with their 2 s deadline.
    let settings = required().jobs_max_deliver(1).held(
        "held",
        "/api/held/{order_id}",
        "ghost",
        Duration::from_secs(2),
    );
    let gateway = Gateway::start(&nats, &settings).await;
    let fast = gateway
        .client("fast", json!({"rate": {"per_second": 1, "burst": 3}}))
        .await;
    let calm = gateway
        .client("calm", json!({"rate": {"per_second": 1, "burst": 3}}))
        .await;
    for _ in 0..3 {
        assert_eq!(
            status_of(&gateway, "/api/orders/A1", &fast.secret).await,
            200
        );
    }
    let limited = get_with(&gateway, "/api/orders/A1", &fast.secret).await;
    assert_eq!(limited.status(), 429);
    let header = |name: &str| limited.headers()[name].to_str().expect("ascii").to_owned();
    assert_eq!(header("retry-after"), "1");
    assert_eq!(header("ratelimit-policy"), "\"client\";q=1;w=1");
    assert_eq!(header("ratelimit"), "\"client\";r=0;t=1");
    assert_eq!(header("content-type"), "application/problem+json");
    let problem: Value = limited.json().await.expect("json");
    assert_eq!(problem["type"], "urn:busgate:problem:rate-limited");
    // The other client, at the same moment: its own budget.
    assert_eq!(
        status_of(&gateway, "/api/orders/A1", &calm.secret).await,
        200
    );
    // After the window the first one is served again.
    eventually(Duration::from_secs(3), || async {
        status_of(&gateway, "/api/orders/A1", &fast.secret).await == 200
    })
    .await;

    // At most two pending asynchronous requests.
    let pending = gateway.client("queued", json!({"max_pending": 2})).await;
    submit(&gateway, "/api/held/P1", &pending.secret, None).await;
    submit(&gateway, "/api/held/P2", &pending.secret, None).await;
    let over = http()
        .get(gateway.url("/api/held/P3"))
        .header("x-api-key", &pending.secret)
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("submit");
    assert_eq!(over.status(), 429);
    assert_eq!(over.headers()["retry-after"], "1");
    let problem: Value = over.json().await.expect("json");
    assert_eq!(problem["type"], "urn:busgate:problem:too-many-pending");
    // Synchronous requests are not pending ones; the other client is not held by the cap.
    assert_eq!(
        status_of(&gateway, "/api/orders/A1", &pending.secret).await,
        200
    );
    submit(&gateway, "/api/held/C1", &calm.secret, None).await;
    // Once the held ones end (their 2 s deadline), there is room again.
    eventually(Duration::from_secs(8), || async {
        http()
            .get(gateway.url("/api/held/P4"))
            .header("x-api-key", &pending.secret)
            .header("prefer", "respond-async")
            .send()
            .await
            .is_ok_and(|r| r.status() == 202)
    })
    .await;
    // At most one open event stream: the second is refused while the first is open.
    let viewer = gateway.client("viewer", json!({"max_streams": 1})).await;
    let held = submit(&gateway, "/api/held/S1", &viewer.secret, None).await;
    let events = format!("/api/requests/{held}/events");
    let open = get_with(&gateway, &events, &viewer.secret).await;
    assert_eq!(open.status(), 200);
    let second = get_with(&gateway, &events, &viewer.secret).await;
    assert_eq!(second.status(), 429);
    let problem: Value = second.json().await.expect("json");
    assert_eq!(problem["type"], "urn:busgate:problem:too-many-streams");
    drop(open);
    eventually(Duration::from_secs(5), || async {
        get_with(&gateway, &events, &viewer.secret).await.status() == 200
    })
    .await;
    // Metrics count per configured client and outcome.
    assert!(
        gateway
            .metric(
                "busgate_client_requests_total",
                "client=\"fast\",outcome=\"rate-limited\""
            )
            .await
            >= 1.0
    );
    assert!(
        gateway
            .metric(
                "busgate_client_requests_total",
                "client=\"queued\",outcome=\"too-many-pending\""
            )
            .await
            >= 1.0
    );
}

/// Raw HTTP/1.1 on a fresh connection: the status line's code and the whole answer.
fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    // Read until the answer's head and its (small) body are in.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|l| l.trim().parse::<usize>().ok());
            if length.is_some_and(|l| body.len() >= l) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// Missing, malformed, oversize, garbage, unknown and doubled credentials: 401 problem with
/// `WWW-Authenticate`, the body never awaited, nothing published. Health and metrics need no
/// key.
#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_are_refused_before_anything_is_published() {
    let (nats, _services) = native_services();
    let gateway = Gateway::start(&nats, &required()).await;
    let acme = gateway.client("acme", json!({})).await;
    let watcher = nats.client().await;
    let mut services = watcher
        .subscribe(busgate_shared::subject::ALL_SERVICES)
        .await
        .expect("subscribe");
    let mut jobs = watcher
        .subscribe(busgate_shared::subject::REQUESTS_ALL)
        .await
        .expect("subscribe");
    watcher.flush().await.expect("flush");

    let unknown = format!("bgk_{}", "A".repeat(43));
    let oversize = format!("Bearer bgk_{}", "a".repeat(9000));
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("nothing", vec![]),
        (
            "garbage bearer",
            vec![("authorization", "Bearer garbage".into())],
        ),
        (
            "basic",
            vec![("authorization", format!("Basic {}", acme.secret))],
        ),
        ("no token", vec![("authorization", "Bearer".into())]),
        ("oversize", vec![("authorization", oversize)]),
        ("unknown key", vec![("x-api-key", unknown.clone())]),
        ("short key", vec![("x-api-key", "bgk_abc".into())]),
        (
            "a jwt",
            vec![(
                "authorization",
                "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhY21lIn0.c2ln".into(),
            )],
        ),
        (
            "two credentials",
            vec![
                ("authorization", format!("Bearer {}", acme.secret)),
                ("x-api-key", acme.secret.clone()),
            ],
        ),
    ];
    for (name, headers) in &cases {
        for (method, path) in [("GET", "/api/orders/A1"), ("POST", "/api/order")] {
            let mut request = http()
                .request(method.parse().expect("method"), gateway.url(path))
                .header("prefer", "respond-async")
                .header("content-type", "application/json")
                .body(r#"{"order_id":"A1"}"#);
            for (h, v) in headers {
                request = request.header(*h, v);
            }
            let answer = request.send().await.expect("request");
            assert_eq!(answer.status(), 401, "{name} {method}");
            assert!(
                answer.headers()["www-authenticate"]
                    .to_str()
                    .expect("ascii")
                    .starts_with("Bearer realm=\"busgate\""),
                "{name}"
            );
            assert_eq!(answer.headers()["content-type"], "application/problem+json");
            let problem: Value = answer.json().await.expect("json");
            assert_eq!(
                problem["type"], "urn:busgate:problem:unauthorized",
                "{name}"
            );
            let detail = problem["detail"].as_str().expect("detail");
            assert!(
                !detail.contains("bgk_") && !detail.contains("garbage"),
                "{detail}"
            );
        }
        let poll = http()
            .get(gateway.url("/api/requests/01900000-0000-7000-8000-000000000000"))
            .headers(
                headers
                    .iter()
                    .map(|(h, v)| (h.parse().expect("name"), v.parse().expect("value")))
                    .collect(),
            )
            .send()
            .await
            .expect("poll");
        assert_eq!(poll.status(), 401, "{name} poll");
    }
    // The refusal does not wait for a body that never comes.
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let (code, text) = tokio::task::spawn_blocking(move || {
        raw(
            &addr,
            b"POST /api/order HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n{\"order_id\":",
        )
    })
    .await
    .expect("join");
    assert_eq!(code, 401, "{text}");
    // Nothing was published for any of it; then a valid request is, which shows the
    // subscriptions would have seen one.
    assert_eq!(
        status_of(&gateway, "/api/orders/A1", &acme.secret).await,
        200
    );
    let first = tokio::time::timeout(Duration::from_secs(5), services.next())
        .await
        .expect("the valid request is published")
        .expect("a message");
    assert_eq!(
        first
            .headers
            .as_ref()
            .and_then(|h| h.get(busgate_shared::header::CLIENT))
            .map(|v| v.as_str().to_owned())
            .as_deref(),
        Some("acme"),
        "the first message on the bus is the valid request's"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), jobs.next())
            .await
            .is_err(),
        "no asynchronous request was queued"
    );
    // Probes need no key.
    for path in ["/health/live", "/health/ready", "/metrics"] {
        let r = http().get(gateway.url(path)).send().await.expect("probe");
        assert_eq!(r.status(), 200, "{path}");
    }
    assert!(
        gateway
            .metric(
                "busgate_client_requests_total",
                "client=\"-\",outcome=\"unauthorized\""
            )
            .await
            >= 18.0
    );
}

/// A client allowed some routes gets 403 on the others; `when.clients` asks a target for the
/// clients named only; services get `Busgate-Client`, and a trace id that is not the request
/// id.
#[tokio::test(flavor = "multi_thread")]
async fn routes_and_conditions_follow_the_client() {
    let (nats, _services) = native_services();
    // An echo service: answers with the headers it got.
    let echo = nats.client().await;
    let mut requests = echo
        .queue_subscribe(
            busgate_shared::subject::service("echo"),
            "busgate.echo".into(),
        )
        .await
        .expect("subscribe");
    echo.flush().await.expect("flush");
    let replier = echo.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            let reply = json!({
                "service": "echo",
                "status": "ok",
                "data": {
                    "client": header(busgate_shared::header::CLIENT),
                    "traceparent": header(busgate_shared::header::TRACEPARENT),
                    "request_id": header(busgate_shared::header::REQUEST_ID),
                },
                "elapsed_ms": 0
            });
            if let Some(to) = message.reply {
                let _ = replier
                    .publish(to, serde_json::to_vec(&reply).expect("json").into())
                    .await;
            }
        }
    });
    let settings = required()
        .service("echo", Duration::from_millis(800))
        .route(
            "vip",
            Route::get("/api/vip/{order_id}")
                .target("echo")
                .target_for_clients("service2", &["gold"]),
        );
    let gateway = Gateway::start(&nats, &settings).await;
    let basic = gateway.client("basic", json!({"routes": ["order"]})).await;
    let gold = gateway.client("gold", json!({})).await;
    let silver = gateway.client("silver", json!({})).await;

    assert_eq!(
        status_of(&gateway, "/api/orders/A1", &basic.secret).await,
        200
    );
    let refused = get_with(&gateway, "/api/vip/A1", &basic.secret).await;
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await.expect("json");
    assert_eq!(problem["type"], "urn:busgate:problem:route-not-allowed");

    let answer: Value = get_with(&gateway, "/api/vip/A1", &gold.secret)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["data"]["echo"]["client"], "gold", "{answer}");
    assert!(answer["data"]["service2"].is_object(), "{answer}");
    let trace = answer["data"]["echo"]["traceparent"]
        .as_str()
        .expect("traceparent")
        .split('-')
        .nth(1)
        .expect("trace id")
        .to_owned();
    let request_id = answer["data"]["echo"]["request_id"]
        .as_str()
        .expect("request id")
        .replace('-', "");
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, request_id, "the trace id is not the request id");

    let answer: Value = get_with(&gateway, "/api/vip/A1", &silver.secret)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["data"]["echo"]["client"], "silver");
    assert!(answer["data"].get("service2").is_none(), "{answer}");
    assert_eq!(
        answer["sources"]["service2"]["status"], "skipped",
        "{answer}"
    );
}

/// An HS256 JWT over `claims`, signed with `secret` (base64url without padding, RFC 7515).
fn hs256(secret: &[u8], claims: &Value) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    let body = b64.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(format!("{head}.{body}").as_bytes());
    let signature = b64.encode(mac.finalize().into_bytes());
    format!("{head}.{body}.{signature}")
}

/// The JWT path through the real binary: a token of a configured issuer names a configured
/// client and is served as that client; a wrong signature, another issuer, an unknown client,
/// an expired token or `alg: none` each get 401 with a problem document (the verifier's own
/// matrix, against a real key-set server, is in `gateway/src/auth/jwt/tests.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn a_jwt_of_a_configured_issuer_names_its_client() {
    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes-long";
    let (nats, _services) = native_services();
    let settings = required().jwt_issuer(json!({
        "issuer": "test-sso",
        "audience": "busgate",
        "algorithm": "HS256",
        "secret_env": "TEST_JWT_SECRET",
        "client_claim": "client_id",
    }));
    let gateway = Gateway::start_with(&nats, &settings, |cmd| {
        cmd.env(
            "TEST_JWT_SECRET",
            std::str::from_utf8(SECRET).expect("ascii"),
        );
    })
    .await;
    let _acme = gateway.client("acme", json!({"routes": ["order"]})).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = |client: &str, iss: &str, exp: u64| json!({"iss": iss, "aud": "busgate", "exp": exp, "client_id": client, "sub": "someone"});
    let good = hs256(SECRET, &claims("acme", "test-sso", now + 300));
    // The client exists on every path once the watcher has it: bounded wait.
    eventually(Duration::from_secs(5), || async {
        status_of(&gateway, "/api/orders/A1", &good).await == 200
    })
    .await;
    let answer: Value = get_with(&gateway, "/api/orders/A1", &good)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["order_id"], "A1", "{answer}");

    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    let none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims("acme", "test-sso", now + 300).to_string())
        )
    };
    let refused = [
        ("a forged signature", forged),
        (
            "another secret",
            hs256(
                b"another-secret-of-at-least-32-bytes!!",
                &claims("acme", "test-sso", now + 300),
            ),
        ),
        (
            "an unknown issuer",
            hs256(SECRET, &claims("acme", "other-sso", now + 300)),
        ),
        (
            "a client that is not configured",
            hs256(SECRET, &claims("nobody", "test-sso", now + 300)),
        ),
        (
            "an expired token",
            hs256(SECRET, &claims("acme", "test-sso", now - 3600)),
        ),
        ("alg none", none),
    ];
    for (what, token) in refused {
        let response = get_with(&gateway, "/api/orders/A1", &token).await;
        assert_eq!(response.status(), 401, "{what}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{what}: WWW-Authenticate"
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(content_type, "application/problem+json", "{what}");
        let body = response.text().await.expect("body");
        assert!(!body.contains(&token), "{what}: the token is not echoed");
    }
    let log = gateway.proc.lines().join("\n");
    assert!(
        !log.contains(std::str::from_utf8(SECRET).expect("ascii")),
        "the issuer's secret never reaches the log"
    );
}
