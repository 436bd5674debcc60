//! What a connection is given: the `[nats]` settings every Busgate process reads
//! ([`NatsSettings`], for this client and for the async-nats one of [`crate::nats`] alike), the
//! server list they name ([`parse_servers`]) and the one redacted form of a NATS URL
//! ([`redact_url`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::UrlError;
use crate::wire::auth::Auth;
use crate::Error;

/// The `[nats]` section: how every connection of every Busgate process (the gateway's two, each
/// worker's, a service's through the SDK) reaches NATS. Read from `busgate.toml` by the gateway
/// and from the same `BUSGATE_NATS__…` variables by everyone ([`NatsSettings::from_env`]).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated: `nats://` or `tls://`, optionally with `user:password@`
    /// or `token@` (a secret: never logged).
    pub url: String,
    /// The gateway's id in reply subjects; random per start when empty (workers ignore it).
    pub instance: String,
    /// PEM file with the CA certificate(s) that server certificates must chain to. Setting it
    /// (or `cert_file`) makes TLS mandatory, as a `tls://` URL does. Without it: the system's.
    pub ca_file: String,
    /// PEM client certificate (chain) for mutual TLS; with `key_file`.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
    /// A `.creds` file (user JWT and nkey seed) for decentralised (operator/account) auth.
    pub creds_file: String,
    /// A file holding an nkey user seed (`SU…`): the server's nonce is signed with it.
    pub nkey_file: String,
    /// Start TLS before the server's `INFO` (the server's `handshake_first`).
    pub handshake_first: bool,
    /// How often each connection PINGs the server; a server that leaves `max_pings_out` of
    /// them unanswered (hung, partitioned) is taken for dead and another is tried.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// PINGs left unanswered before a connection is taken for dead.
    pub max_pings_out: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            instance: String::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            creds_file: String::new(),
            nkey_file: String::new(),
            handshake_first: false,
            ping_interval: DEFAULT_PING_INTERVAL,
            max_pings_out: DEFAULT_MAX_PINGS_OUT,
        }
    }
}

/// Default of `nats.ping_interval`: with [`DEFAULT_MAX_PINGS_OUT`], a hung server is left
/// within 15 s, while the PINGs cost nothing measurable.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);
/// Default of `nats.max_pings_out`.
pub const DEFAULT_MAX_PINGS_OUT: usize = 2;

// By hand: the URL may hold a password or token. The file names are not secrets.
impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &redact_url(&self.url))
            .field("instance", &self.instance)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("handshake_first", &self.handshake_first)
            .field("ping_interval", &self.ping_interval)
            .field("max_pings_out", &self.max_pings_out)
            .finish()
    }
}

impl NatsSettings {
    /// Settings with `url` and every default.
    pub fn with_url(url: impl Into<String>) -> Self {
        NatsSettings {
            url: url.into(),
            ..NatsSettings::default()
        }
    }

