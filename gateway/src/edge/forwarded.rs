//! The real client address: the peer of the connection, unless the peer is one of
//! `http.trusted_proxies`; then what the proxy says in the one header `http.client_header`
//! names: `X-Forwarded-For` (the default) or `Forwarded` (RFC 7239).
//!
//! One header, never "`Forwarded` if there is one": a proxy appends to the header it writes and
//! passes the other through as the client sent it, so reading the other would let any client
//! name itself (and move its failed-credential count or its anonymous limits to any address,
//! a victim's included).
//!
//! Both headers are lists that every proxy on the way appends to, so the rightmost entries are
//! the ones trusted proxies wrote. The client is the rightmost address that is not itself a
//! trusted proxy (what nginx's `real_ip_recursive` does): an address a client wrote further left
//! is never taken while a trusted hop stands between. An entry that is not an address
//! (`unknown`, an obfuscated `_name`) stops the walk at the last trusted address. From a peer
//! that is not trusted, neither header is read.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

pub use crate::config::settings::ClientHeader;

/// The networks whose peers may name the client, and the header they name it in.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ClientHeader,
}

impl TrustedProxies {
    /// Trusts peers in `nets` (none: the peer is always the client), reading
    /// `X-Forwarded-For`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies {
            nets,
            header: ClientHeader::default(),
        }
    }

    /// The same, reading `header` (and only it) from a trusted peer.
    pub fn reading(mut self, header: ClientHeader) -> Self {
        self.header = header;
        self
    }

    /// Whether `ip` is a trusted proxy (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The address limits count `address` (a resolved client) under: itself, or `None` when it
    /// is a trusted proxy (one that named no client, e.g. a TCP pass-through without a PROXY
    /// header): counting the proxy would hold every client behind it to one allowance, and let
    /// one client's failed keys lock all of them out.
    pub fn limited(&self, address: IpAddr) -> Option<IpAddr> {
        (!self.trusts(address)).then_some(address)
    }

    /// Whether any proxy is trusted.
    pub fn any(&self) -> bool {
        !self.nets.is_empty()
    }

    /// The client of a request that came from `peer` with `headers`. Read from the right, so
    /// nothing is collected: no allocation.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer.to_canonical();
        }
        if self.header == ClientHeader::Forwarded {
            let entries = headers
                .get_all(axum::http::header::FORWARDED)
                .iter()
                .rev()
                .flat_map(|v| entries(v.as_bytes()))
                .map(|e| e.and_then(forwarded_for));
            return self.walk(peer, entries);
        }
        let entries = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|v| entries(v.as_bytes()))
            .map(|e| e.and_then(address));
        self.walk(peer, entries)
    }

    /// From the right: the first address that is not trusted.
    fn walk(&self, peer: IpAddr, entries: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut client = peer.to_canonical();
        for entry in entries {
            let Some(ip) = entry else {
                return client;
            };
            client = ip.to_canonical();
            if !self.trusts(client) {
                return client;
            }
        }
        client
    }
}

/// The entries of one line of a list header, from the right; `None` for one that is not
/// text. Split as bytes: a line the proxy made of the client's value and its own entry
/// (nginx's `$proxy_add_x_forwarded_for`) may hold the client's bytes that are not visible
/// ASCII, and skipping the whole line would skip the proxy's entry too.
fn entries(line: &[u8]) -> impl Iterator<Item = Option<&str>> {
    line.rsplit(|&b| b == b',')
        .map(|entry| std::str::from_utf8(entry).ok())
}

/// The `for=` of one `Forwarded` element (`for=192.0.2.1;proto=https`), `None` when it has
/// none or it is not an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        address(value.trim().trim_matches('"'))
    })
}

