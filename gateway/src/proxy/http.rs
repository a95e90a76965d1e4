//! The http stage: serves HTTP/1.1 and h2 on an intercepted connection (TLS already
//! terminated when intercepted) with hyper, and takes each request through
//! extract → decide → forward → mask → record.
//!
//! Nothing reaches the upstream that policy did not allow and that cannot be recorded; every
//! refusal is answered in the client's own protocol (see [`crate::proxy::reply`]).
mod body;
mod budget;
mod held;
mod server1;

#[doc(hidden)]
pub use server1::read_all as read_http1_requests;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::proxy::body::{BodyError, ProxyBody};
use crate::{
    approve,
    call::{Call, Caller},
    extract::{self, Extracted, Kind, OneCall, Role},
    identity,
    obligations::mask::scrub::{ScrubStream, Secrets},
    policy::{Action, Decision, Obligations, PolicyStore, Service, Snapshot},
    proxy::ProxyInputs,
    proxy::forward::pool::{Http1Slot, HttpClient, UpstreamBody, UpstreamKey},
    proxy::h1::{self, list_items},
    proxy::reply::{self, Refusal},
    record::{Record, RecordedDecision, SharedJson},
    telemetry::trace::CallSpan,
};

pub use body::Recording;
pub use budget::{ConnectionBudget, InspectionBudget};
pub use held::filter_tools;

/// One intercepted connection that speaks HTTP, and what every call on it shares.
pub struct Conn {
    pub inputs: Arc<ProxyInputs>,
    pub policy: Arc<PolicyStore>,
    pub dst: SocketAddr,
    /// The workload's network namespace (cookie): upstreams are dialled from it.
    pub netns: u64,
    /// `dst` as text, as records and spans name it: formatted once, not per call.
    pub dst_text: String,
    /// `dst`'s IP as text, the form service lookup takes.
    pub dst_host: String,
    pub sni: Option<String>,
    /// The client's TLS was terminated here, so the upstream gets TLS too.
    pub tls: bool,
    pub workload: SharedJson,
    /// The caller without a token: the workload alone.
    pub caller: Arc<Caller>,
    pub last_token: identity::LastToken,
    pub session: String,
    /// The upstream connection this connection's HTTP/1 calls go over, when plain text.
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
    if speaks == Speaks::Http1 {
        let limits = server1::Limits {
            max_head: limits.max_header_bytes,
            header_timeout: limits.header_timeout,
        };
        return server1::serve(io, limits, |req| conn.clone().handle(req)).await;
    }
    // The streams of one h2 connection share a part of the inspection budget, so that one
    // connection cannot take all of it.
    let share = conn.inputs.inspection.connection();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let conn = conn.clone();
        req.extensions_mut().insert(share.clone());
        async move { Ok::<_, Infallible>(conn.handle(req.map(boxed)).await) }
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
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

fn boxed(body: Incoming) -> ProxyBody {
    fn error(e: hyper::Error) -> BodyError {
        Box::new(e)
    }
    body.map_err(error).boxed_unsync()
}

/// The scrubber for the credential injected into a request, carried on its response.
#[derive(Clone)]
struct Injected(Arc<Secrets>);

/// `resp`'s body scrubber, if a credential went out with its request.
fn injected<B>(resp: &Response<B>) -> Option<Arc<Secrets>> {
    resp.extensions().get::<Injected>().map(|i| i.0.clone())
}

/// The record of a call held for approval, written as cancelled if the call's future is
/// dropped (its client went away) before the hold ends; emptied once it has.
struct OnCancel(Option<Recording>);

impl Drop for OnCancel {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let _ = r.submit(None, None, false, 0);
        }
    }
}

/// What the decide step concluded for each call of a request.
struct Decided {
    call: OneCall,
    decision: Decision,
    caller: Arc<Caller>,
    /// The rate limit or quota the call is over; its decision is then enforced as a deny.
    limited: Option<crate::obligations::limit::Hit>,
}

impl Decided {
    /// This call's record, begun from the request's: its decision as decided, or (`refusal`)
    /// as the gateway then answered it. None when recording is off or the policy says not to.
    fn recording(&self, r: Option<Recording>, refusal: Option<&Refusal>) -> Option<Recording> {
        let r = r?;
        r.with_call(
            &self.call,
            self.recorded(refusal),
            Some(&self.decision.obligations),
        )
    }

    /// [`Self::recording`] for a call that is done with: its name and arguments move into the
    /// record instead of being copied.
    fn into_recording(self, r: Option<Recording>, refusal: Option<&Refusal>) -> Option<Recording> {
        let r = r?;
        let decision = self.recorded(refusal);
        r.with_call_taken(self.call, decision, Some(&self.decision.obligations))
    }

