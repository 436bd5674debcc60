//! End-to-end: what an outside probe of the edge found, each tried again as the probe did
//! (issue 28, part 6): `check-config` showing a JWKS URL's credentials, an upstream aimed at
//! the gateway's own admin listener under another spelling of `localhost`, descriptions and
//! documents too large for the store answered 503, and a permissive `order_id_pattern`
//! passing `..%2F` and `%0D%0A` without a word.

use busgate_tests::fixture::Settings;
use busgate_tests::support;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use support::{bin, eventually, Gateway, NatsServer};

/// `busgate check-config` on a settings file whose JWKS URLs carry a user, a password, a
/// query and a fragment: none of them is printed; the output says they are there.
#[test]
fn check_config_never_prints_a_jwks_urls_secrets() {
    let file = busgate_tests::fixture::file(
        r#"
[[auth.issuers]]
issuer = "https://idp.example"
audience = "busgate"
algorithm = "RS256"
jwks_url = "https://jwks-user:jwks-pass-91c2@idp.example:8443/keys?access_token=jwks-tok-5e7d&x=1#frag-0a1b"

[[auth.issuers]]
issuer = "https://other.example"
audience = "busgate"
algorithm = "ES256"
jwks_url = "https://only-user-33aa@other.example/jwks.json?sig=q-77bb"
"#,
        ".toml",
    );
    let out = Command::new(bin("busgate"))
        .args(["check-config", "--config"])
        .arg(file.path())
        .env_remove("BUSGATE_NATS__URL")
        .env_remove("BUSGATE_ADMIN__TOKEN")
        .output()
        .expect("check-config runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    for secret in [
        "jwks-user",
        "jwks-pass-91c2",
        "jwks-tok-5e7d",
        "access_token",
        "frag-0a1b",
        "only-user-33aa",
        "q-77bb",
        "sig=",
    ] {
        assert!(
            !text.contains(secret),
            "check-config printed {secret}: {text}"
        );
    }
    let shown: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        shown["auth"]["issuers"][0]["jwks_url"],
        "https://***@idp.example:8443/keys?***#***"
    );
    assert_eq!(
        shown["auth"]["issuers"][1]["jwks_url"],
        "https://***@other.example/jwks.json?***"
    );
}

/// Creates the service `name` with `spec` through the admin API; the answer's status and body.
async fn create_service(gateway: &Gateway, name: &str, spec: Value) -> (u16, Value) {
    let answer = gateway
        .admin_send(
            "POST",
            "/admin/v1/services",
            None,
            Some(&json!({"name": name, "spec": spec})),
        )
        .await;
    (answer.status, answer.body)
}

