//! End-to-end: Busgate on a secured NATS (a real nats-server): TLS (a CA made here with rcgen),
//! mutual TLS, nkey users, the least-privilege users of `deploy/nats/authorization.conf`, and
//! refusals (wrong password, certificate from another CA) logged at error level without the
//! secret.

use std::time::Duration;

use busgate_tests::fixture::Settings;
use busgate_tests::support::{eventually, Gateway, NatsServer, Proc, TestCa, Worker, READY_WITHIN};
use serde_json::Value;

/// A JSON log line at error level that contains `text`, if any was logged.
fn error_line(proc: &Proc, text: &str) -> Value {
    proc.wait_for(READY_WITHIN, |line| {
        let v: Value = serde_json::from_str(line).ok()?;
        (v["level"] == "ERROR" && line.contains(text)).then_some(v)
    })
}

/// Asks the gateway for order A1: 200 with both services' parts proves requests and replies
/// went through NATS on every connection.
async fn answered(gateway: &Gateway) {
    let answer = reqwest::get(gateway.url("/api/orders/A1"))
        .await
        .expect("answer");
    assert_eq!(answer.status(), 200);
}

/// Demo services, one adapter process each (with `env` added), and a gateway (with `env`
/// too) on `nats`.
async fn stack(
    nats: &NatsServer,
    gateway_env: &[(&str, String)],
    worker_env: &[(&str, &str, String)],
) -> (Gateway, Vec<Proc>, Vec<(Proc, String)>) {
    let demos = vec![Worker::demo("service1"), Worker::demo("service2")];
    let mut adapters = Vec::new();
    for (service, demo) in ["service1", "service2"].iter().zip(&demos) {
        let mut cmd = Worker::command(Some(nats));
        for (who, name, value) in worker_env {
            if who == service || *who == "*" {
                cmd.env(name, value);
            }
        }
        cmd.args([
            "adapter",
            "--service",
            service,
            "--upstream",
            &format!("{}/order/{{order_id}}", demo.1),
        ]);
        let proc = Proc::spawn(&format!("adapter-{service}"), cmd);
        proc.wait_for_message("serving");
        adapters.push(proc);
    }
    let env: Vec<(String, String)> = gateway_env
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    let gateway = Gateway::start_with(nats, &Settings::builtin(), |cmd| {
        cmd.envs(env);
    })
    .await;
    (gateway, adapters, demos)
}

#[tokio::test]
async fn a_worker_with_the_wrong_password_is_refused_and_says_so_at_error_level() {
    let nats = NatsServer::start_with_auth("bus", "right-pw-51c9");
    let wrong = format!("nats://bus:wrong-pw-8d2e@127.0.0.1:{}", nats.port);
    let mut cmd = Worker::command(None);
    cmd.env("BUSGATE_NATS__URL", &wrong)
        .args(["native", "--service", "service1"]);
    let worker = Proc::spawn("native-service1", cmd);
    let line = error_line(&worker, "Authorization Violation");
    assert!(line.to_string().contains("credentials"), "{line}");
    // Retried with backoff, and never the secret in any line.
    eventually(READY_WITHIN, || async {
        worker
            .lines()
            .iter()
            .filter(|l| l.contains("Authorization Violation"))
            .count()
            >= 2
    })
    .await;
    assert!(!worker.logged("wrong-pw-8d2e"), "{:?}", worker.lines());
    assert!(!worker.logged("serving"));
}

#[tokio::test]
async fn tls_works_end_to_end_on_both_gateway_connections_and_the_workers() {
    let ca = TestCa::new();
    let nats = NatsServer::start_tls(&ca, false, "");
    assert!(nats.url.starts_with("tls://"));
    let (gateway, _adapters, _demos) = stack(&nats, &[], &[]).await;
    answered(&gateway).await;
    let connected = gateway.proc.wait_for_message("nats request path connected");
    assert_eq!(connected["tls"], true, "{connected}");
}

#[tokio::test]
async fn tls_upgrade_after_info_when_the_url_says_nats_but_the_server_requires_tls() {
    let ca = TestCa::new();
    let mut nats = NatsServer::start_tls(&ca, false, "");
    // A nats:// URL: the server's INFO (tls_required) decides.
    nats.url = format!("nats://127.0.0.1:{}", nats.port);
    let (gateway, _adapters, _demos) = stack(&nats, &[], &[]).await;
    answered(&gateway).await;
}

