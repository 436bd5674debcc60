//! The `busgate` binary: `busgate gateway` runs a gateway, `busgate up` the local stack,
//! `busgate config` diffs, applies and exports configuration files (`config_cmd`), `busgate
//! health` probes a gateway's readiness (`health_cmd`: the image's health check).

use std::path::PathBuf;
use std::process::ExitCode;

use busgate_gateway::config::settings::Settings;
use busgate_gateway::error::StartupError;
use busgate_shared::runtime;
use clap::{Parser, Subcommand};

mod config_cmd;
mod health_cmd;
mod up;

// glibc's malloc was the top cost in profiles of the hot path (malloc, free and
// malloc_consolidate together about 12 % of all CPU under load); mimalloc is faster there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Busgate: an API gateway that merges internal services' answers over NATS.
#[derive(Debug, Parser)]
#[command(name = "busgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway instance.
    Gateway {
        /// Settings file (TOML); environment variables BUSGATE_… override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the local stack: nats-server, gateway, two demo services and their adapters.
    Up(up::UpArgs),
    /// Configuration as code: diff, apply or export the store's services, routes and clients.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Probe a gateway's `/health/ready`: exit 0 when it answers 200 (the image's health check).
    Health(health_cmd::HealthArgs),
    /// Check a settings file and print the effective settings (as JSON).
    CheckConfig {
        /// Settings file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(config: Option<&std::path::Path>) -> Result<Settings, ExitCode> {
    let settings = Settings::load(config).and_then(|s| s.validate().map(|_| s));
    settings.map_err(|e| {
        eprintln!("busgate: {e}");
        ExitCode::from(e.exit_code())
    })
}

/// The exit code of a failed run: a startup failure's own (64 for bad settings), else 1.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    ExitCode::from(
        e.downcast_ref::<StartupError>()
            .map_or(1, StartupError::exit_code),
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any task can build an HTTP client or a TLS connection (`up`'s banner task makes
    // the demo client's key while the gateway starts): rustls has no default provider here.
    runtime::install_crypto_provider();
    match cli.command {
        Command::Gateway { config } => {
            let settings = match load(config.as_deref()) {
                Ok(s) => s,
                Err(code) => return code,
            };
            runtime::init_logging(settings.log.format, &settings.log.level);
            // SIGTERM and SIGINT are ours from here on, not only once the server runs: a
            // signal that came while the gateway was starting would end it without a drain.
            let shutdown = runtime::shutdown_signal();
            tokio::pin!(shutdown);
            let _ = futures::poll!(&mut shutdown);
            let mut listeners = Vec::new();
            for addr in [settings.http.listen, settings.admin.listen] {
                match busgate_shared::runtime::listen(addr) {
                    Ok(l) => listeners.push(l),
                    Err(source) => {
                        let e = StartupError::Listen { addr, source };
                        tracing::error!(%addr, error = %e, "cannot listen");
                        return ExitCode::from(e.exit_code());
                    }
                }
            }
            let (Some(admin), Some(public)) = (listeners.pop(), listeners.pop()) else {
                return ExitCode::from(1);
            };
            match busgate_gateway::run(settings, public, admin, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "gateway failed");
                    exit_code(&e)
                }
            }
        }
        Command::Up(args) => {
            let settings = match load(args.config.as_deref()) {
                Ok(s) => s,
                Err(code) => return code,
            };
            runtime::init_logging(settings.log.format, &settings.log.level);
            match up::run(args, settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("busgate up: {e:#}");
                    exit_code(&e)
                }
            }
        }
        Command::Config(command) => config_cmd::run(command).await,
        Command::Health(args) => health_cmd::run(args).await,
        Command::CheckConfig { config } => match load(config.as_deref()) {
            Ok(s) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&redacted(&s)).unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}

/// What `check-config` prints: the effective settings as JSON, secrets redacted.
fn redacted(settings: &Settings) -> serde_json::Value {
    serde_json::to_value(settings.redacted()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_output_holds_no_secret() {
        let mut s = Settings::default();
        s.nats.url = "nats://u:nats-pass-1@h:4222,tok-2@g".into();
        s.admin.token = "admin-token-3".repeat(3);
        s.callbacks.secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=".into();
        let text = redacted(&s).to_string();
        for secret in ["nats-pass-1", "tok-2", "admin-token-3", "c2VjcmV0"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("nats://***@h:4222,***@g"), "{text}");
        assert_eq!(redacted(&s)["admin"]["token"], "***");
        assert_eq!(redacted(&Settings::default())["admin"]["token"], "");
    }

    #[test]
    fn check_config_shows_no_jwks_credentials_or_query() {
        let mut s = Settings::default();
        let issuer = |url: &str| {
            serde_json::from_value::<busgate_gateway::config::settings::IssuerSettings>(
                serde_json::json!({"issuer": "https://idp.example", "audience": "busgate",
                    "algorithm": "RS256", "jwks_url": url}),
            )
            .expect("issuer")
        };
        s.auth.issuers = vec![
            issuer("https://jwks-user:jwks-pass-1@idp.example:8443/keys?access_token=jwks-tok-2#frag-3"),
            issuer("https://only-user-4@idp.example/k"),
            issuer("http://idp.example/plain"),
            issuer("::not a url jwks-pass-5"),
        ];
        let text = redacted(&s).to_string();
        for secret in [
            "jwks-user",
            "jwks-pass-1",
            "jwks-tok-2",
            "access_token",
            "frag-3",
            "only-user-4",
            "jwks-pass-5",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let shown = redacted(&s)["auth"]["issuers"].clone();
        assert_eq!(
            shown[0]["jwks_url"],
            "https://***@idp.example:8443/keys?***#***"
        );
        assert_eq!(shown[1]["jwks_url"], "https://***@idp.example/k");
        assert_eq!(shown[2]["jwks_url"], "http://idp.example/plain");
        assert_eq!(shown[3]["jwks_url"], "***");
    }

    #[test]
    fn a_startup_failure_exits_with_its_code_and_any_other_with_1() {
        let bad = StartupError::InvalidSettings(busgate_shared::Error::invalid("http", "x"));
        let e = anyhow::Error::from(bad).context("starting");
        assert_eq!(exit_code(&e), ExitCode::from(64));
        assert_eq!(
            exit_code(&anyhow::anyhow!("server failed")),
            ExitCode::from(1)
        );
    }
}
