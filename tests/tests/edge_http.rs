//! The production edge over cleartext HTTP/1.1: the real client address (trusted proxies'
//! `X-Forwarded-For` and `Forwarded`, a PROXY protocol v2 header) in the access log, and what an
//! outside probe found: requests without `Host` or with two (400, RFC 9112 §3.2) on both
//! listeners, and two `Authorization` headers on the admin listener (refused).
//!
//! Requests are written as raw bytes, so that what a client library would fix (a missing
//! `Host`, a repeated header) reaches the gateway as sent.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use busgate_tests::fixture::Settings;
use busgate_tests::support::{eventually, Gateway, NatsServer, ADMIN_TOKEN, READY_WITHIN};

/// Sends `bytes` (after `prefix`, e.g. a PROXY header) to `addr`; the status and body.
async fn exchange(addr: &str, prefix: &[u8], request: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(request.as_bytes());
        let _ = stream.write_all(&bytes).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// The problem type's slug of a body.
fn problem(body: &str) -> String {
    let doc: Value = serde_json::from_str(body).unwrap_or_default();
    doc["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:busgate:problem:")
        .to_owned()
}

/// The client of the `n`th access log line (from 0), waiting for it (bounded). The log names
/// the route, not the path, so a test tells its requests apart by their order.
fn nth_access(gateway: &Gateway, n: usize) -> String {
    let mut seen = 0;
    gateway.proc.wait_for(Duration::from_secs(10), |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["message"] != "access" {
            return None;
        }
        seen += 1;
        (seen == n + 1).then(|| v["client_address"].as_str().unwrap_or_default().to_owned())
    })
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: t\r\n{extra}connection: close\r\n\r\n")
}

/// `X-Forwarded-For` (or, with `client_header = "forwarded"`, `Forwarded`) names the client
/// only when the peer is a trusted proxy; from anyone else the peer is the client.
#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let nats = NatsServer::start();
    let trusting = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__ACCESS_LOG", "true")
            .env("BUSGATE_HTTP__TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1");
    })
    .await;
    let addr = host_port(&trusting.base);
    let (status, _) = exchange(
        &addr,
        b"",
        &get("/nope", "x-forwarded-for: 6.6.6.6, 203.0.113.9\r\n"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(nth_access(&trusting, 0), "203.0.113.9");
    // The proxy writes `X-Forwarded-For` (the default `client_header`): a `Forwarded` header
    // is the client's own, and names nobody.
    exchange(
        &addr,
        b"",
        &get(
            "/nope",
            "forwarded: for=198.51.100.77\r\nx-forwarded-for: 203.0.113.5\r\n",
        ),
    )
    .await;
    assert_eq!(nth_access(&trusting, 1), "203.0.113.5");
    exchange(&addr, b"", &get("/nope", "")).await;
    assert_eq!(nth_access(&trusting, 2), "127.0.0.1");

    let rfc7239 = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__ACCESS_LOG", "true")
            .env("BUSGATE_HTTP__TRUSTED_PROXIES", "127.0.0.1")
            .env("BUSGATE_HTTP__CLIENT_HEADER", "forwarded");
    })
    .await;
    let addr = host_port(&rfc7239.base);
    exchange(
        &addr,
        b"",
        &get(
            "/nope",
            "forwarded: for=\"[2001:db8::7]:443\";proto=https\r\nx-forwarded-for: 6.6.6.6\r\n",
        ),
    )
    .await;
    assert_eq!(nth_access(&rfc7239, 0), "2001:db8::7");

    let wary = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__ACCESS_LOG", "true")
            .env("BUSGATE_HTTP__TRUSTED_PROXIES", "10.0.0.0/8");
    })
    .await;
    let addr = host_port(&wary.base);
    exchange(
        &addr,
        b"",
        &get("/nope", "x-forwarded-for: 203.0.113.9\r\n"),
    )
    .await;
    assert_eq!(nth_access(&wary, 0), "127.0.0.1");
    exchange(&addr, b"", &get("/nope", "forwarded: for=203.0.113.9\r\n")).await;
    assert_eq!(nth_access(&wary, 1), "127.0.0.1");
}

