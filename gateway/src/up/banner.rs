//! What `busgate up` prints once the gateway runs: the URLs, the admin token it made, the demo
//! client's key (made through the admin API) and a few requests to try.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use busgate_gateway::config::settings::Settings;
use busgate_shared::config::{ConfigSpec, HttpMethod};

use super::args::UpArgs;
use super::secrets::{write_secret, Generated};
use super::stack::demo_services;

/// The client `demo` with a fresh key, through the admin API on `admin`: made when it does not
/// exist; otherwise given a new key and its older ones revoked (their secrets were shown by an
/// earlier run and are not kept). Returns the secret, which only the banner shows.
pub(super) async fn demo_key(
    admin: SocketAddr,
    token: &str,
    kept: &Path,
) -> anyhow::Result<String> {
    // The key of the last `up` (in the data dir, 0600) stays while the client still has it,
    // so that a restart keeps the examples' `BUSGATE_KEY` working, as it keeps the admin token.
    let kept_key = std::fs::read_to_string(kept)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|key| !key.is_empty());
    let admin = if admin.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], admin.port()))
    } else {
        admin
    };
    let base = format!("http://{admin}/admin/v1/clients");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let json = |r: reqwest::Response| async move {
        let status = r.status();
        let bytes = r.bytes().await?;
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        anyhow::Ok((status.as_u16(), body))
    };
    loop {
        let (status, current) = match http
            .get(format!("{base}/demo"))
            .bearer_auth(token)
            .send()
            .await
        {
            Ok(r) => json(r).await?,
            Err(_) => (0, serde_json::Value::Null),
        };
        match status {
            404 => {
                let body = serde_json::json!({"name": "demo", "spec": {"description": "made by busgate up"}});
                let created = http
                    .post(&base)
                    .bearer_auth(token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::to_vec(&body)?)
                    .send()
                    .await?;
                let (status, body) = json(created).await?;
                if status == 201 {
                    if let Some(secret) = body["key"]["secret"].as_str() {
                        write_secret(kept, secret)?;
                        return Ok(secret.to_owned());
                    }
                }
                bail!("creating the demo client answered {status}");
            }
            200 => {
                let hashes: Vec<&str> = current["spec"]["keys"]
                    .as_array()
                    .map(|keys| keys.iter().filter_map(|k| k["hash"].as_str()).collect())
                    .unwrap_or_default();
                if let Some(key) = &kept_key {
                    let hash = hex::encode(busgate_gateway::auth::hash_key(key));
                    if hashes.contains(&hash.as_str()) {
                        return Ok(key.clone());
                    }
                }
                let added = http
                    .post(format!("{base}/demo/keys"))
                    .bearer_auth(token)
                    .send()
                    .await?;
                let (status, body) = json(added).await?;
                let (Some(id), Some(secret)) = (body["id"].as_str(), body["secret"].as_str())
                else {
                    bail!("adding a key to the demo client answered {status}");
                };
                let old = current["spec"]["keys"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for key in old
                    .iter()
                    .filter_map(|k| k["id"].as_str())
                    .filter(|k| *k != id)
                {
                    let _ = http
                        .delete(format!("{base}/demo/keys/{key}"))
                        .bearer_auth(token)
                        .send()
                        .await?;
                }
                write_secret(kept, secret)?;
                return Ok(secret.to_owned());
            }
            // Not listening or not ready yet (the store comes up with JetStream).
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The requests to try: the demo's order ids (slow, missing) only when the demo services run
/// behind the built-in `order` route; otherwise a request on each of the configured routes.
fn try_block(settings: &Settings, args: &UpArgs, host: &str, auth: &str) -> String {
    let mut out = String::new();
    let builtin = ConfigSpec::builtin();
    let demos = demo_services(args, settings);
    let demo = settings.routes.get("order") == builtin.routes.get("order")
        && builtin.services.keys().all(|s| demos.contains(s));
    if demo {
        out.push_str(&format!(
            "  curl -s {host}/api/order {auth} -H 'content-type: application/json' -d '{{\"order_id\":\"A1\"}}'\n"
        ));
        out.push_str(&format!("  curl -s {host}/api/orders/A1 {auth}\n"));
        out.push_str(&format!(
            "  curl -s {host}/api/orders/slow2-A1 {auth}     # service2 too slow: complete=false after 800 ms\n"
        ));
        out.push_str(&format!(
            "  curl -s {host}/api/orders/missing1-A1 {auth}  # service1 does not know it: 404 problem\n"
        ));
        out.push_str(&format!(
            "  curl -si {host}/api/orders/A1 {auth} -H 'Prefer: respond-async'   # 202, then poll the Location\n"
        ));
        return out;
    }
    for (name, route) in &settings.routes {
        let Some(binding) = route
            .bindings
            .iter()
            .find(|b| b.method == HttpMethod::Get)
            .or(route.bindings.first())
        else {
            continue;
        };
        let path = binding.path.replace("{order_id}", "A1");
        let line = if binding.method == HttpMethod::Get {
            format!("  curl -s {host}{path} {auth}")
        } else {
            format!(
                "  curl -s -X {} {host}{path} {auth} -H 'content-type: application/json' -d '{{\"order_id\":\"A1\"}}'",
                binding.method.as_str()
            )
        };
        out.push_str(&format!("{line}   # route {name}\n"));
    }
    if settings.routes.is_empty() {
        out.push_str("  (no route yet: add one in the admin UI, or to the file and run `busgate config apply`)\n");
    }
    out
}

#[allow(clippy::too_many_arguments)]
pub(super) fn print_banner(
    settings: &Settings,
    generated: &Generated,
    args: &UpArgs,
    data_dir: &Path,
    nats: &str,
    addr: SocketAddr,
    admin: SocketAddr,
    client_key: Option<&str>,
) {
    let host = if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    let mut out = String::new();
    out.push_str("\nBusgate is up.\n\n");
    out.push_str(&format!("  gateway   http://{host}\n"));
    out.push_str(&format!("  health    http://{host}/health/ready\n"));
    out.push_str(&format!("  metrics   http://{host}/metrics\n"));
    let token = generated
        .admin_token
        .as_deref()
        .unwrap_or("<your admin.token>");
    out.push_str(&format!("  admin UI  http://{admin}/#token={token}\n"));
    out.push_str(&format!(
        "  admin API http://{admin}/admin/v1/ (Authorization: Bearer {token})\n"
    ));
    out.push_str(&format!("  nats      {nats}\n"));
    for (i, service) in demo_services(args, settings).iter().enumerate() {
        let port = usize::from(args.demo_port) + i;
        out.push_str(&format!(
            "  {service:<9} demo http://127.0.0.1:{port}{}, adapter on busgate.svc.{service}\n",
            super::stack::demo_path(service)
        ));
    }
    for (service, spec) in &settings.services {
        if let Some(upstream) = &spec.upstream {
            let shown = busgate_shared::upstream::UrlTemplate::parse(&upstream.url)
                .map(|t| t.display)
                .unwrap_or_default();
            out.push_str(&format!(
                "  {service:<9} upstream {shown}, served by busgate-worker adapters\n"
            ));
        }
    }
    out.push_str(&format!(
        "  logs      {}\n",
        data_dir.join("logs").display()
    ));
    out.push_str(&format!(
        "  callbacks signed with {} (loopback receivers allowed)\n",
        generated
            .callback_secret
            .as_deref()
            .unwrap_or("callbacks.secret")
    ));
    let key = client_key.unwrap_or("<a client key: POST /admin/v1/clients>");
    out.push_str(&format!(
        "  client key {key}  (client demo; kept in {} for the next up)\n\n",
        data_dir.join("demo-key").display()
    ));
    out.push_str("Try:\n");
    out.push_str(&format!("  export BUSGATE_KEY={key}\n"));
    let auth = "-H \"Authorization: Bearer $BUSGATE_KEY\"";
    out.push_str(&try_block(settings, args, &host, auth));
    out.push('\n');
    out.push_str("Ctrl-C stops everything.\n");
    println!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(no_demo: bool) -> UpArgs {
        UpArgs {
            config: None,
            no_demo,
            data_dir: ".busgate".into(),
            nats_server: None,
            demo_port: 8081,
        }
    }

    #[test]
    fn the_demo_order_ids_are_shown_only_when_the_demo_services_run() {
        let builtin = Settings::default();
        let text = try_block(&builtin, &args(false), "h", "-H k");
        assert!(text.contains("/api/orders/slow2-A1"), "{text}");
        let text = try_block(&builtin, &args(true), "h", "-H k");
        assert!(!text.contains("slow2"), "{text}");
        assert!(
            text.contains("curl -s h/api/orders/A1 -H k   # route order"),
            "{text}"
        );

        let own = busgate_gateway::config::file::parse(
            "[services.billing.upstream]\nurl = \"http://127.0.0.1:9101/i/{order_id}\"\n\
             [routes.bills]\nbindings = [{ method = \"GET\", path = \"/api/bills/{order_id}\" }]\n\
             targets = [{ service = \"billing\" }]\n",
            "own",
        )
        .expect("parse");
        let settings = Settings {
            services: own.services,
            routes: own.routes,
            ..Settings::default()
        };
        let text = try_block(&settings, &args(false), "h", "-H k");
        assert!(
            !text.contains("slow2") && !text.contains("missing1"),
            "{text}"
        );
        assert_eq!(text, "  curl -s h/api/bills/A1 -H k   # route bills\n");
    }
}
