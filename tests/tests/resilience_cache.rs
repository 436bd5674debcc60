//! End-to-end: answers reused and completed later (issue 25, parts 4, 5 and 7). A real
//! nats-server, the real gateway, a real `busgate-worker adapters` process, and a test upstream
//! in this process that counts its calls and whose latency and failure each test sets.
//!
//! Coalescing (100 concurrent identical requests, one upstream call), the cache (a second
//! wave makes none; `stale_while_revalidate` serves at once while one refresh runs;
//! `stale_if_error` serves the copy while the upstream fails; `Cache-Control: no-cache` skips
//! it; `Cache-Status` per RFC 9211), a late grace (a partial answer with `Location` whose
//! document completes), and their limits.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use busgate_tests::fixture::Settings;
use busgate_tests::support::{
    self, bin, eventually, http, serve, until_final, Answer, Gateway, NatsServer, Proc,
};
use serde_json::{json, Value};

/// What each service of the test upstream does, and how often it was called.
#[derive(Default)]
struct Upstream {
    calls: Mutex<HashMap<String, u64>>,
    delay_ms: Mutex<HashMap<String, u64>>,
    failing: Mutex<HashMap<String, bool>>,
    big: AtomicBool,
    any: AtomicU64,
}

type Shared = Arc<Upstream>;

impl Upstream {
    fn calls(&self, service: &str) -> u64 {
        *self.calls.lock().expect("calls").get(service).unwrap_or(&0)
    }
    fn delay(&self, service: &str, ms: u64) {
        self.delay_ms
            .lock()
            .expect("delay")
            .insert(service.into(), ms);
    }
    fn fail(&self, service: &str, failing: bool) {
        self.failing
            .lock()
            .expect("failing")
            .insert(service.into(), failing);
    }
}

