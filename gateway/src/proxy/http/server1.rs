//! The http stage's own HTTP/1.1 server, for the plain-text HTTP/1 connections workloads
//! make (h2 and TLS-terminated connections go to hyper's).
//!
//! One request at a time per connection, as HTTP/1.1 has it: its head is read and parsed in
//! place (field values share the head's memory), the handler answers it, and the answer is
//! written with as few writes as its body allows, usually one. The request body, when there
//! is one, reads straight off the connection through the shared [`crate::proxy::h1`] framing; no
//! connection task and no channels. hyper's server did the same work with a more general
//! dispatcher and a fresh timer per request: about 12k of the 32k instructions a small call
//! cost (callgrind), where this server's part is about 6k.
//!
//! Limits: the head must arrive whole within `header_timeout` of the server starting to wait
//! for it (slowloris, and idle keep-alive) and fit `max_head` bytes (431 otherwise). A
//! request whose length cannot be known for sure (Content-Length with Transfer-Encoding, a
//! coding other than chunked last, conflicting lengths) is refused with 400 and the
//! connection closed, so no bytes of it can be read as another request.
use std::{
    future::Future,
    io::{self, IoSlice},
    mem::MaybeUninit,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body;
use http_body_util::{BodyExt, Empty};
use smallvec::SmallVec;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    time::{Instant, Sleep},
};
use tracing::debug;

use crate::{
    extract::Kind,
    proxy::body::{BodyError, ProxyBody},
    proxy::drain::Drain,
    proxy::h1::{self, FramedBody, Framing, MAX_HEADERS, Source},
    proxy::reply::Refusal,
    util::sync::LockExt,
};

/// Data up to this size is copied in with the head and the chunk framing; larger data goes
/// from its own buffer, in the same `writev` ([`Outgoing`]).
const SPLICE_FROM: usize = 1024;
/// How much data [`Outgoing`] holds in its own buffers before writing it, even while more
/// is ready.
const SPLICE_MAX_BYTES: usize = 256 * 1024;
/// How many buffers it holds at most (each adds two iovecs to the write).
const SPLICE_MAX: usize = 8;
/// To a connection that takes one buffer per write, data up to this size is copied in, so
/// that a whole answer still goes in one write; larger data is written from its own buffer.
const COALESCE: usize = 16 * 1024;
/// The most data a bodiless answer's body (HEAD, 204, 304) may still carry, dropped unsent,
/// before the answer is failed as one that does not say what it is.
const BODILESS_DROP: usize = 16 * 1024;
/// After an answer that ends the connection, what the client still sends is read and dropped
/// for at most this long and this much, so closing does not reset the connection (which can
/// destroy the answer before the client reads it).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;
/// A connection with no request for this long, and no part of one, gives back what it holds
/// for the next: its read and answer buffers, the pipeline's future, and (through `serve`'s
/// `quiet`) its upstream connection. The next request allocates them again.
const QUIET: Duration = Duration::from_secs(1);
/// The read buffer of a quiet connection: room for a request line and a few fields. A head
/// that needs more grows it to [`h1::READ_BUF`].
const QUIET_READ: usize = 1024;
/// The answer buffer's size to start with.
const OUT_BUF: usize = 8 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head: usize,
    pub header_timeout: Duration,
    /// Shut the write side down before closing after a last answer: over TLS that sends the
    /// close_notify. Over plain TCP the close that follows sends the same FIN, so the
    /// `shutdown(2)` is skipped (one system call per `Connection: close` call).
    pub shutdown_before_close: bool,
}

/// The read side of the connection, with what was read past the last message.
struct Reader<I> {
    io: ReadHalf<I>,
    buf: BytesMut,
}

/// Where a request body hands the read side back, with whether the body ended at its end.
type Returned<I> = Arc<Mutex<Back<I>>>;

struct Back<I> {
    reader: Option<(Reader<I>, bool)>,
    /// The server, waiting for the reader to watch the client with.
    waiting: Option<Waker>,
}

/// The read side, lent to a request's body.
struct Lent<I> {
    reader: Reader<I>,
    back: Returned<I>,
}

impl<I: AsyncRead + Send + 'static> Source for Lent<I> {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.reader.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, expect: u64) -> Poll<io::Result<usize>> {
        h1::poll_fill(&mut self.reader.io, &mut self.reader.buf, cx, expect)
    }

    fn finish(self, reusable: bool) {
        let mut back = self.back.locked();
        back.reader = Some((self.reader, reusable));
        if let Some(w) = back.waiting.take() {
            w.wake();
        }
    }
}

/// What of a request its answer depends on.
struct Asked {
    head_only: bool,
    version: Version,
    keep_alive: bool,
    /// `TE: trailers`: the client takes trailers in a chunked answer.
    trailers: bool,
}

