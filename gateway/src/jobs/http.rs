//! Asynchronous requests over HTTP: submit (`Prefer: respond-async` or a `callback_url`),
//! poll (`GET /api/requests/{id}`), and server-sent events (`…/events`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use busgate_shared::header::REQUEST_ID;

use crate::auth::Caller;
use crate::config::snapshot::Route;
use crate::error::{ErrorKind, GatewayError, PROBLEM_JSON};
use crate::jobs::callback::Signer;
use crate::jobs::guard::Guard;
use crate::jobs::intake::Claim;
use crate::jobs::results::{JobStatus, StatusDoc};
use crate::jobs::store::{Job, Jobs};
use crate::limit::{Slot, Slots};
use crate::route::Call;

/// What asynchronous requests over HTTP need: the store, once JetStream is ready, and the
/// callback policy.
pub struct AsyncRequests {
    jobs: OnceLock<Arc<Jobs>>,
    /// Signs callbacks; `None` refuses them.
    signer: Option<Signer>,
    /// Checks callback URLs.
    guard: Guard,
    /// Open event streams on this instance, and their cap.
    streams: Arc<Slots>,
    /// Submits waiting on `Prefer: wait`, and their cap.
    waiters: Arc<Slots>,
}

impl AsyncRequests {
    /// Asynchronous requests with this callback policy, not ready until [`AsyncRequests::ready`].
    pub fn new(signer: Option<Signer>, guard: Guard) -> Self {
        let defaults = crate::config::settings::JobsSettings::default();
        AsyncRequests {
            jobs: OnceLock::new(),
            signer,
            guard,
            streams: Arc::new(Slots::new(defaults.max_event_streams)),
            waiters: Arc::new(Slots::new(defaults.max_waiters)),
        }
    }

    /// At most `streams` open event streams and `waiters` submits waiting on `Prefer: wait`.
    pub fn with_caps(mut self, streams: usize, waiters: usize) -> Self {
        self.streams = Arc::new(Slots::new(streams));
        self.waiters = Arc::new(Slots::new(waiters));
        self
    }

    /// Open event streams and their cap.
    pub fn streams(&self) -> &Slots {
        &self.streams
    }

    /// Submits waiting on `Prefer: wait` and their cap.
    pub fn waiters(&self) -> &Slots {
        &self.waiters
    }

    /// JetStream is ready: requests are taken from now on.
    pub fn ready(&self, jobs: Arc<Jobs>) {
        let _ = self.jobs.set(jobs);
    }

    /// The streams and buckets, once JetStream is ready.
    pub fn ready_jobs(&self) -> Option<&Arc<Jobs>> {
        self.jobs.get()
    }

    /// Whether requests are taken.
    pub fn is_ready(&self) -> bool {
        self.jobs.get().is_some()
    }

    /// The callback signer, if callbacks are configured.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// The SSRF guard of callback URLs.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub(crate) fn jobs(&self) -> Result<&Arc<Jobs>, GatewayError> {
        self.jobs
            .get()
            .ok_or_else(|| ErrorKind::NotReady("asynchronous requests are not ready yet").into())
    }
}

/// What the client prefers (RFC 7240).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefer {
    /// `respond-async`.
    pub respond_async: bool,
    /// `wait=N`: answer synchronously if done within N seconds.
    pub wait: Option<Duration>,
}

impl Prefer {
    /// Reads every `Prefer` header.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut prefer = Prefer::default();
        for value in headers.get_all("prefer") {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split([',', ';']) {
                let token = token.trim();
                let (name, arg) = token.split_once('=').map_or((token, None), |(n, a)| {
                    (n.trim(), Some(a.trim().trim_matches('"')))
                });
                if name.eq_ignore_ascii_case("respond-async") {
                    prefer.respond_async = true;
                } else if name.eq_ignore_ascii_case("wait") {
                    prefer.wait = arg
                        .and_then(|a| a.parse::<u64>().ok())
                        .map(Duration::from_secs);
                }
            }
        }
        prefer
    }
}

/// What an asynchronous submit carries.
pub struct Submit<'a> {
    /// The route.
    pub route: &'a Arc<Route>,
    /// The request's head.
    pub parts: &'a Parts,
    /// The raw body (for the idempotency fingerprint).
    pub body: &'a [u8],
    /// The validated order id.
    pub order_id: String,
    /// The callback URL, not yet checked.
    pub callback_url: Option<String>,
    /// The client's preferences.
    pub prefer: Prefer,
    /// The new request id.
    pub request_id: &'a str,
    /// The trace context.
    pub traceparent: String,
    /// Who submits it.
    pub caller: &'a Caller,
    /// The client's own deadline (`Busgate-Timeout`), carried to the gather that runs it.
    pub timeout: Option<std::time::Duration>,
}

