//! End-to-end: `busgate health`, the image's health check: exit 0 only when `/health/ready`
//! answers 200; 1 (with the reason) when it is not ready, not there, not answering in time,
//! or asked wrongly.

use busgate_tests::fixture::Settings;
use busgate_tests::support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{bin, Gateway, NatsServer};

fn health(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin("busgate"))
        .arg("health")
        .args(args)
        .output()
        .expect("busgate health runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn health_exits_0_only_when_ready() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let ready = gateway.url("/health/ready");
    let (code, err) = tokio::task::spawn_blocking(move || health(&["--url", &ready]))
        .await
        .expect("probe");
    assert_eq!(code, Some(0), "{err}");

    // Not the readiness path: 404 is not ready.
    let missing = gateway.url("/health/nope?token=secret-q");
    let (code, err) = tokio::task::spawn_blocking(move || health(&["--url", &missing]))
        .await
        .expect("probe");
    assert_eq!(code, Some(1));
    assert!(err.contains("404") && !err.contains("secret-q"), "{err}");

    // NATS gone: the gateway answers 503 on /health/ready, and the probe says not ready.
    drop(nats);
    let ready = gateway.url("/health/ready");
    support::eventually(Duration::from_secs(20), || {
        let ready = ready.clone();
        async move {
            tokio::task::spawn_blocking(move || health(&["--url", &ready]).0 == Some(1))
                .await
                .expect("probe")
        }
    })
    .await;
}

#[test]
fn health_fails_on_nothing_a_silent_listener_or_bad_arguments() {
    // Nothing listens.
    let port = support::free_port();
    let (code, err) = health(&["--url", &format!("http://127.0.0.1:{port}/health/ready")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("busgate health:"), "{err}");

    // Accepts and never answers: bounded by --timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let since = Instant::now();
    let (code, _) = health(&[
        "--url",
        &format!("http://{addr}/health/ready"),
        "--timeout",
        "500ms",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        since.elapsed() < Duration::from_secs(5),
        "{:?}",
        since.elapsed()
    );

    // Bad arguments: a CA file that is not there, a scheme that is not HTTP.
    let (code, err) = health(&["--ca-file", "/nonexistent/ca.pem"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--ca-file"), "{err}");
    let (code, _) = health(&["--url", "ftp://127.0.0.1/health/ready"]);
    assert_eq!(code, Some(1));
    drop(silent);
}

/// Over HTTPS: a certificate of a CA the probe is given (`--ca-file`, or
/// `BUSGATE_HEALTH_CA_FILE` as compose sets it) is ready; without that CA the probe fails and
/// says why.
#[tokio::test(flavor = "multi_thread")]
async fn health_over_https_trusts_only_the_ca_it_is_given() {
    let dir = tempfile::tempdir().expect("dir");
    let test_ca = support::TestCa::new();
    let (cert, key) = test_ca.issue("leaf", &["localhost", "127.0.0.1"]);
    std::fs::create_dir(dir.path().join("health")).expect("mkdir");
    std::fs::write(dir.path().join("health/ready"), "{}").expect("file");
    let port = support::free_port();
    let mut server = Command::new("openssl");
    server
        .args(["s_server", "-quiet", "-WWW", "-cert", &cert, "-key", &key])
        .args(["-accept", &port.to_string()])
        .current_dir(dir.path());
    let _server = support::Proc::spawn("openssl s_server", server);
    support::eventually(Duration::from_secs(5), || async {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let url = format!("https://127.0.0.1:{port}/health/ready");
    let ca = test_ca.ca_file.clone();
    let (code, err) = health(&["--url", &url, "--ca-file", &ca]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = health(&["--url", &url]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let out = Command::new(bin("busgate"))
        .arg("health")
        .env("BUSGATE_HEALTH_URL", &url)
        .env("BUSGATE_HEALTH_CA_FILE", &ca)
        .output()
        .expect("busgate health runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
