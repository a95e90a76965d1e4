//! The forward stage's own HTTP/1.1 client, for the plain-text upstream connection that an
//! intercepted HTTP/1 connection keeps (see [`super::pool::Http1Slot`]).
//!
//! A request is written and its answer's head read on the calling task, and the body is read
//! by the response body itself: no connection task, and no channel between it and the caller.
//! hyper's client connection did the same through a spawned task and two channels per
//! request, which cost more CPU per call than the rest of the forward stage.
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked when the last
//! transfer coding is chunked; otherwise one agreed Content-Length; otherwise until the
//! upstream closes. Any other shape (conflicting lengths, a bad chunk, a head too large) is an
//! error, never a guess, so one call's bytes cannot be read as the next call's answer.
use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use smallvec::SmallVec;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::pool::{BodyError, ProxyBody, lock};

/// The longest answer head read; a longer one is an error.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers an answer or its trailers may have.
const MAX_HEADERS: usize = 128;
/// Request bodies up to this size go out in the same write as the head, and are kept so that
/// the request can go again on a new connection if the kept one turns out closed.
const INLINE_BODY: u64 = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the upstream closed the connection in the middle of the answer")]
    ClosedMidAnswer,
    #[error("malformed answer from the upstream: {0}")]
    Malformed(String),
    #[error("the upstream's answer head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the request body failed: {0}")]
    RequestBody(BodyError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A kept plain-text connection to one upstream, with what was read past the last answer.
pub struct Upstream1 {
    io: TcpStream,
    buf: BytesMut,
    /// Carried a request before: when it turns out closed, the request may go again.
    reused: bool,
}

impl Upstream1 {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            reused: false,
        }
    }

    /// Whether the upstream closed (or sent something unasked) while the connection was kept.
    /// Only the readiness tokio already has is consulted: no system call.
    pub fn looks_closed(&self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more into the buffer, room made for `expect` bytes (up to a bound) so that a
    /// large body comes in few reads; Ok(0) at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, expect: u64) -> Poll<io::Result<usize>> {
        let want = expect.clamp(16 * 1024, 256 * 1024) as usize;
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
        // Through AsyncRead rather than try_read: a read that leaves room in the buffer tells
        // tokio the socket is drained, so neither the next read nor `looks_closed` pays a
        // recv(2) that can only say EAGAIN.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, 0)).await
    }
}

/// Where a finished connection goes back to for the next request.
pub type Slot = Arc<Mutex<Option<Upstream1>>>;

/// What happened to a request written on a connection: answered, or the connection was kept
/// from an earlier request and closed before any answer byte, so the upstream never took the
/// request: it may go again, as it was, on a new connection.
pub enum Sent {
    Answered(Response<H1Body>),
    Retry(Encoded),
}

/// The request's head and, when small and complete, its body, encoded for the wire.
pub struct Encoded {
    bytes: Vec<u8>,
    /// The body still to send, when it did not fit in `bytes`.
    rest: Option<ProxyBody>,
    chunked: bool,
    head_only: bool,
}

