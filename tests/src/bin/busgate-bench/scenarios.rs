//! The throughput scenarios: Busgate against one or more peers in interleaved rounds (ours,
//! each peer, ours, …) after a warm-up, then latency at a fixed rate against the faster peer;
//! and the fan-out widths against raw NATS scatter-gather of the same width.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::cpu::{Meter, PerRequest, Process};
use crate::load::{median, oha, wrk, Run};
use crate::Options;

/// A contender on the other side of a scenario.
pub struct Peer {
    pub name: &'static str,
    pub url: String,
    pub header: Option<&'static str>,
}

/// A scenario: Busgate against its peers (or against another Busgate mode). Ratios are
/// against the faster peer (median requests/s over the rounds).
pub struct Scenario {
    pub key: &'static str,
    pub title: &'static str,
    pub ours: String,
    pub ours_header: Option<&'static str>,
    pub peers: Vec<Peer>,
    /// Our processes that serve this scenario: their CPU per request is reported.
    pub processes: Vec<Process>,
}

/// One peer's rounds.
#[derive(serde::Serialize)]
pub struct PeerRounds {
    pub name: &'static str,
    pub rounds: Vec<Run>,
    pub median_rps: f64,
    pub p99_ms: f64,
}

/// What a scenario measured. `rounds` pairs ours with the compared (faster) peer's.
#[derive(serde::Serialize)]
pub struct ScenarioResult {
    pub key: &'static str,
    pub title: &'static str,
    /// The compared peer: the faster of [`Scenario::peers`].
    pub peer: &'static str,
    pub rounds: Vec<(Run, Run)>,
    pub ratio_per_round: Vec<f64>,
    pub median_ratio: f64,
    pub ours_median_rps: f64,
    pub peer_median_rps: f64,
    pub ours_p99_ms: f64,
    pub peer_p99_ms: f64,
    /// Every peer of the scenario, the compared one included.
    pub peers: Vec<PeerRounds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_rate: Option<(f64, Run, Run)>,
    /// CPU per request of our processes over our measured rounds.
    pub cpu: Vec<PerRequest>,
}