    fn recorded(&self, refusal: Option<&Refusal>) -> RecordedDecision {
        match refusal {
            Some(refusal) => refused_decision(Some(&self.decision), refusal),
            None if self.limited.is_some() => {
                refused_decision(Some(&self.decision), &self.refusal())
            }
            None => recorded_decision(&self.decision),
        }
    }
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
        let caller = self.identify(&snap, &parts.headers).await;
        let recording = self.inputs.recorder.is_some().then(|| {
            let mut rec = Record::new(self.session.clone(), self.dst_text.clone());
            rec.workload = Some(self.workload.clone());
            rec.caller = recorded_caller(&caller);
            rec.protocol = kind.as_str().into();
            rec.service = service.map(|s| String::from(&*s.name));
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

        // Read what the decision needs, bounded.
        let limits = &self.inputs.cfg.http;
        let unread_body = !http_body::Body::is_end_stream(&body);
        let (held_body, stream_body) = if service.is_some() && kind.needs_body(&parts) {
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
                kind,
                &s.surface,
                &parts,
                held_body.as_deref(),
                held_body.is_none() && unread_body,
            ),
            None => Ok(Extracted {
                kind,
                calls: vec![extract::raw(&parts)],
                batch: false,
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

        let deciding = Instant::now();
        let decided: Vec<Decided> = extracted
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

        if extracted.batch {
            return held::batch(&self, service, &snap, parts, decided, recording).await;
        }
        let Some(one) = decided.into_iter().next() else {
            return reply::empty(StatusCode::BAD_REQUEST);
        };
        let mut recording = recording;
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
            let (approved, info) = self.approve(service, &one, recording.as_ref()).await;
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
        let body = match (held_body, stream_body) {
            (Some(b), _) => crate::proxy::body::full(b),
            (None, Some(b)) => b,
            (None, None) => crate::proxy::body::full(Bytes::new()),
        };
        let version = parts.version;
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
                end_span(span.take(), &r);
                return self
                    .refuse(recording, kind, one.call, Some(&one.decision), r)
                    .await;
            }
        };
        if one.call.role == Role::ListTools {
            if let Some(s) = service {
                return held::list_tools(&self, s, &snap, version, resp, one, recording).await;
            }
        }
        self.respond(kind, version, resp, one, recording)
    }

    /// Every name the request gives its destination must agree (the request line's authority,
    /// `:authority`, the one `Host`) and name `service`: the check reads one, the upstream may
    /// route on another, so two that disagree are refused. The refusal, if any.
    fn names_refusal(&self, s: &Service, parts: &http::request::Parts) -> Option<Refusal> {
        let refusal = |status, error, reason: String| Refusal {
            service: Some(s.name.to_string()),
            ..Refusal::new(status, error, reason)
        };
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (_, Some(_)) => {
                return Some(refusal(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request has more than one Host header".into(),
                ));
            }
            (Some(v), None) => match v.to_str() {
                Ok(v) => Some(v),
                Err(_) => {
                    return Some(refusal(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the Host header is not text".into(),
                    ));
                }
            },
            (None, None) => None,
        };
        let target = parts.uri.authority().map(|a| a.as_str());
        for name in [target, host].into_iter().flatten() {
            if name.contains('@') {
                return Some(refusal(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the authority has user information".into(),
                ));
            }
        }
        if let (Some(t), Some(h)) = (target, host) {
            if !same_authority(t, h) {
                return Some(refusal(
                    StatusCode::BAD_REQUEST,
                    "authority_mismatch",
                    format!("the request names {t} but its Host header names {h}"),
                ));
            }
        }
        if let Some(name) = target.or(host) {
            if !s.accepts_host(name, self.dst.ip()) {
                return Some(refusal(
                    StatusCode::FORBIDDEN,
                    "host_mismatch",
                    format!(
                        "{name} does not name service {} (reached at {})",
                        s.name, self.dst
                    ),
                ));
            }
        }
        None
    }

