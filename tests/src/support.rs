//! The end-to-end harness: a real `nats-server` on a free port and the real binaries, each a
//! child process killed in `Drop`. Children log JSON to stderr; a thread per child keeps every
//! line, so tests wait on what a process says (bounded), and a failing test prints the tails.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::fixture::Settings;

/// How long any process may take to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(20);

/// A built binary of this workspace (`busgate`, `busgate-worker`), beside the running one.
pub fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-<hash> (a test) or target/<profile>/busgate-bench (a binary)
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("profile dir");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// Lines a child wrote, shared with the thread that reads them.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A child process whose output is kept; killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: Arc<Lines>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Lines::default());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("BUSGATE_TEST_LOGS").is_some() {
                        eprintln!("{line}");
                    }
                    lines.lines.lock().expect("lines").push(line);
                    lines.grew.notify_all();
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child: Some(child),
            lines,
        }
    }

    /// Waits (bounded) for a line for which `pick` returns something, and returns that.
    pub fn wait_for<T>(&self, within: Duration, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let until = Instant::now() + within;
        let mut seen = 0;
        let mut lines = self.lines.lines.lock().expect("lines");
        loop {
            for line in &lines[seen..] {
                if let Some(found) = pick(line) {
                    return found;
                }
            }
            seen = lines.len();
            let now = Instant::now();
            if now >= until {
                panic!(
                    "{}: nothing expected was logged within {within:?}; last lines:\n{}",
                    self.name,
                    tail(&lines, 30)
                );
            }
            lines = self
                .lines
                .grew
                .wait_timeout(lines, until - now)
                .expect("lines")
                .0;
        }
    }

    /// Waits for a JSON log line whose `message` is `message`; returns the whole line.
    pub fn wait_for_message(&self, message: &str) -> Value {
        self.wait_for(READY_WITHIN, |line| {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["message"] == message).then_some(v)
        })
    }

    /// Every line so far, stdout and stderr interleaved as they came.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lines.lock().expect("lines").clone()
    }

    /// Whether any line so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.lines
            .lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(text))
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit code.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let until = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() >= until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within {within:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self
                .lines
                .lines
                .lock()
                .map(|l| tail(&l, 15))
                .unwrap_or_default();
            eprintln!("--- last lines of {} ---\n{lines}", self.name);
        }
        self.kill();
    }
}

/// A real nats-server with JetStream, on a free port, with a data dir of its own.
pub struct NatsServer {
    pub url: String,
    pub port: u16,
    /// `BUSGATE_NATS__…` variables (besides the URL) a client of this server needs: the CA
    /// file of a TLS server, say. Gateways and workers started on it get them.
    pub env: Vec<(String, String)>,
    proc: Proc,
    dir: tempfile::TempDir,
}