/// Runs `s`: warm-up, interleaved rounds, fixed-rate latency (not in smoke runs). Every
/// round that answered nothing or had errors adds a line to `failures`.
pub fn run(s: &Scenario, o: &Options, failures: &mut Vec<String>) -> ScenarioResult {
    eprintln!("scenario {}: {}", s.key, s.title);
    if o.warmup > 0 {
        wrk(&s.ours, o.connections, o.warmup, s.ours_header);
        for p in &s.peers {
            wrk(&p.url, o.connections, o.warmup, p.header);
        }
    }
    let mut meter = Meter::new(s.processes.clone());
    let mut ours = Vec::new();
    let mut theirs: Vec<Vec<Run>> = s.peers.iter().map(|_| Vec::new()).collect();
    for r in 0..o.rounds {
        let a = meter.measure(|| {
            let run = wrk(&s.ours, o.connections, o.duration, s.ours_header);
            let requests = run.requests;
            (run, requests)
        });
        if let Some(why) = a.failure() {
            failures.push(format!("{} round {}: busgate: {why}", s.key, r + 1));
        }
        let mut line = format!(
            "  round {}: busgate {:>9.0} req/s p99 {:>6.2} ms",
            r + 1,
            a.rps,
            a.p99_ms
        );
        for (p, runs) in s.peers.iter().zip(theirs.iter_mut()) {
            let b = wrk(&p.url, o.connections, o.duration, p.header);
            if let Some(why) = b.failure() {
                failures.push(format!("{} round {}: {}: {why}", s.key, r + 1, p.name));
            }
            line += &format!(
                " | {} {:>9.0} req/s p99 {:>6.2} ms",
                p.name, b.rps, b.p99_ms
            );
            runs.push(b);
        }
        eprintln!("{line}");
        ours.push(a);
    }
    let peers: Vec<PeerRounds> = s
        .peers
        .iter()
        .zip(theirs)
        .map(|(p, rounds)| PeerRounds {
            name: p.name,
            median_rps: median(rounds.iter().map(|b| b.rps).collect()),
            p99_ms: median(rounds.iter().map(|b| b.p99_ms).collect()),
            rounds,
        })
        .collect();
    let faster = peers
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| a.median_rps.total_cmp(&b.median_rps))
        .map_or(0, |(i, _)| i);
    let compared = &peers[faster];
    let rounds: Vec<(Run, Run)> = ours.into_iter().zip(compared.rounds.clone()).collect();
    let ratios: Vec<f64> = rounds.iter().map(|(a, b)| a.rps / b.rps).collect();
    let ours_rps = median(rounds.iter().map(|(a, _)| a.rps).collect());
    let peer_rps = compared.median_rps;
    let fixed_rate = if o.smoke || s.key.starts_with('5') {
        None
    } else {
        // Half the lower of the two peaks: neither side is saturated, so the figures are
        // latency, not queueing (half the peer's peak would overload the slower side).
        let rate = (ours_rps.min(peer_rps) / 2.0).max(100.0);
        let peer = &s.peers[faster];
        match (
            oha(&s.ours, o.connections, o.duration, rate),
            oha(&peer.url, o.connections, o.duration, rate),
        ) {
            (Some(a), Some(b)) => {
                eprintln!("  at {rate:.0}/s: busgate p50 {:.2} p99 {:.2} p99.9 {:.2} ms | {} p50 {:.2} p99 {:.2} p99.9 {:.2} ms", a.p50_ms, a.p99_ms, a.p999_ms.unwrap_or(f64::NAN), peer.name, b.p50_ms, b.p99_ms, b.p999_ms.unwrap_or(f64::NAN));
                Some((rate, a, b))
            }
            _ => None,
        }
    };
    let cpu = meter.per_request();
    if !cpu.is_empty() {
        let parts: Vec<String> = cpu
            .iter()
            .map(|c| format!("{} {:.1} µs", c.process, c.us_per_request))
            .collect();
        eprintln!("  CPU per request: {}", parts.join(", "));
    }
    ScenarioResult {
        key: s.key,
        title: s.title,
        peer: compared.name,
        median_ratio: median(ratios.clone()),
        ratio_per_round: ratios,
        ours_median_rps: ours_rps,
        peer_median_rps: peer_rps,
        ours_p99_ms: median(rounds.iter().map(|(a, _)| a.p99_ms).collect()),
        peer_p99_ms: compared.p99_ms,
        rounds,
        peers,
        fixed_rate,
        cpu,
    }
}

/// Fan-out width against raw NATS scatter-gather of the same width. One request in flight
/// shows what the gateway adds to a request (HTTP hop included); at `o.connections` in flight
/// both sides queue on the cores, so the difference there is mostly throughput.
pub async fn fanout(
    gateway_url: impl Fn(&str) -> String,
    nats_url: &str,
    o: &Options,
    failures: &mut Vec<String>,
) -> Vec<Value> {
    let mut rows = Vec::new();
    for width in [1usize, 2, 4, 8] {
        let url = gateway_url(&format!("/bench/fan{width}/12345"));
        let mut row = json!({"width": width});
        for (key, in_flight) in [("one", 1), ("loaded", o.connections)] {
            let ours = wrk(&url, in_flight, o.duration, None);
            if let Some(why) = ours.failure() {
                failures.push(format!(
                    "fan-out {width}, {in_flight} in flight: busgate: {why}"
                ));
            }
            let raw = match raw_nats(nats_url, width, in_flight, o.duration, false).await {
                Ok(raw) => raw,
                Err(why) => {
                    failures.push(format!("fan-out {width}: raw NATS: {why}"));
                    (f64::NAN, f64::NAN, 0.0)
                }
            };
            let hdr = match raw_nats(nats_url, width, in_flight, o.duration, true).await {
                Ok(hdr) => hdr,
                Err(why) => {
                    failures.push(format!("fan-out {width}: raw NATS with headers: {why}"));
                    (f64::NAN, f64::NAN, 0.0)
                }
            };
            let ((raw_p50, raw_p99, raw_rps), (hdr_p50, hdr_p99, hdr_rps)) = (raw, hdr);
            eprintln!("fan-out {width}, {in_flight} in flight: busgate p50 {:.3} p99 {:.3} ms ({:.0}/s) | raw NATS p50 {raw_p50:.3} p99 {raw_p99:.3} ms ({raw_rps:.0}/s) | with headers p50 {hdr_p50:.3} p99 {hdr_p99:.3} ms ({hdr_rps:.0}/s)", ours.p50_ms, ours.p99_ms, ours.rps);
            row[key] = json!({"in_flight": in_flight, "busgate": ours, "raw_nats": {"p50_ms": raw_p50, "p99_ms": raw_p99, "rps": raw_rps}, "raw_nats_headers": {"p50_ms": hdr_p50, "p99_ms": hdr_p99, "rps": hdr_rps}, "p50_over_raw_ms": ours.p50_ms - raw_p50, "p50_over_raw_headers_ms": ours.p50_ms - hdr_p50});
        }
        rows.push(row);
    }
    rows
}

