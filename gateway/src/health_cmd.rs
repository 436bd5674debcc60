//! `busgate health`: the probe a container's health check runs. It asks a gateway's
//! `/health/ready` and exits 0 when the answer is 200, 1 otherwise (not ready, refused, timed
//! out, a certificate it does not trust), with the reason on standard error. The image has no
//! shell and no HTTP client: this is its `HEALTHCHECK` (deploy/Dockerfile, deploy/compose.yaml).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// What `busgate health` is told.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The readiness URL to ask (`https://…` for a listener with `[http.tls]`). From
    /// `BUSGATE_HEALTH_URL` when not given: a container sets it once for the image's
    /// `HEALTHCHECK` (podman-compose runs a compose file's health check through a shell,
    /// which the image does not have).
    #[arg(
        long,
        env = "BUSGATE_HEALTH_URL",
        default_value = "http://127.0.0.1:8080/health/ready"
    )]
    pub url: String,
    /// A PEM file of CA certificates to trust besides the system's (a certificate made for
    /// local use by deploy/make-cert.sh). From `BUSGATE_HEALTH_CA_FILE` when not given.
    #[arg(long, env = "BUSGATE_HEALTH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// How long the whole probe may take.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Runs the probe; the exit code says whether the gateway is ready.
pub async fn run(args: HealthArgs) -> ExitCode {
    match probe(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("busgate health: {reason}");
            ExitCode::from(1)
        }
    }
}

async fn probe(args: &HealthArgs) -> Result<(), String> {
    let url = reqwest::Url::parse(&args.url).map_err(|e| format!("--url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("--url: use http:// or https://".into());
    }
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(args.timeout)
        .connect_timeout(args.timeout)
        .user_agent(concat!("busgate-health/", env!("CARGO_PKG_VERSION")));
    if let Some(file) = &args.ca_file {
        let pem = std::fs::read(file).map_err(|e| format!("--ca-file {}: {e}", file.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("--ca-file {}: {e}", file.display()))?;
        if certs.is_empty() {
            return Err(format!("--ca-file {}: no certificate", file.display()));
        }
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder.build().map_err(|e| format!("http client: {e}"))?;
    // The URL may carry nothing secret, but say only where it went, without a query.
    let shown = format!(
        "{}://{}{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort],
        url.path()
    );
    let answer = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{shown}: {}", error_chain(&e)))?;
    match answer.status().as_u16() {
        200 => Ok(()),
        status => Err(format!("{shown}: {status}, not ready")),
    }
}

/// An error with its causes, on one line (reqwest's own message stops at "error sending
/// request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
