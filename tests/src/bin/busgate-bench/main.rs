//! `busgate-bench`: Busgate against the peers a user would otherwise deploy, side by side in one
//! run, on this machine.
//!
//! Starts the peers of `tests/perf/peers/peers.sh` (nginx services, nginx 1-hop proxy, HAProxy
//! 1-hop proxy, nginx + Lua merge) on free ports, `nats-server`, a gateway, native NATS services
//! and adapters to the nginx services; then, per scenario, interleaves Busgate and peer rounds
//! (A B A B …) after a warm-up with `wrk` at a fixed number of keep-alive connections
//! (throughput), and with `oha --latency-correction` at a fixed rate of half the lower of the two
//! peaks (latency). The one-source scenarios run against both 1-hop proxies and compare with the
//! faster. CPU per request of each of our processes is read from `/proc` around our rounds.
//! Writes `raw.json`, `report.md` and `chart.svg` to the results folder and prints the table;
//! exits 1 when a scenario failed (a round without answers or with errors, the memory scenario
//! short of its connections), after writing the report that lists why.
//!
//! `busgate-bench --smoke`: one short round per scenario, no fixed-rate phase, 500 requests held
//! in the memory scenario (`--hold N` to say otherwise), no ratios to judge, results in a
//! temporary folder unless `--out` says where: CI runs it so that the benchmark keeps working.
//!
//! `busgate-bench --soak [--soak-duration 10m] [--soak-rate R]`: the adapters' merge at a fixed
//! rate for a long time, synchronously and as async submits (see [`soak`]); not in CI.
//!
//! `busgate-bench --print-settings bench|merge|merge-keyed|merge-guarded|held|merge-coalesce|compose` prints a gateway settings file and exits:
//! the benchmark's own, and those of `tests/perf/merge-stack.sh` and `tests/perf/held-gathers.py`,
//! which read theirs from here (all built with [`busgate_tests::fixture`]).

mod cpu;
mod load;
mod memory;
mod peers;
mod report;
mod scenarios;
mod settings;
mod soak;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use busgate_tests::gateway::Gateway;
use busgate_tests::nats::NatsServer;
use busgate_tests::process::{bin, Proc};
use busgate_tests::workers::Worker;
use serde_json::json;

use cpu::Process;
use load::{output, which};
use peers::{fail, Peers};
use scenarios::{Peer, Scenario};

/// The command line.
pub struct Options {
    pub rounds: usize,
    pub duration: u64,
    pub warmup: u64,
    pub connections: usize,
    pub smoke: bool,
    pub out: PathBuf,
    pub peers: PathBuf,
    /// Requests the memory scenario holds in flight.
    pub hold: usize,
    /// `--soak`: the soak instead of the scenarios.
    pub soak: Option<soak::SoakOptions>,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut o = Options {
        rounds: 3,
        duration: 6,
        warmup: 3,
        connections: 64,
        smoke: false,
        out: repo.join("bench-results").join("latest"),
        peers: repo
            .join("tests")
            .join("perf")
            .join("peers")
            .join("peers.sh"),
        hold: settings::MEMORY_HOLD,
        soak: None,
    };
    let (mut out, mut hold) = (None, None);
    let (mut soak, mut soak_duration, mut soak_rate) = (false, 600, None);
    let usage = "busgate-bench [--rounds 3] [--duration 6] [--warmup 3] [--connections 64] [--out DIR] [--peers tests/perf/peers/peers.sh] [--hold 10000] [--smoke]\nbusgate-bench --soak [--soak-duration 10m] [--soak-rate REQ_PER_S] [--duration 6] [--out DIR]   (not in CI)\nbusgate-bench --print-settings bench|merge|merge-keyed|merge-guarded|held|merge-coalesce|compose   (the gateway settings of the benchmark, tests/perf/merge-stack.sh, tests/perf/ab-auth.sh, tests/perf/held-gathers.py)";
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value\n{usage}")))
        };
        let number = |v: String| -> u64 {
            v.parse()
                .unwrap_or_else(|_| fail(&format!("{arg} takes a number, not {v:?}")))
        };
        match arg.as_str() {
            "--rounds" => o.rounds = number(value()) as usize,
            "--duration" => o.duration = number(value()),
            "--warmup" => o.warmup = number(value()),
            "--connections" => o.connections = number(value()) as usize,
            "--out" => out = Some(PathBuf::from(value())),
            "--hold" => hold = Some(number(value()) as usize),
            "--peers" => o.peers = PathBuf::from(value()),
            "--smoke" => o.smoke = true,
            "--soak" => soak = true,
            "--soak-duration" => {
                let v = value();
                soak_duration = soak::parse_duration(&v).unwrap_or_else(|| {
                    fail(&format!("--soak-duration takes 600, 60s or 10m, not {v:?}"))
                });
            }
            "--soak-rate" => soak_rate = Some(number(value()) as f64),
            "--print-settings" => settings::print_settings(&value()),
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            other => fail(&format!("unknown argument {other}\n{usage}")),
        }
    }
    if o.smoke {
        o.rounds = 1;
        o.duration = 1;
        o.warmup = 0;
        o.hold = 500;
        o.out = std::env::temp_dir().join("busgate-bench-smoke");
    }
    o.out = out.unwrap_or(o.out);
    o.hold = hold.unwrap_or(o.hold);
    if soak {
        o.soak = Some(soak::SoakOptions {
            duration: soak_duration,
            rate: soak_rate,
            peak_seconds: o.duration.max(5),
        });
    }
    o
}

