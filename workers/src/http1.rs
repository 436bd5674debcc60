//! Busgate's own HTTP/1.1 `GET` client: the adapters' client for plain-HTTP upstreams. It is
//! ≥ 15 % ahead of hyper's client connection driven the same way ([`crate::hyper1`], its A/B
//! control, `BUSGATE_ADAPTER_HTTP_CLIENT=hyper`) on the one runtime thread workers run by
//! default: in two runs of `tests/perf/ab-http-client.sh` hyper served 0.82× the requests per
//! second at 1.43–1.46× the CPU on the merge (issue 24). Its framing is property-tested
//! (any framing split anywhere, mangled and cut heads).
//!
//! Each call runs on its caller's task: it takes an idle keep-alive connection (or opens one),
//! writes the request, reads and frames the response (`Content-Length`, chunked, or until
//! close) and puts the connection back when it can be reused. A general client (reqwest over
//! hyper) hands every request to a connection task and back, parses a URL and builds header
//! maps per request; profiled under load, that was more than half of an adapter's CPU.
//!
//! A call dropped half-way drops its connection with it, so a connection is never reused in an
//! unknown state. A pooled connection the server closed while idle is noticed before any
//! response byte arrives, and the request is sent once more on a fresh connection (`GET` is
//! idempotent). Callers bound a call with their own deadline.

use std::io;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The largest response body accepted at all; a call may set a smaller limit (an adapter's is
/// what its NATS server's `max_payload` can carry).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// Headers a response may carry.
const MAX_HEADERS: usize = 64;
/// What a connection's read buffer starts with.
const READ_BUFFER: usize = 4 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("bad response: {0}")]
    Protocol(&'static str),
    #[error("response body larger than the limit")]
    TooLarge,
}

/// A response: status and whole body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// Keep-alive connections to one `host:port`.
pub struct Pool {
    /// Where to connect, `host:port`.
    addr: String,
    /// The request lines after the request line, ending with the blank line.
    fixed_headers: String,
    idle: Mutex<Vec<Conn>>,
    max_idle: usize,
    connect_timeout: Duration,
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// How an exchange on a connection ended badly.
enum Failure {
    /// The connection was closed or reset before any response byte: worth one retry when the
    /// connection came from the pool.
    Stale(Error),
    Failed(Error),
}

impl Pool {
    /// A pool for `host:port`; `authority` is the `Host` header as the upstream URL wrote it.
    pub fn new(addr: String, authority: &str, max_idle: usize, connect_timeout: Duration) -> Self {
        let fixed_headers = format!(
            "Host: {authority}\r\nAccept: application/json\r\nUser-Agent: busgate-worker/{}\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        Pool {
            addr,
            fixed_headers,
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect_timeout,
        }
    }

    /// [`Pool::get_limited`] with the largest limit.
    #[cfg(test)]
    async fn get(&self, target: &str, extra: &[(&str, &str)]) -> Result<Response, Error> {
        self.get_limited(target, extra, MAX_BODY).await
    }

    /// `GET target` (path and query), with `extra` headers (names and values must be valid
    /// header text: the caller's own constants and ids), and a body of at most `max_body` bytes
    /// (and at most [`MAX_BODY`]): a larger one is [`Error::TooLarge`] as soon as its length or
    /// its bytes say so, not read to its end.
    pub async fn get_limited(
        &self,
        target: &str,
        extra: &[(&str, &str)],
        max_body: usize,
    ) -> Result<Response, Error> {
        let max_body = max_body.min(MAX_BODY);
        let request = self.encode(target, extra);
        if let Some(mut conn) = self.take_idle() {
            match conn.exchange(&request, max_body).await {
                Ok(done) => return Ok(self.keep(conn, done)),
                // Closed while idle: try once more on a fresh connection.
                Err(Failure::Stale(_)) => {}
                Err(Failure::Failed(e)) => return Err(e),
            }
        }
        let mut conn = self.connect().await?;
        match conn.exchange(&request, max_body).await {
            Ok(done) => Ok(self.keep(conn, done)),
            Err(Failure::Stale(e) | Failure::Failed(e)) => Err(e),
        }
    }

    /// The response of an exchange; its connection goes back to the pool if it can serve again.
    fn keep(&self, conn: Conn, (response, reusable): (Response, bool)) -> Response {
        if reusable {
            self.put_idle(conn);
        }
        response
    }

