//! `busgate-bench --soak`: the adapters' merge (scenario 4) held at a fixed rate for a long
//! time (10 minutes unless `--soak-duration` says otherwise), synchronously and then as async
//! submits, in windows of a minute (shorter runs: a tenth of the duration, at least 5 s). The
//! rate is `--soak-rate`, else half the peak measured first (`wrk` for `--duration` s).
//!
//! What it asserts, per phase: no error in any window; the RSS of the gateway, nats-server and
//! each adapter flat after the warm-up: the median of the last three windows within 5 % of the
//! median of the three after the warm-up ([`rss_growth`]; a median of three, because a
//! process's RSS moves by several per cent between two samples as its allocator or Go's
//! collector hands memory back); the p99 of the last window within 1.2× of the first's; with async submits, the work queue's
//! backlog and the results bucket bounded (the backlog at most two seconds' worth of submits,
//! the bucket within its `max_bytes`). Not in CI: the merger runs it on a quiet machine.
//!
//! The gateway keeps status documents [`RESULT_TTL`] (the default is a day): at the async
//! phase's rate (about 5,000 submits/s of ~800-byte documents) a day's documents would need
//! some 300 GB; with the default 1 GiB bucket, submits are refused (503 `queue-full`) once the
//! queued requests' documents would no longer fit, after about four minutes. Forty seconds
//! give a steady bucket (~160 MB) within the first window.
//!
//! The fixed rate is `oha -q` when `oha` is installed; else `wrk` paced by a Lua `delay()`
//! (connections / rate per request), which holds the rate only roughly: the report says which.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::cpu::Process;
use crate::load::{self, Run};
use crate::memory::rss_kib;

/// How long JetStream remembers a submit's message id (the work queue's duplicate window, set
/// by the gateway): state that nats-server keeps per submit for this long.
const DUPLICATE_WINDOW_S: u64 = 120;

/// The windows of warm-up of a phase: the first, and with async submits as many as it takes
/// for what nats-server keeps per submit to reach its steady size (the message ids of
/// [`DUPLICATE_WINDOW_S`], the documents of [`RESULT_TTL`]) and one more; at most half the
/// windows.
fn warmup_windows(window: u64, windows: u64, async_submits: bool) -> u64 {
    let warm = if async_submits {
        let kept = DUPLICATE_WINDOW_S.max(RESULT_TTL.as_secs());
        kept.div_ceil(window) + 1
    } else {
        1
    };
    warm.min(windows / 2).max(1)
}

/// The growth of one process's RSS over a phase, from `samples` (one per window) after `warm`
/// windows: the median of the last three (fewer in a short run) over the median of the first
/// three after the warm-up. Pure, so that it is unit-tested.
fn rss_growth(samples: &[u64], warm: usize) -> Option<(u64, u64)> {
    let after = samples.get(warm..)?;
    let k = (after.len() / 2).clamp(1, 3);
    if after.len() < 2 {
        return None;
    }
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2]
    };
    Some((median(&after[..k]), median(&after[after.len() - k..])))
}

/// How long the soak's gateway keeps status documents.
pub const RESULT_TTL: std::time::Duration = std::time::Duration::from_secs(40);

/// The connections the fixed-rate load uses.
const CONNECTIONS: usize = 64;
/// RSS growth allowed after the warm-up.
const RSS_GROWTH: f64 = 1.05;
/// p99 growth allowed from the first window to the last.
const P99_GROWTH: f64 = 1.2;

/// What the soak is told.
pub struct SoakOptions {
    /// Seconds per phase.
    pub duration: u64,
    /// Requests per second; `None`: half the measured peak.
    pub rate: Option<f64>,
    /// Seconds of the peak measurement.
    pub peak_seconds: u64,
}

/// Parses `600`, `60s`, `10m`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| m * 60);
    }
    text.strip_suffix('s').unwrap_or(text).parse().ok()
}

/// The length of one window for a phase of `duration` seconds.
fn window_seconds(duration: u64) -> u64 {
    if duration >= 300 {
        60
    } else {
        (duration / 10).max(5)
    }
}

