//! End-to-end: the admin UI in headless Chromium (Debian's), driven by playwright-core
//! (`tests/browser/ui.mjs`), against a real stack. Screenshots land in
//! `tests/browser/screenshots/`.

use busgate_tests::fixture::Settings;
use busgate_tests::support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{Stack, Worker, ADMIN_TOKEN};

#[tokio::test]
async fn the_admin_ui_creates_tries_and_rolls_back_a_route() {
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
    // The service the UI creates is answered by a native worker that is already running.
    let _billing = Worker::native(&stack.nats, "billing");
    let screenshots = browser_dir.join("screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    let admin_url = stack.gateway.admin.clone();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(browser_dir.join("ui.mjs"))
                .env("ADMIN_URL", admin_url)
                .env("ADMIN_TOKEN", ADMIN_TOKEN)
                .env("SCREENSHOTS", &screenshots)
                .env("CHROMIUM", chromium)
                .output()
                .expect("node runs (tests/run.sh needs Node.js)")
        }),
    )
    .await
    .expect("the UI test finishes within 2 minutes")
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "UI test failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ui: all steps passed"), "{stdout}");
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
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(browser_dir.join("clients.mjs"))
                .env("ADMIN_URL", admin_url)
                .env("ADMIN_TOKEN", ADMIN_TOKEN)
                .env("PUBLIC_URL", public_url)
                .env("SCREENSHOTS", &screenshots)
                .env("CHROMIUM", chromium)
                .output()
                .expect("node runs (tests/run.sh needs Node.js)")
        }),
    )
    .await
    .expect("the UI test finishes within 2 minutes")
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Clients page test failed\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("clients: all steps passed"), "{stdout}");
}