    /// Holds a call its rule says needs approval, unless a grant covers it. Ok to go ahead;
    /// either way, what the record says about the approval.
    async fn approve(
        &self,
        service: Option<&Service>,
        one: &Decided,
        recording: Option<&Recording>,
    ) -> (Result<(), Refusal>, Option<Json>) {
        let ob = &one.decision.obligations;
        let (Some(approvals), Some(spec), Some(service)) =
            (&self.inputs.approvals, &ob.approval, service)
        else {
            return (Err(one.refusal()), None);
        };
        let key = &self.inputs.mask_key;
        let digest = key.fingerprint("args", one.call.args.to_string().as_bytes());
        let function = &one.call.function;
        let metrics = &self.inputs.metrics;
        let rule = one.decision.rule.as_deref().unwrap_or("");
        let granted = approvals.granted(approve::GrantedCall {
            caller: &one.caller,
            service: &service.name,
            function,
            rule,
            policy_commit: one.decision.policy.commit.as_deref(),
            args_digest: &digest,
        });
        if let Some(g) = granted {
            metrics.approval("granted");
            let info = serde_json::json!({
                "grant": g.id, "approved_by": g.approved_by, "request": g.request,
            });
            return (Ok(()), Some(info));
        }
        let mut args = one.call.args.clone();
        ob.masks.0.mask_value(key, &mut args);
        let refusal = |error: &'static str, reason: String| Refusal {
            error,
            reason,
            ..one.refusal()
        };
        let hold = match approvals.hold(approve::NewRequest {
            service: &service.name,
            function,
            args,
            args_digest: digest,
            caller: &one.caller,
            rule,
            policy_commit: one.decision.policy.commit.clone(),
            spec,
            session: &self.session,
            destination: self.dst_text.clone(),
        }) {
            Ok(h) => h,
            Err(why) => {
                metrics.approval("unavailable");
                return (Err(refusal("approval_unavailable", why)), None);
            }
        };
        let id = hold.id.clone();
        // Should the client go away meanwhile, this future is dropped where it waits: the
        // call's record is then written by the guard, as cancelled.
        let mut on_cancel = OnCancel(recording.and_then(|r| {
            let cancelled = Refusal {
                error: "approval_cancelled",
                reason: "the client went away while the call was held for approval".into(),
                ..one.refusal()
            };
            let mut r = one.recording(Some(r.clone()), Some(&cancelled))?;
            r.rec.approval = Some(serde_json::json!({ "request": id, "state": "cancelled" }));
            Some(r)
        }));
        let outcome = hold.outcome().await;
        on_cancel.0 = None;
        let info = |r: &approve::Request| serde_json::json!({ "request": id, "state": r.state, "verdict": r.verdict });
        match outcome {
            approve::Outcome::Approved(r) => {
                metrics.approval("approved");
                (Ok(()), Some(info(&r)))
            }
            approve::Outcome::Denied(r) => {
                metrics.approval("denied");
                let why = r.verdict.as_ref().map_or_else(
                    || "denied by an approver".to_string(),
                    |v| match &v.comment {
                        Some(c) => format!("denied by {}: {c}", v.by),
                        None => format!("denied by {}", v.by),
                    },
                );
                (Err(refusal("approval_denied", why)), Some(info(&r)))
            }
            approve::Outcome::TimedOut(r) => {
                metrics.approval("timed_out");
                let why = format!(
                    "approval timed out after {}",
                    humantime::format_duration(spec.timeout)
                );
                (Err(refusal("approval_timeout", why)), Some(info(&r)))
            }
        }
    }

    /// The caller of one request: the connection's workload, and the identity its token
    /// verifies to (or why it does not).
    async fn identify(&self, snap: &Snapshot, headers: &HeaderMap) -> Arc<Caller> {
        let (Some(verifier), Some(token)) = (
            &self.inputs.verifier,
            identity::bearer(headers, &snap.identity),
        ) else {
            return self.caller.clone();
        };
        if let Some(known) = self.last_token.get(token) {
            return known;
        }
        verifier.configure(&snap.identity);
        let outcome = verifier.verify(token).await;
        let stats = &self.inputs.stats;
        match &outcome {
            Ok(_) => stats.tokens_verified.fetch_add(1, Relaxed),
            Err(_) => stats.tokens_rejected.fetch_add(1, Relaxed),
        };
        if let Err(e) = &outcome {
            debug!(session = %self.session, reason = %e, "bearer token not accepted");
        }
        let expires_in = outcome.as_ref().ok().map(|id| id.expires_in);
        let caller = Arc::new(identity::caller_with(&self.caller, &outcome));
        self.last_token.put(token, caller.clone(), expires_in);
        caller
    }

    /// The call's trace span, when traces are exported: named for the function the policy
    /// declares (a bounded set of names), with the decision and who called.
    fn span(
        &self,
        service: Option<&Service>,
        headers: &HeaderMap,
        one: &Decided,
    ) -> Option<CallSpan> {
        let tracer = self.inputs.tracer.as_ref()?;
        let d = &one.decision;
        let function = &one.call.function;
        let name = match service {
            Some(s) if s.function(function).is_some() => {
                format!("{}.{}", s.name, function)
            }
            Some(s) => format!("{}.other", s.name),
            None => "callgate.call".to_string(),
        };
        let span = tracer.start_call(headers, &name);
        if let Some(s) = service {
            span.set("callgate.service", s.name.to_string());
        }
        span.set("callgate.function", function.clone());
        span.set("callgate.decision", d.enforced.as_str());
        span.set("callgate.mode", d.mode.to_string());
        if let Some(r) = &d.rule {
            span.set("callgate.rule", r.to_string());
        }
        if let Some(c) = &d.policy.commit {
            span.set("callgate.policy.commit", c.clone());
        }
        span.set("server.address", self.dst_text.clone());
        span.caller(&one.caller);
        Some(span)
    }

    /// The rate limit or quota an allowed (or held) call is over, if any. Dry-run policies
    /// refuse nothing, limits included.
    fn limit(
        &self,
        service: Option<&Service>,
        caller: &Caller,
        call: &OneCall,
        d: &Decision,
    ) -> Option<crate::obligations::limit::Hit> {
        let ob = &d.obligations;
        if (ob.limit.is_none() && ob.quota.is_none())
            || d.enforced == Action::Deny
            || d.enforced != d.action
        {
            return None;
        }
        let subject = crate::obligations::limit::Subject {
            caller,
            service: service.map_or("", |s| &s.name),
            function: &call.function,
            args: &call.args,
        };
        self.inputs
            .limiter
            .check(ob.limit.as_deref(), ob.quota.as_deref(), &subject)
            .err()
    }

    fn decide(
        &self,
        snap: &Snapshot,
        service: Option<&Service>,
        caller: &Caller,
        call: &mut OneCall,
    ) -> Decision {
        let Some(service) = service else {
            return snap.decide_unknown_destination();
        };
        if call.role != Role::Governed {
            return Decision {
                action: Action::Allow,
                enforced: Action::Allow,
                rule: None,
                service: Some(service.name.clone()),
                mode: snap.mode,
                reason: Some("protocol session message".into()),
                obligations: service.base_obligations().clone(),
                policy: snap.version.clone(),
            };
        }
        // Lent to the policy's shape for the decision, then given back: no copy per call.
        let c = Call {
            function: std::mem::take(&mut call.function),
            args: std::mem::take(&mut call.args),
            partial: call.partial,
        };
        let d = snap.decide(service, &c, caller);
        call.function = c.function;
        call.args = c.args;
        d
    }

    /// Sends an allowed request to the original destination.
    async fn forward(
        &self,
        snap: &Snapshot,
        service: Option<&Service>,
        out: Outgoing<'_>,
    ) -> Result<Response<UpstreamBody>, Refusal> {
        let Outgoing {
            kind,
            mut parts,
            body,
            ob,
            span,
        } = out;
        let inputs = &self.inputs;
        // A plain-text upstream cannot say whether it speaks h2c: only gRPC (which needs
        // HTTP/2) goes up as h2 with prior knowledge; anything else as HTTP/1.1.
        let h2c = !self.tls && parts.version == Version::HTTP_2 && kind == Kind::Grpc;
        // HTTP/1 in plain text goes over this connection's own upstream connection, which
        // takes the origin form; the pooled clients take the absolute form.
        let own_http1 = !self.tls && parts.version < Version::HTTP_2;
        // The authority as the client gave it, before a `Connection` header can strip its
        // Host: the pooled clients' key and SNI, or a Host for a request that has none.
        let mut seen = Seen::of(&parts.headers);
        let host = (!own_http1 || !seen.host || seen.connection()).then(|| {
            authority(&parts)
                .map(str::to_string)
                .unwrap_or_else(|| self.dst.to_string())
        });
        strip_seen(&mut parts.headers, &mut seen);
        let needs_host = !h2c && !seen.host;
        let path = parts.uri.path_and_query();
        parts.uri = if own_http1 {
            match path {
                // Already the origin form (as HTTP/1 clients send it): nothing to parse again.
                Some(_) if parts.uri.scheme().is_none() && parts.uri.authority().is_none() => {
                    parts.uri
                }
                Some(p) => {
                    let mut origin = http::uri::Parts::default();
                    origin.path_and_query = Some(p.clone());
                    http::Uri::from_parts(origin).map_err(|e| {
                        Refusal::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
                    })?
                }
                None => http::Uri::from_static("/"),
            }
        } else {
            let scheme = if self.tls { "https" } else { "http" };
            let path = path.map_or("/", |p| p.as_str());
            let host = host.as_deref().unwrap_or_default();
            http::Uri::try_from(format!("{scheme}://{host}{path}"))
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?
        };
        parts.version = if h2c {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        // What the server side attached to the client's request is not for the upstream.
        parts.extensions = http::Extensions::new();
        let mut req = Request::from_parts(parts, body);
        if let (Some(t), Some(s)) = (&inputs.tracer, span) {
            t.inject(s, req.headers_mut());
        }
        // The body may have been cut down (a batch's allowed part): hyper frames it from its
        // own length.
        if seen.content_length {
            req.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if h2c {
            if seen.host {
                req.headers_mut().remove(header::HOST);
            }
        } else if needs_host {
            // An HTTP/1.0 request may come without one; HTTP/1.1 needs it.
            if let Some(v) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        if !ob.masks.0.is_empty() && seen.accept_encoding {
            // The response is masked as it streams: it must come as readable text.
            req.headers_mut().remove(header::ACCEPT_ENCODING);
        }
        if !ob.masks.0.is_empty() {
            // And whole: a range cuts a document where a value may be (and nginx answers
            // several as multipart/byteranges).
            req.headers_mut().remove(header::RANGE);
            req.headers_mut().remove(header::IF_RANGE);
        }
        let injected = inputs
            .credentials
            .apply(
                req.headers_mut(),
                &ob.headers,
                ob.inject.as_ref(),
                &snap.credentials,
            )
            .await
            .map_err(|e| {
                Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "credential_unavailable", e)
            })?;
        if injected.is_some() && seen.accept_encoding {
            // The answer is scrubbed of the credential as it streams: readable, as for masks.
            req.headers_mut().remove(header::ACCEPT_ENCODING);
        }
        let pooled = if own_http1 {
            None
        } else {
            let client = self
                .pooled_client(service, host.as_deref().unwrap_or_default(), h2c)
                .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, "upstream_tls", e))?;
            Some(client)
        };
        let sent = Instant::now();
        let upstream_call = async {
            match pooled {
                None => inputs
                    .upstreams
                    .send_http1(&self.http1, self.dst, self.netns, req)
                    .await
                    .map_err(|e| error_chain(&e)),
                Some(client) => client
                    .request(req)
                    .await
                    .map(|r| r.map(UpstreamBody::Pooled))
                    .map_err(|e| error_chain(&e)),
            }
        };
        match tokio::time::timeout(inputs.cfg.idle_timeout, upstream_call).await {
            Ok(Ok(mut resp)) => {
                let took = sent.elapsed();
                inputs.metrics.upstream_in(took);
                if let Some(s) = span {
                    s.set("callgate.upstream.duration_ms", took.as_secs_f64() * 1000.0);
                }
                // What comes back passes the secret's scrubber: headers here, the body in
                // whichever stage reads it.
                if let Some(scrub) = injected {
                    scrub.scrub_headers(resp.headers_mut());
                    resp.extensions_mut().insert(Injected(scrub));
                }
                Ok(resp)
            }
            Ok(Err(e)) => {
                inputs.stats.upstream_errors.fetch_add(1, Relaxed);
                Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    e,
                ))
            }
            Err(_) => Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("no response within {:?}", inputs.cfg.idle_timeout),
            )),
        }
    }

    /// The pooled client for this connection's destination, with TLS towards it when the
    /// client's TLS was terminated here. The error says why that TLS cannot be set up.
    fn pooled_client(
        &self,
        service: Option<&Service>,
        host: &str,
        h2c: bool,
    ) -> Result<HttpClient, String> {
        let tls = if self.tls {
            let ca = service.and_then(|s| s.upstream_ca.clone());
            let name = self
                .sni
                .clone()
                .unwrap_or_else(|| host_only(host).to_string());
            let cfg = self
                .inputs
                .authority
                .as_ref()
                .ok_or("TLS is not set up")?
                .client_config(ca.as_deref())
                .map_err(|e| e.to_string())?;
            Some(((name, ca), cfg))
        } else {
            None
        };
        let key = UpstreamKey {
            dst: self.dst,
            netns: self.netns,
            tls: tls.as_ref().map(|(k, _)| k.clone()),
            h2c,
        };
        Ok(self.inputs.upstreams.client(&key, tls.map(|(_, c)| c)))
    }

    /// Streams the upstream's answer back, masked, and records the call when it ends.
    fn respond(
        &self,
        kind: Kind,
        version: Version,
        resp: Response<UpstreamBody>,
        one: Decided,
        recording: Option<Recording>,
    ) -> Response<ProxyBody> {
        let secrets = injected(&resp);
        let scrub = secrets.clone().map(ScrubStream::new);
        let (mut parts, incoming) = resp.into_parts();
        parts.version = version;
        let masks = one.decision.obligations.masks.0.clone();
        // What the body is, from the head as the upstream sent it (before any stripping).
        let body_kind = if masks.is_empty() {
            // An injected credential is scrubbed from the bytes as they pass: they must be
            // the bytes, not a compressed form of them.
            match &secrets {
                Some(_) => crate::obligations::mask::response_body(&parts.headers)
                    .map(|_| crate::obligations::mask::BodyKind::Binary),
                None => Ok(crate::obligations::mask::BodyKind::Binary),
            }
        } else {
            crate::obligations::mask::answer_kind(
                parts.status.as_u16(),
                &parts.headers,
                one.decision.obligations.unmaskable,
            )
        };
        let seen = strip_hop_by_hop(&mut parts.headers);
        // Header values leave as the body does: `X-Card`, `Location: /users/<e-mail>`.
        let header_masks = crate::obligations::mask::HeaderMasker::new(
            masks.clone(),
            self.inputs.mask_key.clone(),
        );
        if let Some(m) = &header_masks {
            m.mask(&mut parts.headers);
        }
        if let Err(why) = body_kind {
            // Fail closed: a compressed body cannot be masked as it streams, nor binary, nor
            // a piece of a document, nor one whose head says two things (unless the service
            // lets what cannot be masked pass).
            let r = Refusal::new(StatusCode::BAD_GATEWAY, "unmaskable_response", why.reason());
            let resp = r.respond(kind, one.call.rpc_id.as_ref());
            if let Some(rec) = one.into_recording(recording, Some(&r)) {
                // Not waited for: the answer is an error either way.
                let _ = rec.submit(Some(r.status.as_u16()), None, false, 0);
            }
            return resp;
        }
        let masker = match body_kind {
            Ok(kind) if !masks.is_empty() => Some(crate::obligations::mask::BodyMasker::new(
                masks,
                self.inputs.mask_key.clone(),
                kind,
            )),
            _ => None,
        };
        if (masker.is_some() || scrub.is_some()) && seen.content_length {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let status = parts.status.as_u16();
        let cap = self
            .inputs
            .recorder
            .as_ref()
            .map_or(0, |r| r.response_cap());
        let pending = one
            .into_recording(recording, None)
            .map(|r| body::Pending::new(r, status, cap));
        let body = body::CallBody::new(incoming, masker, scrub, pending)
            .mask_trailers(header_masks, secrets);
        Response::from_parts(parts, body.boxed_unsync())
    }

    /// Answers in the client's protocol and records the refused call.
    async fn refuse(
        &self,
        recording: Option<Recording>,
        kind: Kind,
        mut call: OneCall,
        decision: Option<&Decision>,
        r: Refusal,
    ) -> Response<ProxyBody> {
        let id = call.rpc_id.take();
        let notification = id.is_none() && matches!(kind, Kind::JsonRpc | Kind::Mcp);
        let recording = recording.and_then(|rec| {
            rec.with_call_taken(
                call,
                refused_decision(decision, &r),
                decision.map(|d| &*d.obligations),
            )
        });
        if let Some(rec) = recording {
            if let Some(d) = rec.submit(Some(r.status.as_u16()), None, false, 0) {
                if let Err(e) = d.wait().await {
                    warn!(error = %e, "a refused call's record did not reach the disk");
                }
            }
        }
        let mut resp = r.respond(kind, id.as_ref());
        if notification {
            *resp.status_mut() = r.status;
        }
        resp
    }
}

