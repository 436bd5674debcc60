//! A client's API keys: `POST /admin/v1/clients/{name}/keys` makes another (for a rotation
//! without a gap), `DELETE /admin/v1/clients/{name}/keys/{id}` revokes one. Everything else
//! about clients is the generic object machinery ([`crate::admin::objects`]), which also makes
//! a new client's first key.
//!
//! A secret is in exactly one answer, the one that made it; the store, the history, the export
//! and the logs have its SHA-256 only. Both writes are compare-and-set on the client's
//! revision (with `If-Match` when sent, else retried against concurrent writers), so a key
//! change never loses a concurrent one. Every instance's watcher swaps the new key index in:
//! a revoked key is refused everywhere once the change propagates (well under a second).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use busgate_shared::validate;

use crate::admin::audit::Change;
use crate::admin::objects::{add_key, candidate, not_found, settle, store_of};
use crate::admin::precondition::{etag, IfMatch};
use crate::admin::state::AdminState;
use crate::config::store::Kind;
use crate::error::{ErrorKind, GatewayError};

/// `/admin/v1/clients/{name}/keys…`: 404 for another kind or a name or id outside the name
/// pattern.
pub struct KeysPath {
    /// The client's name.
    pub name: String,
    /// The key's id, for a revoke.
    pub id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for KeysPath {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, GatewayError> {
        let path = parts.uri.path().to_owned();
        let Path(params) = Path::<Vec<String>>::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found(path.clone()))?;
        let (kind, name, id) = match params.as_slice() {
            [kind, name] => (kind, name, None),
            [kind, name, id] => (kind, name, Some(id.clone())),
            _ => return Err(not_found(path)),
        };
        let valid = kind == "clients"
            && validate::name("name", name).is_ok()
            && id
                .as_deref()
                .is_none_or(|id| validate::name("id", id).is_ok());
        if !valid {
            return Err(not_found(path));
        }
        Ok(KeysPath {
            name: name.clone(),
            id,
        })
    }
}

/// Attempts of a key change against concurrent writers before it gives up (409).
const ATTEMPTS: usize = 8;

/// Applies `change` to the stored client `name` with compare-and-set; returns the new
/// revision and what `change` returned.
async fn change_keys<T>(
    state: &AdminState,
    name: &str,
    headers: &HeaderMap,
    audit: &mut Change,
    mut change: impl FnMut(&mut Value) -> Result<T, GatewayError>,
) -> Result<(u64, T), GatewayError> {
    let condition = match headers.get(header::IF_MATCH) {
        Some(_) => Some(IfMatch::from_headers(headers)?),
        None => None,
    };
    let store = store_of(state)?;
    for _ in 0..ATTEMPTS {
        let (revision, mut doc) = store
            .get(Kind::Client, name)
            .await?
            .ok_or_else(|| ErrorKind::ObjectNotFound(Kind::Client.key(name)))?;
        audit.old = Some(revision);
        if let Some(condition) = &condition {
            condition.check(Some(revision))?;
        }
        let out = change(&mut doc)?;
        candidate(state, Kind::Client, name, Some(&doc))?;
        match store
            .write_if(Kind::Client, name, &doc, Some(revision))
            .await
        {
            Ok(new) => {
                audit.new = Some(new);
                settle(&store, state).await;
                return Ok((new, out));
            }
            Err(GatewayError {
                kind: ErrorKind::Stale { .. },
                ..
            }) if condition.is_none() => continue,
            Err(GatewayError {
                kind: ErrorKind::Stale { .. },
                ..
            }) => return Err(ErrorKind::PreconditionFailed { current: None }.into()),
            Err(e) => return Err(e),
        }
    }
    Err(ErrorKind::Contended(Kind::Client.key(name)).into())
}

/// `POST /admin/v1/clients/{name}/keys` → 201 `{"id","secret"}`.
pub async fn create_key(
    State(state): State<AdminState>,
    path: KeysPath,
    headers: HeaderMap,
) -> Response {
    let allowed = match path.id {
        Some(_) => Err(keys_not_found(&path.name)),
        None => Ok(()),
    };
    keys_change(&state, &path, &headers, allowed, add_key, |(id, secret)| {
        (
            StatusCode::CREATED,
            Json(json!({"id": id, "secret": secret})),
        )
            .into_response()
    })
    .await
}

/// `DELETE /admin/v1/clients/{name}/keys/{id}` → 204; 404 for a key the client does not have.
pub async fn revoke_key(
    State(state): State<AdminState>,
    path: KeysPath,
    headers: HeaderMap,
) -> Response {
    let (id, allowed) = match path.id.as_deref() {
        Some(id) => (id, Ok(())),
        None => ("", Err(keys_not_found(&path.name))),
    };
    let remove = |doc: &mut Value| {
        let keys = doc
            .get_mut("keys")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| ErrorKind::ObjectNotFound(format!("key {id}")))?;
        let before = keys.len();
        keys.retain(|k| k.get("id").and_then(Value::as_str) != Some(id));
        if keys.len() == before {
            return Err(ErrorKind::ObjectNotFound(format!("key {id}")).into());
        }
        Ok(())
    };
    keys_change(&state, &path, &headers, allowed, remove, |()| {
        StatusCode::NO_CONTENT.into_response()
    })
    .await
}

/// The 404 of a keys path that names a key where none is expected, or none where one is.
fn keys_not_found(name: &str) -> GatewayError {
    not_found(format!("/admin/v1/clients/{name}/keys"))
}

/// One audited change of a client's keys: refused with `allowed`'s error, else `change` applied
/// (see [`change_keys`]) and its outcome answered by `answer`, with the new revision as ETag.
async fn keys_change<T>(
    state: &AdminState,
    path: &KeysPath,
    headers: &HeaderMap,
    allowed: Result<(), GatewayError>,
    change: impl FnMut(&mut Value) -> Result<T, GatewayError>,
    answer: impl FnOnce(T) -> Response,
) -> Response {
    let mut audit = Change::of(Kind::Client, &path.name);
    let result = async {
        allowed?;
        let (revision, out) = change_keys(state, &path.name, headers, &mut audit, change).await?;
        let mut response = answer(out);
        response.headers_mut().insert(header::ETAG, etag(revision));
        Ok(response)
    }
    .await;
    audit.attach(result)
}
