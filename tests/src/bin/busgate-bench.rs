//! `busgate-bench`: Busgate against the peers a user would otherwise deploy, side by side in one
//! run, on this machine.
//!
//! Starts the peers of `../shared/bench/anchors.sh` (nginx upstreams, nginx 1-hop proxy, nginx +
//! Lua merge) on free ports, `nats-server`, a gateway, native NATS services and adapters to the
//! nginx upstreams; then, per scenario, interleaves Busgate and peer rounds (A B A B …) after a
//! warm-up with `wrk` at a fixed number of keep-alive connections (throughput), and with `oha
//! --latency-correction` at a fixed rate of half the lower of the two peaks (latency). Writes `raw.json`,
//! `report.md` and `chart.svg` to the results folder and prints the table.
//!
//! `busgate-bench --smoke`: one short round per scenario, no fixed-rate phase, no ratios to
//! judge: CI runs it so that the benchmark keeps working.
//!
//! `busgate-bench --print-settings bench|merge|merge-keyed|held` prints a gateway settings file and exits:
//! the benchmark's own, and those of `tests/perf/merge-stack.sh` and `tests/perf/held-gathers.py`,
//! which read theirs from here (all built with [`busgate_tests::fixture`]).

use std::borrow::BorrowMut;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use busgate_tests::fixture::{Route, Settings};
use busgate_tests::support::{bin, Gateway, NatsServer, Proc, Worker};
use futures::StreamExt;
use serde_json::{json, Value};

struct Options {
    rounds: usize,
    duration: u64,
    warmup: u64,
    connections: usize,
    smoke: bool,
    out: PathBuf,
    anchors: PathBuf,
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
        anchors: repo.join("../shared/bench/anchors.sh"),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => o.rounds = value().parse().expect("--rounds N"),
            "--duration" => o.duration = value().parse().expect("--duration SECONDS"),
            "--warmup" => o.warmup = value().parse().expect("--warmup SECONDS"),
            "--connections" => o.connections = value().parse().expect("--connections N"),
            "--out" => o.out = PathBuf::from(value()),
            "--anchors" => o.anchors = PathBuf::from(value()),
            "--smoke" => o.smoke = true,
            "--print-settings" => print_settings(&value()),
            "-h" | "--help" => {
                println!("busgate-bench [--rounds 3] [--duration 6] [--warmup 3] [--connections 64] [--out DIR] [--anchors anchors.sh] [--smoke]\nbusgate-bench --print-settings bench|merge|merge-keyed|held   (the gateway settings of the benchmark, tests/perf/merge-stack.sh, tests/perf/ab-auth.sh, tests/perf/held-gathers.py)");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if o.smoke {
        o.rounds = 1;
        o.duration = 1;
        o.warmup = 0;
        o.out = std::env::temp_dir().join("busgate-bench-smoke");
    }
    o
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn output(mut cmd: impl BorrowMut<Command>) -> String {
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

/// The nginx peers, stopped on drop.
struct Anchors {
    script: PathBuf,
    env: Vec<(String, String)>,
    up1: u16,
    up2: u16,
    proxy: u16,
    merge: u16,
}

impl Anchors {
    fn start(script: &Path) -> Anchors {
        assert!(
            script.is_file(),
            "{} not found (the peers live in ../shared/bench)",
            script.display()
        );
        let (up1, up2, proxy, merge) = (free_port(), free_port(), free_port(), free_port());
        let dir = std::env::temp_dir().join("busgate-bench-anchors");
        let env = vec![
            ("UP1".to_owned(), up1.to_string()),
            ("UP2".to_owned(), up2.to_string()),
            ("PROXY".to_owned(), proxy.to_string()),
            ("MERGE".to_owned(), merge.to_string()),
            ("ANCHORS_DIR".to_owned(), dir.display().to_string()),
        ];
        let status = Command::new("bash")
            .arg(script)
            .arg("start")
            .envs(env.clone())
            .status()
            .expect("anchors.sh");
        assert!(status.success(), "anchors.sh start failed");
        Anchors {
            script: script.to_path_buf(),
            env,
            up1,
            up2,
            proxy,
            merge,
        }
    }
}

impl Drop for Anchors {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .envs(self.env.clone())
            .output();
    }
}

/// One load-generator measurement.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    p999_ms: Option<f64>,
    errors: u64,
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
fn wrk(url: &str, connections: usize, seconds: u64, header: Option<&str>) -> Run {
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
        }
    }
    if run.rps == 0.0 {
        eprintln!("wrk said:\n{text}");
    }
    run
}

