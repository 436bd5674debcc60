//! The children of `busgate up`: what each is started with, and the task that restarts it when
//! it dies (delays from the one jittered backoff) and stops it when its drain is signalled.
//! Each child has a drain of its own, so that `stop_all` stops them one by one, in reverse
//! start order.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};
use tracing::{info, warn};

use busgate_shared::backoff::ExponentialBackoff;
use busgate_shared::drain;

/// How long a child may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a child must have run for its restart backoff to start again from the shortest.
const RAN_LONG_ENOUGH: Duration = Duration::from_secs(30);
/// The first restart delay, doubled at each quick death up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(200);
/// The longest restart delay.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// The share of a restart delay added at random: children that died together do not come
/// back in step.
const RESTART_JITTER: f64 = 0.2;

/// A child process watched (and restarted) by a task of its own.
pub(super) struct Running {
    name: String,
    /// Signalled to stop the child; drained once its task has stopped it.
    stop: drain::Signal,
    done: tokio::task::JoinHandle<()>,
}

/// What a child is started with, again at each restart.
pub(super) struct ChildSpec {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

impl ChildSpec {
    pub(super) fn new(program: &Path) -> Self {
        ChildSpec {
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub(super) fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub(super) fn args<'a>(mut self, args: impl IntoIterator<Item = &'a str>) -> Self {
        self.args.extend(args.into_iter().map(OsString::from));
        self
    }

    /// Environment variables (where secrets such as a NATS URL with credentials go: a
    /// process list shows argv to every user of the machine).
    pub(super) fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
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
pub(super) fn spawn(name: &str, spec: ChildSpec, data_dir: &Path) -> anyhow::Result<Running> {
    let log_path = data_dir.join("logs").join(format!("{name}.log"));
    // Truncated once per `up`; restarts append.
    std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let child = spec.start(name, &log_path)?;
    let (stop, watch) = drain::channel();
    let done = tokio::spawn(supervise(name.to_owned(), spec, log_path, child, watch));
    Ok(Running {
        name: name.to_owned(),
        stop,
        done,
    })
}

/// Waits for the child to exit, then logs it and starts it again after a backoff; when `drain`
/// is signalled, stops it (SIGTERM, then SIGKILL after the grace period) and lets go.
async fn supervise(
    name: String,
    spec: ChildSpec,
    log_path: PathBuf,
    mut child: Child,
    drain: drain::Watch,
) {
    let mut backoff =
        ExponentialBackoff::new(FIRST_RESTART_DELAY, MAX_RESTART_DELAY, RESTART_JITTER).stream();
    loop {
        let started = Instant::now();
        tokio::select! {
            status = child.wait() => {
                if started.elapsed() >= RAN_LONG_ENOUGH {
                    backoff.reset();
                }
                warn!(name, ?status, attempt = backoff.attempts() + 1, "exited, restarting");
            }
            release = drain.clone().signaled() => {
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
                drop(release);
                return;
            }
        }
        // Restart, retrying with the backoff while it cannot even start.
        loop {
            if !backoff.wait(&drain).await {
                return;
            }
            match spec.start(&name, &log_path) {
                Ok(next) => {
                    child = next;
                    break;
                }
                Err(e) => {
                    warn!(name, error = %format!("{e:#}"), attempt = backoff.attempts() + 1, "cannot restart")
                }
            }
        }
    }
}

/// Stops children in reverse start order (adapters before demos, NATS last).
pub(super) async fn stop_all(children: Vec<Running>) {
    for running in children.into_iter().rev() {
        running.stop.drain().await;
        if let Err(e) = running.done.await {
            warn!(name = running.name, error = %e, "watcher failed");
        }
    }
}