/// Why no request could be read.
enum HeadError {
    /// The client closed, or went quiet, between requests: nothing to answer.
    Gone,
    /// Partway through a head: answered with this status, then the connection closes.
    Refuse(StatusCode, &'static str, String),
}

/// Serves HTTP/1.1 on `io` until the client closes, a limit ends the connection or an answer
/// cannot be completed. `handle` answers each request; `quiet` is called when the connection
/// has waited [`QUIET`] for a next request, to give back what the caller keeps for it.
///
/// At the stop's drain ([`Drain`]) a connection waiting for its next request closes, and one
/// in the middle of a call closes after its answer, which says `connection: close`.
pub async fn serve<I, H, F, Q>(io: I, limits: Limits, drain: &Drain, mut handle: H, mut quiet: Q)
where
    I: AsyncRead + AsyncWrite + Send + 'static,
    H: FnMut(Request<ProxyBody>) -> F,
    F: Future<Output = Response<ProxyBody>>,
    Q: FnMut(),
{
    let (rd, mut wr) = tokio::io::split(io);
    let mut reader = Reader {
        io: rd,
        buf: BytesMut::with_capacity(h1::READ_BUF),
    };
    let back: Returned<I> = Arc::new(Mutex::new(Back {
        reader: None,
        waiting: None,
    }));
    // One timer for the connection's life, moved forward per request: cheaper than one armed
    // and dropped per request.
    let mut timer = Box::pin(tokio::time::sleep(limits.header_timeout));
    let mut out = Vec::with_capacity(OUT_BUF);
    // The handler's future (the whole call pipeline, several KiB) lives here, in place, from
    // one request to the next, rather than being moved into and out of the futures that wait
    // on it for every request; a quiet connection gives it back.
    let mut handling: Option<Pin<Box<Option<F>>>> = None;
    // A new connection's first call is waited for even once the drain began: its client
    // connected to be served (it came as the stop began), and the grace bounds the wait.
    let mut between_calls = None;
    loop {
        let head = read_head(
            &mut reader,
            &limits,
            between_calls,
            timer.as_mut(),
            &mut || {
                out = Vec::new();
                handling = None;
                quiet();
            },
        )
        .await;
        between_calls = Some(drain);
        if out.capacity() == 0 {
            out.reserve(OUT_BUF);
        }
        let (req, mut asked, framing) = match head {
            Ok(r) => r,
            Err(HeadError::Gone) => return,
            Err(HeadError::Refuse(status, code, why)) => {
                debug!(%status, reason = %why, "refused an HTTP/1 request head");
                let asked = Asked {
                    head_only: false,
                    version: Version::HTTP_11,
                    keep_alive: false,
                    trailers: false,
                };
                let resp = Refusal::new(status, code, why).respond(Kind::Http, None);
                if write_answer(&mut wr, &mut out, resp, &asked).await.is_ok() {
                    linger(reader, wr).await;
                }
                return;
            }
        };
        if framing != Framing::Done
            && asked.version == Version::HTTP_11
            && req
                .headers()
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            // Sent at once rather than when the handler first reads the body: an answer
            // that refuses the request unread closes the connection (after lingering) anyway.
            if wr
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        }
        let (req, kept) = if framing == Framing::Done {
            let body = Empty::new().map_err(|e| match e {}).boxed_unsync();
            (req.map(|()| body), Some(reader))
        } else {
            let lent = Lent {
                reader,
                back: back.clone(),
            };
            let body = FramedBody::new(lent, framing).boxed_unsync();
            (req.map(|()| body), None)
        };
        let mut kept = kept;
        let handling = handling.get_or_insert_with(|| Box::pin(None));
        handling.set(Some(handle(req)));
        let answered = match handling.as_mut().as_pin_mut() {
            Some(f) => answer_unless_gone(f, &mut kept, &back, limits.max_head).await,
            None => None,
        };
        handling.set(None);
        let Some(resp) = answered else {
            debug!("the client closed its connection before its answer; request cancelled");
            return;
        };
        // The stop's drain: this answer is the connection's last.
        asked.keep_alive &= !drain.begun();
        let written = write_answer(&mut wr, &mut out, resp, &asked).await;
        // A lent reader is back by now unless the handler kept the body (rarely: it still
        // streams to an upstream that answered early).
        let returned = match kept {
            Some(r) => Some((r, true)),
            None => back.locked().reader.take(),
        };
        reader = match returned {
            Some((r, true)) => r,
            Some((r, false)) => {
                if matches!(written, Ok(true)) {
                    linger(r, wr).await;
                }
                return;
            }
            None => return,
        };
        match written {
            Ok(true) => {}
            // The request was read to its end: with nothing of another one read meanwhile, the
            // client has nothing more to say (nginx's heuristic too), and waiting for its FIN
            // would cost every `Connection: close` call one more wake-up and read. Over TLS
            // shut down rather than only dropped: that sends the close_notify.
            Ok(false) if reader.buf.is_empty() => {
                if limits.shutdown_before_close {
                    let _ = wr.shutdown().await;
                }
                return;
            }
            Ok(false) => return linger(reader, wr).await,
            Err(e) => {
                debug!(error = %e, "HTTP/1 answer not completed; closing the connection");
                return;
            }
        }
        if out.capacity() > 256 * 1024 {
            out = Vec::with_capacity(OUT_BUF);
        }
        if reader.buf.capacity() > 256 * 1024 && reader.buf.is_empty() {
            reader.buf = BytesMut::with_capacity(h1::READ_BUF);
        }
    }
}

