//! Hosts and networks that callbacks may reach although they are special addresses
//! (`callbacks.allow`): parsed and validated with the settings, used by the SSRF guard.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use busgate_shared::Error;

/// Hosts and networks callbacks may reach although they are special addresses.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    hosts: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl Allowlist {
    /// Parses entries: a CIDR (`10.0.0.0/8`), an address (`::1`) or a host name.
    pub fn parse(entries: &[String]) -> Result<Self, Error> {
        let mut list = Allowlist::default();
        for (i, entry) in entries.iter().enumerate() {
            let entry = entry.trim();
            let field = format!("callbacks.allow[{i}]");
            if let Some((ip, bits)) = entry.split_once('/') {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| Error::invalid(&field, "not a CIDR"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits
                    .parse()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| Error::invalid(&field, "bad prefix length"))?;
                list.nets.push((ip, bits));
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                list.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            } else if !entry.is_empty()
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                list.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(Error::invalid(field, "not a host, address or CIDR"));
            }
        }
        Ok(list)
    }

    /// Loopback only: what `busgate up` allows so the local stack can be tried end to end.
    pub fn loopback() -> Self {
        Allowlist {
            hosts: vec!["localhost".into()],
            nets: vec![
                (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
                (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            ],
        }
    }

    /// Whether the allowlist names this host.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Whether the allowlist covers this address.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets
            .iter()
            .any(|(net, bits)| in_net(ip, canonical(*net), *bits))
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

    #[test]
    fn allowlists_parse_cidrs_addresses_and_hosts() {
        let list = Allowlist::parse(&["10.1.0.0/16".into(), "::1".into(), "Hooks.Internal".into()])
            .expect("parse");
        assert!(list.allows_ip("10.1.2.3".parse().expect("ip")));
        assert!(!list.allows_ip("10.2.0.1".parse().expect("ip")));
        assert!(list.allows_ip("::1".parse().expect("ip")));
        assert!(list.allows_host("hooks.internal."));
        assert!(Allowlist::parse(&["10.0.0.0/40".into()]).is_err());
        assert!(Allowlist::parse(&["a b".into()]).is_err());
    }
}
