//! A service's HTTP upstream as configuration: the `upstream` object of a service
//! (`{"url":"http://billing:8080/invoices/{order_id}","timeout":"400ms","concurrency":256,
//! "headers":{"X-Api-Key":{"env":"BILLING_KEY"}}}`), its validation, and the parsed URL
//! template that adapters call. The gateway validates with [`UpstreamSpec::validate`] (and
//! refuses URLs aimed at its own listeners with [`UpstreamSpec::aims_at`]); the adapters build
//! their calls from [`UrlTemplate`]: one parser for both.
//!
//! Header values are never stored: a header names an environment variable or a file of the
//! adapter's machine, read by the adapter process.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The placeholder that an order id replaces (percent-encoded).
pub const PLACEHOLDER: &str = "{order_id}";
/// Stands for `{order_id}` while the template is parsed as a URL.
const MARKER: &str = "busgate0order0id0marker";
/// Calls at once per adapter process when the upstream does not say.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// The most calls at once an upstream may ask for.
pub const MAX_CONCURRENCY: usize = 65_536;
/// The longest upstream timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Headers an upstream may carry.
pub const MAX_HEADERS: usize = 32;
/// The longest URL template.
pub const MAX_URL: usize = 2048;
/// Headers that the adapter writes itself (framing, routing, tracing): never configured.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "traceparent",
    "busgate-request-id",
];

/// A service's HTTP upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `http://` or `https://` URL with `{order_id}` once, in its path or query.
    pub url: String,
    /// How long one call may take; the request's deadline alone bounds it when absent.
    #[serde(
        with = "humantime_serde",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Calls at once per adapter process.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Headers sent on every call, by name; each value comes from the adapter's environment
    /// or a file on its machine, never from the configuration itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, SecretSource>,
}

fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

/// Where a header's value comes from: `{"env":"NAME"}` or `{"file":"/path"}`. A plain string
/// does not parse, and its error never repeats it: secrets never sit in the configuration, nor
/// in an error about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// An environment variable of the adapter process.
    Env(String),
    /// A file on the adapter's machine (its content, trailing newline removed).
    File(String),
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor)
    }
}

/// Reads `{"env": …}` or `{"file": …}`; anything else is refused without its value.
struct SourceVisitor;

const SOURCE_SHAPE: &str =
    "a header value must be {\"env\": NAME} or {\"file\": PATH}, never the value itself";

impl<'de> serde::de::Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(SOURCE_SHAPE)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
        Err(E::custom(SOURCE_SHAPE))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretSource, E> {
        Err(E::custom(SOURCE_SHAPE))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        use serde::de::Error as _;
        let Some(key) = map.next_key::<String>()? else {
            return Err(A::Error::custom(SOURCE_SHAPE));
        };
        let source = match key.as_str() {
            "env" => SecretSource::Env(map.next_value()?),
            "file" => SecretSource::File(map.next_value()?),
            _ => return Err(A::Error::custom(SOURCE_SHAPE)),
        };
        if map.next_key::<String>()?.is_some() {
            return Err(A::Error::custom(SOURCE_SHAPE));
        }
        Ok(source)
    }
}

/// Why a header's value could not be had (the value itself is never in it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The environment variable is not set (or not UTF-8).
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The I/O error's kind.
        reason: String,
    },
    /// The value has bytes a header value may not carry (control characters, non-ASCII).
    #[error("the value from {0} is not valid header text")]
    NotHeaderText(String),
}

impl SecretSource {
    /// Reads the value now (the adapter does so when the upstream is set or changes).
    pub fn resolve(&self) -> Result<String, SecretError> {
        let (value, from) = match self {
            SecretSource::Env(name) => (
                std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?,
                format!("${name}"),
            ),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                    path: path.clone(),
                    reason: e.kind().to_string(),
                })?;
                (text.trim_end_matches(['\r', '\n']).to_owned(), path.clone())
            }
        };
        let ok = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ' || b == b'\t');
        if ok {
            Ok(value)
        } else {
            Err(SecretError::NotHeaderText(from))
        }
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// What fills a hole of a URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hole {
    /// `{order_id}`: the request's order id.
    OrderId,
    /// `{name}`: the request's attribute `name` (given by a route target's `with`).
    Attribute(String),
}

/// A URL (or request target) split around its placeholders: `literals` has one more entry
/// than `holes`, and the URL is `literals[0] hole[0] literals[1] … literals[n]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    /// The text between the holes.
    pub literals: Vec<String>,
    /// The holes, in order.
    pub holes: Vec<Hole>,
}

