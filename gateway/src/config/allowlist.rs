//! Hosts and networks that callbacks may reach although they are special addresses, and the
//! ports beyond 80 and 443 they may use (`callbacks.allow`): parsed and validated with the
//! settings, used by the SSRF guard.
//!
//! An entry is a host name, an address or a CIDR, with an optional port:
//!
//! | entry | allows |
//! |---|---|
//! | `hooks.internal` | that name (whatever it resolves to), any port |
//! | `hooks.internal:8443` | that name on port 8443 only |
//! | `10.0.0.5`, `::1` | that address, any port |
//! | `127.0.0.1:9000`, `[::1]:9000` | that address on port 9000 only (IPv6 in brackets) |
//! | `10.20.0.0/16` | that network, any port |
//! | `10.20.0.0/16:9000`, `[fd00::/8]:9000` | that network on port 9000 only |
//!
//! A public address that no entry covers may be called on 80 and 443 only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use busgate_shared::Error;

/// Hosts and networks callbacks may reach although they are special addresses.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    hosts: Vec<(String, Option<u16>)>,
    nets: Vec<(IpAddr, u8, Option<u16>)>,
}

impl Allowlist {
    /// Parses entries (see the module's table).
    pub fn parse(entries: &[String]) -> Result<Self, Error> {
        let mut list = Allowlist::default();
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("callbacks.allow[{i}]");
            let (target, port) = split_port(entry.trim())
                .ok_or_else(|| Error::invalid(&field, "bad port (1 to 65535)"))?;
            if let Some((ip, bits)) = target.split_once('/') {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| Error::invalid(&field, "not a CIDR"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits
                    .parse()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| Error::invalid(&field, "bad prefix length"))?;
                list.nets.push((ip, bits, port));
            } else if let Ok(ip) = target.parse::<IpAddr>() {
                list.nets
                    .push((ip, if ip.is_ipv4() { 32 } else { 128 }, port));
            } else if !target.is_empty()
                && target
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                list.hosts.push((target.to_ascii_lowercase(), port));
            } else {
                return Err(Error::invalid(
                    field,
                    "not a host, address or CIDR with an optional :port",
                ));
            }
        }
        Ok(list)
    }

    /// Loopback only: what `busgate up` allows so the local stack can be tried end to end.
    pub fn loopback() -> Self {
        Allowlist {
            hosts: vec![("localhost".into(), None)],
            nets: vec![
                (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8, None),
                (IpAddr::V6(Ipv6Addr::LOCALHOST), 128, None),
            ],
        }
    }

    /// Whether an entry names this host, on `port` (`None`: on some port).
    pub fn allows_host(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts
            .iter()
            .any(|(h, p)| *h == host && port_matches(*p, port))
    }

    /// Whether an entry covers this address, on `port` (`None`: on some port).
    pub fn allows_ip(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let ip = canonical(ip);
        self.nets
            .iter()
            .any(|(net, bits, p)| in_net(ip, canonical(*net), *bits) && port_matches(*p, port))
    }

    /// Whether any entry names `port`.
    pub fn names_port(&self, port: u16) -> bool {
        let named = |p: &Option<u16>| *p == Some(port);
        self.hosts.iter().any(|(_, p)| named(p)) || self.nets.iter().any(|(_, _, p)| named(p))
    }
}

/// An entry's own port (`None`: any) matches `wanted` (`None`: any port will do).
fn port_matches(own: Option<u16>, wanted: Option<u16>) -> bool {
    match (own, wanted) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => a == b,
    }
}

/// `target` and its port: `[v6 or v6/cidr]:port`, `[v6]`, `name:port`, `v4:port`,
/// `v4/cidr:port`; a bare IPv6 address or CIDR (several colons) has no port. `None`: a port
/// that is not 1 to 65535.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, tail) = rest.split_once(']')?;
        return match tail {
            "" => Some((inside, None)),
            _ => Some((inside, Some(parse(tail.strip_prefix(':')?)?))),
        };
    }
    match entry.split_once(':') {
        Some((target, port)) if !port.contains(':') => Some((target, Some(parse(port)?))),
        _ => Some((entry, None)),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect(s)
    }

    #[test]
    fn allowlists_parse_cidrs_addresses_and_hosts() {
        let list = Allowlist::parse(&["10.1.0.0/16".into(), "::1".into(), "Hooks.Internal".into()])
            .expect("parse");
        assert!(list.allows_ip(ip("10.1.2.3"), Some(8080)));
        assert!(!list.allows_ip(ip("10.2.0.1"), None));
        assert!(list.allows_ip(ip("::1"), Some(1)));
        assert!(list.allows_host("hooks.internal.", Some(8443)));
        assert!(!list.names_port(8443));
        assert!(Allowlist::parse(&["10.0.0.0/40".into()]).is_err());
        assert!(Allowlist::parse(&["a b".into()]).is_err());
    }

    #[test]
    fn entries_may_carry_a_port() {
        let list = Allowlist::parse(
            &[
                "hooks.internal:8443",
                "127.0.0.1:9000",
                "[::1]:9001",
                "10.0.0.0/8:9002",
                "[fd00::/8]:9003",
                "[fe80::1]",
                "fd12::/16",
            ]
            .map(String::from),
        )
        .expect("parse");
        assert!(list.allows_host("hooks.internal", Some(8443)));
        assert!(!list.allows_host("hooks.internal", Some(443)));
        assert!(list.allows_host("hooks.internal", None));
        assert!(list.allows_ip(ip("127.0.0.1"), Some(9000)));
        assert!(!list.allows_ip(ip("127.0.0.1"), Some(80)));
        assert!(list.allows_ip(ip("::1"), Some(9001)));
        assert!(!list.allows_ip(ip("::1"), Some(9000)));
        assert!(list.allows_ip(ip("10.9.9.9"), Some(9002)));
        assert!(list.allows_ip(ip("fd00::9"), Some(9003)));
        assert!(list.allows_ip(ip("fe80::1"), Some(1234)));
        assert!(list.allows_ip(ip("fd12::1"), Some(1234)));
        for port in [8443, 9000, 9001, 9002, 9003] {
            assert!(list.names_port(port), "{port}");
        }
        assert!(!list.names_port(22));
        for bad in [
            "h:0",
            "h:65536",
            "h:x",
            "127.0.0.1:",
            "[::1]:",
            "[::1",
            "[::1]x",
            "10.0.0.0/8:0",
        ] {
            assert!(Allowlist::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
