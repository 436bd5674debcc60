//! The production edge, over TLS and HTTP/2: curl with HTTP/2 and HTTP/1.1 to a certificate
//! made for the test (ALPN picks h2), h2c with prior knowledge, a certificate replaced while
//! connections stay open (and a broken one refused), openings that stall closed, HTTP/2's
//! limits announced and enforced, and an attacker's raw HTTP/2 client: a rapid-reset burst and
//! a CONTINUATION flood, during and after which the gateway still answers at once, has not
//! grown, and has closed the attacker's connection.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use busgate_tests::fixture::Settings;
use busgate_tests::support::{eventually, Gateway, NatsServer, TestCa, READY_WITHIN};

/// A gateway serving TLS with `cert_file`/`key_file` (checked every 200 ms), once ready.
async fn tls_gateway(nats: &NatsServer, ca: &str, cert_file: &str, key_file: &str) -> Gateway {
    let gateway = Gateway::start_unready(nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__TLS__CERT_FILE", cert_file)
            .env("BUSGATE_HTTP__TLS__KEY_FILE", key_file)
            .env("BUSGATE_HTTP__TLS__RELOAD_INTERVAL", "200ms");
    })
    .await;
    let addr = addr(&gateway);
    eventually(READY_WITHIN, || async {
        curl(
            &["--http1.1", "--cacert", ca],
            &format!("https://{addr}/health/ready"),
        )
        .0 == "200"
    })
    .await;
    gateway
}

/// `host:port` of the public listener.
fn addr(gateway: &Gateway) -> String {
    gateway.base.trim_start_matches("http://").to_owned()
}

/// curl with `args` to `url`: (status, HTTP version) as curl reports them.
fn curl(args: &[&str], url: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "5"])
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split_whitespace();
    (
        parts.next().unwrap_or_default().to_owned(),
        parts.next().unwrap_or_default().to_owned(),
    )
}

/// A TLS connection to `addr` trusting `ca_file`, offering `alpn`.
async fn tls_connect(addr: &str, ca_file: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    busgate_shared::runtime::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("ca") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake")
}

/// The certificate the server presented on `stream`.
fn served(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

/// The first certificate of a PEM file.
fn first_cert(file: &str) -> Vec<u8> {
    CertificateDer::pem_file_iter(file)
        .expect("pem")
        .next()
        .expect("a certificate")
        .expect("parsed")
        .to_vec()
}

/// `GET /health/live` over a kept-alive HTTP/1.1 connection: the status and how long it took.
async fn h1_get<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> (u16, Duration) {
    let started = Instant::now();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The health answer is small: its head and body arrive in a read or two.
    while !answer.ends_with(b"}") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let status = String::from_utf8_lossy(&answer[9..12]).parse().unwrap_or(0);
    (status, started.elapsed())
}

/// HTTP/2 and HTTP/1.1 over TLS with curl trusting the test CA (ALPN chooses h2 when both
/// are offered), and cleartext h2c with prior knowledge on a gateway configured for it.
#[tokio::test]
async fn tls_speaks_h2_and_http11_and_h2c_takes_prior_knowledge() {
    let nats = NatsServer::start();
    let ca = TestCa::new();
    let (cert, key) = ca.issue("edge", &["localhost", "127.0.0.1"]);
    let gateway = tls_gateway(&nats, &ca.ca_file, &cert, &key).await;
    let url = format!("https://{}/health/live", addr(&gateway));
    assert_eq!(
        curl(&["--http2", "--cacert", &ca.ca_file], &url),
        ("200".into(), "2".into())
    );
    assert_eq!(
        curl(&["--http1.1", "--cacert", &ca.ca_file], &url),
        ("200".into(), "1.1".into())
    );
    // Not trusted without the CA.
    assert_eq!(curl(&["--http2"], &url).0, "000");
    // ALPN: h2 preferred when offered with http/1.1; http/1.1 alone is taken.
    let both = tls_connect(&addr(&gateway), &ca.ca_file, &[b"http/1.1", b"h2"]).await;
    assert_eq!(both.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h1 = tls_connect(&addr(&gateway), &ca.ca_file, &[b"http/1.1"]).await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(h1_get(&mut h1).await.0, 200);
    // Cleartext is not served on a TLS listener.
    assert_eq!(
        curl(
            &["--http1.1"],
            &format!("http://{}/health/live", addr(&gateway))
        )
        .0,
        "000"
    );

    let h2c = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__H2C", "true");
    })
    .await;
    let url = h2c.url("/health/live");
    assert_eq!(
        curl(&["--http2-prior-knowledge"], &url),
        ("200".into(), "2".into())
    );
    assert_eq!(curl(&["--http1.1"], &url), ("200".into(), "1.1".into()));
}

