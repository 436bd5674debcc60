//! End-to-end: composition (issue 26). A real nats-server, the real `busgate gateway`, a real
//! `busgate-worker adapters` process following the configuration, and a real HTTP server (in
//! this test process) as the upstream of three services: `s1` (the order: its customer, its
//! carrier, its status), `look` (a lookup by `{key}`, asked with values from `s1`'s answer) and
//! `bad` (always 500).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use busgate_tests::fixture::Settings;
use busgate_tests::support::{
    self, bin, eventually, serve, submit_request, until_final, Gateway, NatsServer, Proc,
};
use serde_json::{json, Value};

/// The paths the upstream was asked, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// How long a lookup takes (a `slow` key: far longer than any deadline here).
const LOOKUP: Duration = Duration::from_millis(300);

async fn upstream() -> (String, Seen) {
    let seen = Seen::default();
    let app = axum::Router::new()
        .route(
            "/s1/{id}",
            get(|Path(id): Path<String>| async move {
                if id.starts_with("slow") {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let status = if id.starts_with("paid") { "paid" } else { "shipped" };
                axum::Json(json!({
                    "order_id": id, "customer": format!("C-{id}"), "carrier": "DHL", "status": status
                }))
            }),
        )
        .route(
            "/look/{key}",
            get(|State(s): State<Seen>, Path(key): Path<String>| async move {
                s.lock().expect("seen").push(format!("/look/{key}"));
                let wait = if key.contains("slow") {
                    Duration::from_secs(5)
                } else {
                    LOOKUP
                };
                tokio::time::sleep(wait).await;
                axum::Json(json!({"key": key}))
            }),
        )
        .route(
            "/bad/{id}",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR.into_response() }),
        )
        .with_state(seen.clone());
    (serve(app).await, seen)
}

fn adapters(nats: &NatsServer) -> Proc {
    let mut cmd = Command::new(bin("busgate-worker"));
    cmd.arg("adapters")
        .env("BUSGATE_NATS__URL", &nats.url)
        .env("BUSGATE_LOG__FORMAT", "json");
    let proc = Proc::spawn("adapters", cmd);
    proc.wait_for(support::READY_WITHIN, |l| {
        l.contains("nats connected").then_some(())
    });
    proc
}

async fn admin(gateway: &Gateway, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let answer = gateway.admin_send(method, path, None, body).await;
    (answer.status, answer.body)
}

async fn create(gateway: &Gateway, kind: &str, name: &str, spec: Value) -> (u16, Value) {
    let body = json!({"name": name, "spec": spec});
    admin(gateway, "POST", &format!("/admin/v1/{kind}"), Some(&body)).await
}

