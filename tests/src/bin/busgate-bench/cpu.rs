//! CPU time per request of each process of ours (gateway, nats-server, workers): `utime +
//! stime` from `/proc/<pid>/stat` (every thread of the process) before and after the measured
//! rounds, divided by the requests they answered.

use std::process::Command;

/// A process to measure: a name for the report and its pid.
#[derive(Debug, Clone)]
pub struct Process {
    pub name: String,
    pub pid: u32,
}

/// The CPU time a process spent per request, over the measured rounds of a scenario.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PerRequest {
    pub process: String,
    /// Microseconds of CPU (user + system) per request.
    pub us_per_request: f64,
    /// CPU seconds in all over the measured rounds.
    pub cpu_s: f64,
}

/// Clock ticks per second of `/proc`'s times (`getconf CLK_TCK`; 100 when it cannot say).
pub fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|t: &f64| *t > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU ticks of `pid` so far (all its threads), `None` once it is gone.
pub fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ticks(&stat)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses: count from the last `)`.
fn parse_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The ticks of every process in `processes` (0 for one that is gone).
pub fn sample(processes: &[Process]) -> Vec<u64> {
    processes
        .iter()
        .map(|p| ticks(p.pid).unwrap_or(0))
        .collect()
}

/// Adds up CPU ticks and requests over several measured rounds.
#[derive(Debug, Clone)]
pub struct Meter {
    processes: Vec<Process>,
    spent: Vec<u64>,
    requests: u64,
}

impl Meter {
    /// A meter for `processes`, nothing counted yet.
    pub fn new(processes: Vec<Process>) -> Meter {
        let spent = vec![0; processes.len()];
        Meter {
            processes,
            spent,
            requests: 0,
        }
    }

    /// Runs `round` (which returns the requests it made) and counts what each process spent.
    pub fn measure<T>(&mut self, round: impl FnOnce() -> (T, u64)) -> T {
        let before = sample(&self.processes);
        let (value, requests) = round();
        let after = sample(&self.processes);
        for (spent, (b, a)) in self.spent.iter_mut().zip(before.into_iter().zip(after)) {
            *spent += a.saturating_sub(b);
        }
        self.requests += requests;
        value
    }

    /// CPU per request of each process; empty when no request was counted.
    pub fn per_request(&self) -> Vec<PerRequest> {
        if self.requests == 0 {
            return Vec::new();
        }
        let hz = ticks_per_second();
        self.processes
            .iter()
            .zip(&self.spent)
            .map(|(p, &t)| {
                let seconds = t as f64 / hz;
                PerRequest {
                    process: p.name.clone(),
                    us_per_request: seconds * 1e6 / self.requests as f64,
                    cpu_s: seconds,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_utime_plus_stime_counted_from_the_last_parenthesis() {
        let stat = "1234 (busy (x) y) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_ticks(stat), Some(325));
        assert_eq!(parse_ticks("garbage"), None);
    }

    #[test]
    fn this_process_has_ticks() {
        assert!(ticks(std::process::id()).is_some());
    }
}
