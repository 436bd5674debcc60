//! `busgate config diff / apply / export`: configuration as code. A file (the settings file's
//! `[services.*]`, `[routes.*]`, `[clients.*]`) is compared with the store, applied to it, or
//! made from it, through one of two targets: a running gateway's admin API (`--admin URL`,
//! its token from `BUSGATE_ADMIN_TOKEN`; [`admin`]), or NATS directly with the gateway's
//! settings (`busgate_gateway::admin::direct`). Both share the plan and its diff
//! (`busgate_gateway::config::plan`) and the apply (`busgate_gateway::config::apply`:
//! validated whole, every revision checked, then each write compare-and-set).

pub mod admin;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use busgate_gateway::admin::direct::Direct;
use busgate_gateway::config::apply::{apply, ApplyError, Target};
use busgate_gateway::config::file;
use busgate_gateway::config::plan;
use busgate_gateway::config::settings::Settings;
use busgate_shared::config::ConfigSpec;
use clap::{Args, Subcommand};

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

impl ConfigCommand {
    fn to(&self) -> &To {
        match self {
            ConfigCommand::Diff { to, .. }
            | ConfigCommand::Apply { to, .. }
            | ConfigCommand::Export { to, .. } => to,
        }
    }
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

/// Runs a `busgate config` command; its exit code (diff: 0 equal, 1 different; failures:
/// 64 invalid, 69 unreachable, 75 conflict, 70 other).
pub async fn run(command: ConfigCommand) -> ExitCode {
    let result = match command.to().admin.clone() {
        Some(url) => match admin::AdminApi::from_env(&url) {
            Ok(target) => execute(&target, command).await,
            Err(e) => Err(e),
        },
        None => match direct(command.to()).await {
            Ok(target) => execute(&target, command).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("busgate config: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// NATS with the settings `to` names (logging set up for the audit events of its writes).
async fn direct(to: &To) -> Result<Direct, ApplyError> {
    let settings = Settings::load(to.config.as_deref())
        .and_then(|s| s.validate().map(|_| s))
        .map_err(|e| ApplyError::Invalid(e.to_string()))?;
    busgate_shared::runtime::init_logging(settings.log.format, &settings.log.level);
    Direct::connect(&settings.nats, settings.jobs.replicas).await
}

async fn execute<T: Target>(target: &T, command: ConfigCommand) -> Result<u8, ApplyError> {
    match command {
        ConfigCommand::Diff { file, prune, .. } => {
            let spec = read_file(&file)?;
            let plan = plan::plan(&target.read().await?, &spec, prune)?;
            print!("{}", plan::render(&plan));
            Ok(u8::from(!plan.is_empty()))
        }
        ConfigCommand::Apply {
            file,
            prune,
            dry_run,
            ..
        } => {
            let spec = read_file(&file)?;
            let plan = apply(target, &spec, prune, dry_run).await?;
            print!("{}", plan::render(&plan));
            if dry_run {
                println!("dry run: nothing written");
            } else if !plan.is_empty() {
                println!("applied");
            }
            Ok(0)
        }
        ConfigCommand::Export { json, .. } => {
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
pub fn read_file(path: &Path) -> Result<ConfigSpec, ApplyError> {
    if file::is_json(path) {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ApplyError::Invalid(format!("{what}: cannot read: {e}")))?;
        Ok(file::parse_json(&text, &what)?)
    } else {
        Ok(file::load(path)?)
    }
}
