//! A forwarded response on its way back: masked chunk by chunk as it streams, captured (up to
//! the record's cap) for the call's record.
//!
//! When the record is written depends on the durability the records are kept with:
//! - *buffered*: once the server has written the answer's last bytes and lets go of the body,
//!   so the client does not wait while its call's record is built and queued;
//! - *strict*: before the answer's last frame goes, which waits until the record is on disk,
//!   so that a client does not hold a whole answer whose record could still be lost. The
//!   gateway's HTTP/1 server does its part: the bytes that complete a Content-Length answer,
//!   or a head that is the whole answer, go only once the body has ended. A record that cannot
//!   be queued or written ends the answer with an error.
//!
//! A body dropped half-way is recorded too, so a client that goes away still leaves its call
//! on record.
use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value as Json;
use tracing::warn;

use super::Conn;
use crate::call::Call;
use crate::{
    obligations::mask::{
        AnswerSpans, BodyMasker, HeaderMasker,
        scrub::{ScrubStream, Secrets},
    },
    policy::{Obligations, schema::RecordLevel},
    proxy::body::BodyError,
    proxy::upstream::pool::UpstreamBody,
    record::{Durable, RawJson, Record, RecordError, RecordedDecision, beside::Captured},
    telemetry::metrics::Metrics,
};

/// What the record of a call cut by [`OnCut`] says.
const CUT: &str = "cut before the upstream's answer came back (the client went away): the \
                   upstream may have carried the call out";
/// [`CUT`], when the gateway's stop cut it.
const CUT_AT_STOP: &str = "cut by the gateway's stop before the upstream's answer came back: \
                           the upstream may have carried the call out";

/// Runs its closure if dropped before [`OnCut::disarm`]. It spans an `await` during which a
/// call may be at the upstream while its record is owned by nothing that writes it when
/// dropped (the request sent, the answer not yet handed to a [`CallBody`]): a future dropped
/// there — its client went away, which cancels the call, or the gateway stopped — still
/// leaves the call on record. Without it a client could have a call carried out unrecorded
/// by closing its connection before the answer came.
pub(super) struct OnCut<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnCut<F> {
    pub(super) fn new(on_cut: F) -> Self {
        Self(Some(on_cut))
    }

    /// The record is someone else's to write from here.
    pub(super) fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnCut<F> {
    fn drop(&mut self) {
        if let Some(on_cut) = self.0.take() {
            on_cut();
        }
    }
}

/// What writing one call's record needs, carried from the request to the end of its answer.
/// The recorder, key and counters are reached through the call's connection: cloning the
/// shared handles per call would bounce their reference counts between the data-path threads.
#[derive(Clone)]
pub struct Recording {
    pub conn: Arc<Conn>,
    pub rec: Record,
    pub started: Instant,
    /// `record: full` (arguments and response) rather than `metadata`.
    pub full: bool,
}

impl Recording {
    /// Fills in the call and its decision; None when the policy says not to record it.
    pub(super) fn with_call(
        self,
        call: &Call,
        decision: RecordedDecision,
        ob: Option<&Obligations>,
    ) -> Option<Self> {
        self.fill(|| call.function.clone(), || call.args.clone(), decision, ob)
    }

    /// [`Self::with_call`] for a call that is done with: its name and arguments are moved, not
    /// copied.
    pub(super) fn with_call_taken(
        self,
        call: Call,
        decision: RecordedDecision,
        ob: Option<&Obligations>,
    ) -> Option<Self> {
        let Call { function, args, .. } = call;
        self.fill(move || function, move || args, decision, ob)
    }

    /// Takes the function name and arguments only once they are known to be recorded.
    fn fill(
        mut self,
        function: impl FnOnce() -> String,
        args: impl FnOnce() -> serde_json::Value,
        decision: RecordedDecision,
        ob: Option<&Obligations>,
    ) -> Option<Self> {
        let level = ob.map_or(RecordLevel::Full, |o| o.record);
        if level == RecordLevel::None {
            return None;
        }
        self.full = level == RecordLevel::Full;
        self.rec.function = Some(function());
        if self.full {
            let mut args = args();
            if !args.is_null() {
                if let Some(ob) = ob {
                    // Field paths the policy masks in responses are masked in arguments too.
                    ob.masks.0.mask_value(&self.conn.inputs.mask_key, &mut args);
                }
                self.rec.args = Some(args);
            }
        }
        self.rec.decision = decision;
        Some(self)
    }

