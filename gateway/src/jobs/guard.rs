//! The SSRF guard of callbacks. A callback URL is refused at submit, and again before every
//! delivery attempt, unless
//!
//! - its port is 80 or 443, or an allowlist entry for its host names that port, and
//! - its host is, or resolves only to, addresses outside every special-purpose range
//!   ([`is_forbidden`]), or an allowlist entry covers it.
//!
//! At delivery the HTTP client resolves through the same guard, so the connection goes only to
//! an address that passed the check (a name cannot re-resolve to another one in between), and
//! it ignores proxy environment variables (a proxy would make the connection for it).
//!
//! A refusal tells the client a class only ("refused: host not allowed"), never what a name
//! resolved to or whether it resolved at all: that would make the gateway an oracle for
//! internal DNS. The detail goes to the log with the request id.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::allowlist::Allowlist;
use crate::error::{Refusal, RefusalClass};

/// Ports a callback may use without an allowlist entry that names its port.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// The IANA IPv4 Special-Purpose Address Registry, every entry (the globally reachable
/// anycast ones too: no webhook receiver lives there), plus multicast; `(network, bits)`.
const SPECIAL_V4: &[([u8; 4], u8)] = &[
    // "this network", RFC 791 (0.0.0.0/32: RFC 1122)
    ([0, 0, 0, 0], 8),
    // private use, RFC 1918
    ([10, 0, 0, 0], 8),
    // shared address space (CGNAT), RFC 6598
    ([100, 64, 0, 0], 10),
    // loopback, RFC 1122
    ([127, 0, 0, 0], 8),
    // link-local (cloud metadata 169.254.169.254), RFC 3927
    ([169, 254, 0, 0], 16),
    // private use, RFC 1918
    ([172, 16, 0, 0], 12),
    // IETF protocol assignments, RFC 6890: DS-Lite 192.0.0.0/29 (RFC 7335), PCP and TURN
    // anycast (RFC 7723, RFC 8155), NAT64 discovery 192.0.0.170/31 (RFC 7050)
    ([192, 0, 0, 0], 24),
    // documentation TEST-NET-1, RFC 5737
    ([192, 0, 2, 0], 24),
    // AS112-v4, RFC 7535
    ([192, 31, 196, 0], 24),
    // AMT, RFC 7450
    ([192, 52, 193, 0], 24),
    // deprecated 6to4 relay anycast, RFC 7526
    ([192, 88, 99, 0], 24),
    // private use, RFC 1918
    ([192, 168, 0, 0], 16),
    // direct delegation AS112 service, RFC 7534
    ([192, 175, 48, 0], 24),
    // benchmarking, RFC 2544
    ([198, 18, 0, 0], 15),
    // documentation TEST-NET-2, RFC 5737
    ([198, 51, 100, 0], 24),
    // documentation TEST-NET-3, RFC 5737
    ([203, 0, 113, 0], 24),
    // multicast, RFC 5771 (not in the registry, never a receiver)
    ([224, 0, 0, 0], 4),
    // reserved, RFC 1112 (255.255.255.255/32 limited broadcast: RFC 8190)
    ([240, 0, 0, 0], 4),
];

/// The IANA IPv6 Special-Purpose Address Registry, plus multicast and the deprecated ranges;
/// `(network, bits)`. IPv4-mapped (`::ffff:0:0/96`, RFC 4291), the NAT64 well-known prefix
/// (`64:ff9b::/96`, RFC 6052) and 6to4 (`2002::/16`, RFC 3056) embed an IPv4 address: they are
/// judged by it ([`embedded_v4`]).
const SPECIAL_V6: &[(u128, u8)] = &[
    // unspecified ::/128, RFC 4291
    (0, 128),
    // loopback ::1/128, RFC 4291
    (1, 128),
    // IPv4-compatible ::/96, deprecated, RFC 4291
    (0, 96),
    // NAT64 local-use 64:ff9b:1::/48, RFC 8215
    (0x0064_ff9b_0001_u128 << 80, 48),
    // discard-only 100::/64, RFC 6666
    (0x0100_u128 << 112, 64),
    // dummy prefix 100:0:0:1::/64, RFC 9780
    ((0x0100_u128 << 112) | (1_u128 << 64), 64),
    // IETF protocol assignments 2001::/23, RFC 2928: Teredo 2001::/32 (RFC 4380), PCP, TURN
    // and DNS-SD anycast 2001:1::1-3 (RFC 7723, RFC 8155, RFC 9665), benchmarking 2001:2::/48
    // (RFC 5180), AMT 2001:3::/32 (RFC 7450), AS112-v6 2001:4:112::/48 (RFC 7535), ORCHIDv2
    // 2001:20::/28 (RFC 7343), drone remote ID 2001:30::/28 (RFC 9374)
    (0x2001_u128 << 112, 23),
    // documentation 2001:db8::/32, RFC 3849
    (0x2001_0db8_u128 << 96, 32),
    // direct delegation AS112 service 2620:4f:8000::/48, RFC 7534
    (0x2620_004f_8000_u128 << 80, 48),
    // documentation 3fff::/20, RFC 9637
    (0x3fff_u128 << 112, 20),
    // segment routing (SRv6) SIDs 5f00::/16, RFC 9602
    (0x5f00_u128 << 112, 16),
    // unique local fc00::/7, RFC 4193 (fd00:ec2::254 metadata)
    (0xfc00_u128 << 112, 7),
    // link-local unicast fe80::/10, RFC 4291
    (0xfe80_u128 << 112, 10),
    // site-local fec0::/10, deprecated, RFC 3879
    (0xfec0_u128 << 112, 10),
    // multicast ff00::/8, RFC 4291
    (0xff00_u128 << 112, 8),
];

