//! hyper's client connection (`hyper::client::conn::http1`) as a keep-alive `GET` pool: the
//! A/B control of the adapters' own client ([`crate::http1`]), chosen by
//! `BUSGATE_ADAPTER_HTTP_CLIENT=hyper` for benchmarking only ([`from_env`]) and measured by
//! `tests/perf/ab-http-client.sh`. Issue 24 keeps a hand-written client only where it is
//! ≥ 15 % ahead of the library in the same run. With two runtime threads per adapter (before
//! 2026-12-07) it was not (the merge: hyper 1.08× the requests per second at 1.08× the CPU
//! per request), and hyper's was the default for a day; with the one thread workers now run
//! by default it is, in two runs (hyper 0.82× the requests per second at 1.43–1.46× the CPU
//! on the merge, 0.84× at 1.42–1.50× on one source): every request is handed to hyper's
//! connection task and back on the one event loop.
//!
//! Driven the same way as `http1`: each call takes an idle connection from a stack (or opens
//! one), sends its request and reads the whole body on the caller's task, and puts the
//! connection back when hyper says it can serve again. What hyper adds is its connection task
//! (spawned per connection, as hyper requires) and the hand-off of each request to it.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http1::{Error, Response, MAX_BODY};

/// The variable that chooses the adapters' client for plain-HTTP upstreams (benchmarking).
pub const CLIENT_VAR: &str = "BUSGATE_ADAPTER_HTTP_CLIENT";

/// True when [`CLIENT_VAR`] asks for hyper's client (`hyper`): Busgate's own is the default.
pub fn from_env() -> bool {
    wants_hyper(std::env::var(CLIENT_VAR).ok().as_deref())
}

fn wants_hyper(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("hyper"))
}

/// Keep-alive hyper connections to one `host:port`.
pub struct Pool {
    addr: String,
    authority: HeaderValue,
    agent: HeaderValue,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    max_idle: usize,
    connect_timeout: Duration,
}

impl Pool {
    /// A pool for `host:port`; `authority` is the `Host` header as the upstream URL wrote it.
    pub fn new(
        addr: String,
        authority: &str,
        max_idle: usize,
        connect_timeout: Duration,
    ) -> Result<Self, Error> {
        let authority = HeaderValue::from_str(authority)
            .map_err(|_| Error::Protocol("authority is not header text"))?;
        let agent = HeaderValue::from_str(&format!("busgate-worker/{}", env!("CARGO_PKG_VERSION")))
            .map_err(|_| Error::Protocol("user agent is not header text"))?;
        Ok(Pool {
            addr,
            authority,
            agent,
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect_timeout,
        })
    }

    /// `GET target` with `extra` headers and a body of at most `max_body` bytes (and at most
    /// [`MAX_BODY`]), as [`crate::http1::Pool::get_limited`].
    pub async fn get_limited(
        &self,
        target: &str,
        extra: &[(&str, &str)],
        max_body: usize,
    ) -> Result<Response, Error> {
        let max_body = max_body.min(MAX_BODY);
        if let Some(sender) = self.take_idle() {
            match self.exchange(sender, target, extra, max_body).await {
                Ok(r) => return Ok(r),
                // Closed while idle (nothing came back): once more on a fresh connection.
                Err(Exchange::Stale) => {}
                Err(Exchange::Failed(e)) => return Err(e),
            }
        }
        let sender = self.connect().await?;
        match self.exchange(sender, target, extra, max_body).await {
            Ok(r) => Ok(r),
            Err(Exchange::Stale) => Err(Error::Protocol("connection closed")),
            Err(Exchange::Failed(e)) => Err(e),
        }
    }

    async fn exchange(
        &self,
        mut sender: SendRequest<Empty<Bytes>>,
        target: &str,
        extra: &[(&str, &str)],
        max_body: usize,
    ) -> Result<Response, Exchange> {
        let mut request = Request::get(target)
            .body(Empty::new())
            .map_err(|_| Exchange::Failed(Error::Protocol("bad request target")))?;
        let headers = request.headers_mut();
        headers.insert(HOST, self.authority.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, self.agent.clone());
        for (name, value) in extra {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(Exchange::Failed(Error::Protocol("bad header")));
            };
            headers.insert(name, value);
        }
        if sender.ready().await.is_err() {
            return Err(Exchange::Stale);
        }
        let response = match sender.send_request(request).await {
            Ok(r) => r,
            // Not a byte of a response: the connection was closed (or reset) under us.
            Err(e) if e.is_canceled() || e.is_closed() || e.is_incomplete_message() => {
                return Err(Exchange::Stale)
            }
            Err(e) => return Err(Exchange::Failed(Error::Io(io::Error::other(e)))),
        };
        let status = response.status().as_u16();
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_body as u64) {
            return Err(Exchange::Failed(Error::TooLarge));
        }
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Exchange::Failed(Error::TooLarge)
                } else {
                    Exchange::Failed(Error::Io(io::Error::other(e)))
                }
            })?
            .to_bytes();
        if !sender.is_closed() {
            self.put_idle(sender);
        }
        Ok(Response { status, body })
    }

    fn take_idle(&self) -> Option<SendRequest<Empty<Bytes>>> {
        loop {
            let sender = self.idle.lock().ok()?.pop()?;
            if !sender.is_closed() {
                return Some(sender);
            }
        }
    }

    fn put_idle(&self, sender: SendRequest<Empty<Bytes>>) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>, Error> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| Error::ConnectTimeout)?
            .map_err(Error::Connect)?;
        stream.set_nodelay(true).map_err(Error::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Connect(io::Error::other(e)))?;
        // The connection's task: it ends when the last sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// How an exchange ended badly.
enum Exchange {
    /// Closed before any response byte: worth one retry when the connection was pooled.
    Stale,
    Failed(Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn hyper_unless_busgate_is_asked_for() {
        assert!(wants_hyper(Some("hyper")));
        assert!(wants_hyper(Some(" HYPER ")));
        assert!(!wants_hyper(None));
        assert!(!wants_hyper(Some("")));
        assert!(!wants_hyper(Some("busgate")));
    }

    /// A server that answers every request on a connection with `response`, then closes
    /// after `per_conn` requests.
    async fn server(response: &'static [u8], per_conn: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn keep_alive_calls_reuse_a_connection_and_a_closed_one_is_replaced() {
        let addr = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}",
            2,
        )
        .await;
        let pool = Pool::new(addr, "svc", 8, Duration::from_secs(2)).expect("pool");
        for _ in 0..5 {
            let r = pool
                .get_limited("/order/1", &[("Busgate-Request-Id", "r1")], 1024)
                .await
                .expect("call");
            assert_eq!(r.status, 200);
            assert_eq!(&r.body[..], b"{}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_too_large_by_length_or_by_bytes() {
        let addr = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
            8,
        )
        .await;
        let pool = Pool::new(addr, "svc", 8, Duration::from_secs(2)).expect("pool");
        let e = pool.get_limited("/x", &[], 4).await.expect_err("too large");
        assert!(matches!(e, Error::TooLarge), "{e}");
        let addr = server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
            8,
        )
        .await;
        let pool = Pool::new(addr, "svc", 8, Duration::from_secs(2)).expect("pool");
        let e = pool.get_limited("/x", &[], 4).await.expect_err("too large");
        assert!(matches!(e, Error::TooLarge), "{e}");
        let r = pool.get_limited("/x", &[], 10).await.expect("fits");
        assert_eq!(&r.body[..], b"0123456789");
    }
}
