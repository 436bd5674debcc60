//! Processing: the consumer of the work queue. Every instance pulls as many requests as it
//! may start, runs each like a synchronous request (keeping the message alive while its
//! gather runs), stores the result before it acks, schedules the callback, and hands a
//! transient failure back to be delivered again later ([`retry_delay`]). It stops when the
//! process drains, handing back at once what it has not started.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use busgate_shared::drain;
use busgate_shared::subject;

use crate::error::{ErrorKind, GatewayError};
use crate::jobs::callback::callback_unscheduled;
use crate::jobs::pull::{run_within, Puller};
use crate::jobs::results::StatusDoc;
use crate::jobs::store::{retry_delay, Job, Jobs};
use crate::route::Runner;

/// What this stage pulls, as the logs name it.
const WHAT: &str = "asynchronous requests";

/// Pulls asynchronous requests and runs them until `drain` is signalled; then waits at most
/// `grace` for the requests it started, and releases the drain. Nothing else stops it: a
/// failed pull or a consumer it cannot find is retried ([`Puller`]).
///
/// An instance asks JetStream for as many requests as it can start at once (its free
/// permits of `jobs.concurrency`), never more: a request it holds is a request it runs, so
/// none waits behind a busy instance while another is idle, and a stopping instance hands
/// back at once (NAK without delay) whatever reaches it after the stop.
pub async fn run_requests(jobs: Arc<Jobs>, runner: Runner, drain: drain::Watch, grace: Duration) {
    let mut puller = Puller::new(
        jobs.clone(),
        (subject::REQUESTS_STREAM, subject::REQUESTS_CONSUMER),
        jobs.settings.ack_wait,
        WHAT,
        drain.clone(),
    );
    let permits = Arc::new(Semaphore::new(jobs.settings.concurrency));
    let mut tasks = JoinSet::new();
    info!(
        concurrency = jobs.settings.concurrency,
        "processing asynchronous requests"
    );
    // Held until the requests in flight are done or abandoned: the drain waits for it.
    let release = run_within(&mut puller, &permits, &mut tasks, &drain, |message| {
        let (jobs, runner, drain) = (jobs.clone(), runner.clone(), drain.clone());
        async move { process(&jobs, &runner, message, &drain).await }
    })
    .await;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        warn!(
            abandoned = tasks.len(),
            "asynchronous requests left unacked for another instance"
        );
        tasks.abort_all();
    }
    drop(release);
}

/// Reads the status document of a request about to run: none is the rule (a request's
/// document is written when it finishes), a final one means a redelivery of a finished
/// request, a pending one was written by an earlier gateway's submit.
async fn current_doc(jobs: &Jobs, request_id: &str) -> Result<Option<StatusDoc>, GatewayError> {
    Ok(jobs.status(request_id).await?.map(|(_, doc)| doc))
}

/// Schedules the callback of a finished request; when that fails, hands the message back to
/// be delivered again after [`retry_delay`] and says `false` (the caller stops there).
async fn schedule_callback_or_nak(
    jobs: &Jobs,
    message: &jetstream::Message,
    request_id: &str,
    traceparent: &str,
    delivered: i64,
) -> bool {
    let Err(e) = jobs.schedule_callback(request_id, traceparent).await else {
        return true;
    };
    warn!(request_id, error = %e, "cannot schedule a callback, retrying later");
    let _ = message
        .ack_with(AckKind::Nak(Some(retry_delay(delivered))))
        .await;
    false
}

/// Keeps `message` alive until the results bucket has room ([`Room::until_room`](crate::jobs::room::Room::until_room)); `false`
/// when `drain` came first (the caller hands it back).
async fn hold_for_room(jobs: &Jobs, message: &jetstream::Message, drain: &drain::Watch) -> bool {
    let mut ticks = tokio::time::interval(jobs.settings.ack_wait / 2);
    ticks.tick().await;
    let room = jobs.room.until_room(drain);
    tokio::pin!(room);
    loop {
        tokio::select! {
            found = &mut room => return found,
            _ = ticks.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
        }
    }
}