/// What a record says about the caller beyond its workload: the verified identity, or why a
/// presented token was not accepted. Claims stay out: they are the provider's, often personal.
fn recorded_caller(c: &Caller) -> Option<Json> {
    if !c.authenticated && c.token_error.is_none() {
        return None;
    }
    Some(serde_json::json!({
        "authenticated": c.authenticated,
        "provider": c.provider,
        "subject": c.subject,
        "groups": c.groups,
        "token_error": c.token_error,
    }))
}

impl Decided {
    /// How the gateway answers this call when policy did not allow it. A caller whose token
    /// was not accepted is told so: that is about its own credentials, and usually the fix.
    fn refusal(&self) -> Refusal {
        let d = &self.decision;
        if let Some(hit) = &self.limited {
            return Refusal {
                rule: Some(hit.rule.clone()),
                service: d.service.as_deref().map(str::to_string),
                function: Some(self.call.function.clone()),
                policy_commit: d.policy.commit.clone(),
                limit: Some(hit.clone()),
                ..Refusal::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "over the {} {}; try again in {}s",
                        hit.kind, hit.limit, hit.retry_after_s
                    ),
                )
            };
        }
        let approve = d.enforced == Action::Approve;
        let mut reason = d.reason.as_deref().map_or_else(
            || {
                if approve {
                    "this call needs a human approval; send it on its own, not in a batch, to have it held"
                        .into()
                } else {
                    "no policy rule allows this call".to_string()
                }
            },
            str::to_string,
        );
        if let Some(e) = &self.caller.token_error {
            reason = format!("{reason} (the bearer token was not accepted: {e})");
        }
        Refusal {
            rule: d.rule.as_deref().map(str::to_string),
            service: d.service.as_deref().map(str::to_string),
            function: Some(self.call.function.clone()),
            policy_commit: d.policy.commit.clone(),
            ..Refusal::new(
                StatusCode::FORBIDDEN,
                if approve {
                    "approval_required"
                } else {
                    "denied"
                },
                reason,
            )
        }
    }
}