/// A new certificate is served to new connections within 5 s while an open connection keeps
/// working; a broken file (and a key of another certificate) keeps the one in use; SIGHUP
/// reloads at once.
#[tokio::test]
async fn the_certificate_is_reloaded_without_dropping_connections() {
    let nats = NatsServer::start();
    let ca = TestCa::new();
    let (first, first_key) = ca.issue("first", &["localhost", "127.0.0.1"]);
    let dir = tempfile::tempdir().expect("dir");
    let cert_file = dir.path().join("cert.pem").display().to_string();
    let key_file = dir.path().join("key.pem").display().to_string();
    std::fs::copy(&first, &cert_file).expect("copy");
    std::fs::copy(&first_key, &key_file).expect("copy");
    let gateway = tls_gateway(&nats, &ca.ca_file, &cert_file, &key_file).await;
    let addr = addr(&gateway);

    let mut open = tls_connect(&addr, &ca.ca_file, &[b"http/1.1"]).await;
    assert_eq!(served(&open), first_cert(&first));
    assert_eq!(h1_get(&mut open).await.0, 200);

    // A new pair: key first, then the chain (as a deploy tool would write them).
    let (second, second_key) = ca.issue("second", &["localhost", "127.0.0.1"]);
    std::fs::copy(&second_key, &key_file).expect("copy");
    std::fs::copy(&second, &cert_file).expect("copy");
    let replaced = Instant::now();
    let want = first_cert(&second);
    eventually(Duration::from_secs(5), || async {
        served(&tls_connect(&addr, &ca.ca_file, &[b"h2"]).await) == want
    })
    .await;
    assert!(replaced.elapsed() < Duration::from_secs(5));
    gateway.proc.wait_for_message("certificate reloaded");
    // The connection opened before still works.
    assert_eq!(h1_get(&mut open).await.0, 200);

    // A broken chain: refused, said, the second certificate still served.
    std::fs::write(
        &cert_file,
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n",
    )
    .expect("write");
    gateway.proc.wait_for(READY_WITHIN, |line| {
        line.contains("certificate not reloaded").then_some(())
    });
    assert_eq!(
        served(&tls_connect(&addr, &ca.ca_file, &[b"h2"]).await),
        want
    );
    // A chain whose key is elsewhere: refused too.
    std::fs::copy(&first, &cert_file).expect("copy");
    let refusals = || {
        gateway
            .proc
            .lines()
            .iter()
            .filter(|l| l.contains("certificate not reloaded"))
            .count()
    };
    eventually(Duration::from_secs(5), || async { refusals() >= 2 }).await;
    assert_eq!(
        served(&tls_connect(&addr, &ca.ca_file, &[b"h2"]).await),
        want
    );
    assert_eq!(h1_get(&mut open).await.0, 200);
    // The whole first pair again, and a SIGHUP: served at once.
    std::fs::copy(&first_key, &key_file).expect("copy");
    nix::sys::signal::kill(gateway.proc.pid(), nix::sys::signal::Signal::SIGHUP).expect("hup");
    let want = first_cert(&first);
    eventually(Duration::from_secs(5), || async {
        served(&tls_connect(&addr, &ca.ca_file, &[b"h2"]).await) == want
    })
    .await;
    assert_eq!(h1_get(&mut open).await.0, 200);
}

// --- A raw HTTP/2 client: frames written by hand, as an attacker would. ---

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("len").to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block for `GET /health/live` (static-table method and scheme, literal path and
/// authority, never indexed).
fn get_health_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x87];
    block.push(0x04);
    block.push(12);
    block.extend_from_slice(b"/health/live");
    block.push(0x01);
    block.push(9);
    block.extend_from_slice(b"localhost");
    block
}

/// What the server did with an attacker's connection within `within`: the error code of its
/// GOAWAY (if it sent one), and whether it closed the connection.
async fn outcome<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> (Option<u32>, bool) {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    };
    // Walk the frames the server sent for a GOAWAY: last stream id, then the error code.
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= seen.len() {
        let len = usize::from(seen[at]) << 16
            | usize::from(seen[at + 1]) << 8
            | usize::from(seen[at + 2]);
        if seen[at + 3] == GOAWAY && len >= 8 && at + 9 + 8 <= seen.len() {
            let code = &seen[at + 13..at + 17];
            goaway = Some(u32::from_be_bytes([code[0], code[1], code[2], code[3]]));
        }
        at += 9 + len;
    }
    (goaway, closed)
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The median time of `GET /health/live` on a kept-alive TLS connection, over `n` probes.
async fn health_median(addr: &str, ca: &str, n: usize) -> Duration {
    let mut probe = tls_connect(addr, ca, &[b"http/1.1"]).await;
    let mut times = Vec::new();
    for _ in 0..n {
        let (status, took) = h1_get(&mut probe).await;
        assert_eq!(status, 200);
        times.push(took);
    }
    times.sort();
    times[n / 2]
}