/// A URL template parsed and normalised, split around its placeholders (`{order_id}` and any
/// `{attribute}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// The scheme.
    pub scheme: Scheme,
    /// The host as the URL names it (an IPv6 address without brackets).
    pub host: String,
    /// The port, explicit or the scheme's.
    pub port: u16,
    /// `host[:port]` as the URL wrote it: the `Host` header.
    pub authority: String,
    /// The whole URL, around the placeholders.
    pub url: Parts,
    /// The request target (path and query), around the placeholders.
    pub target: Parts,
    /// The URL for people: no query (it may hold a key), placeholders where values go.
    pub display: String,
}

/// Stands for placeholder `i` while the template is parsed as a URL.
fn marker(i: usize) -> String {
    format!("{MARKER}{i}x")
}

impl UrlTemplate {
    /// Parses `template`; the error is a reason for people, lower case.
    pub fn parse(template: &str) -> Result<UrlTemplate, String> {
        if template.len() > MAX_URL {
            return Err(format!("longer than {MAX_URL} characters"));
        }
        let holes = placeholders(template)?;
        let mut probe = String::with_capacity(template.len() + 32 * holes.len());
        let mut rest = template;
        for (i, _) in holes.iter().enumerate() {
            let open = rest.find('{').unwrap_or(rest.len());
            let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
            probe.push_str(&rest[..open]);
            probe.push_str(&marker(i));
            rest = &rest[close..];
        }
        probe.push_str(rest);
        let url = url::Url::parse(&probe).map_err(|e| format!("not a URL: {e}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => return Err(format!("scheme {other:?}: use http:// or https://")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials: use a header from env or file".into());
        }
        if url.fragment().is_some() {
            return Err("must not have a #fragment".into());
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err("has no host".into()),
        };
        if host.contains(MARKER) {
            return Err("{order_id} must be in the path or query, never the host".into());
        }
        let port = url.port_or_known_default().ok_or("has no port")?;
        let split = |s: &str| -> Result<Parts, String> {
            let mut literals = Vec::with_capacity(holes.len() + 1);
            let mut rest = s;
            for i in 0..holes.len() {
                let (a, b) = rest
                    .split_once(&marker(i))
                    .ok_or_else(|| "{order_id} must be in the path or query".to_owned())?;
                literals.push(a.to_owned());
                rest = b;
            }
            literals.push(rest.to_owned());
            Ok(Parts {
                literals,
                holes: holes.clone(),
            })
        };
        let path = &url[..url::Position::AfterPath];
        let mut display = path.to_owned();
        for (i, hole) in holes.iter().enumerate() {
            let name = match hole {
                Hole::OrderId => "{order_id}".to_owned(),
                Hole::Attribute(a) => format!("{{{a}}}"),
            };
            display = display.replace(&marker(i), &name);
        }
        if url.query().is_some() {
            display.push_str("?…");
        }
        Ok(UrlTemplate {
            scheme,
            host,
            port,
            authority: url[url::Position::BeforeHost..url::Position::AfterPort].to_owned(),
            url: split(url.as_str())?,
            target: split(&url[url::Position::BeforePath..])?,
            display,
        })
    }

    /// The attribute names the template uses (besides `order_id`).
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.url.holes.iter().filter_map(|h| match h {
            Hole::Attribute(name) => Some(name.as_str()),
            Hole::OrderId => None,
        })
    }
}

/// The placeholders of a template, in order: every `{` opens `{order_id}` or `{attribute}`
/// (each at most once, at least one in all), and no `}` stands alone.
fn placeholders(template: &str) -> Result<Vec<Hole>, String> {
    let mut holes = Vec::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        let tail = &rest[i..];
        if tail.starts_with('}') {
            return Err("unbalanced braces: a } without its {".into());
        }
        let Some(end) = tail.find('}') else {
            return Err("unbalanced braces: a { without its }".into());
        };
        let name = &tail[1..end];
        let hole = if name == "order_id" {
            Hole::OrderId
        } else if crate::validate::is_attribute_name(name) {
            Hole::Attribute(name.to_owned())
        } else {
            return Err(format!(
                "unknown placeholder {}: use {PLACEHOLDER} or {{attribute}} (a-z 0-9 _)",
                &tail[..=end]
            ));
        };
        if holes.contains(&hole) {
            return Err(format!(
                "{} is there twice: each placeholder exactly once",
                &tail[..=end]
            ));
        }
        holes.push(hole);
        rest = &tail[end + 1..];
    }
    if holes.is_empty() {
        return Err("must contain {order_id} (or an {attribute}) exactly once".into());
    }
    Ok(holes)
}