/// What goes upstream: the request, its obligations and the call's trace span.
pub(crate) struct Outgoing<'a> {
    pub kind: Kind,
    /// The client's request head, edited in place into the upstream's: copying the header
    /// map into a fresh one was a tenth of the forwarding.
    pub parts: http::request::Parts,
    pub body: ProxyBody,
    pub ob: &'a Obligations,
    pub span: Option<&'a CallSpan>,
}

fn end_span(span: Option<CallSpan>, r: &Refusal) {
    if let Some(s) = span {
        s.end(r.status.as_u16(), Some(r.error));
    }
}

/// The record's decision for a call the gateway answered itself: the policy's, or (for a
/// refusal no rule made: a limit, a mismatch, a failed upstream) a deny saying why.
fn refused_decision(d: Option<&Decision>, r: &Refusal) -> RecordedDecision {
    match d {
        Some(d) if r.limit.is_some() => RecordedDecision {
            enforced: true,
            reason: Some(format!("{}: {}", r.error, r.reason)),
            limit: serde_json::to_value(&r.limit).ok(),
            ..recorded_decision(d)
        },
        // The approval's outcome is the reason: denied by whom, timed out, ….
        Some(d) if d.enforced == Action::Approve => RecordedDecision {
            reason: Some(format!("{}: {}", r.error, r.reason)),
            ..recorded_decision(d)
        },
        Some(d) if d.enforced != Action::Allow => recorded_decision(d),
        Some(d) => RecordedDecision {
            reason: Some(format!("allowed, then {}: {}", r.error, r.reason)),
            ..recorded_decision(d)
        },
        None => RecordedDecision {
            action: "deny".into(),
            enforced: true,
            reason: Some(format!("{}: {}", r.error, r.reason)),
            ..RecordedDecision::default()
        },
    }
}

