//! `busgate up`: the whole local stack in one command.
//!
//! Starts `nats-server` with JetStream in a data dir of its own (only when nothing answers at
//! the configured NATS URL), `busgate-worker adapters` (which serves every service whose
//! configuration has an upstream, including those added later through the admin API or UI),
//! a demo HTTP service and its adapter for each configured service without an upstream (unless
//! `--no-demo`), and the gateway itself in this process; prints the URLs and a curl to try.
//! Ctrl-C (or SIGTERM) stops the gateway first, then the adapters, the demo services and NATS,
//! each with SIGTERM and, after a grace period, SIGKILL. A child that dies is logged and
//! started again after a backoff (200 ms, doubling to 5 s; back to 200 ms once it ran 30 s):
//! the rest of the stack keeps serving meanwhile.
//!
//! The admin token and the callback secret that `up` generates are kept in the data dir
//! (`admin-token`, `callback-secret`, mode 0600) and used again by the next `up` with that
//! data dir: a bookmarked UI link keeps working, and callbacks pending in JetStream stay
//! verifiable with the secret they will be signed with.

use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};
use tracing::{info, warn};

use busgate_shared::micro::Verb;
use busgate_shared::runtime::{locate_nats_server, shutdown_signal, NATS_SERVER_HINT};

use crate::config::settings::Settings;

/// Arguments of `busgate up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Settings file (TOML). Its services with an `upstream` are served by
    /// `busgate-worker adapters`; each one without gets a demo service and an adapter.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Start no demo service, not even for services without an upstream (those then have no
    /// responders until something serves them).
    #[arg(long)]
    pub no_demo: bool,
    /// Where the stack keeps NATS data and child logs.
    #[arg(long, default_value = ".busgate")]
    pub data_dir: PathBuf,
    /// The nats-server binary (else NATS_SERVER, the pinned install, PATH).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Port of the first demo service; the next services take the following ports.
    #[arg(long, default_value_t = 8081)]
    pub demo_port: u16,
}

/// How long a child may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a child may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// How long a child must have run for its restart backoff to start again from the shortest.
const RAN_LONG_ENOUGH: Duration = Duration::from_secs(30);
/// The first restart delay, doubled at each quick death up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(200);
/// The longest restart delay.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// The admin token's file in the data dir.
const TOKEN_FILE: &str = "admin-token";
/// The callback secret's file in the data dir.
const CALLBACK_SECRET_FILE: &str = "callback-secret";

/// A child process watched (and restarted) by a task of its own.
struct Running {
    name: String,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

/// Secrets `up` made itself: the banner shows these, and only these.
#[derive(Default)]
struct Generated {
    admin_token: Option<String>,
    callback_secret: Option<String>,
}

/// Runs the local stack until Ctrl-C/SIGTERM or a child dies.
pub async fn run(args: UpArgs, mut settings: Settings) -> anyhow::Result<()> {
    // SIGTERM and SIGINT are ours from here on: one that comes while the stack starts is kept
    // and stops it once the gateway runs, rather than killing this process without stopping
    // its children.
    let mut signal = Box::pin(shutdown_signal());
    let _ = futures::poll!(signal.as_mut());
    // The admin UI opens with a token in its URL. A generated one goes to the gateway in its
    // settings (it runs in this process) and is shown in the banner only, never logged; a
    // configured one is not printed at all.
    std::fs::create_dir_all(args.data_dir.join("logs"))
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let mut generated = Generated::default();
    if settings.admin.resolve_token()?.is_none() {
        let token = kept_secret(
            &data_dir.join(TOKEN_FILE),
            |t| t.len() >= 32,
            || {
                format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                )
            },
        )?;
        settings.admin.token.clone_from(&token);
        generated.admin_token = Some(token);
    }
    // Callbacks work out of the box locally: a kept (or fresh) secret, and loopback receivers
    // allowed.
    if settings.callbacks.secret.is_empty() {
        settings.callbacks.secret = kept_secret(
            &data_dir.join(CALLBACK_SECRET_FILE),
            |s| crate::jobs::callback::Signer::new(s).is_ok(),
            crate::jobs::callback::Signer::generate_secret,
        )?;
        generated.callback_secret = Some(settings.callbacks.secret.clone());
    }
    for entry in ["127.0.0.0/8", "::1", "localhost"] {
        if !settings.callbacks.allow.iter().any(|a| a == entry) {
            settings.callbacks.allow.push(entry.into());
        }
    }
    let mut children: Vec<Running> = Vec::new();
    let started = start_children(&args, &settings, &data_dir, &mut children).await;
    let nats_note = match started {
        Ok(note) => note,
        Err(e) => {
            stop_all(children).await;
            return Err(e);
        }
    };

