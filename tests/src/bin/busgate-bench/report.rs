//! The results folder: `raw.json` (every figure), `report.md` (the tables) and `chart.svg`
//! (median throughput ratios), all from the same `raw.json` value.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// Writes `raw.json`, `report.md` and `chart.svg` to `out` (created if need be) and prints the
/// report.
pub fn write(out: &Path, raw: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_string_pretty(raw).map_err(std::io::Error::other)?;
    std::fs::write(out.join("raw.json"), json)?;
    let report = report(raw);
    std::fs::write(out.join("report.md"), &report)?;
    std::fs::write(out.join("chart.svg"), chart(raw))?;
    println!("{report}");
    Ok(())
}

/// The Markdown report of `raw`.
fn report(raw: &Value) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Busgate benchmark\n");
    let _ = writeln!(
        md,
        "Machine: {} cores, {}, {} RAM, kernel {}.",
        raw["machine"]["cores"].as_str().unwrap_or("?"),
        raw["machine"]["cpu"].as_str().unwrap_or("?"),
        raw["machine"]["memory"].as_str().unwrap_or("?"),
        raw["machine"]["kernel"].as_str().unwrap_or("?")
    );
    let v = &raw["versions"];
    let _ = writeln!(
        md,
        "Versions: {} ({} build), {}, {}, {}, {}, {}, {}.\n",
        v["busgate"].as_str().unwrap_or(""),
        v["profile"].as_str().unwrap_or(""),
        v["nats-server"].as_str().unwrap_or(""),
        v["nginx"].as_str().unwrap_or(""),
        v["haproxy"].as_str().unwrap_or(""),
        v["wrk"].as_str().unwrap_or(""),
        v["oha"].as_str().unwrap_or(""),
        v["rustc"].as_str().unwrap_or("")
    );
    let s = &raw["settings"];
    let _ = writeln!(md, "Throughput: `wrk -t2 -c{} -d{}s`, {} interleaved rounds (Busgate, peer, Busgate, peer, …) after a {} s warm-up; everything on loopback on the same machine. Latency: `oha --latency-correction` at half the lower of the two median peaks (so that neither side is saturated). Where a scenario has two peers (the one-source scenarios: nginx and HAProxy 1-hop), the ratio is against the faster (median req/s); both are listed below. The gateway runs with `http.max_connections` and `http.max_in_flight` raised to {} for the memory scenario. Targets, profiling findings and changes: [`../README.md`](../README.md).\n", s["connections"], s["duration_s"], s["rounds"], s["warmup_s"], s["gateway_max_connections"]);
    let _ = writeln!(md, "| scenario | peer | Busgate req/s | peer req/s | ratio per round | median ratio | Busgate p99 | peer p99 |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in raw["scenarios"].as_array().into_iter().flatten() {
        let ratios: Vec<String> = r["ratio_per_round"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| format!("{:.2}", x.as_f64().unwrap_or(f64::NAN)))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {} | **{:.2}×** | {:.2} ms | {:.2} ms |",
            r["title"].as_str().unwrap_or(""),
            r["peer"].as_str().unwrap_or(""),
            r["ours_median_rps"].as_f64().unwrap_or(0.0),
            r["peer_median_rps"].as_f64().unwrap_or(0.0),
            ratios.join(", "),
            r["median_ratio"].as_f64().unwrap_or(f64::NAN),
            r["ours_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["peer_p99_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    peers_and_cpu(&mut md, raw);
    let fixed: Vec<&Value> = raw["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| !r["fixed_rate"].is_null())
        .collect();
    if !fixed.is_empty() {
        let _ = writeln!(
            md,
            "\n## Latency at a fixed rate (half the lower peak), coordinated omission corrected\n"
        );
        let _ = writeln!(
            md,
            "| scenario | rate | Busgate p50 / p99 / p99.9 | peer p50 / p99 / p99.9 |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for r in fixed {
            let f = &r["fixed_rate"];
            let fmt = |x: &Value| {
                format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    x["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    x["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    x["p999_ms"].as_f64().unwrap_or(f64::NAN)
                )
            };
            let _ = writeln!(
                md,
                "| {} | {:.0}/s | {} | {} |",
                r["key"].as_str().unwrap_or(""),
                f[0].as_f64().unwrap_or(0.0),
                fmt(&f[1]),
                fmt(&f[2])
            );
        }
    }
    let _ = writeln!(md, "\n## Fan-out width: Busgate beside raw NATS scatter-gather of the same width\n\nRaw NATS: the bench's own async-nats client publishes to the same native services and waits for all replies, no HTTP, no headers; \"+ headers\": the same with the contract's four NATS headers on each request, as Busgate sends them. One in flight (`wrk -t1 -c1`, one raw loop) is the latency Busgate adds, its HTTP hop included; at {} in flight both queue on the two cores.\n", s["connections"]);
    let _ = writeln!(
        md,
        "| width | in flight | Busgate p50 / p99 | raw NATS p50 / p99 | raw NATS + headers p50 / p99 | Busgate p50 over raw | over raw + headers |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for f in raw["fanout"].as_array().into_iter().flatten() {
        for key in ["one", "loaded"] {
            let r = &f[key];
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {:+.3} ms | {:+.3} ms |",
                f["width"],
                r["in_flight"],
                r["busgate"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["busgate"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
                r["raw_nats"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["raw_nats"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
                r["raw_nats_headers"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
                r["raw_nats_headers"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
                r["p50_over_raw_ms"].as_f64().unwrap_or(f64::NAN),
                r["p50_over_raw_headers_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    let m = &raw["memory"];
    let _ = writeln!(md, "\n## Memory\n\nPeak RSS of the gateway during scenario 3: **{:.1} MiB**. With {:.0} requests held in flight (gathers waiting on a slow service): RSS {:.1} MiB once all are in flight and it settled ({:.1} MiB at most while they were being admitted), {:.1} MiB with the same keep-alive connections idle after one quick request each ({} warmed), {:.1} MiB before: **{:.2} KiB per in-flight gather** (its handler future, gather and request; beyond the connection), {:.2} KiB per request with its connection (hyper's buffers included).", m["peak_rss_scenario3_kib"].as_f64().unwrap_or(0.0) / 1024.0, m["in_flight"].as_f64().unwrap_or(0.0), m["held_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0, m["admission_peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0, m["connected_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0, m["warmed_connections"], m["idle_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0, m["kib_per_gather"].as_f64().unwrap_or(f64::NAN), m["kib_per_in_flight_request"].as_f64().unwrap_or(f64::NAN));
    let failures: Vec<&str> = raw["failures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(
            md,
            "\n## Failures\n\nThe figures above do not count where these happened:\n"
        );
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

/// Every peer's median throughput and p99 per scenario, and the CPU per request of each of our
/// processes over our rounds.
fn peers_and_cpu(md: &mut String, raw: &Value) {
    let scenarios = || raw["scenarios"].as_array().into_iter().flatten();
    let _ = writeln!(md, "\n## Every peer\n\n| scenario | peer | median req/s | median p99 | compared |\n|---|---|---|---|---|");
    for r in scenarios() {
        for p in r["peers"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.2} ms | {} |",
                r["key"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or(""),
                p["median_rps"].as_f64().unwrap_or(f64::NAN),
                p["p99_ms"].as_f64().unwrap_or(f64::NAN),
                if p["name"] == r["peer"] { "yes" } else { "" }
            );
        }
    }
    let _ = writeln!(md, "\n## CPU per request\n\n`utime + stime` of each process from `/proc/<pid>/stat`, before and after Busgate's rounds of the scenario, divided by the requests wrk completed in them.\n\n| scenario | process | CPU per request | CPU in all |\n|---|---|---|---|");
    for r in scenarios() {
        for c in r["cpu"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} µs | {:.2} s |",
                r["key"].as_str().unwrap_or(""),
                c["process"].as_str().unwrap_or(""),
                c["us_per_request"].as_f64().unwrap_or(f64::NAN),
                c["cpu_s"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
}

/// A horizontal bar chart of the median throughput ratios (1.0 = the peer).
fn chart(raw: &Value) -> String {
    let rows: Vec<(String, f64)> = raw["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or("").to_owned(),
                r["median_ratio"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let (w, row_h, left, top) = (760.0, 44.0, 190.0, 50.0);
    let h = top + row_h * rows.len() as f64 + 40.0;
    let max = rows
        .iter()
        .map(|(_, r)| *r)
        .fold(1.2_f64, f64::max)
        .min(5.0);
    let scale = (w - left - 70.0) / max;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="system-ui, sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/><text x="20" y="28" font-size="16" font-weight="600">Busgate throughput / peer throughput (median of rounds)</text>"#
    );
    let one = left + scale;
    let _ = write!(
        svg,
        r##"<line x1="{one}" y1="{}" x2="{one}" y2="{}" stroke="#d0353f" stroke-dasharray="4 3"/><text x="{}" y="{}" fill="#d0353f">1.0 = peer</text>"##,
        top - 8.0,
        h - 30.0,
        one + 4.0,
        h - 16.0
    );
    for (i, (key, ratio)) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let bar = (ratio.min(max)) * scale;
        let colour = if *ratio >= 1.0 { "#1f9d55" } else { "#3454d1" };
        let _ = write!(
            svg,
            r#"<text x="20" y="{}">{key}</text><rect x="{left}" y="{}" width="{bar:.1}" height="{}" fill="{colour}" rx="3"/><text x="{:.1}" y="{}">{ratio:.2}×</text>"#,
            y + 20.0,
            y + 6.0,
            row_h - 16.0,
            left + bar + 6.0,
            y + 20.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