/// The machine and the versions of every contender, for the report.
fn machine_and_versions() -> (
    BTreeMap<&'static str, String>,
    BTreeMap<&'static str, String>,
) {
    let mut machine = BTreeMap::new();
    machine.insert("cores", output(Command::new("nproc")));
    machine.insert(
        "cpu",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default(),
    );
    machine.insert(
        "memory",
        output(Command::new("sh").args(["-c", "free -h | awk '/Mem:/{print $2}'"])),
    );
    machine.insert("kernel", output(Command::new("uname").arg("-r")));
    let mut versions = BTreeMap::new();
    versions.insert(
        "busgate",
        output(Command::new(bin("busgate")).arg("--version")),
    );
    let nats_server = busgate_shared::runtime::locate_nats_server(None).unwrap_or_else(|| {
        fail("nats-server not found (set NATS_SERVER, or deploy/install-nats.sh)")
    });
    versions.insert(
        "nats-server",
        output(Command::new(nats_server).arg("--version")),
    );
    versions.insert("nginx", output(Command::new("nginx").arg("-v")));
    versions.insert(
        "haproxy",
        output(Command::new("haproxy").arg("-v"))
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    versions.insert(
        "wrk",
        output(Command::new("wrk").arg("-v"))
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    versions.insert(
        "oha",
        which("oha")
            .map(|p| output(Command::new(p).arg("--version")))
            .unwrap_or_else(|| "not installed".into()),
    );
    versions.insert("rustc", output(Command::new("rustc").arg("-V")));
    // busgate comes from the same build as this binary (beside it, or the same target dir); a
    // path test misnamed release binaries copied elsewhere.
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    versions.insert("profile", profile.into());
    (machine, versions)
}

fn process(name: &str, proc: &Proc) -> Process {
    Process {
        name: name.to_owned(),
        pid: proc.pid().as_raw() as u32,
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    busgate_shared::runtime::install_crypto_provider();
    // First: peers.sh installs what is missing (wrk among it) when run as root.
    let peers = Peers::start(&o.peers);
    peers::stop_everything_on_signal(peers.stopper());
    if which("wrk").is_none() {
        fail("wrk is missing: apt-get install wrk (tests/perf/peers/peers.sh does, as root)");
    }
    let started_at = std::time::SystemTime::now();
    let (machine, versions) = machine_and_versions();

    let nats = NatsServer::start();
    let services: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
    let mut native_cmd = Command::new(bin("busgate-worker"));
    native_cmd
        .env("BUSGATE_NATS__URL", &nats.url)
        .env("BUSGATE_LOG__FORMAT", "json")
        .env("BUSGATE_LOG__LEVEL", "info")
        .arg("native");
    for s in &services {
        native_cmd.args(["--service", s]);
    }
    let native = Proc::spawn("native", native_cmd);
    for _ in &services {
        native.wait_for_message("serving");
    }
    let a1 = Worker::adapter(&nats, "a1", &format!("http://127.0.0.1:{}", peers.up1));
    let a2 = Worker::adapter(&nats, "a2", &format!("http://127.0.0.1:{}", peers.up2));
    let gateway_settings = match &o.soak {
        // Documents kept long enough to be polled, short enough for the bucket to reach its
        // steady size within the soak's warm-up (see soak.rs).
        Some(_) => settings::bench_settings().jobs_result_ttl(soak::RESULT_TTL),
        None => settings::bench_settings(),
    };
    let gateway = Gateway::start(&nats, &gateway_settings).await;
    let gw_pid = gateway.proc.pid().as_raw() as u32;
    let g = |p: &str| gateway.url(p);
    let (gw, bus) = (
        process("gateway", &gateway.proc),
        Process {
            name: "nats-server".to_owned(),
            pid: nats.pid().as_raw() as u32,
        },
    );
    let (native_p, a1_p, a2_p) = (
        process("native worker", &native),
        process("adapter a1", &a1),
        process("adapter a2", &a2),
    );
    if let Some(soak_options) = &o.soak {
        let mut failures = Vec::new();
        let watched = [gw.clone(), bus.clone(), a1_p.clone(), a2_p.clone()];
        soak::run(
            &g("/bench/merge-adapter/12345"),
            &nats.url,
            soak_options,
            &watched,
            &o.out,
            &mut failures,
        )
        .await;
        drop(gateway);
        drop(a1);
        drop(a2);
        drop(native);
        drop(nats);
        drop(peers);
        println!("soak results in {}", o.out.join("soak.json").display());
        if !failures.is_empty() {
            eprintln!("busgate-bench --soak: {} failure(s):", failures.len());
            for f in &failures {
                eprintln!("  {f}");
            }
            std::process::exit(1);
        }
        return;
    }
    let one_hop = || {
        vec![
            Peer {
                name: "nginx 1-hop proxy",
                url: Peers::order_url(peers.nginx_proxy),
                header: None,
            },
            Peer {
                name: "HAProxy 1-hop proxy",
                url: Peers::order_url(peers.haproxy),
                header: None,
            },
        ]
    };
    let lua_merge = || {
        vec![Peer {
            name: "nginx + Lua merge",
            url: peers.merge_url(),
            header: None,
        }]
    };
    let scenarios = vec![
        Scenario {
            key: "1-one-native",
            title: "one source, native NATS service vs the faster 1-hop proxy (nginx, HAProxy)",
            ours: g("/bench/one/12345"),
            ours_header: None,
            peers: one_hop(),
            processes: vec![gw.clone(), bus.clone(), native_p.clone()],
        },
        Scenario {
            key: "2-one-adapter",
            title:
                "one source through an adapter to nginx vs the faster 1-hop proxy (nginx, HAProxy)",
            ours: g("/bench/one-adapter/12345"),
            ours_header: None,
            peers: one_hop(),
            processes: vec![gw.clone(), bus.clone(), a1_p.clone()],
        },
        Scenario {
            key: "3-merge-native",
            title: "two sources merged, native services vs nginx + Lua merge",
            ours: g("/bench/merge/12345"),
            ours_header: None,
            peers: lua_merge(),
            processes: vec![gw.clone(), bus.clone(), native_p.clone()],
        },
        Scenario {
            key: "4-merge-adapter",
            title: "two sources merged through adapters to nginx vs nginx + Lua merge",
            ours: g("/bench/merge-adapter/12345"),
            ours_header: None,
            peers: lua_merge(),
            processes: vec![gw.clone(), bus.clone(), a1_p, a2_p],
        },
        Scenario {
            key: "5-async-submit",
            title: "async submit (202 after the JetStream ack) vs synchronous scenario 3",
            ours: g("/bench/merge/12345"),
            ours_header: Some("Prefer: respond-async"),
            peers: vec![Peer {
                name: "Busgate synchronous merge",
                url: g("/bench/merge/12345"),
                header: None,
            }],
            processes: vec![gw, bus, native_p],
        },
    ];

    let mut failures = Vec::new();
    let mut results = Vec::new();
    let mut peak_rss_scenario3 = 0;
    for s in &scenarios {
        results.push(scenarios::run(s, &o, &mut failures));
        if s.key == "3-merge-native" {
            peak_rss_scenario3 = memory::rss_kib(gw_pid, "VmHWM");
        }
    }
    // 6. Fan-out width against raw NATS.
    let fanout = scenarios::fanout(g, &nats.url, &o, &mut failures).await;
    // 7. Memory, with every gather in flight.
    let memory = memory::run(
        &gateway.base,
        gw_pid,
        o.hold,
        peak_rss_scenario3,
        &mut failures,
    )
    .await;

    let raw = json!({
        "started_at": busgate_shared::header::unix_ms(started_at),
        "machine": machine,
        "versions": versions,
        "settings": {"rounds": o.rounds, "duration_s": o.duration, "warmup_s": o.warmup, "connections": o.connections, "smoke": o.smoke, "gateway_max_connections": settings::BENCH_CONNECTION_CAP, "gateway_max_in_flight": settings::BENCH_CONNECTION_CAP},
        "scenarios": results,
        "fanout": fanout,
        "memory": memory,
        "failures": failures,
    });
    let written = report::write(&o.out, &raw);
    drop(gateway);
    drop(a1);
    drop(a2);
    drop(native);
    drop(nats);
    drop(peers);
    if let Err(e) = written {
        fail(&format!("writing the results to {}: {e}", o.out.display()));
    }
    println!("results in {}", o.out.display());
    if !failures.is_empty() {
        eprintln!("busgate-bench: {} failure(s):", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