/// One window at `rate`: oha when installed, else paced wrk.
fn fixed_rate(url: &str, header: Option<&str>, seconds: u64, rate: f64, lua: &Path) -> Run {
    if header.is_none() {
        if let Some(run) = load::oha(url, CONNECTIONS, seconds, rate) {
            return run;
        }
    }
    // wrk: each connection waits connections/rate between its requests.
    let delay_ms = CONNECTIONS as f64 / rate * 1000.0;
    let script = format!("function delay() return {delay_ms:.3} end\n");
    let _ = std::fs::write(lua, script);
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        "--latency",
        "-s",
    ])
    .arg(lua);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    load::parse_wrk(&load::output(cmd.arg(url)))
}

/// A stream's messages, or a bucket's bytes, read with the `nats` JetStream API.
async fn stream_state(js: &async_nats::jetstream::Context, name: &str) -> (u64, u64, i64) {
    match js.get_stream(name).await {
        Ok(mut s) => match s.info().await {
            Ok(info) => (info.state.messages, info.state.bytes, info.config.max_bytes),
            Err(_) => (0, 0, -1),
        },
        Err(_) => (0, 0, -1),
    }
}

/// What every phase shares.
#[derive(Clone, Copy)]
struct Soak<'a> {
    url: &'a str,
    o: &'a SoakOptions,
    rate: f64,
    processes: &'a [Process],
    lua: &'a Path,
}

/// Runs one phase: windows at `rate` until `duration`, sampling RSS (and, for async submits,
/// the queue and the bucket) after each. Failures are pushed with the phase's name.
async fn phase(
    name: &str,
    header: Option<&str>,
    at: &Soak<'_>,
    js: Option<&async_nats::jetstream::Context>,
    failures: &mut Vec<String>,
) -> Value {
    let Soak {
        url,
        o,
        rate,
        processes,
        lua,
    } = *at;
    let window = window_seconds(o.duration);
    let windows = (o.duration / window).max(2);
    let mut rows = Vec::new();
    let mut rss: Vec<Vec<u64>> = Vec::new();
    let mut p99 = Vec::new();
    let mut errors = 0;
    let mut queue_max = 0;
    let mut bucket = (0, -1);
    for i in 0..windows {
        let run = fixed_rate(url, header, window, rate, lua);
        errors += run.errors;
        if run.requests == 0 {
            failures.push(format!("soak {name}: window {i} answered nothing"));
        }
        let sample: Vec<u64> = processes.iter().map(|p| rss_kib(p.pid, "VmRSS")).collect();
        let mut row = json!({"window": i, "rps": run.rps, "p50_ms": run.p50_ms, "p99_ms": run.p99_ms,
            "errors": run.errors, "requests": run.requests, "rss_kib": sample});
        if let Some(js) = js {
            let (queued, _, _) = stream_state(js, busgate_shared::subject::REQUESTS_STREAM).await;
            let kv = format!("KV_{}", busgate_shared::subject::RESULTS_BUCKET);
            let (docs, bytes, max_bytes) = stream_state(js, &kv).await;
            queue_max = queue_max.max(queued);
            bucket = (bytes, max_bytes);
            row["queue_messages"] = json!(queued);
            row["results_docs"] = json!(docs);
            row["results_bytes"] = json!(bytes);
        }
        println!("soak {name} window {i}: {row}");
        rows.push(row);
        rss.push(sample);
        p99.push(run.p99_ms);
    }
    if errors > 0 {
        failures.push(format!("soak {name}: {errors} errors"));
    }
    // After the warm-up to the end.
    let warm = warmup_windows(window, windows, js.is_some()) as usize;
    for (i, p) in processes.iter().enumerate() {
        let samples: Vec<u64> = rss.iter().map(|row| row[i]).collect();
        let Some((w, l)) = rss_growth(&samples, warm) else {
            continue;
        };
        if w > 0 && l as f64 > w as f64 * RSS_GROWTH {
            failures.push(format!(
                "soak {name}: {} RSS grew {w} → {l} KiB (> {:.0} %; medians of windows after the {warm} of warm-up and of the last ones)",
                p.name,
                (RSS_GROWTH - 1.0) * 100.0
            ));
        }
    }
    let (first, end) = (p99[0], p99[p99.len() - 1]);
    if end > first * P99_GROWTH {
        failures.push(format!(
            "soak {name}: p99 of the last window {end:.2} ms > {P99_GROWTH}× the first's {first:.2} ms"
        ));
    }
    if js.is_some() {
        let bound = (rate * 2.0).max(1000.0) as u64;
        if queue_max > bound {
            failures.push(format!(
                "soak {name}: the work queue held {queue_max} requests (> {bound}, two seconds' worth)"
            ));
        }
        if bucket.1 > 0 && bucket.0 as i64 > bucket.1 {
            failures.push(format!(
                "soak {name}: the results bucket holds {} bytes, over its max_bytes {}",
                bucket.0, bucket.1
            ));
        }
    }
    json!({"phase": name, "url": url, "rate": rate, "window_s": window,
        "processes": processes.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        "windows": rows, "errors": errors, "p99_first_ms": first, "p99_last_ms": end,
        "warmup_windows": warm,
        "queue_max": queue_max})
}