#[tokio::test]
async fn handshake_first_works_end_to_end() {
    let ca = TestCa::new();
    let mut nats = NatsServer::start_tls(&ca, false, "handshake_first: true");
    nats.env
        .push(("BUSGATE_NATS__HANDSHAKE_FIRST".into(), "true".into()));
    let (gateway, _adapters, _demos) = stack(&nats, &[], &[]).await;
    answered(&gateway).await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let nats = NatsServer::start_tls(&ca, false, "");
    let gateway = Gateway::start_unready(&nats, &Settings::builtin(), |cmd| {
        cmd.env("BUSGATE_NATS__CA_FILE", &other.ca_file);
    })
    .await;
    let line = error_line(&gateway.proc, "cannot connect to nats");
    assert!(
        line.to_string().to_lowercase().contains("certificate"),
        "{line}"
    );
    let ready = reqwest::get(gateway.url("/health/ready"))
        .await
        .expect("ready answers");
    assert_eq!(ready.status(), 503);
    // A worker too.
    let mut cmd = Worker::command(Some(&nats));
    cmd.env("BUSGATE_NATS__CA_FILE", &other.ca_file)
        .args(["native", "--service", "service1"]);
    let worker = Proc::spawn("native-service1", cmd);
    error_line(&worker, "certificate");
}

#[tokio::test]
async fn a_tls_url_never_falls_back_to_plain_tcp() {
    let nats = NatsServer::start();
    let ca = TestCa::new();
    let mut cmd = Worker::command(None);
    cmd.env(
        "BUSGATE_NATS__URL",
        format!("tls://127.0.0.1:{}", nats.port),
    )
    .env("BUSGATE_NATS__CA_FILE", &ca.ca_file)
    .args(["native", "--service", "service1"]);
    let worker = Proc::spawn("native-service1", cmd);
    error_line(&worker, "does not offer it");
    assert!(!worker.logged("serving"));
}

#[tokio::test]
async fn mutual_tls_works_and_a_client_without_a_certificate_is_refused() {
    let ca = TestCa::new();
    let nats = NatsServer::start_tls(&ca, true, "");
    let (cert, key) = ca.issue("client", &["busgate-client"]);
    let env = [
        ("BUSGATE_NATS__CERT_FILE", cert.clone()),
        ("BUSGATE_NATS__KEY_FILE", key.clone()),
    ];
    let worker_env = [
        ("*", "BUSGATE_NATS__CERT_FILE", cert),
        ("*", "BUSGATE_NATS__KEY_FILE", key),
    ];
    let (gateway, _adapters, _demos) = stack(&nats, &env, &worker_env).await;
    answered(&gateway).await;
    // Without a client certificate: refused.
    let mut cmd = Worker::command(Some(&nats));
    cmd.args(["native", "--service", "service1"]);
    let worker = Proc::spawn("native-service1", cmd);
    error_line(&worker, "cannot connect to nats");
    assert!(!worker.logged("serving"));
}

#[tokio::test]
async fn nkey_users_sign_in_on_every_connection() {
    let gateway_key = nkeys::KeyPair::new_user();
    let worker_key = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{ users: [ {{ nkey: {} }}, {{ nkey: {} }} ] }}\n",
        gateway_key.public_key(),
        worker_key.public_key()
    );
    let nats = NatsServer::start_with_config(&config);
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, key: &nkeys::KeyPair| {
        let path = dir.path().join(name);
        std::fs::write(&path, key.seed().expect("seed")).expect("write seed");
        path.display().to_string()
    };
    let gateway_seed = write("gateway.nk", &gateway_key);
    let worker_seed = write("worker.nk", &worker_key);
    let (gateway, adapters, _demos) = stack(
        &nats,
        &[("BUSGATE_NATS__NKEY_FILE", gateway_seed)],
        &[("*", "BUSGATE_NATS__NKEY_FILE", worker_seed)],
    )
    .await;
    answered(&gateway).await;
    let seed = worker_key.seed().expect("seed");
    for proc in adapters.iter().chain([&gateway.proc]) {
        assert!(!proc.logged(&seed), "{}", proc.name);
    }
    // No key: refused.
    let mut cmd = Worker::command(Some(&nats));
    cmd.args(["native", "--service", "service1"]);
    let worker = Proc::spawn("native-service1", cmd);
    error_line(&worker, "Authorization Violation");
}

