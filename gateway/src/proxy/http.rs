//! The http stage: serves HTTP/1.1 and h2 on an intercepted connection (TLS already
//! terminated when intercepted) with hyper, and takes each request through
//! extract → decide → forward → mask → record.
//!
//! Nothing reaches the upstream that policy did not allow and that cannot be recorded; every
//! refusal is answered in the client's own protocol (see [`crate::proxy::reply`]).
mod admit;
mod budget;
mod decide;
mod forward;
mod hold;
mod identify;
mod mcp_check;
mod refuse;
mod respond;
mod server1;
mod streaming;
mod whole;

#[doc(hidden)]
pub use server1::read_all as read_http1_requests;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use self::{admit::read_body, decide::Decided, forward::Outgoing, refuse::end_span};
use crate::{
    call::{Caller, Role},
    extract::{self, Extracted, Kind},
    identity,
    policy::{Action, PolicyStore},
    proxy::{
        ProxyInputs,
        body::{BodyError, ProxyBody},
        reply::{self, Refusal},
        upstream::pool::Http1Slot,
    },
    record::{Record, SharedJson},
};

pub use budget::{ConnectionBudget, InspectionBudget};
pub use mcp_check::InFlight;
pub use streaming::Recording;
pub use whole::filter_tools;

/// One intercepted connection that speaks HTTP, and what every call on it shares.
pub struct Conn {
    pub inputs: Arc<ProxyInputs>,
    pub policy: Arc<PolicyStore>,
    pub dst: SocketAddr,
    /// The workload's network namespace (cookie): upstreams are dialled from it.
    pub netns: u64,
    /// `dst` as text, as records and spans name it: formatted once, not per call.
    pub dst_text: Arc<str>,
    /// `dst`'s IP as text, the form service lookup takes.
    pub dst_host: String,
    pub sni: Option<String>,
    /// The client's TLS was terminated here, so the upstream gets TLS too.
    pub tls: bool,
    pub workload: SharedJson,
    /// `workload` was masked for the records once, when the connection began
    /// ([`crate::record::Recorder::mask_workload`]).
    pub workload_masked: bool,
    /// The caller without a token: the workload alone.
    pub caller: Arc<Caller>,
    pub last_token: identity::LastToken,
    pub session: Arc<str>,
    /// The upstream connection this connection's HTTP/1 calls go over (plain text, or TLS
    /// re-originated towards the upstream), and the data-path thread it is served on.
    pub http1: Http1Slot,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.inputs
            .upstreams
            .release_http1(self.dst, self.netns, &self.http1);
    }
}

/// What a connection is known to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    /// h2, or either (a TLS client that offered no ALPN): hyper tells them apart.
    H2OrEither,
}

