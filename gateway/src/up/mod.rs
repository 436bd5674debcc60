//! `busgate up`: the whole local stack in one command.
//!
//! Starts `nats-server` with JetStream in a data dir of its own (only when nothing answers at
//! the configured NATS URL), `busgate-worker adapters` (which serves every service whose
//! configuration has an upstream, including those added later through the admin API or UI),
//! a demo HTTP service and its adapter for each configured service without an upstream (unless
//! `--no-demo`), and the gateway itself in this process; prints the URLs and a curl to try.
//! Ctrl-C (or SIGTERM) stops the gateway first, then the adapters, the demo services and NATS,
//! each with SIGTERM and, after a grace period, SIGKILL. A child that dies is logged and
//! started again after a jittered backoff (200 ms, doubling to 5 s; from 200 ms again once it
//! ran 30 s): the rest of the stack keeps serving meanwhile.
//!
//! The admin token and the callback secret that `up` generates are kept in the data dir
//! (`admin-token`, `callback-secret`, mode 0600) and used again by the next `up` with that
//! data dir: a bookmarked UI link keeps working, and callbacks pending in JetStream stay
//! verifiable with the secret they will be signed with.
//!
//! Part of the binary, not of the gateway's library: [`stack`] starts the children in order,
//! [`children`] keeps each one running (restarted with the one backoff, stopped through its
//! drain), [`banner`] makes the demo client's key and prints the URLs.

mod banner;
mod children;
mod stack;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::timeout;
use tracing::warn;

use busgate_gateway::config::settings::Settings;
use busgate_gateway::error::StartupError;
use busgate_gateway::jobs::callback::Signer;
use busgate_shared::runtime::shutdown_signal;

use self::children::{stop_all, Running};

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
/// How long a child may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(15);
/// The admin token's file in the data dir.
const TOKEN_FILE: &str = "admin-token";
/// The callback secret's file in the data dir.
const CALLBACK_SECRET_FILE: &str = "callback-secret";

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
    let admin_token = settings
        .admin
        .resolve_token()
        .map_err(StartupError::InvalidSettings)?;
    if admin_token.is_none() {
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
            |s| Signer::new(s).is_ok(),
            Signer::generate_secret,
        )?;
        generated.callback_secret = Some(settings.callbacks.secret.clone());
    }
    for entry in ["127.0.0.0/8", "::1", "localhost"] {
        if !settings.callbacks.allow.iter().any(|a| a == entry) {
            settings.callbacks.allow.push(entry.into());
        }
    }
    let mut children: Vec<Running> = Vec::new();
    let started = stack::start_children(&args, &settings, &data_dir, &mut children).await;
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
                return Err(StartupError::Listen { addr, source: e }.into());
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
        let token = settings
            .admin
            .resolve_token()
            .map_err(StartupError::InvalidSettings)?
            .unwrap_or_default();
        tokio::spawn(async move {
            let kept = data_dir.join("demo-key");
            let key = match timeout(READY_WITHIN, banner::demo_key(admin_addr, &token, &kept)).await
            {
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
            banner::print_banner(
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

    let result = busgate_gateway::run(settings, listener, admin, signal).await;
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