/// `deploy/nats/authorization.conf` with its password variables defined.
fn least_privilege_server() -> NatsServer {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nats/authorization.conf"
    ))
    .expect("deploy/nats/authorization.conf");
    let vars = "BUSGATE_NATS_GATEWAY_PASSWORD: gw-pw-1\nBUSGATE_NATS_SERVICE1_PASSWORD: s1-pw-2\n\
                BUSGATE_NATS_SERVICE2_PASSWORD: s2-pw-3\nBUSGATE_NATS_ADMIN_PASSWORD: ad-pw-4\n";
    NatsServer::start_with_config(&format!("{vars}{conf}"))
}

fn url(nats: &NatsServer, user: &str, password: &str) -> String {
    format!("nats://{user}:{password}@127.0.0.1:{}", nats.port)
}

#[tokio::test]
async fn least_privilege_users_serve_and_may_not_take_others_subjects_or_the_config() {
    let nats = least_privilege_server();
    let gateway_url = url(&nats, "busgate-gateway", "gw-pw-1");
    let (gateway, _adapters, _demos) = stack(
        &nats,
        &[("BUSGATE_NATS__URL", gateway_url.clone())],
        &[
            (
                "service1",
                "BUSGATE_NATS__URL",
                url(&nats, "service1", "s1-pw-2"),
            ),
            (
                "service2",
                "BUSGATE_NATS__URL",
                url(&nats, "service2", "s2-pw-3"),
            ),
        ],
    )
    .await;
    // The gateway (JetStream, KV, requests) and the services work with only their rights.
    answered(&gateway).await;
    let services = reqwest::Client::new()
        .get(gateway.admin_url("/admin/v1/instances"))
        .bearer_auth(busgate_tests::support::ADMIN_TOKEN)
        .send()
        .await
        .expect("discovery");
    assert_eq!(services.status(), 200, "discovery through $SRV");

    // async-nats does not send a URL's credentials: given as options.
    let as_user = |user: &str, password: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .connect(format!("127.0.0.1:{}", nats.port))
    };
    let admin = as_user("admin", "ad-pw-4").await.expect("admin");
    let service1 = as_user("service1", "s1-pw-2").await.expect("service1 user");

    // service1 subscribes to service2's subject (in service2's group and without a group):
    // the server refuses; service2's requests still reach only service2's adapter.
    let wire = busgate_shared::wire::Connection::connect(&url(&nats, "service1", "s1-pw-2"), "x")
        .expect("url");
    assert!(wire.connected(READY_WITHIN).await);
    let stolen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut subs = Vec::new();
    for queue in [Some("busgate.service2"), None] {
        let stolen = stolen.clone();
        subs.push(
            wire.subscribe("busgate.svc.service2", queue, move |_| {
                stolen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .expect("sub sent"),
        );
    }
    // Also its own subject outside its queue group: refused.
    {
        let stolen = stolen.clone();
        subs.push(
            wire.subscribe("busgate.svc.service1", None, move |_| {
                stolen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .expect("sub sent"),
        );
    }
    wire.flush(Duration::from_secs(5)).await.expect("flushed");
    for _ in 0..20 {
        answered(&gateway).await;
    }
    wire.flush(Duration::from_secs(5)).await.expect("flushed");
    assert_eq!(stolen.load(std::sync::atomic::Ordering::Relaxed), 0);

    // service1 may not read the config bucket, nor write to it, nor publish requests.
    let js = async_nats::jetstream::new(service1.clone());
    let read = tokio::time::timeout(
        Duration::from_secs(3),
        js.get_key_value(busgate_shared::subject::CONFIG_BUCKET),
    )
    .await;
    assert!(
        !matches!(read, Ok(Ok(_))),
        "service1 opened the config bucket"
    );
    let mut watch = service1
        .subscribe("$KV.busgate-config.>")
        .await
        .expect("sent");
    service1
        .publish("$KV.busgate-config.routes.evil", "{}".into())
        .await
        .expect("sent");
    service1.flush().await.expect("flushed");
    let admin_js = async_nats::jetstream::new(admin.clone());
    let bucket = admin_js
        .get_key_value(busgate_shared::subject::CONFIG_BUCKET)
        .await
        .expect("the admin user reads the bucket");
    assert!(
        bucket.get("routes.evil").await.expect("get").is_none(),
        "service1 wrote the config bucket"
    );
    // The admin user writes a key: service1's subscription never sees it.
    bucket
        .put("probe.key", "x".into())
        .await
        .expect("admin writes");
    let seen = tokio::time::timeout(
        Duration::from_millis(500),
        futures::StreamExt::next(&mut watch),
    )
    .await;
    assert!(
        !matches!(seen, Ok(Some(_))),
        "service1 read a config change"
    );
    bucket.delete("probe.key").await.expect("clean");
    // A request to service2 from service1's user: refused (no publish rights).
    let forged = tokio::time::timeout(
        Duration::from_secs(2),
        service1.request("busgate.svc.service2", "{}".into()),
    )
    .await;
    assert!(!matches!(forged, Ok(Ok(_))), "service1 called service2");

    // The gateways count each other under these users (their heartbeats on busgate.fleet.*
    // are allowed), and a service's user cannot forge one: the count stays 2.
    let second = Gateway::start_on(&gateway_url, &Settings::builtin(), |_| {}).await;
    for g in [&gateway, &second] {
        eventually(Duration::from_secs(10), || async {
            g.metric("busgate_gateway_instances", "").await == 2.0
        })
        .await;
    }
    for i in 0..5 {
        service1
            .publish(format!("busgate.fleet.forged{i}"), "alive".into())
            .await
            .expect("sent");
    }
    service1.flush().await.expect("flushed");
    tokio::time::sleep(Duration::from_millis(1500)).await; // two heartbeats: what a forgery would need
    assert_eq!(
        gateway.metric("busgate_gateway_instances", "").await,
        2.0,
        "service1 forged a gateway heartbeat"
    );
}

/// A JWT as nsc makes one: `claims` signed by `issuer` (ed25519 nkey), base64url without
/// padding.
fn jwt(issuer: &nkeys::KeyPair, mut claims: Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    claims["iss"] = issuer.public_key().into();
    claims["iat"] = 1_700_000_000u64.into();
    claims["jti"] = format!("{:x}", rand_id()).into();
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let sig = issuer.sign(signed.as_bytes()).expect("sign");
    format!("{signed}.{}", b64.encode(sig))
}

fn rand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

#[tokio::test]
async fn a_creds_file_signs_in_on_both_connections_of_an_operator_server() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        serde_json::json!({"sub": operator.public_key(), "name": "op",
            "nats": {"type": "operator", "version": 2}}),
    );
    let account_jwt = jwt(
        &operator,
        serde_json::json!({"sub": account.public_key(), "name": "busgate",
            "nats": {"type": "account", "version": 2, "limits": {"subs": -1, "conn": -1,
                "leaf": -1, "imports": -1, "exports": -1, "data": -1, "payload": -1,
                "wildcards": true}}}),
    );
    let user_jwt = jwt(
        &account,
        serde_json::json!({"sub": user.public_key(), "name": "gateway",
            "nats": {"type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1}}),
    );
    // JetStream (the harness enables it) needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        serde_json::json!({"sub": system.public_key(), "name": "SYS",
            "nats": {"type": "account", "version": 2}}),
    );
    let dir = tempfile::tempdir().expect("dir");
    let operator_file = dir.path().join("op.jwt");
    std::fs::write(&operator_file, &operator_jwt).expect("write");
    let config = format!(
        "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{ {}: \"{}\", {}: \"{}\" }}\n",
        operator_file.display(),
        system.public_key(),
        account.public_key(),
        account_jwt,
        system.public_key(),
        system_jwt
    );
    let nats = NatsServer::start_with_config(&config);
    let seed = user.seed().expect("seed");
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    let creds_file = dir.path().join("gateway.creds");
    std::fs::write(&creds_file, creds).expect("write");
    let mut settings = busgate_shared::nats::NatsSettings::with_url(&nats.url);
    settings.creds_file = creds_file.display().to_string();
    // The request path's connection.
    let wire = busgate_shared::wire::Connection::connect_with(&settings, "creds").expect("creds");
    assert!(
        wire.connected(READY_WITHIN).await,
        "wire signed in with the creds"
    );
    // async-nats, from the same settings.
    let client = busgate_shared::nats::connect(&settings, "creds")
        .await
        .expect("settings");
    eventually(READY_WITHIN, || async {
        busgate_shared::nats::is_connected(&client)
    })
    .await;
    // Without them: refused.
    let plain = busgate_shared::wire::Connection::connect(&nats.url, "none").expect("url");
    assert!(!plain.connected(Duration::from_secs(2)).await);
}
