//! `busgate up`: placeholder replaced below.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
}
pub async fn run(_a: UpArgs, _s: crate::settings::Settings) -> anyhow::Result<()> {
    Ok(())
}
