//! Idle keep-alive connections without hyper's buffers: a cleartext HTTP/1.1 connection that
//! waits for its next request is parked, the socket alone, and handed to a new hyper connection
//! when the client sends again.
//!
//! Why: hyper keeps a connection's write buffer (8 KiB, allocated with the connection) and its
//! read buffer (8 KiB, from the first read) for the connection's whole life, idle or not, and
//! neither can be smaller (`max_buf_size` is at least 8 KiB). With thousands of idle keep-alive
//! connections those buffers were most of the gateway's memory.
//!
//! How, without changing hyper:
//! - hyper arms its header timeout with the builder's timer each time it starts waiting for a
//!   head, and drops it once the head is parsed. [`HeadTimer`] is that timer: the wait for any
//!   head but a connection's first is a [`HeadWait`], which first fires [`PARK_AFTER`] into the
//!   wait (then runs on to the real deadline) and tells the connection's loop to park.
//! - hyper waits for a second head only once the previous exchange is over (read and written:
//!   hyper's "idle" keep-alive state), and an idle hyper connection closes at once on a graceful
//!   shutdown; `poll_without_shutdown` then hands the socket, the bytes read but not parsed, and
//!   the service back. Bytes read already (a partial head) are replayed to the next hyper
//!   connection at once; an empty socket waits, parked, until it is readable.
//! - Not parked: a connection whose answer is still being written out (the socket would not take
//!   it: [`Replay`] sees the write blocked), so nothing buffered is ever dropped.
//!
//! The header timeout keeps its meaning: a head must arrive within `http.header_timeout` of the
//! moment the server began waiting for it, parked or not (a parked connection that gets nothing
//! by then is closed without an answer, as hyper does), and the first head of every hyper
//! connection is held to the deadline of the wait it continues.
//!
//! Cost: no allocation, copy or lock per request on a busy connection (the wait's timer is
//! boxed once per head, as hyper's `TokioTimer` sleep was; one relaxed atomic add and an `Arc`
//! clone per head, a relaxed store per write). A connection idle past [`PARK_AFTER`] pays, on
//! its next request, for a new hyper connection (its two buffers, the boxed connection, two
//! `Arc`s). A new connection is parked too until its first bytes arrive (one `peek` more).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::response::Response;
use bytes::{Buf, Bytes};
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use busgate_shared::drain;

/// How long a kept-alive connection waits for its next request head before it is parked. Long
/// enough that a client sending request after request keeps its hyper connection (and pays
/// nothing); short enough that an idle connection holds its buffers only briefly.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// Serves one cleartext HTTP/1.1 connection with `service` and the `h1` builder's limits
/// (`header_timeout` is the builder's too), parking it whenever it is idle (see the module
/// docs), until it ends or `drain` is signalled (then its request in progress finishes, with
/// hyper's graceful shutdown, and an idle connection is closed).
pub async fn serve<S>(
    stream: TcpStream,
    service: S,
    h1: &http1::Builder,
    header_timeout: Duration,
    drain: drain::Watch,
) where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Unpin
        + Send
        + 'static,
    S::Future: Unpin + Send + 'static,
{
    serve_counted(
        stream,
        service,
        h1,
        header_timeout,
        drain,
        &AtomicUsize::new(0),
    )
    .await;
}