    let mut listeners = Vec::new();
    for addr in [settings.http.listen, settings.admin.listen] {
        match busgate_shared::runtime::listen(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                stop_all(children).await;
                return Err(e).with_context(|| format!("cannot listen on {addr}"));
            }
        }
    }
    let (Some(admin), Some(listener)) = (listeners.pop(), listeners.pop()) else {
        bail!("listeners missing");
    };
    // The banner waits for the client `demo` and its key, which the admin API makes once the
    // gateway below runs; bounded, and stopped with the stack.
    let banner = {
        let (settings, args, data_dir) = (settings.clone(), args.clone(), data_dir.clone());
        let (addr, admin_addr) = (listener.local_addr()?, admin.local_addr()?);
        let token = settings.admin.resolve_token()?.unwrap_or_default();
        tokio::spawn(async move {
            let kept = data_dir.join("demo-key");
            let key = match timeout(READY_WITHIN, demo_key(admin_addr, &token, &kept)).await {
                Ok(Ok(key)) => Some(key),
                Ok(Err(e)) => {
                    warn!(error = %e, "cannot make the demo client's key");
                    None
                }
                Err(_) => {
                    warn!("the admin API did not make the demo client's key in time");
                    None
                }
            };
            print_banner(
                &settings,
                &generated,
                &args,
                &data_dir,
                &nats_note,
                addr,
                admin_addr,
                key.as_deref(),
            );
        })
    };

    let result = crate::run(settings, listener, admin, signal).await;
    banner.abort();
    stop_all(children).await;
    result
}

/// The secret kept in `path`, when it holds one that `valid` accepts; else a new one from
/// `generate`, written there first (mode 0600: only this user reads it).
fn kept_secret(
    path: &Path,
    valid: impl Fn(&str) -> bool,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(text) = std::fs::read_to_string(path) {
        let kept = text.trim();
        if valid(kept) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict {}", path.display()))?;
            return Ok(kept.to_owned());
        }
        warn!(file = %path.display(), "kept secret unusable, making a new one");
    }
    let secret = generate();
    write_secret(path, &secret)?;
    Ok(secret)
}

