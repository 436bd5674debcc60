//! End-to-end: the real client address in limits (issue 28, part 4). Refused credentials are
//! counted per client address (`auth.max_failures_per_minute`): the throttle trips at the
//! limit and not before, answers 429 `too-many-failures` with `Retry-After` without checking
//! even a good key, and is counted in `/metrics`. The address is the one the edge resolves:
//! an untrusted peer's `X-Forwarded-For` cannot move its failures to another address, a
//! trusted proxy's does; the table stays bounded under thousands of addresses. With
//! `[auth.anonymous]`, the anonymous client's rate and pending cap hold per address. The server
//! span's `client.address` is the resolved address, not the proxy's.

use std::time::Duration;

use serde_json::{json, Value};

use busgate_tests::fixture::Settings;
use busgate_tests::otlp::Receiver;
use busgate_tests::support::{eventually, http, Gateway, NatsServer};

/// The limit the tests set.
const LIMIT: usize = 5;

/// A gateway trusting `trusted` as proxies, throttling at [`LIMIT`].
async fn gateway(nats: &NatsServer, trusted: &'static str) -> Gateway {
    Gateway::start_with(nats, &Settings::builtin().auth_required(), move |cmd| {
        cmd.env("BUSGATE_HTTP__TRUSTED_PROXIES", trusted)
            .env("BUSGATE_AUTH__MAX_FAILURES_PER_MINUTE", LIMIT.to_string());
    })
    .await
}

/// `GET /nope` (a path no route has: a good key is answered 404) with `key`, as forwarded for
/// `xff` when given; the status, `Retry-After` and the problem's type.
async fn call(gateway: &Gateway, key: &str, xff: Option<&str>) -> (u16, Option<u64>, String) {
    let mut request = http().get(gateway.url("/nope")).header("x-api-key", key);
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    let answer = request.send().await.expect("answer");
    let status = answer.status().as_u16();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body: Value = answer.json().await.unwrap_or_default();
    let kind = body["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("urn:busgate:problem:")
        .to_owned();
    (status, retry_after, kind)
}

const BAD: &str = "bgk_0000000000000000000000000000000000000000000";

/// [`LIMIT`] refused keys from a trusted proxy's client: 401 each; the next is 429 with
/// `Retry-After` (a good key too: not checked); the proxy's other clients and the proxy itself
/// are served. The throttled requests are counted.
#[tokio::test(flavor = "multi_thread")]
async fn failed_credentials_throttle_the_forwarded_client() {
    let nats = NatsServer::start();
    let gateway = gateway(&nats, "127.0.0.1").await;
    let good = gateway.client("acme", json!({})).await.secret;
    let abuser = Some("203.0.113.1");
    for i in 0..LIMIT {
        let (status, _, kind) = call(&gateway, BAD, abuser).await;
        assert_eq!(
            (status, kind.as_str()),
            (401, "unauthorized"),
            "failure {i}"
        );
    }
    for key in [BAD, good.as_str()] {
        let (status, retry_after, kind) = call(&gateway, key, abuser).await;
        assert_eq!((status, kind.as_str()), (429, "too-many-failures"));
        let retry_after = retry_after.expect("Retry-After");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    // The same /64 of IPv6 is one address; another client of the proxy and the proxy are not.
    for i in 0..LIMIT {
        assert_eq!(
            call(&gateway, BAD, Some("2001:db8:5:6::1")).await.0,
            401,
            "{i}"
        );
    }
    assert_eq!(call(&gateway, &good, Some("2001:db8:5:6::99")).await.0, 429);
    assert_eq!(call(&gateway, &good, Some("2001:db8:5:7::1")).await.0, 404);
    assert_eq!(call(&gateway, &good, Some("203.0.113.2")).await.0, 404);
    assert_eq!(call(&gateway, &good, None).await.0, 404);
    // The proxy itself (it named no client) is not throttled: that would lock out every
    // client behind it.
    for i in 0..=LIMIT {
        assert_eq!(call(&gateway, BAD, None).await.0, 401, "from the proxy {i}");
    }
    assert_eq!(call(&gateway, &good, None).await.0, 404);
    // Polls name their client the same way, and are throttled the same way.
    let poll = http()
        .get(gateway.url("/api/requests/01900000-0000-7000-8000-000000000000"))
        .header("x-api-key", &good)
        .header("x-forwarded-for", "203.0.113.1")
        .send()
        .await
        .expect("poll");
    assert_eq!(poll.status(), 429);
    let throttled = gateway
        .metric("busgate_client_requests_total", "outcome=\"throttled\"")
        .await;
    assert_eq!(throttled, 4.0, "two requests, one poll, one IPv6");
}

/// From a peer that is not a trusted proxy, `X-Forwarded-For` is ignored: failures sent under
/// ever other forwarded addresses all count against the peer, and a good key forwarded "for"
/// a fresh address is still throttled.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_peer_cannot_spread_its_failures() {
    let nats = NatsServer::start();
    let gateway = gateway(&nats, "10.0.0.0/8").await;
    let good = gateway.client("acme", json!({})).await.secret;
    for i in 0..LIMIT {
        let spoof = format!("198.51.100.{i}");
        assert_eq!(call(&gateway, BAD, Some(&spoof)).await.0, 401, "{i}");
    }
    let (status, _, kind) = call(&gateway, &good, Some("192.0.2.77")).await;
    assert_eq!((status, kind.as_str()), (429, "too-many-failures"));
    assert_eq!(call(&gateway, &good, None).await.0, 429);
}

/// Thousands of forwarded addresses, each failing once, leave the table at its size; an
/// address throttled before the churn is still throttled after it.
#[tokio::test(flavor = "multi_thread")]
async fn the_table_stays_bounded_under_many_addresses() {
    let nats = NatsServer::start();
    let gateway = gateway(&nats, "127.0.0.1").await;
    for _ in 0..LIMIT {
        call(&gateway, BAD, Some("192.0.2.1")).await;
    }
    assert_eq!(call(&gateway, BAD, Some("192.0.2.1")).await.0, 429);
    const ADDRESSES: u32 = 12_000;
    let client = http();
    let url = gateway.url("/nope");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u32 {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for n in (worker..ADDRESSES).step_by(8) {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n);
                let answer = client
                    .get(&url)
                    .header("x-api-key", BAD)
                    .header("x-forwarded-for", ip.to_string())
                    .send()
                    .await
                    .expect("answer");
                assert_eq!(answer.status(), 401);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("worker");
    }
    let tracked = gateway.metric("busgate_auth_failing_addresses", "").await;
    assert!(
        (1.0..=8192.0).contains(&tracked),
        "{tracked} addresses tracked"
    );
    assert_eq!(
        call(&gateway, BAD, Some("192.0.2.1")).await.0,
        429,
        "the throttled address was kept"
    );
}

/// The server span's `client.address` and the access line's `client_address` are the client a
/// trusted proxy names, not the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_span_and_the_access_line_name_the_forwarded_client() {
    let receiver = Receiver::start().await;
    let nats = NatsServer::start();
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_TELEMETRY__OTLP_ENDPOINT", &receiver.url)
            .env("BUSGATE_HTTP__ACCESS_LOG", "true")
            .env("BUSGATE_HTTP__TRUSTED_PROXIES", "127.0.0.1");
    })
    .await;
    let answer = http()
        .get(gateway.url("/nope"))
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.44")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("answer");
    assert_eq!(answer.status(), 404);
    let request_id = answer.headers()["busgate-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    eventually(Duration::from_secs(15), || async {
        receiver.spans().iter().any(|s| {
            s.attr("busgate.request_id") == request_id && s.attr("client.address") == "203.0.113.44"
        })
    })
    .await;
    let access = gateway.proc.wait_for(Duration::from_secs(10), |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["message"] == "access" && v["request_id"] == request_id.as_str()).then_some(v)
    });
    assert_eq!(access["client_address"], "203.0.113.44");
}