/// Runs the soak on the benchmark's stack: the merge through adapters at `url`, `processes`
/// (gateway, nats-server, adapters) watched. Writes `soak.json` to `out`.
pub async fn run(
    url: &str,
    nats_url: &str,
    o: &SoakOptions,
    processes: &[Process],
    out: &Path,
    failures: &mut Vec<String>,
) -> Value {
    // Warm-up: connections, pools and buffers made before the first window counts.
    load::wrk(url, CONNECTIONS, 3, None);
    let rate = match o.rate {
        Some(rate) => rate,
        None => {
            let peak = load::wrk(url, CONNECTIONS, o.peak_seconds, None);
            println!("soak: adapters' peak {:.0} req/s", peak.rps);
            (peak.rps / 2.0).max(1.0)
        }
    };
    let generator = if load::which("oha").is_some() {
        "oha -q (async submits: paced wrk)"
    } else {
        "paced wrk (oha not installed)"
    };
    println!(
        "soak: {rate:.0} req/s, {} s per phase, {generator}",
        o.duration
    );
    let _ = std::fs::create_dir_all(out);
    let lua = out.join("soak-pace.lua");
    let at = Soak {
        url,
        o,
        rate,
        processes,
        lua: &lua,
    };
    let sync = phase("synchronous", None, &at, None, failures).await;
    let js = match async_nats::connect(nats_url).await {
        Ok(client) => Some(async_nats::jetstream::new(client)),
        Err(e) => {
            failures.push(format!("soak: cannot connect to NATS: {e}"));
            None
        }
    };
    let submits = phase(
        "async submits",
        Some("Prefer: respond-async"),
        &at,
        js.as_ref(),
        failures,
    )
    .await;
    let _ = std::fs::remove_file(&lua);
    let report = json!({"rate": rate, "duration_s": o.duration, "generator": generator,
        "phases": [sync, submits], "failures": failures.clone()});
    let _ = std::fs::write(
        out.join("soak.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_windows() {
        assert_eq!(parse_duration("600"), Some(600));
        assert_eq!(parse_duration("60s"), Some(60));
        assert_eq!(parse_duration("10m"), Some(600));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(window_seconds(600), 60);
        assert_eq!(window_seconds(60), 6);
        assert_eq!(window_seconds(20), 5);
    }

    #[test]
    fn the_warm_up_covers_what_nats_server_keeps_per_submit() {
        // Ten one-minute windows: the first synchronously; two minutes of message ids and one
        // more with async submits.
        assert_eq!(warmup_windows(60, 10, false), 1);
        assert_eq!(warmup_windows(60, 10, true), 3);
        // A short run keeps half its windows to judge.
        assert_eq!(warmup_windows(6, 10, true), 5);
    }

    #[test]
    fn rss_growth_compares_medians_of_three_after_the_warm_up() {
        // The 2026-12-07 async phase of nats-server (KiB): noisy, not growing.
        let nats = [
            270_524, 395_932, 422_236, 481_076, 540_396, 467_764, 464_296, 489_960, 452_908,
            472_484,
        ];
        assert_eq!(rss_growth(&nats, 3), Some((481_076, 472_484)));
        // A leak: 2 % a window.
        let leak: Vec<u64> = (0..10).map(|i| 100_000 + 2_000 * i).collect();
        let (early, late) = rss_growth(&leak, 1).expect("judged");
        assert!(late as f64 > early as f64 * RSS_GROWTH, "{early} {late}");
        // Too few windows to judge.
        assert_eq!(rss_growth(&[1, 2], 1), None);
    }
}