/// `oha` at a fixed rate with coordinated-omission correction.
fn oha(url: &str, connections: usize, seconds: u64, rate: f64) -> Option<Run> {
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
        errors: all.saturating_sub(ok)
            + v["errorDistribution"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum()),
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain(home.map(|h| h.join(".cargo/bin")))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn median(mut v: Vec<f64>) -> f64 {
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

/// A scenario: Busgate against a peer (or against another Busgate mode).
struct Scenario {
    key: &'static str,
    title: &'static str,
    ours: String,
    ours_header: Option<&'static str>,
    peer_name: &'static str,
    peer: String,
    peer_header: Option<&'static str>,
}

#[derive(serde::Serialize)]
struct ScenarioResult {
    key: &'static str,
    title: &'static str,
    peer: &'static str,
    rounds: Vec<(Run, Run)>,
    ratio_per_round: Vec<f64>,
    median_ratio: f64,
    ours_median_rps: f64,
    peer_median_rps: f64,
    ours_p99_ms: f64,
    peer_p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fixed_rate: Option<(f64, Run, Run)>,
}

fn rss_kib(pid: u32, field: &str) -> u64 {
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

/// A benchmark route: `GET /bench/<name>/{order_id}`, deadline 2 s.
fn bench_route(name: &str) -> Route {
    Route::get(&format!("/bench/{name}/{{order_id}}")).deadline(Duration::from_secs(2))
}

/// Two native sources merged, the second optional: scenario 3 and the perf scripts.
fn merge_route() -> Route {
    bench_route("merge").target("n1").optional("n2")
}

/// One native source held for up to 30 s (`slow-` orders take 3 s): the memory scenario.
fn hold_route() -> Route {
    let thirty = Duration::from_secs(30);
    Route::get("/bench/hold/{order_id}")
        .deadline(thirty)
        .target_with_timeout("n1", thirty)
}

/// The benchmark's gateway: native services n1…n8, adapters a1 and a2, a route per scenario
/// and per fan-out width, and the held route.
fn bench_settings() -> Settings {
    let two = Duration::from_secs(2);
    let natives: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
    // Routes, not clients, are measured here: anonymous requests, written out.
    let mut settings = Settings::default()
        .log_level("warn")
        .jobs_concurrency(512)
        .auth_none();
    for service in natives.iter().map(String::as_str).chain(["a1", "a2"]) {
        settings = settings.service(service, two);
    }
    settings = settings
        .route("one", bench_route("one").target("n1"))
        .route("merge", merge_route())
        .route("one-adapter", bench_route("one-adapter").target("a1"))
        .route(
            "merge-adapter",
            bench_route("merge-adapter").target("a1").optional("a2"),
        )
        .route("hold", hold_route());
    for width in [1, 2, 4, 8] {
        let name = format!("fan{width}");
        let route = natives[..width]
            .iter()
            .fold(bench_route(&name), |route, service| route.target(service));
        settings = settings.route(&name, route);
    }
    settings
}

/// The gateway of `tests/perf/merge-stack.sh`: route `merge` alone.
fn merge_stack_settings() -> Settings {
    let two = Duration::from_secs(2);
    Settings::default()
        .log_level("warn")
        .auth_none()
        .service("n1", two)
        .service("n2", two)
        .route("merge", merge_route())
}

/// The API key of the `bench` client of [`merge_keyed_settings`]: a fixture, not a secret
/// (`tests/perf/ab-auth.sh` sends it).
pub const BENCH_KEY: &str = "bgk_YnVzZ2F0ZSBiZW5jaG1hcmsga2V5IG5vdCBzZWNyZXQ";
/// Its SHA-256, as the configuration stores it.
const BENCH_KEY_HASH: &str = "b1675905df3b6ea73f1ecd8f2823055749279b412f0add6014822ad98277d094";

/// [`merge_stack_settings`] with clients: auth required, one client `bench` with the key
/// [`BENCH_KEY`] and a rate limit that never triggers. What API-key authentication and a
/// rate limit cost on the merge (`tests/perf/ab-auth.sh`).
fn merge_keyed_settings() -> Settings {
    let two = Duration::from_secs(2);
    Settings::default()
        .log_level("warn")
        .auth_required()
        .service("n1", two)
        .service("n2", two)
        .route("merge", merge_route())
        .client(
            "bench",
            busgate_shared::config::ClientSpec {
                rate: Some(busgate_shared::config::RateSpec {
                    per_second: busgate_shared::config::MAX_RATE,
                    burst: Some(busgate_shared::config::MAX_RATE),
                }),
                keys: vec![busgate_shared::config::KeySpec {
                    id: "bench".into(),
                    hash: BENCH_KEY_HASH.into(),
                    created: String::new(),
                }],
                ..Default::default()
            },
        )
}

/// The gateway of `tests/perf/held-gathers.py`: the held route and the merge for `--preload`.
fn held_gathers_settings() -> Settings {
    Settings::default()
        .log_level("warn")
        .auth_none()
        .service("n1", Duration::from_secs(30))
        .service("n2", Duration::from_secs(2))
        .route("hold", hold_route())
        .route("merge", merge_route())
}

/// `--print-settings NAME`: the settings file of the benchmark's gateway or a perf script's.
fn print_settings(name: &str) -> ! {
    let settings = match name {
        "bench" => bench_settings(),
        "merge" => merge_stack_settings(),
        "merge-keyed" => merge_keyed_settings(),
        "held" => held_gathers_settings(),
        other => {
            eprintln!(
                "--print-settings: no settings named {other:?} (bench, merge, merge-keyed, held)"
            );
            std::process::exit(2);
        }
    };
    print!("{}", settings.to_toml());
    std::process::exit(0);
}

/// The RSS of `pid` once it stops moving between two looks 50 ms apart (bounded: 2 s).
async fn settled_rss_kib(pid: u32) -> u64 {
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
async fn warm_up(sockets: &mut [tokio::net::TcpStream]) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Raw NATS scatter-gather to `width` native services, `concurrency` loops in flight, for
/// `seconds`: the floor the bus itself sets. With `headers`, each request carries the
/// contract's four headers as Busgate's do. Returns (p50 ms, p99 ms, requests/s).
async fn raw_nats(
    url: &str,
    width: usize,
    concurrency: usize,
    seconds: u64,
    headers: bool,
) -> (f64, f64, f64) {
    let client = async_nats::connect(url).await.expect("connect");
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
                .expect("subscribe");
            while Instant::now() < until {
                let started = Instant::now();
                for i in 1..=width {
                    let subject = format!("busgate.svc.n{i}");
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
                    .expect("publish");
                }
                for _ in 0..width {
                    if tokio::time::timeout(Duration::from_secs(2), replies.next())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        }
    });
    let all: Vec<f64> = futures::future::join_all(loops)
        .await
        .into_iter()
        .flatten()
        .collect();
    let n = all.len() as f64;
    let mut sorted = all;
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99), n / seconds as f64)
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

#[tokio::main]
async fn main() {
    let o = options();
    busgate_shared::runtime::install_crypto_provider();
    assert!(
        which("wrk").is_some(),
        "wrk is missing: apt-get install wrk (tests/run.sh does)"
    );
    let started_at = std::time::SystemTime::now();
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
    versions.insert(
        "nats-server",
        output(
            Command::new(busgate_shared::runtime::locate_nats_server(None).expect("nats-server"))
                .arg("--version"),
        ),
    );
    versions.insert("nginx", output(Command::new("nginx").arg("-v")));
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
    let profile = if bin("busgate").to_string_lossy().contains("/release/") {
        "release"
    } else {
        "debug"
    };
    versions.insert("profile", profile.into());

    let anchors = Anchors::start(&o.anchors);
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
    let _a1 = Worker::adapter(&nats, "a1", &format!("http://127.0.0.1:{}", anchors.up1));
    let _a2 = Worker::adapter(&nats, "a2", &format!("http://127.0.0.1:{}", anchors.up2));
    let gateway = Gateway::start(&nats, &bench_settings()).await;
    let gw_pid = gateway.proc.pid().as_raw() as u32;
    let g = |p: &str| gateway.url(p);
    let proxy = format!("http://127.0.0.1:{}/order/12345", anchors.proxy);
    let merge = format!("http://127.0.0.1:{}/api/orders/12345", anchors.merge);
    let scenarios = vec![
        Scenario {
            key: "1-one-native",
            title: "one source, native NATS service vs nginx 1-hop proxy",
            ours: g("/bench/one/12345"),
            ours_header: None,
            peer_name: "nginx 1-hop proxy",
            peer: proxy.clone(),
            peer_header: None,
        },
        Scenario {
            key: "2-one-adapter",
            title: "one source through an adapter to nginx vs nginx 1-hop proxy",
            ours: g("/bench/one-adapter/12345"),
            ours_header: None,
            peer_name: "nginx 1-hop proxy",
            peer: proxy,
            peer_header: None,
        },
        Scenario {
            key: "3-merge-native",
            title: "two sources merged, native services vs nginx + Lua merge",
            ours: g("/bench/merge/12345"),
            ours_header: None,
            peer_name: "nginx + Lua merge",
            peer: merge.clone(),
            peer_header: None,
        },
        Scenario {
            key: "4-merge-adapter",
            title: "two sources merged through adapters to nginx vs nginx + Lua merge",
            ours: g("/bench/merge-adapter/12345"),
            ours_header: None,
            peer_name: "nginx + Lua merge",
            peer: merge,
            peer_header: None,
        },
        Scenario {
            key: "5-async-submit",
            title: "async submit (202 after the JetStream ack) vs synchronous scenario 3",
            ours: g("/bench/merge/12345"),
            ours_header: Some("Prefer: respond-async"),
            peer_name: "Busgate synchronous merge",
            peer: g("/bench/merge/12345"),
            peer_header: None,
        },
    ];

    let mut results = Vec::new();
    let mut peak_rss_scenario3 = 0;
    for s in &scenarios {
        eprintln!("scenario {}: {}", s.key, s.title);
        if o.warmup > 0 {
            wrk(&s.ours, o.connections, o.warmup, s.ours_header);
            wrk(&s.peer, o.connections, o.warmup, s.peer_header);
        }
        let mut rounds = Vec::new();
        for r in 0..o.rounds {
            let ours = wrk(&s.ours, o.connections, o.duration, s.ours_header);
            let peer = wrk(&s.peer, o.connections, o.duration, s.peer_header);
            eprintln!("  round {}: busgate {:>9.0} req/s p99 {:>6.2} ms | {} {:>9.0} req/s p99 {:>6.2} ms", r + 1, ours.rps, ours.p99_ms, s.peer_name, peer.rps, peer.p99_ms);
            rounds.push((ours, peer));
        }
        if s.key == "3-merge-native" {
            peak_rss_scenario3 = rss_kib(gw_pid, "VmHWM");
        }
        let ratios: Vec<f64> = rounds.iter().map(|(a, b)| a.rps / b.rps).collect();
        let peer_rps = median(rounds.iter().map(|(_, b)| b.rps).collect());
        let fixed_rate = if o.smoke || s.key.starts_with('5') {
            None
        } else {
            // Half the lower of the two peaks: neither side is saturated, so the figures are
            // latency, not queueing (half the peer's peak would overload the slower side).
            let ours_rps = median(rounds.iter().map(|(a, _)| a.rps).collect());
            let rate = (ours_rps.min(peer_rps) / 2.0).max(100.0);
            match (
                oha(&s.ours, o.connections, o.duration, rate),
                oha(&s.peer, o.connections, o.duration, rate),
            ) {
                (Some(a), Some(b)) => {
                    eprintln!("  at {rate:.0}/s: busgate p50 {:.2} p99 {:.2} p99.9 {:.2} ms | peer p50 {:.2} p99 {:.2} p99.9 {:.2} ms", a.p50_ms, a.p99_ms, a.p999_ms.unwrap_or(f64::NAN), b.p50_ms, b.p99_ms, b.p999_ms.unwrap_or(f64::NAN));
                    Some((rate, a, b))
                }
                _ => None,
            }
        };
        results.push(ScenarioResult {
            key: s.key,
            title: s.title,
            peer: s.peer_name,
            median_ratio: median(ratios.clone()),
            ratio_per_round: ratios,
            ours_median_rps: median(rounds.iter().map(|(a, _)| a.rps).collect()),
            peer_median_rps: peer_rps,
            ours_p99_ms: median(rounds.iter().map(|(a, _)| a.p99_ms).collect()),
            peer_p99_ms: median(rounds.iter().map(|(_, b)| b.p99_ms).collect()),
            rounds,
            fixed_rate,
        });
    }

    // 6. Fan-out width against raw NATS scatter-gather of the same width. One request in
    // flight shows what the gateway adds to a request (HTTP hop included); at 64 in flight
    // both sides queue on the two cores, so the difference there is mostly throughput.
    let mut fanout = Vec::new();
    for width in [1usize, 2, 4, 8] {
        let url = g(&format!("/bench/fan{width}/12345"));
        let mut row = json!({"width": width});
        for (key, in_flight) in [("one", 1), ("loaded", o.connections)] {
            let ours = wrk(&url, in_flight, o.duration, None);
            let (raw_p50, raw_p99, raw_rps) =
                raw_nats(&nats.url, width, in_flight, o.duration, false).await;
            let (hdr_p50, hdr_p99, hdr_rps) =
                raw_nats(&nats.url, width, in_flight, o.duration, true).await;
            eprintln!("fan-out {width}, {in_flight} in flight: busgate p50 {:.3} p99 {:.3} ms ({:.0}/s) | raw NATS p50 {raw_p50:.3} p99 {raw_p99:.3} ms ({raw_rps:.0}/s) | with headers p50 {hdr_p50:.3} p99 {hdr_p99:.3} ms ({hdr_rps:.0}/s)", ours.p50_ms, ours.p99_ms, ours.rps);
            row[key] = json!({"in_flight": in_flight, "busgate": ours, "raw_nats": {"p50_ms": raw_p50, "p99_ms": raw_p99, "rps": raw_rps}, "raw_nats_headers": {"p50_ms": hdr_p50, "p99_ms": hdr_p99, "rps": hdr_rps}, "p50_over_raw_ms": ours.p50_ms - raw_p50, "p50_over_raw_headers_ms": ours.p50_ms - hdr_p50});
        }
        fanout.push(row);
    }

    // 7. Memory: RSS with many gathers in flight (each held by a slow- order for 3 s). The
    // connections are opened and each serves one quick request first (hyper sizes its
    // connection buffers on the first request), then are measured idle: the difference is what
    // a request in flight costs beyond a keep-alive connection: its handler and its gather.
    let baseline = rss_kib(gw_pid, "VmRSS");
    let hold = if o.smoke { 500 } else { 10_000 };
    let addr = gateway.base.trim_start_matches("http://").to_owned();
    let mut sockets = Vec::with_capacity(hold);
    for _ in 0..hold {
        if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
            sockets.push(s);
        }
    }
    let warmed = warm_up(&mut sockets).await;
    let connected_rss = settled_rss_kib(gw_pid).await;
    let opened = Instant::now();
    for (i, s) in sockets.iter_mut().enumerate() {
        use tokio::io::AsyncWriteExt;
        let request = format!("GET /bench/hold/slow-{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.write_all(request.as_bytes()).await;
    }
    // Until every request is in flight (bounded: 2 s), the peak includes requests still being
    // admitted (their head, body and publish); then the RSS with all of them waiting, once
    // settled (bounded: 2 s), is what the gathers in flight hold.
    let mut in_flight = 0.0;
    let mut admission_peak_rss = 0;
    for _ in 0..40 {
        in_flight = gateway.metric("busgate_gathers_in_flight", "").await;
        admission_peak_rss = admission_peak_rss.max(rss_kib(gw_pid, "VmRSS"));
        if in_flight >= sockets.len() as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held_rss = settled_rss_kib(gw_pid).await;
    admission_peak_rss = admission_peak_rss.max(held_rss);
    let per_request = if in_flight > 0.0 {
        (held_rss.saturating_sub(baseline)) as f64 / in_flight
    } else {
        f64::NAN
    };
    let per_gather = if in_flight > 0.0 {
        (held_rss.saturating_sub(connected_rss)) as f64 / in_flight
    } else {
        f64::NAN
    };
    eprintln!("memory: peak RSS under scenario 3 {peak_rss_scenario3} KiB; {in_flight} in flight (sent in {:?}): RSS {held_rss} KiB (peak while admitting {admission_peak_rss} KiB), {connected_rss} KiB with the connections idle after {warmed} quick requests, {baseline} KiB before: {per_gather:.2} KiB per gather, {per_request:.2} KiB per request with its connection", opened.elapsed());
    drop(sockets);
    let memory = json!({"peak_rss_scenario3_kib": peak_rss_scenario3, "idle_rss_kib": baseline, "connected_rss_kib": connected_rss, "warmed_connections": warmed, "held_rss_kib": held_rss, "admission_peak_rss_kib": admission_peak_rss, "in_flight": in_flight, "kib_per_gather": per_gather, "kib_per_in_flight_request": per_request});

    let raw = json!({
        "started_at": busgate_shared::header::unix_ms(started_at),
        "machine": machine,
        "versions": versions,
        "settings": {"rounds": o.rounds, "duration_s": o.duration, "warmup_s": o.warmup, "connections": o.connections, "smoke": o.smoke},
        "scenarios": results,
        "fanout": fanout,
        "memory": memory,
    });
    std::fs::create_dir_all(&o.out).expect("results folder");
    std::fs::write(
        o.out.join("raw.json"),
        serde_json::to_string_pretty(&raw).expect("json"),
    )
    .expect("write raw.json");
    let report = report(&raw);
    std::fs::write(o.out.join("report.md"), &report).expect("write report.md");
    std::fs::write(o.out.join("chart.svg"), chart(&raw)).expect("write chart.svg");
    println!("{report}");
    println!("results in {}", o.out.display());
    drop(gateway);
    drop(native);
    drop(anchors);
}

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
        "Versions: {} ({} build), {}, {}, {}, {}, {}.\n",
        v["busgate"].as_str().unwrap_or(""),
        v["profile"].as_str().unwrap_or(""),
        v["nats-server"].as_str().unwrap_or(""),
        v["nginx"].as_str().unwrap_or(""),
        v["wrk"].as_str().unwrap_or(""),
        v["oha"].as_str().unwrap_or(""),
        v["rustc"].as_str().unwrap_or("")
    );
    let s = &raw["settings"];
    let _ = writeln!(md, "Throughput: `wrk -t2 -c{} -d{}s`, {} interleaved rounds (Busgate, peer, Busgate, peer, …) after a {} s warm-up; everything on loopback on the same machine. Latency: `oha --latency-correction` at half the lower of the two median peaks (so that neither side is saturated). Targets, profiling findings and changes: [`../README.md`](../README.md).\n", s["connections"], s["duration_s"], s["rounds"], s["warmup_s"]);
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
    md
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