    /// Idle connections right now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    fn encode(&self, target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let extra_len: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        let mut out = Vec::with_capacity(16 + target.len() + extra_len + self.fixed_headers.len());
        out.extend_from_slice(b"GET ");
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in extra {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(self.fixed_headers.as_bytes());
        out
    }

    /// The most recently used idle connection that is still quiet.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let conn = self.idle.lock().ok()?.pop()?;
            if conn.is_quiet() {
                return Some(conn);
            }
        }
    }

    fn put_idle(&self, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| Error::ConnectTimeout)?
            .map_err(Error::Connect)?;
        stream.set_nodelay(true).map_err(Error::Connect)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
        })
    }
}

impl Conn {
    /// True when an idle connection has nothing to read: not closed by the server, and no
    /// unsolicited bytes (such as a 408 before closing) that would be taken for the next
    /// response. Without pending readiness tokio answers this without a system call.
    fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `request` and reads its response; the flag says whether the connection can be
    /// used again.
    async fn exchange(
        &mut self,
        request: &[u8],
        max_body: usize,
    ) -> Result<(Response, bool), Failure> {
        if let Err(e) = self.stream.write_all(request).await {
            return Err(Failure::Stale(Error::Io(e)));
        }
        let head = self.read_head().await?;
        let body = self
            .read_body(&head, max_body)
            .await
            .map_err(Failure::Failed)?;
        let response = Response {
            status: head.status,
            body,
        };
        Ok((response, head.keep_alive && self.buf.is_empty()))
    }

    /// Reads until a complete final (non-1xx) response head, and consumes it.
    async fn read_head(&mut self) -> Result<Head, Failure> {
        let mut received_any = false;
        loop {
            match parse_head(&self.buf) {
                Ok(Some((head, len))) => {
                    self.buf.advance(len);
                    if (100..200).contains(&head.status) {
                        // An interim response (100 Continue and the like): the final one follows.
                        continue;
                    }
                    return Ok(head);
                }
                Ok(None) => {}
                Err(e) => return Err(Failure::Failed(e)),
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Failure::Failed(Error::Protocol("response head too large")));
            }
            match self.read_more().await {
                Ok(0) if !received_any => {
                    return Err(Failure::Stale(Error::Protocol("connection closed")))
                }
                Ok(0) => {
                    return Err(Failure::Failed(Error::Protocol(
                        "connection closed in the response head",
                    )))
                }
                Ok(_) => received_any = true,
                Err(e) if !received_any => return Err(Failure::Stale(Error::Io(e))),
                Err(e) => return Err(Failure::Failed(Error::Io(e))),
            }
        }
    }

    async fn read_body(&mut self, head: &Head, max_body: usize) -> Result<Bytes, Error> {
        match head.framing {
            Framing::Empty => Ok(Bytes::new()),
            Framing::Length(len) => {
                let len = usize::try_from(len).map_err(|_| Error::TooLarge)?;
                if len > max_body {
                    return Err(Error::TooLarge);
                }
                while self.buf.len() < len {
                    self.buf.reserve(len - self.buf.len());
                    if self.read_more().await? == 0 {
                        return Err(Error::Protocol("connection closed in the body"));
                    }
                }
                Ok(self.buf.split_to(len).freeze())
            }
            Framing::Chunked => self.read_chunked(max_body).await,
            Framing::UntilClose => {
                // The bytes read with the head count too, also when nothing follows them.
                while self.buf.len() <= max_body {
                    if self.read_more().await? == 0 {
                        return Ok(self.buf.split().freeze());
                    }
                }
                Err(Error::TooLarge)
            }
        }
    }

    async fn read_chunked(&mut self, max_body: usize) -> Result<Bytes, Error> {
        let mut body = BytesMut::new();
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.buf.advance(len);
                        break size;
                    }
                    // A size line (with extensions) never takes a head's worth of bytes.
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                        return Err(Error::Protocol("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => self.read_required().await?,
                    Err(_) => return Err(Error::Protocol("bad chunk size")),
                }
            };
            if size == 0 {
                break;
            }
            let size = usize::try_from(size).map_err(|_| Error::TooLarge)?;
            if size > max_body - body.len() {
                return Err(Error::TooLarge);
            }
            // The chunk and its CRLF.
            while self.buf.len() < size + 2 {
                self.read_required().await?;
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(Error::Protocol("chunk not followed by CRLF"));
            }
            self.buf.advance(size + 2);
        }
        // Trailer fields, if any, up to the blank line.
        loop {
            match self.buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.buf.advance(2);
                    return Ok(body.freeze());
                }
                Some(end) => self.buf.advance(end + 2),
                None if self.buf.len() > MAX_HEAD => {
                    return Err(Error::Protocol("chunked trailer too large"))
                }
                None => self.read_required().await?,
            }
        }
    }

    /// Reads more bytes; `Ok(0)` at end of stream.
    async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_BUFFER);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads more bytes where the response cannot end yet.
    async fn read_required(&mut self) -> Result<(), Error> {
        match self.read_more().await? {
            0 => Err(Error::Protocol("connection closed in the body")),
            _ => Ok(()),
        }
    }
}

