//! End-to-end: the admin UI in headless Chromium (Debian's), driven by playwright-core
//! (`tests/browser/ui.mjs`), against a real stack and a real upstream HTTP server. Screenshots
//! land in `tests/browser/screenshots/` (`docs/img/` holds the ones the docs show).

use busgate_tests::fixture::Settings;
use busgate_tests::support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use axum::extract::Path;
use axum::Json;
use serde_json::json;

use support::{bin, Gateway, NatsServer, Proc, Stack, ADMIN_TOKEN};

/// The variable the upstream header of the service the UI creates reads.
const KEY_VARIABLE: &str = "INVOICES_KEY";

/// A real HTTP server standing for the user's own service: `GET /invoices/{order_id}` answers
/// recognisable JSON. Returns its base URL; it stops with the test's runtime.
async fn start_invoice_upstream() -> String {
    let app = axum::Router::new().route(
        "/invoices/{order_id}",
        axum::routing::get(|Path(order_id): Path<String>| async move {
            Json(json!({
                "invoice": format!("INV-{order_id}"),
                "amount_due": 129.5,
                "currency": "EUR",
                "issued_by": "test-upstream",
            }))
        }),
    );
    support::serve(app).await
}

/// Starts `busgate-worker adapters`, which serves every service that has an upstream in the
/// configuration: the service the UI creates is served by it, with no process started for it.
/// `KEY_VARIABLE` is in its environment because the UI names it as a header's source.
fn start_upstream_adapters(nats: &NatsServer) -> Proc {
    let mut cmd = Command::new(bin("busgate-worker"));
    cmd.env("BUSGATE_LOG__FORMAT", "json")
        .env("BUSGATE_NATS__URL", &nats.url)
        .env(KEY_VARIABLE, "test-upstream-key")
        .arg("adapters");
    Proc::spawn("adapters", cmd)
}

/// Runs the Playwright script `script` with `env` and the admin token (bounded: 2 minutes);
/// asserts it succeeded; returns what it printed.
async fn node(script: PathBuf, env: &[(&str, String)]) -> String {
    let name = script.display().to_string();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(&script)
                .envs(env)
                .env("ADMIN_TOKEN", ADMIN_TOKEN)
                .output()
                .expect("node runs (tests/run.sh needs Node.js)")
        }),
    )
    .await
    .expect("the UI test finishes within 2 minutes")
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed\n{stdout}\n{stderr}",
        name
    );
    stdout
}

#[tokio::test]
async fn the_admin_ui_connects_an_upstream_tries_it_and_diffs_its_history() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: tests/run.sh installs Debian's chromium (or set CHROMIUM)"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: tests/run.sh runs npm ci in tests/browser"
    );
    let stack = Stack::start(&Settings::default()).await;
    let upstream = start_invoice_upstream().await;
    let _adapters = start_upstream_adapters(&stack.nats);
    let screenshots = browser_dir.join("screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    let admin_url = stack.gateway.admin.clone();
    let stdout = node(
        browser_dir.join("ui.mjs"),
        &[
            ("ADMIN_URL", admin_url),
            ("SCREENSHOTS", screenshots.display().to_string()),
            ("UPSTREAM_URL", upstream),
            ("CHROMIUM", chromium),
        ],
    )
    .await;
    assert!(stdout.contains("ui: all steps passed"), "{stdout}");
    // The steps, with how soon the new service answered (seen with --nocapture).
    println!("{stdout}");
}

#[tokio::test]
async fn the_favicon_is_our_own_icon_with_its_type_and_a_cache_lifetime() {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::default()).await;
    let http = reqwest::Client::new();
    let page = http
        .get(gateway.admin_url("/"))
        .send()
        .await
        .expect("ui")
        .text()
        .await
        .expect("html");
    assert!(
        page.contains(r#"<link rel="icon" href="/ui/favicon.svg" type="image/svg+xml">"#),
        "the page links its icon"
    );
    let mut bodies = Vec::new();
    for path in ["/favicon.ico", "/ui/favicon.svg"] {
        let response = http
            .get(gateway.admin_url(path))
            .send()
            .await
            .expect("icon");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("image/svg+xml"),
            "{path}"
        );
        assert_eq!(
            header("cache-control").as_deref(),
            Some("public, max-age=86400"),
            "{path}"
        );
        // The admin listener's other headers hold for it too.
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        let body = response.text().await.expect("body");
        assert!(body.starts_with("<svg ") && body.len() < 1024, "{body}");
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1]);
    // Other answers are still never cached, and an unknown icon name is still a 404.
    let ui = http.get(gateway.admin_url("/")).send().await.expect("ui");
    assert_eq!(ui.headers()["cache-control"], "no-store");
    let missing = http
        .get(gateway.admin_url("/favicon.png"))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status(), 404);
}

/// The Clients page: create a client (key shown once, copied), add a key, revoke one, set
/// limits, try as the client; each step checked against the public API (`tests/browser/clients.mjs`).
#[tokio::test]
async fn the_clients_page_makes_keys_that_work_and_revokes_them() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: tests/run.sh installs Debian's chromium (or set CHROMIUM)"
    );
    let stack = Stack::start(&Settings::builtin().auth_required()).await;
    // A folder of its own: the other UI test empties `screenshots` when it starts.
    let screenshots = browser_dir.join("screenshots-clients");
    let _ = std::fs::remove_dir_all(&screenshots);
    let (admin_url, public_url) = (stack.gateway.admin.clone(), stack.gateway.base.clone());
    let stdout = node(
        browser_dir.join("clients.mjs"),
        &[
            ("ADMIN_URL", admin_url),
            ("PUBLIC_URL", public_url),
            ("SCREENSHOTS", screenshots.display().to_string()),
            ("CHROMIUM", chromium),
        ],
    )
    .await;
    assert!(stdout.contains("clients: all steps passed"), "{stdout}");
}

/// Composition in the UI: the route editor's needs/with/when.field fields and stages (a cycle
/// shown and refused), and the try-it's waterfall (`tests/browser/graph.mjs`).
#[tokio::test]
async fn the_route_editor_shows_stages_and_try_it_draws_a_waterfall() {
    let browser_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "{chromium} is missing: tests/run.sh installs Debian's chromium (or set CHROMIUM)"
    );
    let stack = Stack::start(&Settings::default()).await;
    // A folder of its own: the other UI tests empty theirs when they start.
    let screenshots = browser_dir.join("screenshots-graph");
    let _ = std::fs::remove_dir_all(&screenshots);
    let stdout = node(
        browser_dir.join("graph.mjs"),
        &[
            ("ADMIN_URL", stack.gateway.admin.clone()),
            ("SCREENSHOTS", screenshots.display().to_string()),
            ("CHROMIUM", chromium),
        ],
    )
    .await;
    assert!(stdout.contains("graph: all steps passed"), "{stdout}");
}