pub fn recorded_decision(d: &Decision) -> RecordedDecision {
    RecordedDecision {
        // Not `to_string`: that goes through the formatter, for every call.
        action: d.action.as_str().into(),
        enforced: d.enforced == d.action,
        rule: d.rule.as_deref().map(str::to_string),
        reason: d.reason.as_deref().map(str::to_string),
        policy_commit: d.policy.commit.clone(),
        policy_dirty: d.policy.dirty,
        mode: Some(d.mode.as_str().into()),
        limit: None,
    }
}

/// Reads a request body whole, within the size and time limits and the inspection budget
/// (the shared one, and an h2 connection's share, which its requests carry).
async fn read_body(
    body: ProxyBody,
    parts: &http::request::Parts,
    limits: &crate::config::HttpConfig,
    budget: &InspectionBudget,
) -> Result<Bytes, Refusal> {
    let (max, limit) = (limits.max_body_bytes, limits.body_timeout);
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the inspection limit of {max} bytes"),
        )
    };
    let mut held = budget.hold(parts.extensions.get::<budget::ConnectionBudget>());
    // An invalid length is left for the body's own end to bound (the HTTP/1 server has
    // refused one already; h2 checks it against the DATA frames). A valid one is reserved
    // before a byte is read.
    if let Some(n) = h1::content_length(&parts.headers).ok().flatten() {
        if n > max as u64 {
            return Err(too_large());
        }
        held.cover(n as usize)
            .map_err(|budget::Busy| budget::Collect::busy())?;
    }
    match tokio::time::timeout(limit, budget::collect(body, max, held)).await {
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {limit:?}"),
        )),
        Ok(Err(budget::Collect::TooLarge)) => Err(too_large()),
        Ok(Err(budget::Collect::Busy)) => Err(budget::Collect::busy()),
        Ok(Err(budget::Collect::Failed(e))) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "body_error",
            e.to_string(),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