/// With `[auth.anonymous] rate`, each client address (as a trusted proxy names it) is held to
/// the rate on its own: one address spending its burst leaves the others theirs.
#[tokio::test(flavor = "multi_thread")]
async fn the_anonymous_rate_holds_per_address() {
    let nats = NatsServer::start();
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__TRUSTED_PROXIES", "127.0.0.1")
            .env("BUSGATE_AUTH__ANONYMOUS__RATE__PER_SECOND", "1")
            .env("BUSGATE_AUTH__ANONYMOUS__RATE__BURST", "3");
    })
    .await;
    // A body that is not JSON: refused (415) after the rate, before anything is published.
    let post = |xff: &'static str| {
        http()
            .post(gateway.url("/api/order"))
            .header("content-type", "text/plain")
            .header("x-forwarded-for", xff)
            .body("x")
            .send()
    };
    for i in 0..3 {
        let status = post("203.0.113.5").await.expect("answer").status();
        assert_eq!(status, 415, "request {i} is within the burst");
    }
    let limited = post("203.0.113.5").await.expect("answer");
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.expect("problem");
    assert!(
        body["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("rate-limited"),
        "{body}"
    );
    for other in ["203.0.113.6", "2001:db8:9::1"] {
        assert_eq!(post(other).await.expect("answer").status(), 415, "{other}");
    }
    let limited = gateway
        .metric("busgate_client_requests_total", "outcome=\"rate-limited\"")
        .await;
    assert_eq!(limited, 1.0);
}

/// With `[auth.anonymous] max_pending`, each client address has its own cap of pending
/// asynchronous requests: one address at its cap is refused 429 `too-many-pending`, another
/// is not.
#[tokio::test(flavor = "multi_thread")]
async fn the_anonymous_pending_cap_holds_per_address() {
    let nats = NatsServer::start();
    let _silent = nats.silent("ghost").await;
    let settings = Settings::builtin().jobs_max_deliver(1).held(
        "held",
        "/api/held/{order_id}",
        "ghost",
        Duration::from_secs(3),
    );
    let gateway = Gateway::start_with(&nats, &settings, |cmd| {
        cmd.env("BUSGATE_HTTP__TRUSTED_PROXIES", "127.0.0.1")
            .env("BUSGATE_AUTH__ANONYMOUS__MAX_PENDING", "1");
    })
    .await;
    let submit = |order: &'static str, xff: &'static str| {
        http()
            .get(gateway.url(&format!("/api/held/{order}")))
            .header("prefer", "respond-async")
            .header("x-forwarded-for", xff)
            .send()
    };
    assert_eq!(
        submit("P1", "203.0.113.7").await.expect("submit").status(),
        202
    );
    let over = submit("P2", "203.0.113.7").await.expect("submit");
    assert_eq!(over.status(), 429);
    let problem: Value = over.json().await.expect("problem");
    assert!(
        problem["type"]
            .as_str()
            .unwrap_or_default()
            .ends_with("too-many-pending"),
        "{problem}"
    );
    assert_eq!(
        submit("P3", "203.0.113.8").await.expect("submit").status(),
        202
    );
}