/// A rapid-reset burst (CVE-2023-44487: streams opened and cancelled at once, thousands in one
/// write) and a CONTINUATION flood (a header block that never ends) from a raw client: each
/// attacker's connection is closed, health answers within 100 ms meanwhile and after, and the
/// gateway's memory stays bounded.
#[tokio::test]
async fn rapid_reset_and_continuation_floods_are_cut_off() {
    let nats = NatsServer::start();
    let ca = TestCa::new();
    let (cert, key) = ca.issue("edge", &["localhost", "127.0.0.1"]);
    let gateway = tls_gateway(&nats, &ca.ca_file, &cert, &key).await;
    let addr = addr(&gateway);
    // Warm: the first answers allocate what the gateway keeps.
    health_median(&addr, &ca.ca_file, 20).await;
    let before = rss_kib(gateway.proc.pid());

    // Rapid reset: HEADERS then RST_STREAM(CANCEL) for up to 5,000 streams, in batches, while
    // a client probes health.
    let mut attacker = tls_connect(&addr, &ca.ca_file, &[b"h2"]).await;
    assert_eq!(attacker.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    attacker.write_all(PREFACE).await.expect("preface");
    attacker
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    let block = get_health_block();
    let burst = {
        let block = block.clone();
        tokio::spawn(async move {
            let mut sent = 0u32;
            for batch in 0..50u32 {
                let mut bytes = Vec::new();
                for i in 0..100u32 {
                    let stream = 2 * (batch * 100 + i) + 1;
                    bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
                    bytes.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
                }
                if attacker.write_all(&bytes).await.is_err() {
                    break;
                }
                sent += 100;
            }
            let (goaway, closed) = outcome(&mut attacker, Duration::from_secs(10)).await;
            (sent, goaway, closed)
        })
    };
    let during = health_median(&addr, &ca.ca_file, 9).await;
    let (sent, goaway, closed) = burst.await.expect("burst");
    eprintln!(
        "rapid reset: {sent} streams sent, goaway {goaway:?}, closed {closed}, health {during:?}"
    );
    assert!(closed, "rapid reset: the attacker's connection is closed");
    // ENHANCE_YOUR_CALM, unless the connection was cut before the GOAWAY could be read.
    assert!(
        goaway == Some(0xb) || sent < 5000,
        "rapid reset: GOAWAY {goaway:?} after all {sent} streams"
    );
    assert!(
        during < Duration::from_millis(100),
        "health took {during:?} during a rapid-reset burst"
    );

    // CONTINUATION flood: one HEADERS without END_HEADERS, then CONTINUATION frames of 16 KiB
    // that never end the block, up to 64 MiB.
    let mut attacker = tls_connect(&addr, &ca.ca_file, &[b"h2"]).await;
    attacker.write_all(PREFACE).await.expect("preface");
    attacker
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    attacker
        .write_all(&frame(HEADERS, END_STREAM, 1, &block))
        .await
        .expect("headers");
    // Literal headers never indexed, each with a new name: what a decoder would have to keep.
    let mut filler = Vec::new();
    while filler.len() < 16 * 1024 - 200 {
        let n = filler.len();
        filler.push(0x10);
        filler.push(16);
        filler.extend_from_slice(format!("x-flood-{n:08}").as_bytes());
        filler.push(100);
        filler.extend_from_slice(&[b'a'; 100]);
    }
    let continuation = frame(CONTINUATION, 0, 1, &filler);
    let mut flooded = 0usize;
    let flood = async {
        for _ in 0..4096 {
            if attacker.write_all(&continuation).await.is_err() {
                return true;
            }
            flooded += continuation.len();
        }
        false
    };
    let cut = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .unwrap_or(false);
    let (_, closed) = if cut {
        (None, true)
    } else {
        outcome(&mut attacker, Duration::from_secs(10)).await
    };
    eprintln!("continuation flood: {flooded} bytes sent, closed {closed}");
    assert!(
        closed,
        "CONTINUATION flood: the attacker's connection is closed ({flooded} bytes sent)"
    );
    // What was sent includes what the kernel's socket buffers took after the gateway stopped
    // reading: half of the 64 MiB is far past one header block of 16 KiB.
    assert!(
        flooded < 32 * 1024 * 1024,
        "CONTINUATION flood: cut off after {flooded} bytes"
    );
    let after = health_median(&addr, &ca.ca_file, 9).await;
    assert!(
        after < Duration::from_millis(100),
        "health took {after:?} after a CONTINUATION flood"
    );
    let grown = rss_kib(gateway.proc.pid()).saturating_sub(before);
    eprintln!("health after {after:?}, grown {grown} KiB");
    assert!(grown < 32 * 1024, "the gateway grew by {grown} KiB");
}

/// A connection that opens and says nothing (no TLS handshake, half a handshake) is closed
/// within the header timeout, and so is an h2c connection stalled inside its preface.
#[tokio::test]
async fn stalled_openings_are_closed_within_the_header_timeout() {
    let nats = NatsServer::start();
    let ca = TestCa::new();
    let (cert, key) = ca.issue("edge", &["localhost", "127.0.0.1"]);
    let gateway = Gateway::start_unready(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__TLS__CERT_FILE", &cert)
            .env("BUSGATE_HTTP__TLS__KEY_FILE", &key)
            .env("BUSGATE_HTTP__HEADER_TIMEOUT", "1s");
    })
    .await;
    let h2c = Gateway::start_unready(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__H2C", "true")
            .env("BUSGATE_HTTP__HEADER_TIMEOUT", "1s");
    })
    .await;
    // A TLS ClientHello's record header, then nothing; nothing at all; half the h2c preface.
    for (addr, opening) in [
        (addr(&gateway), &b"\x16\x03\x01\x02\x00"[..]),
        (addr(&gateway), &b""[..]),
        (addr(&h2c), &PREFACE[..10]),
    ] {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(opening).await.expect("write");
        let (_, closed) = outcome(&mut stream, Duration::from_secs(10)).await;
        assert!(closed, "{opening:?}: still open");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{opening:?}: closed after {took:?}"
        );
    }
}

