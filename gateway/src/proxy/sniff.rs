//! The sniff stage: reads the first bytes of an intercepted connection, bounded in size and in
//! time, and says which protocol it speaks: a TLS ClientHello (with its SNI and ALPN), HTTP/1.x,
//! the HTTP/2 prior-knowledge preface, or something else.
//!
//! The bytes are read, not peeked (a peek cannot wait for more data without spinning), and
//! handed back with the verdict so the next stage replays them through [`Rewind`].
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    time::Instant,
};

/// A ClientHello is at most a few KiB; this bounds a hostile one split over many records.
const MAX_SNIFF: usize = 32 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// What the first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Tls(ClientHello),
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
    /// Anything else, including a client that sent nothing before the timeout (a
    /// server-speaks-first protocol) and a TLS handshake that does not parse.
    Other(OtherReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OtherReason {
    /// The bytes are not TLS or HTTP.
    Unknown,
    /// Nothing (or not enough to tell) arrived in time.
    Silent,
    /// The client closed before saying enough.
    Closed,
    /// It starts like TLS but the ClientHello is malformed or too large.
    BadTls(String),
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protocol::Tls(h) => write!(f, "tls (sni {})", h.sni.as_deref().unwrap_or("none")),
            Protocol::Http1 => f.write_str("http/1"),
            Protocol::H2 => f.write_str("h2c"),
            Protocol::Other(OtherReason::Unknown) => f.write_str("unknown protocol"),
            Protocol::Other(OtherReason::Silent) => f.write_str("client sent nothing"),
            Protocol::Other(OtherReason::Closed) => f.write_str("client closed early"),
            Protocol::Other(OtherReason::BadTls(e)) => write!(f, "malformed TLS: {e}"),
        }
    }
}

/// The parts of a ClientHello that routing and policy use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// Lower-cased server name.
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

impl ClientHello {
    pub fn offers(&self, proto: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == proto)
    }
}

/// The verdict and the bytes read to reach it.
#[derive(Debug)]
pub struct Sniffed {
    pub protocol: Protocol,
    pub prefix: Bytes,
}

/// Reads until the protocol is known, `MAX_SNIFF` bytes were read, the client closes, or
/// `limit` passes.
pub async fn sniff<S: AsyncRead + Unpin>(io: &mut S, limit: Duration) -> io::Result<Sniffed> {
    let deadline = Instant::now() + limit;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok(Sniffed {
                protocol,
                prefix: buf.freeze(),
            });
        }
        if buf.len() >= MAX_SNIFF {
            return Ok(undecided(buf, format!("in {MAX_SNIFF} bytes")));
        }
        buf.reserve(1024);
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        let reason = match read {
            Ok(Ok(0)) => OtherReason::Closed,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_) if !buf.is_empty() => {
                return Ok(undecided(buf, format!("within {limit:?}")));
            }
            Err(_) => OtherReason::Silent,
        };
        return Ok(Sniffed {
            protocol: Protocol::Other(reason),
            prefix: buf.freeze(),
        });
    }
}

/// The verdict on an opening still undecided when the sniff must end (its size or its time
/// is up): what could still be a ClientHello is a malformed one, and what could still be an
/// HTTP request (blank lines, a long request line, a method sent a byte at a time) is HTTP,
/// for the HTTP server to read with its own limits. Taking either for another protocol would
/// let a slow client splice a call past its policy on a service with `tcp: allow`.
fn undecided(buf: BytesMut, when: String) -> Sniffed {
    let protocol = if buf.first() == Some(&0x16) {
        Protocol::Other(OtherReason::BadTls(format!(
            "no complete ClientHello {when}"
        )))
    } else {
        Protocol::Http1
    };
    Sniffed {
        protocol,
        prefix: buf.freeze(),
    }
}

/// Some(verdict) once the bytes decide it; None while more are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    let first = *buf.first()?;
    if first == 0x16 {
        return client_hello(buf);
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Protocol::H2);
    }
    if H2_PREFACE.starts_with(buf) {
        return None;
    }
    // What HTTP/1 servers read past before a method (RFC 9112 §2.2's blank lines; nginx and
    // Node skip any CR or LF, Python's server any whitespace) is no reason to take the
    // opening for another protocol, which a service with `tcp: allow` would splice past its
    // per-call policy.
    let line = match buf.iter().position(|b| !is_space(*b)) {
        Some(start) => &buf[start..],
        None => return None,
    };
    let mut maybe = false;
    for m in METHODS {
        if line.starts_with(m) {
            return Some(Protocol::Http1);
        }
        maybe |= m.starts_with(line);
    }
    match request_line(line) {
        Some(true) => Some(Protocol::Http1),
        None => None,
        Some(false) if maybe => None,
        Some(false) => Some(Protocol::Other(OtherReason::Unknown)),
    }
}

