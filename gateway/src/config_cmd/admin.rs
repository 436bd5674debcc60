//! The admin-API [`Target`] of `busgate config --admin URL`: a running gateway's existing
//! object endpoints (`GET /admin/v1/{kind}` to read, `POST` to create, `PUT`/`DELETE` with
//! `If-Match` on the revision read); the gateway validates and audits each write itself. The
//! token comes from `BUSGATE_ADMIN_TOKEN` only. The admin API keeps clients' keys (made and
//! revoked through `…/keys`), so a file that changes keys is refused here before any write.

use std::time::Duration;

use busgate_gateway::config::apply::{ApplyError, Target};
use busgate_gateway::config::plan::{Plan, Step, Stored};
use busgate_gateway::config::store::Kind;
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

/// A gateway's admin API.
pub struct AdminApi {
    base: String,
    token: String,
    http: reqwest::Client,
}

const KINDS: [Kind; 3] = [Kind::Service, Kind::Route, Kind::Client];

impl AdminApi {
    /// The admin API at `url`, with the token in `BUSGATE_ADMIN_TOKEN`.
    pub fn from_env(url: &str) -> Result<AdminApi, ApplyError> {
        let token = std::env::var("BUSGATE_ADMIN_TOKEN").map_err(|_| {
            ApplyError::Invalid("--admin needs the admin token in BUSGATE_ADMIN_TOKEN".into())
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ApplyError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(AdminApi {
            base: url.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// One request; the answer's JSON body (`Null` when empty), or an error that starts with
    /// the status.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<Value, ApplyError> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if let Some(revision) = if_match {
            request = request.header(header::IF_MATCH, format!("\"{revision}\""));
        }
        if let Some(body) = body {
            request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| {
            ApplyError::Unavailable(format!("cannot reach the admin API at {}: {e}", self.base))
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            ApplyError::Unavailable(format!("the admin API's answer broke off: {e}"))
        })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let title = value["title"].as_str().unwrap_or_default();
        let detail = value["detail"].as_str().unwrap_or_default();
        let message = format!("{} {path}: {title}: {detail}", status.as_u16());
        Err(match status {
            StatusCode::UNPROCESSABLE_ENTITY => ApplyError::Invalid(message),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApplyError::Invalid(format!(
                "{message} (is BUSGATE_ADMIN_TOKEN the gateway's admin token?)"
            )),
            _ => ApplyError::Failed(message),
        })
    }
}

/// An error of a write: 412 (the `If-Match` lost), or a 409 on a create (it exists now), is a
/// conflict on `object`.
fn lost(e: ApplyError, object: &str, create: bool) -> ApplyError {
    match e {
        ApplyError::Failed(text)
            if text.starts_with("412") || (create && text.starts_with("409")) =>
        {
            ApplyError::Conflict {
                object: object.to_owned(),
                detail: String::new(),
            }
        }
        other => other,
    }
}

impl Target for AdminApi {
    async fn read(&self) -> Result<Stored, ApplyError> {
        let mut out = Stored::new();
        for kind in KINDS {
            let path = format!("/admin/v1/{}", kind.plural());
            let body = self.call(Method::GET, &path, None, None).await?;
            for item in body["items"].as_array().into_iter().flatten() {
                let (Some(name), Some(revision)) =
                    (item["name"].as_str(), item["revision"].as_u64())
                else {
                    return Err(ApplyError::Failed(format!(
                        "{path}: an object without name or revision"
                    )));
                };
                out.insert(kind.key(name), (revision, item["spec"].clone()));
            }
        }
        Ok(out)
    }

    fn check(&self, plan: &Plan) -> Result<(), ApplyError> {
        for step in &plan.steps {
            let (old, new) = match step {
                Step::Create { new, .. } => (&Value::Null, new),
                Step::Update { old, new, .. } => (old, new),
                Step::Delete { .. } => continue,
            };
            let (kind, name) = step.object();
            let keys = |v: &Value| v.get("keys").cloned().unwrap_or(Value::Null);
            if kind == Kind::Client && !keys(new).is_null() && keys(old) != keys(new) {
                return Err(ApplyError::Invalid(format!(
                    "{}.keys: the admin API makes and revokes keys through \
                     /admin/v1/clients/{name}/keys; leave `keys` out of the file, or apply it \
                     through NATS (without --admin)",
                    step.key()
                )));
            }
        }
        Ok(())
    }

    async fn revision(&self, step: &Step) -> Result<Option<u64>, ApplyError> {
        let (kind, name) = step.object();
        let path = format!("/admin/v1/{}/{name}", kind.plural());
        match self.call(Method::GET, &path, None, None).await {
            Ok(body) => Ok(body["revision"].as_u64()),
            Err(ApplyError::Failed(e)) if e.starts_with("404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates (`expected` `None`) or replaces an object; the revision written.
    async fn put(
        &self,
        kind: Kind,
        name: &str,
        doc: &Value,
        expected: Option<u64>,
    ) -> Result<u64, ApplyError> {
        let object = kind.key(name);
        let mut doc = doc.clone();
        if kind == Kind::Client {
            // The admin API keeps a client's keys itself (see `check`).
            if let Some(o) = doc.as_object_mut() {
                o.remove("keys");
            }
        }
        let answer = match expected {
            None => {
                let path = format!("/admin/v1/{}", kind.plural());
                let body = json!({"name": name, "spec": doc});
                self.call(Method::POST, &path, Some(&body), None).await
            }
            Some(revision) => {
                let path = format!("/admin/v1/{}/{name}", kind.plural());
                self.call(Method::PUT, &path, Some(&doc), Some(revision))
                    .await
            }
        };
        let body = answer.map_err(|e| lost(e, &object, expected.is_none()))?;
        if let Some(id) = body["key"]["id"].as_str() {
            // A client made through the admin API comes with a key whose secret is shown
            // once: not here, where the output ends up in CI logs.
            eprintln!(
                "{object}: created with key {id}; its secret is not shown: make a key with \
                 POST /admin/v1/clients/{name}/keys (and revoke {id})"
            );
        }
        body["revision"]
            .as_u64()
            .ok_or_else(|| ApplyError::Failed(format!("{object}: no revision in the answer")))
    }

    /// Deletes an object still at `expected`.
    async fn delete(&self, kind: Kind, name: &str, expected: u64) -> Result<(), ApplyError> {
        let path = format!("/admin/v1/{}/{name}", kind.plural());
        self.call(Method::DELETE, &path, None, Some(expected))
            .await
            .map(|_| ())
            .map_err(|e| lost(e, &kind.key(name), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busgate_gateway::config::plan::plan;
    use busgate_shared::config::{ClientSpec, ConfigSpec, KeySpec};

    fn api() -> AdminApi {
        busgate_shared::runtime::install_crypto_provider();
        AdminApi {
            base: "http://127.0.0.1:1".into(),
            token: "t".repeat(32),
            http: reqwest::Client::new(),
        }
    }

    #[test]
    fn a_file_that_changes_keys_is_refused_before_any_write_one_without_keys_is_not() {
        let mut file = ConfigSpec::builtin();
        file.clients.insert("shop".into(), ClientSpec::default());
        let empty = Stored::new();
        let without_keys = plan(&empty, &file, false).expect("plan");
        assert!(api().check(&without_keys).is_ok());

        file.clients.get_mut("shop").expect("shop").keys = vec![KeySpec {
            id: "k1".into(),
            hash: "0".repeat(64),
            created: String::new(),
        }];
        let with_keys = plan(&empty, &file, false).expect("plan");
        let Err(ApplyError::Invalid(why)) = api().check(&with_keys) else {
            panic!("refused");
        };
        assert!(why.starts_with("clients.shop.keys"), "{why}");
    }
}
