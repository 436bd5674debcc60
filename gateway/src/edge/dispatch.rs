//! Dispatch of the configured routes: everything a request to a route goes through, in order:
//! the caller (401), the route lookup (404, 405), the client's routes and rate (403, 429), the
//! body and its `order_id` (400, 413, 415), then an asynchronous submit (to `jobs`) or the
//! requests of a synchronous gather, and the answer when its replies are in.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, request::Parts, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::Instant;

use busgate_shared::header::TRACEPARENT;
use busgate_shared::resilience::{parse_client_timeout, ClientTimeoutError};
use busgate_shared::validate::OrderIdRule;

use crate::auth::Caller;
use crate::config::snapshot::{Lookup, Route};
use crate::edge::access::Observed;
use crate::edge::body::{body_fields, read_body, BodyFields};
use crate::edge::ids::{traceparent, RequestId, REQUEST_ID_HEADER};
use crate::edge::shed::InFlight;
use crate::edge::state::AppState;
use crate::error::{ErrorKind, GatewayError};
use crate::gather::scatter::{Asker, Pending};
use crate::jobs::http::{Prefer, Submit};
use crate::metrics::Name;

/// RFC 9211's response header.
const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// Every configured route. Not an `async fn`: a future keeps the arguments of an async fn for
/// its whole life, and a request mostly waits for its replies, which needs none of the request's
/// head or body. So the request goes into [`admit`], boxed and freed once the requests are out,
/// and what waits is only this future, its gather and its route.
pub(super) fn dispatch(
    state: InFlight,
    request: Request,
    peer: Option<SocketAddr>,
) -> impl Future<Output = Result<Response, Infallible>> + Send {
    let started = Instant::now();
    let request_id = RequestId::fresh();
    // The real client (the peer, or what a trusted proxy says): for the failed-credentials
    // throttle, the access line and the server span.
    let address = peer.map(|peer| state.edge.proxies.client(peer.ip(), request.headers()));
    // `None` unless traces or the access log are on.
    let observed = Observed::begin(&state, &request, address);
    let admitting = Box::pin(admit(
        AppState::clone(&state),
        request,
        request_id,
        observed,
        address,
    ));
    async move {
        let (admitted, observed) = admitting.await;
        let (label, result) = match admitted {
            Admitted::Done { label, result } => (label, result),
            Admitted::Waiting {
                route,
                pending,
                order_id,
                late_caller,
            } => {
                let answer = state
                    .runner
                    .finish(&route, pending, request_id.as_str(), &order_id, started)
                    .await;
                let result = answer.map(|mut answer| {
                    let json = HeaderValue::from_static("application/json");
                    let location = crate::jobs::late::follow(
                        &state.requests,
                        &mut answer,
                        &route,
                        request_id.as_str(),
                        &order_id,
                        late_caller.as_ref(),
                    );
                    let mut response =
                        ([(header::CONTENT_TYPE, json)], answer.body).into_response();
                    if let Some(location) = location {
                        response.headers_mut().insert(header::LOCATION, location);
                    }
                    if let Some(value) = answer
                        .cache_status
                        .and_then(|v| HeaderValue::from_str(&v).ok())
                    {
                        response.headers_mut().insert(CACHE_STATUS, value);
                    }
                    response
                });
                (route.name.clone(), result)
            }
        };
        let mut response = match result {
            Ok(response) => response,
            Err(e) => e
                .with_request(request_id.as_str())
                .into_traced_response(observed.as_deref().and_then(Observed::trace_id)),
        };
        if let Ok(id) = HeaderValue::from_str(request_id.as_str()) {
            response.headers_mut().insert(REQUEST_ID_HEADER, id);
        }
        state.runner.metrics().record_http(
            &label,
            response.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        if let Some(observed) = observed {
            let status = response.status().as_u16();
            observed.finish(&label.0, status, request_id.as_str(), started.elapsed());
        }
        Ok(response)
    }
}

/// Where a request stands once [`admit`] is done with it.
enum Admitted {
    /// Answered or refused without waiting for replies, with its metrics label.
    Done {
        label: Name,
        result: Result<Response, GatewayError>,
    },
    /// Published; the answer waits for the replies.
    Waiting {
        route: Arc<Route>,
        pending: Pending,
        order_id: String,
        /// Who asked, kept only for a route with a late grace (its request document's owner).
        late_caller: Option<Caller>,
    },
}

/// [`admit_request`], handing back the request's observation.
async fn admit(
    state: AppState,
    request: Request,
    request_id: RequestId,
    mut observed: Option<Box<Observed>>,
    address: Option<IpAddr>,
) -> (Admitted, Option<Box<Observed>>) {
    let admitted =
        admit_request(state, request, request_id, observed.as_deref_mut(), address).await;
    (admitted, observed)
}

/// Everything up to the wait: the route lookup, the body, validation, an asynchronous submit,
/// and publishing the requests of a synchronous one.
async fn admit_request(
    state: AppState,
    request: Request,
    request_id: RequestId,
    mut observed: Option<&mut Observed>,
    address: Option<IpAddr>,
) -> Admitted {
    let snapshot = state.runner.config().load_full();
    let (parts, body) = request.into_parts();
    // Who asks comes first: a request without valid credentials learns nothing, not even
    // which paths exist, and its body is never read.
    let caller = match state
        .auth
        .authenticate(
            &snapshot,
            &parts.headers,
            address.and_then(|a| state.edge.proxies.limited(a)),
        )
        .await
    {
        Ok(caller) => {
            if let Some(o) = observed.as_deref_mut() {
                o.client(caller.name());
            }
            caller
        }
        Err(e) => {
            state.runner.metrics().record_client(None, refusal(&e));
            return Admitted::Done {
                label: state.edge.unmatched.clone(),
                result: Err(e),
            };
        }
    };
    let (route, path_order_id) = match snapshot.lookup(&parts.method, parts.uri.path()) {
        Lookup::Found {
            route,
            path_order_id,
        } => {
            if let Some(o) = observed.as_deref_mut() {
                o.matched(parts.uri.path(), path_order_id);
            }
            (route, path_order_id)
        }
        Lookup::MethodNotAllowed(allow) => {
            let refused = ErrorKind::MethodNotAllowed {
                method: parts.method.to_string(),
                allow: allow.join(", "),
            };
            return Admitted::Done {
                label: state.edge.unmatched.clone(),
                result: Err(refused.into()),
            };
        }
        Lookup::NotFound => {
            return Admitted::Done {
                label: state.edge.unmatched.clone(),
                result: Err(ErrorKind::NotFound(parts.uri.path().to_owned()).into()),
            };
        }
    };
    if let Err(e) = admit_client(&state, &caller, route) {
        return Admitted::Done {
            label: route.name.clone(),
            result: Err(e),
        };
    }
    let request = Incoming {
        parts: &parts,
        body,
        request_id: request_id.as_str(),
        caller: &caller,
        observed,
    };
    match serve(&state, route, path_order_id, request).await {
        Ok(Served::Answered(response)) => Admitted::Done {
            label: route.name.clone(),
            result: Ok(response),
        },
        Ok(Served::Waiting { pending, order_id }) => Admitted::Waiting {
            route: route.clone(),
            pending,
            order_id,
            late_caller: route.late.map(|_| caller.clone()),
        },
        Err(e) => {
            if matches!(e.kind, ErrorKind::TooManyPending) {
                let client = caller.get().map(|c| &c.name);
                state
                    .runner
                    .metrics()
                    .record_client(client, "too-many-pending");
            }
            Admitted::Done {
                label: route.name.clone(),
                result: Err(e),
            }
        }
    }
}

/// Holds a client to its routes and its rate, and counts its request: 403
/// `route-not-allowed`, 429 `rate-limited`. The anonymous caller (`auth.mode = "none"`) has
/// neither, unless `[auth.anonymous]` gives each client address a rate.
fn admit_client(state: &AppState, caller: &Caller, route: &Route) -> Result<(), GatewayError> {
    let Some(client) = caller.get() else {
        return Ok(());
    };
    let metrics = state.runner.metrics();
    if !client.may_use(&route.name.0) {
        metrics.record_client(Some(&client.name), "route-not-allowed");
        return Err(ErrorKind::RouteNotAllowed(route.name.0.to_string()).into());
    }
    if let Some(limiter) = &client.limiter {
        if let Err(retry_after) = limiter.check() {
            metrics.record_client(Some(&client.name), "rate-limited");
            return Err(ErrorKind::RateLimited {
                per_second: limiter.rate.per_second,
                burst: limiter.rate.burst(),
                retry_after,
            }
            .into());
        }
    }
    metrics.record_client(Some(&client.name), "admitted");
    Ok(())
}

/// The outcome label of a refused caller: `unauthorized`, or `throttled` when its address
/// is past `auth.max_failures_per_minute`.
pub(super) fn refusal(e: &GatewayError) -> &'static str {
    if matches!(e.kind, ErrorKind::TooManyFailures { .. }) {
        "throttled"
    } else {
        "unauthorized"
    }
}