/// [`serve`], counting the times the connection is parked in `parks`.
async fn serve_counted<S>(
    stream: TcpStream,
    service: S,
    h1: &http1::Builder,
    header_timeout: Duration,
    drain: drain::Watch,
    parks: &AtomicUsize,
) where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Unpin
        + Send
        + 'static,
    S::Future: Unpin + Send + 'static,
{
    let signaled = drain.signaled();
    tokio::pin!(signaled);
    let (mut stream, mut service) = (stream, service);
    let mut unread = Bytes::new();
    let mut deadline = Instant::now() + header_timeout;
    loop {
        if unread.is_empty() {
            // Parked: the socket alone until the client sends, closes, or its time is up.
            let mut probe = [0u8; 1];
            let woke = tokio::select! {
                biased;
                _ = &mut signaled => return,
                woke = tokio::time::timeout_at(deadline, stream.peek(&mut probe)) => woke,
            };
            match woke {
                Ok(Ok(0)) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    debug!(error = %e, "connection ended");
                    return;
                }
                Err(_) => {
                    debug!("connection closed: no request within the header timeout");
                    return;
                }
            }
        }
        let heads = Arc::new(Heads::new(deadline));
        let mut builder = h1.clone();
        builder.timer(HeadTimer(heads.clone()));
        // Boxed: a parked connection's task then holds a pointer, not hyper's connection.
        let io = TokioIo::new(Replay::new(stream, unread, heads.clone()));
        let mut conn = Box::new(builder.serve_connection(io, service));
        let ended = std::future::poll_fn(|cx| {
            if let Poll::Ready(release) = signaled.as_mut().poll(cx) {
                return Poll::Ready(Ended::Drain(release));
            }
            if let Poll::Ready(result) = Pin::new(&mut *conn).poll(cx) {
                return Poll::Ready(Ended::Closed(result));
            }
            match heads.take_park() {
                Some(until) if !heads.write_blocked.load(Ordering::Relaxed) => {
                    // hyper is idle (waiting for a second or later head): this closes it at
                    // once, and hands the socket back.
                    Pin::new(&mut *conn).graceful_shutdown();
                    match conn.poll_without_shutdown(cx) {
                        Poll::Ready(Ok(())) => Poll::Ready(Ended::Park(until)),
                        Poll::Ready(Err(e)) => Poll::Ready(Ended::Closed(Err(e))),
                        Poll::Pending => Poll::Pending,
                    }
                }
                _ => Poll::Pending,
            }
        })
        .await;
        match ended {
            Ended::Park(until) => {
                parks.fetch_add(1, Ordering::Relaxed);
                let parts = conn.into_parts();
                let replay = parts.io.into_inner();
                stream = replay.stream;
                service = parts.service;
                // An empty `Bytes` from hyper still holds its whole read buffer: dropped.
                unread = if parts.read_buf.is_empty() {
                    Bytes::new()
                } else {
                    parts.read_buf
                };
                deadline = until;
            }
            Ended::Drain(release) => {
                Pin::new(&mut *conn).graceful_shutdown();
                if let Err(e) = Pin::new(&mut *conn).await {
                    debug!(error = %e, "connection ended");
                }
                drop(release);
                return;
            }
            Ended::Closed(result) => {
                if let Err(e) = result {
                    debug!(error = %e, "connection ended");
                }
                return;
            }
        }
    }
}

/// How serving one hyper connection ended.
enum Ended {
    /// Idle: parked, its head due by this deadline.
    Park(Instant),
    /// The drain was signalled (held until the request in progress is answered).
    Drain(drain::ReleaseShutdown),
    /// hyper closed it (the client did, `Connection: close`, an error, the header timeout).
    Closed(hyper::Result<()>),
}

/// What the timer of one hyper connection shares with the connection's loop.
#[derive(Debug)]
struct Heads {
    /// The deadline of this hyper connection's first head (the wait it continues).
    first: Instant,
    /// Heads hyper has begun to wait for.
    begun: AtomicU32,
    /// When a head wait asks to park: its deadline, as nanoseconds after `first` plus one
    /// (0: no request).
    park: AtomicU64,
    /// Whether the last write found the socket full: an answer is still going out.
    write_blocked: AtomicBool,
}

impl Heads {
    fn new(first: Instant) -> Self {
        Heads {
            first,
            begun: AtomicU32::new(0),
            park: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
        }
    }

    fn ask_park(&self, deadline: Instant) {
        let nanos = deadline.saturating_duration_since(self.first).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.park.store(nanos + 1, Ordering::Relaxed);
    }

    /// The deadline of the head wait that asked to park, once.
    fn take_park(&self) -> Option<Instant> {
        match self.park.swap(0, Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.first + Duration::from_nanos(nanos - 1)),
        }
    }
}

/// hyper's timer for one connection (see the module docs).
struct HeadTimer(Arc<Heads>);

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        // hyper's HTTP/1.1 server sleeps only for its header timeout.
        if self.0.begun.fetch_add(1, Ordering::Relaxed) == 0 {
            // The first head: hyper is not idle yet; held to the deadline of the wait it
            // continues.
            return TokioTimer::new().sleep_until(self.0.first.into_std());
        }
        let deadline = Instant::from_std(deadline);
        Box::pin(HeadWait {
            sleep: tokio::time::sleep_until(deadline.min(Instant::now() + PARK_AFTER)),
            deadline,
            asked: false,
            heads: self.0.clone(),
        })
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: std::time::Instant) {
        // Not a head wait of its own (hyper resets only a timer that has fired, then closes).
        *sleep = TokioTimer::new().sleep_until(new_deadline);
    }
}