/// The test upstream: `GET /u/{service}/{id}` answers `{"service","id","call"}` after the
/// service's delay, or 500 while it fails; `big` makes every answer 8 KiB larger.
async fn upstream() -> (String, Shared) {
    let shared = Shared::default();
    let app = axum::Router::new()
        .route(
            "/u/{service}/{id}",
            get(
                |State(s): State<Shared>, Path((service, id)): Path<(String, String)>| async move {
                    let call = {
                        let mut calls = s.calls.lock().expect("calls");
                        let n = calls.entry(service.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    s.any.fetch_add(1, Ordering::Relaxed);
                    let delay = *s
                        .delay_ms
                        .lock()
                        .expect("delay")
                        .get(&service)
                        .unwrap_or(&0);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    if *s
                        .failing
                        .lock()
                        .expect("failing")
                        .get(&service)
                        .unwrap_or(&false)
                    {
                        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let pad = if s.big.load(Ordering::Relaxed) {
                        "x".repeat(8 * 1024)
                    } else {
                        String::new()
                    };
                    axum::Json(json!({"service": service, "id": id, "call": call, "pad": pad}))
                        .into_response()
                },
            ),
        )
        .with_state(shared.clone());
    (serve(app).await, shared)
}

struct Rig {
    base: String,
    up: Shared,
    gateway: Gateway,
    _adapters: Proc,
    _nats: NatsServer,
}

async fn rig() -> Rig {
    let (base, up) = upstream().await;
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let mut cmd = Command::new(bin("busgate-worker"));
    cmd.arg("adapters")
        .env("BUSGATE_NATS__URL", &nats.url)
        .env("BUSGATE_LOG__FORMAT", "json");
    let adapters = Proc::spawn("adapters", cmd);
    adapters.wait_for(support::READY_WITHIN, |l| {
        l.contains("nats connected").then_some(())
    });
    Rig {
        base,
        up,
        gateway,
        _adapters: adapters,
        _nats: nats,
    }
}

impl Rig {
    /// Creates service `name` on the upstream with `extra` fields (`cache`, `coalesce`).
    async fn service(&self, name: &str, extra: Value) {
        let mut spec = json!({"timeout": "2s", "upstream": {"url": format!("{}/u/{name}/{{order_id}}", self.base)}});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let (status, body) = self.create("services", name, spec).await;
        assert_eq!(status, 201, "{body}");
    }

    async fn create(&self, kind: &str, name: &str, spec: Value) -> (u16, Value) {
        let body = json!({"name": name, "spec": spec});
        let answer = self
            .gateway
            .admin_send("POST", &format!("/admin/v1/{kind}"), None, Some(&body))
            .await;
        (answer.status, answer.body)
    }

    /// A route `GET /api/<name>/{order_id}` over `targets`, with `extra` fields.
    async fn route(&self, name: &str, targets: Value, extra: Value) {
        let mut spec = json!({"bindings": [{"method": "GET", "path": format!("/api/{name}/{{order_id}}")}],
                              "deadline": "3s", "targets": targets});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        let (status, body) = self.create("routes", name, spec).await;
        assert_eq!(status, 201, "{body}");
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = http().get(self.gateway.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Answer::of(request.send().await.expect("get")).await
    }

    /// Waits until `path` answers 200 (the adapter serves the new service).
    async fn served(&self, path: &str) {
        eventually(Duration::from_secs(10), || async {
            self.get(path, &[]).await.status == 200
        })
        .await;
    }
}

/// RFC 9211 / RFC 8941: `Cache-Status` is a list of `token *( ";" key [ "=" value ] )`;
/// keys are lower-case, values integers or tokens.
fn well_formed_cache_status(value: &str) -> bool {
    let token = |t: &str| {
        let mut chars = t.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '*')
            && chars.all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c))
    };
    value.split(", ").all(|member| {
        let mut parts = member.split("; ");
        let Some(id) = parts.next() else { return false };
        token(id)
            && parts.all(|p| match p.split_once('=') {
                None => p.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                Some((k, v)) => {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                        && (v.parse::<i64>().is_ok() || token(v))
                }
            })
    })
}

/// Asks `path` until an answer fits `fits` (bounded: 5 s), and returns it.
async fn first_where(rig: &Rig, path: &str, fits: impl Fn(&Answer) -> bool) -> Answer {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = rig.get(path, &[]).await;
        if fits(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < until,
            "{path}: last answer {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wave(rig: &Rig, path: &str, n: usize) -> Vec<Answer> {
    let requests = (0..n).map(|_| rig.get(path, &[]));
    futures::future::join_all(requests).await
}

/// 100 concurrent identical requests to a 200 ms upstream make one upstream call; with a
/// cache, a second wave makes none and says `hit` (body and `Cache-Status`).
#[tokio::test]
async fn identical_requests_share_one_call_and_the_cache_answers_the_next_wave() {
    let rig = rig().await;
    rig.service("slow", json!({})).await;
    rig.service("cached", json!({"cache": {"ttl": "60s"}}))
        .await;
    rig.service("solo", json!({"coalesce": false})).await;
    rig.route("slow", json!([{"service": "slow"}]), json!({}))
        .await;
    rig.route("cached", json!([{"service": "cached"}]), json!({}))
        .await;
    rig.route("solo", json!([{"service": "solo"}]), json!({}))
        .await;
    rig.served("/api/slow/warm").await;
    rig.served("/api/cached/warm").await;
    rig.served("/api/solo/warm").await;
    for s in ["slow", "cached", "solo"] {
        rig.up.delay(s, 200);
    }

    let before = rig.up.calls("slow");
    let answers = wave(&rig, "/api/slow/A-1", 100).await;
    assert!(answers.iter().all(|a| a.status == 200));
    let coalesced = answers
        .iter()
        .filter(|a| a.body["sources"]["slow"]["coalesced"] == true)
        .count();
    let calls = rig.up.calls("slow") - before;
    println!("coalescing: 100 requests, {calls} upstream call(s), {coalesced} coalesced");
    assert_eq!(calls, 1, "one upstream call for 100 identical requests");
    assert_eq!(coalesced, 99);
    assert!(
        rig.gateway
            .metric("busgate_coalesced_total", "service=\"slow\"")
            .await
            >= 99.0
    );
    // Every follower has the leader's data.
    assert!(answers
        .iter()
        .all(|a| a.body["data"]["slow"]["id"] == "A-1"));

    // `coalesce = false`: every request is its own call.
    let before = rig.up.calls("solo");
    let answers = wave(&rig, "/api/solo/A-1", 10).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(rig.up.calls("solo") - before, 10);

    // The cache: the first wave makes one call and stores it; the second makes none.
    let before = rig.up.calls("cached");
    let first = wave(&rig, "/api/cached/A-1", 100).await;
    assert!(first.iter().all(|a| a.status == 200));
    assert_eq!(rig.up.calls("cached") - before, 1);
    let leader = first
        .iter()
        .find(|a| a.body["sources"]["cached"].get("coalesced").is_none())
        .expect("a leader");
    assert_eq!(leader.body["sources"]["cached"]["cache"], "miss");
    let status = support::header(&leader.headers, "cache-status");
    assert_eq!(status, "busgate-cached; fwd=miss; stored", "{status}");
    let started = Instant::now();
    let second = wave(&rig, "/api/cached/A-1", 100).await;
    println!("cached wave of 100 in {:?}", started.elapsed());
    assert_eq!(
        rig.up.calls("cached") - before,
        1,
        "the second wave made no call"
    );
    for answer in &second {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body["sources"]["cached"]["cache"], "hit");
        let status = support::header(&answer.headers, "cache-status");
        assert!(status.starts_with("busgate-cached; hit; ttl="), "{status}");
        assert!(well_formed_cache_status(status), "{status}");
    }
    assert!(
        rig.gateway
            .metric("busgate_cache_lookups_total", "outcome=\"hit\"")
            .await
            >= 100.0
    );

    // `Cache-Control: no-cache` skips the lookup (and stores the fresh answer).
    let answer = rig
        .get("/api/cached/A-1", &[("cache-control", "no-cache")])
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["sources"]["cached"]["cache"], "miss");
    assert_eq!(rig.up.calls("cached") - before, 2);
    let status = support::header(&answer.headers, "cache-status");
    assert_eq!(status, "busgate-cached; fwd=request; stored");
    assert!(well_formed_cache_status(status));

    // Another order id is another key.
    let answer = rig.get("/api/cached/B-2", &[]).await;
    assert_eq!(answer.body["sources"]["cached"]["cache"], "miss");
    assert_eq!(answer.body["data"]["cached"]["id"], "B-2");
}