/// Serves requests until the client closes or a limit ends the connection. HTTP/1 goes to the
/// gateway's own server ([`server1`]), the rest to hyper's.
pub async fn serve<I>(io: I, conn: Arc<Conn>, speaks: Speaks)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = conn.inputs.cfg.http.clone();
    let inputs = conn.inputs.clone();
    let drain = inputs.drains.lane(conn.http1.lane());
    if speaks == Speaks::Http1 {
        let limits = server1::Limits {
            max_head: limits.max_header_bytes,
            header_timeout: limits.header_timeout,
            shutdown_before_close: conn.tls,
        };
        // A quiet connection's upstream connection waits with the thread's idle ones, while
        // they have room: a thousand idle clients do not hold a thousand upstream connections.
        let quiet = || {
            conn.inputs
                .upstreams
                .quiet_http1(conn.dst, conn.netns, &conn.http1)
        };
        return server1::serve(io, limits, drain, |req| conn.clone().handle(req), quiet).await;
    }
    // The streams of one h2 connection share a part of the inspection budget, so that one
    // connection cannot take all of it.
    let share = conn.inputs.inspection.connection();
    // The calls in flight on this connection, answers still streaming included: what the
    // stop's drain waits for.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let calls = in_flight.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let conn = conn.clone();
        req.extensions_mut().insert(share.clone());
        let call = CallInFlight::new(&calls);
        async move {
            let resp = conn.handle(req.map(boxed)).await;
            Ok::<_, Infallible>(resp.map(|body| call.until_sent(body)))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256);
    let activity = Arc::new(AtomicUsize::new(0));
    let io = Active {
        io,
        activity: activity.clone(),
    };
    let served = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(served);
    // At the stop's drain: closed once quiet (see [`quiet`]).
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        () = drain.begins() => quiet(served.as_mut(), &in_flight, &activity).await.unwrap_or(Ok(())),
    };
    if let Err(e) = ended {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// How long a connection must be quiet (no call in flight, no byte moved either way) before
/// the drain closes it.
const QUIET_BEFORE_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves `served` until it has been quiet for [`QUIET_BEFORE_CLOSE`] (None: the caller
/// closes it), or it ends (its end). Quiet is no call in flight and no byte moved either way
/// (`activity`): h2 may still hold an answer's last bytes for the client's window after the
/// answer's body was handed over, so the call count alone would cut a slow reader's answer.
///
/// No GOAWAY is sent first (hyper's `graceful_shutdown`): python-h2 (httpx's h2) reads a
/// GOAWAY as the connection's end and fails the stream its application is still reading on
/// the next frame (python-hyper/h2#1199: the PING hyper sends with its GOAWAY), and hyper
/// waits for that PING's acknowledgement, which an idle synchronous client never reads. A
/// quiet connection's close is what any server's idle timeout does: the client has had every
/// byte, and opens a new connection for its next call. Checked every 50 ms, within the stop's
/// grace.
async fn quiet<F>(
    mut served: std::pin::Pin<&mut F>,
    in_flight: &AtomicUsize,
    activity: &AtomicUsize,
) -> Option<Result<(), Box<dyn std::error::Error + Send + Sync>>>
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    const EVERY: std::time::Duration = std::time::Duration::from_millis(50);
    let mut idle = std::time::Duration::ZERO;
    let mut moved = activity.load(Relaxed);
    while idle < QUIET_BEFORE_CLOSE {
        tokio::select! {
            ended = served.as_mut() => return Some(ended),
            () = tokio::time::sleep(EVERY) => {
                let now = activity.load(Relaxed);
                idle = match (in_flight.load(Relaxed), now == moved) {
                    (0, true) => idle + EVERY,
                    _ => std::time::Duration::ZERO,
                };
                moved = now;
            }
        }
    }
    None
}

/// A hyper-served connection's socket, counting the reads and writes that moved bytes (what
/// [`quiet`] watches).
struct Active<I> {
    io: I,
    activity: Arc<AtomicUsize>,
}

impl<I> Active<I> {
    fn moved(&self, n: usize) {
        if n > 0 {
            self.activity.fetch_add(1, Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Active<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.moved(n);
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Active<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.moved(*n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.moved(*n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a call as in flight on its connection from its request to the end of its answer
/// (or until either is dropped).
struct CallInFlight(Arc<AtomicUsize>);

impl CallInFlight {
    fn new(calls: &Arc<AtomicUsize>) -> Self {
        calls.fetch_add(1, Relaxed);
        Self(calls.clone())
    }

    /// `body`, still counting the call until it has been sent (or dropped).
    fn until_sent(self, body: ProxyBody) -> ProxyBody {
        InFlightBody { body, _call: self }.boxed_unsync()
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// An answer's body whose call is in flight while it lasts.
struct InFlightBody {
    body: ProxyBody,
    _call: CallInFlight,
}

impl http_body::Body for InFlightBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn boxed(body: Incoming) -> ProxyBody {
    fn error(e: hyper::Error) -> BodyError {
        Box::new(e)
    }
    body.map_err(error).boxed_unsync()
}

impl Conn {
    async fn handle(self: Arc<Self>, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let started = Instant::now();
        let stats = &self.inputs.stats;
        stats.calls.fetch_add(1, Relaxed);
        let snap = self.policy.snapshot();
        let (mut parts, body) = req.into_parts();
        let service = snap.service_for(&self.dst_host, self.dst.port(), self.sni.as_deref());
        let kind = service.map_or(Kind::Http, |s| extract::kind_of(&s.surface));
        // The call log first: nothing is done for a call that could not be recorded, and every
        // refusal below is recorded too, which the recorder owes only to a call it admitted.
        if let Some(e) = self.inputs.recorder.as_ref().and_then(|r| r.ready().err()) {
            stats.refused_recording.fetch_add(1, Relaxed);
            let r = Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "recording_unavailable",
                format!("the call cannot be recorded: {e}"),
            );
            return r.respond(kind, None);
        }
        // The request's one bearer token, where tokens are verified; more than one is refused
        // below, before any rule sees the call.
        let token = match &self.inputs.verifier {
            Some(_) => identity::bearer(&parts.headers, &parts.uri, &snap.identity),
            None => Ok(None),
        };
        let caller = self
            .identify(&snap, token.as_ref().ok().copied().flatten())
            .await;
        let recording = self.inputs.recorder.is_some().then(|| {
            let mut rec = Record::of_call(
                self.session.clone(),
                self.dst_text.clone(),
                self.workload.clone(),
                &caller,
                kind.as_str(),
                service.map(|s| &s.name),
            );
            rec.workload_masked = self.workload_masked;
            Recording {
                conn: self.clone(),
                rec,
                started,
                full: true,
            }
        });

        // Refusals that need no call: the name the client used, and a request that has no
        // one form to decide and forward.
        if let Some(s) = service {
            // One bearer token: the call is decided on it and forwarded as sent.
            if let Err(e) = &token {
                stats.refused_policy.fetch_add(1, Relaxed);
                let r = Refusal {
                    service: Some(s.name.to_string()),
                    ..Refusal::new(StatusCode::BAD_REQUEST, "ambiguous_token", e.to_string())
                };
                return self
                    .refuse(recording, kind, extract::raw(&parts), None, r)
                    .await;
            }
            if let Some(r) = self.names_refusal(s, &parts) {
                stats.refused_policy.fetch_add(1, Relaxed);
                return self
                    .refuse(recording, kind, extract::raw(&parts), None, r)
                    .await;
            }
            if let Err(e) = extract::canonicalise(&s.surface, &mut parts) {
                stats.refused_policy.fetch_add(1, Relaxed);
                let r = Refusal {
                    service: Some(s.name.to_string()),
                    ..Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
                };
                return self
                    .refuse(recording, kind, extract::raw(&parts), None, r)
                    .await;
            }
        }

        // A JSON-RPC or MCP service's other paths: plain HTTP, decided and answered as such,
        // the body of a POST read all the same (a message there is refused).
        let off_endpoint = service.is_some_and(|s| extract::off_endpoint(kind, &s.surface, &parts));
        // Extraction is asked in the service's protocol: off the endpoint it reads the request
        // as plain HTTP itself, and refuses a body that is a message.
        let (protocol, kind) = (kind, if off_endpoint { Kind::Http } else { kind });
        let recording = recording.map(|mut r| {
            if off_endpoint {
                r.rec.protocol = kind.as_str().into();
            }
            r
        });
        // Read what the decision needs, bounded.
        let limits = &self.inputs.cfg.http;
        let unread_body = !http_body::Body::is_end_stream(&body);
        let needs_body = service.is_some_and(|s| kind.needs_body(&parts, &s.surface))
            || (off_endpoint && parts.method == http::Method::POST);
        let (held_body, stream_body) = if service.is_some() && needs_body {
            match read_body(body, &parts, limits, &self.inputs.inspection).await {
                Ok(b) => (Some(b), None),
                Err(r) => {
                    return self
                        .refuse(recording, kind, extract::raw(&parts), None, r)
                        .await;
                }
            }
        } else {
            (None, Some(body))
        };
        let extracted = match service {
            Some(s) => extract::extract(
                protocol,
                &s.surface,
                &parts,
                held_body.as_deref(),
                held_body.is_none() && unread_body,
            ),
            None => Ok(Extracted {
                kind,
                calls: vec![extract::raw(&parts)],
                batch: false,
                route: None,
            }),
        };
        let extracted = match extracted {
            Ok(e) => e,
            Err(e) => {
                let r = Refusal::new(StatusCode::BAD_REQUEST, e.code(), e.to_string());
                return self
                    .refuse(recording, kind, extract::raw(&parts), None, r)
                    .await;
            }
        };
        // A token in a REST body (a form's or a JSON object's `access_token`, RFC 6750 2.2;
        // Doorkeeper's `bearer_token`) or beside a JSON-RPC message's own fields is one the
        // gateway does not verify, beside the one it decided on: refused as a second token in
        // a header is. (A multipart body, and an `http` service's, are not read.)
        if self.inputs.verifier.is_some()
            && let Some(name) = extracted.calls.iter().find_map(|c| match kind {
                Kind::Rest => identity::token_argument(&c.args),
                // Beside `jsonrpc` and `method` (Rails' params would read it there).
                Kind::JsonRpc | Kind::Mcp => c.message.as_ref().and_then(identity::token_argument),
                Kind::Grpc | Kind::Http => None,
            })
        {
            stats.refused_policy.fetch_add(1, Relaxed);
            let r = Refusal::new(
                StatusCode::BAD_REQUEST,
                "ambiguous_token",
                format!(
                    "the request carries a token in its argument {name:?}, which the gateway does not verify"
                ),
            );
            return self
                .refuse(recording, kind, extract::raw(&parts), None, r)
                .await;
        }

        if kind == Kind::Mcp {
            if let Err(e) = crate::extract::mcp_headers::agree(&parts.headers, &extracted.calls) {
                stats.refused_policy.fetch_add(1, Relaxed);
                let r = Refusal {
                    service: service.map(|s| s.name.to_string()),
                    rpc_code: Some(crate::extract::mcp_headers::HEADER_MISMATCH),
                    ..Refusal::new(StatusCode::BAD_REQUEST, "header_mismatch", e.to_string())
                };
                let call = extracted.calls.into_iter().next();
                let call = call.unwrap_or_else(|| extract::raw(&parts));
                return self.refuse(recording, kind, call, None, r).await;
            }
        }
        let deciding = Instant::now();
        let mut decided: Vec<Decided> = extracted
            .calls
            .into_iter()
            .map(|mut call| {
                let mut decision = self.decide(&snap, service, &caller, &mut call);
                let limited = self.limit(service, &caller, &call, &decision);
                if limited.is_some() {
                    decision.enforced = Action::Deny;
                }
                Decided {
                    call,
                    decision,
                    caller: caller.clone(),
                    limited,
                }
            })
            .collect();
        // `/items/7.json` is `/items/7` to Rails, `/Items/7` not `get_item` to Flask: every
        // reading must be decided alike.
        if let (Some(s), [d]) = (service, decided.as_mut_slice()) {
            let read = self.other_readings_refusal(
                &snap,
                s,
                d,
                (kind, &parts, extracted.route),
                (held_body.as_deref(), held_body.is_none() && unread_body),
            );
            match read {
                Ok(others) => self.limit_readings(service, d, &others),
                Err(r) => {
                    stats.refused_policy.fetch_add(1, Relaxed);
                    let call = decided
                        .pop()
                        .map_or_else(|| extract::raw(&parts), |d| d.call);
                    return self.refuse(recording, kind, call, None, *r).await;
                }
            }
        }
        for d in decided.iter_mut() {
            self.fleet_quota(service, d).await;
        }
        if extracted.batch {
            mcp_check::guard_batch(service, &mut decided);
        }
        let metrics = &self.inputs.metrics;
        metrics.decided_in(deciding.elapsed());
        for d in &decided {
            let counter = if d.decision.enforced == Action::Allow {
                &stats.calls_allowed
            } else {
                &stats.calls_denied
            };
            counter.fetch_add(1, Relaxed);
            let function = &d.call.function;
            let outcome = match d.limited {
                Some(_) => "limited",
                None => d.decision.enforced.as_str(),
            };
            let declared = service.and_then(|s| s.function(function)).map(|f| &f.name);
            metrics.call(service.map(|s| &s.name), declared, outcome);
        }

        // Under way until its answer is done: a second request with its id in the session
        // would take its answer (see `mcp_check::InFlight`).
        let in_flight = match service.filter(|_| kind == Kind::Mcp) {
            Some(s) => match mcp_check::in_flight(&self, s, &parts.headers, &decided) {
                Ok(guards) => guards,
                Err((code, why)) => {
                    let r = Refusal::new(StatusCode::BAD_REQUEST, code, why);
                    let Some(one) = decided.into_iter().next() else {
                        return reply::empty(StatusCode::BAD_REQUEST);
                    };
                    return self
                        .refuse(recording, kind, one.call, Some(&one.decision), r)
                        .await;
                }
            },
            None => Vec::new(),
        };
        if extracted.batch {
            return whole::batch(&self, service, &snap, parts, decided, recording).await;
        }
        let Some(one) = decided.into_iter().next() else {
            return reply::empty(StatusCode::BAD_REQUEST);
        };
        let mut recording = recording;
        if let (Some(r), Some(round)) = (recording.as_mut(), mcp_check::input_round(&one)) {
            r.rec.mcp = Some(round);
        }
        let mut span = self.span(service, &parts.headers, &one);
        // A call to be held has its body read first (bounded): the connection is then the
        // server's again, which notices a client that goes away while the call waits.
        let (held_body, stream_body) = match (held_body, stream_body) {
            (None, Some(b)) if one.decision.enforced == Action::Approve => {
                match read_body(b, &parts, limits, &self.inputs.inspection).await {
                    Ok(b) => (Some(b), None),
                    Err(r) => {
                        end_span(span.take(), &r);
                        return self
                            .refuse(recording, kind, one.call, Some(&one.decision), r)
                            .await;
                    }
                }
            }
            other => other,
        };
        if one.decision.enforced == Action::Approve {
            // Held here, the upstream untouched, until a verdict or the rule's timeout.
            let (approved, info) = self.hold(service, kind, &one, recording.as_ref()).await;
            if let (Some(r), Some(info)) = (recording.as_mut(), info) {
                r.rec.approval = Some(info);
            }
            if let Err(r) = approved {
                end_span(span.take(), &r);
                return self
                    .refuse(recording, kind, one.call, Some(&one.decision), r)
                    .await;
            }
        } else if one.decision.enforced != Action::Allow {
            let r = one.refusal();
            end_span(span.take(), &r);
            return self
                .refuse(recording, kind, one.call, Some(&one.decision), r)
                .await;
        }
        if let Some(s) = service.filter(|s| s.mcp.checks_tools()) {
            if let Err((r, note)) = mcp_check::before_call(&self, &snap, s, &parts, &one).await {
                if let Some(rec) = recording.as_mut() {
                    mcp_check::merge_note(&mut rec.rec.mcp, note);
                }
                end_span(span.take(), &r);
                return self
                    .refuse(recording, kind, one.call, Some(&one.decision), r)
                    .await;
            }
        }
        let body = match (held_body, stream_body) {
            (Some(b), _) => crate::proxy::body::full(b),
            (None, Some(b)) => b,
            (None, None) => crate::proxy::body::full(Bytes::new()),
        };
        let version = parts.version;
        let cut = streaming::OnCut::new(|| {
            if let Some(r) = one.recording(recording.clone(), None) {
                r.cut();
            }
        });
        let resp = match self
            .forward(
                &snap,
                service,
                Outgoing {
                    kind,
                    parts,
                    body,
                    ob: &one.decision.obligations,
                    span: span.as_ref(),
                },
            )
            .await
        {
            Ok(resp) => {
                if let Some(s) = span.take() {
                    s.end(resp.status().as_u16(), None);
                }
                resp
            }
            Err(r) => {
                cut.disarm();
                end_span(span.take(), &r);
                return self
                    .refuse(recording, kind, one.call, Some(&one.decision), r)
                    .await;
            }
        };
        cut.disarm();
        if one.call.role == Role::ListTools {
            if let Some(s) = service {
                return whole::list_tools(&self, s, &snap, version, resp, one, recording).await;
            }
        }
        // An MCP stream may carry any call's answer, a listing's too: a session stream
        // resumed with `Last-Event-ID` replays them, and a server may answer a listing on a
        // stream other than the listing's own.
        let tools = match service {
            Some(s) if kind == Kind::Mcp => Some(whole::tool_filter(
                &self,
                snap.clone(),
                s,
                one.caller.clone(),
                None,
            )),
            _ => None,
        };
        let mcp = respond::McpAnswer { tools, in_flight };
        self.respond(kind, version, resp, one, recording, mcp)
    }
}
