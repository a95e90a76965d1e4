//! HTTP/1.1's wire format, shared by the gateway's own server (the http stage, facing the
//! workload) and its own client (the forward stage, facing the upstream): header fields,
//! message framing (RFC 9112 §6) and a body read off a connection by that framing.
//!
//! Every shape the RFC does not allow (a bad chunk, conflicting lengths, a trailer section too
//! large) is an error, never a guess, so one message's bytes are never read as the next one's.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body::{Body, Frame, SizeHint};
use smallvec::SmallVec;
use tokio::io::AsyncRead;

use crate::proxy::body::BodyError;

/// `buf` past its leading empty lines: CRLF, or a bare LF, as httparse and the servers that
/// read past them before a request line (RFC 9112 §2.2) skip them. A lone CR is not one.
pub fn skip_blank_lines(mut buf: &[u8]) -> &[u8] {
    loop {
        buf = match buf {
            [b'\r', b'\n', rest @ ..] | [b'\n', rest @ ..] => rest,
            _ => return buf,
        }
    }
}

/// Most fields a head or a trailer section may have.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

/// A message that breaks HTTP/1.1's rules; the text says which.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

/// Why a body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    #[error("the peer closed the connection in the middle of the body")]
    Closed,
    #[error("malformed chunked body: {0}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where each field lies in a head: name offset and length, value offset and length. Values
/// then share the head's memory once it is split off instead of each being copied into an
/// allocation of its own. Room for a usual head's fields inline; more spill to the heap.
pub type Positions = SmallVec<[(u32, u32, u32, u32); 24]>;

/// Notes where httparse's `fields` lie within `base`, the buffer it parsed (heads are far
/// below 4 GiB: they are bounded by the head limits).
pub fn positions(at: &mut Positions, base: &[u8], fields: &[httparse::Header<'_>]) {
    let base = base.as_ptr() as usize;
    at.extend(fields.iter().map(|h| {
        (
            (h.name.as_ptr() as usize - base) as u32,
            h.name.len() as u32,
            (h.value.as_ptr() as usize - base) as u32,
            h.value.len() as u32,
        )
    }));
}

/// A head's fields, and what its framing fields say: noted while the fields are read, since
/// looking each up again by name afterwards costs a hash and a probe per message.
#[derive(Debug)]
pub struct Fields {
    pub headers: HeaderMap,
    /// Whether the connection may carry another message.
    pub keep_alive: bool,
    /// The one length every Content-Length field agrees on, None when there is none.
    pub length: Result<Option<u64>, Malformed>,
    /// Whether the head carries Transfer-Encoding (None if not), and if so whether chunked is
    /// its last coding, the only case in which the body's end can be found.
    pub chunked_last: Option<bool>,
    /// A TE field accepts trailers.
    pub te_trailers: bool,
}

/// A head's fields, from `head` (the bytes split off the read buffer) at `at`; the connection
/// may carry another message unless they say otherwise, starting from the version's default
/// `keep_alive`. A Connection field that says nothing but close or keep-alive is folded into
/// that answer and left out, since it is hop-by-hop; one naming other fields stays for
/// hop-by-hop stripping.
pub fn fields(head: &Bytes, at: &Positions, mut keep_alive: bool) -> Result<Fields, Malformed> {
    let mut headers = HeaderMap::with_capacity(at.len());
    let mut length = Ok(None);
    let mut chunked_last = None;
    let mut te_trailers = false;
    for &(name_at, name_len, value_at, value_len) in at {
        let (name_at, name_len) = (name_at as usize, name_len as usize);
        let (value_at, value_len) = (value_at as usize, value_len as usize);
        let name_bytes = &head[name_at..name_at + name_len];
        let name = HeaderName::from_bytes(name_bytes).map_err(|_| {
            Malformed(format!(
                "header name {:?}",
                String::from_utf8_lossy(name_bytes)
            ))
        })?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| Malformed(format!("value of header {name}")))?;
        let v = value.as_bytes();
        if name == header::CONTENT_LENGTH {
            if let Ok(l) = &mut length {
                if let Err(e) = add_length(l, v) {
                    length = Err(e);
                }
            }
        } else if name == header::TRANSFER_ENCODING {
            let last = list_items(v).rfind(|t| !t.is_empty());
            chunked_last = match last {
                Some(t) => Some(t.eq_ignore_ascii_case(b"chunked")),
                None => chunked_last.or(Some(false)),
            };
        } else if name == header::TE {
            te_trailers |= list_items(v).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        } else if name == header::CONNECTION {
            let mut names_others = false;
            for token in list_items(v) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else {
                    names_others |= !token.is_empty();
                }
            }
            if !names_others {
                continue;
            }
        }
        headers.append(name, value);
    }
    Ok(Fields {
        headers,
        keep_alive,
        length,
        chunked_last,
        te_trailers,
    })
}