/// Raw NATS scatter-gather to `width` native services, `concurrency` loops in flight, for
/// `seconds`: the floor the bus itself sets. With `headers`, each request carries the
/// contract's four headers as Busgate's do. Returns (p50 ms, p99 ms, requests/s); an error
/// when the bus cannot be used or a gather went unanswered.
async fn raw_nats(
    url: &str,
    width: usize,
    concurrency: usize,
    seconds: u64,
    headers: bool,
) -> Result<(f64, f64, f64), String> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let payload = bytes::Bytes::from_static(
        br#"{"request_id":"r","order_id":"12345","operation":"raw","attributes":{}}"#,
    );
    let until = Instant::now() + Duration::from_secs(seconds);
    let loops = (0..concurrency).map(|_| {
        let client = client.clone();
        let payload = payload.clone();
        async move {
            let mut latencies = Vec::new();
            let inbox = client.new_inbox();
            let mut replies = client
                .subscribe(format!("{inbox}.*"))
                .await
                .map_err(|e| format!("subscribe: {e}"))?;
            while Instant::now() < until {
                let started = Instant::now();
                for i in 1..=width {
                    let subject = busgate_shared::subject::service(&format!("n{i}"));
                    let reply = format!("{inbox}.{i}");
                    if headers {
                        client
                            .publish_with_reply_and_headers(
                                subject,
                                reply,
                                contract_headers(),
                                payload.clone(),
                            )
                            .await
                    } else {
                        client
                            .publish_with_reply(subject, reply, payload.clone())
                            .await
                    }
                    .map_err(|e| format!("publish: {e}"))?;
                }
                for _ in 0..width {
                    if tokio::time::timeout(Duration::from_secs(2), replies.next())
                        .await
                        .is_err()
                    {
                        return Err(format!("no reply within 2 s from one of {width} services"));
                    }
                }
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, String>(latencies)
        }
    });
    let mut all = Vec::new();
    for latencies in futures::future::join_all(loops).await {
        all.extend(latencies?);
    }
    let n = all.len() as f64;
    let mut sorted = all;
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((at(0.5), at(0.99), n / seconds as f64))
}

/// The four headers the contract puts on every request, with values shaped like Busgate's.
fn contract_headers() -> async_nats::HeaderMap {
    use busgate_shared::header::{self, name};
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(name::request_id(), "01a201b2-6a4c-739c-a392-72111f957172");
    headers.insert(
        name::deadline(),
        (header::now_unix_ms() + 60_000).to_string(),
    );
    headers.insert(name::client(), "anonymous");
    headers.insert(
        name::traceparent(),
        "00-01a201b26a4c739ca39272111f957172-a39272111f957172-00",
    );
    headers
}
