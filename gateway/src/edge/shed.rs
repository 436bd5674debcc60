//! Load shedding: past `http.max_in_flight` a request is answered 503 `overloaded` at once,
//! before anything else is done for it ([`overloaded`]); a request let in holds its slot
//! ([`InFlight`]) until it is answered or abandoned.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

use crate::edge::ids::{RequestId, REQUEST_ID_HEADER};
use crate::edge::state::AppState;
use crate::error::{ErrorKind, GatewayError};

/// A request counted in flight: its slot of `http.max_in_flight` is given back when it drops
/// (answered, or abandoned by a client that went away). It is also the state the request runs
/// on, so counting costs no reference count of its own.
pub(super) struct InFlight {
    state: AppState,
    counted: bool,
}

impl InFlight {
    /// Counts a request in, unless the cap is reached.
    pub(super) fn enter(state: &AppState) -> Option<InFlight> {
        state.edge.in_flight.try_take().then(|| InFlight {
            state: state.clone(),
            counted: true,
        })
    }

    /// A request counted elsewhere (or by no one: [`crate::edge::router`] alone).
    pub(super) fn uncounted(state: AppState) -> InFlight {
        InFlight {
            state,
            counted: false,
        }
    }
}

impl std::ops::Deref for InFlight {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.state
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.counted {
            self.state.edge.in_flight.give_back();
        }
    }
}

/// The answer past `http.max_in_flight`: no route lookup, no body, no bus.
pub(super) fn overloaded(state: &AppState) -> Response {
    let request_id = RequestId::fresh();
    let mut response = GatewayError::from(ErrorKind::Overloaded("requests in flight"))
        .with_request(request_id.as_str())
        .into_response();
    if let Ok(id) = HeaderValue::from_str(request_id.as_str()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
    state
        .runner
        .metrics()
        .record_http(&state.edge.unmatched, response.status().as_u16(), 0.0);
    response
}
