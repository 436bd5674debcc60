//! End-to-end: slow and greedy clients against the real gateway binary on a real nats-server.
//! Slowloris (half-sent heads, idle keep-alives, bodies one byte a second), oversize heads,
//! the connection cap, a flood past the in-flight cap, and the caps on event streams and
//! `Prefer: wait` watchers.

use busgate_tests::fixture::{Route, Settings};
use busgate_tests::support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{eventually, get_json, Gateway, NatsServer};

/// How much later than its timeout a connection may be closed (a loaded 2-core machine).
const SLACK: Duration = Duration::from_millis(1500);

/// `host:port` of the public listener.
fn addr(gateway: &Gateway) -> String {
    gateway.base.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes (EOF or reset), at most `within`; what was read and when.
/// A connection to the gateway's public listener that has sent `bytes`.
async fn connect_and_send(gateway: &Gateway, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr(gateway)).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    stream
}

async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(seen)
}

/// A route to `silent`, a service whose subscriber (the test's) never answers: every request
/// stays in flight until the route's deadline.
fn holding(deadline: Duration) -> Settings {
    Settings::builtin().service("silent", deadline).route(
        "hold",
        Route::get("/api/hold/{order_id}")
            .deadline(deadline)
            .target("silent"),
    )
}

/// Subscribes to the silent service's subject and never answers (so no "no responders").
async fn silent_service(nats: &NatsServer) -> async_nats::Subscriber {
    let client = nats.client().await;
    let subject = format!("{}.silent", busgate_shared::subject::SERVICE_PREFIX);
    let subscriber = client.subscribe(subject).await.expect("subscribe");
    client.flush().await.expect("flush");
    subscriber
}

#[tokio::test]
async fn half_sent_heads_and_idle_keep_alives_are_closed_in_time() {
    let nats = NatsServer::start();
    let timeout = Duration::from_secs(1);
    let gateway = Gateway::start(&nats, &Settings::builtin().http_header_timeout(timeout)).await;
    // Five slowloris connections: a request line and one header, never the blank line.
    let started = Instant::now();
    let mut loris = Vec::new();
    for _ in 0..5 {
        loris.push(connect_and_send(&gateway, b"GET /health/live HTTP/1.1\r\nHost: x\r\n").await);
    }
    for (i, stream) in loris.iter_mut().enumerate() {
        let seen = read_until_closed(stream, timeout + SLACK).await;
        let seen =
            seen.unwrap_or_else(|| panic!("connection {i} still open after {:?}", timeout + SLACK));
        assert!(seen.is_empty(), "a half-sent head gets no answer: {seen:?}");
    }
    let elapsed = started.elapsed();
    println!("5 half-sent heads closed after {elapsed:?} (header_timeout {timeout:?})");
    assert!(
        elapsed >= timeout - Duration::from_millis(100),
        "closed before the timeout: {elapsed:?}"
    );

    // A kept-alive connection that answered one request and then stays idle is closed too.
    let mut idle = TcpStream::connect(addr(&gateway)).await.expect("connect");
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_since = Instant::now();
    let seen = read_until_closed(&mut idle, timeout + SLACK)
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(seen.is_empty());
    println!("idle keep-alive closed after {:?}", idle_since.elapsed());

    // A head sent whole, slowly but within the timeout, is answered.
    let mut slow = TcpStream::connect(addr(&gateway)).await.expect("connect");
    slow.write_all(b"GET /health/live HTTP/1.1\r\n")
        .await
        .expect("line");
    tokio::time::sleep(timeout / 4).await; // the client's pace, not synchronisation
    slow.write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("rest");
    let answer = read_until_closed(&mut slow, timeout + SLACK)
        .await
        .expect("answered");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn a_body_sent_one_byte_a_second_is_cut_with_408() {
    let nats = NatsServer::start();
    let timeout = Duration::from_secs(2);
    let gateway = Gateway::start(&nats, &Settings::builtin().http_body_timeout(timeout)).await;
    let mut stream = TcpStream::connect(addr(&gateway)).await.expect("connect");
    let head = "POST /api/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let trickle = tokio::spawn(async move {
        // One byte a second, until the gateway stops taking them (or 60 s: the whole body).
        for byte in b"{\"order_id\":\"A1\"                                           }" {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await; // the client's pace
        }
    });
    let mut answer = Vec::new();
    let within = timeout + SLACK;
    let closed = tokio::time::timeout(within, read.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "connection still open after {within:?}");
    let text = String::from_utf8_lossy(&answer);
    println!(
        "trickled body cut after {elapsed:?} (body_timeout {timeout:?}): {}",
        text.lines().next().unwrap_or("")
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        text.contains("urn:busgate:problem:request-timeout"),
        "{text}"
    );
    assert!(
        elapsed >= timeout - Duration::from_millis(100),
        "cut too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn oversize_heads_get_431_and_connections_past_the_cap_are_closed() {
    let nats = NatsServer::start();
    let settings = Settings::builtin()
        .http_max_header_bytes(4096)
        .http_max_connections(4);
    let gateway = Gateway::start(&nats, &settings).await;
    let big = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(6000)
    );
    let many = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: 1\r\n"))
            .collect::<String>()
    );
    for (what, head) in [("6000-byte header", big), ("150 header fields", many)] {
        let mut stream = TcpStream::connect(addr(&gateway)).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("head");
        let answer = read_until_closed(&mut stream, SLACK).await.expect("closed");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 431"), "{what}: {text}");
    }

    // Four connections, each answered once and kept alive: the cap is reached.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream =
            connect_and_send(&gateway, b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.expect("answer");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(stream);
    }
    // A fifth is accepted and closed at once, unanswered.
    let mut fifth = TcpStream::connect(addr(&gateway)).await.expect("connect");
    let _ = fifth
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let seen = read_until_closed(&mut fifth, SLACK)
        .await
        .expect("closed at once");
    assert!(seen.is_empty(), "{:?}", String::from_utf8_lossy(&seen));
    // One closes; a new connection is served again.
    drop(open.pop());
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(5), || async {
        matches!(http.get(gateway.url("/health/live")).send().await, Ok(r) if r.status() == 200)
    })
    .await;
}

