//! Signed callbacks: where a finished asynchronous request is POSTed.
//!
//! - [`Signer`]: Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`).
//! - [`Guard`]: SSRF protection. A callback URL whose host is, or resolves to, a loopback,
//!   private, link-local, CGNAT, metadata or otherwise special address is refused at submit,
//!   unless the allowlist names it; at delivery the HTTP client resolves through the same guard,
//!   so the connection goes only to an address that passed the check.
//! - [`Deliverer`]: the worker that POSTs, records the delivery state in the status document,
//!   and schedules retries with a JetStream NAK delay, so a restart loses none.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;

use busgate_shared::Error;

/// Signs callback bodies per Standard Webhooks.
#[derive(Clone)]
pub struct Signer {
    key: Arc<[u8]>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// A signer for a `whsec_<base64>` secret (at least 16 bytes of key).
    pub fn new(secret: &str) -> Result<Self, Error> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| Error::invalid("callbacks.secret", "must be whsec_ followed by base64"))?;
        if key.len() < 16 {
            return Err(Error::invalid(
                "callbacks.secret",
                "must hold at least 16 bytes of key",
            ));
        }
        Ok(Signer { key: key.into() })
    }

    /// A new random secret, for `busgate up`.
    pub fn generate_secret() -> String {
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // A key of any length is valid for HMAC.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("v1,{signature}")
    }
}

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

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
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

/// Unix seconds now.
pub fn unix_seconds(now: SystemTime) -> u64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(Signer::new("whsec_short").is_err());
        assert!(Signer::new("whsec_!!!").is_err());
        assert!(Signer::new(&Signer::generate_secret()).is_ok());
    }

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

/// Delivers callbacks until `stop` turns true. One JetStream message per request; a failed
/// attempt is NAKed with the next retry delay, so the schedule survives restarts.
pub async fn run_deliveries(
    jobs: Arc<crate::jobs::Jobs>,
    deliverer: Deliverer,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), crate::jobs::JobsError> {
    use futures::StreamExt;
    let consumer = jobs.callbacks_consumer().await?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| crate::jobs::JobsError::JetStream(e.to_string()))?;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            next = messages.next() => match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pulling callbacks");
                    continue;
                }
                None => break,
            },
        };
        let (jobs, deliverer) = (jobs.clone(), deliverer.clone());
        tasks.spawn(async move { deliverer.deliver(&jobs, message).await });
        while tasks.try_join_next().is_some() {}
    }
    // Attempts in flight are bounded by the delivery timeout.
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Makes one delivery attempt per message and records it.
#[derive(Clone)]
pub struct Deliverer {
    http: reqwest::Client,
    guard: Guard,
    signer: Signer,
    retry: Arc<[Duration]>,
}

enum Attempt {
    Delivered(u16),
    Gone,
    Failed {
        status: Option<u16>,
        error: Option<String>,
    },
}

impl Deliverer {
    /// A deliverer with this signer, guard and retry schedule.
    pub fn new(
        signer: Signer,
        guard: Guard,
        retry: Vec<Duration>,
        timeout: Duration,
    ) -> reqwest::Result<Self> {
        Ok(Deliverer {
            http: http_client(&guard, timeout)?,
            guard,
            signer,
            retry: retry.into(),
        })
    }

    async fn deliver(&self, jobs: &crate::jobs::Jobs, message: async_nats::jetstream::Message) {
        use async_nats::jetstream::AckKind;
        let attempt =
            u32::try_from(message.info().map(|i| i.delivered).unwrap_or(1)).unwrap_or(u32::MAX);
        let request_id = String::from_utf8_lossy(&message.payload).into_owned();
        let doc = match jobs.status(&request_id).await {
            Ok(Some((_, doc))) => doc,
            Ok(None) => {
                tracing::warn!(%request_id, "no status document for a callback, dropping it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                tracing::warn!(%request_id, error = %e, "cannot read a status document for a callback");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        };
        let Some(url) = doc.callback.as_ref().map(|c| c.url.clone()) else {
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        let outcome = self.attempt(&url, &request_id, &doc).await;
        let now = SystemTime::now();
        // The next delay, if any attempt is left: retry[attempt - 1], ±10 % jitter.
        let next_delay = self
            .retry
            .get(attempt as usize - 1)
            .map(|d| jitter(*d, &request_id, attempt));
        let recorded = jobs
            .update(&request_id, |doc| {
                let Some(cb) = doc.callback.as_mut() else {
                    return;
                };
                cb.attempts = attempt;
                cb.next_attempt_at = None;
                match &outcome {
                    Attempt::Delivered(status) => {
                        cb.state = "delivered".into();
                        cb.last_status = Some(*status);
                        cb.last_error = None;
                        cb.delivered_at = Some(crate::jobs::rfc3339(now));
                    }
                    Attempt::Gone => {
                        cb.state = "gone".into();
                        cb.last_status = Some(410);
                    }
                    Attempt::Failed { status, error } => {
                        cb.last_status = *status;
                        cb.last_error.clone_from(error);
                        match next_delay {
                            Some(delay) => {
                                cb.state = "pending".into();
                                cb.next_attempt_at = Some(crate::jobs::rfc3339(now + delay));
                            }
                            None => cb.state = "failed".into(),
                        }
                    }
                }
            })
            .await;
        if let Err(e) = recorded {
            tracing::warn!(%request_id, error = %e, "cannot record a callback attempt");
        }
        let ack = match (&outcome, next_delay) {
            (Attempt::Failed { .. }, Some(delay)) => {
                tracing::info!(%request_id, attempt, ?delay, "callback failed, retrying later");
                message.ack_with(AckKind::Nak(Some(delay))).await
            }
            (Attempt::Failed { .. }, None) => {
                tracing::warn!(%request_id, attempt, "callback failed, giving up");
                message.ack().await
            }
            _ => message.ack().await,
        };
        if let Err(e) = ack {
            tracing::debug!(%request_id, error = %e, "callback ack not sent");
        }
    }

    async fn attempt(&self, url: &str, request_id: &str, doc: &crate::jobs::StatusDoc) -> Attempt {
        // IP literals do not pass through the resolver: check them (again) here.
        if let Err(reason) = self.guard.check_literal(url) {
            return Attempt::Failed {
                status: None,
                error: Some(reason),
            };
        }
        let body = match serde_json::to_vec(doc) {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Failed {
                    status: None,
                    error: Some(e.to_string()),
                }
            }
        };
        let timestamp = unix_seconds(SystemTime::now());
        let webhook_id = format!("msg_{request_id}");
        let signature = self.signer.sign(&webhook_id, timestamp, &body);
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Attempt::Delivered(r.status().as_u16()),
            Ok(r) if r.status() == reqwest::StatusCode::GONE => Attempt::Gone,
            Ok(r) => Attempt::Failed {
                status: Some(r.status().as_u16()),
                error: None,
            },
            Err(e) => Attempt::Failed {
                status: None,
                error: Some(e.to_string()),
            },
        }
    }
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

/// `delay` ±10 %, derived from the request and attempt so that retries of many callbacks spread.
fn jitter(delay: Duration, request_id: &str, attempt: u32) -> Duration {
    let seed = request_id.bytes().fold(u64::from(attempt), |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let permille = 900 + (seed % 201); // 900..=1100
    delay * u32::try_from(permille).unwrap_or(1000) / 1000
}
