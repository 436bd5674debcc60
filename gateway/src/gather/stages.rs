//! A composed route's run over the gather: which targets go out now (the first stage at the
//! start, the next ones as their needs settle), each with the attributes the graph resolved and
//! its own timeout from when it is asked, all within the request's deadline (the route's,
//! shortened by the client's `Busgate-Timeout`). The decisions are [`crate::gather::graph`]'s;
//! this file carries them out on the [`Book`] and the bus. A guard's breaker applies to every
//! stage; retries and hedges are not made in a composed route (each stage's payload differs).
//! With traces on, every stage's request has its send span (`gather::trace`), as in a plain
//! gather.

use std::time::Duration;

use tokio::time::Instant;

use busgate_shared::envelope::ServiceRequest;
use busgate_shared::header;
use busgate_shared::telemetry::Traceparent;

use crate::config::snapshot::Route;
use crate::gather::ask::{publish, Asker};
use crate::gather::book::{Book, SourceResult, Step};
use crate::gather::collector::{Collector, Gather};
use crate::gather::graph::{Decision, Run, Seen, Skip};
use crate::gather::trace::Sends;

/// `scatter::start` for a composed route: every target waits (held) until the graph decides it;
/// the conditions on the request are decided now (the request is not kept), then the first
/// stage goes out.
pub(crate) fn start_graph(
    collector: &Collector,
    route: &Route,
    asker: &Asker<'_>,
    sends: Option<&mut Sends>,
) -> (Book, Gather, Box<Run>) {
    let deadline = asker
        .timeout
        .map_or(route.deadline, |limit| route.deadline.min(limit));
    let mut book = Book::new(
        Instant::now(),
        route.targets.iter().map(|t| (t.required, deadline)),
    );
    let gather = collector.register(route.targets.len());
    let mut run = Box::new(Run::new(
        route.targets.len(),
        asker.request_id,
        asker.order_id,
        asker.client,
        asker.traceparent,
        deadline,
    ));
    for (index, target) in route.targets.iter().enumerate() {
        book.hold(index);
        let holds = target.when.as_ref().is_none_or(|when| {
            when.holds(
                &target.service.0,
                asker.order_id,
                asker.client,
                asker.headers,
            )
        });
        if !holds {
            run.decided(index);
            book.settle(index, SourceResult::Skipped(Skip::Condition));
        }
    }
    advance(&mut book, &gather, route, &mut run, sends);
    (book, gather, run)
}

/// Asks the graph which targets can be decided now and carries that out: skips are settled,
/// asks published (the target's timeout counting from now, within the route's deadline), until
/// nothing more is decided or the gather is done.
pub(crate) fn advance(
    book: &mut Book,
    gather: &Gather,
    route: &Route,
    run: &mut Run,
    mut sends: Option<&mut Sends>,
) {
    let Some(graph) = route.graph.as_deref() else {
        return;
    };
    let mut decisions = Vec::new();
    let mut reply = String::new();
    loop {
        if book.step() == Step::Done {
            return;
        }
        decisions.clear();
        run.next(
            graph,
            |i| match book.result(i) {
                None => Seen::Open,
                Some(SourceResult::Ok { data, .. }) => Seen::Ok(data.as_ref()),
                Some(_) => Seen::Failed,
            },
            &mut decisions,
        );
        if decisions.is_empty() {
            return;
        }
        for decision in decisions.drain(..) {
            match decision {
                Decision::Skip { index, reason } => {
                    book.settle(index, SourceResult::Skipped(reason));
                }
                Decision::Ask { index, attributes } => {
                    let Some(target) = route.targets.get(index) else {
                        continue;
                    };
                    if let Some(guard) = &target.guard {
                        if !guard.admit(gather.collector().metrics()) {
                            if let Some(sends) = sends.as_deref_mut() {
                                sends.send(index, &run.traceparent, target);
                            }
                            book.settle(index, SourceResult::CircuitOpen);
                            continue;
                        }
                    }
                    let at = Instant::now().saturating_duration_since(book.started());
                    book.arm(index, at, target.timeout);
                    run.started(index, at);
                    let attributes: Vec<(&str, &serde_json::Value)> =
                        attributes.iter().map(|(n, v)| (&**n, v)).collect();
                    let payload = ServiceRequest::encode_with_attributes(
                        &run.request_id,
                        &run.order_id,
                        &route.operation,
                        &attributes,
                    );
                    let timeout = target.timeout.min(run.deadline.saturating_sub(at));
                    // With traces on, this stage's send span is the service's parent.
                    let own = sends
                        .as_deref_mut()
                        .and_then(|s| s.send(index, &run.traceparent, target));
                    let traceparent = own.as_ref().map_or(&*run.traceparent, Traceparent::as_str);
                    let ids = [&*run.request_id, &*run.client, traceparent];
                    let now_ms = header::now_unix_ms();
                    if !publish(gather, target, ids, &payload, now_ms, timeout, &mut reply) {
                        book.settle(
                            index,
                            SourceResult::NoResponders {
                                elapsed: Duration::ZERO,
                            },
                        );
                    }
                }
            }
        }
    }
}
