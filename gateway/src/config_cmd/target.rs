//! Where `busgate config` reads and writes the store: NATS directly (through
//! [`ConfigStore`], with the gateway's settings; every write in the audit trail as a direct
//! write), or a running gateway's admin API (its existing object endpoints, `If-Match` on the
//! revision read; the admin API audits each write itself). Both give the store as
//! [`Stored`] and write one [`Step`] at a time, compare-and-set.

use busgate_gateway::admin::audit::{self, Change};
use busgate_gateway::config::plan::{Step, Stored};
use busgate_gateway::config::settings::Settings;
use busgate_gateway::config::store::{ConfigStore, Kind};
use busgate_gateway::error::{ErrorKind, GatewayError};
use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use super::CmdError;

/// A store to read and write.
pub enum Target {
    /// NATS directly.
    Nats(ConfigStore),
    /// A gateway's admin API.
    Admin(Admin),
}

/// A gateway's admin API: its base URL and a client carrying the token.
pub struct Admin {
    base: String,
    token: String,
    http: reqwest::Client,
}

const KINDS: [Kind; 3] = [Kind::Service, Kind::Route, Kind::Client];

fn store_error(e: GatewayError) -> CmdError {
    CmdError::Failed(e.to_string())
}

impl Target {
    /// NATS with the gateway's settings (its `[nats]` and `jobs.replicas`).
    pub async fn nats(settings: &Settings) -> Result<Target, CmdError> {
        let nats = busgate_shared::nats::connect(&settings.nats, "busgate config")
            .await
            .map_err(|e| CmdError::Unavailable(format!("cannot connect to nats: {e}")))?;
        Self::from_nats(&nats, settings.jobs.replicas).await
    }

    /// The store on an open NATS connection.
    pub async fn from_nats(nats: &async_nats::Client, replicas: usize) -> Result<Target, CmdError> {
        let store = ConfigStore::open(nats, replicas).await.map_err(|e| {
            CmdError::Unavailable(format!("cannot open the configuration store: {e}"))
        })?;
        Ok(Target::Nats(store))
    }