pin_project_lite::pin_project! {
    /// hyper's header timeout for a head after the first: fires at `PARK_AFTER` once without
    /// resolving (asking the loop to park), then at the real deadline.
    struct HeadWait {
        #[pin]
        sleep: tokio::time::Sleep,
        deadline: Instant,
        asked: bool,
        heads: Arc<Heads>,
    }
}

impl Future for HeadWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        ready!(this.sleep.as_mut().poll(cx));
        if *this.asked || Instant::now() >= *this.deadline {
            return Poll::Ready(());
        }
        *this.asked = true;
        this.heads.ask_park(*this.deadline);
        this.sleep.as_mut().reset(*this.deadline);
        // Registers the waker for the real deadline; the loop sees the request when hyper
        // returns from this poll.
        this.sleep.poll(cx)
    }
}

impl Sleep for HeadWait {}

/// The socket, with bytes read by a previous hyper connection (a partial head) read again
/// first.
/// Its writes tell the loop whether an answer is still going out.
pub struct Replay {
    stream: TcpStream,
    unread: Bytes,
    heads: Arc<Heads>,
}

impl Replay {
    fn new(stream: TcpStream, unread: Bytes, heads: Arc<Heads>) -> Self {
        Replay {
            stream,
            unread,
            heads,
        }
    }