/// The name the client used: `:authority` (h2, absolute-form) or Host.
fn authority(parts: &http::request::Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// Two spellings of one authority: the same host (case and a final dot aside) and, where
/// both give one, the same port.
fn same_authority(a: &str, b: &str) -> bool {
    let split = |x: &str| -> (String, Option<String>) {
        let host = host_only(x);
        let rest = &x[x.find(host).map_or(0, |i| i + host.len())..];
        let port = rest
            .trim_start_matches(']')
            .strip_prefix(':')
            .map(str::to_string);
        (host.trim_end_matches('.').to_ascii_lowercase(), port)
    };
    let ((ha, pa), (hb, pb)) = (split(a), split(b));
    ha == hb && (pa.is_none() || pb.is_none() || pa == pb)
}

fn host_only(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Hop-by-hop headers belong to one connection and are not forwarded (RFC 9110 §7.6.1).
/// `Connection` comes first: the names it lists are hop-by-hop too.
static HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
];

/// Which of the fields the http stage looks at or edits a message carries, found in one pass
/// over its names: most messages carry few of them, and looking up or removing an absent name
/// still costs a hash and a probe.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Which of [`HOP_BY_HOP`] are there.
    hop: [bool; HOP_BY_HOP.len()],
    te: bool,
    host: bool,
    content_length: bool,
    accept_encoding: bool,
}

