//! Hostile input, tried as an attacker would: every request below is refused with its status
//! and problem type, and a NATS subscriber on every subject the gateway could publish a request
//! or a job to proves that nothing was published for any of them.
//!
//! Requests are written as raw HTTP/1.1 bytes, so that what a client library would clean up
//! (dot segments, percent forms, header values) reaches the gateway as sent.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use busgate_tests::fixture::{Callbacks, Settings};
use busgate_tests::support::{Gateway, NatsServer, Worker};

/// One hostile request and what it must get.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// The problem type's slug; `None` where the HTTP layer refuses before the gateway reads
    /// the request (its answer is not ours to shape).
    problem: Option<&'static str>,
}

fn case(name: &'static str, request: Vec<u8>, status: u16, problem: Option<&'static str>) -> Case {
    Case {
        name,
        request,
        status,
        problem,
    }
}

/// `POST path` with a content type, extra header lines and a body.
fn post(path: &str, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// `POST /api/order` with a JSON body.
fn order(body: &[u8]) -> Vec<u8> {
    post("/api/order", "application/json", "", body)
}

/// `POST /api/order` for `{"order_id": <id as a JSON string literal>}`.
fn order_id(json_string: &str) -> Vec<u8> {
    order(format!(r#"{{"order_id":{json_string}}}"#).as_bytes())
}

/// `method path` with extra header lines and no body.
fn raw(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nhost: t\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

/// An asynchronous submit of a valid order with extra header lines and body fields.
fn submit(extra: &str, fields: &str) -> Vec<u8> {
    post(
        "/api/order",
        "application/json",
        &format!("prefer: respond-async\r\n{extra}"),
        format!(r#"{{"order_id":"A1"{fields}}}"#).as_bytes(),
    )
}

/// `GET path` with an order id the gateway refuses: 400 `invalid-order-id`.
fn bad_path(name: &'static str, path: &str) -> Case {
    case(name, raw("GET", path, ""), 400, Some("invalid-order-id"))
}

/// `GET path` that names nothing there: 404 with `problem`.
fn not_found(name: &'static str, path: &str, problem: &'static str) -> Case {
    case(name, raw("GET", path, ""), 404, Some(problem))
}

fn cases() -> Vec<Case> {
    let bad = Some("invalid-order-id");
    let body = Some("invalid-body");
    let malformed = Some("malformed-json");
    let nested_arrays = "[".repeat(10_000);
    let nested_objects = r#"{"a":"#.repeat(10_000);
    vec![
        // Malformed and strange JSON.
        case("truncated object", order(b"{"), 400, malformed),
        case("truncated value", order(br#"{"order_id":"#), 400, malformed),
        case(
            "trailing garbage",
            order(br#"{"order_id":"A1"} x"#),
            400,
            malformed,
        ),
        case(
            "10,000 nested arrays",
            order(nested_arrays.as_bytes()),
            400,
            malformed,
        ),
        case(
            "10,000 nested objects",
            order(nested_objects.as_bytes()),
            400,
            malformed,
        ),
        case(
            "invalid UTF-8 in a string",
            order(b"{\"order_id\":\"\xff\xfe\"}"),
            400,
            malformed,
        ),
        case(
            "invalid UTF-8 outside strings",
            order(b"\xff{}"),
            400,
            malformed,
        ),
        case(
            "duplicate keys",
            order(br#"{"order_id":"A1","order_id":"A2"}"#),
            400,
            body,
        ),
        case("a huge number", order_id("1e400"), 400, body),
        case("past u64", order_id("18446744073709551616"), 400, body),
        case("negative", order_id("-1"), 400, body),
        case("fraction", order_id("1.5"), 400, body),
        case("array order_id", order_id(r#"["A1"]"#), 400, body),
        case("object order_id", order_id(r#"{"id":"A1"}"#), 400, body),
        case("boolean order_id", order_id("true"), 400, body),
        case("body is an array", order(b"[]"), 400, body),
        case("body is a string", order(br#""A1""#), 400, body),
        case("body is null", order(b"null"), 400, body),
        case("empty body", order(b""), 400, Some("missing-order-id")),
        case(
            "no order_id",
            order(br#"{"id":"A1"}"#),
            400,
            Some("missing-order-id"),
        ),
        // Size and type.
        case(
            "body over the limit",
            order(&vec![b' '; 70 * 1024]),
            413,
            Some("payload-too-large"),
        ),
        case(
            "text/plain",
            post("/api/order", "text/plain", "", br#"{"order_id":"A1"}"#),
            415,
            Some("unsupported-media-type"),
        ),
        case(
            "form data",
            post(
                "/api/order",
                "application/x-www-form-urlencoded",
                "",
                b"order_id=A1",
            ),
            415,
            Some("unsupported-media-type"),
        ),
        case(
            "xml",
            post(
                "/api/order",
                "application/xml",
                "",
                b"<order_id>A1</order_id>",
            ),
            415,
            Some("unsupported-media-type"),
        ),
        // Order ids that would be subjects, paths or headers if they were trusted.
        case("dot", order_id(r#""a.b""#), 400, bad),
        case("star", order_id(r#""*""#), 400, bad),
        case("greater-than", order_id(r#"">""#), 400, bad),
        case("space", order_id(r#""a b""#), 400, bad),
        case("CR/LF", order_id(r#""a\r\nBusgate-Client: x""#), 400, bad),
        case("NUL", order_id(r#""a\u0000b""#), 400, bad),
        case("dot-dot", order_id(r#""..""#), 400, bad),
        case("single dot", order_id(r#"".""#), 400, bad),
        case("percent-encoded dots", order_id(r#""%2e%2e""#), 400, bad),
        case(
            "65 characters",
            order_id(&format!(r#""{}""#, "a".repeat(65))),
            400,
            bad,
        ),
        case("empty", order_id(r#""""#), 400, bad),
        case("non-ASCII", order_id(r#""ä""#), 400, bad),
        case("a subject", order_id(r#""busgate.svc.service1""#), 400, bad),
        // The same in the path.
        bad_path("path: dot", "/api/orders/a.b"),
        bad_path("path: dot-dot", "/api/orders/.."),
        bad_path("path: encoded dot-dot", "/api/orders/%2e%2e"),
        bad_path("path: encoded NUL", "/api/orders/%00"),
        bad_path("path: encoded CR/LF", "/api/orders/a%0d%0ab"),
        bad_path("path: encoded space", "/api/orders/a%20b"),
        bad_path("path: not UTF-8", "/api/orders/%ff%fe"),
        bad_path("path: star", "/api/orders/*"),
        bad_path("path: encoded greater-than", "/api/orders/%3e"),
        case(
            "path: 65 characters",
            raw("GET", &format!("/api/orders/{}", "a".repeat(65)), ""),
            400,
            bad,
        ),
        not_found("path: extra segment", "/api/orders/A1/x", "not-found"),
        not_found("path: unknown", "/api/../admin/v1/routes", "not-found"),
        case(
            "method: DELETE",
            raw("DELETE", "/api/orders/A1", ""),
            405,
            Some("method-not-allowed"),
        ),
        // Asynchronous submits refused before anything is queued.
        case(
            "Idempotency-Key with a space",
            submit("idempotency-key: a b\r\n", ""),
            400,
            Some("invalid-idempotency-key"),
        ),
        case(
            "Idempotency-Key of 256 characters",
            submit(&format!("idempotency-key: {}\r\n", "k".repeat(256)), ""),
            400,
            Some("invalid-idempotency-key"),
        ),
        case(
            "empty Idempotency-Key",
            submit("idempotency-key: \"\"\r\n", ""),
            400,
            Some("invalid-idempotency-key"),
        ),
        case(
            "Idempotency-Key not ASCII",
            submit("idempotency-key: ä\r\n", ""),
            400,
            Some("invalid-idempotency-key"),
        ),
        case(
            "callback to loopback",
            submit("", r#","callback_url":"http://127.0.0.1:9/x""#),
            400,
            Some("callback-refused"),
        ),
        case(
            "callback to cloud metadata",
            submit("", r#","callback_url":"http://169.254.169.254/latest""#),
            400,
            Some("callback-refused"),
        ),
        case(
            "callback with another scheme",
            submit("", r#","callback_url":"file:///etc/passwd""#),
            400,
            Some("callback-refused"),
        ),
        case(
            "callback as javascript",
            submit("", r#","callback_url":"javascript:alert(1)""#),
            400,
            Some("callback-refused"),
        ),
        case(
            "callback of 3,000 characters",
            submit(
                "",
                &format!(
                    r#","callback_url":"https://example.com/{}""#,
                    "a".repeat(3000)
                ),
            ),
            400,
            Some("callback-refused"),
        ),
        case(
            "absurd Prefer with a bad order",
            post(
                "/api/order",
                "application/json",
                "prefer: respond-async, wait=99999999999999999999999, wait=-1, return=\r\n",
                br#"{"order_id":"a.b"}"#,
            ),
            400,
            bad,
        ),
        case(
            "header injection in traceparent with a bad order",
            raw(
                "GET",
                "/api/orders/a.b",
                "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 x\r\n",
            ),
            400,
            bad,
        ),
        // Polls of what does not exist.
        not_found(
            "poll: not a UUID",
            "/api/requests/not-a-uuid",
            "request-not-found",
        ),
        not_found(
            "poll: a subject",
            "/api/requests/busgate.svc.%3E",
            "request-not-found",
        ),
        case(
            "events: unknown id",
            raw(
                "GET",
                "/api/requests/01a20092-06fb-75cf-a84a-ff868feb3495/events",
                "",
            ),
            404,
            Some("request-not-found"),
        ),
        // The HTTP layer's own refusals.
        case(
            "a 1 MiB header",
            raw(
                "GET",
                "/api/orders/A1",
                &format!("x-big: {}\r\n", "a".repeat(1 << 20)),
            ),
            431,
            None,
        ),
        case("not HTTP", b"HELLO\r\n\r\n".to_vec(), 400, None),
    ]
}

/// Sends `request` on a new connection; the status and body of the answer (bounded: 5 s).
async fn send(addr: &str, request: &[u8]) -> (u16, Vec<u8>) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        // The gateway may answer and close before the whole request is written.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("an answer within 5 s");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| answer[i + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn hostile_requests_are_refused_and_nothing_is_published() {
    let nats = NatsServer::start();
    let client = nats.client().await;
    // Everything the gateway publishes for a request: service requests, the job queue, status
    // documents and idempotency keys.
    let mut seen = futures::stream::select_all([
        client.subscribe("busgate.>").await.expect("sub"),
        client
            .subscribe("$KV.busgate-results.>")
            .await
            .expect("sub"),
        client
            .subscribe("$KV.busgate-idempotency.>")
            .await
            .expect("sub"),
    ]);
    client.flush().await.expect("flush");
    let _worker = Worker::native(&nats, "service1");
    let settings =
        Settings::builtin().callbacks(Callbacks::signed("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    let gateway = Gateway::start(&nats, &settings).await;
    let addr = gateway.base.trim_start_matches("http://").to_owned();

    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    println!("{:<48} {:>6} {:<28}", "case", "status", "problem type");
    for case in &cases {
        let (status, body) = send(&addr, &case.request).await;
        let problem = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let slug = problem.trim_start_matches("urn:busgate:problem:");
        println!("{:<48} {status:>6} {slug:<28}", case.name);
        let expected_problem = case.problem.unwrap_or(slug);
        if status != case.status || slug != expected_problem {
            failures.push(format!(
                "{}: got {status} {slug:?}, expected {} {:?}",
                case.name, case.status, case.problem
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A barrier: one valid synchronous and one valid asynchronous request. Messages of one
    // connection arrive in order, so had any hostile request published, it would come first.
    let (status, _) = send(&addr, &raw("GET", "/api/orders/BARRIER1", "")).await;
    assert_eq!(status, 200);
    let (status, _) = send(&addr, &submit("", "")).await;
    assert_eq!(status, 202);
    let mut published = Vec::new();
    let mut barrier = (false, false);
    while barrier != (true, true) {
        let message = tokio::time::timeout(Duration::from_secs(10), seen.next())
            .await
            .expect("the barrier's messages within 10 s")
            .expect("subscription open");
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        if message.subject.as_str().starts_with("busgate.svc.") && payload.contains("BARRIER1") {
            barrier.0 = true;
        } else if message
            .subject
            .as_str()
            .starts_with(busgate_shared::subject::REQUESTS_SUBJECT)
            && payload.contains(r#""order_id":"A1""#)
        {
            barrier.1 = true;
        } else if message.subject.starts_with("$KV.busgate-results.") && payload.contains("\"A1\"")
        {
            // The barrier's own status document.
        } else if busgate_shared::subject::parse_fleet_heartbeat(&message.subject).is_some() {
            // The gateway's heartbeat (client limits across instances): not a request's.
        } else {
            published.push(format!("{}: {payload}", message.subject));
        }
    }
    assert!(
        published.is_empty(),
        "published for hostile input: {published:#?}"
    );
}