/// What a response head says.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

#[derive(Debug, PartialEq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Parses a response head at the start of `buf`: the head and its length, or `None` when more
/// bytes are needed. Framing follows RFC 9112 section 6.3 for a response to `GET`.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Protocol("too many response headers"))
        }
        Err(_) => return Err(Error::Protocol("malformed response head")),
    };
    let status = response.code.ok_or(Error::Protocol("no status code"))?;
    let mut keep_alive = response.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Error::Protocol("bad Content-Length"))?;
            if length.is_some_and(|earlier| earlier != value) {
                return Err(Error::Protocol("conflicting Content-Length"));
            }
            length = Some(value);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only chunked as the final coding frames the body; any other coding is read
            // until close.
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                keep_alive = false;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0)
                {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if chunked {
        // Both framings at once is how responses get smuggled: chunked wins, and the
        // connection is not trusted again (RFC 9112, section 6.3).
        if length.is_some() {
            keep_alive = false;
        }
        Framing::Chunked
    } else if let Some(len) = length {
        Framing::Length(len)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some((
        Head {
            status,
            framing,
            keep_alive,
        },
        len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    #[test]
    fn heads_are_framed_as_rfc_9112_says() {
        let head = |text: &str| {
            parse_head(text.as_bytes())
                .expect("valid")
                .expect("complete")
        };
        let (h, len) = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"a\":1}");
        assert_eq!(len, 39);
        assert_eq!(
            h,
            Head {
                status: 200,
                framing: Framing::Length(12),
                keep_alive: true
            }
        );
        let (h, _) = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let (h, _) = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        let (h, _) = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let (h, _) = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let (h, _) = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let (h, _) =
            head("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((h.status, h.keep_alive), (404, false));
        let (h, _) = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n");
        assert!(h.keep_alive);

        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
            .expect("valid")
            .is_none());
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "SMTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                parse_head(bad.as_bytes()).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    /// A one-connection-at-a-time server: for each request it reads the head, records it and
    /// writes the next canned answer; `None` closes the connection instead of answering. It
    /// ends, returning the request heads, once every answer is used.
    async fn server(
        answers: Vec<Option<&'static str>>,
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut answers = answers.into_iter();
            'accept: while answers.len() > 0 {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let mut stream = tokio::io::BufReader::new(stream);
                loop {
                    let mut request = String::new();
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            continue 'accept;
                        }
                        request.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    seen.push(request);
                    match answers.next() {
                        Some(Some(answer)) => {
                            let wrote = stream.get_mut().write_all(answer.as_bytes()).await;
                            if wrote.is_err() || answer.contains("Connection: close") {
                                continue 'accept;
                            }
                        }
                        Some(None) => continue 'accept,
                        None => break 'accept,
                    }
                }
            }
            seen
        });
        (addr, task)
    }

    fn pool(addr: &str) -> Pool {
        Pool::new(
            addr.to_owned(),
            "upstream.test:80",
            4,
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn a_keep_alive_connection_serves_every_framing_in_turn() {
        let (addr, server) = server(vec![
            Some("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"a\":1}"),
            Some("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\n{\"b\r\n4\r\n\":2}\r\n0\r\nX-Trailer: t\r\n\r\n"),
            Some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Some("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"c\":3}"),
        ])
        .await;
        let pool = pool(&addr);
        let r = pool
            .get("/order/1?x=1", &[("Busgate-Request-Id", "r-1")])
            .await
            .expect("first");
        assert_eq!((r.status, &r.body[..]), (200, &b"{\"a\":1}"[..]));
        assert_eq!(pool.idle_count(), 1);
        let r = pool.get("/order/2", &[]).await.expect("chunked");
        assert_eq!((r.status, &r.body[..]), (200, &b"{\"b\":2}"[..]));
        let r = pool.get("/order/3", &[]).await.expect("404");
        assert_eq!((r.status, r.body.len()), (404, 0));
        let r = pool.get("/order/4", &[]).await.expect("until close");
        assert_eq!((r.status, &r.body[..]), (200, &b"{\"c\":3}"[..]));
        assert_eq!(pool.idle_count(), 0, "a closed connection is not pooled");
        drop(pool);
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 4, "all four on one connection: {seen:?}");
        assert!(
            seen[0].starts_with("GET /order/1?x=1 HTTP/1.1\r\nBusgate-Request-Id: r-1\r\nHost: upstream.test:80\r\n"),
            "{:?}",
            seen[0]
        );
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_while_idle_is_replaced_once() {
        // The server answers, then drops the connection after reading the second request
        // without answering; the pool retries on a new connection.
        let (addr, server) = server(vec![
            Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
            None,
            Some("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[1,2]"),
        ])
        .await;
        let pool = pool(&addr);
        pool.get("/a", &[]).await.expect("first");
        let r = pool
            .get("/b", &[])
            .await
            .expect("retried on a fresh connection");
        assert_eq!(&r.body[..], b"[1,2]");
        drop(pool);
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[1].starts_with("GET /b ") && seen[2].starts_with("GET /b "));
    }

    #[tokio::test]
    async fn unsolicited_bytes_after_a_response_are_not_taken_for_the_next_one() {
        let (addr, server) = server(vec![
            Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"),
            Some("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n[2]"),
        ])
        .await;
        let pool = pool(&addr);
        assert_eq!(&pool.get("/a", &[]).await.expect("first").body[..], b"{}");
        let r = pool.get("/b", &[]).await.expect("second");
        assert_eq!((r.status, &r.body[..]), (200, &b"[2]"[..]));
        drop(pool);
        assert_eq!(server.await.expect("server").len(), 2);
    }

    #[tokio::test]
    async fn a_fresh_connection_is_not_retried_and_broken_responses_are_errors() {
        let (addr, _server) = server(vec![None]).await;
        let err = pool(&addr).get("/a", &[]).await.expect_err("closed");
        assert!(
            matches!(err, Error::Protocol("connection closed")),
            "{err:?}"
        );

        let (addr, _server) = server(vec![Some(
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
        )])
        .await;
        let pool = pool(&addr);
        let call = pool.get("/a", &[]);
        // The server keeps the connection open without sending the rest: the caller's own
        // deadline ends the call, and the half-read connection is not pooled.
        let timed_out = tokio::time::timeout(Duration::from_millis(200), call).await;
        assert!(timed_out.is_err());
        assert_eq!(pool.idle_count(), 0);

        let (addr, _server) = server(vec![Some(
            "HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n",
        )])
        .await;
        assert!(matches!(pool_get(&addr).await, Err(Error::TooLarge)));

        let (addr, _server) = server(vec![Some("HTTP/1.1 OK\r\n\r\n")]).await;
        assert!(matches!(pool_get(&addr).await, Err(Error::Protocol(_))));

        let endless_size_line: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
                "x".repeat(MAX_HEAD + 1024)
            )
            .into_boxed_str(),
        );
        let (addr, _server) = server(vec![Some(endless_size_line)]).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), pool_get(&addr)).await;
        assert!(
            matches!(answer, Ok(Err(Error::Protocol("chunk size line too long")))),
            "{answer:?}"
        );

        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = unused.local_addr().expect("addr").to_string();
        drop(unused);
        assert!(matches!(pool_get(&addr).await, Err(Error::Connect(_))));
    }

    /// A limit below the body's size is refused however the body is framed.
    #[tokio::test]
    async fn a_call_limit_refuses_larger_bodies_in_every_framing() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n[1,2,3,4,5]",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n[1,2,3\r\n5\r\n,4,5]\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1,2,3,4,5]",
        ] {
            let (addr, _server) = server(vec![Some(answer), Some(answer)]).await;
            let pool = pool(&addr);
            let refused = pool.get_limited("/a", &[], 10).await;
            assert!(matches!(refused, Err(Error::TooLarge)), "{answer:?}: {refused:?}");
            let taken = pool.get_limited("/a", &[], 11).await.expect(answer);
            assert_eq!(&taken.body[..], b"[1,2,3,4,5]");
        }
    }

    /// A small deterministic generator (xorshift64*): the property tests below are
    /// reproducible from their seed without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A response with `body` framed by length, chunked (random chunk sizes, extensions and
    /// trailers) or until close; the last one closes its connection.
    fn framed(rng: &mut Rng, body: &[u8]) -> (Vec<u8>, bool) {
        match rng.below(3) {
            0 => {
                let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
                out.extend_from_slice(body);
                (out, false)
            }
            1 => {
                let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                let mut rest = body;
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len().min(300));
                    let ext = if rng.below(4) == 0 { ";a=b" } else { "" };
                    out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                    out.extend_from_slice(&rest[..n]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                let trailer = if rng.below(3) == 0 { "T: 1\r\n" } else { "" };
                out.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
                (out, false)
            }
            _ => {
                let mut out = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                out.extend_from_slice(body);
                (out, true)
            }
        }
    }

    /// Property: whatever the framing and however the bytes are split into writes, the body
    /// read is the body sent, and keep-alive connections carry the next response intact.
    #[tokio::test]
    async fn any_framing_split_anywhere_reads_the_body_sent() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let cases: Vec<(Vec<u8>, Vec<u8>, bool, u64)> = (0..150)
            .map(|_| {
                let len = rng.below(2000);
                let body: Vec<u8> = (0..len)
                    .map(|_| b"{}[]\"ab1, \r\n"[rng.below(12)])
                    .collect();
                let (wire, closes) = framed(&mut rng, &body);
                (body, wire, closes, rng.next())
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let answers: Vec<(Vec<u8>, bool, u64)> = cases
            .iter()
            .map(|(_, wire, closes, seed)| (wire.clone(), *closes, *seed))
            .collect();
        tokio::spawn(async move {
            let mut answers = answers.into_iter().peekable();
            while answers.peek().is_some() {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let _ = stream.set_nodelay(true);
                let mut stream = tokio::io::BufReader::new(stream);
                for (wire, closes, seed) in answers.by_ref() {
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut split = Rng(seed | 1);
                    let mut rest = &wire[..];
                    while !rest.is_empty() {
                        let n = 1 + split.below(rest.len().min(64));
                        let _ = stream.get_mut().write_all(&rest[..n]).await;
                        let _ = stream.get_mut().flush().await;
                        if split.below(4) == 0 {
                            tokio::task::yield_now().await;
                        }
                        rest = &rest[n..];
                    }
                    if closes {
                        break;
                    }
                }
            }
        });
        let pool = pool(&addr);
        for (i, (body, _, _, _)) in cases.iter().enumerate() {
            let r = pool
                .get("/p", &[])
                .await
                .unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(&r.body[..], &body[..], "case {i}");
        }
    }

    /// Property: no head, however mangled, makes the parser panic; a valid head cut anywhere
    /// is "incomplete", never an error or a different head.
    #[test]
    fn mangled_and_cut_heads_never_panic_and_cuts_are_incomplete() {
        let mut rng = Rng(0x51_7cc1_b727_220a);
        let valid = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\n";
        for cut in 0..valid.len() {
            assert!(
                matches!(parse_head(&valid[..cut]), Ok(None)),
                "cut at {cut}"
            );
        }
        let alphabet = b"HTTP/1.0 2045:\r\nContent-LengthTransfer-Encodingchunked, close\x00\xff";
        for _ in 0..20_000 {
            let mut head = valid.to_vec();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(head.len());
                match rng.below(3) {
                    0 => head[at] = alphabet[rng.below(alphabet.len())],
                    1 => head.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ => {
                        head.remove(at);
                    }
                }
            }
            let _ = parse_head(&head);
        }
    }

    async fn pool_get(addr: &str) -> Result<Response, Error> {
        pool(addr).get("/a", &[]).await
    }
}