    /// Records a call cut while it may have been at the upstream: no answer came back to the
    /// gateway, so there is no status.
    pub(super) fn cut(mut self) {
        let inputs = &self.conn.inputs;
        let cut = match inputs.drains.lane(self.conn.http1.lane()).cutting() {
            true => CUT_AT_STOP,
            false => CUT,
        };
        let reason = self.rec.decision.reason.take();
        self.rec.decision.reason = Some(match reason {
            Some(r) => format!("{r}; {cut}"),
            None => cut.to_string(),
        });
        let _ = self.submit(None, None, false, 0);
    }

    /// Queues the record. In strict durability the handle returned resolves once it is on
    /// disk; buffered, there is none to wait for. An error: the recorder refused the record
    /// (counted and logged here); what that means for the answer is the caller's to say.
    pub(super) fn submit(
        mut self,
        status: Option<u16>,
        response: Option<RawJson>,
        truncated: bool,
        bytes_out: u64,
    ) -> Result<Option<Durable>, RecordError> {
        self.rec.status = status;
        if self.full {
            self.rec.response = response;
            self.rec.response_truncated = truncated;
        }
        self.rec.bytes_out = bytes_out;
        self.rec.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let inputs = &self.conn.inputs;
        let Some(recorder) = inputs.recorder.as_ref() else {
            return Ok(None);
        };
        let t0 = inputs.metrics.stage_timings().then(Instant::now);
        let submitted = recorder.submit(self.rec);
        if let Some(t0) = t0 {
            inputs.metrics.recorded_in(t0.elapsed());
        }
        if let Err(e) = &submitted {
            inputs
                .stats
                .record_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(error = %e, "could not record a call");
        }
        submitted
    }
}

/// A captured response body as the record stores it: JSON when it parses, text otherwise.
pub(super) fn response_value(body: &[u8]) -> RawJson {
    if body.is_empty() {
        return RawJson::of(&Json::Null);
    }
    RawJson::new(body)
}

/// The record of a streaming response, completed as the body goes by.
pub struct Pending {
    recording: Recording,
    status: u16,
    capture: Captured,
    cap: usize,
    truncated: bool,
    /// The answer's length as the upstream declared it (see [`Pending::expect`]).
    declared: Option<u64>,
    bytes_out: u64,
    incomplete: Option<String>,
    /// What the record masks in the captured answer beyond what the client's copy had
    /// masked, from the masker that masked it ([`BodyMasker::recorded`]); None: the record
    /// masks the answer on its own.
    spans: Option<AnswerSpans>,
}

impl Pending {
    pub(super) fn new(recording: Recording, status: u16, cap: usize) -> Self {
        Self {
            capture: Captured::default(),
            cap: if recording.full { cap } else { 0 },
            recording,
            status,
            truncated: false,
            declared: None,
            bytes_out: 0,
            incomplete: None,
            spans: None,
        }
    }

    /// The record keeps the answer's body (`record: full`, and as far as is known not longer
    /// than the cap).
    pub(super) fn keeps_answer(&self) -> bool {
        self.cap > 0 && !self.truncated && self.declared.is_none_or(|len| len <= self.cap as u64)
    }

    /// The longest answer the record keeps.
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// The answer's length, when the upstream declared it: one longer than the cap is masked
    /// for the client without tracking what its record would mask. The cap applies to the
    /// bytes the client gets, which masking can make shorter than declared (a private key
    /// becomes its mask): such an answer, if it ends under the cap, is kept, masked by the
    /// record on its own.
    pub(super) fn expect(&mut self, len: Option<u64>) {
        self.declared = len;
    }

    /// A chunk on its way to the client; `more`: how many bytes the upstream says are still
    /// to come, so the capture is sized once instead of grown (and copied) by doubling (and,
    /// when it will be kept beside its record's JSON, with room for that JSON before it).
    ///
    /// An answer longer than the cap is not kept: its record says how long it was
    /// ([`RawJson::over_cap`]), and what was captured is let go as soon as the cap is passed.
    fn saw(&mut self, chunk: &Bytes, own: Option<usize>, more: u64) {
        self.bytes_out += chunk.len() as u64;
        if self.truncated || self.cap == 0 {
            return;
        }
        let left = self.cap.saturating_sub(self.capture.len());
        if chunk.len() > left {
            self.truncated = true;
            self.capture = Captured::default();
            return;
        }
        let want = (chunk.len() as u64).saturating_add(more);
        self.capture
            .push(chunk, own, want.min(left as u64) as usize);
    }