/// Whitespace as some HTTP/1 server reads it between or before the words of a request line:
/// Python's `str.split` takes all of these (its server reads the line as Latin-1).
fn is_space(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c | 0x1c..=0x1f | 0x85 | 0xa0
    )
}

/// Whether `line` opens like an HTTP/1 request, with any method and any spacing a server might
/// accept: Some(true) once its first line names a version (`HTTP/`), Some(false) once it ends
/// without one or holds a byte no request line has before it (binary protocols), None while it
/// could still be one. A verdict never changes as more bytes come. A whole first line without
/// `HTTP/` is one no server takes for a request (bar HTTP/0.9's `GET /x`, which the method
/// list catches): memcached's `get key`, Redis's `*1` and SSH's banner stay theirs.
fn request_line(line: &[u8]) -> Option<bool> {
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let first = &line[..end];
    let version = memchr::memmem::find(first, b"HTTP/");
    let binary = first
        .iter()
        .position(|&b| (b < 0x20 && !is_space(b)) || b == 0x7f);
    match (version, binary) {
        (Some(v), b) if b.is_none_or(|b| b > v) => Some(true),
        (_, Some(_)) => Some(false),
        (None, None) if end < line.len() => Some(false),
        _ => None,
    }
}

/// Parses the ClientHello out of however many TLS records carry it; None until complete.
fn client_hello(buf: &[u8]) -> Option<Protocol> {
    let bad = |why: &str| Some(Protocol::Other(OtherReason::BadTls(why.to_string())));
    // Handshake messages may span records: gather the handshake bytes first.
    let mut hs = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            break;
        }
        if rest[0] != 0x16 {
            return bad("a non-handshake record before the ClientHello ended");
        }
        if rest[1] != 0x03 {
            return bad("unknown record version");
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 16 * 1024 + 256 {
            return bad("bad record length");
        }
        if rest.len() < 5 + len {
            // Parse what is here: enough if the hello fits in the first record part.
            hs.extend_from_slice(&rest[5..]);
            break;
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if hs.len() >= 4 {
            let body = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs.len() >= 4 + body {
                break;
            }
        }
    }
    if hs.len() < 4 {
        return None;
    }
    if hs[0] != 1 {
        return bad("the first handshake message is not a ClientHello");
    }
    let body_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
    if body_len > MAX_SNIFF {
        return bad("ClientHello too large");
    }
    if hs.len() < 4 + body_len {
        return None;
    }
    match parse_hello(&hs[4..4 + body_len]) {
        Some(h) => Some(Protocol::Tls(h)),
        None => bad("truncated or inconsistent ClientHello"),
    }
}

