//! End-to-end: `busgate up` with a settings file of real upstreams: a merged answer from them
//! and no demo process, a child killed with SIGKILL back within 5 s while the rest keeps
//! serving, and the admin token kept across two runs. A real nats-server (the harness's: `up`
//! uses one that answers), the real binaries, a real HTTP server in this process.

use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use busgate_tests::fixture;
use busgate_tests::gateway::up_command;
use busgate_tests::process::marked;
use busgate_tests::support::{eventually, free_port, http, serve, NatsServer, Proc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Two upstreams on one free port: `/billing/{id}` and `/shipping/{id}`.
async fn upstreams() -> String {
    let app = axum::Router::new()
        .route(
            "/billing/{id}",
            get(|Path(id): Path<String>| async move {
                axum::Json(json!({"order_id": id, "amount": 12.5}))
            }),
        )
        .route(
            "/shipping/{id}",
            get(|Path(id): Path<String>| async move {
                axum::Json(json!({"order_id": id, "carrier": "GLS"}))
            }),
        );
    serve(app).await
}

/// The upstreams, a nats-server, and a settings file: that server, the service `billing` on
/// the upstreams' `/billing/{order_id}`, then `rest(base)` (more of `billing`'s upstream table
/// first, if it wants).
async fn upstreams_and_settings(
    rest: impl FnOnce(&str) -> String,
) -> (NatsServer, tempfile::NamedTempFile) {
    let base = upstreams().await;
    let nats = NatsServer::start();
    let text = format!(
        "[nats]\nurl = \"{}\"\n\n[services.billing.upstream]\nurl = \"{base}/billing/{{order_id}}\"\n{}",
        nats.url,
        rest(&base)
    );
    (nats, fixture::file(&text, ".toml"))
}

/// `busgate up --config file --data-dir data` on free listeners, logging JSON.
fn up(file: &std::path::Path, data: &std::path::Path, extra_env: &[(&str, &str)]) -> Proc {
    let mut cmd = up_command(file, data, free_port());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Proc::spawn("busgate up", cmd)
}

/// The gateway's base URL and the admin token, from the banner (the client key: [`key`]).
fn banner(up: &Proc) -> (String, String) {
    let token = up.wait_for(Duration::from_secs(40), |line| {
        let (_, rest) = line.split_once("Authorization: Bearer ")?;
        Some(rest.trim_end().trim_end_matches(')').to_owned())
    });
    let base = up.wait_for(Duration::from_secs(5), |line| {
        line.trim_start()
            .strip_prefix("gateway ")
            .map(|u| u.trim().to_owned())
    });
    (base, token)
}

/// The demo client's key, from the banner.
fn key(up: &Proc) -> String {
    up.wait_for(Duration::from_secs(40), |line| {
        let (_, rest) = line.split_once("client key ")?;
        Some(rest.split_whitespace().next()?.to_owned())
    })
}

/// `(name, pid)` of every child `up` logged as started.
fn started(up: &Proc) -> Vec<(String, i32)> {
    up.lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "started")
        .filter_map(|v| Some((v["name"].as_str()?.to_owned(), v["pid"].as_i64()? as i32)))
        .collect()
}

