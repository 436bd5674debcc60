//! `busgate-worker` children ([`Worker`]): demo HTTP services, adapters in front of them, and
//! native NATS services, each ready when it says so.

use std::process::Command;

use serde_json::Value;

use crate::nats::NatsServer;
use crate::process::{bin, Proc, READY_WITHIN};

/// `busgate-worker` children.
pub struct Worker;

impl Worker {
    /// A `busgate-worker` command with `nats`'s URL and variables in its environment.
    pub fn command(nats: Option<&NatsServer>) -> Command {
        match nats {
            Some(nats) => Self::command_on(Some(&nats.url), &nats.env),
            None => Self::command_on(None, &[]),
        }
    }

    /// A `busgate-worker` command on the NATS URL (or URL list) `url`, with `env` set.
    fn command_on(url: Option<&str>, env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(bin("busgate-worker"));
        cmd.env("BUSGATE_LOG__FORMAT", "json");
        if let Some(url) = url {
            cmd.env("BUSGATE_NATS__URL", url).envs(env.iter().cloned());
        }
        cmd
    }

    /// A demo HTTP service on a free port; returns it with its base URL.
    pub fn demo(service: &str) -> (Proc, String) {
        Self::demo_on(service, "127.0.0.1:0")
    }

    /// A demo HTTP service listening on `listen`; returns it with its base URL.
    pub fn demo_on(service: &str, listen: &str) -> (Proc, String) {
        let mut cmd = Self::command(None);
        cmd.args(["demo", "--service", service, "--listen", listen]);
        let proc = Proc::spawn(&format!("demo-{service}"), cmd);
        let addr = proc.wait_for_message("listening")["addr"]
            .as_str()
            .expect("addr")
            .to_owned();
        (proc, format!("http://{addr}"))
    }

    /// An adapter for `service` calling `upstream_base/order/{order_id}`; ready when serving.
    pub fn adapter(nats: &NatsServer, service: &str, upstream_base: &str) -> Proc {
        Self::adapters(nats, &[(service, upstream_base)])
    }

    /// One adapter process serving each `(service, upstream_base)` pair; ready when all serve.
    pub fn adapters(nats: &NatsServer, pairs: &[(&str, &str)]) -> Proc {
        Self::adapters_with(&nats.url, pairs, |cmd| {
            cmd.envs(nats.env.iter().cloned());
        })
    }

    /// [`Worker::adapters`] on the NATS URL (or URL list) `url`.
    pub fn adapters_on(url: &str, pairs: &[(&str, &str)]) -> Proc {
        Self::adapters_with(url, pairs, |_| {})
    }

    /// [`Worker::adapters_on`], with `configure` applied to its command last (e.g. to set
    /// environment variables).
    pub fn adapters_with(
        url: &str,
        pairs: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut cmd = Self::command_on(Some(url), &[]);
        cmd.arg("adapter");
        for (service, base) in pairs {
            cmd.args([
                "--service",
                service,
                "--upstream",
                &format!("{base}/order/{{order_id}}"),
            ]);
        }
        configure(&mut cmd);
        let names: Vec<&str> = pairs.iter().map(|(service, _)| *service).collect();
        let proc = Proc::spawn(&format!("adapter-{}", names.join("+")), cmd);
        let mut serving = std::collections::HashSet::new();
        proc.wait_for(READY_WITHIN, |line| {
            let v: Value = serde_json::from_str(line).ok()?;
            if v["message"] == "serving" {
                serving.insert(v["service"].as_str()?.to_owned());
            }
            (serving.len() == pairs.len()).then_some(())
        });
        proc
    }

    /// A native NATS demo service for each of `services`; each ready when serving.
    pub fn natives(nats: &NatsServer, services: &[&str]) -> Vec<Proc> {
        services.iter().map(|s| Self::native(nats, s)).collect()
    }

    /// A native NATS demo service; ready when serving.
    pub fn native(nats: &NatsServer, service: &str) -> Proc {
        let mut cmd = Self::command(Some(nats));
        cmd.args(["native", "--service", service]);
        let proc = Proc::spawn(&format!("native-{service}"), cmd);
        proc.wait_for_message("serving");
        proc
    }
}