    /// The admin API at `url` with `token`.
    pub fn admin(url: &str, token: &str) -> Result<Target, CmdError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| CmdError::Failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Target::Admin(Admin {
            base: url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
        }))
    }

    /// Every object with its revision.
    pub async fn read(&self) -> Result<Stored, CmdError> {
        match self {
            Target::Nats(store) => store.objects().await.map_err(store_error),
            Target::Admin(admin) => {
                let mut out = Stored::new();
                for kind in KINDS {
                    let (_, body) = admin
                        .call(
                            Method::GET,
                            &format!("/admin/v1/{}", kind.plural()),
                            None,
                            None,
                        )
                        .await?;
                    let items = body["items"].as_array().cloned().unwrap_or_default();
                    for item in items {
                        let (Some(name), Some(revision)) =
                            (item["name"].as_str(), item["revision"].as_u64())
                        else {
                            return Err(CmdError::Failed(
                                "an object without name or revision".into(),
                            ));
                        };
                        out.insert(kind.key(name), (revision, item["spec"].clone()));
                    }
                }
                Ok(out)
            }
        }
    }

    /// Refuses a plan this target cannot carry out, before anything is written.
    pub fn check(&self, plan: &busgate_gateway::config::plan::Plan) -> Result<(), CmdError> {
        let Target::Admin(_) = self else {
            return Ok(());
        };
        for step in &plan.steps {
            let (old, new) = match step {
                Step::Create { new, .. } => (&Value::Null, new),
                Step::Update { old, new, .. } => (old, new),
                Step::Delete { .. } => continue,
            };
            let keys = |v: &Value| v.get("keys").cloned().unwrap_or(Value::Null);
            if step.object().0 == Kind::Client && keys(new) != Value::Null && keys(old) != keys(new)
            {
                return Err(CmdError::Invalid(format!(
                    "{}.keys: the admin API makes and revokes keys through /admin/v1/clients/{}/keys; \
                     leave `keys` out of the file, or apply it through NATS (without --admin)",
                    step.key(),
                    step.object().1
                )));
            }
        }
        Ok(())
    }

    /// The object's current revision (`None`: absent).
    pub async fn revision(&self, step: &Step) -> Result<Option<u64>, CmdError> {
        let (kind, name) = step.object();
        match self {
            Target::Nats(store) => Ok(store
                .get(kind, name)
                .await
                .map_err(store_error)?
                .map(|(r, _)| r)),
            Target::Admin(admin) => {
                let path = format!("/admin/v1/{}/{name}", kind.plural());
                match admin.call(Method::GET, &path, None, None).await {
                    Ok((_, body)) => Ok(body["revision"].as_u64()),
                    Err(CmdError::Failed(e)) if e.starts_with("404") => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Writes one step, compare-and-set; the revision written (`None` for a delete).
    pub async fn write(&self, step: &Step) -> Result<Option<u64>, CmdError> {
        match step {
            Step::Create { kind, name, new } => self.put(*kind, name, new, None).await.map(Some),
            Step::Update {
                kind,
                name,
                revision,
                new,
                ..
            } => self.put(*kind, name, new, Some(*revision)).await.map(Some),
            Step::Delete {
                kind,
                name,
                revision,
                ..
            } => self.delete(*kind, name, *revision).await.map(|()| None),
        }
    }

    /// Undoes a step that wrote `written`, on that revision.
    pub async fn undo(&self, step: &Step, written: Option<u64>) -> Result<(), CmdError> {
        match (step, written) {
            (Step::Create { kind, name, .. }, Some(revision)) => {
                self.delete(*kind, name, revision).await
            }
            (
                Step::Update {
                    kind, name, old, ..
                },
                Some(revision),
            ) => self.put(*kind, name, old, Some(revision)).await.map(|_| ()),
            (
                Step::Delete {
                    kind, name, old, ..
                },
                _,
            ) => self.put(*kind, name, old, None).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Creates (`expected` `None`) or replaces an object.
    async fn put(
        &self,
        kind: Kind,
        name: &str,
        doc: &Value,
        expected: Option<u64>,
    ) -> Result<u64, CmdError> {
        let object = kind.key(name);
        match self {
            Target::Nats(store) => {
                let mut change = Change::of(kind, name);
                change.old = expected;
                let written = store.write_if(kind, name, doc, expected).await;
                change.new = written.as_ref().ok().copied();
                let operation = if expected.is_some() {
                    "update"
                } else {
                    "create"
                };
                audit::record_direct(operation, &change, written.is_ok());
                written.map_err(|e| lost(e, &object))
            }
            Target::Admin(admin) => {
                let mut doc = doc.clone();
                if kind == Kind::Client {
                    // The admin API keeps a client's keys itself (see `check`).
                    if let Some(o) = doc.as_object_mut() {
                        o.remove("keys");
                    }
                }
                let (_, body) = match expected {
                    None => {
                        let path = format!("/admin/v1/{}", kind.plural());
                        let body = json!({"name": name, "spec": doc});
                        admin.call(Method::POST, &path, Some(&body), None).await
                    }
                    Some(revision) => {
                        let path = format!("/admin/v1/{}/{name}", kind.plural());
                        admin
                            .call(Method::PUT, &path, Some(&doc), Some(revision))
                            .await
                    }
                }
                .map_err(|e| admin_lost(e, &object, expected.is_none()))?;
                if let Some(id) = body["key"]["id"].as_str() {
                    // A client made through the admin API comes with a key, whose secret is
                    // shown once: not here, where output ends up in CI logs.
                    eprintln!(
                        "{object}: created with key {id}, its secret not shown; make a key with \
                         POST /admin/v1/clients/{name}/keys and revoke {id}"
                    );
                }
                body["revision"]
                    .as_u64()
                    .ok_or_else(|| CmdError::Failed(format!("{object}: no revision in the answer")))
            }
        }
    }

    /// Deletes an object still at `expected`.
    async fn delete(&self, kind: Kind, name: &str, expected: u64) -> Result<(), CmdError> {
        let object = kind.key(name);
        match self {
            Target::Nats(store) => {
                let mut change = Change::of(kind, name);
                change.old = Some(expected);
                let deleted = store.delete(kind, name, Some(expected)).await;
                audit::record_direct("delete", &change, deleted.is_ok());
                deleted.map_err(|e| lost(e, &object))
            }
            Target::Admin(admin) => {
                let path = format!("/admin/v1/{}/{name}", kind.plural());
                admin
                    .call(Method::DELETE, &path, None, Some(expected))
                    .await
                    .map(|_| ())
                    .map_err(|e| admin_lost(e, &object, false))
            }
        }
    }
}

/// A store error of a write: a lost compare-and-set is a conflict on `object`.
fn lost(e: GatewayError, object: &str) -> CmdError {
    match e.kind {
        ErrorKind::Exists(_) | ErrorKind::Stale { .. } => CmdError::Conflict {
            object: object.to_owned(),
            detail: String::new(),
        },
        _ => store_error(e),
    }
}

/// An admin API error of a write: 412 (If-Match lost), or a 409 on a create (it exists), is a
/// conflict.
fn admin_lost(e: CmdError, object: &str, create: bool) -> CmdError {
    match e {
        CmdError::Failed(text)
            if text.starts_with("412") || (create && text.starts_with("409")) =>
        {
            CmdError::Conflict {
                object: object.to_owned(),
                detail: String::new(),
            }
        }
        other => other,
    }
}

impl Admin {
    /// One request; the answer's status and JSON body, or an error starting with the status.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<u64>,
    ) -> Result<(StatusCode, Value), CmdError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
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
            CmdError::Unavailable(format!("cannot reach the admin API at {}: {e}", self.base))
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CmdError::Unavailable(format!("the admin API's answer broke off: {e}")))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        if status.is_success() {
            return Ok((status, value));
        }
        let detail = value["detail"].as_str().unwrap_or_default();
        let title = value["title"].as_str().unwrap_or_default();
        let message = format!("{} {}: {title}: {detail}", status.as_u16(), path);
        Err(match status {
            StatusCode::UNPROCESSABLE_ENTITY => CmdError::Invalid(message),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => CmdError::Invalid(format!(
                "{message} (is BUSGATE_ADMIN_TOKEN the gateway's admin token?)"
            )),
            _ => CmdError::Failed(message),
        })
    }
}