    fn submit(mut self) -> Result<Option<Durable>, RecordError> {
        if let Some(why) = self.incomplete.take() {
            let reason = self.recording.rec.decision.reason.take();
            self.recording.rec.decision.reason = Some(match reason {
                Some(r) => format!("{r}; {why}"),
                None => why,
            });
        }
        let capture = std::mem::take(&mut self.capture);
        let response = if self.truncated {
            Some(RawJson::over_cap(self.bytes_out, self.cap))
        } else if capture.is_empty() {
            None
        } else if let Some(r) = self.recording.conn.inputs.recorder.as_ref() {
            // The captured buffer becomes the record's value as it is, not copied again.
            let rec = &mut self.recording.rec;
            r.keep_answer(rec, capture, self.spans.take().as_ref());
            rec.response.take()
        } else {
            None
        };
        self.recording
            .submit(Some(self.status), response, self.truncated, self.bytes_out)
    }
}

type Wait = Pin<Box<dyn Future<Output = Result<u64, RecordError>> + Send>>;

pub struct CallBody {
    inner: UpstreamBody,
    masker: Option<BodyMasker>,
    /// The injected credential's scrubber, after the masker.
    scrub: Option<ScrubStream>,
    /// Frames ready for the client, in order: the masker's last bytes before the trailers
    /// that ended them; in strict durability, the answer's last frame until the record is on
    /// disk.
    ready: VecDeque<Frame<Bytes>>,
    /// The records are kept in strict durability (see the module's doc).
    strict: bool,
    /// The upstream's trailers came: nothing follows them.
    trailers: bool,
    /// The answer has no body by its status (see [`CallBody::bodiless`]): data is dropped.
    bodiless: bool,
    ended: bool,
    /// The masker and the scrubber were finished with data the upstream said was its last
    /// ([`CallBody::transform_now`]): data after it would pass them by, so it fails the body.
    finished: bool,
    /// The answer is masked or scrubbed as text: a byte no text has fails the body
    /// ([`CallBody::as_text`]).
    text: bool,
    pending: Option<Pending>,
    durable: Option<Wait>,
    /// Masks and scrubs trailers as the head was (see [`CallBody::mask_trailers`]).
    trailer_masks: Option<HeaderMasker>,
    trailer_secrets: Option<Arc<Secrets>>,
    /// With stage timings on ([`CallBody::timed`]): the metrics, and the time masking took so
    /// far.
    timing: Option<(Arc<Metrics>, Duration)>,
    /// The request's place among the MCP requests under way, given back with the body.
    in_flight: Vec<super::mcp_check::InFlightGuard>,
}

impl CallBody {
    pub fn new(
        inner: UpstreamBody,
        masker: Option<BodyMasker>,
        scrub: Option<ScrubStream>,
        pending: Option<Pending>,
    ) -> Self {
        let strict = pending
            .as_ref()
            .and_then(|p| p.recording.conn.inputs.recorder.as_ref())
            .is_some_and(|r| r.strict());
        Self {
            inner,
            masker,
            scrub,
            ready: VecDeque::new(),
            strict,
            trailers: false,
            bodiless: false,
            ended: false,
            finished: false,
            text: false,
            pending,
            durable: None,
            trailer_masks: None,
            trailer_secrets: None,
            timing: None,
            in_flight: Vec::new(),
        }
    }

    /// Keeps `guards` (see [`super::mcp_check::InFlight`]) until the answer is done; one
    /// dropped before its end keeps its id taken a while.
    pub fn hold_while_streaming(&mut self, mut guards: Vec<super::mcp_check::InFlightGuard>) {
        for g in &mut guards {
            g.streaming();
        }
        self.in_flight = guards;
    }

    /// An answer without a body (204, 304): whatever data the upstream sends anyway is
    /// dropped, not passed on. The masker takes such an answer for empty and reads none of it;
    /// an h2 upstream's DATA after a 204 reached an h2 client in clear.
    pub fn bodiless(&mut self) {
        self.bodiless = true;
    }

