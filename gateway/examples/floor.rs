//! The floor of the architecture: the least an axum + async-nats scatter-gather can do for a
//! two-source merge. One wildcard inbox subscription, a `DashMap` of pending gathers, replies
//! concatenated as they came. No routes, validation, metrics, envelopes or merge rules.
//! With `FLOOR_HEADERS` set, each request carries the contract's four headers, as Busgate's do
//! (its `traceparent` unsampled, as Busgate starts traces by default).
//!
//! Measured against Busgate and nginx + Lua by `tests/perf/floor.sh`; not part of the product.
//!
//! ```text
//! NATS=nats://127.0.0.1:4222 LISTEN=127.0.0.1:18700 [FLOOR_HEADERS=1] \
//!     cargo run --release -p busgate-gateway --example floor
//! ```
//! then `GET /m/{order_id}` merges `busgate.svc.n1` and `busgate.svc.n2`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use axum::extract::{Path, State};
use axum::routing::get;
use busgate_shared::header;
use dashmap::DashMap;
use futures::StreamExt;
use tokio::sync::Notify;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SOURCES: [&str; 2] = ["n1", "n2"];

struct Inbox {
    replies: Mutex<Vec<Message>>,
    arrived: Notify,
}

struct Floor {
    nats: async_nats::Client,
    pending: DashMap<u64, Arc<Inbox>>,
    next: AtomicU64,
    headers: bool,
}

async fn merge(State(floor): State<Arc<Floor>>, Path(order_id): Path<String>) -> String {
    let id = floor.next.fetch_add(1, Ordering::Relaxed);
    let inbox = Arc::new(Inbox {
        replies: Mutex::new(Vec::new()),
        arrived: Notify::new(),
    });
    floor.pending.insert(id, inbox.clone());
    let payload = bytes::Bytes::from(format!(
        r#"{{"request_id":"r","order_id":"{order_id}","operation":"floor","attributes":{{}}}}"#
    ));
    for source in SOURCES {
        let subject = format!("busgate.svc.{source}");
        let reply = format!("_INBOX.floor.{id}.{source}");
        let sent = if floor.headers {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::name::request_id(),
                "01a201b2-6a4c-739c-a392-72111f957172",
            );
            headers.insert(header::name::deadline(), "4102444800000");
            headers.insert(header::name::client(), "anonymous");
            headers.insert(
                header::name::traceparent(),
                "00-01a201b26a4c739ca39272111f957172-a39272111f957172-00",
            );
            floor
                .nats
                .publish_with_reply_and_headers(subject, reply, headers, payload.clone())
                .await
        } else {
            floor
                .nats
                .publish_with_reply(subject, reply, payload.clone())
                .await
        };
        if sent.is_err() {
            break;
        }
    }
    let mut replies = Vec::with_capacity(SOURCES.len());
    let deadline = tokio::time::sleep(Duration::from_secs(2));
    tokio::pin!(deadline);
    while replies.len() < SOURCES.len() {
        let next = inbox.replies.lock().ok().and_then(|mut r| r.pop());
        if let Some(message) = next {
            replies.push(message);
            continue;
        }
        tokio::select! {
            _ = inbox.arrived.notified() => {}
            _ = &mut deadline => break,
        }
    }
    floor.pending.remove(&id);
    let mut out = String::from(r#"{"data":["#);
    for (i, message) in replies.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(std::str::from_utf8(&message.payload).unwrap_or("null"));
    }
    out.push_str("]}");
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("NATS")?;
    let listen = std::env::var("LISTEN")?;
    let nats = async_nats::connect(url).await?;
    let mut inbox = nats.subscribe("_INBOX.floor.>").await?;
    let floor = Arc::new(Floor {
        nats,
        pending: DashMap::new(),
        next: AtomicU64::new(1),
        headers: std::env::var_os("FLOOR_HEADERS").is_some(),
    });
    let routing = floor.clone();
    tokio::spawn(async move {
        while let Some(message) = inbox.next().await {
            let id = message
                .subject
                .split('.')
                .nth(2)
                .and_then(|s| s.parse().ok());
            if let Some(waiting) = id.and_then(|id: u64| routing.pending.get(&id)) {
                if let Ok(mut replies) = waiting.replies.lock() {
                    replies.push(message);
                }
                waiting.arrived.notify_one();
            }
        }
    });
    let app = axum::Router::new()
        .route("/m/{order_id}", get(merge))
        .with_state(floor);
    let listener = busgate_shared::runtime::listen(listen.parse()?)?;
    axum::serve(listener, app).await?;
    Ok(())
}