/// Reads frames from `stream` for `within` (or until it closes): (type, flags, stream, payload).
async fn frames<S: AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= seen.len() {
        let len = usize::from(seen[at]) << 16
            | usize::from(seen[at + 1]) << 8
            | usize::from(seen[at + 2]);
        if at + 9 + len > seen.len() {
            break;
        }
        let id = u32::from_be_bytes([seen[at + 5], seen[at + 6], seen[at + 7], seen[at + 8]])
            & 0x7fff_ffff;
        out.push((
            seen[at + 3],
            seen[at + 4],
            id,
            seen[at + 9..at + 9 + len].to_vec(),
        ));
        at += 9 + len;
    }
    out
}

/// The server's SETTINGS announce the configured limits (streams, windows, header list, frame
/// size), and a client that opens more streams than allowed has the extra ones refused
/// (`REFUSED_STREAM`) while the others stay open.
#[tokio::test]
async fn h2_limits_are_announced_and_enforced() {
    let nats = NatsServer::start();
    let gateway = Gateway::start_with(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_HTTP__H2C", "true")
            .env("BUSGATE_HTTP__H2_MAX_CONCURRENT_STREAMS", "2");
    })
    .await;
    let mut stream = TcpStream::connect(addr(&gateway)).await.expect("connect");
    stream.write_all(PREFACE).await.expect("preface");
    stream
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    let first = frames(&mut stream, Duration::from_millis(500)).await;
    let settings = first
        .iter()
        .find(|f| f.0 == SETTINGS && f.1 == 0)
        .expect("the server's SETTINGS");
    let announced: std::collections::HashMap<u16, u32> = settings
        .3
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert_eq!(announced.get(&0x3), Some(&2), "MAX_CONCURRENT_STREAMS");
    assert_eq!(
        announced.get(&0x4),
        Some(&(256 * 1024)),
        "INITIAL_WINDOW_SIZE"
    );
    assert_eq!(
        announced.get(&0x6),
        Some(&(16 * 1024)),
        "MAX_HEADER_LIST_SIZE"
    );
    // Three requests whose bodies never end: the third is one stream too many.
    let block = {
        let mut b = vec![0x83, 0x86, 0x04, 10];
        b.extend_from_slice(b"/api/order");
        b.extend_from_slice(&[0x01, 9]);
        b.extend_from_slice(b"localhost");
        b
    };
    for id in [1, 3, 5] {
        stream
            .write_all(&frame(HEADERS, END_HEADERS, id, &block))
            .await
            .expect("headers");
    }
    let seen = frames(&mut stream, Duration::from_secs(2)).await;
    eprintln!(
        "{:?}",
        seen.iter()
            .map(|f| (f.0, f.1, f.2, f.3.len()))
            .collect::<Vec<_>>()
    );
    let refused = seen
        .iter()
        .find(|f| f.0 == RST_STREAM && f.2 == 5)
        .expect("stream 5 reset");
    assert_eq!(refused.3, 7u32.to_be_bytes(), "REFUSED_STREAM");
    assert!(!seen
        .iter()
        .any(|f| f.0 == RST_STREAM && f.2 == 1 && f.3 == 7u32.to_be_bytes()));
}
