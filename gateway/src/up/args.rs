//! What `busgate up` is told: its command-line arguments, and how long a child may take.

use std::path::PathBuf;
use std::time::Duration;

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
pub(super) const READY_WITHIN: Duration = Duration::from_secs(15);