/// A certificate authority made in the test (rcgen), and the certificates it issues, as PEM
/// files in a directory of their own.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
    /// The CA certificate's file.
    pub ca_file: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "busgate test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write ca");
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            ca_file: ca_file.display().to_string(),
            dir,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, as
    /// `(cert_file, key_file)` named after `stem`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let cert_file = self.dir.path().join(format!("{stem}.pem"));
        let key_file = self.dir.path().join(format!("{stem}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        (
            cert_file.display().to_string(),
            key_file.display().to_string(),
        )
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, 0)
    }

    /// A server that requires `user` and `password`; its [`NatsServer::url`] carries them.
    pub fn start_with_auth(user: &str, password: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_with(
            dir,
            0,
            &["--user", user, "--pass", password],
            &format!("{user}:{password}@"),
        )
    }

    /// A server whose messages may be at most `max_payload` bytes (set in a config file: the
    /// command line has no flag for it).
    pub fn start_with_max_payload(max_payload: usize) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, format!("max_payload: {max_payload}\n")).expect("nats config");
        let config = config.display().to_string();
        Self::start_with(dir, 0, &["-c", &config], "")
    }

    /// Starts on `port` (0: any free one) with its store in `dir`.
    pub fn start_in(dir: tempfile::TempDir, port: u16) -> NatsServer {
        Self::start_with(dir, port, &[], "")
    }

    /// A server with `config` as its configuration file (authorization, accounts, TLS: the
    /// address, port, JetStream and store still come from the harness). Its URL carries no
    /// credentials: clients bring their own.
    pub fn start_with_config(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).expect("nats config");
        let file = file.display().to_string();
        Self::start_with(dir, 0, &["-c", &file], "")
    }

    /// A TLS-only server whose certificate `ca` issued for 127.0.0.1 and localhost; its URL
    /// is `tls://127.0.0.1:<port>` and its [`NatsServer::env`] names the CA file. With
    /// `verify`, clients must present a certificate from `ca` too (mutual TLS). `extra` goes
    /// into the `tls` block (`handshake_first: true`, say).
    pub fn start_tls(ca: &TestCa, verify: bool, extra: &str) -> NatsServer {
        let (cert, key) = ca.issue("nats-server", &["127.0.0.1", "localhost"]);
        let config = format!(
            "tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n  ca_file: \"{ca_file}\"\n  verify: {verify}\n  timeout: 5\n  {extra}\n}}\n",
            ca_file = ca.ca_file
        );
        let mut server = Self::start_with_config(&config);
        server.url = format!("tls://127.0.0.1:{}", server.port);
        server.env = vec![("BUSGATE_NATS__CA_FILE".into(), ca.ca_file.clone())];
        server
    }

    /// Starts with `args` added, and `userinfo` (`user:pass@`, or empty) in its URL.
    fn start_with(dir: tempfile::TempDir, port: u16, args: &[&str], userinfo: &str) -> NatsServer {
        // reqwest is built with TLS in this workspace: it needs the process's crypto provider.
        busgate_shared::runtime::install_crypto_provider();
        let binary = busgate_shared::runtime::locate_nats_server(None)
            .unwrap_or_else(|| panic!("{}", busgate_shared::runtime::NATS_SERVER_HINT));
        let mut cmd = Command::new(binary);
        let port_arg = if port == 0 {
            "-1".to_owned()
        } else {
            port.to_string()
        };
        cmd.args(args)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(dir.path());
        let proc = Proc::spawn("nats-server", cmd);
        let port = proc.wait_for(READY_WITHIN, |line| {
            let (_, rest) = line.split_once("Listening for client connections on ")?;
            rest.trim().rsplit_once(':')?.1.parse::<u16>().ok()
        });
        NatsServer {
            url: format!("nats://{userinfo}127.0.0.1:{port}"),
            port,
            env: Vec::new(),
            proc,
            dir,
        }
    }

    /// The server's process id (to stop it with SIGSTOP, say).
    pub fn pid(&self) -> Pid {
        self.proc.pid()
    }

    /// Stops the server, keeping its store for a restart.
    pub fn stop(mut self) -> (tempfile::TempDir, u16) {
        self.proc.terminate(Duration::from_secs(10));
        (self.dir, self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .expect("connect to test nats")
    }

    /// The request path's connection, as a service serves on (see `busgate_shared::wire`).
    pub fn wire(&self) -> busgate_shared::wire::Connection {
        busgate_shared::wire::Connection::connect(&self.url, "test").expect("a valid url")
    }
}

/// The admin token every test gateway uses (tokens have at least 32 characters).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A `busgate gateway` child on a free port.
pub struct Gateway {
    pub base: String,
    /// Base URL of the admin listener.
    pub admin: String,
    pub proc: Proc,
    _config: tempfile::NamedTempFile,
}

impl Gateway {
    /// Starts a gateway on `nats` with `settings` as its settings file.
    ///
    /// Unless `settings` say otherwise ([`Settings::auth_required`]), the gateway runs with
    /// `auth.mode = "none"` (set through its environment): most tests are about routes,
    /// gathers and limits, not clients. The tests of clients (`tests/clients.rs`) start theirs
    /// with `auth_required` and create clients through the admin API ([`Gateway::client`]).
    pub async fn start(nats: &NatsServer, settings: &Settings) -> Gateway {
        Self::start_with(nats, settings, |_| {}).await
    }

    /// [`Gateway::start`], with `configure` applied to its command last (e.g. to set or remove
    /// environment variables).
    pub async fn start_with(
        nats: &NatsServer,
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        let gateway = Self::start_unready(nats, settings, configure).await;
        gateway.wait_ready().await;
        gateway
    }

    /// [`Gateway::start_with`] on the NATS URL (or comma-separated URL list) `url`, e.g. a
    /// [`NatsCluster::urls`].
    pub async fn start_on(
        url: &str,
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        let gateway = Self::launch(url, &[], settings, configure).await;
        gateway.wait_ready().await;
        gateway
    }

    /// [`Gateway::start_with`] without waiting for readiness: returns once it listens (for
    /// tests of a gateway that must not become ready).
    pub async fn start_unready(
        nats: &NatsServer,
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        Self::launch(&nats.url, &nats.env, settings, configure).await
    }