/// A stale copy is served at once while one refresh runs; with the upstream failing,
/// `stale_if_error` serves the copy.
#[tokio::test]
async fn stale_copies_are_served_at_once_and_when_the_service_fails() {
    let rig = rig().await;
    rig.service(
        "swr",
        json!({"cache": {"ttl": "1s", "stale_while_revalidate": "60s"}}),
    )
    .await;
    rig.service(
        "sie",
        json!({"cache": {"ttl": "1s", "stale_if_error": "60s"}}),
    )
    .await;
    rig.route("swr", json!([{"service": "swr"}]), json!({}))
        .await;
    rig.route("sie", json!([{"service": "sie"}]), json!({}))
        .await;
    rig.served("/api/swr/warm").await;
    rig.served("/api/sie/warm").await;

    // stale-while-revalidate: a slow upstream, yet stale answers come at once.
    rig.up.delay("swr", 400);
    let first = rig.get("/api/swr/S-1", &[]).await;
    assert_eq!(first.body["sources"]["swr"]["cache"], "miss");
    let calls = rig.up.calls("swr");
    // Fresh for a second (hits, no call), then stale.
    let stale = first_where(&rig, "/api/swr/S-1", |a| {
        a.body["sources"]["swr"]["cache"] == "stale"
    })
    .await;
    let status = support::header(&stale.headers, "cache-status");
    assert!(
        status.contains("busgate-swr; hit; ttl=-")
            && status.contains("detail=stale-while-revalidate"),
        "{status}"
    );
    assert!(well_formed_cache_status(status), "{status}");
    // While the refresh runs (400 ms), more stale answers, each at once (the gateway's own
    // `elapsed_ms`: the client's clock counts this loaded machine too), and no second call.
    let more = wave(&rig, "/api/swr/S-1", 20).await;
    assert!(more.iter().all(|a| a.status == 200));
    for answer in &more {
        assert_ne!(
            answer.body["sources"]["swr"]["cache"], "miss",
            "served from the cache"
        );
        let took = answer.body["elapsed_ms"].as_f64().expect("elapsed_ms");
        assert!(took < 200.0, "a stale answer took {took} ms");
    }
    let took = stale.body["elapsed_ms"].as_f64().expect("elapsed_ms");
    assert!(took < 200.0, "the first stale answer took {took} ms");
    // The single refresh lands: one more call in all, then the entry is fresh again.
    eventually(Duration::from_secs(5), || async {
        rig.get("/api/swr/S-1", &[]).await.body["sources"]["swr"]["cache"] == "hit"
    })
    .await;
    assert_eq!(
        rig.up.calls("swr") - calls,
        1,
        "one refresh for every stale answer"
    );
    assert!(
        rig.gateway
            .metric("busgate_cache_refreshes_total", "outcome=\"ok\"")
            .await
            >= 1.0
    );

    // stale-if-error: stored, then the upstream fails: the copy is served.
    let first = rig.get("/api/sie/E-1", &[]).await;
    assert_eq!(first.status, 200);
    let original = first.body["data"]["sie"].clone();
    rig.up.fail("sie", true);
    let served = first_where(&rig, "/api/sie/E-1", |a| {
        a.body["sources"]["sie"]["cache"] == "stale"
    })
    .await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body["sources"]["sie"]["status"], "ok");
    assert_eq!(served.body["data"]["sie"], original);
    let status = support::header(&served.headers, "cache-status");
    assert!(
        status.contains("fwd=stale") && status.contains("detail=stale-if-error"),
        "{status}"
    );
    assert!(well_formed_cache_status(status), "{status}");
    // Without a copy, the failure is the answer.
    let fresh = rig.get("/api/sie/E-2", &[]).await;
    assert_eq!(fresh.status, 502, "{}", fresh.body);
}