async fn answer(url: &str, key: &str) -> (u16, Value) {
    match http().get(url).bearer_auth(key).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

const ROUTE: &str = r#"
[routes.order]
bindings = [{ method = "GET", path = "/api/orders/{order_id}" }]
targets = [{ service = "billing" }, { service = "shipping" }]
"#;

/// Two upstreams from a settings file: merged, served by `busgate-worker adapters`, no demo
/// process; the admin token is kept in the data dir (0600) and used again by the next `up`.
#[tokio::test]
async fn up_with_two_upstreams_merges_them_with_no_demo_and_keeps_its_token() {
    let (_nats, file) = upstreams_and_settings(|base| {
        format!(
            r#"timeout = "500ms"
headers = {{ "X-Worker" = {{ env = "HOME" }} }}

[services.shipping.upstream]
url = "{base}/shipping/{{order_id}}"
{ROUTE}"#
        )
    })
    .await;
    let data = tempfile::tempdir().expect("data");
    let mut first = up(file.path(), data.path(), &[]);
    let (gateway, token) = banner(&first);
    let key = self::key(&first);
    let url = format!("{gateway}/api/orders/A1");
    eventually(Duration::from_secs(10), || async {
        answer(&url, &key).await.0 == 200
    })
    .await;
    let (_, body) = answer(&url, &key).await;
    assert_eq!(body["complete"], true, "{body}");
    assert_eq!(body["data"]["billing"]["amount"], 12.5, "{body}");
    assert_eq!(body["data"]["shipping"]["carrier"], "GLS", "{body}");
    let names: Vec<String> = started(&first).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["adapters"], "no demo, no single adapter");
    let logs: Vec<String> = std::fs::read_dir(data.path().join("logs"))
        .expect("logs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!logs.iter().any(|l| l.starts_with("demo")), "{logs:?}");

    use std::os::unix::fs::PermissionsExt;
    let kept = data.path().join("admin-token");
    let mode = std::fs::metadata(&kept).expect("kept").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(first.terminate(Duration::from_secs(30)), Some(0));

    let second = up(file.path(), data.path(), &[]);
    let (gateway, again) = banner(&second);
    let first_key = key;
    let key = self::key(&second);
    assert_eq!(key, first_key, "the demo client's key is kept too");
    assert_eq!(again, token, "the bookmarked token still works");
    let admin = second.wait_for(Duration::from_secs(5), |line| {
        let (_, rest) = line.split_once("admin API ")?;
        Some(rest.split_whitespace().next()?.to_owned())
    });
    // 503 until the configuration store is ready; 401 would mean the token changed.
    eventually(Duration::from_secs(10), || async {
        let status = http()
            .get(format!("{admin}services"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("admin")
            .status();
        assert_ne!(status, 401);
        status == 200
    })
    .await;
    let url = format!("{gateway}/api/orders/A1");
    eventually(Duration::from_secs(10), || async {
        answer(&url, &key).await.0 == 200
    })
    .await;

    // The README's demo of a service nothing serves, as written there: 503 at once.
    let admin_api = http();
    for (kind, body) in [
        ("services", json!({"name": "ghost", "spec": {}})),
        (
            "routes",
            json!({"name": "ghost", "spec": {"bindings": [{"method": "GET", "path": "/api/ghost/{order_id}"}], "targets": [{"service": "ghost"}]}}),
        ),
    ] {
        let status = admin_api
            .post(format!("{admin}{kind}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("admin")
            .status();
        assert_eq!(status, 201, "{kind}");
    }
    let asked = Instant::now();
    let (status, body) = answer(&format!("{gateway}/api/ghost/A1"), &key).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["sources"]["ghost"]["status"], "no_responders",
        "{body}"
    );
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "at once, not at the deadline"
    );
}

/// A child killed with SIGKILL is started again within 5 s; the routes it does not serve keep
/// answering meanwhile.
#[tokio::test]
async fn a_killed_child_comes_back_and_the_stack_keeps_serving() {
    let (_nats, file) = upstreams_and_settings(|_| {
        r#"
[services.shipping]
timeout = "800ms"

[routes.bill]
bindings = [{ method = "GET", path = "/api/bills/{order_id}" }]
targets = [{ service = "billing" }]

[routes.ship]
bindings = [{ method = "GET", path = "/api/ships/{order_id}" }]
targets = [{ service = "shipping" }]
"#
        .to_owned()
    })
    .await;
    let data = tempfile::tempdir().expect("data");
    let stack = up(file.path(), data.path(), &[]);
    let (gateway, _) = banner(&stack);
    let key = self::key(&stack);
    let bill = format!("{gateway}/api/bills/A1");
    let ship = format!("{gateway}/api/ships/A1");
    eventually(Duration::from_secs(10), || async {
        answer(&bill, &key).await.0 == 200 && answer(&ship, &key).await.0 == 200
    })
    .await;
    let kids = started(&stack);
    let names: Vec<&str> = kids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["adapters", "demo-shipping", "adapter-shipping"]);
    let (_, pid) = kids[0].clone();

    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
    let killed = Instant::now();
    let mut served_meanwhile = 0;
    loop {
        // The demo-served route keeps answering while the adapters process is away.
        assert_eq!(
            answer(&ship, &key).await.0,
            200,
            "the other route kept serving"
        );
        served_meanwhile += 1;
        let back = started(&stack)
            .iter()
            .any(|(n, p)| n == "adapters" && *p != pid);
        if back && answer(&bill, &key).await.0 == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the adapters process was not back within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served_meanwhile > 0);
    assert!(stack.logged("exited, restarting"));

    // `up` starts its children in process groups of their own: killing `up` with SIGKILL
    // (as dropping a test's process does) must not leave them behind.
    let mark = stack.mark().to_owned();
    assert!(
        marked(&mark).len() > 1,
        "up and its children carry the mark"
    );
    drop(stack);
    assert_eq!(
        marked(&mark),
        Vec::<i32>::new(),
        "processes left behind by busgate up"
    );
}