    /// The defaults overridden by the `BUSGATE_NATS__…` variables that are set (`URL`,
    /// `CA_FILE`, `CERT_FILE`, `KEY_FILE`, `CREDS_FILE`, `NKEY_FILE`, `HANDSHAKE_FIRST`,
    /// `PING_INTERVAL`, `MAX_PINGS_OUT`, `INSTANCE`): what workers and SDK services read, the
    /// same names the gateway's settings take from the environment.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(format!("BUSGATE_NATS__{name}")).ok())
    }

    /// [`NatsSettings::from_env`] over any source of variables (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let mut s = NatsSettings::default();
        for (name, field) in [
            ("URL", &mut s.url),
            ("INSTANCE", &mut s.instance),
            ("CA_FILE", &mut s.ca_file),
            ("CERT_FILE", &mut s.cert_file),
            ("KEY_FILE", &mut s.key_file),
            ("CREDS_FILE", &mut s.creds_file),
            ("NKEY_FILE", &mut s.nkey_file),
        ] {
            if let Some(value) = var(name) {
                *field = value;
            }
        }
        if let Some(v) = var("HANDSHAKE_FIRST") {
            s.handshake_first = match v.trim() {
                "true" | "1" => true,
                "false" | "0" | "" => false,
                _ => return Err(Error::invalid("nats.handshake_first", "true or false")),
            };
        }
        if let Some(v) = var("PING_INTERVAL") {
            s.ping_interval = humantime::parse_duration(v.trim())
                .map_err(|e| Error::invalid("nats.ping_interval", e.to_string()))?;
        }
        if let Some(v) = var("MAX_PINGS_OUT") {
            s.max_pings_out = v
                .trim()
                .parse()
                .map_err(|_| Error::invalid("nats.max_pings_out", "a whole number"))?;
        }
        Ok(s)
    }

    /// Checks what can be checked without connecting: the URL list, the pairs of settings that
    /// go together, the ping settings. Files are read by [`crate::nats::connect`] and
    /// [`crate::wire::Connection::connect_with`].
    pub fn validate(&self) -> Result<(), Error> {
        parse_servers(&self.url)?;
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(Error::invalid(
                "nats.cert_file",
                "cert_file and key_file go together",
            ));
        }
        if !self.creds_file.is_empty() && !self.nkey_file.is_empty() {
            return Err(Error::invalid(
                "nats.creds_file",
                "set creds_file or nkey_file, not both",
            ));
        }
        if self.ping_interval < Duration::from_millis(100) {
            return Err(Error::invalid("nats.ping_interval", "at least 100ms"));
        }
        if self.max_pings_out == 0 {
            return Err(Error::invalid("nats.max_pings_out", "at least 1"));
        }
        Ok(())
    }

    /// Whether TLS is required on every connection: a `tls://` URL, a CA file, a client
    /// certificate or `handshake_first` (a downgrade to plain TCP is never accepted then).
    pub fn requires_tls(&self) -> bool {
        self.handshake_first
            || !self.ca_file.is_empty()
            || !self.cert_file.is_empty()
            || parse_servers(&self.url)
                .map(|s| s.iter().any(|s| s.tls))
                .unwrap_or(false)
    }

    /// The settings as the `BUSGATE_NATS__…` variables [`NatsSettings::from_env`] reads: how
    /// a process hands them to the workers it starts (never in argv, which every user of the
    /// machine can read). `instance` is left out: it is the gateway's own.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let ping = humantime::format_duration(self.ping_interval).to_string();
        [
            ("URL", self.url.clone()),
            ("CA_FILE", self.ca_file.clone()),
            ("CERT_FILE", self.cert_file.clone()),
            ("KEY_FILE", self.key_file.clone()),
            ("CREDS_FILE", self.creds_file.clone()),
            ("NKEY_FILE", self.nkey_file.clone()),
            ("HANDSHAKE_FIRST", self.handshake_first.to_string()),
            ("PING_INTERVAL", ping),
            ("MAX_PINGS_OUT", self.max_pings_out.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (format!("BUSGATE_NATS__{name}"), value))
        .collect()
    }

    /// The same settings with the URL's credentials replaced by `***` (for `check-config`).
    pub fn redacted(&self) -> NatsSettings {
        NatsSettings {
            url: redact_url(&self.url),
            ..self.clone()
        }
    }
}

/// One server to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (4222 unless given).
    pub port: u16,
    /// `user:password@` or `token@` of the URL.
    pub auth: Auth,
    /// `tls://`: TLS is required on this server.
    pub tls: bool,
    /// The name its certificate is checked against when not `host`: a server announced by
    /// address (`connect_urls`) is checked against the name of the server that announced it,
    /// as other NATS clients do.
    pub tls_name: Option<String>,
}