/// Partial → complete: a 200 ms deadline and an optional 500 ms source: the answer is partial
/// with `Location` and `status_url`; polling it within a second gives the complete answer.
/// The same route asked asynchronously completes with both sources.
#[tokio::test]
async fn a_partial_answer_completes_later_sync_and_async() {
    let rig = rig().await;
    rig.service("fast", json!({"coalesce": false})).await;
    rig.service("late", json!({"coalesce": false})).await;
    rig.route(
        "both",
        json!([{"service": "fast"}, {"service": "late", "required": false}]),
        json!({"deadline": "200ms", "late": {"grace": "2s"}}),
    )
    .await;
    rig.served("/api/both/warm").await;
    rig.up.delay("late", 500);

    let started = Instant::now();
    let answer = rig.get("/api/both/L-1", &[]).await;
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["complete"], false);
    assert_eq!(answer.body["sources"]["late"]["status"], "timeout");
    let elapsed = answer.body["elapsed_ms"].as_f64().expect("elapsed_ms");
    assert!(
        elapsed < 400.0,
        "answered in {elapsed} ms (client saw {took:?})"
    );
    let request_id = answer.body["request_id"].as_str().expect("id").to_owned();
    let location = support::header(&answer.headers, "location").to_owned();
    assert_eq!(location, format!("/api/requests/{request_id}"));
    assert_eq!(answer.body["status_url"], location.as_str());

    let doc = until_final(&rig.gateway, &request_id, Duration::from_secs(1)).await;
    println!("completed after {:?}", started.elapsed());
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["complete"], true, "{doc}");
    assert_eq!(doc["result"]["data"]["late"]["id"], "L-1");
    assert_eq!(doc["result"]["data"]["fast"]["id"], "L-1");
    assert_eq!(doc["result"]["sources"]["late"]["status"], "ok");
    // Its event stream works as an asynchronous request's: the final document, then the end.
    let events = http()
        .get(
            rig.gateway
                .url(&format!("/api/requests/{request_id}/events")),
        )
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(5), events.text())
        .await
        .expect("the stream ends after the final document")
        .expect("text");
    assert!(text.contains("\"completed\""), "{text}");
    // Nobody else sees it: another client's poll is a 404 (here: a made-up id).
    let other = rig
        .get("/api/requests/0190a5b2-0000-7000-8000-000000000000", &[])
        .await;
    assert_eq!(other.status, 404);

    // Asynchronously: the late source is waited for in place.
    let (_, body) = support::submit_request(http().get(rig.gateway.url("/api/both/L-2"))).await;
    let id = support::request_id(&body);
    let doc = until_final(&rig.gateway, &id, Duration::from_secs(5)).await;
    assert_eq!(doc["result"]["complete"], true, "{doc}");
    assert_eq!(doc["result"]["data"]["late"]["id"], "L-2");

    // A source that stays silent past the grace: the document stays as it was, final.
    rig.up.delay("late", 3_000);
    let answer = rig.get("/api/both/L-3", &[]).await;
    assert_eq!(answer.body["complete"], false);
    let id = answer.body["request_id"].as_str().expect("id").to_owned();
    let doc = until_final(&rig.gateway, &id, Duration::from_secs(5)).await;
    assert_eq!(doc["result"]["complete"], false, "{doc}");
    assert!(
        rig.gateway
            .metric("busgate_late_gathers_total", "outcome=\"completed\"")
            .await
            >= 1.0
    );
}