/// Writes `secret` to `path`, readable by this user only (mode 0600).
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn start_children(
    args: &UpArgs,
    settings: &Settings,
    data_dir: &Path,
    children: &mut Vec<Running>,
) -> anyhow::Result<String> {
    let nats_url = settings
        .nats
        .url
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    // Shown in the banner and errors; the URL itself reaches children only in their
    // environment (a process list shows argv to every user of the machine).
    let shown_url = busgate_shared::nats::redact_url(&nats_url);
    let nats_addr = nats_socket_addr(&nats_url)?;
    let nats_note = if answers(nats_addr).await {
        format!("{shown_url} (already running, used as is)")
    } else {
        if !nats_addr.ip().is_loopback() {
            bail!("nothing answers at {shown_url}, and up only starts a NATS server on this machine (loopback)");
        }
        let binary = locate_nats_server(args.nats_server.as_deref()).context(NATS_SERVER_HINT)?;
        let store = data_dir.join("nats");
        let cmd = ChildSpec::new(&binary)
            .arg("-a")
            .arg(nats_addr.ip().to_string())
            .arg("-p")
            .arg(nats_addr.port().to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .arg("-n")
            .arg("busgate-up");
        children.push(spawn("nats-server", cmd, data_dir)?);
        wait_until(READY_WITHIN, || answers(nats_addr))
            .await
            .with_context(|| format!("nats-server did not listen on {nats_addr}"))?;
        format!(
            "{shown_url} (started {}, data in {})",
            binary.display(),
            store.display()
        )
    };

    let worker = sibling_binary("busgate-worker")?;
    // The same `[nats]` settings as the gateway's (TLS, credentials), through the
    // environment: never in argv.
    let nats = busgate_shared::nats::NatsSettings {
        url: nats_url,
        ..settings.nats.clone()
    };
    let nats_env = nats.to_env();
    // Every service with an upstream, now or added later, is served by this one process.
    let adapters = ChildSpec::new(&worker)
        .envs(nats_env.clone())
        .arg("adapters");
    children.push(spawn("adapters", adapters, data_dir)?);
    let demos = demo_services(args, settings);
    for (i, service) in demos.iter().enumerate() {
        let port = args
            .demo_port
            .checked_add(u16::try_from(i)?)
            .context("demo ports run past 65535")?;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let demo = ChildSpec::new(&worker).args([
            "demo",
            "--service",
            service,
            "--listen",
            &listen.to_string(),
        ]);
        children.push(spawn(&format!("demo-{service}"), demo, data_dir)?);
        wait_until(READY_WITHIN, || answers(listen))
            .await
            .with_context(|| format!("demo service {service} did not listen on {listen}"))?;
        let adapter = ChildSpec::new(&worker).envs(nats_env.clone()).args([
            "adapter",
            "--service",
            service,
            "--upstream",
            &format!("http://{listen}/order/{{order_id}}"),
        ]);
        children.push(spawn(&format!("adapter-{service}"), adapter, data_dir)?);
    }
    // Services with an upstream come up once the gateway has seeded the configuration: the
    // adapters process follows it.
    wait_for_services(&nats, demos.iter()).await?;
    Ok(nats_note)
}

/// The services that get a demo: those of the settings without an upstream (none with
/// `--no-demo`).
fn demo_services(args: &UpArgs, settings: &Settings) -> Vec<String> {
    if args.no_demo {
        return Vec::new();
    }
    settings
        .services
        .iter()
        .filter(|(_, s)| s.upstream.is_none())
        .map(|(name, _)| name.clone())
        .collect()
}

/// Waits until every service answers a NATS service-API ping.
async fn wait_for_services<'a>(
    nats: &busgate_shared::nats::NatsSettings,
    services: impl Iterator<Item = &'a String>,
) -> anyhow::Result<()> {
    let client = busgate_shared::nats::connect(nats, "busgate up").await?;
    for service in services {
        let subject = Verb::Ping.subject(Some(service));
        wait_until(READY_WITHIN, || {
            let client = client.clone();
            let subject = subject.clone();
            async move {
                matches!(
                    timeout(
                        Duration::from_millis(500),
                        client.request(subject, "".into())
                    )
                    .await,
                    Ok(Ok(_))
                )
            }
        })
        .await
        .with_context(|| format!("the adapter of {service} did not come up"))?;
    }
    client.drain().await?;
    Ok(())
}

/// What a child is started with, again at each restart.
struct ChildSpec {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl ChildSpec {
    fn new(program: &Path) -> Self {
        ChildSpec {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn args<'a>(mut self, args: impl IntoIterator<Item = &'a str>) -> Self {
        self.args.extend(args.into_iter().map(OsString::from));
        self
    }

    /// Environment variables (where secrets such as a NATS URL with credentials go: a
    /// process list shows argv to every user of the machine).
    fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// Starts the child, its output appended to `log_path`.
    fn start(&self, name: &str, log_path: &Path) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            // A group of its own: Ctrl-C reaches us only, and we stop children in order.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        info!(name, pid = child.id(), log = %log_path.display(), "started");
        Ok(child)
    }
}

/// Starts a child (an error if it cannot start at all) and a task that restarts it whenever
/// it dies, until stopped.
fn spawn(name: &str, spec: ChildSpec, data_dir: &Path) -> anyhow::Result<Running> {
    let log_path = data_dir.join("logs").join(format!("{name}.log"));
    // Truncated once per `up`; restarts append.
    std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let child = spec.start(name, &log_path)?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let done = tokio::spawn(supervise(name.to_owned(), spec, log_path, child, stop_rx));
    Ok(Running {
        name: name.to_owned(),
        stop: stop_tx,
        done,
    })
}

/// Waits for the child to exit, then logs it and starts it again after a backoff; on a stop
/// request, stops it (SIGTERM, then SIGKILL after the grace period).
async fn supervise(
    name: String,
    spec: ChildSpec,
    log_path: PathBuf,
    mut child: Child,
    mut stop: oneshot::Receiver<()>,
) {
    let mut delay = FIRST_RESTART_DELAY;
    loop {
        let started = Instant::now();
        tokio::select! {
            status = child.wait() => {
                if started.elapsed() >= RAN_LONG_ENOUGH {
                    delay = FIRST_RESTART_DELAY;
                }
                warn!(name, ?status, restart_in = ?delay, "exited, restarting");
            }
            _ = &mut stop => {
                if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
                match timeout(STOP_GRACE, child.wait()).await {
                    Ok(status) => info!(name, ?status, "stopped"),
                    Err(_) => {
                        warn!(name, "did not stop in time, killing");
                        let _ = child.kill().await;
                    }
                }
                return;
            }
        }
        // Restart, retrying with the backoff while it cannot even start.
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = &mut stop => return,
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
            match spec.start(&name, &log_path) {
                Ok(next) => {
                    child = next;
                    break;
                }
                Err(e) => {
                    warn!(name, error = %format!("{e:#}"), retry_in = ?delay, "cannot restart")
                }
            }
        }
    }
}

