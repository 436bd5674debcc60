//! End-to-end: configuration as code. `busgate config export / diff / apply` against a running
//! gateway (through its admin API, and through NATS directly) round-trip exactly; an apply whose
//! objects change meanwhile fails naming the object and leaves nothing half-applied (driven in
//! this process, to change the store in its midst); an invalid file writes nothing (exit 64);
//! `--prune` alone deletes; and `busgate up --config` applies its file, so a second `up` with
//! another file in the same data dir serves that file's services.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use busgate_gateway::admin::direct::Direct;
use busgate_gateway::config::apply::{apply, ApplyError, Target};
use busgate_gateway::config::file;
use busgate_gateway::config::plan::{Plan, Step, Stored};
use busgate_gateway::config::store::Kind;
use busgate_tests::fixture::{self, Settings};
use busgate_tests::gateway::{up_command, Gateway, ADMIN_TOKEN};
use busgate_tests::nats::NatsServer;
use busgate_tests::process::{bin, Proc};
use busgate_tests::support::{eventually, free_port, http, serve};
use serde_json::{json, Value};

/// What a `busgate config …` run gave: its exit code and output.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `busgate config <args>` against `gateway`: through its admin API when `admin`, else
/// through NATS (the gateway's NATS URL in the environment, as `busgate gateway` reads it).
fn config(gateway: &Gateway, nats: &NatsServer, admin: bool, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin("busgate"));
    cmd.arg("config")
        .args(args)
        .env_remove("BUSGATE_ADMIN_TOKEN");
    if admin {
        cmd.args(["--admin", &gateway.admin])
            .env("BUSGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    } else {
        cmd.env("BUSGATE_NATS__URL", &nats.url)
            .envs(nats.env.iter().cloned())
            .env("BUSGATE_ADMIN__TOKEN", ADMIN_TOKEN)
            .env("BUSGATE_LOG__FORMAT", "json");
    }
    let out = cmd.output().expect("busgate config");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_no_secret(&run, ADMIN_TOKEN);
    run
}

/// Neither output of `run` carries `secret`.
fn assert_no_secret(run: &Run, secret: &str) {
    assert!(
        !run.stdout.contains(secret) && !run.stderr.contains(secret),
        "a secret in the output of `busgate config`: {}{}",
        run.stdout,
        run.stderr
    );
}

/// A gateway with the built-in configuration, once its store answers.
async fn gateway() -> (NatsServer, Gateway) {
    let nats = NatsServer::start();
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    eventually(Duration::from_secs(10), || async {
        gateway
            .admin_send("GET", "/admin/v1/services", None, None)
            .await
            .status
            == 200
    })
    .await;
    (nats, gateway)
}

/// An object through the admin API: its status and body.
async fn object(gateway: &Gateway, path: &str) -> (u16, Value) {
    let answer = gateway.admin_send("GET", path, None, None).await;
    (answer.status, answer.body)
}

/// The export of `gateway`'s store (TOML), through its admin API.
fn export(gateway: &Gateway, nats: &NatsServer) -> String {
    let run = config(gateway, nats, true, &["export"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

const BILLING: &str = r#"
[services.billing]
timeout = "1s"
"#;

/// A direct target that changes `routes.order` through the admin API just before its
/// `at_write`-th write, or before its first revision check (`at_write` 0).
struct Meddler<'a> {
    inner: Direct,
    gateway: &'a Gateway,
    at_write: usize,
    writes: AtomicUsize,
}

impl Meddler<'_> {
    async fn meddle(&self) {
        let (_, current) = object(self.gateway, "/admin/v1/routes/order").await;
        let mut spec = current["spec"].clone();
        spec["deadline"] = json!("3s");
        let tag = format!("\"{}\"", current["revision"]);
        let answer = self
            .gateway
            .admin_send("PUT", "/admin/v1/routes/order", Some(&tag), Some(&spec))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}

impl Target for Meddler<'_> {
    async fn read(&self) -> Result<Stored, ApplyError> {
        self.inner.read().await
    }

    fn check(&self, plan: &Plan) -> Result<(), ApplyError> {
        self.inner.check(plan)
    }

    async fn revision(&self, step: &Step) -> Result<Option<u64>, ApplyError> {
        if self.at_write == 0 && self.writes.fetch_add(1, Ordering::SeqCst) == 0 {
            self.meddle().await;
        }
        self.inner.revision(step).await
    }

    async fn write(&self, step: &Step) -> Result<Option<u64>, ApplyError> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.at_write {
            self.meddle().await;
        }
        self.inner.write(step).await
    }

    async fn put(
        &self,
        kind: Kind,
        name: &str,
        doc: &Value,
        expected: Option<u64>,
    ) -> Result<u64, ApplyError> {
        self.inner.put(kind, name, doc, expected).await
    }

    async fn delete(&self, kind: Kind, name: &str, expected: u64) -> Result<(), ApplyError> {
        self.inner.delete(kind, name, expected).await
    }
}