/// A `host:port` an upstream may not aim at (the gateway's listeners, NATS monitoring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// A host name or IP address as configured.
    pub host: String,
    /// The port.
    pub port: u16,
    /// What listens there, for the error message.
    pub what: String,
}

/// One spelling per host, before any comparison: brackets and trailing dots off (`localhost.`
/// is `localhost`: a fully qualified name), lower case, an IP address in its canonical form
/// (`[0:0::1]` is `::1`). The URL parser has already turned the other spellings of an IPv4
/// address (`127.1`, `0x7f.1`, `2130706433`, `0177.0.0.1`) and percent-encoded names into
/// the plain form; a forbidden host from the settings goes through the same parser here.
fn canonical_host(host: &str) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ip.to_string();
    }
    // A host from the settings, written any way a URL may write it.
    let parsed = url::Url::parse(&format!("http://{host}/"))
        .ok()
        .and_then(|u| u.host().map(|h| h.to_string()));
    let name = parsed.as_deref().unwrap_or(bare);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// Whether `host` names this machine's loopback or "any address" (`localhost` and its
/// subdomains, `127.0.0.0/8`, `::1`, `0.0.0.0`, `::`, and those mapped into IPv6): those
/// reach whatever listens on this machine on that port.
fn is_local(host: &str) -> bool {
    let host = canonical_host(host);
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .or_else(|| v6.to_ipv4())
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
    })
}

fn same_host(a: &str, b: &str) -> bool {
    canonical_host(a) == canonical_host(b)
}