/// Encodes `req` (origin-form, with its Host, hop-by-hop headers already gone).
pub async fn encode(req: Request<ProxyBody>) -> Result<Encoded, H1Error> {
    let (parts, mut body) = req.into_parts();
    let head_only = parts.method == Method::HEAD;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_fields(&mut out, &parts.headers);
    let exact = body.size_hint().exact();
    let empty = body.is_end_stream() || exact == Some(0);
    let chunked = !empty && exact.is_none();
    match exact {
        _ if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Some(n) if !empty => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        _ if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n")
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    let rest = match exact {
        _ if empty => None,
        Some(n) if n <= INLINE_BODY => {
            let start = out.len();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(H1Error::RequestBody)?.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            if (out.len() - start) as u64 != n {
                return Err(H1Error::RequestBody(
                    "the request body's length differs from its Content-Length".into(),
                ));
            }
            None
        }
        _ => Some(body),
    };
    Ok(Encoded {
        bytes: out,
        rest,
        chunked,
        head_only,
    })
}

/// Writes `req` on `conn` and reads the answer's head. The answer's body reads from the
/// connection and puts it back in `slot` once it ended cleanly.
pub async fn send(mut conn: Upstream1, mut req: Encoded, slot: &Slot) -> Result<Sent, H1Error> {
    let reused = conn.reused;
    conn.reused = true;
    let replay = req.rest.is_none();
    if let Err(e) = conn.io.write_all(&req.bytes).await {
        return if reused && replay {
            Ok(Sent::Retry(req))
        } else {
            Err(e.into())
        };
    }
    if let Some(body) = req.rest.take() {
        write_body(&mut conn.io, body, req.chunked).await?;
    }
    let head = loop {
        match parse_head(&mut conn.buf)? {
            Some(h) if h.status.is_informational() => continue,
            Some(h) => break h,
            None => {}
        }
        let empty = conn.buf.is_empty();
        match conn.fill().await {
            Ok(0) | Err(_) if empty && reused && replay => return Ok(Sent::Retry(req)),
            Ok(0) if empty => return Err(H1Error::ClosedBeforeAnswer),
            Ok(0) => return Err(H1Error::ClosedMidAnswer),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(H1Error::HeadTooLarge);
        }
    };
    let framing = framing(&head, req.head_only)?;
    let keep = head.keep_alive && !matches!(framing, Framing::Close);
    let mut resp = Response::new(H1Body {
        conn: Some(conn),
        framing,
        keep,
        slot: slot.clone(),
    });
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    resp.body_mut().finish_if_done();
    Ok(Sent::Answered(resp))
}

/// Header (or trailer) fields as the wire has them, one `name: value` line each.
fn put_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The items of a comma-separated header value, trimmed (empty ones included).
pub(crate) fn list_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Sends a body that did not go with the head.
async fn write_body(io: &mut TcpStream, mut body: ProxyBody, chunked: bool) -> Result<(), H1Error> {
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(H1Error::RequestBody)?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                io.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                    .await?;
                io.write_all(&data).await?;
                io.write_all(b"\r\n").await?;
            }
            Ok(data) => io.write_all(&data).await?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    if chunked {
        let mut end = b"0\r\n".to_vec();
        if let Some(t) = &trailers {
            put_fields(&mut end, t);
        }
        end.extend_from_slice(b"\r\n");
        io.write_all(&end).await?;
    }
    Ok(())
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    keep_alive: bool,
}

/// An answer head from the front of `buf` (consumed), or None when more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, H1Error> {
    // Where each field lies in the head, so that the values can share the head's memory once
    // it is split off instead of each being copied into an allocation of its own. Neither
    // this nor httparse's slots is zeroed first: 128 of each were 8 KiB of memset per answer.
    let mut at: SmallVec<[(usize, usize, usize, usize); MAX_HEADERS]> = SmallVec::new();
    let (n, code, minor) = {
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let n = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(H1Error::Malformed(e.to_string())),
        };
        let base = buf.as_ptr() as usize;
        at.extend(r.headers.iter().map(|h| {
            (
                h.name.as_ptr() as usize - base,
                h.name.len(),
                h.value.as_ptr() as usize - base,
                h.value.len(),
            )
        }));
        (n, r.code, r.version)
    };
    let fields = at.len();
    let status = StatusCode::from_u16(code.unwrap_or(0))
        .map_err(|_| H1Error::Malformed(format!("status {code:?}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::Malformed(
            "101 Switching Protocols to a request that asked for no upgrade".into(),
        ));
    }
    let version = if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(n).freeze();
    let mut headers = HeaderMap::with_capacity(fields);
    let mut keep_alive = version == Version::HTTP_11;
    for &(name_at, name_len, value_at, value_len) in &at {
        let name_bytes = &head[name_at..name_at + name_len];
        let name = HeaderName::from_bytes(name_bytes).map_err(|_| {
            H1Error::Malformed(format!(
                "header name {:?}",
                String::from_utf8_lossy(name_bytes)
            ))
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| H1Error::Malformed(format!("value of header {name}")))?;
        if name == http::header::CONNECTION {
            let mut names_others = false;
            for token in list_items(value.as_bytes()) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else {
                    names_others |= !token.is_empty();
                }
            }
            // Hop-by-hop, and all it says is now in `keep_alive`: the answer's way back
            // need not find and remove it. One naming other fields stays for that stripping.
            if !names_others {
                continue;
            }
        }
        headers.append(name, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        keep_alive,
    }))
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