/// Accepts an asynchronous request: 202 once JetStream has it (or the answer, with `wait`).
pub async fn submit(
    requests: &AsyncRequests,
    submit: Submit<'_>,
) -> Result<Response, GatewayError> {
    let jobs = requests.jobs()?;
    if let Some(url) = &submit.callback_url {
        if requests.signer.is_none() {
            return Err(ErrorKind::CallbacksDisabled.into());
        }
        requests
            .guard
            .check(url)
            .await
            .map_err(ErrorKind::CallbackRefused)?;
    }
    // A watcher slot is taken before anything is written. Past the cap the preference is not
    // honoured (RFC 7240 lets a server ignore `wait`): the submit is accepted with a 202 like
    // any asynchronous one, rather than refused after the client asked for less.
    let waiting = submit
        .prefer
        .wait
        .filter(|w| !w.is_zero())
        .and_then(|wait| Some((wait, requests.waiters.try_hold()?)));
    // Idempotency keys are the client's own: the same key from another client is another key.
    let client = submit.caller.name();
    let key = idempotency_key(&submit.parts.headers)?;
    let fingerprint = key.map(|_| fingerprint(submit.parts, submit.body));
    // The key is claimed first, confirmed once the request is queued, released when it could
    // not be: a repeat never gets the id of a request that is not queued (see `Claim`).
    let mut resumed = None;
    if let (Some(key), Some(fingerprint)) = (key, &fingerprint) {
        match jobs
            .claim(client, key, fingerprint, submit.request_id)
            .await?
        {
            Claim::New => {}
            Claim::Repeat(existing) => return Ok(accepted(&existing, submit.prefer.respond_async)),
            Claim::Resume(existing) => resumed = Some(existing),
            // The first submit is still under way: the client asks again shortly.
            Claim::InProgress => {
                return Err(ErrorKind::Contended(submit.request_id.to_owned()).into())
            }
            Claim::Conflict => return Err(ErrorKind::IdempotencyConflict.into()),
        }
    }
    let request_id = resumed.as_deref().unwrap_or(submit.request_id);
    // The client's cap of pending requests (this instance's share of it), after the key: a repeat is
    // answered whatever the client holds.
    let pending = match submit.caller.get() {
        Some(c) if c.max_pending.is_some() => match c.usage.pending.try_hold(c.pending_cap()) {
            Some(slot) => Some(slot),
            None => {
                // A resumed claim stays, as below.
                if let (Some(key), None) = (key, &resumed) {
                    jobs.release(client, key).await;
                }
                return Err(ErrorKind::TooManyPending.into());
            }
        },
        _ => None,
    };
    let job = Job {
        call: Call {
            request_id: request_id.to_owned(),
            route: submit.route.name.0.to_string(),
            order_id: submit.order_id,
            client: client.to_owned(),
            traceparent: submit.traceparent,
            timeout: submit.timeout,
            headers: submit
                .route
                .condition_headers()
                .filter_map(|name| {
                    let value = submit.parts.headers.get(name)?.to_str().ok()?;
                    Some((name.to_owned(), value.to_owned()))
                })
                .collect(),
        },
        callback_url: submit.callback_url,
        submitted_at: Some(crate::clock::rfc3339(std::time::SystemTime::now())),
    };
    let queued = match resumed {
        Some(_) => jobs.resume(&job).await,
        None => jobs.submit(&job).await,
    };
    if let Err(e) = queued {
        // A resumed claim stays: its request may be queued already, and a later repeat
        // resumes it again.
        if let (Some(key), None) = (key, &resumed) {
            jobs.release(client, key).await;
        }
        return Err(e.with_order(&job.call.order_id));
    }
    if let (Some(key), Some(fingerprint)) = (key, &fingerprint) {
        jobs.confirm(client, key, fingerprint, request_id).await;
    }
    if let Some(slot) = pending {
        // The slot is held until the request is final (on whichever instance runs it), and
        // at most as long as a request can stay pending: every delivery's ack wait.
        let settings = jobs.settings();
        let bound = settings.ack_wait * (settings.max_deliver + 1) + Duration::from_secs(10);
        let (jobs, request_id) = (jobs.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let _ = wait_final(&jobs, &request_id, bound).await;
            drop(slot);
        });
    }
    if let Some((wait, slot)) = waiting {
        let wait = wait.min(jobs.settings().max_wait);
        let done = wait_final(jobs, request_id, wait).await;
        drop(slot);
        if let Some(doc) = done {
            return Ok(final_answer(&doc));
        }
    }
    Ok(accepted(request_id, submit.prefer.respond_async))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ErrorKind::InvalidIdempotencyKey)?
        .trim_matches('"');
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ErrorKind::InvalidIdempotencyKey.into());
    }
    Ok(Some(key))
}

/// What makes two submits "the same request": method, path and body.
fn fingerprint(parts: &Parts, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str());
    hash.update([0]);
    hash.update(parts.uri.path());
    hash.update([0]);
    hash.update(body);
    hex::encode(hash.finalize())
}

