//! The NATS client protocol as bytes: the operations a server sends, parsed off the read
//! buffer without copying ([`Msg`] parts are slices of it), and the `PUB`/`HPUB`/`SUB` lines
//! this client writes. No I/O but [`read_more`]; no state.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::PublishError;
use crate::wire::error::ConnError;

/// The longest control line accepted from a server (an `INFO` can be long in a large cluster).
const MAX_CONTROL_LINE: usize = 1024 * 1024;
/// What a read asks the socket for at least.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// The status the server sends to a request's reply subject when nobody serves its subject.
pub const NO_RESPONDERS: u16 = 503;

/// A message as it came off the wire. Its parts share the read buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    /// The subject it was published to.
    pub subject: Bytes,
    /// Where an answer goes, if anywhere.
    pub reply: Option<Bytes>,
    /// The header block (`NATS/1.0…` up to and including the blank line), if any.
    pub headers: Option<Bytes>,
    /// The payload.
    pub payload: Bytes,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msg")
            .field("subject", &String::from_utf8_lossy(&self.subject))
            .field(
                "reply",
                &self.reply.as_ref().map(|r| String::from_utf8_lossy(r)),
            )
            .field(
                "headers",
                &self.headers.as_ref().map(|h| String::from_utf8_lossy(h)),
            )
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Msg {
    /// The subject as text (subjects are ASCII; anything else reads as empty).
    pub fn subject(&self) -> &str {
        std::str::from_utf8(&self.subject).unwrap_or("")
    }

    /// The reply subject as text.
    pub fn reply(&self) -> Option<&str> {
        self.reply
            .as_deref()
            .and_then(|r| std::str::from_utf8(r).ok())
    }

    /// The status code of a status message ([`NO_RESPONDERS`], for example).
    pub fn status(&self) -> Option<u16> {
        status_of(self.headers.as_deref()?)
    }

    /// The first value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(self.headers.as_deref()?, name)
    }
}

/// The status of a header block: `NATS/1.0 503 No Responders` → 503.
fn status_of(block: &[u8]) -> Option<u16> {
    let line = block.split(|b| *b == b'\n').next()?;
    let rest = line.strip_prefix(b"NATS/1.0")?;
    let code = std::str::from_utf8(rest).ok()?.split_whitespace().next()?;
    code.parse().ok()
}

/// The first value of header `name` (case-insensitive, trimmed) in a header block.
pub fn header_value<'b>(block: &'b [u8], name: &str) -> Option<&'b str> {
    let text = std::str::from_utf8(block).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Whether `s` can be a subject or queue group: not empty, no whitespace or control
/// characters.
pub(crate) fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// The size of the header block for `headers`, checking that each is writable.
pub(crate) fn header_block_len(headers: &[(&str, &str)]) -> Result<usize, PublishError> {
    if headers.is_empty() {
        return Ok(0);
    }
    let mut len = b"NATS/1.0\r\n".len() + 2;
    for (name, value) in headers {
        let bad_name = name.is_empty() || name.bytes().any(|b| b <= b' ' || b == b':');
        if bad_name || value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(PublishError::InvalidHeader);
        }
        len += name.len() + 2 + value.len() + 2;
    }
    Ok(len)
}

pub(crate) fn put_u64(buf: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    buf.put_slice(crate::header::decimal(n, &mut digits).as_bytes());
}