    /// The answer is read as text by its masks or scrubber: data holding a byte no text has
    /// ([`crate::obligations::mask::not_text`]: UTF-16 under a UTF-8 label, compressed data
    /// under a text type) is not passed on; the body fails there, and its record says why.
    pub fn as_text(&mut self) {
        self.text = true;
    }

    /// Times the masking of this answer into `metrics` when it keeps stage timings (and there
    /// is anything to mask).
    pub fn timed(&mut self, metrics: &Arc<Metrics>) {
        if metrics.stage_timings() && (self.masker.is_some() || self.scrub.is_some()) {
            self.timing = Some((metrics.clone(), Duration::ZERO));
        }
    }

    /// `f`, its time added to the masking's when timed.
    fn masking<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.timing.is_none() {
            return f(self);
        }
        let t0 = Instant::now();
        let r = f(self);
        if let Some((_, d)) = &mut self.timing {
            *d += t0.elapsed();
        }
        r
    }

    /// Trailers (chunked trailers, gRPC trailing metadata) get the masks and the injected
    /// credential's scrubbing the head got.
    pub fn mask_trailers(&mut self, masks: Option<HeaderMasker>, secrets: Option<Arc<Secrets>>) {
        self.trailer_masks = masks;
        self.trailer_secrets = secrets;
    }

    fn masked(&self, mut trailers: Frame<Bytes>) -> Frame<Bytes> {
        if let Some(h) = trailers.trailers_mut() {
            if let Some(m) = &self.trailer_masks {
                m.mask_trailers(h);
            }
            if let Some(s) = &self.trailer_secrets {
                s.scrub_headers(h);
            }
        }
        trailers
    }

    /// Bytes for the client, captured for the record as they go.
    ///
    /// `own`: the bytes are a buffer the masker or the scrubber wrote for this body alone, of
    /// that many bytes of capacity ([`Output`]); the record may keep it instead of a copy.
    fn out(&mut self, b: Output) {
        if let Some(p) = &mut self.pending {
            p.saw(&b.bytes, b.own, self.inner.size_hint().lower());
        }
        self.ready.push_back(Frame::data(b.bytes));
    }

    /// How many ready frames stay back: in strict durability, once the upstream is at its
    /// end, the last one (the bytes that complete a Content-Length answer, or the trailers)
    /// until the record is on disk. Before that frames go as they come: a stream's events
    /// are not held back one behind.
    fn held(&self) -> usize {
        usize::from(
            self.strict && (self.pending.is_some() || self.durable.is_some()) && self.at_end(),
        )
    }

    /// The upstream has nothing more to send: it ended, sent its trailers, or says so.
    fn at_end(&self) -> bool {
        self.ended || self.trailers || self.inner.is_end_stream()
    }

    /// A chunk from the upstream through the masker and the scrubber; None while they hold
    /// it back. `last`: the upstream says nothing follows `data`, so the stages are finished
    /// too, into the same buffer (see [`CallBody::transform_now`]).
    fn transform(&mut self, data: Bytes, last: bool) -> Option<Output> {
        if self.masker.is_none() && self.scrub.is_none() {
            return (!data.is_empty()).then_some(Output {
                bytes: data,
                own: None,
            });
        }
        self.masking(|this| this.transform_now(&data, last))
    }

    /// Each stage writes into a buffer of its own that becomes the chunk sent on: the masked
    /// bytes are not copied again into the frame (16 KiB answers: one copy fewer per chunk).
    ///
    /// With `last`, each stage is finished as well, and what it held back ends the same
    /// buffer: an answer that came in one read goes to the client as one chunk, which its
    /// record keeps as it is ([`Captured`]) where the masked data and then what the masker held
    /// back were two, copied together for the record.
    fn transform_now(&mut self, data: &[u8], last: bool) -> Option<Output> {
        self.finished |= last;
        let mut masked: Option<Vec<u8>> = None;
        let mut finished = if last { self.masker.take() } else { None };
        if let Some(m) = finished.as_mut().or(self.masker.as_mut()) {
            let mut out = Vec::with_capacity(data.len() + 256);
            if !data.is_empty() {
                m.push(data, &mut out);
            }
            if last {
                m.finish(&mut out);
            }
            masked = Some(out);
        }
        if let Some(m) = &mut finished
            && let Some(p) = &mut self.pending
            && self.scrub.is_none()
        {
            p.spans = m.answer_spans();
        }
        let mut scrub = if last { self.scrub.take() } else { None };
        if let Some(s) = scrub.as_mut().or(self.scrub.as_mut()) {
            let input: &[u8] = masked.as_deref().unwrap_or(data);
            let mut out = Vec::with_capacity(input.len() + 256);
            if !input.is_empty() {
                s.push(input, &mut out);
            }
            if last {
                s.finish(&mut out);
            }
            masked = Some(out);
        }
        masked.filter(|m| !m.is_empty()).map(|m| Output {
            own: Some(m.capacity()),
            bytes: Bytes::from(m),
        })
    }

