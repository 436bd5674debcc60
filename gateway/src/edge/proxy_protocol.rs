//! PROXY protocol v2 (HAProxy's `send-proxy-v2`, cloud load balancers): the binary header a
//! trusted proxy sends before anything else on a connection, naming the client it accepted.
//!
//! Read only from a peer in `http.trusted_proxies` with `http.proxy_protocol` on; there the
//! header is required (a proxy that sends it always does), within the header timeout, and only
//! its fixed part and the addresses are used: TLVs are skipped, at most [`MAX_LEN`] bytes.
//! Version 1 (the text form) is not taken.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The largest address block and TLVs taken (the protocol allows 65,535).
pub const MAX_LEN: usize = 1024;

/// Why a header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection failed or ended before the header was whole.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY protocol v2 header.
    #[error("the connection does not start with a PROXY protocol v2 header")]
    Signature,
    /// A version or command this parser does not know.
    #[error("PROXY header version/command {0:#04x} is not v2 LOCAL or PROXY")]
    Command(u8),
    /// The address block is longer than [`MAX_LEN`] or shorter than its family needs.
    #[error("PROXY header length {0} is not acceptable")]
    Length(usize),
}

/// Reads one v2 header from `io`: `Some(source)` for a proxied TCP connection, `None` for
/// the proxy's own connections (`LOCAL`, e.g. health checks) and other families (UDP, UNIX),
/// where the peer stays the client.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut fixed = [0u8; 16];
    io.read_exact(&mut fixed).await?;
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    let (version_command, family) = (fixed[12], fixed[13]);
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_LEN {
        return Err(ProxyHeaderError::Length(len));
    }
    let mut block = [0u8; MAX_LEN];
    let block = &mut block[..len];
    io.read_exact(block).await?;
    match version_command {
        // LOCAL: the proxy speaking for itself.
        0x20 => return Ok(None),
        0x21 => {}
        other => return Err(ProxyHeaderError::Command(other)),
    }
    parse_addresses(family, block)
}

/// The source address of a PROXY command's address block.
fn parse_addresses(family: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            if block.len() < 12 {
                return Err(ProxyHeaderError::Length(block.len()));
            }
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        // TCP over IPv6.
        0x21 => {
            if block.len() < 36 {
                return Err(ProxyHeaderError::Length(block.len()));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port(32),
            )))
        }
        // UNSPEC, UDP, UNIX: nothing to take.
        _ => Ok(None),
    }
}

/// A v2 PROXY header for a TCP connection from `source` to `destination` (tests, benchmarks).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
        let mut io = bytes;
        read_header(&mut io).await
    }

    /// The source of an IPv4 and an IPv6 header, the rest of the stream left unread.
    #[tokio::test]
    async fn headers_name_their_source() {
        let source: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
        let destination: SocketAddr = "10.0.0.2:8443".parse().expect("addr");
        let mut bytes = encode(source, destination);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut io = &bytes[..];
        assert_eq!(read_header(&mut io).await.expect("parsed"), Some(source));
        assert_eq!(io, b"GET / HTTP/1.1\r\n");
        let source6: SocketAddr = "[2001:db8::1]:5000".parse().expect("addr");
        let destination6: SocketAddr = "[2001:db8::2]:443".parse().expect("addr");
        assert_eq!(
            parse(&encode(source6, destination6)).await.expect("parsed"),
            Some(source6)
        );
    }

    /// LOCAL names no client; a wrong signature, an unknown command, a block too long or
    /// too short for its family, and a header cut short are refused.
    #[tokio::test]
    async fn what_is_not_a_proxied_header_is_refused() {
        let header = encode(
            "192.0.2.1:1".parse().expect("addr"),
            "192.0.2.2:2".parse().expect("addr"),
        );
        let mut local = header.clone();
        local[12] = 0x20;
        assert_eq!(parse(&local).await.expect("local"), None);
        let mut bad = header.clone();
        bad[0] = b'G';
        assert!(matches!(
            parse(&bad).await,
            Err(ProxyHeaderError::Signature)
        ));
        let mut v1 = header.clone();
        v1[12] = 0x11;
        assert!(matches!(
            parse(&v1).await,
            Err(ProxyHeaderError::Command(0x11))
        ));
        let mut long = header.clone();
        long[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            parse(&long).await,
            Err(ProxyHeaderError::Length(_))
        ));
        let mut short = header[..16].to_vec();
        short[14..16].copy_from_slice(&4u16.to_be_bytes());
        short.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(
            parse(&short).await,
            Err(ProxyHeaderError::Length(4))
        ));
        assert!(matches!(
            parse(&header[..20]).await,
            Err(ProxyHeaderError::Io(_))
        ));
    }
}