/// A request that matched a route.
struct Incoming<'a> {
    parts: &'a Parts,
    body: Body,
    request_id: &'a str,
    caller: &'a Caller,
    observed: Option<&'a mut Observed>,
}

/// What [`serve`] made of a request.
enum Served {
    /// The answer (an asynchronous submit).
    Answered(Response),
    /// The requests of a synchronous gather are out.
    Waiting { pending: Pending, order_id: String },
}

async fn serve(
    state: &AppState,
    route: &Arc<Route>,
    path_order_id: Option<&str>,
    request: Incoming<'_>,
) -> Result<Served, GatewayError> {
    let Incoming {
        parts,
        body,
        request_id,
        caller,
        observed,
    } = request;
    let (fields, raw) = if parts.method == Method::POST {
        let bytes = read_body(parts, body, state.edge.body_limit, state.edge.body_timeout).await?;
        (body_fields(&bytes, path_order_id.is_none())?, bytes)
    } else {
        (BodyFields::default(), Bytes::new())
    };
    let order_id = match path_order_id {
        Some(raw) => busgate_shared::validate::percent_decode(raw)
            .ok_or_else(|| invalid_order_id(&state.edge.order_id))?,
        None => fields.order_id.ok_or(ErrorKind::MissingOrderId)?,
    };
    if !state.edge.order_id.accepts(&order_id) {
        return Err(invalid_order_id(&state.edge.order_id));
    }
    let timeout =
        client_timeout(&parts.headers).map_err(|e| GatewayError::from(e).with_order(&order_id))?;
    let incoming = parts.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok());
    // With traces on, the server span's; else the client's trace (or a new one) as before.
    let traceparent = match observed.as_deref().and_then(Observed::traceparent) {
        Some(own) => own.to_owned(),
        None => traceparent(incoming, request_id, state.edge.trace_sample_ratio),
    };
    if let Some(o) = observed {
        o.sent(&traceparent);
    }
    let prefer = Prefer::parse(&parts.headers);
    if prefer.respond_async || fields.callback_url.is_some() {
        let submit = Submit {
            route,
            parts,
            body: &raw,
            order_id,
            callback_url: fields.callback_url,
            prefer,
            request_id,
            traceparent,
            caller,
            timeout,
        };
        // Boxed: its JetStream writes would otherwise make every synchronous request's
        // admission several KiB larger.
        return Box::pin(crate::jobs::http::submit(&state.requests, submit))
            .await
            .map(Served::Answered);
    }
    // A synchronous request is refused at once while the request path's connection is down.
    // Only that one: it does not use the JetStream client, whose reconnect (to a node that
    // hangs, it may wait out a whole connect timeout) must not refuse answers that the
    // request path can give. An asynchronous submit is not refused: its JetStream writes wait
    // out a reconnect (within the submit's patience), so that a moment without a server costs
    // a slower 202, not a refusal.
    if !state.runner.collector().is_connected() {
        return Err(
            GatewayError::from(ErrorKind::NotReady("not connected to nats")).with_order(&order_id),
        );
    }
    let asker = Asker {
        request_id,
        order_id: &order_id,
        client: caller.name(),
        traceparent: &traceparent,
        headers: &parts.headers,
        timeout,
    };
    let pending = state.runner.start(route, &asker);
    Ok(Served::Waiting { pending, order_id })
}

