//! The memory scenario: the gateway's RSS with many requests held in flight (gathers waiting
//! on a slow service), beside the same connections idle. Never panics: a connection that
//! cannot be opened, a request not admitted or a `/metrics` read that fails is a failure of
//! the scenario, reported with the rest.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`); 0 when it cannot be read.
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A gauge or counter from the gateway's `/metrics` at `base` (summed over its label sets), or
/// why it could not be read.
pub async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Result<f64, String> {
    let response = http
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET /metrics answered {}", response.status()));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("GET /metrics: {e}"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// Holds `hold` requests in flight on the gateway at `base` (pid `gw_pid`) and measures its
/// RSS; returns the figures for `raw.json` and adds a line to `failures` for each thing that
/// did not go as planned.
pub async fn run(
    base: &str,
    gw_pid: u32,
    hold: usize,
    peak_rss_scenario3: u64,
    failures: &mut Vec<String>,
) -> Value {
    // The connections are opened and each serves one quick request first (hyper sizes its
    // connection buffers on the first request), then are measured idle: the difference is
    // what a request in flight costs beyond a keep-alive connection: its handler and its
    // gather. Each request is held by a slow- order for 3 s.
    let baseline = rss_kib(gw_pid, "VmRSS");
    let addr = base.trim_start_matches("http://").to_owned();
    let mut sockets = Vec::with_capacity(hold);
    let mut refused = None;
    for _ in 0..hold {
        match TcpStream::connect(&addr).await {
            Ok(s) => sockets.push(s),
            Err(e) => {
                refused.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = refused {
        failures.push(format!(
            "memory: {} of {hold} connections opened ({e})",
            sockets.len()
        ));
    }
    let warmed = warm_up(&mut sockets).await;
    if warmed < sockets.len() {
        failures.push(format!(
            "memory: {warmed} of {} connections answered their quick request (refused or reset: \
             the gateway's http.max_connections?)",
            sockets.len()
        ));
    }
    let connected_rss = settled_rss_kib(gw_pid).await;
    let opened = Instant::now();
    for (i, s) in sockets.iter_mut().enumerate() {
        let request = format!("GET /bench/hold/slow-{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.write_all(request.as_bytes()).await;
    }
    // Until every request is in flight (bounded: 2 s), the peak includes requests still being
    // admitted (their head, body and publish); then the RSS with all of them waiting, once
    // settled (bounded: 2 s), is what the gathers in flight hold.
    let http = reqwest::Client::new();
    let mut in_flight = 0.0;
    let mut admission_peak_rss = 0;
    for _ in 0..40 {
        match metric(&http, base, "busgate_gathers_in_flight").await {
            Ok(now) => in_flight = now,
            Err(why) => {
                failures.push(format!(
                    "memory: reading the gathers in flight with {} connections open: {why}",
                    sockets.len()
                ));
                break;
            }
        }
        admission_peak_rss = admission_peak_rss.max(rss_kib(gw_pid, "VmRSS"));
        if in_flight >= sockets.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if in_flight < hold as f64 {
        failures.push(format!(
            "memory: {in_flight} of {hold} requests in flight (refused or shed: the gateway's \
             http.max_connections or http.max_in_flight?)"
        ));
    }
    let held_rss = settled_rss_kib(gw_pid).await;
    admission_peak_rss = admission_peak_rss.max(held_rss);
    let per = |above: u64| {
        if in_flight > 0.0 {
            held_rss.saturating_sub(above) as f64 / in_flight
        } else {
            f64::NAN
        }
    };
    let (per_request, per_gather) = (per(baseline), per(connected_rss));
    eprintln!("memory: peak RSS under scenario 3 {peak_rss_scenario3} KiB; {in_flight} in flight (sent in {:?}): RSS {held_rss} KiB (peak while admitting {admission_peak_rss} KiB), {connected_rss} KiB with the connections idle after {warmed} quick requests, {baseline} KiB before: {per_gather:.2} KiB per gather, {per_request:.2} KiB per request with its connection", opened.elapsed());
    drop(sockets);
    json!({"held": hold, "peak_rss_scenario3_kib": peak_rss_scenario3, "idle_rss_kib": baseline, "connected_rss_kib": connected_rss, "warmed_connections": warmed, "held_rss_kib": held_rss, "admission_peak_rss_kib": admission_peak_rss, "in_flight": in_flight, "kib_per_gather": per_gather, "kib_per_in_flight_request": per_request})
}

/// The RSS of `pid` once it stops moving between two looks 50 ms apart (bounded: 2 s).
pub async fn settled_rss_kib(pid: u32) -> u64 {
    let mut last = rss_kib(pid, "VmRSS");
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = rss_kib(pid, "VmRSS");
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Sends one quick request on every socket and reads its answer (bounded: 30 s in all);
/// returns how many were answered.
async fn warm_up(sockets: &mut [TcpStream]) -> usize {
    let request = b"GET /bench/hold/warm HTTP/1.1\r\nHost: x\r\n\r\n";
    let all = async {
        let mut answered = 0;
        for s in sockets.iter_mut() {
            if s.write_all(request).await.is_err() {
                continue;
            }
            // Read until the head and the body of Content-Length bytes are in.
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if seen.len() >= head_end + 4 + length {
                        answered += 1;
                        break;
                    }
                }
            }
        }
        answered
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .unwrap_or(0)
}