    /// What the masker and the scrubber held back, once the upstream is done.
    fn flush(&mut self) -> Option<Output> {
        let tail = self.masking(|this| this.transform_now(&[], true));
        if let Some((metrics, took)) = self.timing.take() {
            metrics.masked_in(took);
        }
        tail
    }
}

/// Bytes for the client: the upstream's own, or a buffer a stage wrote (`own`: its capacity).
struct Output {
    bytes: Bytes,
    own: Option<usize>,
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(wait) = &mut this.durable {
                let r = ready!(wait.as_mut().poll(cx));
                this.durable = None;
                if let Err(e) = r {
                    // In strict durability a call whose record is not on disk does not
                    // complete: its last frame is not sent.
                    this.ready.clear();
                    return Poll::Ready(Some(Err(Box::new(e) as BodyError)));
                }
                continue;
            }
            if this.ready.len() > this.held() {
                return Poll::Ready(this.ready.pop_front().map(Ok));
            }
            if this.ended {
                for g in &mut this.in_flight {
                    g.answered();
                }
                // Buffered: the record is written when the server lets go of the body, after
                // the answer's last bytes (see `Drop`).
                if this.strict
                    && let Some(p) = this.pending.take()
                {
                    match p.submit() {
                        Ok(Some(d)) => {
                            this.durable = Some(Box::pin(d.wait()));
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            // Not queued: in strict durability the answer does not complete.
                            this.ready.clear();
                            return Poll::Ready(Some(Err(Box::new(e) as BodyError)));
                        }
                    }
                }
                if this.ready.is_empty() {
                    return Poll::Ready(None);
                }
                continue;
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => {
                    this.ended = true;
                    if let Some(tail) = this.flush() {
                        this.out(tail);
                    }
                }
                Some(Err(e)) => {
                    if let Some(p) = &mut this.pending {
                        p.incomplete = Some(format!("the upstream response failed: {e}"));
                    }
                    this.ended = true;
                    this.ready.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(_) if this.bodiless => {}
                    Ok(data) if this.finished && !data.is_empty() => {
                        let e = "the upstream sent data after the end it announced";
                        if let Some(p) = &mut this.pending {
                            p.incomplete = Some(e.to_string());
                        }
                        this.ended = true;
                        this.ready.clear();
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Ok(data) if this.text && crate::obligations::mask::not_text(&data) => {
                        let e = crate::obligations::mask::Unmaskable::NotText.reason();
                        if let Some(p) = &mut this.pending {
                            p.incomplete = Some(e.to_string());
                        }
                        this.ended = true;
                        this.ready.clear();
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Ok(data) => {
                        let last = this.inner.is_end_stream();
                        if let Some(b) = this.transform(data, last) {
                            this.out(b);
                        }
                    }
                    Err(trailers) => {
                        let trailers = this.masked(trailers);
                        if let Some(tail) = this.flush() {
                            this.out(tail);
                        }
                        this.ready.push_back(trailers);
                        this.trailers = true;
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.ready.is_empty() && self.held() == 0 && self.durable.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.bodiless {
            SizeHint::with_exact(0)
        } else if self.masker.is_some() || self.scrub.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

impl Drop for CallBody {
    fn drop(&mut self) {
        if let Some(mut p) = self.pending.take() {
            // The end of a buffered answer is recorded here, once the server is done with it;
            // hyper may stop polling once a body of known length is written: that is an end
            // too, not a client that went away.
            if !self.at_end() {
                p.incomplete
                    .get_or_insert_with(|| "the client went away before the response ended".into());
            }
            let _ = p.submit();
        }
    }
}