/// The client's `Busgate-Timeout`, if it sent one; a value that is not a duration is a 400.
fn client_timeout(
    headers: &axum::http::HeaderMap,
) -> Result<Option<std::time::Duration>, ErrorKind> {
    let Some(value) = headers.get(busgate_shared::header::TIMEOUT) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ErrorKind::InvalidTimeout(ClientTimeoutError::Malformed))?;
    parse_client_timeout(text)
        .map(Some)
        .map_err(ErrorKind::InvalidTimeout)
}

fn invalid_order_id(rule: &OrderIdRule) -> GatewayError {
    ErrorKind::InvalidOrderId {
        pattern: rule.as_str().to_owned(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::tests::unconnected_state;

    /// What a request in flight holds besides its connection is mostly this future, boxed whole
    /// by [`Public`] for every request. Everything before the wait (the request's head and
    /// body, validation, the asynchronous branch's JetStream futures) is in the
    /// boxed admission, freed once the requests are out. Before that split, a waiting request
    /// held a 1,448-byte future and axum's handler wrapper kept the request's head beside it.
    #[tokio::test]
    async fn a_request_in_flight_is_a_small_future() {
        let state = unconnected_state().await;
        let request = axum::http::Request::get("/api/orders/1")
            .body(Body::empty())
            .expect("request");
        let admitting = std::mem::size_of_val(&admit(
            state.clone(),
            Request::default(),
            RequestId::fresh(),
            None,
            None,
        ));
        let future = dispatch(InFlight::uncounted(state), request, None);
        let size = std::mem::size_of_val(&future);
        println!("dispatch future: {size} bytes; admission, boxed until the requests are out: {admitting} bytes");
        assert!(size <= 1024, "dispatch future is {size} bytes");
    }
}