/// Resident memory of a process, in KiB, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_shed_with_503_overloaded_while_health_answers() {
    const CAP: usize = 32;
    const CONNECTIONS: usize = 128;
    const FLOOD: Duration = Duration::from_secs(5);
    /// What the gateway may hold under this flood: about 25 MiB idle (debug build), 30 MiB
    /// seen at the peak; a shed request must cost next to nothing that stays.
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    let nats = NatsServer::start();
    let _silent = silent_service(&nats).await;
    let settings = holding(Duration::from_millis(500)).http_max_in_flight(CAP);
    let gateway = Gateway::start(&nats, &settings).await;
    let pid = gateway.proc.pid().as_raw();
    let rss_before = rss_kib(pid);

    // The probe: its own connection, on its own thread and runtime, every 10 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (url, ready_url, stop) = (
            gateway.url("/health/live"),
            gateway.url("/health/ready"),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let http = reqwest::Client::new();
                let _ = http.get(&url).send().await; // connect before the flood
                let (mut latencies, mut peak_in_flight, mut rss_peak) = (Vec::new(), 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let response = http.get(&url).send().await.expect("live");
                    assert_eq!(response.status(), 200);
                    response.bytes().await.expect("body");
                    latencies.push(sent.elapsed());
                    if latencies.len() % 10 == 0 {
                        let ready = get_json(&ready_url).await;
                        peak_in_flight = peak_in_flight
                            .max(ready["load"]["in_flight"]["open"].as_u64().unwrap_or(0));
                        rss_peak = rss_peak.max(rss_kib(pid));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await; // the probe's pace
                }
                (latencies, peak_in_flight, rss_peak)
            })
        })
    };

    let (answered, overloaded, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let until = Instant::now() + FLOOD;
    let flood: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let url = gateway.url(&format!("/api/hold/{i}"));
            let (answered, overloaded, other) =
                (answered.clone(), overloaded.clone(), other.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new(); // one connection per task
                while Instant::now() < until {
                    let Ok(response) = http.get(&url).send().await else {
                        other.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    answered.fetch_add(1, Ordering::Relaxed);
                    if status == 503 && body["type"] == "urn:busgate:problem:overloaded" {
                        assert!(retry_after, "503 overloaded without Retry-After");
                        assert!(body["request_id"].is_string(), "{body}");
                        overloaded.fetch_add(1, Ordering::Relaxed);
                    } else if status != 504 {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in flood {
        task.await.expect("flood task");
    }
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, peak_in_flight, rss_peak) = probe.join().expect("probe");
    latencies.sort();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().expect("probes");
    let (answered, overloaded, other) = (
        answered.load(Ordering::Relaxed),
        overloaded.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    println!(
        "flood: {CONNECTIONS} connections for {FLOOD:?}, max_in_flight {CAP}: {answered} answered, \
         {overloaded} 503 overloaded, {} held to their deadline (504), {other} other; \
         /health/live over {} probes p50 {p50:?} max {max:?}; in flight at most {peak_in_flight}; \
         RSS {} MiB before, {} MiB peak (bound {} MiB)",
        answered - overloaded - other,
        latencies.len(),
        rss_before / 1024,
        rss_peak / 1024,
        RSS_BOUND_KIB / 1024,
    );
    assert!(overloaded > 0, "nothing was shed");
    assert!(answered - overloaded - other > 0, "nothing got through");
    assert_eq!(other, 0, "answers other than 504 and 503 overloaded");
    assert!(peak_in_flight <= CAP as u64, "{peak_in_flight} in flight");
    assert!(
        max < Duration::from_millis(100),
        "/health/live took {max:?}"
    );
    assert!(rss_peak < RSS_BOUND_KIB, "RSS {rss_peak} KiB");
}

#[tokio::test]
async fn event_streams_and_waiters_are_capped_per_instance() {
    let nats = NatsServer::start();
    let _silent = silent_service(&nats).await;
    // A head timeout shorter than the stream: it must not cut a stream being answered.
    // max_deliver 1: the held request's timeout is final at once, not retried (an
    // asynchronous request's timeout is retried until the last delivery allowed).
    let settings = holding(Duration::from_secs(2))
        .http_header_timeout(Duration::from_secs(1))
        .jobs_max_deliver(1)
        .jobs_max_event_streams(1)
        .jobs_max_waiters(1);
    let gateway = Gateway::start(&nats, &settings).await;
    let http = reqwest::Client::new();
    let submit = |prefer: &'static str| {
        http.get(gateway.url("/api/hold/A1"))
            .header("prefer", prefer)
            .send()
    };
    let accepted: Value = submit("respond-async")
        .await
        .expect("submit")
        .json()
        .await
        .expect("json");
    let events = gateway.url(&format!(
        "/api/requests/{}/events",
        accepted["request_id"].as_str().expect("request_id")
    ));
    let mut first = http.get(&events).send().await.expect("events");
    assert_eq!(first.status(), 200);
    first.chunk().await.expect("bytes").expect("a first event");
    let second = http.get(&events).send().await.expect("events");
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    let problem: Value = second.json().await.expect("problem");
    assert_eq!(
        problem["type"], "urn:busgate:problem:overloaded",
        "{problem}"
    );
    // The first stream lasts past the head timeout, to the final event (the deadline, 2 s).
    let opened = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(10), first.text())
        .await
        .expect("the stream ends")
        .expect("text");
    assert!(rest.contains("event: failed"), "{rest}");
    println!(
        "event stream ended after {:?} with its final event",
        opened.elapsed()
    );
    // Its slot is free again.
    eventually(Duration::from_secs(5), || async {
        http.get(&events)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok()
            == Some(200)
    })
    .await;

    // One submit waits on `Prefer: wait`; a second one past the cap is answered 202 at once.
    let waiting = tokio::spawn(submit("respond-async, wait=10"));
    let ready = gateway.url("/health/ready");
    eventually(Duration::from_secs(5), || async {
        let load = get_json(&ready).await;
        load["load"]["waiters"]["open"] == 1
    })
    .await;
    let started = Instant::now();
    let second = submit("respond-async, wait=10").await.expect("submit");
    assert_eq!(second.status(), 202);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let first = waiting.await.expect("task").expect("submit");
    assert_eq!(first.status(), 504, "the waiter got the final answer");
}