/// Attacks on the limits: an entry over the bytes cap is not stored; settings out of bounds
/// are refused with the field named (422 from the admin API, exit 64 from a settings file).
#[tokio::test]
async fn limits_hold_against_big_entries_and_bad_settings() {
    let rig = rig().await;
    rig.service(
        "big",
        json!({"cache": {"ttl": "60s", "max_bytes": 4096}, "coalesce": false}),
    )
    .await;
    rig.route("big", json!([{"service": "big"}]), json!({}))
        .await;
    rig.served("/api/big/warm").await;
    rig.up.big.store(true, Ordering::Relaxed);
    let before = rig.up.calls("big");
    for _ in 0..3 {
        let answer = rig.get("/api/big/H-1", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body["sources"]["big"]["cache"], "miss");
        assert_eq!(
            support::header(&answer.headers, "cache-status"),
            "busgate-big; fwd=miss"
        );
    }
    assert_eq!(
        rig.up.calls("big") - before,
        3,
        "never stored, so every request asks"
    );

    for (kind, name, spec, field) in [
        (
            "routes",
            "toolate",
            json!({"bindings": [{"method": "GET", "path": "/api/toolate/{order_id}"}],
                   "targets": [{"service": "big"}], "late": {"grace": "61s"}}),
            "routes.toolate.late.grace",
        ),
        (
            "services",
            "zero",
            json!({"cache": {"ttl": "0s"}}),
            "services.zero.cache.ttl",
        ),
        (
            "services",
            "huge",
            json!({"cache": {"ttl": "1s", "max_bytes": 4_294_967_296_u64}}),
            "services.huge.cache.max_bytes",
        ),
    ] {
        let (status, body) = rig.create(kind, name, spec).await;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains(field), "{field}: {body}");
    }

    let file = busgate_tests::fixture::file(
        "[services.s]\ntimeout = \"1s\"\n[services.s.cache]\nttl = \"1s\"\nstale_if_error = \"48h\"\n",
        ".toml",
    );
    let out = Command::new(bin("busgate"))
        .args(["check-config", "--config"])
        .arg(file.path())
        .env_remove("BUSGATE_NATS__URL")
        .env_remove("BUSGATE_ADMIN__TOKEN")
        .output()
        .expect("check-config runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(text.contains("services.s.cache.stale_if_error"), "{text}");
}