/// An address, with or without a port, IPv6 bracketed or not.
fn address(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = value.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    // `[2001:db8::1]` without a port.
    value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("value"));
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().expect("net"),
            "2001:db8::/32".parse().expect("net"),
        ])
    }

    /// From a peer that is not trusted, the headers are ignored.
    #[test]
    fn an_untrusted_peer_is_the_client() {
        let spoof = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(
            trusted().client(ip("198.51.100.9"), &spoof),
            ip("198.51.100.9")
        );
        assert_eq!(
            TrustedProxies::default().client(ip("10.1.1.1"), &spoof),
            ip("10.1.1.1")
        );
    }

    /// From a trusted peer, the rightmost untrusted entry of `X-Forwarded-For`: what a client
    /// prepended to the list is not taken.
    #[test]
    fn a_trusted_peer_names_the_client() {
        let t = trusted();
        let peer = ip("10.0.0.5");
        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (&[("x-forwarded-for", "203.0.113.1")], "203.0.113.1"),
            (
                &[("x-forwarded-for", "6.6.6.6, 203.0.113.1, 10.0.0.9")],
                "203.0.113.1",
            ),
            (
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "203.0.113.2"),
                ],
                "203.0.113.2",
            ),
            (&[("x-forwarded-for", "garbage")], "10.0.0.5"),
            (&[("x-forwarded-for", "203.0.113.3:5555")], "203.0.113.3"),
            (&[], "10.0.0.5"),
        ];
        for (pairs, want) in cases {
            assert_eq!(t.client(peer, &headers(pairs)), ip(want), "{pairs:?}");
        }
    }

    /// A proxy that appends to `X-Forwarded-For` passes a `Forwarded` header through as the
    /// client wrote it: it names nobody, whether it names a victim, a trusted address or
    /// `unknown` (which would make the proxy the client: no limits at all).
    #[test]
    fn a_clients_own_forwarded_header_is_not_taken() {
        let t = trusted();
        let peer = ip("10.0.0.5");
        for spoof in [
            "for=198.51.100.77",
            "for=10.0.0.1",
            "for=unknown",
            "for=_hidden",
        ] {
            let pairs = [("forwarded", spoof), ("x-forwarded-for", "203.0.113.1")];
            assert_eq!(
                t.client(peer, &headers(&pairs)),
                ip("203.0.113.1"),
                "{spoof}"
            );
        }
    }

    /// A proxy that merges the client's own `X-Forwarded-For` with what it appends (nginx's
    /// `$proxy_add_x_forwarded_for`) makes one line of both: bytes that are not visible ASCII
    /// on the client's side do not hide the proxy's entry (which would make the proxy the
    /// client, counted by no limit).
    #[test]
    fn a_clients_bad_bytes_do_not_hide_the_proxys_entry() {
        let peer = ip("10.0.0.5");
        let merged = |value: &[u8]| {
            let mut map = HeaderMap::new();
            let value = axum::http::HeaderValue::from_bytes(value).expect("obs-text is a value");
            map.append(X_FORWARDED_FOR, value);
            map
        };
        let t = trusted();
        assert_eq!(
            t.client(peer, &merged(b"\xff\xfe, 203.0.113.1")),
            ip("203.0.113.1")
        );
        assert_eq!(
            t.client(peer, &merged(b"1.2.3.4\xff, 10.0.0.9, 203.0.113.1")),
            ip("203.0.113.1")
        );
        // Past the proxy's entry, a bad entry stops the walk as any non-address does.
        assert_eq!(t.client(peer, &merged(b"\xff, 10.0.0.9")), ip("10.0.0.9"));
        let f = |value: &[u8]| {
            let mut map = HeaderMap::new();
            let value = axum::http::HeaderValue::from_bytes(value).expect("obs-text is a value");
            map.append(axum::http::header::FORWARDED, value);
            map
        };
        assert_eq!(
            t.clone()
                .reading(ClientHeader::Forwarded)
                .client(peer, &f(b"for=\"\xff\", for=203.0.113.1")),
            ip("203.0.113.1")
        );
    }

    /// With `client_header = "forwarded"`, `Forwarded` alone is read, from the right, and a
    /// client's own `X-Forwarded-For` names nobody.
    #[test]
    fn a_proxy_writing_forwarded_names_the_client() {
        let t = trusted().reading(ClientHeader::Forwarded);
        let peer = ip("10.0.0.5");
        let cases: &[(&[(&'static str, &str)], &str)] = &[
            (
                &[(
                    "forwarded",
                    "for=\"[2001:db9::1]:4711\";proto=https, for=10.0.0.7",
                )],
                "2001:db9::1",
            ),
            (
                &[
                    ("forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),
                    ("x-forwarded-for", "6.6.6.6"),
                ],
                "192.0.2.60",
            ),
            (&[("forwarded", "for=unknown, for=10.0.0.8")], "10.0.0.8"),
            (&[("x-forwarded-for", "6.6.6.6")], "10.0.0.5"),
        ];
        for (pairs, want) in cases {
            assert_eq!(t.client(peer, &headers(pairs)), ip(want), "{pairs:?}");
        }
    }

    /// A trusted proxy that named no client is not an address limits count.
    #[test]
    fn a_proxy_is_not_limited_as_a_client() {
        let t = trusted();
        assert_eq!(t.limited(ip("10.0.0.5")), None);
        assert_eq!(t.limited(ip("203.0.113.1")), Some(ip("203.0.113.1")));
    }

    /// An IPv4 peer seen on an IPv6 socket is matched as IPv4.
    #[test]
    fn mapped_addresses_are_matched_as_ipv4() {
        let t = trusted();
        assert!(t.trusts(ip("::ffff:10.0.0.1")));
        assert_eq!(
            t.client(
                ip("::ffff:10.0.0.1"),
                &headers(&[("x-forwarded-for", "203.0.113.1")])
            ),
            ip("203.0.113.1")
        );
    }
}
