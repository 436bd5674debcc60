//! `busgate up`: the whole local stack in one command.
//!
//! Starts `nats-server` with JetStream in a data dir of its own (only when nothing answers at
//! the configured NATS URL), a demo HTTP service and an adapter worker for every configured
//! service, and the gateway itself in this process; prints the URLs and a curl to try. Ctrl-C
//! (or SIGTERM) stops the gateway first, then the adapters, the demo services and NATS, each
//! with SIGTERM and, after a grace period, SIGKILL. A child that dies stops the whole stack.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tracing::{info, warn};

use busgate_shared::micro::Verb;
use busgate_shared::runtime::{locate_nats_server, shutdown_signal, NATS_SERVER_HINT};

use crate::config::settings::Settings;

/// Arguments of `busgate up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Settings file (TOML); its services each get a demo service and an adapter.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
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

/// A child process watched by a task of its own.
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
    let mut generated = Generated::default();
    if settings.admin.resolve_token()?.is_none() {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        settings.admin.token.clone_from(&token);
        generated.admin_token = Some(token);
    }
    // Callbacks work out of the box locally: a fresh secret, and loopback receivers allowed.
    if settings.callbacks.secret.is_empty() {
        settings.callbacks.secret = crate::jobs::callback::Signer::generate_secret();
        generated.callback_secret = Some(settings.callbacks.secret.clone());
    }
    for entry in ["127.0.0.0/8", "::1", "localhost"] {
        if !settings.callbacks.allow.iter().any(|a| a == entry) {
            settings.callbacks.allow.push(entry.into());
        }
    }
    std::fs::create_dir_all(args.data_dir.join("logs"))
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let (died_tx, mut died_rx) = mpsc::channel::<String>(8);
    let mut children: Vec<Running> = Vec::new();
    let started = start_children(&args, &settings, &data_dir, &died_tx, &mut children).await;
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
            let key = match timeout(READY_WITHIN, demo_key(admin_addr, &token)).await {
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

    let (died_note_tx, died_note_rx) = oneshot::channel::<String>();
    let shutdown = async move {
        tokio::select! {
            () = signal => {}
            Some(name) = died_rx.recv() => {
                let _ = died_note_tx.send(name);
            }
        }
    };
    let result = crate::run(settings, listener, admin, shutdown).await;
    banner.abort();
    stop_all(children).await;
    if let Ok(name) = died_note_rx.await {
        bail!(
            "{name} exited unexpectedly; see {}",
            data_dir.join("logs").display()
        );
    }
    result
}

async fn start_children(
    args: &UpArgs,
    settings: &Settings,
    data_dir: &Path,
    died: &mpsc::Sender<String>,
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
        let mut cmd = Command::new(&binary);
        cmd.arg("-a")
            .arg(nats_addr.ip().to_string())
            .arg("-p")
            .arg(nats_addr.port().to_string())
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .arg("-n")
            .arg("busgate-up");
        children.push(spawn("nats-server", cmd, data_dir, died)?);
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
    for (i, service) in settings.services.keys().enumerate() {
        let port = args
            .demo_port
            .checked_add(u16::try_from(i)?)
            .context("demo ports run past 65535")?;
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let mut demo = Command::new(&worker);
        demo.args([
            "demo",
            "--service",
            service,
            "--listen",
            &listen.to_string(),
        ]);
        children.push(spawn(&format!("demo-{service}"), demo, data_dir, died)?);
        wait_until(READY_WITHIN, || answers(listen))
            .await
            .with_context(|| format!("demo service {service} did not listen on {listen}"))?;
        let mut adapter = Command::new(&worker);
        adapter.env("BUSGATE_NATS__URL", &nats_url).args([
            "adapter",
            "--service",
            service,
            "--upstream",
            &format!("http://{listen}/order/{{order_id}}"),
        ]);
        children.push(spawn(
            &format!("adapter-{service}"),
            adapter,
            data_dir,
            died,
        )?);
    }
    wait_for_services(&nats_url, settings.services.keys()).await?;
    Ok(nats_note)
}

/// Waits until every service answers a NATS service-API ping.
async fn wait_for_services<'a>(
    nats_url: &str,
    services: impl Iterator<Item = &'a String>,
) -> anyhow::Result<()> {
    let client = busgate_shared::nats::connect(nats_url, "busgate up").await?;
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

fn spawn(
    name: &str,
    mut cmd: Command,
    data_dir: &Path,
    died: &mpsc::Sender<String>,
) -> anyhow::Result<Running> {
    let log_path = data_dir.join("logs").join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        // A group of its own: Ctrl-C reaches us only, and we stop children in order.
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    info!(name, pid = child.id(), log = %log_path.display(), "started");
    let (stop_tx, stop_rx) = oneshot::channel();
    let died = died.clone();
    let task_name = name.to_owned();
    let done = tokio::spawn(watch(task_name, child, stop_rx, died));
    Ok(Running {
        name: name.to_owned(),
        stop: stop_tx,
        done,
    })
}

/// Waits for the child to exit (reporting it as died) or for a stop request.
async fn watch(
    name: String,
    mut child: Child,
    stop: oneshot::Receiver<()>,
    died: mpsc::Sender<String>,
) {
    tokio::select! {
        status = child.wait() => {
            warn!(name, ?status, "exited");
            let _ = died.send(name).await;
        }
        _ = stop => {
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
async fn demo_key(admin: SocketAddr, token: &str) -> anyhow::Result<String> {
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
                        return Ok(secret.to_owned());
                    }
                }
                bail!("creating the demo client answered {status}");
            }
            200 => {
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
    for (i, service) in settings.services.keys().enumerate() {
        let port = usize::from(args.demo_port) + i;
        out.push_str(&format!(
            "  {service:<9} demo http://127.0.0.1:{port}/order/{{order_id}}, adapter on busgate.svc.{service}\n"
        ));
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
        "  client key {key}  (client demo; shown once)\n\n"
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