/// Writes a `PUB` (or, with headers, `HPUB`) of `payload`; `header_len` is
/// [`header_block_len`] of `headers`.
pub(crate) fn write_pub(
    buf: &mut BytesMut,
    subject: &str,
    reply: Option<&str>,
    headers: &[(&str, &str)],
    header_len: usize,
    payload: &[u8],
) {
    buf.reserve(subject.len() + reply.map_or(0, str::len) + header_len + payload.len() + 40);
    buf.put_slice(if header_len > 0 { b"HPUB " } else { b"PUB " });
    buf.put_slice(subject.as_bytes());
    buf.put_u8(b' ');
    if let Some(reply) = reply {
        buf.put_slice(reply.as_bytes());
        buf.put_u8(b' ');
    }
    if header_len > 0 {
        put_u64(buf, header_len as u64);
        buf.put_u8(b' ');
    }
    put_u64(buf, (header_len + payload.len()) as u64);
    buf.put_slice(b"\r\n");
    if header_len > 0 {
        buf.put_slice(b"NATS/1.0\r\n");
        for (name, value) in headers {
            buf.put_slice(name.as_bytes());
            buf.put_slice(b": ");
            buf.put_slice(value.as_bytes());
            buf.put_slice(b"\r\n");
        }
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

/// Writes a `SUB` of `subject` (in `queue`, if any) as `sid`.
pub(crate) fn write_sub(buf: &mut BytesMut, sid: u64, subject: &str, queue: Option<&str>) {
    buf.put_slice(b"SUB ");
    buf.put_slice(subject.as_bytes());
    buf.put_u8(b' ');
    if let Some(queue) = queue {
        buf.put_slice(queue.as_bytes());
        buf.put_u8(b' ');
    }
    put_u64(buf, sid);
    buf.put_slice(b"\r\n");
}

/// What the server says in `INFO`, as far as this connection cares.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Info {
    #[serde(default)]
    pub server_id: String,
    #[serde(default)]
    pub max_payload: usize,
    #[serde(default)]
    pub headers: bool,
    #[serde(default)]
    pub tls_required: bool,
    #[serde(default)]
    pub tls_available: bool,
    #[serde(default)]
    pub ldm: bool,
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub connect_urls: Vec<String>,
}

/// A server operation, parsed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Msg { sid: u64, msg: Msg },
    Ping,
    Pong,
    Ok,
    Err(String),
    Info(String),
}
/// Parses one operation off the front of `buf`; `None` when more bytes are needed. A message
/// announcing more than `max_payload` bytes is a protocol error: the buffer never grows beyond
/// a control line plus `max_payload`.
pub(crate) fn parse_op(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Op>, ConnError> {
    let Some(eol) = find_crlf(buf) else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ConnError::Protocol("control line too long".into()));
        }
        return Ok(None);
    };
    let line = &buf[..eol];
    let (verb, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = match verb {
        b"MSG" | b"msg" | b"HMSG" | b"hmsg" => {
            let with_headers = verb.len() == 4;
            let args = std::str::from_utf8(args)
                .map_err(|_| ConnError::Protocol("non-UTF-8 message line".into()))?;
            let bad = || ConnError::Protocol(format!("bad message line {args:?}"));
            // At most five fields; no allocation per message.
            let mut parts = [""; 5];
            let mut count = 0;
            for part in args.split_ascii_whitespace() {
                *parts.get_mut(count).ok_or_else(bad)? = part;
                count += 1;
            }
            let num = |s: &str| s.parse::<usize>().map_err(|_| bad());
            // MSG subject sid [reply] total | HMSG subject sid [reply] header_len total
            let fixed = if with_headers { 4 } else { 3 };
            let (subject, sid, reply, header_len, total) = match (count, with_headers) {
                (n, false) if n == fixed => (parts[0], parts[1], None, 0, num(parts[2])?),
                (n, false) if n == fixed + 1 => {
                    (parts[0], parts[1], Some(parts[2]), 0, num(parts[3])?)
                }
                (n, true) if n == fixed => {
                    (parts[0], parts[1], None, num(parts[2])?, num(parts[3])?)
                }
                (n, true) if n == fixed + 1 => (
                    parts[0],
                    parts[1],
                    Some(parts[2]),
                    num(parts[3])?,
                    num(parts[4])?,
                ),
                _ => return Err(bad()),
            };
            if header_len > total {
                return Err(bad());
            }
            if total > max_payload {
                return Err(ConnError::Protocol(format!(
                    "a message of {total} bytes announced, over max_payload {max_payload}"
                )));
            }
            let sid: u64 = sid.parse().map_err(|_| bad())?;
            let whole = (eol + 4).checked_add(total).ok_or_else(bad)?;
            if buf.len() < whole {
                buf.reserve(whole - buf.len());
                return Ok(None);
            }
            // Offsets of the subject and reply within the line, to slice the frozen buffer.
            let line_start = buf.as_ptr() as usize;
            let offset = |s: &str| s.as_ptr() as usize - line_start;
            let (s_at, s_len) = (offset(subject), subject.len());
            let reply_at = reply.map(|r| (offset(r), r.len()));
            let head = buf.split_to(eol + 2).freeze();
            let mut body = buf.split_to(total + 2);
            if &body[total..] != b"\r\n" {
                return Err(ConnError::Protocol("message not followed by CRLF".into()));
            }
            body.truncate(total);
            let mut body = body.freeze();
            let headers = (header_len > 0).then(|| body.split_to(header_len));
            return Ok(Some(Op::Msg {
                sid,
                msg: Msg {
                    subject: head.slice(s_at..s_at + s_len),
                    reply: reply_at.map(|(at, len)| head.slice(at..at + len)),
                    headers,
                    payload: body,
                },
            }));
        }
        b"PING" | b"ping" => Op::Ping,
        b"PONG" | b"pong" => Op::Pong,
        b"+OK" | b"+ok" => Op::Ok,
        b"-ERR" | b"-err" => Op::Err(
            String::from_utf8_lossy(args)
                .trim()
                .trim_matches('\'')
                .to_owned(),
        ),
        b"INFO" | b"info" => Op::Info(String::from_utf8_lossy(args).into_owned()),
        other => {
            return Err(ConnError::Protocol(format!(
                "unknown operation {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    buf.advance(eol + 2);
    Ok(Some(op))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|b| *b == b'\r') {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at),
            Some(_) => from = at + 1,
            None => return None,
        }
    }
    None
}

/// Reads what the socket has into `buf` (at least [`READ_CHUNK`] / 4 bytes of room); the
/// end of the stream is an error.
pub(crate) async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<(), ConnError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    if reader.read_buf(buf).await? == 0 {
        return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_is_written_as_the_protocol_says() {
        let mut buf = BytesMut::new();
        let headers = [("Busgate-Deadline", "17"), ("traceparent", "00-ab")];
        let len = header_block_len(&headers).expect("valid");
        write_pub(
            &mut buf,
            "busgate.svc.a",
            Some("_INBOX.x.1.a"),
            &headers,
            len,
            b"{}",
        );
        let block = "NATS/1.0\r\nBusgate-Deadline: 17\r\ntraceparent: 00-ab\r\n\r\n";
        assert_eq!(len, block.len());
        let expected = format!(
            "HPUB busgate.svc.a _INBOX.x.1.a {} {}\r\n{block}{{}}\r\n",
            block.len(),
            block.len() + 2
        );
        assert_eq!(std::str::from_utf8(&buf).expect("valid"), expected);
        buf.clear();
        write_pub(&mut buf, "r", None, &[], 0, b"hi");
        assert_eq!(&buf[..], b"PUB r 2\r\nhi\r\n");
        assert_eq!(
            header_block_len(&[("a", "x\r\nb: y")]),
            Err(PublishError::InvalidHeader)
        );
        assert_eq!(
            header_block_len(&[("a:b", "x")]),
            Err(PublishError::InvalidHeader)
        );
        assert!(!valid_subject("a b") && !valid_subject("") && valid_subject("a.>"));
    }

    #[test]
    fn messages_parse_in_pieces_and_share_the_buffer() {
        let wire = b"MSG a.b 7 _INBOX.r 5\r\nhello\r\nHMSG x 9 12 14\r\nNATS/1.0\r\n\r\nok\r\nHMSG _INBOX.1.s 2 16 16\r\nNATS/1.0 503\r\n\r\n\r\nPING\r\n-ERR 'Permissions Violation'\r\n";
        // Fed a byte at a time, the parser waits for whole operations and yields each once.
        let mut buf = BytesMut::new();
        let mut ops = Vec::new();
        for byte in wire {
            buf.put_u8(*byte);
            while let Some(op) = parse_op(&mut buf, 1 << 20).expect("parses") {
                ops.push(op);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(ops.len(), 5, "{ops:?}");
        let Op::Msg { sid, msg } = &ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!(
            (*sid, msg.subject(), msg.reply()),
            (7, "a.b", Some("_INBOX.r"))
        );
        assert_eq!(&msg.payload[..], b"hello");
        assert_eq!(msg.status(), None);
        let Op::Msg { msg, .. } = &ops[1] else {
            panic!()
        };
        assert_eq!((msg.reply(), &msg.payload[..]), (None, &b"ok"[..]));
        assert_eq!(msg.status(), None);
        let Op::Msg { msg, .. } = &ops[2] else {
            panic!()
        };
        assert_eq!(msg.status(), Some(503));
        assert!(msg.payload.is_empty());
        assert_eq!(ops[3], Op::Ping);
        assert_eq!(ops[4], Op::Err("Permissions Violation".into()));
    }

    #[test]
    fn headers_are_read_by_name_and_bad_lines_are_errors() {
        let block = b"NATS/1.0\r\nBusgate-Deadline: 123\r\ntraceparent:00-x\r\n\r\n";
        assert_eq!(header_value(block, "busgate-deadline"), Some("123"));
        assert_eq!(header_value(block, "traceparent"), Some("00-x"));
        assert_eq!(header_value(block, "missing"), None);
        assert_eq!(
            status_of(b"NATS/1.0 408 Request Timeout\r\n\r\n"),
            Some(408)
        );
        for bad in [
            &b"MSG a b 5\r\n"[..],
            b"MSG a 1 x\r\n",
            b"HMSG a 1 9 5\r\n",
            b"NOPE\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                parse_op(&mut buf, 1 << 20).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut buf = BytesMut::from(&b"MSG a 1 2\r\nhiXX"[..]);
        assert!(
            parse_op(&mut buf, 1 << 20).is_err(),
            "payload must end in CRLF"
        );
    }

    #[test]
    fn a_message_larger_than_max_payload_is_refused_before_any_allocation() {
        // A 4 GiB announcement: refused at once, the buffer not grown.
        let mut buf = BytesMut::from(&b"MSG a 1 4294967296\r\n"[..]);
        let before = buf.capacity();
        assert!(matches!(
            parse_op(&mut buf, 1 << 20),
            Err(ConnError::Protocol(_))
        ));
        assert_eq!(buf.capacity(), before);
        let mut buf =
            BytesMut::from(&b"HMSG a 1 18446744073709551615 18446744073709551615\r\n"[..]);
        assert!(parse_op(&mut buf, 1 << 20).is_err(), "usize::MAX announced");
        let mut buf = BytesMut::from(&b"MSG a 1 99999999999999999999999\r\n"[..]);
        assert!(parse_op(&mut buf, 1 << 20).is_err(), "past usize");
        // Exactly the bound is fine.
        let mut buf = BytesMut::from(&b"MSG a 1 4\r\nabcd\r\n"[..]);
        assert!(matches!(parse_op(&mut buf, 4), Ok(Some(Op::Msg { .. }))));
    }

    mod parser_properties {
        use super::super::*;
        use proptest::prelude::*;

        /// One message: subject, reply, header block, payload.
        type Sent = (String, Option<String>, Vec<u8>, Vec<u8>);

        /// A stream of valid server operations and the messages in it.
        fn stream() -> impl Strategy<Value = Vec<Sent>> {
            let subject = "[a-z]{1,8}(\\.[a-z0-9]{1,8}){0,3}";
            let msg = (
                subject,
                proptest::option::of("_INBOX\\.[a-z0-9]{1,10}"),
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,10}", 0..3),
            )
                .prop_map(|(s, r, payload, headers)| {
                    let block = if headers.is_empty() {
                        Vec::new()
                    } else {
                        let mut b = b"NATS/1.0\r\n".to_vec();
                        for h in headers {
                            b.extend_from_slice(h.as_bytes());
                            b.extend_from_slice(b"\r\n");
                        }
                        b.extend_from_slice(b"\r\n");
                        b
                    };
                    (s, r, block, payload)
                });
            proptest::collection::vec(msg, 1..12)
        }

        fn encode(msgs: &[Sent]) -> Vec<u8> {
            let mut wire = Vec::new();
            for (i, (s, r, block, payload)) in msgs.iter().enumerate() {
                let reply = r.as_ref().map(|r| format!(" {r}")).unwrap_or_default();
                let line = if block.is_empty() {
                    format!("MSG {s} {i}{reply} {}\r\n", payload.len())
                } else {
                    format!(
                        "HMSG {s} {i}{reply} {} {}\r\n",
                        block.len(),
                        block.len() + payload.len()
                    )
                };
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(block);
                wire.extend_from_slice(payload);
                wire.extend_from_slice(b"\r\nPING\r\n");
            }
            wire
        }

        proptest! {
            #[test]
            fn random_splits_give_the_same_messages(
                msgs in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
            ) {
                let wire = encode(&msgs);
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
                points.push(wire.len());
                points.sort_unstable();
                let mut buf = BytesMut::new();
                let mut from = 0;
                let mut got = Vec::new();
                for to in points {
                    buf.extend_from_slice(&wire[from..to]);
                    from = to;
                    while let Some(op) = parse_op(&mut buf, 1 << 20).expect("valid stream") {
                        if let Op::Msg { sid, msg } = op {
                            got.push((sid, msg));
                        }
                    }
                }
                prop_assert!(buf.is_empty());
                prop_assert_eq!(got.len(), msgs.len());
                for ((sid, msg), (i, (s, r, block, payload))) in got.iter().zip(msgs.iter().enumerate()) {
                    prop_assert_eq!(*sid, i as u64);
                    prop_assert_eq!(msg.subject(), s.as_str());
                    prop_assert_eq!(msg.reply(), r.as_deref());
                    prop_assert_eq!(msg.headers.as_deref().unwrap_or(&[]), &block[..]);
                    prop_assert_eq!(&msg.payload[..], &payload[..]);
                }
            }

            #[test]
            fn garbage_never_panics_nor_grows_past_the_bound(
                chunks in proptest::collection::vec(
                    prop_oneof![
                        proptest::collection::vec(any::<u8>(), 0..64),
                        "(MSG|HMSG|PING|PONG|INFO|-ERR|\\+OK) [ -~]{0,30}\r\n".prop_map(String::into_bytes),
                        "(MSG|HMSG) a [0-9]{1,3}( [0-9]{1,25}){1,3}\r\n".prop_map(String::into_bytes),
                    ],
                    0..20,
                ),
            ) {
                let max = 4096;
                let mut buf = BytesMut::new();
                'feed: for chunk in chunks {
                    buf.extend_from_slice(&chunk);
                    loop {
                        match parse_op(&mut buf, max) {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            // A real connection ends here and starts afresh.
                            Err(_) => { buf.clear(); continue 'feed; }
                        }
                    }
                    // Waiting for a message never reserves more than its bound (plus its
                    // line, CRLFs and the garbage fed so far).
                    prop_assert!(buf.capacity() <= max + 64 * 20 + 1024 + 4 * 64, "{}", buf.capacity());
                }
            }
        }
    }
}