    /// Waits (bounded) until `/health/ready` answers 200.
    pub async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        eventually(READY_WITHIN, || async {
            matches!(http.get(self.url("/health/ready")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
    }

    /// Spawns a gateway on `url` with `env` (NATS credentials) and waits until it listens.
    async fn launch(
        url: &str,
        env: &[(String, String)],
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        busgate_shared::runtime::install_crypto_provider();
        use std::io::Write;
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("config file");
        file.write_all(settings.to_toml().as_bytes())
            .expect("write config");
        let mut cmd = Command::new(bin("busgate"));
        cmd.arg("gateway")
            .arg("--config")
            .arg(file.path())
            .env("BUSGATE_NATS__URL", url)
            .envs(env.iter().cloned())
            .env("BUSGATE_HTTP__LISTEN", "127.0.0.1:0")
            .env("BUSGATE_ADMIN__LISTEN", "127.0.0.1:0")
            .env("BUSGATE_ADMIN__TOKEN", ADMIN_TOKEN)
            .env("BUSGATE_LOG__FORMAT", "json")
            .env("BUSGATE_LOG__LEVEL", "info");
        if settings.auth_mode().is_none() {
            cmd.env("BUSGATE_AUTH__MODE", "none");
        }
        configure(&mut cmd);
        let proc = Proc::spawn("gateway", cmd);
        let listening = proc.wait_for_message("listening");
        let addr = listening["addr"].as_str().expect("addr").to_owned();
        let admin = proc.wait_for_message("admin listening")["addr"]
            .as_str()
            .expect("admin addr")
            .to_owned();
        Gateway {
            base: format!("http://{addr}"),
            admin: format!("http://{admin}"),
            proc,
            _config: file,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates the client `name` with `spec` through the admin API; returns its first key.
    pub async fn client(&self, name: &str, spec: Value) -> ClientKey {
        let created = reqwest::Client::new()
            .post(self.admin_url("/admin/v1/clients"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"name": name, "spec": spec}))
            .send()
            .await
            .expect("create a client");
        let status = created.status();
        let body: Value = created.json().await.expect("json");
        assert_eq!(status, 201, "{body}");
        ClientKey {
            id: body["key"]["id"].as_str().expect("key id").to_owned(),
            secret: body["key"]["secret"]
                .as_str()
                .expect("key secret")
                .to_owned(),
        }
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// A gauge or counter from /metrics (summed over label sets that contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// A client's API key as the admin API shows it once.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// The key's id.
    pub id: String,
    /// The secret (`bgk_…`).
    pub secret: String,
}

/// `busgate-worker` children.
pub struct Worker;

impl Worker {
    /// A `busgate-worker` command with `nats`'s URL and variables in its environment.
    pub fn command(nats: Option<&NatsServer>) -> Command {
        match nats {
            Some(nats) => Self::command_on(Some(&nats.url), &nats.env),
            None => Self::command_on(None, &[]),
        }
    }

    /// A `busgate-worker` command on the NATS URL (or URL list) `url`, with `env` set.
    fn command_on(url: Option<&str>, env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(bin("busgate-worker"));
        cmd.env("BUSGATE_LOG__FORMAT", "json");
        if let Some(url) = url {
            cmd.env("BUSGATE_NATS__URL", url).envs(env.iter().cloned());
        }
        cmd
    }

    /// A demo HTTP service on a free port; returns it with its base URL.
    pub fn demo(service: &str) -> (Proc, String) {
        Self::demo_on(service, "127.0.0.1:0")
    }

    /// A demo HTTP service listening on `listen`; returns it with its base URL.
    pub fn demo_on(service: &str, listen: &str) -> (Proc, String) {
        let mut cmd = Self::command(None);
        cmd.args(["demo", "--service", service, "--listen", listen]);
        let proc = Proc::spawn(&format!("demo-{service}"), cmd);
        let addr = proc.wait_for_message("listening")["addr"]
            .as_str()
            .expect("addr")
            .to_owned();
        (proc, format!("http://{addr}"))
    }

    /// An adapter for `service` calling `upstream_base/order/{order_id}`; ready when serving.
    pub fn adapter(nats: &NatsServer, service: &str, upstream_base: &str) -> Proc {
        Self::adapters(nats, &[(service, upstream_base)])
    }

    /// One adapter process serving each `(service, upstream_base)` pair; ready when all serve.
    pub fn adapters(nats: &NatsServer, pairs: &[(&str, &str)]) -> Proc {
        Self::adapters_with(&nats.url, pairs, |cmd| {
            cmd.envs(nats.env.iter().cloned());
        })
    }

    /// [`Worker::adapters`] on the NATS URL (or URL list) `url`.
    pub fn adapters_on(url: &str, pairs: &[(&str, &str)]) -> Proc {
        Self::adapters_with(url, pairs, |_| {})
    }

    /// [`Worker::adapters_on`], with `configure` applied to its command last (e.g. to set
    /// environment variables).
    pub fn adapters_with(
        url: &str,
        pairs: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut cmd = Self::command_on(Some(url), &[]);
        cmd.arg("adapter");
        for (service, base) in pairs {
            cmd.args([
                "--service",
                service,
                "--upstream",
                &format!("{base}/order/{{order_id}}"),
            ]);
        }
        configure(&mut cmd);
        let names: Vec<&str> = pairs.iter().map(|(service, _)| *service).collect();
        let proc = Proc::spawn(&format!("adapter-{}", names.join("+")), cmd);
        let mut serving = std::collections::HashSet::new();
        proc.wait_for(READY_WITHIN, |line| {
            let v: Value = serde_json::from_str(line).ok()?;
            if v["message"] == "serving" {
                serving.insert(v["service"].as_str()?.to_owned());
            }
            (serving.len() == pairs.len()).then_some(())
        });
        proc
    }

    /// A native NATS demo service; ready when serving.
    pub fn native(nats: &NatsServer, service: &str) -> Proc {
        let mut cmd = Self::command(Some(nats));
        cmd.args(["native", "--service", service]);
        let proc = Proc::spawn(&format!("native-{service}"), cmd);
        proc.wait_for_message("serving");
        proc
    }
}

/// NATS, two demo services with an adapter each, and a gateway.
pub struct Stack {
    pub gateway: Gateway,
    pub adapters: Vec<Proc>,
    pub demos: Vec<(Proc, String)>,
    pub nats: NatsServer,
}

impl Stack {
    /// The default stack; the gateway starts with `settings` (nothing set: built-in routes).
    pub async fn start(settings: &Settings) -> Stack {
        let nats = NatsServer::start();
        let demos = vec![Worker::demo("service1"), Worker::demo("service2")];
        let adapters = vec![
            Worker::adapter(&nats, "service1", &demos[0].1),
            Worker::adapter(&nats, "service2", &demos[1].1),
        ];
        let gateway = Gateway::start(&nats, settings).await;
        Stack {
            gateway,
            adapters,
            demos,
            nats,
        }
    }
}

/// Polls `check` until it holds, at most `within`; panics otherwise.
pub async fn eventually<F, Fut>(within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < until,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: another process may take it before its
/// user binds it, which on a test machine is rare; a node that fails to bind says so).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One node of a [`NatsCluster`]: its ports, its store and its process (none while down).
pub struct ClusterNode {
    /// `n1`, `n2`, …: its `server_name`.
    pub name: String,
    /// The client port.
    pub port: u16,
    /// The monitoring port (`/connz`, `/jsz`, `/healthz`).
    pub monitor: u16,
    config: PathBuf,
    proc: Option<Proc>,
    /// Clients must speak TLS to it (`tls://`).
    tls: bool,
    _dir: tempfile::TempDir,
}

impl ClusterNode {
    /// Its client URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let binary = busgate_shared::runtime::locate_nats_server(None)
            .unwrap_or_else(|| panic!("{}", busgate_shared::runtime::NATS_SERVER_HINT));
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&self.config);
        let proc = Proc::spawn(&format!("nats-{}", self.name), cmd);
        proc.wait_for(READY_WITHIN, |line| {
            line.contains("Listening for client connections on ")
                .then_some(())
        });
        self.proc = Some(proc);
    }

    fn pid(&self) -> Pid {
        self.proc.as_ref().expect("the node is running").pid()
    }

    /// Whether its process is running (not killed; a stopped one is running).
    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }
}

/// A cluster of real nats-servers on 127.0.0.1: routes between every node, JetStream on each
/// with a store of its own, a monitoring port each. Faults are injected on the processes:
/// kill -9, SIGSTOP/SIGCONT, restart on the same ports with the same store.
pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    /// What a gateway or worker needs in its environment besides the URLs (the CA file of a
    /// TLS cluster).
    pub env: Vec<(String, String)>,
    /// The CA of a TLS cluster.
    ca: Option<TestCa>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until every one sees a JetStream meta leader of a
    /// `size`-node cluster.
    pub async fn start(size: usize) -> NatsCluster {
        Self::launch(size, None).await
    }

    /// [`NatsCluster::start`] with TLS between clients and servers: every node's certificate
    /// comes from a CA made for the test, clients must use `tls://` and trust that CA.
    pub async fn start_tls(size: usize) -> NatsCluster {
        Self::launch(size, Some(TestCa::new())).await
    }

    async fn launch(size: usize, ca: Option<TestCa>) -> NatsCluster {
        busgate_shared::runtime::install_crypto_provider();
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, route, monitor)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let name = format!("n{}", i + 1);
            let store = dir.path().join("store");
            let config = dir.path().join("nats.conf");
            let tls = match &ca {
                Some(ca) => {
                    let (cert, key) = ca.issue(&name, &["127.0.0.1", "localhost"]);
                    format!(
                        "tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n  timeout: 5\n}}\n"
                    )
                }
                None => String::new(),
            };
            // Routes pinged every second (the default is 2 minutes): a hung node's queue
            // subscribers are dropped by its peers within seconds, not minutes.
            let text = tls
                + &format!(
                    "server_name: {name}\n\
                 listen: \"127.0.0.1:{port}\"\n\
                 http: \"127.0.0.1:{monitor}\"\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{\n  name: busgate-test\n  listen: \"127.0.0.1:{route}\"\n  \
                 ping_interval: \"1s\"\n  routes: [{routes}]\n}}\n",
                    store = store.display().to_string(),
                    routes = routes.join(", "),
                );
            std::fs::write(&config, text).expect("node config");
            nodes.push(ClusterNode {
                name,
                port: *port,
                monitor: *monitor,
                config,
                proc: None,
                tls: ca.is_some(),
                _dir: dir,
            });
        }
        for node in &mut nodes {
            node.start();
        }
        let env = ca
            .as_ref()
            .map(|ca| vec![("BUSGATE_NATS__CA_FILE".to_owned(), ca.ca_file.clone())])
            .unwrap_or_default();
        let cluster = NatsCluster { nodes, env, ca };
        cluster.wait_for_meta_leader().await;
        cluster
    }