/// Header (or trailer) fields as the wire has them, one `name: value` line each.
pub fn put_fields(out: &mut Vec<u8>, fields: &HeaderMap) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The items of a comma-separated header value, trimmed (empty ones included).
pub fn list_items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The one length every Content-Length field of `headers` agrees on, None when there is none.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Malformed> {
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        add_length(&mut length, v.as_bytes())?;
    }
    Ok(length)
}

/// Adds one Content-Length field's value (a list, possibly) to the length the earlier ones
/// gave: each item must be digits, and all must agree.
pub fn add_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), Malformed> {
    for part in list_items(value) {
        let n = std::str::from_utf8(part)
            .ok()
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| Malformed("an invalid Content-Length".into()))?;
        if length.is_some_and(|l| l != n) {
            return Err(Malformed("conflicting Content-Length values".into()));
        }
        *length = Some(n);
    }
    Ok(())
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The trailer section after the last chunk.
    Trailers,
}

/// The least room [`poll_fill`] makes for a read. A client connection's read buffer starts
/// this large, so that its first read ahead does not grow it (copying what it had). Not an
/// upstream connection's: there a buffer that grows on its first answer is sized for the
/// answer's length (answers a little over 16 KiB cost 8 % more CPU with a 16 KiB start, in
/// an A/B of the l7 bench's 16 KiB case).
pub const READ_BUF: usize = 16 * 1024;

/// Reads more of `io` into `buf`, room made for `expect` bytes (up to a bound) so that a large
/// body comes in few reads; Ok(0) at end of stream.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    expect: u64,
) -> Poll<io::Result<usize>> {
    let want = expect.clamp(READ_BUF as u64, 256 * 1024) as usize;
    poll_fill_room(io, buf, cx, want)
}

/// [`poll_fill`] with room made for `want` bytes, whatever their size.
pub fn poll_fill_room<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < want / 2 {
        buf.reserve(want);
    }
    // Through AsyncRead rather than try_read: a read that leaves room in the buffer tells
    // tokio the socket is drained, so the next read does not pay a recv(2) that can only say
    // EAGAIN.
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// The connection a [`FramedBody`] reads from, and where it goes once the body is over.
pub trait Source: Send + Unpin + 'static {
    fn buf(&mut self) -> &mut BytesMut;
    fn poll_fill(&mut self, cx: &mut Context<'_>, expect: u64) -> Poll<io::Result<usize>>;
    /// The body is over. `reusable`: it ended where its framing says, so what follows on the
    /// connection is the next message; not when it failed, was dropped unread or ran to the
    /// connection's close.
    fn finish(self, reusable: bool);
}

/// A message body as it comes off a connection, delimited by its framing.
pub struct FramedBody<S: Source> {
    src: Option<S>,
    framing: Framing,
}

impl<S: Source> FramedBody<S> {
    pub fn new(src: S, framing: Framing) -> Self {
        let mut body = Self {
            src: Some(src),
            framing,
        };
        body.finish_if_done();
        body
    }

    fn finish_if_done(&mut self) {
        if self.framing == Framing::Done {
            if let Some(src) = self.src.take() {
                src.finish(true);
            }
        }
    }

    fn end(&mut self, reusable: bool) {
        self.framing = Framing::Done;
        if let Some(src) = self.src.take() {
            src.finish(reusable);
        }
    }