/// Parses a NATS URL list: `nats|tls://[user:pass@|token@]host[:port]`, comma-separated.
pub fn parse_servers(urls: &str) -> Result<Vec<Server>, UrlError> {
    let mut servers = Vec::new();
    for entry in urls.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fail = |reason| UrlError {
            url: redact_url(entry),
            reason,
        };
        let (tls, rest) = match entry.split_once("://") {
            Some(("nats", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some(("ws" | "wss", _)) => {
                return Err(fail(
                    "websocket connections are not supported; use nats:// or tls://",
                ))
            }
            Some(_) => return Err(fail("the scheme must be nats:// or tls://")),
            None => (false, entry),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let auth = match userinfo {
            None => Auth::None,
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => Auth::User {
                    user: crate::validate::percent_decode(user)
                        .ok_or_else(|| fail("bad percent-encoding"))?,
                    pass: crate::validate::percent_decode(pass)
                        .ok_or_else(|| fail("bad percent-encoding"))?,
                },
                None => Auth::Token(
                    crate::validate::percent_decode(u)
                        .ok_or_else(|| fail("bad percent-encoding"))?,
                ),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, tail) = v6
                .split_once(']')
                .ok_or_else(|| fail("unclosed [ in host"))?;
            match tail.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if tail.is_empty() => (host, None),
                None => return Err(fail("junk after the IPv6 address")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(fail("no valid host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| fail("the port is not a number"))?,
            None => 4222,
        };
        servers.push(Server {
            host: host.to_owned(),
            port,
            auth,
            tls,
            tls_name: None,
        });
    }
    if servers.is_empty() {
        return Err(UrlError {
            url: redact_url(urls),
            reason: "no server in the list",
        });
    }
    Ok(servers)
}

/// `url` (one URL or a comma-separated list) with the credentials of every entry replaced by
/// `***` (`nats://u:p@h:4222` → `nats://***@h:4222`, `tok@h` → `***@h`): the one form in which
/// a NATS URL may be logged, put in an error or printed. Whatever follows the last `@` of an
/// entry (host, port, path) is kept.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for (i, entry) in url.split(',').enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (scheme, rest) = match entry.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, entry),
        };
        if let Some(scheme) = scheme {
            out.push_str(scheme);
            out.push_str("://");
        }
        match rest.rsplit_once('@') {
            Some((_, host)) => {
                out.push_str("***@");
                out.push_str(host);
            }
            None => out.push_str(rest),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_credentials_ports_and_lists() {
        let s =
            parse_servers("nats://a:4222, nats://u:p%40ss@b:5222/,tok@c,[::1]:7,d").expect("valid");
        assert_eq!(s.len(), 5);
        assert_eq!(
            (s[0].host.as_str(), s[0].port, &s[0].auth),
            ("a", 4222, &Auth::None)
        );
        assert_eq!(
            s[1].auth,
            Auth::User {
                user: "u".into(),
                pass: "p@ss".into()
            }
        );
        assert_eq!((s[1].host.as_str(), s[1].port), ("b", 5222));
        assert_eq!(s[2].auth, Auth::Token("tok".into()));
        assert_eq!((s[3].host.as_str(), s[3].port), ("::1", 7));
        assert_eq!((s[4].host.as_str(), s[4].port), ("d", 4222));
    }

    #[test]
    fn unsupported_urls_are_refused_without_their_secrets() {
        let e = parse_servers("wss://u:secret@h:4222").expect_err("refused");
        assert!(e.reason.contains("websocket"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
        let tls = parse_servers("tls://u:secret@h:4222,nats://h2").expect("tls is fine");
        assert!(tls[0].tls && !tls[1].tls);
        assert!(parse_servers("http://h").is_err());
        assert!(parse_servers(" , ").is_err());
        assert!(parse_servers("nats://h:port").is_err());
        assert!(parse_servers("nats://:4222").is_err());
        assert_eq!(
            format!(
                "{:?}",
                Auth::User {
                    user: "u".into(),
                    pass: "s".into()
                }
            ),
            "User(u, ***)"
        );
    }

    #[test]
    fn settings_come_from_the_same_variables_everywhere() {
        let vars = [
            ("URL", "tls://u:p@h:4443"),
            ("CA_FILE", "/ca.pem"),
            ("NKEY_FILE", "/u.nk"),
            ("HANDSHAKE_FIRST", "true"),
            ("PING_INTERVAL", "250ms"),
            ("MAX_PINGS_OUT", "3"),
        ];
        let s = NatsSettings::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .expect("valid");
        assert_eq!(s.ping_interval, Duration::from_millis(250));
        assert!(s.handshake_first && s.requires_tls());
        assert_eq!((s.max_pings_out, s.ca_file.as_str()), (3, "/ca.pem"));
        // And back: what `busgate up` gives its workers reads as the same settings.
        let env = s.to_env();
        let again = NatsSettings::from_vars(|name| {
            let key = format!("BUSGATE_NATS__{name}");
            env.iter().find(|(n, _)| *n == key).map(|(_, v)| v.clone())
        })
        .expect("valid");
        assert_eq!(
            again,
            NatsSettings {
                instance: String::new(),
                ..s.clone()
            }
        );
        assert!(!format!("{s:?}").contains(":p@"), "{s:?}");
        assert!(
            NatsSettings::from_vars(|n| (n == "PING_INTERVAL").then(|| "soon".into())).is_err()
        );
        assert!(!NatsSettings::with_url("nats://h").requires_tls());
    }
}
