//! End-to-end: a client's limits hold for the whole deployment, not per gateway instance. Two
//! real gateways on one nats-server share a client's rate and its cap of pending requests
//! (they count each other through heartbeats on NATS), and when one dies the other takes the
//! whole rate within a bounded time.

use busgate_tests::fixture::Settings;
use busgate_tests::support;

use std::time::Duration;

use serde_json::json;

use support::{eventually, http, native_services, Gateway};

/// Settings whose gateways require a client's key.
fn required() -> Settings {
    Settings::builtin().auth_required()
}

/// Waits until `gateway` counts `n` live instances (its `busgate_gateway_instances` gauge).
async fn sees_instances(gateway: &Gateway, n: f64, within: Duration) {
    eventually(within, || async {
        gateway.metric("busgate_gateway_instances", "").await == n
    })
    .await;
}

/// Waits until `gateway` knows the client of `key` (the configuration reached it).
async fn knows(gateway: &Gateway, key: &str) {
    eventually(Duration::from_secs(10), || async {
        http()
            .get(gateway.url("/api/orders/K0"))
            .bearer_auth(key)
            .send()
            .await
            .is_ok_and(|r| r.status() != 401)
    })
    .await;
}

/// Offers `per_second` requests a second for `seconds` seconds, spread in turn over
/// `gateways`, as the client of `key`; returns how many were admitted (not 429). Every answer
/// must be a 200 or a 429.
async fn offer(gateways: &[&Gateway], key: &str, per_second: u32, seconds: u32) -> usize {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut sent = Vec::new();
    for i in 0..(per_second * seconds) as usize {
        tick.tick().await;
        let url = gateways[i % gateways.len()].url(&format!("/api/orders/R{i}"));
        let key = key.to_owned();
        sent.push(tokio::spawn(async move {
            http()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }));
    }
    let mut admitted = 0;
    for request in sent {
        match request.await.expect("request task") {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    admitted
}

/// Two gateways, one client of 20/s (burst 10): 50/s offered through both for 10 s admits
/// 200 ± 10 % plus the burst, not twice that; when one gateway dies (SIGKILL: no goodbye),
/// the other counts itself alone within the expiry and admits the whole rate.
#[tokio::test(flavor = "multi_thread")]
async fn a_rate_holds_across_two_gateways_and_survives_one() {
    let (nats, _services) = native_services();
    let a = Gateway::start(&nats, &required()).await;
    let mut b = Gateway::start(&nats, &required()).await;
    let key = a
        .client("shared", json!({"rate": {"per_second": 20, "burst": 10}}))
        .await
        .secret;
    knows(&b, &key).await;
    sees_instances(&a, 2.0, Duration::from_secs(10)).await;
    sees_instances(&b, 2.0, Duration::from_secs(10)).await;
    let status = a.admin_send("GET", "/admin/v1/status", None, None).await;
    assert_eq!(status.body["gateway_instances"], 2, "{}", status.body);
    // Let the burst that `knows` and the checks spent refill.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let admitted = offer(&[&a, &b], &key, 50, 10).await;
    println!("two gateways: admitted {admitted} of 500 offered (want 200 ± 10 % + 10)");
    // 20/s for 10 s, ± 10 %, plus the burst (10, split between the two).
    assert!(
        (180 + 10..=220 + 10).contains(&admitted),
        "admitted {admitted} of 500, want 200 ± 10 % + 10"
    );

    // One dies without a word: the other takes over its share within the expiry (3 s) and a
    // heartbeat or two.
    b.proc.kill();
    let since = std::time::Instant::now();
    sees_instances(&a, 1.0, Duration::from_secs(8)).await;
    assert!(
        since.elapsed() < Duration::from_secs(6),
        "{:?}",
        since.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alone = offer(&[&a], &key, 40, 5).await;
    println!("the survivor alone: admitted {alone} of 200 offered (want 100 ± 10 % + 10)");
    // 20/s for 5 s, ± 10 %, plus the burst (all 10 on one instance now).
    assert!(
        (90 + 10..=110 + 10).contains(&alone),
        "admitted {alone} of 200 on the survivor, want 100 ± 10 % + 10"
    );
}

/// A client's cap of pending requests (4) holds across two gateways: submits alternating
/// between them are admitted four times in all, then refused on both.
#[tokio::test(flavor = "multi_thread")]
async fn a_pending_cap_holds_across_two_gateways() {
    let (nats, _services) = native_services();
    let _silent = nats.silent("ghost").await;
    let settings = required().jobs_max_deliver(1).held(
        "held",
        "/api/held/{order_id}",
        "ghost",
        Duration::from_secs(30),
    );
    let a = Gateway::start(&nats, &settings).await;
    let b = Gateway::start(&nats, &settings).await;
    let key = a.client("queued", json!({"max_pending": 4})).await.secret;
    knows(&b, &key).await;
    sees_instances(&a, 2.0, Duration::from_secs(10)).await;
    sees_instances(&b, 2.0, Duration::from_secs(10)).await;

    let mut statuses = Vec::new();
    for i in 0..8 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        let answer = http()
            .get(gateway.url(&format!("/api/held/P{i}")))
            .header("x-api-key", &key)
            .header("prefer", "respond-async")
            .send()
            .await
            .expect("submit");
        statuses.push(answer.status().as_u16());
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((accepted, refused), (4, 4), "{statuses:?}");
}

/// A gateway that stops cleanly (SIGTERM) says so: the other takes over its share at once,
/// well before a silent one would expire (3 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_stops_hands_over_its_share_at_once() {
    let nats = support::NatsServer::start();
    let a = Gateway::start(&nats, &Settings::builtin()).await;
    let mut b = Gateway::start(&nats, &Settings::builtin()).await;
    sees_instances(&a, 2.0, Duration::from_secs(10)).await;
    let since = std::time::Instant::now();
    assert_eq!(b.proc.terminate(Duration::from_secs(20)), Some(0));
    sees_instances(&a, 1.0, Duration::from_secs(5)).await;
    // From SIGTERM: the drain (no requests in flight), then the goodbye. Without it, the
    // other would wait for the expiry: at least 2 s from SIGTERM (3 s from the last heartbeat,
    // sent at most 1 s before).
    let took = since.elapsed();
    println!("the other counted itself alone {took:?} after SIGTERM");
    assert!(took < Duration::from_millis(1900), "{took:?}");
}
