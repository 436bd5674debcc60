//! The gauges `/metrics` reads at scrape time, not on the request path: the NATS connections'
//! state, what the instance holds against its caps, and the async backlog. Written in the
//! exposition's text format after the registry's metrics (before its `# EOF`).

use std::fmt::Write;

use crate::edge::state::AppState;
use crate::jobs::backlog::backlog;

/// The registry's exposition `metrics` with the scrape-time gauges added.
pub async fn with_gauges(state: &AppState, metrics: String) -> String {
    let mut out = match metrics.strip_suffix("# EOF\n") {
        Some(head) => head.to_owned(),
        None => metrics,
    };
    let gauge = |out: &mut String, name: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}.");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let up = |b: bool| if b { 1.0 } else { 0.0 };
    let edge = &state.edge;
    gauge(
        &mut out,
        "busgate_nats_connected",
        "Whether a NATS connection is up (1) or not (0): requests (the request path) and jetstream",
        &[
            (
                "{connection=\"requests\"}",
                up(state.runner.collector().is_connected()),
            ),
            ("{connection=\"jetstream\"}", up(state.nats_connected())),
        ],
    );
    gauge(
        &mut out,
        "busgate_requests_in_flight",
        "Public requests being served (shed past http.max_in_flight)",
        &[("", edge.in_flight.used() as f64)],
    );
    gauge(
        &mut out,
        "busgate_connections_open",
        "Open public connections (http.max_connections caps them)",
        &[("", edge.connections.used() as f64)],
    );
    gauge(
        &mut out,
        "busgate_event_streams_open",
        "Open server-sent event streams of asynchronous requests",
        &[("", state.requests.streams().used() as f64)],
    );
    if let Some(throttle) = state.auth.throttle() {
        gauge(
            &mut out,
            "busgate_auth_failing_addresses",
            "Client addresses with refused credentials in their minute (a fixed table: at most 8192)",
            &[("", throttle.tracked() as f64)],
        );
    }
    if let Some((requests, callbacks)) = backlog(&state.requests).await {
        gauge(
            &mut out,
            "busgate_async_backlog",
            "Messages waiting in the asynchronous streams: requests to run, callbacks to deliver",
            &[
                ("{stream=\"requests\"}", requests as f64),
                ("{stream=\"callbacks\"}", callbacks as f64),
            ],
        );
    }
    out.push_str("# EOF\n");
    out
}