/// The 202 answer.
fn accepted(request_id: &str, preference_applied: bool) -> Response {
    let status_url = format!("/api/requests/{request_id}");
    let body = serde_json::json!({"request_id": request_id, "status": "pending", "status_url": status_url});
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if preference_applied {
        headers.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
    response
}

/// The answer the synchronous call would have given, from a finished document.
fn final_answer(doc: &StatusDoc) -> Response {
    let status = doc
        .http_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status == StatusCode::OK {
        "application/json"
    } else {
        PROBLEM_JSON
    };
    let body = doc
        .result
        .as_ref()
        .map(|r| r.get().to_owned())
        .unwrap_or_default();
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn wait_final(jobs: &Jobs, request_id: &str, within: Duration) -> Option<StatusDoc> {
    let mut finished = jobs
        .watch(request_id)
        .await
        .ok()?
        .filter(|doc| futures::future::ready(doc.is_final()));
    tokio::time::timeout(within, finished.next())
        .await
        .ok()
        .flatten()
}

/// Request ids are UUIDs; anything else is unknown (and never becomes a KV key).
fn checked_id(id: &str) -> Result<String, GatewayError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ErrorKind::RequestNotFound(id.chars().take(64).collect()).into())
}

/// `GET /api/requests/{request_id}`. The poll itself has a request id of its own, which the
/// edge gives its answer and problem documents.
///
/// A request is visible to the client that submitted it only: for anyone else the answer is
/// the 404 of an id that does not exist, byte for byte.
pub async fn poll(
    State(requests): State<Arc<AsyncRequests>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, GatewayError> {
    let id = checked_id(&id)?;
    match requests.jobs()?.lookup(&id).await? {
        Some((doc, _)) if doc.client == caller.name() => Ok(axum::Json(doc).into_response()),
        _ => Err(ErrorKind::RequestNotFound(id).into()),
    }
}

/// `GET /api/requests/{request_id}/events`: the status document on every change, ending after
/// the final one (or after `jobs.events_max`; clients reconnect).
/// Like a poll, only the submitting client sees the stream; anyone else gets the 404 of an
/// unknown id. A client's open streams count against its `max_streams` (429
/// `too-many-streams`) as well as the instance's `jobs.max_event_streams` (503).
pub async fn events(
    State(requests): State<Arc<AsyncRequests>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, GatewayError> {
    let id = checked_id(&id)?;
    let jobs = requests.jobs()?;
    // A request still in the queue has no document yet: its pending one is told first.
    let queued = match jobs.lookup(&id).await? {
        Some((doc, stored)) if doc.client == caller.name() => (!stored).then_some(doc),
        _ => return Err(ErrorKind::RequestNotFound(id).into()),
    };
    let client_slot = match caller.get() {
        Some(c) => Some(
            c.usage
                .streams
                .try_hold(c.max_streams)
                .ok_or(ErrorKind::TooManyStreams)?,
        ),
        None => None,
    };
    let slot: Slot = requests
        .streams
        .try_hold()
        .ok_or(ErrorKind::Overloaded("open event streams"))?;
    let slot = (slot, client_slot);
    let docs = jobs.watch(&id).await?;
    let docs = futures::stream::iter(queued).chain(docs).boxed();
    let limit = tokio::time::sleep(jobs.settings().events_max);
    // Ends right after the final document, not at the next (never coming) one. The stream
    // holds its slot of `jobs.max_event_streams` until it ends or the client goes away.
    let stream =
        futures::stream::unfold((docs, false, slot), |(mut docs, ended, slot)| async move {
            if ended {
                return None;
            }
            let doc = docs.next().await?;
            let ended = doc.is_final();
            Some((doc, (docs, ended, slot)))
        })
        .map(|doc| {
            let name = match doc.status {
                JobStatus::Pending => "pending",
                JobStatus::Completed => "completed",
                JobStatus::Failed => "failed",
            };
            Ok(Event::default()
                .event(name)
                .json_data(&doc)
                .unwrap_or_else(|_| Event::default().event(name)))
        })
        .take_until(limit);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn prefer_headers_parse() {
        assert_eq!(Prefer::parse(&headers(&[])), Prefer::default());
        assert_eq!(
            Prefer::parse(&headers(&["respond-async, wait=5"])),
            Prefer {
                respond_async: true,
                wait: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            Prefer::parse(&headers(&["return=minimal", "Respond-Async"])),
            Prefer {
                respond_async: true,
                wait: None
            }
        );
        assert_eq!(Prefer::parse(&headers(&["wait=x"])).wait, None);
    }

    #[test]
    fn idempotency_keys_are_checked() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).ok(), Some(None));
        h.insert("idempotency-key", HeaderValue::from_static("\"abc-1\""));
        assert_eq!(idempotency_key(&h).ok(), Some(Some("abc-1")));
        h.insert("idempotency-key", HeaderValue::from_static("a b"));
        assert!(idempotency_key(&h).is_err());
    }

    #[test]
    fn only_uuids_are_request_ids() {
        assert!(checked_id("01a20092-06fb-75cf-a84a-ff868feb3495").is_ok());
        assert!(checked_id("../x").is_err());
        assert!(checked_id("a.b.>").is_err());
    }
}