/// With `proxy_protocol`, a trusted peer's PROXY v2 header names the client (and a header
/// that is not one closes the connection unanswered); an untrusted peer's header is not read.
#[tokio::test]
async fn a_proxy_v2_header_names_the_client() {
    let nats = NatsServer::start();
    let gateway = Gateway::start_unready(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__ACCESS_LOG", "true")
            .env("BUSGATE_HTTP__TRUSTED_PROXIES", "127.0.0.1")
            .env("BUSGATE_HTTP__PROXY_PROTOCOL", "true");
    })
    .await;
    let addr = host_port(&gateway.base);
    let header = busgate_gateway::edge::proxy_protocol::encode(
        "198.51.100.4:51000".parse().expect("addr"),
        addr.parse().expect("addr"),
    );
    // The harness's readiness probe sends no PROXY header: this one does.
    eventually(READY_WITHIN, || async {
        exchange(&addr, &header, &get("/health/ready", "")).await.0 == 200
    })
    .await;
    let (status, _) = exchange(
        &addr,
        &header,
        &get("/nope", "x-forwarded-for: 6.6.6.6\r\n"),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(nth_access(&gateway, 0), "198.51.100.4");
    // Without the header, from a trusted peer: not HTTP, closed without an answer.
    let (status, _) = exchange(&addr, b"", &get("/health/live", "")).await;
    assert_eq!(status, 0);
    // LOCAL (a proxy's own health check): served, the peer is the client.
    let mut local = header.clone();
    local[12] = 0x20;
    let (status, _) = exchange(&addr, &local, &get("/health/live", "")).await;
    assert_eq!(status, 200);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host`, or with two, is answered 400 on both
/// listeners; HTTP/1.0 needs none.
#[tokio::test]
async fn requests_without_host_or_with_two_are_refused() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let public = host_port(&gateway.base);
    let admin = host_port(&gateway.admin);
    let auth = format!("authorization: Bearer {ADMIN_TOKEN}\r\n");
    for (addr, path, extra) in [
        (&public, "/health/live", String::new()),
        (&public, "/api/orders/A1", String::new()),
        (&admin, "/admin/v1/status", auth.clone()),
    ] {
        let none = format!("GET {path} HTTP/1.1\r\n{extra}connection: close\r\n\r\n");
        let (status, body) = exchange(addr, b"", &none).await;
        assert_eq!(
            (status, problem(&body).as_str()),
            (400, "invalid-host"),
            "{addr}{path}: no Host"
        );
        let two = format!(
            "GET {path} HTTP/1.1\r\nhost: a\r\nhost: b\r\n{extra}connection: close\r\n\r\n"
        );
        let (status, body) = exchange(addr, b"", &two).await;
        assert_eq!(
            (status, problem(&body).as_str()),
            (400, "invalid-host"),
            "{addr}{path}: two Host"
        );
        let old = format!("GET {path} HTTP/1.0\r\n{extra}\r\n");
        let (status, _) = exchange(addr, b"", &old).await;
        assert_ne!(status, 400, "{addr}{path}: HTTP/1.0 without Host");
    }
}

/// The admin listener refuses two `Authorization` headers, whichever comes first, as the
/// public listener does; one good token is served.
#[tokio::test]
async fn the_admin_listener_refuses_two_authorization_headers() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let admin = host_port(&gateway.admin);
    let good = format!("authorization: Bearer {ADMIN_TOKEN}\r\n");
    let bad = "authorization: Bearer not-the-token-0000000000000000000\r\n";
    let (status, _) = exchange(&admin, b"", &get("/admin/v1/status", &good)).await;
    assert_eq!(status, 200);
    for extra in [
        format!("{good}{bad}"),
        format!("{bad}{good}"),
        format!("{good}{good}"),
    ] {
        let (status, body) = exchange(&admin, b"", &get("/admin/v1/status", &extra)).await;
        assert_eq!(status, 401, "{extra}");
        assert_eq!(problem(&body), "unauthorized", "{extra}");
    }
}