    fn wrote<T>(&self, result: Poll<T>) -> Poll<T> {
        self.heads
            .write_blocked
            .store(result.is_pending(), Ordering::Relaxed);
        result
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            if self.unread.is_empty() {
                // Releases the previous connection's read buffer it pointed into.
                self.unread = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    /// One connection served by [`serve`] (answers `ok`); returns the client side, the count
    /// of its parks so far, the drain and the connection's task.
    async fn served() -> (
        TcpStream,
        Arc<AtomicUsize>,
        drain::Signal,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let parks = Arc::new(AtomicUsize::new(0));
        let (signal, watch) = drain::channel();
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new()).header_read_timeout(TIMEOUT);
        let counted = parks.clone();
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(|_| {
                std::future::ready(Ok::<_, Infallible>(Response::new(Body::from("ok"))))
            });
            serve_counted(stream, service, &h1, TIMEOUT, watch, &counted).await;
        });
        (client, parks, signal, task)
    }

    /// Reads whole answers (`content-length: 2`) until `count` are in.
    async fn answers(client: &mut TcpStream, count: usize) -> String {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while seen.matches("\r\n\r\nok").count() < count {
            let n = tokio::time::timeout(TIMEOUT, client.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed after {seen:?}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        seen
    }

    /// Waits (bounded) until the connection has been parked `times` times.
    async fn parked(parks: &AtomicUsize, times: usize) {
        let waited = tokio::time::timeout(TIMEOUT, async {
            while parks.load(Ordering::Relaxed) < times {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "not parked: {}",
            parks.load(Ordering::Relaxed)
        );
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    /// A connection idle past `PARK_AFTER` is parked and its next request answered by a new
    /// hyper connection; pipelined requests are all answered, in order.
    #[tokio::test]
    async fn an_idle_connection_is_parked_and_served_again() {
        let (mut client, parks, _signal, _task) = served().await;
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        // A second request within PARK_AFTER keeps the hyper connection.
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        assert_eq!(parks.load(Ordering::Relaxed), 0);
        parked(&parks, 1).await;
        let pipelined = [GET, GET, GET].concat();
        client.write_all(&pipelined).await.expect("requests");
        let seen = answers(&mut client, 3).await;
        assert_eq!(seen.matches("HTTP/1.1 200").count(), 3, "{seen}");
        parked(&parks, 2).await;
    }

    /// A head split across the park (the first part read by the parked hyper connection) is
    /// answered whole: the bytes read are replayed.
    #[tokio::test]
    async fn a_head_begun_before_the_park_is_finished_after_it() {
        let (mut client, parks, _signal, _task) = served().await;
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.expect("line");
        // The client's pace, not synchronisation: the line arrives before the park.
        tokio::time::sleep(Duration::from_millis(20)).await;
        parked(&parks, 1).await;
        client.write_all(b"Host: x\r\n\r\n").await.expect("rest");
        let seen = answers(&mut client, 1).await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    }

    /// The header timeout holds across parks: a head that never completes is closed,
    /// unanswered, within the timeout of the moment the server began waiting for it.
    #[tokio::test]
    async fn a_parked_connection_still_has_the_header_timeout() {
        let (mut client, parks, _signal, _task) = served().await;
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        let since = std::time::Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\n").await.expect("line");
        parked(&parks, 1).await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(TIMEOUT * 2, client.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "no answer to a half-sent head");
        let waited = since.elapsed();
        assert!(waited < TIMEOUT + Duration::from_millis(500), "{waited:?}");
        assert!(waited >= TIMEOUT - Duration::from_millis(100), "{waited:?}");
    }

    /// At the drain a parked connection is closed and the drain completes.
    #[tokio::test]
    async fn a_parked_connection_is_closed_at_the_drain() {
        let (mut client, parks, signal, task) = served().await;
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        parked(&parks, 1).await;
        tokio::time::timeout(TIMEOUT, signal.drain())
            .await
            .expect("the drain completes");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("the connection ends")
            .expect("join");
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
    }

    /// At the drain a request in progress is answered (and told the connection closes) before
    /// the connection ends and releases the drain.
    #[tokio::test]
    async fn a_request_in_progress_at_the_drain_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let (signal, watch) = drain::channel();
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new()).header_read_timeout(TIMEOUT);
        let (called_tx, called) = tokio::sync::oneshot::channel::<()>();
        let called_tx = std::sync::Mutex::new(Some(called_tx));
        let task = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_| {
                if let Some(tx) = called_tx.lock().ok().and_then(|mut tx| tx.take()) {
                    let _ = tx.send(());
                }
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Infallible>(Response::new(Body::from("ok")))
                })
            });
            serve(stream, service, &h1, TIMEOUT, watch).await;
        });
        client.write_all(GET).await.expect("request");
        tokio::time::timeout(TIMEOUT, called)
            .await
            .expect("called")
            .expect("sent");
        let drained = tokio::spawn(signal.drain());
        let seen = answers(&mut client, 1).await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        assert!(seen.contains("connection: close"), "{seen}");
        tokio::time::timeout(TIMEOUT, drained)
            .await
            .expect("the drain completes")
            .expect("join");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("the connection ends")
            .expect("join");
    }

    /// An answer still going out when the wait for the next head reaches `PARK_AFTER` (the
    /// client reads slowly) is not cut short, and the connection is parked once it is out:
    /// a slow reader does not keep hyper's buffers for the whole header timeout.
    #[tokio::test]
    async fn a_connection_is_parked_once_a_slow_answer_is_out() {
        const BIG: usize = 16 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let parks = Arc::new(AtomicUsize::new(0));
        let (_signal, watch) = drain::channel();
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new()).header_read_timeout(TIMEOUT);
        let counted = parks.clone();
        let _task = tokio::spawn(async move {
            let service = hyper::service::service_fn(|_| {
                let body = Body::from(vec![b'x'; BIG]);
                std::future::ready(Ok::<_, Infallible>(Response::new(body)))
            });
            serve_counted(stream, service, &h1, TIMEOUT, watch, &counted).await;
        });
        client.write_all(GET).await.expect("request");
        // The client's pace, not synchronisation: it reads nothing until PARK_AFTER has passed.
        tokio::time::sleep(PARK_AFTER * 3).await;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::time::timeout(TIMEOUT, client.read(&mut buf))
                .await
                .expect("the answer in time")
                .expect("read");
            assert!(n > 0, "closed after {} bytes", seen.len());
            seen.extend_from_slice(&buf[..n]);
            let head = seen.windows(4).position(|w| w == b"\r\n\r\n");
            if head.is_some_and(|h| seen.len() >= h + 4 + BIG) {
                break;
            }
        }
        parked(&parks, 1).await;
    }

    /// A client that sends a byte of its head now and then, each time after `PARK_AFTER` (so
    /// that the connection parks and is served again), is still closed at the header timeout
    /// of the wait it began: a park never restarts the clock.
    #[tokio::test]
    async fn a_trickled_head_is_closed_at_the_header_timeout() {
        let (mut client, parks, _signal, _task) = served().await;
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        let since = std::time::Instant::now();
        client
            .write_all(b"GET / HTTP/1.1\r\nx-a: ")
            .await
            .expect("line");
        let mut buf = [0u8; 64];
        let closed = loop {
            assert!(since.elapsed() < TIMEOUT * 2, "still open");
            // The client's pace: a byte every PARK_AFTER and a half.
            match tokio::time::timeout(PARK_AFTER * 3 / 2, client.read(&mut buf)).await {
                Err(_) => {
                    if client.write_all(b"a").await.is_err() {
                        break since.elapsed();
                    }
                }
                Ok(Ok(0)) | Ok(Err(_)) => break since.elapsed(),
                Ok(Ok(n)) => panic!("an answer to a head never sent: {:?}", &buf[..n]),
            }
        };
        assert!(parks.load(Ordering::Relaxed) >= 1, "parked while trickling");
        assert!(closed < TIMEOUT + Duration::from_millis(500), "{closed:?}");
        assert!(closed >= TIMEOUT - Duration::from_millis(100), "{closed:?}");
    }

    /// After a park, a body the service did not read is never taken for a request: a body
    /// that has arrived whole is skipped (one answer, the connection kept), and the body of an
    /// `Expect: 100-continue` that was not asked for closes the connection after the answer.
    #[tokio::test]
    async fn an_unread_body_after_a_park_is_not_a_request() {
        let (mut client, parks, _signal, _task) = served().await;
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        parked(&parks, 1).await;
        let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let post = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        );
        client
            .write_all(&[post.as_bytes(), smuggled].concat())
            .await
            .expect("request");
        let seen = answers(&mut client, 1).await;
        assert_eq!(seen.matches("HTTP/1.1").count(), 1, "{seen}");
        parked(&parks, 2).await;
        client.write_all(GET).await.expect("request");
        let seen = answers(&mut client, 1).await;
        assert_eq!(seen.matches("HTTP/1.1").count(), 1, "{seen}");
        parked(&parks, 3).await;
        let expect = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        );
        client.write_all(expect.as_bytes()).await.expect("head");
        let seen = answers(&mut client, 1).await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        let _ = client.write_all(smuggled).await;
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(TIMEOUT, client.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    }

    /// A connection's own semantics hold across parks: HTTP/1.0 with `Connection: keep-alive`
    /// is kept and served again, `Connection: close` closes after its answer (not parked), and
    /// a client that half-closes a parked connection ends it.
    #[tokio::test]
    async fn keep_alive_and_close_hold_across_a_park() {
        let (mut client, parks, _signal, task) = served().await;
        let get10 = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        client.write_all(get10).await.expect("request");
        answers(&mut client, 1).await;
        parked(&parks, 1).await;
        client.write_all(get10).await.expect("request");
        let seen = answers(&mut client, 1).await;
        assert!(seen.starts_with("HTTP/1.0 200"), "{seen}");
        parked(&parks, 2).await;
        client.shutdown().await.expect("half-close");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("a half-closed parked connection ends")
            .expect("join");

        let (mut client, parks, _signal, task) = served().await;
        client.write_all(GET).await.expect("request");
        answers(&mut client, 1).await;
        parked(&parks, 1).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let seen = answers(&mut client, 1).await;
        assert!(seen.contains("connection: close"), "{seen}");
        tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("closed after its answer")
            .expect("join");
        assert_eq!(parks.load(Ordering::Relaxed), 1);
    }

    /// What a parked connection's task holds inline (hyper's connection is boxed apart).
    #[tokio::test]
    async fn a_connection_future_is_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        let (_signal, watch) = drain::channel();
        let h1 = http1::Builder::new();
        let service = hyper::service::service_fn(|_| {
            std::future::ready(Ok::<_, Infallible>(Response::new(Body::from("ok"))))
        });
        fn connection_size<S: hyper::service::HttpService<Incoming>>(_: &S) -> usize {
            std::mem::size_of::<http1::Connection<TokioIo<Replay>, S>>()
        }
        let conn_size = connection_size(&service);
        let served = serve(stream, service, &h1, TIMEOUT, watch);
        println!(
            "serve future {} bytes, hyper connection {conn_size} bytes",
            std::mem::size_of_val(&served)
        );
        assert!(std::mem::size_of_val(&served) < 1536);
    }
}