    /// The client URLs of every node, comma-separated: what a gateway or worker is given.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(ClusterNode::url).collect();
        urls.join(",")
    }

    /// An async-nats client on the whole cluster (for test assertions on streams and KV).
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("url"))
            .collect();
        let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
        if let Some(ca) = &self.ca {
            options = options
                .add_root_certificates(PathBuf::from(&ca.ca_file))
                .require_tls(true);
        }
        options
            .connect(urls)
            .await
            .expect("connect to the test cluster")
    }

    /// A monitoring endpoint of node `index`, as JSON (`None` while it does not answer).
    pub async fn monitor(&self, index: usize, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.nodes[index].monitor);
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits (bounded) until every running node reports a JetStream meta leader and sees the
    /// whole cluster.
    pub async fn wait_for_meta_leader(&self) {
        let size = self.nodes.len();
        let mut last = Value::Null;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ready = true;
            for (i, node) in self.nodes.iter().enumerate() {
                if !node.is_up() {
                    continue;
                }
                match self.monitor(i, "/jsz").await {
                    Some(jsz) => {
                        let meta = &jsz["meta_cluster"];
                        let leader = meta["leader"].as_str().unwrap_or("");
                        if leader.is_empty() || meta["cluster_size"].as_u64() != Some(size as u64) {
                            ready = false;
                            last = jsz;
                        }
                    }
                    None => ready = false,
                }
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < until,
                "no JetStream meta leader within 60 s: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node (index) that holds a client connection whose name contains `name`.
    pub async fn node_of(&self, name: &str) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_up() {
                continue;
            }
            let Some(connz) = self.monitor(i, "/connz?limit=1024").await else {
                continue;
            };
            let found = connz["connections"].as_array().is_some_and(|conns| {
                conns
                    .iter()
                    .any(|c| c["name"].as_str().is_some_and(|n| n.contains(name)))
            });
            if found {
                return Some(i);
            }
        }
        None
    }

    /// kill -9 node `index`: it is gone at once, its connections with it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut proc) = self.nodes[index].proc.take() {
            proc.kill();
        }
    }

    /// SIGSTOP node `index`: hung, its sockets open and silent.
    pub fn pause(&self, index: usize) {
        kill(self.nodes[index].pid(), Signal::SIGSTOP).expect("SIGSTOP");
    }

    /// SIGCONT node `index`.
    pub fn resume(&self, index: usize) {
        kill(self.nodes[index].pid(), Signal::SIGCONT).expect("SIGCONT");
    }

    /// Starts node `index` again (after [`NatsCluster::kill`]) on the same ports with the same
    /// store.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.nodes[index].start();
    }

    /// Stops every node (SIGTERM, bounded), then starts them all again on the same ports with
    /// the same stores, and waits for a meta leader.
    pub async fn restart_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut proc) = node.proc.take() {
                proc.terminate(Duration::from_secs(15));
            }
        }
        for node in &mut self.nodes {
            node.start();
        }
        self.wait_for_meta_leader().await;
    }
}
