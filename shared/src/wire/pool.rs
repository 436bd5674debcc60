//! The server pool: the URL list in random order (so that the clients of a cluster spread over
//! its servers), then the servers the cluster announces in `INFO connect_urls`; and which server
//! to try next.

use tracing::debug;

use crate::wire::options::{parse_servers, Server};

/// Servers kept in the pool at most (announced ones included).
const MAX_SERVERS: usize = 256;

/// The servers to connect to, in the order they are tried.
pub(crate) struct Pool {
    servers: Vec<Server>,
    /// The server tried next (an index into `servers`, modulo its length).
    next: usize,
}

impl Pool {
    /// A pool of `servers`, shuffled.
    pub(crate) fn new(mut servers: Vec<Server>) -> Pool {
        rand::seq::SliceRandom::shuffle(&mut servers[..], &mut rand::rng());
        Pool { servers, next: 0 }
    }

    /// The server to try now, and whether it is the last of a round over every server (the
    /// caller waits before the next round when the whole round failed).
    pub(crate) fn next(&mut self) -> (Server, bool) {
        let server = self.servers[self.next % self.servers.len()].clone();
        self.next += 1;
        (server, self.next.is_multiple_of(self.servers.len()))
    }

    /// The servers as `host:port`, in the pool's order.
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("{}:{}", s.host, s.port))
            .collect()
    }

    /// Adds the servers of `connect_urls` that `from` announced, with `from`'s credentials and
    /// TLS; one announced by address has its certificate checked against `from`'s name.
    pub(crate) fn learn(&mut self, connect_urls: &[String], from: &Server) {
        for url in connect_urls {
            let Ok(found) = parse_servers(url) else {
                debug!(url, "ignoring an announced server that does not parse");
                continue;
            };
            for mut server in found {
                if self.servers.len() >= MAX_SERVERS {
                    return;
                }
                let known = self
                    .servers
                    .iter()
                    .any(|s| s.host == server.host && s.port == server.port);
                if !known {
                    server.auth = from.auth.clone();
                    server.tls = from.tls;
                    if server.host.parse::<std::net::IpAddr>().is_ok() {
                        server.tls_name = from.tls_name.clone().or_else(|| {
                            from.host
                                .parse::<std::net::IpAddr>()
                                .is_err()
                                .then(|| from.host.clone())
                        });
                    }
                    debug!(host = %server.host, port = server.port, "nats server announced");
                    self.servers.push(server);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_servers_join_the_pool_with_the_announcers_credentials_and_name() {
        let from = parse_servers("tls://u:p@nats-a.example:1")
            .expect("url")
            .remove(0);
        let mut pool = Pool::new(vec![from.clone()]);
        let announced = [
            "10.0.0.2:4222".into(),
            "nats-b.example:4222".into(),
            "nats-a.example:1".into(),
            "not a url".into(),
        ];
        pool.learn(&announced, &from);
        assert_eq!(
            pool.addresses(),
            ["nats-a.example:1", "10.0.0.2:4222", "nats-b.example:4222"]
        );
        assert!(pool.servers.iter().all(|s| s.tls && s.auth == from.auth));
        assert_eq!(pool.servers[1].tls_name.as_deref(), Some("nats-a.example"));
        assert_eq!(pool.servers[2].tls_name, None);
        // Every server once per round, the last one ending it.
        let round: Vec<bool> = (0..3).map(|_| pool.next().1).collect();
        assert_eq!(round, [false, false, true]);
    }
}
