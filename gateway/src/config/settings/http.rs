//! `[http]`: the public listener and its limits on slow and greedy clients.

use std::net::SocketAddr;
use std::time::Duration;

use busgate_shared::validate::DEFAULT_ORDER_ID_PATTERN;
use busgate_shared::Error;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to listen on (port 0 picks a free port; the log says which).
    pub listen: SocketAddr,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// What an `order_id` must match (anchored regex).
    pub order_id_pattern: String,
    /// The share of the traces Busgate starts (requests without a `traceparent`) that are
    /// marked sampled, 0.0 to 1.0. Busgate records no spans itself, so by default it starts
    /// them unsampled; tracers downstream that follow their parent's decision record the
    /// marked ones. A caller's `traceparent` keeps its own flags.
    pub trace_sample_ratio: f64,
    /// A connection that has not sent a whole request head within this is closed; hyper arms
    /// the same timer while a kept-alive connection waits for its next request, so it is the
    /// idle keep-alive timeout too. Both listeners.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request body must have arrived whole within this, counted from when the gateway
    /// starts reading it; past it: 408 and the connection closes.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Open connections per listener; past it a new connection is accepted and closed at once.
    pub max_connections: usize,
    /// Requests in flight on the public listener (health and metrics not counted); past it:
    /// 503 `overloaded` with `Retry-After`.
    pub max_in_flight: usize,
    /// Header fields in a request head; past it: 431 and the connection closes.
    pub max_headers: usize,
    /// Bytes of a request head (request line and header fields); past it: 431 and the
    /// connection closes.
    pub max_header_bytes: usize,
    /// TLS on the public listener (`[http.tls]`): off while `cert_file` is empty.
    pub tls: TlsSettings,
    /// Cleartext HTTP/2 with prior knowledge (h2c) next to HTTP/1.1 on a listener without
    /// TLS: for a load balancer in front that speaks HTTP/2 to its backends.
    pub h2c: bool,
    /// Streams one HTTP/2 connection may have open at once; past it the client is refused
    /// more (`REFUSED_STREAM`).
    pub h2_max_concurrent_streams: u32,
    /// Peers that may say who the client is (addresses or CIDR blocks): their `client_header`
    /// (or PROXY protocol v2 header, with `proxy_protocol`) names the client;
    /// from any other peer these headers are ignored and the client is the peer.
    pub trusted_proxies: Vec<String>,
    /// The one header `trusted_proxies` name the client in: `"x-forwarded-for"` (nginx,
    /// HAProxy, the cloud balancers) or `"forwarded"` (RFC 7239). The other is never read: a
    /// proxy passes it through as the client wrote it.
    pub client_header: ClientHeader,
    /// Connections from `trusted_proxies` start with a PROXY protocol v2 header (HAProxy's
    /// `send-proxy-v2`, a cloud load balancer's proxy protocol): its source is the client.
    pub proxy_protocol: bool,
    /// One log line per request on a configured route (`access`: the client's address, the
    /// route, the status, the time taken), at info level.
    pub access_log: bool,
}

/// `[http.tls]`: the certificate of the public listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM file with the certificate chain, the server's certificate first.
    pub cert_file: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// How often the files are checked for a new certificate (SIGHUP checks at once).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl TlsSettings {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_file: String::new(),
            key_file: String::new(),
            reload_interval: Duration::from_secs(2),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            body_limit: 64 * 1024,
            order_id_pattern: DEFAULT_ORDER_ID_PATTERN.into(),
            trace_sample_ratio: 0.0,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_in_flight: 4096,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            tls: TlsSettings::default(),
            h2c: false,
            h2_max_concurrent_streams: 128,
            trusted_proxies: Vec::new(),
            client_header: ClientHeader::default(),
            proxy_protocol: false,
            access_log: false,
        }
    }
}

impl HttpSettings {
    /// The rules of TLS, HTTP/2 and trusted proxies (the edge's other limits are checked with
    /// the rest of the settings).
    pub fn check_edge(&self) -> Result<(), Error> {
        let tls = &self.tls;
        if tls.cert_file.is_empty() != tls.key_file.is_empty() {
            return Err(Error::invalid(
                "http.tls",
                "cert_file and key_file are set together",
            ));
        }
        let intervals = Duration::from_millis(100)..=Duration::from_secs(3600);
        if !intervals.contains(&tls.reload_interval) {
            return Err(Error::invalid(
                "http.tls.reload_interval",
                "must be between 100ms and 1h",
            ));
        }
        if self.h2c && tls.enabled() {
            return Err(Error::invalid(
                "http.h2c",
                "is for a listener without TLS (with TLS, HTTP/2 is chosen by ALPN)",
            ));
        }
        if !(1..=1000).contains(&self.h2_max_concurrent_streams) {
            return Err(Error::invalid(
                "http.h2_max_concurrent_streams",
                "must be between 1 and 1000",
            ));
        }
        let trusted = self.trusted_networks()?;
        if self.proxy_protocol && trusted.is_empty() {
            return Err(Error::invalid(
                "http.proxy_protocol",
                "needs http.trusted_proxies: the peers that send the header",
            ));
        }
        Ok(())
    }

    /// `trusted_proxies` as networks: an address alone is a network of one.
    pub fn trusted_networks(&self) -> Result<Vec<IpNet>, Error> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        Error::invalid(
                            "http.trusted_proxies",
                            format!("{entry:?} is not an address or a CIDR block"),
                        )
                    })
            })
            .collect()
    }
}

/// The header the trusted proxies name the client in (`http.client_header`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientHeader {
    /// `X-Forwarded-For`: what nginx, HAProxy and the cloud balancers append to.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), for a proxy that writes it (and not `X-Forwarded-For`).
    Forwarded,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule of TLS, h2c and trusted proxies refuses what breaks it, naming the field.
    #[test]
    fn edge_rules_name_their_field() {
        let ok = HttpSettings::default();
        assert!(ok.check_edge().is_ok());
        let field = |s: HttpSettings| match s.check_edge() {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        };
        let mut s = ok.clone();
        s.tls.cert_file = "cert.pem".into();
        assert_eq!(field(s.clone()), "http.tls");
        s.tls.key_file = "key.pem".into();
        assert!(s.check_edge().is_ok());
        s.h2c = true;
        assert_eq!(field(s.clone()), "http.h2c");
        let mut s = ok.clone();
        s.tls.reload_interval = Duration::from_millis(10);
        assert_eq!(field(s), "http.tls.reload_interval");
        let mut s = ok.clone();
        s.h2_max_concurrent_streams = 0;
        assert_eq!(field(s), "http.h2_max_concurrent_streams");
        let mut s = ok.clone();
        s.trusted_proxies = vec!["10.0.0.0/8".into(), "not-an-address".into()];
        assert_eq!(field(s), "http.trusted_proxies");
        let mut s = ok.clone();
        s.proxy_protocol = true;
        assert_eq!(field(s.clone()), "http.proxy_protocol");
        s.trusted_proxies = vec![
            " 192.0.2.7 ".into(),
            "2001:db8::/32".into(),
            "10.1.2.3/8".into(),
        ];
        assert!(s.check_edge().is_ok());
        let nets = s.trusted_networks().expect("nets");
        assert_eq!(nets[0].to_string(), "192.0.2.7/32");
        assert_eq!(nets[2].to_string(), "10.0.0.0/8");
    }
}