/// Stops children in reverse start order (adapters before demos, NATS last).
async fn stop_all(children: Vec<Running>) {
    for running in children.into_iter().rev() {
        let _ = running.stop.send(());
        if let Err(e) = running.done.await {
            warn!(name = running.name, error = %e, "watcher failed");
        }
    }
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name(name);
    if sibling.is_file() {
        return Ok(sibling);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{name} not found beside {} or on PATH: run cargo build --release",
                exe.display()
            )
        })
}

fn nats_socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let hostport = url.split_once("://").map_or(url, |(_, rest)| rest);
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, hp)| hp);
    let hostport = hostport.trim_end_matches('/');
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:4222")
    };
    let shown = busgate_shared::nats::redact_url(url);
    with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {shown}"))?
        .next()
        .with_context(|| format!("{shown} has no address"))
}

async fn answers(addr: SocketAddr) -> bool {
    matches!(
        timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn wait_until<F, Fut>(within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + within;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("not ready after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client `demo` with a fresh key, through the admin API on `admin`: made when it does not
/// exist; otherwise given a new key and its older ones revoked (their secrets were shown by an
/// earlier run and are not kept). Returns the secret, which only the banner shows.
async fn demo_key(admin: SocketAddr, token: &str, kept: &Path) -> anyhow::Result<String> {
    // The key of the last `up` (in the data dir, 0600) stays while the client still has it,
    // so that a restart keeps the examples' `BUSGATE_KEY` working, as it keeps the admin token.
    let kept_key = std::fs::read_to_string(kept)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|key| !key.is_empty());
    let admin = if admin.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], admin.port()))
    } else {
        admin
    };
    let base = format!("http://{admin}/admin/v1/clients");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let json = |r: reqwest::Response| async move {
        let status = r.status();
        let bytes = r.bytes().await?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        anyhow::Ok((status.as_u16(), body))
    };
    loop {
        let (status, current) = match http
            .get(format!("{base}/demo"))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(r) => json(r).await?,
            Err(_) => (0, serde_json::Value::Null),
        };
        match status {
            404 => {
                let body = serde_json::json!({"name": "demo", "spec": {"description": "made by busgate up"}});
                let created = http
                    .post(&base)
                    .bearer_auth(token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::to_vec(&body)?)
                    .send()
                    .await?;
                let (status, body) = json(created).await?;
                if status == 201 {
                    if let Some(secret) = body["key"]["secret"].as_str() {
                        write_secret(kept, secret)?;
                        return Ok(secret.to_owned());
                    }
                }
                bail!("creating the demo client answered {status}");
            }
            200 => {
                let hashes: Vec<&str> = current["spec"]["keys"]
                    .as_array()
                    .map(|keys| keys.iter().filter_map(|k| k["hash"].as_str()).collect())
                    .unwrap_or_default();
                if let Some(key) = &kept_key {
                    let hash = crate::auth::hex(&crate::auth::hash_key(key));
                    if hashes.contains(&hash.as_str()) {
                        return Ok(key.clone());
                    }
                }
                let added = http
                    .post(format!("{base}/demo/keys"))
                    .bearer_auth(token)
                    .send()
                    .await?;
                let (status, body) = json(added).await?;
                let (Some(id), Some(secret)) = (body["id"].as_str(), body["secret"].as_str())
                else {
                    bail!("adding a key to the demo client answered {status}");
                };
                let old = current["spec"]["keys"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for key in old
                    .iter()
                    .filter_map(|k| k["id"].as_str())
                    .filter(|k| *k != id)
                {
                    let _ = http
                        .delete(format!("{base}/demo/keys/{key}"))
                        .bearer_auth(token)
                        .send()
                        .await?;
                }
                write_secret(kept, secret)?;
                return Ok(secret.to_owned());
            }
            // Not listening or not ready yet (the store comes up with JetStream).
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn print_banner(
    settings: &Settings,
    generated: &Generated,
    args: &UpArgs,
    data_dir: &Path,
    nats: &str,
    addr: SocketAddr,
    admin: SocketAddr,
    client_key: Option<&str>,
) {
    let host = if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let mut out = String::new();
    out.push_str("\nBusgate is up.\n\n");
    out.push_str(&format!("  gateway   http://{host}\n"));
    out.push_str(&format!("  health    http://{host}/health/ready\n"));
    out.push_str(&format!("  metrics   http://{host}/metrics\n"));
    let token = generated
        .admin_token
        .as_deref()
        .unwrap_or("<your admin.token>");
    out.push_str(&format!("  admin UI  http://{admin}/#token={token}\n"));
    out.push_str(&format!(
        "  admin API http://{admin}/admin/v1/ (Authorization: Bearer {token})\n"
    ));
    out.push_str(&format!("  nats      {nats}\n"));
    for (i, service) in demo_services(args, settings).iter().enumerate() {
        let port = usize::from(args.demo_port) + i;
        out.push_str(&format!(
            "  {service:<9} demo http://127.0.0.1:{port}/order/{{order_id}}, adapter on busgate.svc.{service}\n"
        ));
    }
    for (service, spec) in &settings.services {
        if let Some(upstream) = &spec.upstream {
            let shown = busgate_shared::upstream::UrlTemplate::parse(&upstream.url)
                .map(|t| t.display)
                .unwrap_or_default();
            out.push_str(&format!(
                "  {service:<9} upstream {shown}, served by busgate-worker adapters\n"
            ));
        }
    }
    out.push_str(&format!(
        "  logs      {}\n",
        data_dir.join("logs").display()
    ));
    out.push_str(&format!(
        "  callbacks signed with {} (loopback receivers allowed)\n",
        generated
            .callback_secret
            .as_deref()
            .unwrap_or("callbacks.secret")
    ));
    let key = client_key.unwrap_or("<a client key: POST /admin/v1/clients>");
    out.push_str(&format!(
        "  client key {key}  (client demo; kept in {} for the next up)\n\n",
        data_dir.join("demo-key").display()
    ));
    out.push_str("Try:\n");
    out.push_str(&format!("  export BUSGATE_KEY={key}\n"));
    let auth = "-H \"Authorization: Bearer $BUSGATE_KEY\"";
    out.push_str(&format!(
        "  curl -s {host}/api/order {auth} -H 'content-type: application/json' -d '{{\"order_id\":\"A1\"}}'\n"
    ));
    out.push_str(&format!("  curl -s {host}/api/orders/A1 {auth}\n"));
    out.push_str(&format!(
        "  curl -s {host}/api/orders/slow2-A1 {auth}     # service2 too slow: complete=false after 800 ms\n"
    ));
    out.push_str(&format!(
        "  curl -s {host}/api/orders/missing1-A1 {auth}  # service1 does not know it: 404 problem\n"
    ));
    out.push_str(&format!(
        "  curl -si {host}/api/orders/A1 {auth} -H 'Prefer: respond-async'   # 202, then poll the Location\n\n"
    ));
    out.push_str("Ctrl-C stops everything.\n");
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_resolve_to_socket_addresses() {
        let a = |u: &str| nats_socket_addr(u).expect("resolves").to_string();
        assert_eq!(a("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(a("nats://127.0.0.1"), "127.0.0.1:4222");
        assert_eq!(a("nats://user:pw@127.0.0.1:5222/"), "127.0.0.1:5222");
        assert_eq!(a("127.0.0.1:6222"), "127.0.0.1:6222");
    }
}