/// Export → diff is empty through both targets; a file with a new service and a changed route
/// is a diff (exit 1), a dry run writes nothing; a change made meanwhile (before the writes, or
/// between them) makes the apply fail naming `routes.order`, with nothing of it left; then the
/// apply through the admin API, and export → apply → diff is empty again.
#[tokio::test]
async fn export_apply_diff_round_trip_and_a_change_meanwhile_leaves_nothing_half_applied() {
    let (nats, gateway) = gateway().await;
    let shop = gateway.client("shop", json!({"routes": ["order"]})).await;

    let exported = export(&gateway, &nats);
    let direct = config(&gateway, &nats, false, &["export"]);
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    assert_eq!(direct.stdout, exported, "the same store through NATS");
    assert!(exported.contains("[clients.shop]"), "{exported}");
    assert!(!exported.contains(&shop.secret), "never a key's secret");
    let json = config(&gateway, &nats, true, &["export", "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let same = fixture::file(&json.stdout, ".json");
    let run = config(
        &gateway,
        &nats,
        true,
        &["diff", &same.path().display().to_string()],
    );
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);

    let unchanged = fixture::file(&exported, ".toml");
    let path = unchanged.path().display().to_string();
    for admin in [true, false] {
        let run = config(&gateway, &nats, admin, &["diff", &path, "--prune"]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("0 to change"), "{}", run.stdout);
    }

    let changed = exported.replace("deadline = \"1s\"", "deadline = \"2s\"") + BILLING;
    assert_ne!(
        changed,
        exported + BILLING,
        "the export names the order route's deadline"
    );
    let changed_file = fixture::file(&changed, ".toml");
    let changed_path = changed_file.path().display().to_string();
    let run = config(&gateway, &nats, true, &["diff", &changed_path]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("+ services.billing\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("~ routes.order\n"), "{}", run.stdout);
    assert!(
        run.stdout.contains("    + deadline = \"2s\""),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("hash"),
        "keys by id only: {}",
        run.stdout
    );
    let run = config(
        &gateway,
        &nats,
        false,
        &["apply", &changed_path, "--dry-run"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(object(&gateway, "/admin/v1/services/billing").await.0, 404);

    // A change meanwhile: before the writes (nothing written), then between them (the
    // service written first is deleted again).
    let spec = file::parse(&changed, "changed").expect("parse");
    let client = nats.client().await;
    for at_write in [0, 2] {
        let meddler = Meddler {
            inner: Direct::open(&client, 1).await.expect("store"),
            gateway: &gateway,
            at_write,
            writes: AtomicUsize::new(0),
        };
        let Err(ApplyError::Conflict {
            object: named,
            detail,
        }) = apply(&meddler, &spec, false, false).await
        else {
            panic!("a conflict");
        };
        assert_eq!(named, "routes.order", "{detail}");
        assert_eq!(
            object(&gateway, "/admin/v1/services/billing").await.0,
            404,
            "{detail}"
        );
        let (_, order) = object(&gateway, "/admin/v1/routes/order").await;
        assert_eq!(
            order["spec"]["deadline"], "3s",
            "the other writer's change stays"
        );
        let run = config(&gateway, &nats, true, &["diff", &changed_path]);
        assert!(
            run.stdout.contains("    - deadline = \"3s\""),
            "{}",
            run.stdout
        );
    }

    let run = config(&gateway, &nats, true, &["apply", &changed_path]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("applied"), "{}", run.stdout);
    for admin in [true, false] {
        let run = config(&gateway, &nats, admin, &["diff", &changed_path]);
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    }
    let (status, billing) = object(&gateway, "/admin/v1/services/billing").await;
    assert_eq!((status, &billing["spec"]["timeout"]), (200, &json!("1s")));
    let (_, history) = object(&gateway, "/admin/v1/routes/order/history").await;
    assert!(
        history["items"].as_array().is_some_and(|h| h.len() >= 3),
        "{history}"
    );
    gateway.proc.wait_for(Duration::from_secs(5), |line| {
        (line.contains("admin write") && line.contains("services.billing")).then_some(())
    });

    // Export → apply (through NATS: audited as direct writes) → diff is empty.
    let again = fixture::file(&export(&gateway, &nats), ".toml");
    let again = again.path().display().to_string();
    let run = config(&gateway, &nats, false, &["apply", &again, "--prune"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("0 to change"), "{}", run.stdout);
    let run = config(&gateway, &nats, true, &["diff", &again, "--prune"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

/// One invalid route among valid changes: exit 64 naming the field, nothing written, through
/// either target.
#[tokio::test]
async fn a_file_with_one_invalid_route_writes_nothing_and_exits_64() {
    let (nats, gateway) = gateway().await;
    let text = export(&gateway, &nats)
        + BILLING
        + r#"
[routes.bad]
bindings = [{ method = "GET", path = "/api/bad/{order_id}" }]
targets = [{ service = "ghost" }]
"#;
    let bad = fixture::file(&text, ".toml");
    let path = bad.path().display().to_string();
    for admin in [true, false] {
        let run = config(&gateway, &nats, admin, &["apply", &path]);
        assert_eq!(run.code, 64, "{}{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains("routes.bad.targets[0].service"),
            "{}",
            run.stderr
        );
        assert_eq!(object(&gateway, "/admin/v1/services/billing").await.0, 404);
    }
    let broken = fixture::file("[services.x]\ntimeout = \n", ".toml");
    let run = config(
        &gateway,
        &nats,
        false,
        &["diff", &broken.path().display().to_string()],
    );
    assert_eq!(run.code, 64, "{}", run.stderr);
}

/// Without `--prune` what the file does not name stays (and the diff says so); with it, it goes.
#[tokio::test]
async fn prune_deletes_what_the_file_does_not_name_and_nothing_else_does() {
    let (nats, gateway) = gateway().await;
    let text = r#"
[services.service1]

[routes.order]
bindings = [{ method = "GET", path = "/api/orders/{order_id}" }]
targets = [{ service = "service1" }]
"#;
    let only = fixture::file(text, ".toml");
    let path = only.path().display().to_string();
    let run = config(&gateway, &nats, false, &["apply", &path]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("services.service2: not in the file, kept"),
        "{}",
        run.stdout
    );
    assert_eq!(object(&gateway, "/admin/v1/services/service2").await.0, 200);
    assert_eq!(config(&gateway, &nats, true, &["diff", &path]).code, 0);
    let run = config(&gateway, &nats, true, &["diff", &path, "--prune"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("- services.service2\n"),
        "{}",
        run.stdout
    );

    let run = config(&gateway, &nats, true, &["apply", &path, "--prune"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(object(&gateway, "/admin/v1/services/service2").await.0, 404);
    assert_eq!(object(&gateway, "/admin/v1/services/service1").await.0, 200);
    assert_eq!(
        config(&gateway, &nats, false, &["diff", &path, "--prune"]).code,
        0
    );

    // A gateway started with a settings file that differs from the store says so, once.
    let other = Gateway::start(&nats, &Settings::builtin()).await;
    let line = other.proc.wait_for(Duration::from_secs(10), |line| {
        line.contains("busgate config diff")
            .then(|| line.to_owned())
    });
    assert!(line.contains("busgate config apply"), "{line}");
    let said = |g: &Gateway| {
        g.proc
            .lines()
            .iter()
            .filter(|l| l.contains("busgate config diff"))
            .count()
    };
    assert_eq!(said(&other), 1);
    assert_eq!(
        said(&gateway),
        0,
        "the first gateway seeded the store: nothing to say"
    );
}

/// An upstream on a free port answering `/{name}/{id}`.
async fn upstream() -> String {
    let app = axum::Router::new().route(
        "/{name}/{id}",
        get(|Path((name, id)): Path<(String, String)>| async move {
            axum::Json(json!({"order_id": id, "from": name}))
        }),
    );
    serve(app).await
}

/// A settings file on `nats`: the service `name` on the upstream, and its route
/// `GET /api/<name>/{order_id}`.
fn up_file(nats: &NatsServer, base: &str, name: &str) -> tempfile::NamedTempFile {
    let text = format!(
        "[nats]\nurl = \"{}\"\n\n[services.{name}.upstream]\nurl = \"{base}/{name}/{{order_id}}\"\n\n\
         [routes.{name}]\nbindings = [{{ method = \"GET\", path = \"/api/{name}/{{order_id}}\" }}]\n\
         targets = [{{ service = \"{name}\" }}]\n",
        nats.url
    );
    fixture::file(&text, ".toml")
}

/// `up --config` with one file, then with another in the same data dir: the second file is
/// applied (its diff printed) and its service answers.
#[tokio::test]
async fn up_twice_with_different_files_serves_the_second_files_services() {
    let base = upstream().await;
    let nats = NatsServer::start();
    let data = tempfile::tempdir().expect("data");
    for name in ["billing", "shipping"] {
        let file = up_file(&nats, &base, name);
        let mut up = Proc::spawn(
            "busgate up",
            up_command(file.path(), data.path(), free_port()),
        );
        up.wait_for(Duration::from_secs(40), |line| {
            line.contains("applied to the configuration store")
                .then_some(())
        });
        let created = format!("+ services.{name}");
        up.wait_for(Duration::from_secs(5), |line| {
            (line == created).then_some(())
        });
        let gateway = up.wait_for(Duration::from_secs(40), |line| {
            line.trim_start()
                .strip_prefix("gateway ")
                .map(|u| u.trim().to_owned())
        });
        let key = up.wait_for(Duration::from_secs(40), |line| {
            let (_, rest) = line.split_once("client key ")?;
            Some(rest.split_whitespace().next()?.to_owned())
        });
        let url = format!("{gateway}/api/{name}/A1");
        eventually(Duration::from_secs(15), || async {
            match http().get(&url).bearer_auth(&key).send().await {
                Ok(r) if r.status() == 200 => {
                    let body: Value = r.json().await.unwrap_or_default();
                    body["data"][name]["from"] == name
                }
                _ => false,
            }
        })
        .await;
        assert_eq!(up.terminate(Duration::from_secs(30)), Some(0));
    }
}

/// The admin token, a wrong token and the NATS password never reach `busgate config`'s output,
/// on success or on failure (refused token, unreachable admin API, refused NATS credentials),
/// and its logs say why it failed.
#[tokio::test]
async fn config_never_prints_a_token_or_a_password() {
    const PASSWORD: &str = "nats-password-9f8e7d6c5b4a";
    const WRONG: &str = "wrong-admin-token-fedcba9876543210";
    let nats = NatsServer::start_with_auth("busgate", PASSWORD);
    let gateway = Gateway::start(&nats, &Settings::builtin()).await;
    eventually(Duration::from_secs(10), || async {
        gateway
            .admin_send("GET", "/admin/v1/services", None, None)
            .await
            .status
            == 200
    })
    .await;

    let direct = config(&gateway, &nats, false, &["export"]);
    assert_eq!(direct.code, 0, "{}", direct.stderr);
    assert_no_secret(&direct, PASSWORD);

    let run = |admin: &str, token: &str, nats_url: &str| {
        let out = Command::new(bin("busgate"))
            .args(["config", "export", "--admin", admin])
            .env("BUSGATE_ADMIN_TOKEN", token)
            .env("BUSGATE_NATS__URL", nats_url)
            .output()
            .expect("busgate config");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    let refused = run(&gateway.admin, WRONG, &nats.url);
    assert_ne!(refused.code, 0, "a wrong token is refused");
    assert!(!refused.stderr.is_empty(), "it says why");
    let unreachable = run(
        &format!("http://127.0.0.1:{}", free_port()),
        WRONG,
        &nats.url,
    );
    assert_ne!(unreachable.code, 0);
    for failed in [&refused, &unreachable] {
        assert_no_secret(failed, WRONG);
        assert_no_secret(failed, PASSWORD);
    }

    // Through NATS with a wrong password in the URL: refused, and neither password shown.
    let wrong_url = nats.url.replace(PASSWORD, "not-the-password-1234");
    assert_ne!(wrong_url, nats.url, "the URL carries the password");
    let out = Command::new(bin("busgate"))
        .args(["config", "export"])
        .env_remove("BUSGATE_ADMIN_TOKEN")
        .env("BUSGATE_NATS__URL", &wrong_url)
        .output()
        .expect("busgate config");
    let refused_nats = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(refused_nats.code, 0, "{}", refused_nats.stderr);
    assert_no_secret(&refused_nats, "not-the-password-1234");
    assert_no_secret(&refused_nats, PASSWORD);
}

/// Credentials the server refuses end `busgate config` at once (not after its JetStream
/// requests time out behind a client retrying them), with an error that names the refusal and
/// shows neither password, and a non-zero exit code; a server that is not there is given up on
/// within its bound too.
#[tokio::test]
async fn refused_credentials_fail_at_once_with_a_clear_error_and_no_secret() {
    const RIGHT: &str = "right-pw-7f3a91c2";
    const WRONG: &str = "wrong-pw-0d5e88b4";
    let nats = NatsServer::start_with_auth("bus", RIGHT);
    let port = nats.url.rsplit(':').next().expect("port").to_owned();
    let run = |url: String| {
        let started = std::time::Instant::now();
        let out = Command::new(bin("busgate"))
            .args(["config", "export"])
            .env_remove("BUSGATE_ADMIN_TOKEN")
            .env("BUSGATE_NATS__URL", url)
            .env("BUSGATE_ADMIN__TOKEN", ADMIN_TOKEN)
            .env("BUSGATE_LOG__FORMAT", "json")
            .output()
            .expect("busgate config");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        for secret in [RIGHT, WRONG, ADMIN_TOKEN] {
            assert_no_secret(&run, secret);
        }
        (run, started.elapsed())
    };
    let (refused, took) = run(format!("nats://bus:{WRONG}@127.0.0.1:{port}"));
    assert_eq!(refused.code, 69, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("refused the credentials")
            && refused.stderr.contains("authorization violation"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains("timed out"), "{}", refused.stderr);
    assert!(
        took < Duration::from_secs(5),
        "a refusal is final: it took {took:?}"
    );
    // The right password goes through (the test's refusal is the password's).
    let (ok, _) = run(format!("nats://bus:{RIGHT}@127.0.0.1:{port}"));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    // Nothing listening: retried, then given up on within the bound, as unreachable.
    let (gone, took) = run(format!("nats://127.0.0.1:{}", free_port()));
    assert_eq!(gone.code, 69, "{}", gone.stderr);
    assert!(
        gone.stderr.contains("cannot connect to nats"),
        "{}",
        gone.stderr
    );
    assert!(took < Duration::from_secs(20), "given up after {took:?}");
}