/// An upstream aimed at the gateway's own admin (or public) listener is refused under every
/// spelling of the loopback host the probe tried: a trailing dot, upper case, short and hex
/// IPv4 forms, IPv6 forms.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_aimed_at_the_gateway_itself_is_refused_however_spelled() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let admin_port = gateway.admin.rsplit(':').next().expect("port").to_owned();
    let public_port = gateway.base.rsplit(':').next().expect("port").to_owned();
    let hosts = [
        "localhost.",
        "LOCALHOST",
        "LOCALHOST.",
        "LocalHost.",
        "127.1",
        "127.0.1",
        "0x7f.1",
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "127.1.",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]",
        "%6cocalhost",
        "sub.localhost.",
    ];
    for port in [&admin_port, &public_port] {
        for host in hosts {
            let url = format!("http://{host}:{port}/admin/v1/services/{{order_id}}");
            let (status, body) =
                create_service(&gateway, "loop", json!({"upstream": {"url": url}})).await;
            assert_eq!(status, 422, "{url} was taken: {body}");
        }
    }
    // Not an overreach: another port on the same host is fine.
    let (status, body) = create_service(
        &gateway,
        "fine",
        json!({"upstream": {"url": "http://localhost.:1/x/{order_id}"}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// A description is capped like a client's (1,024): 60,000 characters are 422; a document
/// too large for the store, or a body over the admin's limit, is 413 or 422, never the 503 of
/// an unreachable store; and the store is still fine afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn descriptions_and_documents_too_large_are_refused_not_503() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let (status, body) = create_service(
        &gateway,
        "wordy",
        json!({"description": "d".repeat(60_000)}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.to_string().contains("services.wordy.description"),
        "{body}"
    );
    let (status, _) =
        create_service(&gateway, "edge", json!({"description": "d".repeat(1024)})).await;
    assert_eq!(status, 201);
    let (status, body) = create_service(
        &gateway,
        "huge",
        json!({"description": "d".repeat(1_500_000)}),
    )
    .await;
    assert!(matches!(status, 413 | 422), "{status} {body}");
    // A client's description, a replace, an import: the same.
    let client = gateway
        .admin_send(
            "POST",
            "/admin/v1/clients",
            None,
            Some(&json!({"name": "big", "spec": {"description": "c".repeat(1_500_000)}})),
        )
        .await;
    assert!(matches!(client.status, 413 | 422), "{}", client.status);
    let replace = gateway
        .admin_send(
            "PUT",
            "/admin/v1/services/edge",
            Some("*"),
            Some(&json!({"description": "e".repeat(1_500_000)})),
        )
        .await;
    assert!(
        matches!(replace.status, 412 | 413 | 422),
        "{}",
        replace.status
    );
    // A route of 20,000 bindings passes validation but is 1.5 MB: over what the store takes
    // (its 1 MiB message), 413 with a problem document, not the store's refusal as a 503.
    let bindings: Vec<Value> = (0..20_000)
        .map(|i| json!({"method": "GET", "path": format!("/api/many-bindings-of-one-route-{i:05}/{{order_id}}")}))
        .collect();
    let big_route = json!({"name": "many", "spec": {"bindings": bindings,
        "targets": [{"service": "service1"}]}});
    let size = big_route.to_string().len();
    assert!((1_400_000..2_000_000).contains(&size), "{size}");
    let route = gateway
        .admin_send("POST", "/admin/v1/routes", None, Some(&big_route))
        .await;
    assert_eq!(route.status, 413, "{}", route.body);
    assert_eq!(route.body["type"], "urn:busgate:problem:payload-too-large");
    // The store's limit (1 MiB less room for the subject and headers), not the listener's.
    assert!(
        route.body["detail"].to_string().contains("1044480"),
        "{}",
        route.body
    );
    // A body over the admin listener's limit (2 MiB): 413, with a problem document.
    let over = gateway
        .admin_send(
            "POST",
            "/admin/v1/services",
            None,
            Some(&json!({"name": "over", "spec": {"description": "x".repeat(3_000_000)}})),
        )
        .await;
    assert_eq!(over.status, 413, "{}", over.body);
    assert_eq!(over.body["type"], "urn:busgate:problem:payload-too-large");
    // Nothing of it reached the store, which still answers.
    let (status, _) = create_service(&gateway, "after", json!({})).await;
    assert_eq!(status, 201);
}

/// A permissive `order_id_pattern` is warned about once at start, naming what it lets
/// through; the default pattern is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_permissive_order_id_pattern_is_warned_about_once() {
    const WARNING: &str = "http.order_id_pattern lets unsafe order ids through";
    let nats = NatsServer::start();
    let permissive =
        Gateway::start(&nats, &Settings::builtin().order_id_pattern("^.{1,64}$")).await;
    let quiet = Gateway::start(&nats, &Settings::builtin()).await;
    eventually(Duration::from_secs(5), || async {
        permissive.proc.logged(WARNING)
    })
    .await;
    // Some requests later, still once.
    for id in ["..%2F..%2Fadmin", "a%0D%0Ab", "x"] {
        let _ = support::http()
            .get(permissive.url(&format!("/api/orders/{id}")))
            .send()
            .await;
    }
    let lines: Vec<String> = permissive
        .proc
        .lines()
        .into_iter()
        .filter(|l| l.contains(WARNING))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    for what in [
        "path separator",
        "percent sign",
        "dots only",
        "control characters",
    ] {
        assert!(lines[0].contains(what), "{what} not named: {}", lines[0]);
    }
    assert!(!quiet.proc.logged(WARNING));
}
