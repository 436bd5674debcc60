//! `busgate up`: the whole local stack in one command.
//!
//! Starts `nats-server` with JetStream in a data dir of its own (only when nothing answers at
//! the configured NATS URL), `busgate-worker adapters` (which serves every service whose
//! configuration has an upstream, including those added later through the admin API or UI),
//! a demo HTTP service and its adapter for each configured service without an upstream (unless
//! `--no-demo`), and the gateway itself in this process; prints the URLs and a curl to try.
//! With `--config FILE` the file's configuration is applied to the store before the gateway
//! starts (`busgate config apply` without `--prune`; the diff is printed), so a second `up`
//! with another file in the same data dir runs that file's services and routes.
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

mod args;
mod banner;
mod children;
mod secrets;
mod stack;

pub use args::UpArgs;

use anyhow::{bail, Context};
use tokio::time::timeout;
use tracing::warn;

use busgate_gateway::config::settings::Settings;
use busgate_gateway::error::StartupError;
use busgate_gateway::jobs::callback::Signer;
use busgate_shared::runtime::shutdown_signal;

use self::args::READY_WITHIN;
use self::children::{stop_all, Running};
use self::secrets::{kept_secret, Generated, CALLBACK_SECRET_FILE, TOKEN_FILE};

/// Makes the store hold the configuration of `up --config FILE` (the file's services, routes
/// and clients; the built-in ones for a section it leaves out, as the banner shows them),
/// printing what changed. Nothing is deleted: what the file does not name (made earlier
/// through the admin API or UI, or by an earlier file) is kept and listed.
async fn apply_file(file: &std::path::Path, settings: &Settings) -> anyhow::Result<()> {
    use busgate_gateway::admin::direct::Direct;
    use busgate_gateway::config::apply::{apply, ApplyError};
    let target = Direct::connect(&settings.nats, settings.jobs.replicas)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match apply(&target, &settings.config_spec(), false, false).await {
        Ok(plan) => {
            let what = if plan.is_empty() {
                "already in the configuration store"
            } else {
                "applied to the configuration store"
            };
            println!(
                "busgate up: {} {what}:\n{}",
                file.display(),
                busgate_gateway::config::plan::render(&plan)
            );
            Ok(())
        }
        Err(ApplyError::Invalid(e)) => Err(StartupError::InvalidSettings(
            busgate_shared::Error::invalid(file.display().to_string(), e),
        )
        .into()),
        Err(e) => Err(anyhow::anyhow!("cannot apply {}: {e}", file.display())),
    }
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
    // A local stack is watched by a person: one access line per request, unless the
    // environment turns it off (`BUSGATE_LOG__ACCESS=false`).
    if std::env::var_os("BUSGATE_LOG__ACCESS").is_none() {
        settings.log.access = true;
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
    if let Some(file) = &args.config {
        if let Err(e) = apply_file(file, &settings).await {
            stop_all(children).await;
            return Err(e);
        }
    }

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
