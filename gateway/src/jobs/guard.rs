//! The SSRF guard of callbacks. A callback URL whose host is, or resolves to, a loopback,
//! private, link-local, CGNAT, metadata or otherwise special address is refused at submit,
//! unless the allowlist names it; at delivery the HTTP client resolves through the same guard,
//! so the connection goes only to an address that passed the check.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::allowlist::Allowlist;

/// Whether a callback must not reach `ip`: loopback, private, link-local (cloud metadata at
/// 169.254.169.254 included), CGNAT, unspecified, broadcast, multicast, documentation,
/// benchmarking and reserved ranges, and IPv6 forms that embed such an IPv4 address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let s = v6.segments();
            let embedded =
                Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 metadata included)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && forbidden_v4(embedded)) // NAT64
                || (s[0] == 0x2002 && forbidden_v4(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8)))
            // 6to4
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking
        || a >= 240 // reserved
}

/// The SSRF guard: checks URLs at submit, and resolves names at delivery.
#[derive(Debug, Clone)]
pub struct Guard {
    allow: Arc<Allowlist>,
}

impl Guard {
    /// A guard with this allowlist.
    pub fn new(allow: Allowlist) -> Self {
        Guard {
            allow: Arc::new(allow),
        }
    }

    /// Checks a callback URL; the error says why it is refused.
    pub async fn check(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("only http and https callbacks are allowed".into());
        }
        if url.len() > 2048 {
            return Err("longer than 2048 characters".into());
        }
        match parsed.host() {
            None => Err("has no host".into()),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                self.resolve_checked(name).await?;
                Ok(())
            }
        }
        .map(|()| parsed)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if is_forbidden(ip) && !self.allow.allows_ip(ip) {
            Err(format!("{ip} is not a public address"))
        } else {
            Ok(())
        }
    }

    /// Resolves `name` and keeps only the addresses a callback may reach.
    async fn resolve_checked(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        let lookup =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host((name, 0)));
        let addrs: Vec<SocketAddr> = match lookup.await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(format!("cannot resolve {name}: {e}")),
            Err(_) => return Err(format!("resolving {name} timed out")),
        };
        if addrs.is_empty() {
            return Err(format!("{name} resolves to no address"));
        }
        if self.allow.allows_host(name) {
            return Ok(addrs);
        }
        // Every address must pass: a name that also resolves to a private address is refused,
        // so that no later resolution can pick that one.
        for addr in &addrs {
            self.check_ip(addr.ip())
                .map_err(|reason| format!("{name} resolves to {}: {reason}", addr.ip()))?;
        }
        Ok(addrs)
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let addrs = guard
                .resolve_checked(name.as_str())
                .await
                .map_err(|reason| -> Box<dyn std::error::Error + Send + Sync> { reason.into() })?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for deliveries: no redirects, resolution through the guard.
pub fn http_client(guard: &Guard, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(guard.clone()))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("busgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Guard {
    /// Checks the host of a URL when it is an IP literal; names are checked when resolved.
    pub fn check_literal(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:10.1.1.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(
                is_forbidden(ip.parse().expect(ip)),
                "{ip} must be forbidden"
            );
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_forbidden(ip.parse().expect(ip)), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_in_every_spelling() {
        let guard = Guard::new(Allowlist::default());
        for url in [
            "http://127.0.0.1/x",
            "http://127.1/x",
            "http://0x7f000001/x",
            "http://2130706433/x",
            "http://[::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/x",
            "http://localhost:9/x",
            "ftp://example.com/x",
            "not a url",
        ] {
            assert!(guard.check(url).await.is_err(), "{url} must be refused");
        }
        let allowed = Guard::new(Allowlist::loopback());
        assert!(allowed.check("http://127.0.0.1:9/x").await.is_ok());
        assert!(allowed.check("http://localhost:9/x").await.is_ok());
        assert!(allowed.check("http://10.0.0.1/x").await.is_err());
    }
}
