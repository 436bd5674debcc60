//! The `[nats]` settings every Busgate process reads ([`NatsSettings`]), and the async-nats
//! connect helper: the gateway's client for JetStream, KV and the admin's discovery requests.
//! Requests and replies travel on [`crate::wire`] instead, with the same settings.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::wire::Auth;
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
    /// go together, the ping settings. Files are read by [`connect`] and
    /// [`crate::wire::Connection::connect_with`].
    pub fn validate(&self) -> Result<(), Error> {
        crate::wire::parse_servers(&self.url)?;
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
            || crate::wire::parse_servers(&self.url)
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

/// Messages a client queues for its connection before a publish waits for room. async-nats'
/// default, 2,048, was reached by a burst of requests when they were published through it; a
/// burst of asynchronous submits (JetStream publishes) still can be: every one beyond it waits
/// inside its admission (about 2 KiB) rather than as a queued message (a few hundred bytes).
/// Queued messages are bounded by this count.
pub const CLIENT_CAPACITY: usize = 64 * 1024;

/// Connects with `settings` as `name`. The client reconnects forever and logs every state
/// change; when no server answers yet, this returns at once and the client keeps trying in the
/// background (callers report readiness from [`Client::connection_state`]).
///
/// Credentials in the URL (`user:password@`, `token@`: the first entry that has some) are given
/// to the client as options, and the servers without them: async-nats 0.51 does not send a
/// URL's credentials itself (the server answered "authorization violation"), and a URL without
/// them is one that no log of the client can leak.
pub async fn connect(settings: &NatsSettings, name: &str) -> Result<Client, Error> {
    settings.validate()?;
    let url = settings.url.as_str();
    let logged_url = redact_url(url);
    let servers = crate::wire::parse_servers(url)?;
    // One address per server: async-nats reads a string as one server, so a comma-separated
    // list given as a string fails to parse ("invalid port number").
    let plain: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|s| {
            let scheme = if s.tls { "tls" } else { "nats" };
            match s.host.contains(':') {
                true => format!("{scheme}://[{}]:{}", s.host, s.port),
                false => format!("{scheme}://{}:{}", s.host, s.port),
            }
        })
        .map(|address| address.parse())
        .collect::<Result<_, std::io::Error>>()
        .map_err(|e| Error::invalid("nats.url", e.to_string()))?;
    let mut options = match servers.iter().map(|s| &s.auth).find(|a| **a != Auth::None) {
        Some(Auth::User { user, pass }) => {
            ConnectOptions::with_user_and_password(user.clone(), pass.clone())
        }
        Some(Auth::Token(token)) => ConnectOptions::with_token(token.clone()),
        Some(Auth::None) | None => ConnectOptions::new(),
    };
    if !settings.creds_file.is_empty() {
        // Read here, so that a missing file is a clear error (async-nats' says only "io").
        let creds = std::fs::read_to_string(&settings.creds_file).map_err(|e| {
            Error::invalid(
                "nats.creds_file",
                format!("cannot read {}: {}", settings.creds_file, e.kind()),
            )
        })?;
        crate::wire::parse_creds(&creds)?;
        options = options
            .credentials(&creds)
            .map_err(|_| Error::invalid("nats.creds_file", "not a valid .creds file"))?;
    }
    if !settings.nkey_file.is_empty() {
        let seed = crate::wire::read_seed(&settings.nkey_file)?;
        options = options.nkey(seed);
    }
    if !settings.ca_file.is_empty() {
        options = options.add_root_certificates(PathBuf::from(&settings.ca_file));
    }
    if !settings.cert_file.is_empty() {
        options = options.add_client_certificate(
            PathBuf::from(&settings.cert_file),
            PathBuf::from(&settings.key_file),
        );
    }
    if settings.handshake_first {
        options = options.tls_first();
    }
    options
        .require_tls(settings.requires_tls())
        .ping_interval(settings.ping_interval)
        .name(name)
        .max_reconnects(None)
        .client_capacity(CLIENT_CAPACITY)
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let url = logged_url.clone();
            async move {
                match event {
                    Event::Connected => info!(%url, "nats connected"),
                    Event::Disconnected => warn!(%url, "nats disconnected, reconnecting"),
                    Event::LameDuckMode => warn!(%url, "nats server entering lame duck mode"),
                    Event::SlowConsumer(sid) => warn!(sid, "nats slow consumer, messages dropped"),
                    Event::Draining | Event::Closed => info!(%url, %event, "nats"),
                    Event::ServerError(e) => error!(%url, error = %e, "nats server error"),
                    Event::ClientError(e) => error!(%url, error = %e, "nats client error"),
                }
            }
        })
        .connect(plain)
        .await
        .map_err(|source| Error::Connect {
            url: redact_url(url),
            source,
        })
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

/// Whether the client is connected right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_survive_redaction() {
        let cases = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://u:s3cret@h:4222", "nats://***@h:4222"),
            ("nats://t0ken@h", "nats://***@h"),
            ("u:p%40ss@h:1, tls://a:b@c:2/", "***@h:1, tls://***@c:2/"),
            ("nats://u:p@ss@h", "nats://***@h"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
        let e = Error::Connect {
            url: redact_url("nats://u:s3cret@h"),
            source: async_nats::ConnectError::from(async_nats::ConnectErrorKind::Io),
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