/// The handler's answer; None when the client closes its connection first (as a client that
/// gives up does), and then the handler is dropped, which cancels the call wherever it is
/// (waiting for an approval, for the upstream). The read side is watched for that once the
/// request body (if any) has handed it back; bytes of a next request are kept meanwhile.
async fn answer_unless_gone<I, F>(
    mut handling: Pin<&mut F>,
    kept: &mut Option<Reader<I>>,
    back: &Returned<I>,
    max_head: usize,
) -> Option<Response<ProxyBody>>
where
    I: AsyncRead,
    F: Future<Output = Response<ProxyBody>>,
{
    std::future::poll_fn(|cx| {
        if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(resp));
        }
        if kept.is_none() {
            let mut back = back.locked();
            match back.reader.take() {
                Some((r, true)) => *kept = Some(r),
                // The body did not end cleanly: the connection closes after the answer.
                Some(unclean) => {
                    back.reader = Some(unclean);
                    return Poll::Pending;
                }
                None => {
                    back.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        if let Some(r) = kept.as_mut() {
            while r.buf.len() < max_head {
                match h1::poll_fill(&mut r.io, &mut r.buf, cx, 0) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                    Poll::Ready(Ok(_)) => {}
                    Poll::Pending => break,
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// What a wait for more of a request head ended with.
enum Waited {
    Read(io::Result<usize>),
    /// Nothing of a head came for [`QUIET`].
    Quiet,
    TimedOut,
    /// The stop's drain began with nothing of a head read.
    Drained,
}

/// Reads and parses the next request head, within the header timeout. A wait that sees
/// nothing of a head for [`QUIET`] gives the read buffer back, calls `quiet` once, and goes
/// on waiting, as long as the header timeout allows, with room for a small head. Between
/// requests (`drain` given), the stop's drain ends the wait as a client's close would (within
/// [`QUIET`]); a head already begun is read to its end.
async fn read_head<I: AsyncRead>(
    r: &mut Reader<I>,
    limits: &Limits,
    drain: Option<&Drain>,
    mut timer: Pin<&mut Sleep>,
    quiet: &mut impl FnMut(),
) -> Result<(Request<()>, Asked, Framing), HeadError> {
    // When the head began to be waited for: the header timeout counts from there.
    let mut since: Option<Instant> = None;
    let mut quieted = false;
    // Made before the drain is checked, so that a drain that begins between the two wakes it.
    let drained = drain.map(Drain::notified);
    tokio::pin!(drained);
    loop {
        if !r.buf.is_empty() {
            if let Some(head) = parse_request(&mut r.buf, limits.max_head)? {
                return Ok(head);
            }
        }
        let waited = std::future::poll_fn(|cx| {
            let room = if quieted && r.buf.is_empty() {
                QUIET_READ
            } else {
                h1::READ_BUF
            };
            if let Poll::Ready(n) = h1::poll_fill_room(&mut r.io, &mut r.buf, cx, room) {
                return Poll::Ready(Waited::Read(n));
            }
            // A connection between calls sees the drain at once once quiet (woken by it), and
            // otherwise at its quiet mark, within [`QUIET`]: a busy connection's wait for its
            // next call does not register with the drain, a lock and an unlock per call.
            if let (Some(drain), Some(drained)) = (drain, drained.as_mut().as_pin_mut())
                && r.buf.is_empty()
                && (drain.begun() || (quieted && drained.poll(cx).is_ready()))
            {
                return Poll::Ready(Waited::Drained);
            }
            let start = match since {
                Some(t) => t,
                None => {
                    // Only now that the head has to be waited for; between requests, the
                    // quiet mark comes first.
                    let now = Instant::now();
                    let first = if r.buf.is_empty() {
                        QUIET.min(limits.header_timeout)
                    } else {
                        limits.header_timeout
                    };
                    timer.as_mut().reset(now + first);
                    since = Some(now);
                    now
                }
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = start + limits.header_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(Waited::TimedOut);
            }
            if !quieted && r.buf.is_empty() {
                return Poll::Ready(Waited::Quiet);
            }
            // A head began before the quiet mark: it has until the timeout.
            timer.as_mut().reset(deadline);
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Waited::TimedOut),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        match waited {
            Waited::Read(Ok(n)) if n > 0 => {}
            Waited::Read(_) if r.buf.is_empty() => return Err(HeadError::Gone),
            Waited::Read(_) => {
                return Err(bad("the connection ended in the middle of a request head"));
            }
            Waited::Quiet => {
                quieted = true;
                r.buf = BytesMut::new();
                quiet();
                if let Some(start) = since {
                    timer.as_mut().reset(start + limits.header_timeout);
                }
            }
            // Only ever with nothing of a head read: the connection ends as a client's
            // close would end it.
            Waited::Drained => return Err(HeadError::Gone),
            Waited::TimedOut if r.buf.is_empty() => return Err(HeadError::Gone),
            Waited::TimedOut => {
                return Err(HeadError::Refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "header_timeout",
                    format!(
                        "the request head did not arrive within {:?}",
                        limits.header_timeout
                    ),
                ));
            }
        }
    }
}

fn too_large(max: usize) -> HeadError {
    HeadError::Refuse(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("the request head is larger than {max} bytes"),
    )
}

fn bad(why: impl Into<String>) -> HeadError {
    HeadError::Refuse(StatusCode::BAD_REQUEST, "bad_request", why.into())
}

/// A request head from the front of `buf` (consumed), or None when more bytes are needed and
/// may still come within `max`.
fn parse_request(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<(Request<()>, Asked, Framing)>, HeadError> {
    // Empty lines before a request line are to be ignored (RFC 9112 §2.2). Dropped here, they
    // leave a connection that sent one between requests waiting with an empty buffer: it goes
    // quiet, and at the header timeout it is closed as idle rather than answered 408. A lone CR
    // stays: what follows decides it.
    let blank = buf.len() - h1::skip_blank_lines(buf).len();
    bytes::Buf::advance(buf, blank);
    let mut at = h1::Positions::new();
    let (n, method, path, minor) = {
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Request::new(&mut []);
        // No further than the limit: the verdict on a head is then the same however its
        // bytes were split across reads.
        let view = &buf[..buf.len().min(max)];
        let n = match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut r, view, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() >= max => return Err(too_large(max)),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(too_large(max)),
            Err(e) => return Err(bad(format!("malformed request head: {e}"))),
        };
        let method = Method::from_bytes(r.method.unwrap_or_default().as_bytes())
            .map_err(|_| bad("invalid method"))?;
        let path = r.path.unwrap_or_default();
        let path_at = path.as_ptr() as usize - buf.as_ptr() as usize;
        h1::positions(&mut at, buf, r.headers);
        (n, method, (path_at, path.len()), r.version)
    };
    let version = if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = buf.split_to(n).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1))
        .map_err(|e| bad(format!("invalid request target: {e}")))?;
    let fields = h1::fields(&head, &at, version == Version::HTTP_11)
        .map_err(|e| bad(format!("malformed request head: {e}")))?;
    let framing = request_framing(&fields, version)?;
    let asked = Asked {
        head_only: method == Method::HEAD,
        version,
        keep_alive: fields.keep_alive,
        trailers: fields.te_trailers,
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = fields.headers;
    Ok(Some((req, asked, framing)))
}

/// RFC 9112 §6.3 for requests, strictly: anything that could be read two ways is refused.
fn request_framing(fields: &h1::Fields, version: Version) -> Result<Framing, HeadError> {
    let length = fields.length.clone().map_err(|e| bad(e.0))?;
    match fields.chunked_last {
        Some(_) if length.is_some() => Err(bad(
            "both Content-Length and Transfer-Encoding: the request's length is ambiguous",
        )),
        Some(_) if version == Version::HTTP_10 => {
            Err(bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        Some(true) => Ok(Framing::Chunked(h1::Chunk::Size)),
        Some(false) => Err(bad(
            "a Transfer-Encoding whose last coding is not chunked: the request's length is unknown",
        )),
        None => Ok(match length {
            None | Some(0) => Framing::Done,
            Some(n) => Framing::Length(n),
        }),
    }
}

/// Writes `resp` as the answer to `asked`. Ok(true) when the connection can carry the next
/// request, Ok(false) when it must close after this answer.
async fn write_answer<W: AsyncWrite>(
    wr: &mut WriteHalf<W>,
    out: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    asked: &Asked,
) -> io::Result<bool> {
    let (parts, mut body) = resp.into_parts();
    let mut headers = parts.headers;
    let status = parts.status;
    let mut keep = asked.keep_alive;
    let bodiless = asked.head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // One pass over the fields finds the few this server has a say in: a lookup by name
    // costs a hash and a probe each, present or not.
    let (mut connection, mut coded, mut dated) = (false, false, false);
    let mut length = Ok(None);
    for (name, v) in &headers {
        if name == header::CONNECTION {
            connection = true;
            keep &= !h1::list_items(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if name == header::TRANSFER_ENCODING {
            coded = true;
        } else if name == header::CONTENT_LENGTH {
            if let Ok(l) = &mut length {
                if h1::add_length(l, v.as_bytes()).is_err() {
                    length = Err(());
                }
            }
        } else if name == header::DATE {
            dated = true;
        }
    }
    if connection {
        headers.remove(header::CONNECTION);
    }
    // The framing is this server's to choose.
    if coded {
        headers.remove(header::TRANSFER_ENCODING);
    }
    // An invalid Content-Length from the handler is not passed on.
    let declared = length.unwrap_or_else(|()| {
        headers.remove(header::CONTENT_LENGTH);
        None
    });
    let framing = if bodiless {
        // A HEAD answer made here says how long the GET answer's body would be.
        match body.size_hint().exact() {
            Some(n) if asked.head_only && n > 0 && declared.is_none() => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            _ => {}
        }
        Framing::Done
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Framing::Length(n)
    } else if asked.version == Version::HTTP_11 {
        Framing::Chunked(h1::Chunk::Size)
    } else {
        keep = false;
        Framing::Close
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    h1::put_fields(out, &headers);
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if matches!(framing, Framing::Chunked(_)) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if asked.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if framing == Framing::Done {
        // The head is the whole answer: it goes once the body has ended (in strict
        // durability, once the call's record is on disk). A bodiless answer has no data; what
        // a body might still carry is dropped, up to a bound.
        let mut dropped = 0;
        while !body.is_end_stream() {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(body_failed(e)),
                Some(Ok(f)) => {
                    dropped += f.data_ref().map_or(0, Bytes::len);
                    if dropped > BODILESS_DROP {
                        return Err(io::Error::other("a bodiless answer's body carries data"));
                    }
                }
            }
        }
        wr.write_all(out).await?;
        return Ok(keep);
    }
    let chunked = matches!(framing, Framing::Chunked(_));
    let mut out = Outgoing::new(out, wr.is_write_vectored());
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut body = Pin::new(&mut body);
    loop {
        // What is ready now joins `out`; the bytes go when the body has to be waited for.
        // The bytes that complete a Content-Length answer wait in `out` for the body's end:
        // in strict durability that is when the call's record is on disk.
        let frame = match std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await
        {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() && left != Some(0) {
                    out.write(wr).await?;
                }
                body.frame().await
            }
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(body_failed)?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (true, Ok(t)) = (chunked, frame.into_trailers()) {
                    h1::put_last_chunk(out.buf, asked.trailers.then_some(&t));
                    out.write(wr).await?;
                    return Ok(keep);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        if let Some(l) = left.as_mut() {
            if data.len() as u64 > *l {
                return Err(io::Error::other(
                    "the answer's body is longer than its Content-Length",
                ));
            }
            *l -= data.len() as u64;
        }
        if chunked {
            h1::put_chunk_size(out.buf, data.len());
            out.data(data);
            out.buf.extend_from_slice(b"\r\n");
        } else {
            out.data(data);
        }
        // Bounded while the body has more ready, except the bytes that complete a
        // Content-Length answer: they wait for the body's end.
        if out.full() && left != Some(0) {
            out.write(wr).await?;
        }
    }
    if chunked {
        h1::put_last_chunk(out.buf, None);
    }
    if !out.is_empty() {
        out.write(wr).await?;
    }
    if left.is_some_and(|l| l > 0) {
        return Err(io::Error::other(
            "the answer's body ended before its Content-Length",
        ));
    }
    Ok(keep)
}

/// An answer's bytes ready to go: the head, chunk framing and small data copied into `buf`;
/// larger data kept in the buffer it came in (the masker's output, the upstream's read),
/// each at its place in `buf`, and written with it in one `writev`. Copying a 16 KiB chunk in
/// with its framing was 1 % of the gateway's CPU with 16 KiB answers; and larger data, which
/// went in a write of its own after the head, now goes in the same system call.
struct Outgoing<'a> {
    buf: &'a mut Vec<u8>,
    /// Data in its own buffer, and where in `buf` it goes (before the byte at that offset).
    spliced: SmallVec<[(usize, Bytes); SPLICE_MAX]>,
    spliced_bytes: usize,
    /// The writer takes several buffers in one call (else data up to [`COALESCE`] is copied
    /// in, and each larger piece is a write of its own).
    vectored: bool,
}

impl<'a> Outgoing<'a> {
    fn new(buf: &'a mut Vec<u8>, vectored: bool) -> Self {
        Self {
            buf,
            spliced: SmallVec::new(),
            spliced_bytes: 0,
            vectored,
        }
    }

    /// Adds `data` after what is there.
    fn data(&mut self, data: Bytes) {
        let from = if self.vectored {
            SPLICE_FROM
        } else {
            COALESCE + 1
        };
        if data.len() < from {
            self.buf.extend_from_slice(&data);
        } else {
            self.spliced_bytes += data.len();
            self.spliced.push((self.buf.len(), data));
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.spliced.is_empty()
    }

    /// Holding as much as it should before writing.
    fn full(&self) -> bool {
        self.spliced.len() >= SPLICE_MAX
            || self.spliced_bytes >= SPLICE_MAX_BYTES
            || self.buf.len() >= SPLICE_MAX_BYTES
    }

    /// Writes everything, in order, and empties it.
    async fn write<W: AsyncWrite>(&mut self, wr: &mut WriteHalf<W>) -> io::Result<()> {
        if self.spliced.is_empty() {
            wr.write_all(self.buf).await?;
        } else {
            let mut slices: SmallVec<[IoSlice<'_>; 2 * SPLICE_MAX + 1]> = SmallVec::new();
            let mut at = 0;
            for (pos, data) in &self.spliced {
                if *pos > at {
                    slices.push(IoSlice::new(&self.buf[at..*pos]));
                }
                slices.push(IoSlice::new(data));
                at = *pos;
            }
            if at < self.buf.len() {
                slices.push(IoSlice::new(&self.buf[at..]));
            }
            if self.vectored {
                let mut rest: &mut [IoSlice<'_>] = &mut slices;
                while !rest.is_empty() {
                    let n = wr.write_vectored(rest).await?;
                    if n == 0 {
                        return Err(io::ErrorKind::WriteZero.into());
                    }
                    IoSlice::advance_slices(&mut rest, n);
                }
            } else {
                for s in &slices {
                    wr.write_all(s).await?;
                }
            }
        }
        self.buf.clear();
        self.spliced.clear();
        self.spliced_bytes = 0;
        Ok(())
    }
}

fn body_failed(e: BodyError) -> io::Error {
    io::Error::other(format!("the answer's body failed: {e}"))
}

/// Closes the connection after an answer without resetting it: the write side first, then
/// what the client still sends is read and dropped, bounded in time and size.
async fn linger<I: AsyncRead + AsyncWrite>(mut reader: Reader<I>, mut wr: WriteHalf<I>) {
    let _ = wr.shutdown().await;
    let drain = async {
        let mut dropped = 0;
        // Into the room the buffer has: nearly always the client's FIN is all that comes, and
        // growing the buffer for it (to 64 KiB, as a body read would) was a realloc and an
        // 8 KiB copy per closed connection.
        if reader.buf.capacity() < 1024 {
            reader.buf.reserve(4096);
        }
        while dropped < LINGER_BYTES {
            reader.buf.clear();
            match reader.io.read_buf(&mut reader.buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The requests in `wire` as this server reads them, fed at most `step` bytes per read: each
/// one's method, target and body, up to the first that cannot be read (then why). For the
/// fuzzer, which checks that the answer does not depend on `step`.
#[doc(hidden)]
pub fn read_all(wire: &[u8], step: usize, max_head: usize) -> Vec<Result<String, String>> {
    /// The wire in memory, handed out `step` bytes per read.
    struct Mem {
        buf: BytesMut,
        rest: Bytes,
        step: usize,
        back: Arc<Mutex<Option<(Mem, bool)>>>,
    }
    impl Source for Mem {
        fn buf(&mut self) -> &mut BytesMut {
            &mut self.buf
        }
        fn poll_fill(&mut self, _: &mut Context<'_>, _: u64) -> Poll<io::Result<usize>> {
            let n = self.step.min(self.rest.len());
            self.buf.extend_from_slice(&self.rest.split_to(n));
            Poll::Ready(Ok(n))
        }
        fn finish(self, reusable: bool) {
            let back = self.back.clone();
            *back.locked() = Some((self, reusable));
        }
    }
    let back = Arc::new(Mutex::new(None));
    let mut mem = Mem {
        buf: BytesMut::new(),
        rest: Bytes::copy_from_slice(wire),
        step: step.max(1),
        back: back.clone(),
    };
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        let (req, _, framing) = loop {
            if !mem.buf.is_empty() {
                match parse_request(&mut mem.buf, max_head) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(HeadError::Refuse(status, _, why)) => {
                        out.push(Err(format!("{status} {why}")));
                        return out;
                    }
                    Err(HeadError::Gone) => return out,
                }
            }
            if let Poll::Ready(Ok(0)) = mem.poll_fill(&mut cx, 0) {
                if !mem.buf.is_empty() {
                    out.push(Err("ended in a head".into()));
                }
                return out;
            }
        };
        let text = format!("{} {} ", req.method(), req.uri());
        let mut data = Vec::new();
        let mut body = FramedBody::new(mem, framing);
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        data.extend_from_slice(&d);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    out.push(Err(format!("{text}: {e}")));
                    return out;
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        drop(body);
        out.push(Ok(format!("{text}{}", String::from_utf8_lossy(&data))));
        let returned = back.locked().take();
        match returned {
            Some((m, true)) => mem = m,
            _ => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body::Frame;
    use http_body_util::StreamBody;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;
    use crate::proxy::body::full;

    /// A drain that never begins.
    static NO_DRAIN: Drain = Drain::new();

    const LIMITS: Limits = Limits {
        max_head: 1024,
        header_timeout: Duration::from_secs(5),
        shutdown_before_close: true,
    };

    /// Answers `METHOD target body` (the body read whole), or, for `/stream`, the same in
    /// three frames and a trailer; `/refuse` answers without reading the body.
    async fn echo(req: Request<ProxyBody>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        if parts.uri.path() == "/refuse" {
            return Response::new(full(Bytes::from_static(b"no")));
        }
        let data = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => Bytes::from(format!("error: {e}")),
        };
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&data)
        );
        if parts.uri.path() == "/stream" {
            let mut t = http::HeaderMap::new();
            t.insert("x-sum", HeaderValue::from_static("7"));
            let frames = [
                Frame::data(Bytes::from(text)),
                Frame::data(Bytes::from_static(b"!")),
                Frame::trailers(t),
            ];
            // One frame per poll, with no length known ahead.
            let frames = futures_util::stream::iter(frames.map(Ok::<_, BodyError>));
            return Response::new(StreamBody::new(frames).boxed_unsync());
        }
        Response::new(full(Bytes::from(text)))
    }

    /// Serves `wire` (then the client's end of stream) and returns all the server wrote,
    /// Date lines left out.
    async fn exchange(wire: &[u8], limits: Limits) -> String {
        let (mut client, server): (DuplexStream, DuplexStream) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(serve(server, limits, &NO_DRAIN, echo, || {}));
        client.write_all(wire).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.expect("read");
        served.await.expect("server task");
        String::from_utf8_lossy(&out)
            .split_inclusive("\r\n")
            .filter(|l| !l.starts_with("date: "))
            .collect()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let out = exchange(
            b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n\
              POST /b?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello\
              POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            LIMITS,
        )
        .await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nGET /a \
             HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\nPOST /b?q=1 hello\
             HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\nPOST /c abcde"
        );
    }

    #[tokio::test]
    async fn unknown_lengths_are_chunked_for_http11_and_close_delimited_for_http10() {
        let out = exchange(
            b"GET /stream HTTP/1.1\r\nte: trailers\r\n\r\nGET /stream HTTP/1.1\r\n\r\n",
            LIMITS,
        )
        .await;
        let one = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nc\r\nGET /stream \r\n1\r\n!\r\n0\r\n";
        assert_eq!(out, format!("{one}x-sum: 7\r\n\r\n{one}\r\n"));
        let out = exchange(b"GET /stream HTTP/1.0\r\n\r\n", LIMITS).await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nGET /stream !"
        );
        let out = exchange(
            b"GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\nHEAD /a HTTP/1.1\r\nconnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
            LIMITS,
        )
        .await;
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: keep-alive\r\n\r\nGET /a \
             HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n"
        );
    }

    /// A connection that takes several buffers per write, at most `step` bytes each time, and
    /// says it is busy every other time.
    struct Trickle {
        inner: DuplexStream,
        step: usize,
        busy: bool,
        calls: Arc<AtomicUsize>,
        vectored: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.busy = !self.busy;
            if self.busy {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut gathered = Vec::new();
            let bufs = if self.vectored { bufs } else { &bufs[..1] };
            for b in bufs {
                let take = (self.step - gathered.len()).min(b.len());
                gathered.extend_from_slice(&b[..take]);
                if gathered.len() == self.step {
                    break;
                }
            }
            Pin::new(&mut self.inner).poll_write(cx, &gathered)
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Data in buffers of its own goes out with the head and the framing in one write, in
    /// order, however little of it each write takes, chunked or within a Content-Length; to a
    /// connection that takes one buffer a write, as before. (That the bytes completing a
    /// Content-Length wait for the body's end is `tests/records.rs`'s strict durability test.)
    #[tokio::test]
    async fn large_data_goes_from_its_own_buffers_in_order() {
        /// `len` bytes of `fill`, then its length, so no two frames read alike.
        fn frame(len: usize, fill: u8) -> Bytes {
            let mut v = vec![fill; len];
            let tag = format!("<{len}>");
            let n = tag.len().min(len);
            v[len - n..].copy_from_slice(&tag.as_bytes()[..n]);
            Bytes::from(v)
        }
        let sizes = [3000, 10, 20_000, SPLICE_FROM, SPLICE_FROM - 1, 1500, 5];
        let mut many = vec![40_000; 2 * SPLICE_MAX];
        many.extend([7, SPLICE_MAX_BYTES, 3]);
        for (sizes, length) in [
            (&sizes[..], false),
            (&sizes[..], true),
            (&many[..], false),
            (&many[..], true),
        ] {
            for (step, vectored) in [
                (1 << 20, true),
                (700, true),
                (1, true),
                (1 << 20, false),
                (700, false),
            ] {
                if step == 1 && sizes.len() > 10 {
                    continue;
                }
                let frames: Vec<Bytes> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| frame(*n, b'a' + i as u8))
                    .collect();
                let whole: Vec<u8> = frames.concat();
                let total = whole.len();
                let handler = move |_req: Request<ProxyBody>| {
                    let frames = frames.clone();
                    async move {
                        let stream = futures_util::stream::iter(
                            frames
                                .into_iter()
                                .map(|b| Ok::<_, BodyError>(Frame::data(b))),
                        );
                        let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
                        if length {
                            resp.headers_mut()
                                .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
                        }
                        resp
                    }
                };
                let (mut client, server) = tokio::io::duplex(1 << 16);
                let calls = Arc::new(AtomicUsize::new(0));
                let io = Trickle {
                    inner: server,
                    step,
                    busy: false,
                    calls: calls.clone(),
                    vectored,
                };
                let served = tokio::spawn(serve(io, LIMITS, &NO_DRAIN, handler, || {}));
                client
                    .write_all(b"GET /big HTTP/1.1\r\nconnection: close\r\n\r\n")
                    .await
                    .expect("write");
                let mut wire = Vec::new();
                client.read_to_end(&mut wire).await.expect("read");
                served.await.expect("server task");
                let at = wire
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("a head")
                    + 4;
                let head = String::from_utf8_lossy(&wire[..at]).to_string();
                let body = if length {
                    assert!(
                        head.contains(&format!("content-length: {total}\r\n")),
                        "{head}"
                    );
                    wire[at..].to_vec()
                } else {
                    assert!(head.contains("transfer-encoding: chunked"), "{head}");
                    // Strictly: a size line, the data, CRLF; the last chunk ends the wire.
                    let (mut rest, mut body) = (&wire[at..], Vec::new());
                    loop {
                        let eol = rest.windows(2).position(|w| w == b"\r\n").expect("a line");
                        let size = std::str::from_utf8(&rest[..eol]).expect("hex");
                        let n = usize::from_str_radix(size, 16).expect("hex");
                        rest = &rest[eol + 2..];
                        if n == 0 {
                            assert_eq!(rest, b"\r\n", "the end after the last chunk");
                            break;
                        }
                        body.extend_from_slice(&rest[..n]);
                        assert_eq!(&rest[n..n + 2], b"\r\n");
                        rest = &rest[n + 2..];
                    }
                    body
                };
                assert!(
                    body == whole,
                    "sizes {sizes:?}, step {step}, length {length}, vectored {vectored}"
                );
                if step == 1 << 20 && sizes.len() < 10 {
                    // One write: head, framing and every frame (all were ready); one at a
                    // time, what comes before the 20,000 bytes, they, and what follows.
                    let writes = if vectored { 1 } else { 3 };
                    assert_eq!(calls.load(Ordering::Relaxed), writes, "length {length}");
                }
            }
        }
    }

    #[tokio::test]
    async fn ambiguous_or_oversized_heads_are_refused_and_the_connection_closed() {
        for (wire, status) in [
            (
                &b"POST /c HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
                "400",
            ),
            (b"POST /c HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", "400"),
            (b"POST /c HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc", "400"),
            (b"POST /c HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
            (b"GET /c HTTP/1.1\r\nbad header\r\n\r\n", "400"),
            (b"GET /c HTTP/1.1\r\nhost: x\r\n", "400"),
        ] {
            let out = exchange(wire, LIMITS).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")) && out.contains("connection: close"),
                "{}: {out}",
                String::from_utf8_lossy(wire)
            );
            assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
        }
        let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(2000));
        let out = exchange(big.as_bytes(), LIMITS).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        let many: String = (0..200).map(|i| format!("x-{i}: 1\r\n")).collect();
        let wire = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let limits = Limits {
            max_head: 1 << 20,
            ..LIMITS
        };
        assert!(
            exchange(wire.as_bytes(), limits)
                .await
                .starts_with("HTTP/1.1 431 ")
        );
    }

    #[tokio::test]
    async fn a_body_left_unread_keeps_the_connection_only_when_it_was_all_there() {
        let out = exchange(
            b"POST /refuse HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /after HTTP/1.1\r\n\r\n",
            LIMITS,
        )
        .await;
        assert!(
            out.ends_with("\r\n\r\nnoHTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nGET /after "),
            "{out}"
        );
        // The rest of this one has not arrived: the connection cannot be reused.
        let out = exchange(
            b"POST /refuse HTTP/1.1\r\ncontent-length: 300\r\n\r\nabc",
            LIMITS,
        )
        .await;
        assert!(
            out.contains("connection: close") || out.ends_with("no"),
            "{out}"
        );
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    }

    /// Reads a connection's answer to its end: a 200, said to be its last.
    async fn last_answer(client: &mut DuplexStream) {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut out));
        assert!(matches!(read.await, Ok(Ok(_))), "no end of stream");
        let out = String::from_utf8_lossy(&out);
        assert!(
            out.starts_with("HTTP/1.1 200 ") && out.ends_with("done"),
            "{out}"
        );
        assert!(out.contains("connection: close\r\n"), "{out}");
    }

    #[tokio::test]
    async fn at_the_drain_a_waiting_connection_closes_and_a_busy_one_answers_last() {
        let drain: &'static Drain = Box::leak(Box::new(Drain::new()));
        // Answers `/slow` once `go` is told, anything else at once.
        let go = Arc::new(tokio::sync::Notify::new());
        let handler = {
            let go = go.clone();
            move |req: Request<ProxyBody>| {
                let go = go.clone();
                async move {
                    if req.uri().path() == "/slow" {
                        go.notified().await;
                    }
                    Response::new(full(Bytes::from_static(b"done")))
                }
            }
        };
        let one_call = |handler| async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let served = tokio::spawn(serve(server, LIMITS, drain, handler, || {}));
            client
                .write_all(b"GET /a HTTP/1.1\r\n\r\n")
                .await
                .expect("write");
            let mut first = [0u8; 512];
            let n = client.read(&mut first).await.expect("answer");
            let first = String::from_utf8_lossy(&first[..n]).to_string();
            assert!(first.ends_with("done"), "{first}");
            (client, served)
        };
        // Quiet (no call for longer than QUIET), and idle since a moment.
        let (_quiet, quiet_served) = one_call(handler.clone()).await;
        tokio::time::sleep(QUIET + Duration::from_millis(300)).await;
        let (mut idle, idle_served) = one_call(handler.clone()).await;
        let (mut busy, server) = tokio::io::duplex(1 << 16);
        let handler_again = handler.clone();
        let busy_served = tokio::spawn(serve(server, LIMITS, drain, handler, || {}));
        busy.write_all(b"GET /slow HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        tokio::task::yield_now().await;
        // A new connection whose first call has not come yet.
        let (mut fresh, server) = tokio::io::duplex(1 << 16);
        let fresh_served = tokio::spawn(serve(server, LIMITS, drain, handler_again, || {}));
        tokio::task::yield_now().await;

        drain.begin_for_tests();
        let quiet_end = tokio::time::timeout(Duration::from_millis(300), quiet_served).await;
        assert!(
            quiet_end.is_ok(),
            "the quiet connection did not close at once"
        );
        // The connection between requests ends at its quiet mark at the latest, without an
        // answer.
        let idle_end = tokio::time::timeout(QUIET * 2, idle_served).await;
        assert!(
            idle_end.is_ok(),
            "the idle connection did not close at the drain"
        );
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest).await.expect("end");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        // The call in flight is answered, as the connection's last answer.
        go.notify_one();
        last_answer(&mut busy).await;
        // The new connection's first call is served (its client came to be served), as its
        // last.
        fresh
            .write_all(b"GET /a HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        last_answer(&mut fresh).await;
        assert!(
            tokio::time::timeout(Duration::from_secs(2), fresh_served)
                .await
                .is_ok()
        );
        let busy_end = tokio::time::timeout(Duration::from_secs(2), busy_served).await;
        assert!(
            busy_end.is_ok(),
            "the busy connection did not close after its answer"
        );
    }

    #[tokio::test]
    async fn a_close_answer_lingers_only_when_the_client_sent_more() {
        // Nothing more sent: the connection ends without waiting for the client's FIN.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve(server, LIMITS, &NO_DRAIN, echo, || {}));
        client
            .write_all(b"GET /a HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), client.read_to_end(&mut out));
        assert!(matches!(read.await, Ok(Ok(_))), "no end of stream");
        assert!(
            out.ends_with(b"GET /a "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let done = tokio::time::timeout(Duration::from_secs(1), served).await;
        assert!(done.is_ok(), "the server waited for the client");

        // A pipelined request already read: what the client sends is drained before closing,
        // so that the close does not reset the answer.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve(server, LIMITS, &NO_DRAIN, echo, || {}));
        client
            .write_all(b"GET /a HTTP/1.1\r\nconnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut head = [0u8; 17];
        client.read_exact(&mut head).await.expect("answer");
        assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !served.is_finished(),
            "closed with the client's bytes unread"
        );
        client.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert_eq!(
            String::from_utf8_lossy(&rest).matches("HTTP/1.1 ").count(),
            0
        );
        served.await.expect("server task");
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_before_the_body_is_read() {
        let out = exchange(
            b"PUT /e HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\nok",
            LIMITS,
        )
        .await;
        assert_eq!(
            out,
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nPUT /e ok"
        );
    }

    #[tokio::test]
    async fn a_client_that_closes_cancels_its_request() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
        let mut dropped_tx = Some(dropped_tx);
        // A handler that never answers, and says when it is dropped.
        let handler = move |_req: Request<ProxyBody>| {
            let guard = dropped_tx.take();
            async move {
                let _guard = guard;
                std::future::pending::<Response<ProxyBody>>().await
            }
        };
        let served = tokio::spawn(serve(server, LIMITS, &NO_DRAIN, handler, || {}));
        client
            .write_all(b"POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(client);
        let gone = tokio::time::timeout(Duration::from_secs(5), served).await;
        assert!(gone.is_ok(), "the server kept waiting for the handler");
        assert!(dropped_rx.await.is_err(), "the handler was dropped");
    }

    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_ends_the_connection() {
        let limits = Limits {
            header_timeout: Duration::from_millis(200),
            ..LIMITS
        };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve(server, limits, &NO_DRAIN, echo, || {}));
        client
            .write_all(b"GET /a HTTP/1.1\r\n\r\nGET /slow HTTP/1.1\r\nx-slow: ")
            .await
            .expect("write");
        let mut out = Vec::new();
        // The server closes on its own: the client never finishes or shuts down.
        client.read_to_end(&mut out).await.expect("read");
        served.await.expect("server task");
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("GET /a "), "{out}");
        assert!(out.contains("HTTP/1.1 408 "), "{out}");
        // Idle between requests: closed without an answer.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve(server, limits, &NO_DRAIN, echo, || {}));
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.expect("read");
        served.await.expect("server task");
        assert!(out.is_empty());
    }

    /// Reads from `client` until `tail` has come (the end of an echo answer), for at most
    /// `within`.
    async fn answer_ending(client: &mut DuplexStream, tail: &str, within: Duration) -> String {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let read = async {
            while !String::from_utf8_lossy(&got).ends_with(tail) {
                let n = client.read(&mut chunk).await.expect("read");
                assert!(
                    n > 0,
                    "closed before {tail:?}: {:?}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(within, read)
            .await
            .expect("no answer in time");
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Serves echo on an in-memory connection, counting the calls of its `quiet` hook.
    fn serve_counting_quiets(
        limits: Limits,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
        let quiets = Arc::new(AtomicUsize::new(0));
        let counted = quiets.clone();
        let (client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve(server, limits, &NO_DRAIN, echo, move || {
            counted.fetch_add(1, Ordering::Relaxed);
        }));
        (client, served, quiets)
    }

    /// [`serve_counting_quiets`] after one call answered (`GET /a`), the connection kept.
    async fn after_one_call(
        limits: Limits,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
        let (mut client, served, quiets) = serve_counting_quiets(limits);
        client
            .write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        answer_ending(&mut client, "GET /a ", Duration::from_secs(1)).await;
        (client, served, quiets)
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_connection_gives_back_what_it_holds_and_serves_the_next_request() {
        let limits = Limits {
            max_head: 16 * 1024,
            ..LIMITS
        };
        let (mut client, served, quiets) = after_one_call(limits).await;
        assert_eq!(quiets.load(Ordering::Relaxed), 0, "quiet while answering");
        tokio::time::sleep(QUIET + Duration::from_millis(100)).await;
        assert_eq!(
            quiets.load(Ordering::Relaxed),
            1,
            "a quiet second gives back once"
        );
        tokio::time::sleep(QUIET * 2).await;
        assert_eq!(
            quiets.load(Ordering::Relaxed),
            1,
            "once per wait, not per second"
        );
        // A head larger than the quiet buffer: it grows again, and the answer is whole.
        let big = "v".repeat(3 * QUIET_READ);
        client
            .write_all(format!("GET /b HTTP/1.1\r\nx-big: {big}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let out = answer_ending(&mut client, "GET /b ", Duration::from_secs(1)).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        tokio::time::sleep(QUIET + Duration::from_millis(100)).await;
        assert_eq!(
            quiets.load(Ordering::Relaxed),
            2,
            "each wait for a request quiets"
        );
        drop(client);
        served.await.expect("server task");
    }

    #[tokio::test(start_paused = true)]
    async fn empty_lines_between_requests_do_not_keep_a_connection_from_quieting() {
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            ..LIMITS
        };
        let (mut client, served, quiets) = after_one_call(limits).await;
        // A bare LF, then a CRLF and another bare LF: empty lines, not the start of a head.
        client.write_all(b"\n").await.expect("write");
        tokio::time::sleep(QUIET / 4).await;
        client.write_all(b"\r\n\n").await.expect("write");
        tokio::time::sleep(QUIET).await;
        assert_eq!(quiets.load(Ordering::Relaxed), 1, "quiet after empty lines");
        // The next request is served, its empty lines before it ignored.
        client
            .write_all(b"\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let out = answer_ending(&mut client, "GET /b ", Duration::from_secs(1)).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        // Idle past the header timeout: closed as idle, not answered 408.
        client.write_all(b"\n").await.expect("write");
        tokio::time::sleep(limits.header_timeout + QUIET).await;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), client.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        served.await.expect("server task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_begun_before_the_quiet_mark_keeps_its_buffer_and_its_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_secs(3),
            ..LIMITS
        };
        let (mut client, served, quiets) = serve_counting_quiets(limits);
        let start = tokio::time::Instant::now();
        // The server waits from an empty buffer (its quiet mark set) before the head begins.
        tokio::time::sleep(QUIET / 10).await;
        client
            .write_all(b"GET /a HTTP/1.1\r\nx-")
            .await
            .expect("write");
        tokio::time::sleep(QUIET * 2).await;
        assert_eq!(
            quiets.load(Ordering::Relaxed),
            0,
            "a begun head is not given back"
        );
        client.write_all(b"slow: 1\r\n\r\n").await.expect("write");
        answer_ending(&mut client, "GET /a ", Duration::from_secs(1)).await;
        // A head that never ends is refused at the header timeout from the start of its
        // wait, quiet mark or not.
        let start2 = tokio::time::Instant::now();
        tokio::time::sleep(QUIET * 2).await;
        assert_eq!(quiets.load(Ordering::Relaxed), 1);
        client
            .write_all(b"GET /b HTTP/1.1\r\nx-")
            .await
            .expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out))
            .await
            .expect("the connection never ended")
            .expect("read");
        let took = start2.elapsed();
        assert!(
            String::from_utf8_lossy(&out).contains("HTTP/1.1 408 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert!(
            took >= limits.header_timeout && took < limits.header_timeout + QUIET,
            "refused after {took:?}"
        );
        served.await.expect("server task");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_still_closes_at_the_header_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_secs(3),
            ..LIMITS
        };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let start = tokio::time::Instant::now();
        let served = tokio::spawn(serve(server, limits, &NO_DRAIN, echo, || {}));
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out))
            .await
            .expect("the connection never ended")
            .expect("read");
        served.await.expect("server task");
        let took = start.elapsed();
        assert!(out.is_empty());
        assert!(
            took >= limits.header_timeout && took < limits.header_timeout + QUIET,
            "closed after {took:?}"
        );
    }
}
