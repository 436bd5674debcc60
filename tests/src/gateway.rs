//! `busgate gateway` children ([`Gateway`]): started on a test's NATS with a settings file
//! ([`crate::fixture::Settings`]), free listeners and the test admin token; URLs of both
//! listeners, clients made through the admin API, metrics.

use std::process::Command;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::fixture::Settings;
use crate::http::{get_text, http};
use crate::nats::NatsServer;
use crate::process::{bin, Proc, READY_WITHIN};
use crate::wait::eventually;

/// The admin token every test gateway uses (tokens have at least 32 characters).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A `busgate gateway` child on a free port.
pub struct Gateway {
    pub base: String,
    /// Base URL of the admin listener.
    pub admin: String,
    pub proc: Proc,
    _config: tempfile::NamedTempFile,
}

impl Gateway {
    /// Starts a gateway on `nats` with `settings` as its settings file.
    ///
    /// Unless `settings` say otherwise ([`Settings::auth_required`]), the gateway runs with
    /// `auth.mode = "none"` (set through its environment): most tests are about routes,
    /// gathers and limits, not clients. The tests of clients (`tests/clients.rs`) start theirs
    /// with `auth_required` and create clients through the admin API ([`Gateway::client`]).
    /// `auth.max_failures_per_minute` is 0 (off) unless `configure` sets it.
    pub async fn start(nats: &NatsServer, settings: &Settings) -> Gateway {
        Self::start_with(nats, settings, |_| {}).await
    }

    /// [`Gateway::start`], with `configure` applied to its command last (e.g. to set or remove
    /// environment variables).
    pub async fn start_with(
        nats: &NatsServer,
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        Self::start_unready(nats, settings, configure)
            .await
            .ready()
            .await
    }

    /// [`Gateway::start_with`] on the NATS URL (or comma-separated URL list) `url`, e.g. a
    /// [`crate::cluster::NatsCluster::urls`].
    pub async fn start_on(
        url: &str,
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        Self::launch(url, &[], settings, configure)
            .await
            .ready()
            .await
    }

    /// Itself, once ready ([`Gateway::wait_ready`]).
    async fn ready(self) -> Gateway {
        self.wait_ready().await;
        self
    }

    /// [`Gateway::start_with`] without waiting for readiness: returns once it listens (for
    /// tests of a gateway that must not become ready).
    pub async fn start_unready(
        nats: &NatsServer,
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        Self::launch(&nats.url, &nats.env, settings, configure).await
    }

    /// Waits (bounded) until `/health/ready` answers 200.
    pub async fn wait_ready(&self) {
        eventually(READY_WITHIN, || async {
            matches!(http().get(self.url("/health/ready")).send().await, Ok(r) if r.status() == 200)
        })
        .await;
    }

    /// Spawns a gateway on `url` with `env` (NATS credentials) and waits until it listens.
    async fn launch(
        url: &str,
        env: &[(String, String)],
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        busgate_shared::runtime::install_crypto_provider();
        let file = crate::fixture::file(&settings.to_toml(), ".toml");
        let mut cmd = Command::new(bin("busgate"));
        cmd.arg("gateway")
            .arg("--config")
            .arg(file.path())
            .env("BUSGATE_NATS__URL", url)
            .envs(env.iter().cloned())
            .env("BUSGATE_HTTP__LISTEN", "127.0.0.1:0")
            .env("BUSGATE_ADMIN__LISTEN", "127.0.0.1:0")
            .env("BUSGATE_ADMIN__TOKEN", ADMIN_TOKEN)
            .env("BUSGATE_LOG__FORMAT", "json")
            .env("BUSGATE_LOG__LEVEL", "info");
        if settings.auth_mode().is_none() {
            cmd.env("BUSGATE_AUTH__MODE", "none");
        }
        // Off unless a test turns it on: tests that wait for a key to reach an instance poll
        // with it every 20 ms, and 20 refusals from 127.0.0.1 would throttle the test's every
        // credential for a minute. The throttle's own tests set it (edge_client_address.rs).
        cmd.env("BUSGATE_AUTH__MAX_FAILURES_PER_MINUTE", "0");
        configure(&mut cmd);
        let proc = Proc::spawn("gateway", cmd);
        let listening = proc.wait_for_message("listening");
        let addr = listening["addr"].as_str().expect("addr").to_owned();
        let admin = proc.wait_for_message("admin listening")["addr"]
            .as_str()
            .expect("admin addr")
            .to_owned();
        Gateway {
            base: format!("http://{addr}"),
            admin: format!("http://{admin}"),
            proc,
            _config: file,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates the client `name` with `spec` through the admin API; returns its first key.
    pub async fn client(&self, name: &str, spec: Value) -> ClientKey {
        let created = http()
            .post(self.admin_url("/admin/v1/clients"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"name": name, "spec": spec}))
            .send()
            .await
            .expect("create a client");
        let status = created.status();
        let body: Value = created.json().await.expect("json");
        assert_eq!(status, 201, "{body}");
        ClientKey {
            id: body["key"]["id"].as_str().expect("key id").to_owned(),
            secret: body["key"]["secret"]
                .as_str()
                .expect("key secret")
                .to_owned(),
        }
    }

    /// A request to the admin listener, with the admin token.
    pub fn admin_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        http()
            .request(method, self.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Sends `method path` to the admin API with the token, `If-Match` and a JSON body when
    /// given.
    pub async fn admin_send(
        &self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.admin_request(method.parse().expect("method"), path);
        if let Some(tag) = if_match {
            request = request.header("if-match", tag);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Answer::of(request.send().await.expect("admin request")).await
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// A gauge or counter from /metrics (summed over label sets that contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = get_text(&self.url("/metrics")).await;
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

/// A client's API key as the admin API shows it once.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// The key's id.
    pub id: String,
    /// The secret (`bgk_…`).
    pub secret: String,
}

/// A `busgate up` command with `config` and `data` (its data dir), its demo services from
/// `demo_port`, on free listeners, logging JSON; no NATS URL or admin token from the test's
/// environment (`up` starts or finds its own, and makes its own token).
pub fn up_command(config: &std::path::Path, data: &std::path::Path, demo_port: u16) -> Command {
    let mut cmd = Command::new(bin("busgate"));
    cmd.arg("up")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["--demo-port", &demo_port.to_string()])
        .env_remove("BUSGATE_NATS__URL")
        .env_remove("BUSGATE_ADMIN__TOKEN")
        .env("BUSGATE_HTTP__LISTEN", "127.0.0.1:0")
        .env("BUSGATE_ADMIN__LISTEN", "127.0.0.1:0")
        .env("BUSGATE_LOG__FORMAT", "json");
    cmd
}

/// An HTTP answer as the tests look at it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when it is not).
    pub body: Value,
}

impl Answer {
    /// Status, headers and body, to take apart.
    pub fn parts(self) -> (u16, HeaderMap, Value) {
        (self.status, self.headers, self.body)
    }

    /// Reads `response` whole.
    pub async fn of(response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }
}