async fn process(jobs: &Jobs, runner: &Runner, message: jetstream::Message, drain: &drain::Watch) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let job: Job = match serde_json::from_slice(&message.payload) {
        Ok(job) => job,
        Err(e) => {
            warn!(error = %e, "dropping an undecodable asynchronous request");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let request_id = job.call.request_id.as_str();
    let base = match current_doc(jobs, request_id).await {
        Ok(Some(doc)) if doc.is_final() => {
            // The result is stored; the callback may not have been scheduled before the
            // instance that stored it died.
            if job.callback_url.is_some() && callback_unscheduled(&doc) {
                if !schedule_callback_or_nak(
                    jobs,
                    &message,
                    request_id,
                    &job.call.traceparent,
                    delivered,
                )
                .await
                {
                    return;
                }
                info!(request_id, "callback of a finished request scheduled");
            }
            debug!(request_id, "already finished, acking a redelivery");
            let _ = message.ack().await;
            return;
        }
        Ok(doc) => doc,
        Err(e) => {
            warn!(request_id, error = %e, "cannot read a status document, retrying later");
            let _ = message
                .ack_with(AckKind::Nak(Some(retry_delay(delivered))))
                .await;
            return;
        }
    };
    let (http_status, body) = if delivered > i64::from(jobs.settings.max_deliver) {
        warn!(
            request_id,
            delivered, "giving up on an asynchronous request"
        );
        gave_up(request_id, delivered)
    } else {
        // With traces on, a processing span linked to the submit's; the gather is its child.
        let (span, traced) = match super::trace::processing(&job.call, delivered) {
            Some((span, call)) => (Some(span), Some(call)),
            None => (None, None),
        };
        let work = runner.attempt(traced.as_ref().unwrap_or(&job.call));
        tokio::pin!(work);
        // Tell JetStream we are alive while a long gather runs.
        let mut ticks = tokio::time::interval(jobs.settings.ack_wait / 2);
        ticks.tick().await;
        let attempt = loop {
            tokio::select! {
                attempt = &mut work => break attempt,
                _ = ticks.tick() => { let _ = message.ack_with(AckKind::Progress).await; }
            }
        };
        if let Some(span) = span {
            super::trace::processed(span, attempt.status);
        }
        if attempt.transient && delivered < i64::from(jobs.settings.max_deliver) {
            // The bus could not carry it (a node or worker going away, a connection being
            // remade): accepted work is tried again, not finished as a failure.
            let delay = retry_delay(delivered);
            info!(
                request_id,
                delivered,
                status = attempt.status,
                retry_in = ?delay,
                "asynchronous request failed transiently, retrying later"
            );
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        (attempt.status, attempt.body)
    };
    let mut held = false;
    let finished = loop {
        match jobs.complete(&job, base.as_ref(), http_status, &body).await {
            Err(e) if matches!(e.kind, ErrorKind::QueueFull) => {
                // The bucket is full: hold the result, not the gather again nor a failure.
                // Said once per request; a document larger than the room found is retried
                // at every probe, quietly.
                if held {
                    debug!(request_id, "still no room for a held result");
                } else {
                    warn!(
                        request_id,
                        "the results bucket is full: holding a result until it has room"
                    );
                    held = true;
                }
                if !hold_for_room(jobs, &message, drain).await {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return;
                }
            }
            finished => break finished,
        }
    };
    if let Err(e) = finished {
        warn!(request_id, error = %e, "cannot store a result, retrying later");
        let _ = message
            .ack_with(AckKind::Nak(Some(retry_delay(delivered))))
            .await;
        return;
    }
    if job.callback_url.is_some()
        && !schedule_callback_or_nak(jobs, &message, request_id, &job.call.traceparent, delivered)
            .await
    {
        return;
    }
    if let Err(e) = message.double_ack().await {
        // The result is stored; a redelivery only finds it final and acks.
        debug!(request_id, error = %e, "ack not confirmed");
    }
}

/// The answer of a request that kept failing: a 500 problem.
fn gave_up(request_id: &str, delivered: i64) -> (u16, Vec<u8>) {
    let (status, body) = GatewayError::from(ErrorKind::ProcessingFailed {
        attempts: delivered,
    })
    .with_request(request_id)
    .problem();
    (status.as_u16(), body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn giving_up_is_a_problem_document() {
        let (status, body) = gave_up("r1", 6);
        assert_eq!(status, 500);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["type"], "urn:busgate:problem:processing-failed");
    }
}
