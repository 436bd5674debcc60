//! Starting the stack in order: NATS (unless one answers), the adapters process, a demo
//! service and its adapter per service without an upstream; and the readiness checks between.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::{timeout, Instant};

use busgate_gateway::config::settings::Settings;
use busgate_shared::micro::Verb;
use busgate_shared::runtime::{locate_nats_server, NATS_SERVER_HINT};

use super::args::{UpArgs, READY_WITHIN};
use super::children::{spawn, ChildSpec, Running};

/// Starts every child of the stack, in order, each once the one before it is ready; returns
/// what the banner says about NATS.
pub(super) async fn start_children(
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
    // The demo services' adapters are one process (one NATS connection, so a merge's replies
    // come from one connection: bench-results/README.md, "Fewer connections per merge").
    let mut adapter = ChildSpec::new(&worker)
        .envs(nats_env.clone())
        .arg("adapter");
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
        adapter = adapter.args([
            "--service",
            service,
            "--upstream",
            &format!("http://{listen}{}", demo_path(service)),
        ]);
    }
    if !demos.is_empty() {
        let name = demos
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("+");
        children.push(spawn(&format!("adapter-{name}"), adapter, data_dir)?);
    }
    // Services with an upstream come up once the gateway has seeded the configuration: the
    // adapters process follows it.
    wait_for_services(&nats, demos.iter()).await?;
    Ok(nats_note)
}

/// The path a demo service answers on: the `carriers` demo looks up the carrier a composed
/// route sends (`{carrier}`, see docs/routes.md), every other demo the order.
pub(super) fn demo_path(service: &str) -> &'static str {
    if service == "carriers" {
        "/carriers/{carrier}"
    } else {
        "/order/{order_id}"
    }
}

/// The services that get a demo: those of the settings without an upstream (none with
/// `--no-demo`).
pub(super) fn demo_services(args: &UpArgs, settings: &Settings) -> Vec<String> {
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
