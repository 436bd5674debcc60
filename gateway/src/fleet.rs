//! The fleet: how many gateway instances are live, from their heartbeats on NATS, kept in
//! `crate::share` for the client limits that hold across the deployment.
//!
//! Every instance publishes `alive` on its own subject (`busgate.fleet.<instance>`) each
//! [`HEARTBEAT`], listens to everyone's (`busgate.fleet.*`), and counts the instances heard
//! within [`EXPIRY`] ([`Members`]). On shutdown it publishes `leaving`, so that the others take
//! over its share at once rather than after [`EXPIRY`]. Nothing of this is on the request path:
//! a request reads the count with one atomic load.
//!
//! When NATS is unreachable (this instance stops hearing its own heartbeat), nobody is
//! expired: the instance keeps the last count it knew, since it cannot tell a peer that died
//! from a peer it cannot hear. It starts at 1 (the whole limits) until it hears the others,
//! which takes one heartbeat.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use busgate_shared::drain;
use busgate_shared::subject;

use crate::metrics::Metrics;

/// How often an instance announces itself.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long an instance unheard counts as live: three heartbeats (a lost one or two, a busy
/// machine); also how long the others take to take over the share of one that died.
pub const EXPIRY: Duration = Duration::from_secs(3);
/// The most peers remembered: a publisher of forged heartbeats cannot grow the table beyond
/// it (and the NATS accounts let only gateways publish there).
const MAX_PEERS: usize = 1024;

/// The instances heard, and when: pure, so that expiry is tested with a paused clock.
#[derive(Debug)]
pub struct Members {
    /// This instance's id.
    me: String,
    /// Other instances and when each was last heard.
    peers: HashMap<String, Instant>,
    /// When this instance last heard its own heartbeat (NATS works), if ever.
    heard_self: Option<Instant>,
    /// The count last given out.
    count: u32,
}

impl Members {
    /// Only `me`, so far.
    pub fn new(me: &str) -> Self {
        Members {
            me: me.to_owned(),
            peers: HashMap::new(),
            heard_self: None,
            count: 1,
        }
    }

    /// A heartbeat of `instance` (`leaving`: its last) heard at `now`.
    pub fn heard(&mut self, instance: &str, leaving: bool, now: Instant) {
        if instance == self.me {
            self.heard_self = Some(now);
        } else if leaving {
            self.peers.remove(instance);
        } else if self.peers.len() < MAX_PEERS || self.peers.contains_key(instance) {
            self.peers.insert(instance.to_owned(), now);
        }
    }

    /// How many instances are live at `now`, this one included. While this instance does not
    /// hear itself (NATS unreachable for longer than [`EXPIRY`]), nobody expires.
    pub fn live(&mut self, now: Instant) -> u32 {
        let connected = self
            .heard_self
            .is_none_or(|at| now.duration_since(at) <= EXPIRY);
        if connected {
            self.peers.retain(|_, at| now.duration_since(*at) <= EXPIRY);
        }
        self.count = u32::try_from(self.peers.len() + 1).unwrap_or(u32::MAX);
        self.count
    }
}

/// Announces this instance and counts the others until `drain` is signalled; then says it is
/// leaving. The count goes to `crate::share` (the limits) and the `gateway_instances` gauge.
pub async fn run(
    nats: async_nats::Client,
    instance: String,
    metrics: std::sync::Arc<Metrics>,
    drain: drain::Watch,
) {
    let signaled = drain.signaled();
    tokio::pin!(signaled);
    // Subscribing only fails on a closed client; a lost connection resubscribes by itself.
    let mut heartbeats = match nats.subscribe(subject::FLEET_ALL).await {
        Ok(sub) => sub,
        Err(e) => {
            warn!(error = %e, "cannot hear the other gateway instances: client limits are this instance's alone");
            let _release = signaled.await;
            return;
        }
    };
    let own = subject::fleet_heartbeat(&instance);
    let mut members = Members::new(&instance);
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let release = loop {
        tokio::select! {
            release = &mut signaled => break release,
            _ = tick.tick() => {
                if let Err(e) = nats.publish(own.clone(), subject::FLEET_ALIVE.into()).await {
                    debug!(error = %e, "heartbeat not sent");
                }
                publish_count(&mut members, &metrics);
            }
            msg = heartbeats.next() => {
                let Some(msg) = msg else {
                    warn!("heartbeat subscription ended: client limits keep the last instance count");
                    break signaled.await;
                };
                if let Some(who) = subject::parse_fleet_heartbeat(&msg.subject) {
                    let leaving = msg.payload.as_ref() == subject::FLEET_LEAVING;
                    members.heard(who, leaving, Instant::now());
                    if leaving {
                        publish_count(&mut members, &metrics);
                    }
                }
            }
        }
    };
    // Bounded: a publish only queues into the client's buffer; the drain of the client
    // (after every background task) flushes it.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        nats.publish(own, subject::FLEET_LEAVING.into()),
    )
    .await;
    drop(release);
}

fn publish_count(members: &mut Members, metrics: &Metrics) {
    let before = crate::share::instances();
    let now = members.live(Instant::now());
    if now != before {
        info!(
            instances = now,
            "gateway instances sharing the client limits"
        );
        crate::share::set_instances(now);
    }
    metrics.gateway_instances.set(i64::from(now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peers_count_while_heard_and_expire_after_the_expiry() {
        let mut members = Members::new("me");
        assert_eq!(members.live(Instant::now()), 1);
        members.heard("me", false, Instant::now());
        members.heard("b", false, Instant::now());
        members.heard("c", false, Instant::now());
        assert_eq!(members.live(Instant::now()), 3);
        tokio::time::advance(Duration::from_secs(2)).await;
        members.heard("me", false, Instant::now());
        members.heard("b", false, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        members.heard("me", false, Instant::now());
        assert_eq!(members.live(Instant::now()), 2, "c expired, b not yet");
        members.heard("b", true, Instant::now());
        assert_eq!(members.live(Instant::now()), 1, "b left");
    }

    #[tokio::test(start_paused = true)]
    async fn without_nats_the_last_count_stays() {
        let mut members = Members::new("me");
        members.heard("me", false, Instant::now());
        members.heard("b", false, Instant::now());
        assert_eq!(members.live(Instant::now()), 2);
        // This instance hears nothing any more, itself included.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(members.live(Instant::now()), 2);
        // Back: b is heard again, or expires after the expiry like anyone.
        members.heard("me", false, Instant::now());
        assert_eq!(
            members.live(Instant::now()),
            1,
            "b has not been heard since"
        );
    }

    #[test]
    fn forged_heartbeats_cannot_grow_the_table_without_bound() {
        let mut members = Members::new("me");
        let now = Instant::now();
        for i in 0..5000 {
            members.heard(&format!("x{i}"), false, now);
        }
        assert_eq!(members.live(now) as usize, MAX_PEERS + 1);
    }
}