/// A leader whose gather ends before its reply (another required source of its route failed)
/// hands the reply over: its followers still get it, and the service is asked once.
#[tokio::test]
async fn followers_get_the_reply_when_their_leader_fails_first() {
    let rig = rig().await;
    rig.service("boom", json!({"coalesce": false})).await;
    rig.service("shared", json!({})).await;
    rig.route(
        "lead",
        json!([{"service": "boom"}, {"service": "shared", "required": false}]),
        json!({"operation": "same"}),
    )
    .await;
    rig.route(
        "follow",
        json!([{"service": "shared"}]),
        json!({"operation": "same"}),
    )
    .await;
    rig.served("/api/lead/warm").await;
    rig.served("/api/follow/warm").await;
    rig.up.delay("boom", 300);
    rig.up.fail("boom", true);
    rig.up.delay("shared", 900);

    let before = rig.up.calls("shared");
    let leader = tokio::spawn({
        let url = rig.gateway.url("/api/lead/O-1");
        async move { Answer::of(http().get(url).send().await.expect("get")).await }
    });
    // The leader's request reached the shared service: the followers come while it is out.
    eventually(Duration::from_secs(5), || async {
        rig.up.calls("shared") > before
    })
    .await;
    let followers = wave(&rig, "/api/follow/O-1", 5).await;
    let leader = leader.await.expect("leader");
    assert_eq!(
        leader.status, 502,
        "the leader failed on boom: {}",
        leader.body
    );
    for answer in &followers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["sources"]["shared"]["coalesced"], true);
        assert_eq!(answer.body["data"]["shared"]["id"], "O-1");
    }
    assert_eq!(rig.up.calls("shared") - before, 1, "asked once");
}

/// A route that names the service by an alias (`as`) follows another route's flight: the reply
/// is forwarded under the follower's own target name.
#[tokio::test]
async fn an_aliased_follower_gets_the_reply_under_its_own_name() {
    let rig = rig().await;
    rig.service("shared", json!({})).await;
    rig.route(
        "plain",
        json!([{"service": "shared"}]),
        json!({"operation": "same"}),
    )
    .await;
    rig.route(
        "aliased",
        json!([{"service": "shared", "as": "orders"}]),
        json!({"operation": "same"}),
    )
    .await;
    rig.served("/api/plain/warm").await;
    rig.served("/api/aliased/warm").await;
    rig.up.delay("shared", 600);

    let before = rig.up.calls("shared");
    let leader = tokio::spawn({
        let url = rig.gateway.url("/api/plain/A-1");
        async move { Answer::of(http().get(url).send().await.expect("get")).await }
    });
    eventually(Duration::from_secs(5), || async {
        rig.up.calls("shared") > before
    })
    .await;
    let followers = wave(&rig, "/api/aliased/A-1", 5).await;
    let leader = leader.await.expect("leader");
    assert_eq!(leader.status, 200, "{}", leader.body);
    for answer in &followers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["sources"]["orders"]["coalesced"], true);
        assert_eq!(answer.body["sources"]["orders"]["service"], "shared");
        assert_eq!(answer.body["data"]["orders"]["id"], "A-1");
    }
    assert_eq!(rig.up.calls("shared") - before, 1, "asked once");
}

/// An open circuit breaker serves the stale copy within `stale_if_error`, without asking.
#[tokio::test]
async fn an_open_breaker_serves_the_stale_copy() {
    let rig = rig().await;
    rig.service(
        "tripped",
        json!({"cache": {"ttl": "1s", "stale_if_error": "60s"},
               "breaker": {"min_requests": 1, "failure_ratio": 0.1, "open_for": "60s"}}),
    )
    .await;
    rig.route("tripped", json!([{"service": "tripped"}]), json!({}))
        .await;
    rig.served("/api/tripped/warm").await;
    let first = rig.get("/api/tripped/B-1", &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let original = first.body["data"]["tripped"].clone();
    rig.up.fail("tripped", true);
    // Failures open the breaker (each answered by the stale copy once the entry is stale).
    eventually(Duration::from_secs(10), || async {
        let calls = rig.up.calls("tripped");
        let answer = rig.get("/api/tripped/B-1", &[]).await;
        answer.status == 200
            && answer.body["sources"]["tripped"]["cache"] == "stale"
            && rig.up.calls("tripped") == calls
    })
    .await;
    let served = rig.get("/api/tripped/B-1", &[]).await;
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.body["sources"]["tripped"]["status"], "ok");
    assert_eq!(served.body["data"]["tripped"], original);
    let status = support::header(&served.headers, "cache-status");
    assert!(status.contains("detail=stale-if-error"), "{status}");
    // Without a copy, the open breaker is the answer.
    let fresh = rig.get("/api/tripped/B-2", &[]).await;
    assert_eq!(fresh.status, 503, "{}", fresh.body);
    assert_eq!(fresh.body["sources"]["tripped"]["status"], "circuit_open");
}