    fn fail(&mut self, e: BodyReadError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.end(false);
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl<S: Source> Drop for FramedBody<S> {
    /// Dropped unread: when the rest of the body is already buffered (the usual case for a
    /// small one), it is skipped and the connection stays usable; otherwise it is not.
    fn drop(&mut self) {
        let Some(mut src) = self.src.take() else {
            return;
        };
        let buf = src.buf();
        loop {
            self.framing = match self.framing {
                Framing::Done => break,
                Framing::Length(left) if buf.len() as u64 >= left => {
                    buf.advance(left as usize);
                    Framing::Done
                }
                Framing::Chunked(state) if !buf.is_empty() => match step_chunked(state, buf) {
                    Ok((next, out)) if next != self.framing || out.is_some() => next,
                    _ => return src.finish(false),
                },
                _ => return src.finish(false),
            };
        }
        src.finish(true);
    }
}

fn data(b: Bytes) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    Poll::Ready(Some(Ok(Frame::data(b))))
}

impl<S: Source> Body for FramedBody<S> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(src) = this.src.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = src.buf();
            // What is buffered first; a read only when that is not enough.
            match this.framing {
                Framing::Done => {
                    this.finish_if_done();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !buf.is_empty() => {
                    let (b, rest) = take_up_to(buf, left);
                    this.framing = match rest {
                        0 => Framing::Done,
                        l => Framing::Length(l),
                    };
                    this.finish_if_done();
                    return data(b);
                }
                Framing::Close if !buf.is_empty() => return data(buf.split().freeze()),
                Framing::Chunked(state) if !buf.is_empty() => {
                    let (next, out) = match step_chunked(state, buf) {
                        Ok(step) => step,
                        Err(Malformed(why)) => return this.fail(BodyReadError::Malformed(why)),
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
            match ready!(src.poll_fill(cx, expect)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.end(false);
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(BodyReadError::Closed),
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
fn step_chunked(
    state: Chunk,
    buf: &mut BytesMut,
) -> Result<(Framing, Option<ChunkOut>), Malformed> {
    let bad = |what: &str| Malformed(what.to_string());
    // Lines and sections are parsed no further than their limits, so that a verdict never
    // depends on how the bytes were split across reads.
    match state {
        Chunk::Size => match httparse::parse_chunk_size(&buf[..buf.len().min(MAX_CHUNK_LINE)]) {
            Ok(httparse::Status::Complete((n, 0))) => {
                buf.advance(n);
                Ok((Framing::Chunked(Chunk::Trailers), None))
            }
            Ok(httparse::Status::Complete((n, size))) => {
                buf.advance(n);
                Ok((Framing::Chunked(Chunk::Data(size)), None))
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_CHUNK_LINE => {
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
            match httparse::parse_headers(&buf[..buf.len().min(MAX_TRAILERS)], &mut slots) {
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
                Ok(httparse::Status::Partial) if buf.len() >= MAX_TRAILERS => {
                    Err(bad("trailer section too large"))
                }
                Ok(httparse::Status::Partial) => Ok((Framing::Chunked(state), None)),
                Err(e) => Err(bad(&format!("trailers: {e}"))),
            }
        }
    }
}

/// A chunk's size line.
pub fn put_chunk_size(out: &mut Vec<u8>, len: usize) {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(len >> (i * 4)) & 0xf]);
    }
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and the trailer section, ending chunked coding.
pub fn put_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        put_fields(out, t);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends a chunk of chunked coding holding `data` (not empty) to `out`.
    fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
        put_chunk_size(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    /// Decodes `wire` fed `step` bytes at a time: the data and the trailers.
    fn decode(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Malformed> {
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
                    return Err(Malformed("ends early".into()));
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
                decode(wire, 4).is_err(),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        let long_line = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_LINE + 1]].concat();
        assert!(decode(&long_line, 512).is_err());
    }

    #[test]
    fn chunks_encode_as_they_decode() {
        let mut wire = Vec::new();
        for part in [&b"a"[..], &[b'x'; 15], &[b'y'; 16], &[b'z'; 4097]] {
            put_chunk(&mut wire, part);
        }
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        put_last_chunk(&mut wire, Some(&t));
        assert!(wire.starts_with(b"1\r\na\r\nf\r\n"), "{wire:?}");
        let (data, trailers) = decode(&wire, 7).expect("decodes");
        assert_eq!(data.len(), 1 + 15 + 16 + 4097);
        assert_eq!(
            trailers.expect("trailers").get("grpc-status"),
            t.get("grpc-status")
        );
    }

    #[test]
    fn content_length_must_be_one_agreed_number() {
        let map = |vals: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in vals {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            }
            h
        };
        assert_eq!(content_length(&map(&[])).ok(), Some(None));
        assert_eq!(content_length(&map(&["7"])).ok(), Some(Some(7)));
        assert_eq!(content_length(&map(&["7, 7", "7"])).ok(), Some(Some(7)));
        for bad in [&["7", "8"][..], &["+7"], &[""], &["0x10"]] {
            assert!(content_length(&map(bad)).is_err(), "{bad:?}");
        }
    }
}