impl UpstreamSpec {
    /// Checks the upstream; the error names the field under `at` (e.g. `services.billing.upstream`).
    pub fn validate(&self, at: &str) -> Result<UrlTemplate, Error> {
        let template =
            UrlTemplate::parse(&self.url).map_err(|e| Error::invalid(format!("{at}.url"), e))?;
        if let Some(timeout) = self.timeout {
            if timeout.is_zero() || timeout > MAX_TIMEOUT {
                return Err(Error::invalid(
                    format!("{at}.timeout"),
                    "must be between 1ms and 300s",
                ));
            }
        }
        if self.concurrency == 0 || self.concurrency > MAX_CONCURRENCY {
            return Err(Error::invalid(
                format!("{at}.concurrency"),
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            ));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(Error::invalid(
                format!("{at}.headers"),
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        for (name, source) in &self.headers {
            let field = format!("{at}.headers.{name}");
            // RFC 9110 token characters.
            let token = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(Error::invalid(field, "not a header name"));
            }
            if RESERVED_HEADERS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(name))
            {
                return Err(Error::invalid(field, "set by the adapter itself"));
            }
            match source {
                SecretSource::Env(var) => {
                    let ok = !var.is_empty()
                        && var.len() <= 128
                        && !var.as_bytes()[0].is_ascii_digit()
                        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ok {
                        return Err(Error::invalid(
                            format!("{field}.env"),
                            "not an environment variable name (A-Z a-z 0-9 _)",
                        ));
                    }
                }
                SecretSource::File(path) => {
                    if !path.starts_with('/') || path.len() > 1024 || path.contains('\0') {
                        return Err(Error::invalid(
                            format!("{field}.file"),
                            "must be an absolute path",
                        ));
                    }
                }
            }
        }
        Ok(template)
    }

    /// The first of `forbidden` that this upstream's URL reaches, if any: the same host and
    /// port, or any local name (`localhost`, `127.0.0.1`, `0.0.0.0`, `::1`…) on the port of
    /// a forbidden address that is itself local.
    pub fn aims_at<'a>(&self, forbidden: &'a [Forbidden]) -> Option<&'a Forbidden> {
        let template = UrlTemplate::parse(&self.url).ok()?;
        forbidden.iter().find(|f| {
            f.port == template.port
                && (same_host(&f.host, &template.host)
                    || (is_local(&f.host) && is_local(&template.host)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> UpstreamSpec {
        UpstreamSpec {
            url: url.into(),
            timeout: None,
            concurrency: DEFAULT_CONCURRENCY,
            headers: BTreeMap::new(),
        }
    }

    fn field(result: Result<UrlTemplate, Error>) -> String {
        match result {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn the_contract_example_parses_and_serialises_back() {
        let json = serde_json::json!({"url":"http://billing:8080/invoices/{order_id}","timeout":"400ms","concurrency":256,"headers":{"X-Api-Key":{"env":"BILLING_KEY"}}});
        let parsed: UpstreamSpec = serde_json::from_value(json.clone()).expect("parses");
        assert_eq!(parsed.timeout, Some(Duration::from_millis(400)));
        assert_eq!(
            parsed.headers["X-Api-Key"],
            SecretSource::Env("BILLING_KEY".into())
        );
        assert_eq!(serde_json::to_value(&parsed).expect("json"), json);
        parsed.validate("u").expect("valid");
        // A plain value is not a source: it does not parse.
        let plain = serde_json::from_value::<UpstreamSpec>(
            serde_json::json!({"url":"http://h/{order_id}","headers":{"X-Api-Key":"s3cret"}}),
        )
        .expect_err("a plain value");
        assert!(!plain.to_string().contains("s3cret"), "{plain}");
        assert!(serde_json::from_value::<UpstreamSpec>(
            serde_json::json!({"url":"http://h/{order_id}","headers":{"X":{"value":"s3cret"}}})
        )
        .is_err());
    }

    #[test]
    fn templates_split_around_the_order_id() {
        let t = UrlTemplate::parse("http://127.0.0.1:8081/order/{order_id}?x=1").expect("ok");
        assert_eq!(t.target.literals, ["/order/", "?x=1"]);
        assert_eq!(t.target.holes, [Hole::OrderId]);
        assert_eq!(t.authority, "127.0.0.1:8081");
        assert_eq!(t.display, "http://127.0.0.1:8081/order/{order_id}?…");
        let t = UrlTemplate::parse("https://h/a/{order_id}").expect("ok");
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!(t.port, 443);
        assert_eq!(t.url.literals, ["https://h/a/", ""]);
        assert_eq!(t.display, "https://h/a/{order_id}");
        let t = UrlTemplate::parse("http://h/c/{carrier}/o/{order_id}?k={kind}").expect("ok");
        assert_eq!(t.target.literals, ["/c/", "/o/", "?k=", ""]);
        assert_eq!(t.attributes().collect::<Vec<_>>(), ["carrier", "kind"]);
        assert_eq!(t.display, "http://h/c/{carrier}/o/{order_id}?…");
        assert!(UrlTemplate::parse("http://h/c/{carrier}").is_ok());
        assert!(UrlTemplate::parse("http://h/c/{Bad}").is_err());
        assert!(UrlTemplate::parse("http://h/c/{a}/{a}").is_err());
        assert!(UrlTemplate::parse("http://{carrier}.h/x").is_err());
        assert!(UrlTemplate::parse("http://h/x").is_err());
    }

    #[test]
    fn bad_urls_are_named() {
        for (url, why) in [
            ("http://h/{ID}", "unknown placeholder"),
            ("http://h/{order_id", "unbalanced"),
            ("http://h/order_id}", "unbalanced"),
            ("http://h/{order_id}/{order_id}", "exactly once"),
            ("http://h/x", "exactly once"),
            ("ftp://h/{order_id}", "scheme"),
            ("file:///{order_id}", "scheme"),
            ("http://u:p@h/{order_id}", "credentials"),
            ("http://tok@h/{order_id}", "credentials"),
            ("http://{order_id}.h/x", "host"),
            ("http://h/x#{order_id}", "fragment"),
            ("not a url {order_id}", "not a URL"),
        ] {
            match UrlTemplate::parse(url) {
                Err(e) => assert!(e.contains(why), "{url}: {e}"),
                Ok(t) => panic!("{url} parsed: {t:?}"),
            }
            assert_eq!(field(spec(url).validate("s.u")), "s.u.url");
        }
    }

    #[test]
    fn bounds_and_headers_are_named() {
        let mut s = spec("http://h/{order_id}");
        s.timeout = Some(Duration::ZERO);
        assert_eq!(field(s.validate("u")), "u.timeout");
        s.timeout = Some(Duration::from_secs(301));
        assert_eq!(field(s.validate("u")), "u.timeout");
        s.timeout = None;
        s.concurrency = 0;
        assert_eq!(field(s.validate("u")), "u.concurrency");
        s.concurrency = MAX_CONCURRENCY + 1;
        assert_eq!(field(s.validate("u")), "u.concurrency");
        s.concurrency = 1;
        for (name, source, at) in [
            (
                "Bad Name",
                SecretSource::Env("K".into()),
                "u.headers.Bad Name",
            ),
            ("X:Y", SecretSource::Env("K".into()), "u.headers.X:Y"),
            ("Host", SecretSource::Env("K".into()), "u.headers.Host"),
            (
                "content-length",
                SecretSource::Env("K".into()),
                "u.headers.content-length",
            ),
            (
                "X-Key",
                SecretSource::Env("1K".into()),
                "u.headers.X-Key.env",
            ),
            (
                "X-Key",
                SecretSource::Env("A-B".into()),
                "u.headers.X-Key.env",
            ),
            (
                "X-Key",
                SecretSource::File("relative".into()),
                "u.headers.X-Key.file",
            ),
        ] {
            s.headers = BTreeMap::from([(name.to_owned(), source)]);
            assert_eq!(field(s.validate("u")), at, "{name}");
        }
    }

    #[test]
    fn secrets_resolve_from_files_and_say_what_is_missing_without_a_value() {
        let dir = std::env::temp_dir().join(format!("busgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("key");
        std::fs::write(&file, "s3cret-value\n").expect("write");
        let path = file.display().to_string();
        assert_eq!(
            SecretSource::File(path.clone()).resolve(),
            Ok("s3cret-value".to_owned())
        );
        std::fs::write(&file, "bad\r\nInjected: 1").expect("write");
        let e = SecretSource::File(path.clone()).resolve().expect_err("bad");
        assert!(!e.to_string().contains("Injected"), "{e}");
        std::fs::remove_file(&file).expect("rm");
        assert!(matches!(
            SecretSource::File(path).resolve(),
            Err(SecretError::File { .. })
        ));
        assert_eq!(
            SecretSource::Env("BUSGATE_TEST_SURELY_UNSET_VAR".into()).resolve(),
            Err(SecretError::MissingEnv(
                "BUSGATE_TEST_SURELY_UNSET_VAR".into()
            ))
        );
    }

    #[test]
    fn own_listeners_and_their_local_equivalents_are_caught() {
        let forbidden = vec![
            Forbidden {
                host: "0.0.0.0".into(),
                port: 8080,
                what: "public".into(),
            },
            Forbidden {
                host: "127.0.0.1".into(),
                port: 9090,
                what: "admin".into(),
            },
            Forbidden {
                host: "nats.internal".into(),
                port: 8222,
                what: "nats monitoring".into(),
            },
        ];
        for url in [
            "http://127.0.0.1:8080/{order_id}",
            "http://localhost:8080/{order_id}",
            "http://0.0.0.0:8080/{order_id}",
            "http://[::1]:8080/{order_id}",
            "http://127.0.0.2:9090/{order_id}",
            "http://LOCALHOST:9090/x?id={order_id}",
            "http://nats.internal:8222/varz?{order_id}",
            "http://NATS.internal.:8222/{order_id}",
        ] {
            assert!(spec(url).aims_at(&forbidden).is_some(), "{url}");
        }
        // Every other spelling of a local host, as an attacker would write it.
        for host in [
            "localhost.",
            "LOCALHOST.",
            "LocalHost",
            "localhost..",
            "%6cocalhost",
            "sub.localhost.",
            "127.1",
            "127.0.1",
            "0x7f.1",
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
            "127.1.",
            "0",
            "[::1]",
            "[0:0:0:0:0:0:0:1]",
            "[::]",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::127.0.0.1]",
        ] {
            for port in [8080, 9090] {
                let url = format!("http://{host}:{port}/{{order_id}}");
                if UrlTemplate::parse(&url).is_err() {
                    // Refused as a URL already (validation answers 422): fine, but the
                    // spellings the probe tried must parse, and be caught below.
                    assert!(
                        !["localhost.", "LOCALHOST.", "127.1", "0x7f.1", "[::1]"].contains(&host),
                        "{url}"
                    );
                    continue;
                }
                assert!(spec(&url).aims_at(&forbidden).is_some(), "{url}");
            }
        }
        // A forbidden host from the settings, spelled oddly, still matches.
        let odd = vec![Forbidden {
            host: "NATS.Internal.".into(),
            port: 8222,
            what: "nats monitoring".into(),
        }];
        assert!(spec("http://nats.internal:8222/{order_id}")
            .aims_at(&odd)
            .is_some());
        for url in [
            "http://127.0.0.1:8081/{order_id}",
            "http://billing:8080/{order_id}",
            "http://nats.internal:4222/{order_id}",
        ] {
            assert!(spec(url).aims_at(&forbidden).is_none(), "{url}");
        }
    }
}