/// Whether a callback must not reach `ip` (unless the allowlist covers it): any address of
/// the IANA special-purpose registries (`SPECIAL_V4`, `SPECIAL_V6`), multicast, and IPv6
/// forms that embed such an IPv4 address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return forbidden_v4(v4);
            }
            let bits = u128::from(v6);
            SPECIAL_V6
                .iter()
                .any(|(net, len)| prefix_matches_v6(bits, *net, *len))
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    SPECIAL_V4
        .iter()
        .any(|(net, len)| prefix_matches_v4(bits, u32::from_be_bytes(*net), *len))
}

fn prefix_matches_v4(ip: u32, net: u32, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    ip & mask == net & mask
}

fn prefix_matches_v6(ip: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    ip & mask == net & mask
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::/48`.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let bits = u128::from(v6);
    if prefix_matches_v6(bits, 0x0064_ff9b_u128 << 96, 96) {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if prefix_matches_v6(bits, 0x2002_u128 << 112, 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// The SSRF guard: checks URLs at submit and before each attempt, and resolves names at
/// delivery.
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

    /// Checks a callback URL: scheme, length, port and every address of its host.
    pub async fn check(&self, url: &str) -> Result<reqwest::Url, Refusal> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Refusal::new(RefusalClass::NotUrl, e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Refusal::new(RefusalClass::Scheme, parsed.scheme()));
        }
        if url.len() > 2048 {
            return Err(Refusal::new(RefusalClass::TooLong, url.len().to_string()));
        }
        let port = parsed.port_or_known_default().unwrap_or(0);
        match parsed.host() {
            None => Err(Refusal::new(RefusalClass::NoHost, "")),
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), port),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), port),
            Some(url::Host::Domain(name)) => self.check_name(name, port).await,
        }
        .map(|()| parsed)
    }

    fn check_ip(&self, ip: IpAddr, port: u16) -> Result<(), Refusal> {
        if self.allow.allows_ip(ip, Some(port)) {
            return Ok(());
        }
        if is_forbidden(ip) {
            return Err(Refusal::new(
                RefusalClass::Address,
                format!("{ip} is a special-purpose address"),
            ));
        }
        if !DEFAULT_PORTS.contains(&port) {
            return Err(Refusal::new(RefusalClass::Port, format!("port {port}")));
        }
        Ok(())
    }

    async fn check_name(&self, name: &str, port: u16) -> Result<(), Refusal> {
        if self.allow.allows_host(name, Some(port)) {
            return Ok(());
        }
        // Before any lookup: a refused port says nothing about the name.
        if !DEFAULT_PORTS.contains(&port) && !self.allow.names_port(port) {
            return Err(Refusal::new(RefusalClass::Port, format!("port {port}")));
        }
        let addrs = self.resolve_checked(name).await?;
        // Every address must allow the port: an entry that covers it (with this port, or with
        // none), or a public address on 80 or 443.
        for addr in &addrs {
            let ip = addr.ip();
            if self.allow.allows_ip(ip, Some(port)) {
                continue;
            }
            let detail = format!("port {port} of {name} ({ip})");
            if is_forbidden(ip) {
                // Allowlisted on another port: the same words as any other refused name.
                return Err(Refusal::new(RefusalClass::Host, detail));
            }
            if !DEFAULT_PORTS.contains(&port) {
                return Err(Refusal::new(RefusalClass::Port, detail));
            }
        }
        Ok(())
    }

    /// Resolves `name` and keeps only the addresses a callback may reach (on some port: the
    /// port is checked on the URL, before the client resolves).
    async fn resolve_checked(&self, name: &str) -> Result<Vec<SocketAddr>, Refusal> {
        // Whatever goes wrong with a name, the client hears the same class: whether it
        // resolves, and to what, is none of its business.
        let refused = |detail: String| Refusal::new(RefusalClass::Host, detail);
        let lookup =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host((name, 0)));
        let addrs: Vec<SocketAddr> = match lookup.await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(refused(format!("cannot resolve {name}: {e}"))),
            Err(_) => return Err(refused(format!("resolving {name} timed out"))),
        };
        if addrs.is_empty() {
            return Err(refused(format!("{name} resolves to no address")));
        }
        if self.allow.allows_host(name, None) {
            return Ok(addrs);
        }
        // Every address must pass: a name that also resolves to a private address is refused,
        // so that no later resolution can pick that one.
        for addr in &addrs {
            if is_forbidden(addr.ip()) && !self.allow.allows_ip(addr.ip(), None) {
                return Err(refused(format!("{name} resolves to {}", addr.ip())));
            }
        }
        Ok(addrs)
    }
}

impl Resolve for Guard {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let addrs = guard.resolve_checked(name.as_str()).await.map_err(
                |refusal| -> Box<dyn std::error::Error + Send + Sync> {
                    refusal.to_string().into()
                },
            )?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The HTTP client for deliveries: no redirects, no proxy (whatever `HTTP_PROXY`,
/// `HTTPS_PROXY` or `ALL_PROXY` say: a proxy would resolve and connect past the guard),
/// resolution through the guard.
pub fn http_client(guard: &Guard, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(guard.clone()))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("busgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One address inside every range of [`SPECIAL_V4`] and [`SPECIAL_V6`], and the
    /// embedded forms, written out independently of the tables.
    #[test]
    fn every_special_purpose_range_is_forbidden() {
        let forbidden = [
            // IPv4 registry
            "0.0.0.0",
            "0.1.2.3",         // this network 0/8, RFC 791
            "10.0.0.1",        // RFC 1918
            "100.64.0.1",      // CGNAT, RFC 6598
            "100.127.255.254", // CGNAT end
            "127.0.0.1",       // loopback
            "127.1.2.3",       // loopback
            "169.254.169.254", // link-local, metadata
            "172.16.5.4",      // RFC 1918
            "172.31.255.255",  // RFC 1918 end
            "192.0.0.9",       // PCP anycast, RFC 7723
            "192.0.0.170",     // NAT64 discovery, RFC 7050
            "192.0.2.1",       // TEST-NET-1
            "192.31.196.1",    // AS112-v4
            "192.52.193.1",    // AMT
            "192.88.99.1",     // 6to4 relay anycast
            "192.168.1.1",     // RFC 1918
            "192.175.48.1",    // AS112 direct delegation
            "198.18.0.1",      // benchmarking
            "198.19.255.255",  // benchmarking end
            "198.51.100.7",    // TEST-NET-2
            "203.0.113.9",     // TEST-NET-3
            "224.0.0.1",       // multicast
            "239.255.255.250", // multicast
            "240.0.0.1",       // reserved
            "255.255.255.255", // limited broadcast
            // IPv6 registry
            "::",                      // unspecified
            "::1",                     // loopback
            "::127.0.0.1",             // IPv4-compatible
            "::8.8.8.8",               // IPv4-compatible, deprecated whatever it embeds
            "::ffff:127.0.0.1",        // IPv4-mapped loopback
            "::ffff:10.1.1.1",         // IPv4-mapped private
            "64:ff9b::7f00:1",         // NAT64 of 127.0.0.1
            "64:ff9b::a00:1",          // NAT64 of 10.0.0.1
            "64:ff9b:1::1",            // NAT64 local-use, RFC 8215
            "64:ff9b:1:ffff::8.8.8.8", // NAT64 local-use, whatever it embeds
            "100::1",                  // discard-only, RFC 6666
            "100:0:0:1::1",            // dummy prefix, RFC 9780
            "2001::1",                 // Teredo, RFC 4380
            "2001:0:4136:e378::1",     // Teredo
            "2001:1::1",               // PCP anycast
            "2001:2::1",               // benchmarking
            "2001:3::1",               // AMT
            "2001:4:112::1",           // AS112-v6
            "2001:20::1",              // ORCHIDv2
            "2001:30::1",              // drone remote ID
            "2001:1ff::1",             // end of 2001::/23
            "2001:db8::1",             // documentation
            "2002:7f00:1::",           // 6to4 of 127.0.0.1
            "2002:a00:1::1",           // 6to4 of 10.0.0.1
            "2620:4f:8000::1",         // AS112 direct delegation
            "3fff::1",                 // documentation, RFC 9637
            "3fff:fff::1",             // documentation end
            "5f00::1",                 // SRv6 SIDs
            "fc00::1",                 // unique local
            "fd00:ec2::254",           // unique local, metadata
            "fe80::1",                 // link-local
            "febf::1",                 // link-local end
            "fec0::1",                 // site-local
            "ff02::1",                 // multicast
        ];
        for ip in forbidden {
            assert!(
                is_forbidden(ip.parse().expect(ip)),
                "{ip} must be forbidden"
            );
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",  // just below CGNAT
            "100.128.0.0",     // just above CGNAT
            "172.32.0.1",      // just above 172.16/12
            "192.0.1.1",       // between 192.0.0/24 and TEST-NET-1
            "198.17.255.255",  // just below benchmarking
            "198.20.0.0",      // just above benchmarking
            "223.255.255.255", // just below multicast
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
            "2001:200::1",      // first block past 2001::/23
            "2001:db9::1",      // just past documentation
            "2a00:1450:4001::1",
            "4000::1",
        ];
        for ip in public {
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
            "http://[64:ff9b:1::a00:1]/x",
            "http://[2001::1]/x",
            "http://169.254.169.254/latest",
            "http://10.0.0.1/x",
            "http://localhost:9/x",
            "http://localhost/x",
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

    /// The client hears a class; the address a name resolved to is only in the detail.
    #[tokio::test]
    async fn a_refusal_names_no_address() {
        let guard = Guard::new(Allowlist::default());
        for (url, class) in [
            ("http://localhost/x", RefusalClass::Host),
            ("http://no-such-host.invalid/x", RefusalClass::Host),
            ("http://10.0.0.5/x", RefusalClass::Address),
            ("http://[fd00::5]/x", RefusalClass::Address),
            ("http://8.8.8.8:8080/x", RefusalClass::Port),
        ] {
            let refusal = guard.check(url).await.expect_err(url);
            assert_eq!(refusal.class, class, "{url}");
            let public = refusal.to_string();
            assert!(public.starts_with("refused"), "{public}");
            for leak in [
                "127.0.0.1",
                "::1",
                "10.0.0.5",
                "fd00",
                "8.8.8.8",
                "localhost",
                "invalid",
            ] {
                assert!(!public.contains(leak), "{url}: {public}");
            }
        }
        // Resolving and private: the same words as not resolving at all.
        let a = guard
            .check("http://localhost/x")
            .await
            .expect_err("private");
        let b = guard
            .check("http://no-such-host.invalid/x")
            .await
            .expect_err("nx");
        assert_eq!(a.to_string(), b.to_string());
        assert!(
            a.detail.contains("127.0.0.1") || a.detail.contains("::1"),
            "{}",
            a.detail
        );
    }

    #[tokio::test]
    async fn ports_are_80_443_and_what_the_allowlist_names() {
        let guard = Guard::new(Allowlist::default());
        for url in [
            "http://8.8.8.8/x",
            "https://8.8.8.8/x",
            "http://8.8.8.8:443/x",
        ] {
            assert!(guard.check(url).await.is_ok(), "{url}");
        }
        for url in [
            "http://8.8.8.8:22/x",
            "https://8.8.8.8:8443/x",
            "http://8.8.8.8:6379/x",
        ] {
            let refusal = guard.check(url).await.expect_err(url);
            assert_eq!(refusal.class, RefusalClass::Port, "{url}");
        }
        let list = |entries: &[&str]| {
            Guard::new(
                Allowlist::parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
                    .expect("valid"),
            )
        };
        let guard = list(&[
            "127.0.0.1:9000",
            "8.8.8.8:8443",
            "[::1]:7000",
            "localhost:7001",
        ]);
        assert!(guard.check("http://127.0.0.1:9000/x").await.is_ok());
        assert!(guard.check("http://127.0.0.1:9001/x").await.is_err());
        assert!(
            guard.check("http://127.0.0.1/x").await.is_err(),
            "port 80 is not 9000"
        );
        assert!(guard.check("https://8.8.8.8:8443/x").await.is_ok());
        assert!(guard.check("https://8.8.4.4:8443/x").await.is_err());
        assert!(guard.check("http://[::1]:7000/x").await.is_ok());
        assert!(guard.check("http://[::1]:7001/x").await.is_err());
        assert!(guard.check("http://localhost:7001/x").await.is_ok());
        assert!(guard.check("http://localhost:7000/x").await.is_err());
        let guard = list(&["127.0.0.0/8:9000"]);
        assert!(guard.check("http://127.0.0.2:9000/x").await.is_ok());
        assert!(guard.check("http://127.0.0.2:9002/x").await.is_err());
    }
}
