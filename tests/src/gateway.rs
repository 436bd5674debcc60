//! `busgate gateway` children ([`Gateway`]): started on a test's NATS with a settings file
//! ([`crate::fixture::Settings`]), free listeners and the test admin token; URLs of both
//! listeners, clients made through the admin API, metrics.

use std::process::Command;

use serde_json::Value;

use crate::fixture::Settings;
use crate::http::http;
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
        let gateway = Self::start_unready(nats, settings, configure).await;
        gateway.wait_ready().await;
        gateway
    }

    /// [`Gateway::start_with`] on the NATS URL (or comma-separated URL list) `url`, e.g. a
    /// [`NatsCluster::urls`].
    pub async fn start_on(
        url: &str,
        settings: &Settings,
        configure: impl FnOnce(&mut Command),
    ) -> Gateway {
        let gateway = Self::launch(url, &[], settings, configure).await;
        gateway.wait_ready().await;
        gateway
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
        use std::io::Write;
        let mut file = tempfile::Builder::new()
            .suffix(".toml")
            .tempfile()
            .expect("config file");
        file.write_all(settings.to_toml().as_bytes())
            .expect("write config");
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

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// A gauge or counter from /metrics (summed over label sets that contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = http()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
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