fn framing(head: &Head, head_only: bool) -> Result<Framing, H1Error> {
    let s = head.status;
    if head_only || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    let te = head.headers.get_all(http::header::TRANSFER_ENCODING);
    if te.iter().next().is_some() {
        let last = te
            .iter()
            .flat_map(|v| list_items(v.as_bytes()))
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Framing::Chunked(Chunk::Size),
            _ => Framing::Close,
        });
    }
    let mut length: Option<u64> = None;
    for v in head.headers.get_all(http::header::CONTENT_LENGTH) {
        for part in list_items(v.as_bytes()) {
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(|| H1Error::Malformed("an invalid Content-Length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Malformed(
                    "conflicting Content-Length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// An answer's body as it comes off the upstream connection.
pub struct H1Body {
    conn: Option<Upstream1>,
    framing: Framing,
    /// The connection can carry the next request once this body ended.
    keep: bool,
    slot: Slot,
}

impl H1Body {
    /// At the end: the connection goes back for the next request, or is closed.
    fn finish_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        if let Some(mut conn) = self.conn.take() {
            if self.keep && conn.buf.is_empty() {
                // A kept connection does not hold on to a large body's read buffer.
                if conn.buf.capacity() > 64 * 1024 {
                    conn.buf = BytesMut::with_capacity(8 * 1024);
                }
                *lock(&self.slot) = Some(conn);
            }
        }
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

fn data(b: Bytes) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    Poll::Ready(Some(Ok(Frame::data(b))))
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // What is buffered first; a read only when that is not enough.
            match this.framing {
                Framing::Done => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let (b, rest) = take_up_to(&mut conn.buf, left);
                    this.framing = match rest {
                        0 => Framing::Done,
                        l => Framing::Length(l),
                    };
                    this.finish_if_done();
                    return data(b);
                }
                Framing::Close if !conn.buf.is_empty() => {
                    let b = conn.buf.split().freeze();
                    return data(b);
                }
                Framing::Chunked(state) if !conn.buf.is_empty() => {
                    let (next, out) = match step_chunked(state, &mut conn.buf) {
                        Ok(step) => step,
                        Err(e) => return this.fail(e),
                    };
                    let progressed = next != Framing::Chunked(state) || out.is_some();
                    this.framing = next;
                    match out {
                        Some(ChunkOut::Data(b)) => return data(b),
                        Some(ChunkOut::Trailers(t)) => {
                            this.finish_if_done();
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        None if progressed => continue,
                        None => {}
                    }
                }
                _ => {}
            }
            let expect = match this.framing {
                Framing::Length(left) => left,
                Framing::Chunked(Chunk::Data(left)) => left,
                _ => 0,
            };
            match ready!(conn.poll_fill(cx, expect)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.keep = false;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::ClosedMidAnswer),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Up to `left` bytes from the front of `buf`, and how many are still to come after them.
fn take_up_to(buf: &mut BytesMut, left: u64) -> (Bytes, u64) {
    let n = (buf.len() as u64).min(left) as usize;
    (buf.split_to(n).freeze(), left - n as u64)
}

enum ChunkOut {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// One step of chunked decoding over what `buf` holds: the next state, and what to pass on.
/// The state unchanged with nothing to pass on means more bytes are needed.
fn step_chunked(state: Chunk, buf: &mut BytesMut) -> Result<(Framing, Option<ChunkOut>), H1Error> {
    let bad = |what: &str| H1Error::Malformed(format!("chunked body: {what}"));
    match state {
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete((n, 0))) => {
                buf.advance(n);
                Ok((Framing::Chunked(Chunk::Trailers), None))
            }
            Ok(httparse::Status::Complete((n, size))) => {
                buf.advance(n);
                Ok((Framing::Chunked(Chunk::Data(size)), None))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                Err(bad("chunk-size line too long"))
            }
            Ok(httparse::Status::Partial) => Ok((Framing::Chunked(state), None)),
            Err(_) => Err(bad("invalid chunk size")),
        },
        Chunk::Data(left) => {
            let (b, rest) = take_up_to(buf, left);
            let next = match rest {
                0 => Chunk::DataEnd,
                l => Chunk::Data(l),
            };
            Ok((Framing::Chunked(next), Some(ChunkOut::Data(b))))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok((Framing::Chunked(state), None));
            }
            if &buf[..2] != b"\r\n" {
                return Err(bad("missing CRLF after chunk data"));
            }
            buf.advance(2);
            Ok((Framing::Chunked(Chunk::Size), None))
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok((Framing::Done, None));
            }
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut slots) {
                Ok(httparse::Status::Complete((n, fields))) => {
                    let mut trailers = HeaderMap::with_capacity(fields.len());
                    for f in fields {
                        if let (Ok(name), Ok(value)) = (
                            HeaderName::from_bytes(f.name.as_bytes()),
                            HeaderValue::from_bytes(f.value),
                        ) {
                            trailers.append(name, value);
                        }
                    }
                    buf.advance(n);
                    Ok((Framing::Done, Some(ChunkOut::Trailers(trailers))))
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                    Err(bad("trailer section too large"))
                }
                Ok(httparse::Status::Partial) => Ok((Framing::Chunked(state), None)),
                Err(e) => Err(bad(&format!("trailers: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed `step` bytes at a time: the data and the trailers.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        let (mut buf, mut data, mut trailers) = (BytesMut::new(), Vec::new(), None);
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut fed = 0;
        while framing != Framing::Done {
            let Framing::Chunked(state) = framing else {
                unreachable!()
            };
            if fed < wire.len() {
                let end = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
            let (next, out) = step_chunked(state, &mut buf)?;
            match out {
                Some(ChunkOut::Data(b)) => data.extend_from_slice(&b),
                Some(ChunkOut::Trailers(t)) => trailers = Some(t),
                None if next == framing && fed == wire.len() => {
                    return Err(H1Error::ClosedMidAnswer);
                }
                None => {}
            }
            framing = next;
        }
        assert!(buf.is_empty(), "bytes left after the body: {buf:?}");
        Ok((data, trailers))
    }

    #[test]
    fn chunked_bodies_decode_the_same_at_every_read_size() {
        let wire = b"5;ext=1\r\nchunk\r\n2\r\ned\r\n10\r\n0123456789abcdef\r\n0\r\nx-checksum: abc\r\n\r\n";
        for step in 1..=wire.len() {
            let (data, trailers) = decode(wire, step).expect("decodes");
            assert_eq!(data, b"chunked0123456789abcdef", "step {step}");
            let t = trailers.expect("trailers");
            assert_eq!(t.get("x-checksum").map(|v| v.as_bytes()), Some(&b"abc"[..]));
        }
        let (data, trailers) = decode(b"3\r\nabc\r\n0\r\n\r\n", 1).expect("no trailers");
        assert_eq!((data.as_slice(), trailers.is_none()), (&b"abc"[..], true));
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"ffffffffffffffffffff\r\n",
        ] {
            assert!(
                matches!(decode(wire, 4), Err(H1Error::Malformed(_))),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let long_line = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_LINE + 1]].concat();
        assert!(matches!(
            decode(&long_line, 512),
            Err(H1Error::Malformed(_))
        ));
    }

    #[test]
    fn framing_follows_the_rfc() {
        let head = |text: &str| {
            let mut b = BytesMut::from(text.as_bytes());
            parse_head(&mut b).expect("parses").expect("complete")
        };
        let f = |text: &str, head_only| framing(&head(text), head_only);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", false).ok(),
            Some(Framing::Length(7))
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n", false).ok(),
            Some(Framing::Length(7))
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n", true).ok(),
            Some(Framing::Done)
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
                false
            )
            .ok(),
            Some(Framing::Done)
        );
        // Transfer-Encoding wins over Content-Length; chunked must be the last coding.
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false
            )
            .ok(),
            Some(Framing::Chunked(Chunk::Size))
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                false
            )
            .ok(),
            Some(Framing::Close)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\n\r\n", false).ok(),
            Some(Framing::Close)
        );
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +7\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
        ] {
            assert!(f(bad, false).is_err(), "{bad}");
        }
        assert!(!head("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\n\r\n").keep_alive);
        assert!(head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\n").keep_alive);
    }
}