impl Seen {
    fn of(h: &HeaderMap) -> Self {
        let mut seen = Self::default();
        for k in h.keys() {
            // The length alone rules out most names, without comparing against each.
            match k.as_str().len() {
                2 => seen.te |= k == header::TE,
                4 => seen.host |= k == header::HOST,
                14 => seen.content_length |= k == header::CONTENT_LENGTH,
                15 => seen.accept_encoding |= k == header::ACCEPT_ENCODING,
                7 | 10 | 16..=19 => {
                    if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
                        seen.hop[i] = true;
                    }
                }
                _ => {}
            }
        }
        seen
    }

    fn connection(&self) -> bool {
        self.hop[0]
    }
}

/// Removes the hop-by-hop fields; what is left is then as [`Seen`] says.
fn strip_hop_by_hop(h: &mut HeaderMap) -> Seen {
    let mut seen = Seen::of(h);
    strip_seen(h, &mut seen);
    seen
}

/// [`strip_hop_by_hop`] for fields already seen; `seen` is kept true to what is left.
fn strip_seen(h: &mut HeaderMap, seen: &mut Seen) {
    let mut named_others = false;
    if seen.connection() {
        let named: Vec<header::HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| list_items(v.as_bytes()))
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"close")
            })
            .filter_map(|t| header::HeaderName::from_bytes(t).ok())
            .collect();
        named_others = !named.is_empty();
        for n in named {
            h.remove(n);
        }
    }
    for (n, p) in HOP_BY_HOP.iter().zip(&mut seen.hop) {
        if std::mem::take(p) {
            h.remove(n);
        }
    }
    // gRPC needs `te: trailers` end to end; any other TE is hop-by-hop.
    if seen.te
        && h.get(header::TE)
            .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        h.remove(header::TE);
    }
    if named_others {
        // Connection may name any field: what is left is looked at again.
        *seen = Seen::of(h);
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// A JSON response built by the gateway, for held answers.
fn json_bytes(status: StatusCode, version: Version, body: Vec<u8>) -> Response<ProxyBody> {
    let mut resp = Response::new(crate::proxy::body::full(Bytes::from(body)));
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header map of these fields, in order, repeated names appended.
    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = fields(&[
            ("connection", "Keep-Alive, X-Private , close,"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("x-other", "2"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("content-type", "application/json"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);

        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc);
        assert_eq!(
            grpc.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );

        // Without a Connection header, each hop-by-hop name is still found by itself.
        let mut bare = HeaderMap::new();
        bare.insert(header::TE, HeaderValue::from_static("gzip"));
        bare.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        bare.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut bare);
        let left: Vec<&str> = bare.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);

        // What is seen is what is left, also when Connection named a field the stage edits.
        let mut named = fields(&[
            ("connection", "content-length, x-a"),
            ("content-length", "3"),
            ("host", "a"),
            ("accept-encoding", "gzip"),
            ("content-encoding", "gzip"),
        ]);
        let seen = strip_hop_by_hop(&mut named);
        assert!(!seen.content_length && !seen.connection());
        assert!(seen.host && seen.accept_encoding);
        assert!(!named.contains_key(header::CONTENT_LENGTH));
    }
}