fn route(path: &str, deadline: &str, targets: Value) -> Value {
    json!({"bindings": [{"method": "GET", "path": path}], "deadline": deadline, "targets": targets})
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The stack: upstream, NATS, gateway, adapters, and the three services.
async fn stack() -> (String, Seen, NatsServer, Gateway, Proc) {
    let (base, seen) = upstream().await;
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    let follower = adapters(&nats);
    for (name, path) in [
        ("s1", "s1/{order_id}"),
        ("look", "look/{key}"),
        ("bad", "bad/{order_id}"),
    ] {
        let spec = json!({"timeout": "2s", "upstream": {"url": format!("{base}/{path}")}});
        let (status, body) = create(&gateway, "services", name, spec).await;
        assert_eq!(status, 201, "{name}: {body}");
    }
    (base, seen, nats, gateway, follower)
}

/// Service1 → two lookups of one service under two aliases, each with a value from service1's
/// answer in its URL; both start after service1 ended and run in parallel; the same on the
/// asynchronous path.
#[tokio::test]
async fn dependents_get_values_from_their_dependency_and_run_in_parallel() {
    let (_base, seen, _nats, gateway, _adapters) = stack().await;
    let targets = json!([
        {"service": "s1"},
        {"service": "look", "as": "customer", "needs": ["s1"], "with": {"key": "/s1/customer"}},
        {"service": "look", "as": "carrier", "needs": ["s1"], "with": {"key": "/s1/carrier"}}
    ]);
    let (status, body) = create(
        &gateway,
        "routes",
        "chain",
        route("/api/chain/{order_id}", "3s", targets),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = gateway.url("/api/chain/A1");
    eventually(Duration::from_secs(5), || async {
        get_json(&url).await.0 == 200
    })
    .await;
    seen.lock().expect("seen").clear();

    let (status, answer) = get_json(&url).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["complete"], true, "{answer}");
    assert_eq!(answer["data"]["s1"]["customer"], "C-A1");
    assert_eq!(answer["data"]["customer"]["key"], "C-A1", "{answer}");
    assert_eq!(answer["data"]["carrier"]["key"], "DHL", "{answer}");
    let mut paths = seen.lock().expect("seen").clone();
    paths.sort();
    assert_eq!(
        paths,
        ["/look/C-A1", "/look/DHL"],
        "the upstream saw the values in its URL"
    );

    let sources = &answer["sources"];
    let s1_end = ms(&sources["s1"]["started_ms"]) + ms(&sources["s1"]["elapsed_ms"]);
    for alias in ["customer", "carrier"] {
        let s = &sources[alias];
        assert_eq!(s["status"], "ok", "{answer}");
        assert_eq!(s["service"], "look");
        assert!(
            ms(&s["started_ms"]) >= s1_end - 0.05,
            "{alias} started before s1 ended: {answer}"
        );
    }
    // Parallel: the whole took about one lookup after service1, not two.
    let lookups = ms(&sources["customer"]["elapsed_ms"]).max(ms(&sources["carrier"]["elapsed_ms"]));
    let total = ms(&answer["elapsed_ms"]);
    assert!(total < s1_end + lookups + 150.0, "{answer}");
    assert!(
        total < s1_end + 2.0 * LOOKUP.as_millis() as f64 - 100.0,
        "sequential? {answer}"
    );

    // The asynchronous path runs the same graph.
    let (_, accepted) = submit_request(
        support::http()
            .get(gateway.url("/api/chain/B2"))
            .header("Prefer", "respond-async"),
    )
    .await;
    let id = support::request_id(&accepted);
    let doc = until_final(&gateway, &id, Duration::from_secs(10)).await;
    assert_eq!(doc["status"], "completed", "{doc}");
    assert_eq!(doc["result"]["data"]["customer"]["key"], "C-B2", "{doc}");
    assert!(
        doc["result"]["sources"]["carrier"]["started_ms"].is_number(),
        "{doc}"
    );
}

/// A false condition on an answer, a pointer that finds nothing, an optional dependency that
/// failed: each skipped with its reason; a required dependency that failed: the request's
/// status (502).
#[tokio::test]
async fn skips_carry_reasons_and_a_failed_required_dependency_fails_the_request() {
    let (_base, seen, _nats, gateway, _adapters) = stack().await;
    let targets = json!([
        {"service": "s1"},
        {"service": "bad", "required": false},
        {"service": "look", "as": "cond", "required": false, "with": {"key": "/s1/customer"},
         "when": {"field": {"path": "/s1/status", "equals": "paid"}}},
        {"service": "look", "as": "nothing", "required": false, "needs": ["s1"],
         "with": {"key": "/s1/nothing"}},
        {"service": "look", "as": "after_bad", "required": false, "needs": ["bad"],
         "with": {"key": "/bad/x"}}
    ]);
    let (status, body) = create(
        &gateway,
        "routes",
        "skips",
        route("/api/skips/{order_id}", "3s", targets),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = gateway.url("/api/skips/A1");
    eventually(Duration::from_secs(5), || async {
        get_json(&url).await.0 == 200
    })
    .await;
    seen.lock().expect("seen").clear();
    let (status, answer) = get_json(&url).await;
    assert_eq!(status, 200, "{answer}");
    let sources = &answer["sources"];
    assert_eq!(sources["bad"]["status"], "error", "{answer}");
    assert_eq!(answer["complete"], false);
    for (alias, reason) in [
        ("cond", "condition"),
        ("nothing", "missing_value"),
        ("after_bad", "dependency_failed"),
    ] {
        assert_eq!(sources[alias]["status"], "skipped", "{alias}: {answer}");
        assert_eq!(sources[alias]["reason"], reason, "{alias}: {answer}");
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "nothing skipped was asked"
    );
    // The condition holds for a paid order.
    let (_, answer) = get_json(&gateway.url("/api/skips/paid-7")).await;
    assert_eq!(answer["data"]["cond"]["key"], "C-paid-7", "{answer}");

    let targets = json!([
        {"service": "bad"},
        {"service": "look", "needs": ["bad"], "with": {"key": "/bad/x"}}
    ]);
    let (status, body) = create(
        &gateway,
        "routes",
        "reqfail",
        route("/api/reqfail/{order_id}", "3s", targets),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = gateway.url("/api/reqfail/A1");
    eventually(Duration::from_secs(5), || async {
        get_json(&url).await.0 == 502
    })
    .await;
}

/// A slow first stage leaves the second `timeout` at the route's deadline, not late; a
/// dependent's elapsed time counts from its own start.
#[tokio::test]
async fn the_deadline_holds_across_stages() {
    let (_base, _seen, _nats, gateway, _adapters) = stack().await;
    let targets = json!([
        {"service": "s1"},
        {"service": "look", "required": false, "needs": ["s1"], "with": {"key": "/s1/customer"}}
    ]);
    let (status, body) = create(
        &gateway,
        "routes",
        "late",
        route("/api/late/{order_id}", "1s", targets),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = gateway.url("/api/late/A1");
    eventually(Duration::from_secs(5), || async {
        get_json(&url).await.0 == 200
    })
    .await;

    let asked = Instant::now();
    let (status, answer) = get_json(&gateway.url("/api/late/slow-A1")).await;
    let wall = asked.elapsed();
    assert_eq!(status, 200, "{answer}");
    let look = &answer["sources"]["look"];
    assert_eq!(look["status"], "timeout", "{answer}");
    assert_eq!(answer["complete"], false);
    assert!(ms(&answer["elapsed_ms"]) < 1100.0, "{answer}");
    assert!(wall < Duration::from_millis(1600), "{wall:?}");
    // It started when s1 ended (~500 ms) and waited only what was left of the deadline.
    let started = ms(&look["started_ms"]);
    assert!(started >= 450.0, "{answer}");
    assert!(
        (started + ms(&look["elapsed_ms"]) - 1000.0).abs() < 20.0,
        "{answer}"
    );
}

/// A cycle, an unknown need, an alias clash, a pointer into a target not needed: 422 naming
/// the problem, nothing stored; the same in a settings file: exit 64.
#[tokio::test]
async fn bad_graphs_are_refused_and_nothing_is_stored() {
    let (_base, _seen, _nats, gateway, _adapters) = stack().await;
    let cases = [
        (
            json!([
                {"service": "s1", "needs": ["look"]},
                {"service": "look", "needs": ["s1"], "with": {"key": "/s1/customer"}}
            ]),
            "cycle: s1 → look → s1",
        ),
        (
            json!([{"service": "s1", "needs": ["ghost"]}]),
            "unknown need \\\"ghost\\\"",
        ),
        (
            json!([{"service": "s1"}, {"service": "bad", "as": "s1"}]),
            "alias clash",
        ),
        (
            json!([
                {"service": "s1"}, {"service": "bad"},
                {"service": "look", "needs": ["bad"], "with": {"key": "/s1/customer"}}
            ]),
            "does not need",
        ),
    ];
    for (i, (targets, named)) in cases.into_iter().enumerate() {
        let name = format!("bad{i}");
        let (status, body) = create(
            &gateway,
            "routes",
            &name,
            route(&format!("/api/bad{i}/{{order_id}}"), "1s", targets),
        )
        .await;
        assert_eq!(status, 422, "{name}: {body}");
        assert!(body.to_string().contains(named), "{name}: {body}");
        let (status, _) = admin(&gateway, "GET", &format!("/admin/v1/routes/{name}"), None).await;
        assert_eq!(status, 404, "{name} was stored");
    }

    let file = busgate_tests::fixture::file(
        r#"
[services.a]
timeout = "1s"
[services.b]
timeout = "1s"
[routes.loop]
bindings = [{method = "GET", path = "/api/loop/{order_id}"}]
targets = [{service = "a", needs = ["b"]}, {service = "b", needs = ["a"]}]
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
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(text.contains("cycle: a → b → a"), "{text}");
}

/// The worked example of docs/routes.md on the demo services, natively on NATS: `carriers`
/// reads the carrier from the request's attributes; it is asked only for shipped or delivered
/// orders, and what it answers is under its alias.
#[tokio::test]
async fn the_worked_example_runs_on_the_demo_services() {
    use busgate_shared::compose::FieldCondition;
    use busgate_shared::config::{Condition, TargetSpec};
    use busgate_tests::fixture::Route;

    let nats = NatsServer::start();
    let _services = support::Worker::natives(&nats, &["service1", "service2", "carriers"]);
    let mut carrier = TargetSpec::new("carriers", false);
    carrier.alias = Some("carrier".into());
    carrier.needs = vec!["service2".into()];
    carrier.with = [("carrier".to_owned(), "/service2/carrier".to_owned())].into();
    carrier.when = Some(Condition {
        field: Some(FieldCondition {
            path: "/service1/status".into(),
            one_of: Some(vec![json!("shipped"), json!("delivered")]),
            ..FieldCondition::default()
        }),
        ..Condition::default()
    });
    let settings = Settings::builtin()
        .service("carriers", Duration::from_millis(500))
        .route(
            "shipment",
            Route::get("/api/shipments/{order_id}")
                .target("service1")
                .optional("service2")
                .target_spec(carrier),
        );
    let gateway = Gateway::start(&nats, &settings).await;
    let (mut asked, mut skipped) = (0, 0);
    for id in ["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4"] {
        let (status, answer) = get_json(&gateway.url(&format!("/api/shipments/{id}"))).await;
        assert_eq!(status, 200, "{answer}");
        let order_status = answer["data"]["service1"]["status"]
            .as_str()
            .expect("status");
        let source = &answer["sources"]["carrier"];
        if ["shipped", "delivered"].contains(&order_status) {
            asked += 1;
            assert_eq!(source["status"], "ok", "{answer}");
            assert_eq!(
                answer["data"]["carrier"]["carrier"], answer["data"]["service2"]["carrier"],
                "{answer}"
            );
            assert!(answer["data"]["carrier"]["name"].is_string(), "{answer}");
        } else {
            skipped += 1;
            assert_eq!(source["status"], "skipped", "{answer}");
            assert_eq!(source["reason"], "condition", "{answer}");
        }
    }
    assert!(asked > 0 && skipped > 0, "asked {asked}, skipped {skipped}");
}
