//! `busgate config diff / apply / export`: configuration as code. A file (the settings file's
//! `[services.*]`, `[routes.*]`, `[clients.*]`) is compared with the store, applied to it, or
//! made from it, through one of two [`Target`]s: the admin API of a running gateway
//! (`--admin URL`, its token from `BUSGATE_ADMIN_TOKEN`), or NATS directly with the gateway's
//! settings. What changes is planned once, by `busgate_gateway::config::plan` (pure), for both.
//!
//! Apply is all-or-nothing where the store allows: the whole configuration it makes is
//! validated, then every object's revision is checked again, and only then is anything
//! written, each write a compare-and-set on the revision read. A write that loses its race
//! stops the apply, names the object, and the writes before it are undone (each again on its
//! own revision). `busgate up --config` applies its file through [`apply`] too.
//!
//! Part of the binary: [`target`] reads and writes the store (NATS or the admin API).

pub mod target;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use busgate_gateway::config::file;
use busgate_gateway::config::plan::{self, Plan};
use busgate_gateway::config::settings::Settings;
use busgate_gateway::error::{EXIT_BAD_SETTINGS, EXIT_SOFTWARE, EXIT_UNAVAILABLE};
use busgate_shared::config::ConfigSpec;
use clap::{Args, Subcommand};

pub use self::target::Target;

/// Exit code when an object changed while an apply was checking or writing (EX_TEMPFAIL: run
/// it again).
pub const EXIT_CONFLICT: u8 = 75;

/// `busgate config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// What applying FILE would change; exit 0 when nothing, 1 when something.
    Diff {
        /// The configuration file (TOML; `.json` for an export made with `--json`).
        file: PathBuf,
        /// Count objects the file does not name as deletions.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        to: To,
    },
    /// Makes the store match FILE: creates and updates (and with --prune deletes), each
    /// compare-and-set on the revision read, all validated before any is written.
    Apply {
        /// The configuration file (TOML; `.json` for an export made with `--json`).
        file: PathBuf,
        /// Delete services, routes and clients the file does not name.
        #[arg(long)]
        prune: bool,
        /// Show the diff, write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        to: To,
    },
    /// Prints the store as a file that `apply` takes (TOML, or JSON with --json).
    Export {
        /// JSON instead of TOML.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        to: To,
    },
}

/// Where the store is: a gateway's admin API, or NATS with the gateway's settings.
#[derive(Debug, Clone, Args)]
pub struct To {
    /// A running gateway's admin API (`http://127.0.0.1:9090`); its token comes from the
    /// environment variable BUSGATE_ADMIN_TOKEN, never from the command line.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// Without --admin: the gateway's settings file (its `[nats]`; BUSGATE_… variables
    /// override it, as for `busgate gateway`).
    #[arg(long, short, value_name = "SETTINGS")]
    pub config: Option<PathBuf>,
}

/// Why a `busgate config` command failed, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The file, the settings, or the configuration they make is invalid: nothing written.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// An object changed meanwhile.
    #[error("{object} changed while applying (another writer): {detail}")]
    Conflict {
        /// `routes.order`.
        object: String,
        /// What was done about it.
        detail: String,
    },
    /// Anything else (the store refused a write, an answer that does not parse).
    #[error("{0}")]
    Failed(String),
}

impl CmdError {
    /// The exit code of this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Invalid(_) => EXIT_BAD_SETTINGS,
            CmdError::Unavailable(_) => EXIT_UNAVAILABLE,
            CmdError::Conflict { .. } => EXIT_CONFLICT,
            CmdError::Failed(_) => EXIT_SOFTWARE,
        }
    }
}

impl From<busgate_shared::Error> for CmdError {
    fn from(e: busgate_shared::Error) -> Self {
        CmdError::Invalid(e.to_string())
    }
}

