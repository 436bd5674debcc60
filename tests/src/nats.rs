//! NATS for a test: a real `nats-server` with JetStream on a free port and a store of its own
//! ([`NatsServer`]: plain, with a password, a payload cap, a configuration file, TLS), and the
//! certificate authority ([`TestCa`]) TLS servers and clusters get their certificates from.

use std::process::Command;
use std::time::Duration;

use nix::unistd::Pid;

use crate::process::{Proc, READY_WITHIN};

/// A real nats-server with JetStream, on a free port, with a data dir of its own.
pub struct NatsServer {
    pub url: String,
    pub port: u16,
    /// `BUSGATE_NATS__…` variables (besides the URL) a client of this server needs: the CA
    /// file of a TLS server, say. Gateways and workers started on it get them.
    pub env: Vec<(String, String)>,
    proc: Proc,
    dir: tempfile::TempDir,
}

/// A certificate authority made in the test (rcgen), and the certificates it issues, as PEM
/// files in a directory of their own.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
    /// The CA certificate's file.
    pub ca_file: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "busgate test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).expect("write ca");
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            ca_file: ca_file.display().to_string(),
            dir,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, as
    /// `(cert_file, key_file)` named after `stem`.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let cert_file = self.dir.path().join(format!("{stem}.pem"));
        let key_file = self.dir.path().join(format!("{stem}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        (
            cert_file.display().to_string(),
            key_file.display().to_string(),
        )
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, 0)
    }

    /// A server that requires `user` and `password`; its [`NatsServer::url`] carries them.
    pub fn start_with_auth(user: &str, password: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_with(
            dir,
            0,
            &["--user", user, "--pass", password],
            &format!("{user}:{password}@"),
        )
    }

    /// A server whose messages may be at most `max_payload` bytes (set in a config file: the
    /// command line has no flag for it).
    pub fn start_with_max_payload(max_payload: usize) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, format!("max_payload: {max_payload}\n")).expect("nats config");
        let config = config.display().to_string();
        Self::start_with(dir, 0, &["-c", &config], "")
    }

    /// Starts on `port` (0: any free one) with its store in `dir`.
    pub fn start_in(dir: tempfile::TempDir, port: u16) -> NatsServer {
        Self::start_with(dir, port, &[], "")
    }

    /// A server with `config` as its configuration file (authorization, accounts, TLS: the
    /// address, port, JetStream and store still come from the harness). Its URL carries no
    /// credentials: clients bring their own.
    pub fn start_with_config(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).expect("nats config");
        let file = file.display().to_string();
        Self::start_with(dir, 0, &["-c", &file], "")
    }

    /// A TLS-only server whose certificate `ca` issued for 127.0.0.1 and localhost; its URL
    /// is `tls://127.0.0.1:<port>` and its [`NatsServer::env`] names the CA file. With
    /// `verify`, clients must present a certificate from `ca` too (mutual TLS). `extra` goes
    /// into the `tls` block (`handshake_first: true`, say).
    pub fn start_tls(ca: &TestCa, verify: bool, extra: &str) -> NatsServer {
        let (cert, key) = ca.issue("nats-server", &["127.0.0.1", "localhost"]);
        let config = format!(
            "tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n  ca_file: \"{ca_file}\"\n  verify: {verify}\n  timeout: 5\n  {extra}\n}}\n",
            ca_file = ca.ca_file
        );
        let mut server = Self::start_with_config(&config);
        server.url = format!("tls://127.0.0.1:{}", server.port);
        server.env = vec![("BUSGATE_NATS__CA_FILE".into(), ca.ca_file.clone())];
        server
    }

    /// Starts with `args` added, and `userinfo` (`user:pass@`, or empty) in its URL.
    fn start_with(dir: tempfile::TempDir, port: u16, args: &[&str], userinfo: &str) -> NatsServer {
        // reqwest is built with TLS in this workspace: it needs the process's crypto provider.
        busgate_shared::runtime::install_crypto_provider();
        let binary = busgate_shared::runtime::locate_nats_server(None)
            .unwrap_or_else(|| panic!("{}", busgate_shared::runtime::NATS_SERVER_HINT));
        let mut cmd = Command::new(binary);
        let port_arg = if port == 0 {
            "-1".to_owned()
        } else {
            port.to_string()
        };
        cmd.args(args)
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(dir.path());
        let proc = Proc::spawn("nats-server", cmd);
        let port = proc.wait_for(READY_WITHIN, |line| {
            let (_, rest) = line.split_once("Listening for client connections on ")?;
            rest.trim().rsplit_once(':')?.1.parse::<u16>().ok()
        });
        NatsServer {
            url: format!("nats://{userinfo}127.0.0.1:{port}"),
            port,
            env: Vec::new(),
            proc,
            dir,
        }
    }

    /// The server's process id (to stop it with SIGSTOP, say).
    pub fn pid(&self) -> Pid {
        self.proc.pid()
    }

    /// Stops the server, keeping its store for a restart.
    pub fn stop(mut self) -> (tempfile::TempDir, u16) {
        self.proc.terminate(Duration::from_secs(10));
        (self.dir, self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url)
            .await
            .expect("connect to test nats")
    }

    /// A subscriber in `service`'s queue group that never answers: requests to it get no
    /// "no responders" and stay pending until their deadline. Keep it for as long as that holds.
    pub async fn silent(&self, service: &str) -> async_nats::Subscriber {
        let client = self.client().await;
        let subscriber = client
            .queue_subscribe(
                busgate_shared::subject::service(service),
                busgate_shared::subject::queue_group(service),
            )
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        subscriber
    }

    /// The request path's connection, as a service serves on (see `busgate_shared::wire`).
    pub fn wire(&self) -> busgate_shared::wire::Connection {
        busgate_shared::wire::Connection::connect(&self.url, "test").expect("a valid url")
    }
}
