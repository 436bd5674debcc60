//! The anonymous client's limits per client address (`[auth.anonymous]`, with
//! `auth.mode = "none"`): each address (IPv4 whole, IPv6 by its /64, the real client's as the
//! edge resolves it) is its own anonymous client, with the configured `rate`, `max_pending` and
//! `max_streams`, so that one abuser cannot spend everyone's allowance. The rate and the
//! pending cap are shared among the live instances like a configured client's
//! (`crate::share`).
//!
//! A request whose address is a trusted proxy (one that named no client) has no address to be
//! counted by, and is not held to these limits: one allowance for all of them would be
//! everyone's again.
//!
//! The table holds at most [`MAX_ADDRESSES`] addresses. When a new address finds it full, the
//! idle entries (nothing pending, no stream open, the rate back at its full burst) are dropped;
//! if that frees fewer than an eighth of it, the oldest-made entries are dropped too, so that a
//! flood of new addresses costs one sweep per [`MAX_ADDRESSES`] / 8 of them. An address
//! dropped while busy starts again with fresh limits (what it held is still held; only the
//! count is forgotten): memory stays bounded whatever an attacker's address count.
//!
//! Not configured, nothing here is made: the anonymous caller has no limits and no table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use busgate_shared::config::RateSpec;

use crate::config::clients::Client;
use crate::config::settings::AnonymousSettings;

/// Addresses the table holds at most.
pub const MAX_ADDRESSES: usize = 4096;

/// The limits of one address and the table of addresses.
#[derive(Debug)]
pub struct Anonymous {
    rate: Option<RateSpec>,
    max_pending: Option<usize>,
    max_streams: Option<usize>,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_address: HashMap<u128, (u64, Arc<Client>)>,
    /// Entries made so far: the age of an entry.
    made: u64,
}

impl Anonymous {
    /// Per-address limits; `None` when none is set.
    pub fn new(
        rate: Option<RateSpec>,
        max_pending: Option<usize>,
        max_streams: Option<usize>,
    ) -> Option<Self> {
        (rate.is_some() || max_pending.is_some() || max_streams.is_some()).then(|| Anonymous {
            rate,
            max_pending,
            max_streams,
            table: Mutex::new(Table::default()),
        })
    }

    /// The table `[auth.anonymous]` needs, if any.
    pub fn from_settings(settings: &AnonymousSettings) -> Option<Self> {
        Anonymous::new(
            settings.rate,
            settings.max_pending.map(|n| n as usize),
            settings.max_streams.map(|n| n as usize),
        )
    }

    /// The anonymous client of `address`. (A request without an address limits count is
    /// not held to any: [`super::Authenticator`] does not ask.)
    pub fn client(&self, address: IpAddr) -> Arc<Client> {
        let key = super::throttle::key(address);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, client)) = table.by_address.get(&key) {
            return client.clone();
        }
        if table.by_address.len() >= MAX_ADDRESSES {
            table.sweep();
        }
        let client = Arc::new(Client::anonymous(
            self.rate,
            self.max_pending,
            self.max_streams,
        ));
        table.made += 1;
        let made = table.made;
        table.by_address.insert(key, (made, client.clone()));
        client
    }

    /// Addresses in the table.
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_address
            .len()
    }
}

impl Table {
    /// Drops the idle entries, and the oldest ones until an eighth of the table is free.
    fn sweep(&mut self) {
        self.by_address
            .retain(|_, (_, client)| Arc::strong_count(client) > 1 || !client.idle());
        let free = MAX_ADDRESSES / 8;
        let over = (self.by_address.len() + free).saturating_sub(MAX_ADDRESSES);
        if over == 0 {
            return;
        }
        let mut ages: Vec<u64> = self.by_address.values().map(|(made, _)| *made).collect();
        ages.select_nth_unstable(over - 1);
        let cut = ages[over - 1];
        self.by_address.retain(|_, (made, _)| *made > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn nothing_set_is_no_table() {
        assert!(Anonymous::new(None, None, None).is_none());
    }

    /// Each address has its own limiter and usage; an IPv6 /64 is one address.
    #[test]
    fn each_address_is_its_own_client() {
        let rate = RateSpec {
            per_second: 1,
            burst: Some(2),
        };
        let anonymous = Anonymous::new(Some(rate), Some(3), None).expect("on");
        let a = anonymous.client(ip(1));
        let limiter = |c: &Arc<Client>| c.limiter.clone().expect("limiter");
        assert!(limiter(&a).check().is_ok());
        assert!(limiter(&a).check().is_ok());
        assert!(limiter(&a).check().is_err(), "a's burst is spent");
        let again = anonymous.client(ip(1));
        assert!(
            limiter(&again).check().is_err(),
            "the same address, the same limiter"
        );
        assert!(limiter(&anonymous.client(ip(2))).check().is_ok());
        assert!(a.name.0.is_empty(), "anonymous");
        let v6 = |s: &str| s.parse::<IpAddr>().expect("ip");
        let x = anonymous.client(v6("2001:db8::1"));
        let y = anonymous.client(v6("2001:db8::2"));
        assert!(Arc::ptr_eq(&x, &y));
    }

    /// A flood of addresses leaves the table at its cap; a busy address survives a sweep that
    /// idle ones are enough for.
    #[test]
    fn the_table_is_bounded() {
        let anonymous = Anonymous::new(None, Some(1), None).expect("on");
        let busy = anonymous.client(ip(7));
        let held = busy.usage.pending.try_hold(Some(1)).expect("one");
        drop(busy);
        for n in 1000..1000 + 3 * MAX_ADDRESSES as u32 {
            let _ = anonymous.client(ip(n));
            assert!(anonymous.tracked() <= MAX_ADDRESSES);
        }
        let busy = anonymous.client(ip(7));
        assert!(
            busy.usage.pending.try_hold(Some(1)).is_none(),
            "the busy address kept its count"
        );
        drop(held);
    }
}