/// Runs a `busgate config` command; its exit code.
pub async fn run(command: ConfigCommand) -> ExitCode {
    match execute(command).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("busgate config: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(command: ConfigCommand) -> Result<u8, CmdError> {
    match command {
        ConfigCommand::Diff { file, prune, to } => {
            let spec = read_file(&file)?;
            let target = connect(&to).await?;
            let plan = plan::plan(&target.read().await?, &spec, prune)?;
            print!("{}", plan::render(&plan));
            Ok(u8::from(!plan.is_empty()))
        }
        ConfigCommand::Apply {
            file,
            prune,
            dry_run,
            to,
        } => {
            let spec = read_file(&file)?;
            let target = connect(&to).await?;
            let plan = apply(&target, &spec, prune, dry_run).await?;
            print!("{}", plan::render(&plan));
            if !dry_run && !plan.is_empty() {
                println!("applied");
            }
            Ok(0)
        }
        ConfigCommand::Export { json, to } => {
            let target = connect(&to).await?;
            let spec = plan::spec_of(&target.read().await?)?;
            let text = if json {
                file::to_json(&spec)?
            } else {
                file::to_toml(&spec)?
            };
            println!("{}", text.trim_end());
            Ok(0)
        }
    }
}

/// The configuration in a file (TOML, or JSON by its extension).
pub fn read_file(path: &Path) -> Result<ConfigSpec, CmdError> {
    if file::is_json(path) {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| CmdError::Invalid(format!("{what}: cannot read: {e}")))?;
        Ok(file::parse_json(&text, &what)?)
    } else {
        Ok(file::load(path)?)
    }
}

/// The target `to` names: the admin API, or NATS with the settings (logging set up for the
/// audit events of direct writes).
async fn connect(to: &To) -> Result<Target, CmdError> {
    if let Some(url) = &to.admin {
        let token = std::env::var("BUSGATE_ADMIN_TOKEN").map_err(|_| {
            CmdError::Invalid("--admin needs the admin token in BUSGATE_ADMIN_TOKEN".into())
        })?;
        return Target::admin(url, &token);
    }
    let settings = Settings::load(to.config.as_deref())
        .and_then(|s| s.validate().map(|_| s))
        .map_err(|e| CmdError::Invalid(e.to_string()))?;
    busgate_shared::runtime::init_logging(settings.log.format, &settings.log.level);
    Target::nats(&settings).await
}

/// Plans `spec` against the store and (unless `dry_run`) applies it: every object's revision
/// checked again first, then each write compare-and-set; a lost race undoes what was written.
pub async fn apply(
    target: &Target,
    spec: &ConfigSpec,
    prune: bool,
    dry_run: bool,
) -> Result<Plan, CmdError> {
    let plan = plan::plan(&target.read().await?, spec, prune)?;
    if dry_run || plan.is_empty() {
        return Ok(plan);
    }
    target.check(&plan)?;
    for step in &plan.steps {
        let now = target.revision(step).await?;
        if now != step.expected() {
            return Err(CmdError::Conflict {
                object: step.key(),
                detail: format!(
                    "read at {}, now {}; nothing was written",
                    revision_text(step.expected()),
                    revision_text(now)
                ),
            });
        }
    }
    let mut done = Vec::new();
    for step in &plan.steps {
        match target.write(step).await {
            Ok(revision) => done.push((step, revision)),
            Err(e) => {
                let undone = undo(target, &done).await;
                return Err(match e {
                    CmdError::Conflict { object, .. } => CmdError::Conflict {
                        object,
                        detail: undone,
                    },
                    other => CmdError::Failed(format!("{other}; {undone}")),
                });
            }
        }
    }
    Ok(plan)
}

/// Undoes written steps, last first, each on the revision it wrote; says what it did.
async fn undo(target: &Target, done: &[(&plan::Step, Option<u64>)]) -> String {
    if done.is_empty() {
        return "nothing was written".into();
    }
    let mut failed = Vec::new();
    for (step, revision) in done.iter().rev() {
        if let Err(e) = target.undo(step, *revision).await {
            tracing::warn!(object = %step.key(), error = %e, "cannot undo a write of this apply");
            failed.push(step.key());
        }
    }
    if failed.is_empty() {
        format!("the {} changes written before were undone", done.len())
    } else {
        format!("these changes written before could not be undone: {failed:?}")
    }
}

fn revision_text(revision: Option<u64>) -> String {
    revision.map_or_else(|| "absent".to_owned(), |r| format!("revision {r}"))
}