fn parse_hello(mut b: &[u8]) -> Option<ClientHello> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if b.len() < n {
            return None;
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Some(head)
    }
    fn len8<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = *take(b, 1)?.first()? as usize;
        take(b, n)
    }
    fn len16<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = take(b, 2)?;
        take(b, u16::from_be_bytes([n[0], n[1]]) as usize)
    }
    take(&mut b, 2 + 32)?; // version, random
    len8(&mut b)?; // session id
    len16(&mut b)?; // cipher suites
    len8(&mut b)?; // compression methods
    let mut hello = ClientHello::default();
    if b.is_empty() {
        return Some(hello);
    }
    let mut exts = len16(&mut b)?;
    while !exts.is_empty() {
        let ty = take(&mut exts, 2)?;
        let mut data = len16(&mut exts)?;
        match u16::from_be_bytes([ty[0], ty[1]]) {
            0 => {
                let mut list = len16(&mut data)?;
                while !list.is_empty() {
                    let kind = take(&mut list, 1)?[0];
                    let name = len16(&mut list)?;
                    if kind == 0 {
                        let name = std::str::from_utf8(name).ok()?;
                        hello.sni = Some(name.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let mut list = len16(&mut data)?;
                while !list.is_empty() {
                    hello.alpn.push(len8(&mut list)?.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// A stream whose first bytes were already read: replays them, then reads the stream.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello, as rustls writes it.
    fn hello_bytes(sni: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Arbitrary first bytes: a protocol, "need more", never a panic.
            #[test]
            fn arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..3000)) {
                let _ = classify(&b);
            }

            /// A real ClientHello with bytes overwritten (lengths, extensions, SNI) and cut.
            #[test]
            fn damaged_client_hellos(
                at in 0usize..600,
                with in proptest::collection::vec(any::<u8>(), 1..8),
                cut in 0usize..700,
            ) {
                let mut b = hello_bytes("api.example.com", &[b"h2"]);
                let at = at % b.len();
                let end = (at + with.len()).min(b.len());
                b[at..end].copy_from_slice(&with[..end - at]);
                b.truncate(cut.max(1).min(b.len()));
                let _ = classify(&b);
            }
        }
    }

    #[test]
    fn client_hello_sni_and_alpn() {
        let b = hello_bytes("API.Example.com", &[b"h2", b"http/1.1"]);
        let Some(Protocol::Tls(h)) = classify(&b) else {
            panic!("not tls: {:?}", classify(&b));
        };
        assert_eq!(h.sni.as_deref(), Some("api.example.com"));
        assert!(h.offers(b"h2") && h.offers(b"http/1.1"));
        // Every proper prefix asks for more.
        for n in 1..b.len() {
            assert_eq!(classify(&b[..n]), None, "prefix of {n} bytes");
        }
    }

    #[test]
    fn hello_split_over_two_records_parses() {
        let b = hello_bytes("split.example", &[]);
        let body = &b[5..];
        let (a, c) = body.split_at(40);
        let mut two = Vec::new();
        for part in [a, c] {
            two.extend_from_slice(&[0x16, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        let Some(Protocol::Tls(h)) = classify(&two) else {
            panic!("not tls");
        };
        assert_eq!(h.sni.as_deref(), Some("split.example"));
    }

    #[test]
    fn http_and_other() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        let http = Some(Protocol::Http1);
        let other = Some(Protocol::Other(OtherReason::Unknown));
        for (opening, want) in [
            // Blank lines or other space before the request line, methods the list does not
            // name, any spacing and version: HTTP, as a server that reads past or accepts them
            // sees it.
            (&b"\r\n\nPOST /x HTTP/1.1\r\n"[..], &http),
            (b"post /x HTTP/1.1\r\n", &http),
            (b"PURGE /x HTTP/1.0\n", &http),
            (b"\r\nPROPFIND * HTTP/1.1\r\nHost: x", &http),
            (b"post /x HTTP/1.1", &http),
            (b"\rPOST /x HTTP/1.1\r\n", &http),
            (b"\r\rGET / HTTP/1.1\r\n", &http),
            (b" \tpost\t/x\tHTTP/1.1\r\n", &http),
            (b"post  /x  HTTP/1.2 \r\n", &http),
            (b"post /x HTTP/2.0\r\n", &http),
            (b"\r\n", &None),
            (b"\n\nPO", &None),
            (b"post /x HTT", &None),
            // What other protocols open with stays theirs, decided at the first byte or line
            // end that shows it.
            (b"get key\r\n", &other),
            (b"SET k v\r\n", &other),
            (b"*1\r\n$4\r\nPING\r\n", &other),
            (b"AMQP\x00\x00\x09\x01", &other),
            (b"SSH-2.0-OpenSSH_9.6\r\n", &other),
            (b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n", &other),
        ] {
            assert_eq!(
                &classify(opening),
                want,
                "{:?}",
                String::from_utf8_lossy(opening)
            );
        }
        assert_eq!(classify(b"POS"), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Protocol::H2));
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH\r\n"),
            Some(Protocol::Other(OtherReason::Unknown))
        );
        assert!(matches!(
            classify(&[0x16, 0x03, 0x01, 0x00, 0x05, 2, 0, 0, 1, 0]),
            Some(Protocol::Other(OtherReason::BadTls(_)))
        ));
    }

    /// An opening that could still be HTTP or TLS when the sniff's time is up is not taken for
    /// another protocol (which `tcp: allow` would splice raw): a method sent a byte at a time
    /// is HTTP, half a ClientHello a malformed one.
    #[tokio::test]
    async fn a_slow_opening_is_not_another_protocol() {
        use tokio::io::AsyncWriteExt;
        for (sent, http) in [
            (&b"GE"[..], true),
            (b"\r\n\r\n", true),
            (b"post /v1/x HTT", true),
            (&[0x16, 0x03, 0x01], false),
        ] {
            let (mut a, mut b) = tokio::io::duplex(64);
            b.write_all(sent).await.expect("write");
            let s = sniff(&mut a, Duration::from_millis(50))
                .await
                .expect("sniff");
            if http {
                assert_eq!(s.protocol, Protocol::Http1, "{sent:?}");
            } else {
                assert!(
                    matches!(s.protocol, Protocol::Other(OtherReason::BadTls(_))),
                    "{sent:?}: {:?}",
                    s.protocol
                );
            }
            assert_eq!(&s.prefix[..], sent);
        }
    }

    #[tokio::test]
    async fn silent_client_times_out_and_rewind_replays() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let s = sniff(&mut a, Duration::from_millis(50))
            .await
            .expect("sniff");
        assert_eq!(s.protocol, Protocol::Other(OtherReason::Silent));
        use tokio::io::AsyncWriteExt;
        b.write_all(b"GET /x HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let s = sniff(&mut a, Duration::from_secs(1)).await.expect("sniff");
        assert_eq!(s.protocol, Protocol::Http1);
        let mut r = Rewind::new(s.prefix, a);
        drop(b);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.expect("read");
        assert_eq!(&all, b"GET /x HTTP/1.1\r\n\r\n");
    }
}
