//! Coalescing: the table of source requests in flight by key. The first request for a key
//! leads (it publishes); identical requests that come while it is in flight follow (they do
//! not publish, and get the leader's reply forwarded to their own gather).
//!
//! The table is a `DashMap` keyed by the 128-bit request key: a request that finds nobody in
//! flight costs one shard lock to insert itself and one to remove itself when its reply
//! lands, and allocates nothing (an empty follower list is not allocated).

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::time::Instant;

use crate::metrics::Name;

/// A follower: its gather, and the name its target has there (a reply is forwarded to it
/// under that name, so that an alias in another route finds its own target).
pub type Follower = (u64, Name);

/// The source requests in flight on this instance, by key.
#[derive(Debug, Default)]
pub struct Flights {
    table: DashMap<u128, Flight>,
}

#[derive(Debug)]
struct Flight {
    /// The leader's gather id.
    leader: u64,
    /// When the leader stops waiting: a flight found after it is taken over.
    until: Instant,
    /// The time the leader gave the source (its deadline sent to the service).
    budget: Duration,
    /// The gathers waiting on the leader's reply.
    followers: Vec<Follower>,
}

/// What [`Flights::join`] made of a request.
#[derive(Debug)]
pub enum Joined {
    /// Nobody was in flight: publish, and land the ticket when the reply comes.
    Lead(Ticket),
    /// Another gather is in flight for the same key: wait for its reply.
    Follow,
    /// Another gather is in flight for the same key, but it gives up before this one would:
    /// publish alone (a short-deadline leader never starves requests that can wait longer).
    Alone,
}

/// The leader's hold on its flight: landing it hands over the followers; dropping it
/// unlanded (the leader's gather ended first) removes the flight.
#[derive(Debug)]
pub struct Ticket {
    flights: Arc<Flights>,
    key: u128,
    leader: u64,
    until: Instant,
}

impl Flights {
    /// Joins the flight for `key` as gather `gather` (for its target named `source`), giving the
    /// source `budget` and waiting until `until`. A request follows only a flight whose leader
    /// gave the source at least as much time: a leader whose client cut its deadline
    /// (`Busgate-Timeout`) would leave followers without a reply (the service drops work past
    /// its deadline), so they publish alone.
    pub fn join(
        self: &Arc<Self>,
        key: u128,
        gather: u64,
        source: &Name,
        until: Instant,
        budget: Duration,
    ) -> Joined {
        match self.table.entry(key) {
            Entry::Occupied(mut flight) => {
                let flight = flight.get_mut();
                if flight.until > Instant::now() {
                    if flight.budget >= budget {
                        flight.followers.push((gather, source.clone()));
                        return Joined::Follow;
                    }
                    return Joined::Alone;
                }
                // The leader has given up (or is about to): this request takes over. Its old
                // followers keep waiting on their own deadlines.
                *flight = Flight {
                    leader: gather,
                    until,
                    budget,
                    followers: Vec::new(),
                };
            }
            Entry::Vacant(slot) => {
                slot.insert(Flight {
                    leader: gather,
                    until,
                    budget,
                    followers: Vec::new(),
                });
            }
        }
        Joined::Lead(Ticket {
            flights: self.clone(),
            key,
            leader: gather,
            until,
        })
    }

    /// Flights open right now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no flight is open.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    fn take(&self, key: u128, leader: u64) -> Vec<Follower> {
        self.table
            .remove_if(&key, |_, flight| flight.leader == leader)
            .map(|(_, flight)| flight.followers)
            .unwrap_or_default()
    }
}

impl Ticket {
    /// Until when the flight waits for its reply.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// Whether other gathers follow the flight.
    pub fn has_followers(&self) -> bool {
        self.flights
            .table
            .get(&self.key)
            .is_some_and(|f| f.leader == self.leader && !f.followers.is_empty())
    }

    /// The reply came: the flight ends, and these gathers get a copy of it.
    pub fn land(self) -> Vec<Follower> {
        let followers = self.flights.take(self.key, self.leader);
        // Taken: the drop below finds nothing more to remove.
        std::mem::forget(self);
        followers
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.flights.take(self.key, self.leader);
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn n() -> Name {
        Name(Arc::from("s"))
    }

    const MS500: Duration = Duration::from_millis(500);

    #[tokio::test(start_paused = true)]
    async fn a_leader_with_less_time_is_not_followed() {
        let flights = Arc::new(Flights::default());
        let until = Instant::now() + Duration::from_millis(5);
        let Joined::Lead(short) = flights.join(9, 1, &n(), until, Duration::from_millis(5)) else {
            panic!("the first leads");
        };
        let later = Instant::now() + MS500;
        assert!(matches!(
            flights.join(9, 2, &n(), later, MS500),
            Joined::Alone
        ));
        assert!(matches!(
            flights.join(9, 3, &n(), until, Duration::from_millis(5)),
            Joined::Follow
        ));
        assert_eq!(short.land(), vec![(3, n())]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_leads_the_rest_follow_and_landing_hands_them_over() {
        let flights = Arc::new(Flights::default());
        let until = Instant::now() + Duration::from_millis(500);
        let Joined::Lead(ticket) = flights.join(9, 1, &n(), until, MS500) else {
            panic!("the first leads");
        };
        assert!(matches!(
            flights.join(9, 2, &n(), until, MS500),
            Joined::Follow
        ));
        assert!(matches!(
            flights.join(9, 3, &n(), until, MS500),
            Joined::Follow
        ));
        assert!(matches!(
            flights.join(8, 4, &n(), until, MS500),
            Joined::Lead(_)
        ));
        assert_eq!(ticket.land(), vec![(2, n()), (3, n())]);
        assert!(flights.is_empty(), "both flights ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_gone_or_past_its_deadline_leaves_nothing_behind() {
        let flights = Arc::new(Flights::default());
        let until = Instant::now() + Duration::from_millis(100);
        let Joined::Lead(ticket) = flights.join(9, 1, &n(), until, MS500) else {
            panic!("the first leads");
        };
        drop(ticket);
        assert!(flights.is_empty());
        let Joined::Lead(old) = flights.join(9, 1, &n(), until, MS500) else {
            panic!("leads again");
        };
        tokio::time::advance(Duration::from_millis(100)).await;
        let later = Instant::now() + Duration::from_millis(100);
        let Joined::Lead(new) = flights.join(9, 2, &n(), later, MS500) else {
            panic!("a flight past its deadline is taken over");
        };
        drop(old);
        assert_eq!(
            flights.len(),
            1,
            "the old leader's drop leaves the new flight"
        );
        assert!(new.land().is_empty());
    }
}
