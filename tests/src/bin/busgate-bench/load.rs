//! The load generators and what they say: `wrk` at full speed, `oha` at a fixed rate, parsed
//! into a [`Run`]; and the small helpers around them (a command's output, a median).

use std::borrow::BorrowMut;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// One load-generator measurement.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Run {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ms: Option<f64>,
    /// Answers other than 2xx/3xx, and socket errors (connect, read, write, timeout).
    pub errors: u64,
    /// Requests completed.
    pub requests: u64,
}

impl Run {
    /// Why this run does not count, if it does not: nothing answered, or errors.
    pub fn failure(&self) -> Option<String> {
        if self.rps <= 0.0 || self.requests == 0 {
            Some("no request answered".to_owned())
        } else if self.errors > 0 {
            Some(format!(
                "{} errors (non-2xx answers or socket errors) in {} requests",
                self.errors, self.requests
            ))
        } else {
            None
        }
    }
}

/// What `cmd` printed (stdout then stderr, trimmed), or why it could not run.
pub fn output(mut cmd: impl BorrowMut<Command>) -> String {
    let cmd = cmd.borrow_mut();
    match cmd.output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .trim()
        .to_owned(),
        Err(e) => format!("unavailable: {e}"),
    }
}

fn parse_ms(text: &str) -> f64 {
    let text = text.trim();
    let (number, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// `wrk -t2 -cN -dD --latency` at full speed.
pub fn wrk(url: &str, connections: usize, seconds: u64, header: Option<&str>) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args([
        if connections > 1 { "-t2" } else { "-t1" },
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let text = output(cmd.arg(url));
    let run = parse_wrk(&text);
    if run.rps == 0.0 {
        eprintln!("wrk said:\n{text}");
    }
    run
}

/// What `wrk --latency` printed, as a [`Run`].
pub fn parse_wrk(text: &str) -> Run {
    let mut run = Run::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50_ms = parse_ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_ms = parse_ms(v);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if line.starts_with("Socket errors:") {
            run.errors += line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            run.requests = n.trim().parse().unwrap_or(0);
        }
    }
    run
}

/// `oha` at a fixed rate with coordinated-omission correction (`None` without oha).
pub fn oha(url: &str, connections: usize, seconds: u64, rate: f64) -> Option<Run> {
    let oha = which("oha")?;
    let out = Command::new(oha)
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "-c",
            &connections.to_string(),
            "-z",
            &format!("{seconds}s"),
            "-q",
            &format!("{rate:.0}"),
            "--latency-correction",
            url,
        ])
        .output()
        .ok()?;
    // stdout only, and only its first JSON value: oha may say more on stderr.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .next()?
        .ok()?;
    let pct = |k: &str| {
        v["latencyPercentiles"][k]
            .as_f64()
            .map(|s| s * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    let all: u64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    Some(Run {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        p999_ms: Some(pct("p99.9")),
        // oha counts the requests still in flight when `-z` ends ("aborted due to deadline")
        // as errors: the load generator stopping, not the server failing.
        errors: all.saturating_sub(ok)
            + v["errorDistribution"].as_object().map_or(0, |m| {
                m.iter()
                    .filter(|(kind, _)| !kind.contains("deadline"))
                    .filter_map(|(_, n)| n.as_u64())
                    .sum()
            }),
        requests: all,
    })
}

/// `name` on the `PATH` or in `~/.cargo/bin`.
pub fn which(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(home.map(|h| h.join(".cargo/bin")))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The median of the finite values (NaN when there are none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_with_errors_or_no_answer_fails() {
        let good = Run {
            rps: 10.0,
            requests: 10,
            ..Run::default()
        };
        assert!(good.failure().is_none());
        assert!(Run::default().failure().is_some());
        let errors = Run {
            errors: 1,
            ..good.clone()
        };
        assert!(errors.failure().is_some());
    }

    #[test]
    fn latencies_are_read_in_milliseconds() {
        assert_eq!(parse_ms("250.00us"), 0.25);
        assert_eq!(parse_ms(" 1.50ms"), 1.5);
        assert_eq!(parse_ms("2.00s"), 2000.0);
    }
}
