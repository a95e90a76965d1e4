//! The record stage: every call becomes a [`Record`] in a tamper-evident, append-only log.
//!
//! The data path hands records to a [`Recorder`]: they are masked and serialised on the
//! caller's thread, then sent over a bounded `crossbeam` channel to one writer thread that
//! appends hash-chained frames ([`segment`]), compresses and fsyncs them in groups, and
//! rotates segments. When the writer cannot keep up or the disk is full, `submit` refuses
//! the call instead of dropping its record: callgate fails closed.
pub mod beside;
pub mod build;
pub mod checkpoints;
mod json;
pub mod merkle;
pub mod note;
pub mod query;
pub mod segment;
pub mod ship;
pub mod tree;
pub mod valid;
pub mod witness;
pub mod witness_client;
pub mod witness_server;
mod writer;

use std::{
    borrow::Cow,
    ops::Deref,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Durability, RecordsConfig};
use crate::obligations::mask::{AnswerSpans, MaskKey, MaskRules};
use crate::util::time::now_ms;

/// One call, as recorded. Argument and response values are masked before they get here and
/// masked again with every built-in detector before they are written.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Unique, time-ordered (UUIDv7).
    pub id: String,
    /// Start of the call, Unix milliseconds.
    pub time_ms: u64,
    /// The connection (or workload session) the call came on; `replay` groups by it. A call's
    /// record shares it and `destination` with the other calls of its connection, and
    /// `service` (and the decision's `rule` and `policy_commit`) with the policy snapshot:
    /// it copies none of them.
    pub session: Arc<str>,
    /// Shared with every other call of its connection: serialised once, copied per call as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<SharedJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<serde_json::Value>,
    /// Original destination `host:port`.
    pub destination: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// rest | jsonrpc | mcp | grpc | http | tcp
    pub protocol: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
    pub decision: RecordedDecision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<serde_json::Value>,
    /// MCP tool pinning: a tool found changed or unpinned, and what was hidden or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<RawJson>,
    /// A long answer the log keeps beside the record's JSON instead of in `response`
    /// ([`beside`]): the record's copy, already masked, not checked on the data path to be
    /// JSON. Read back from the log, it is `response`. Not serialised by serde.
    #[serde(skip)]
    pub response_beside: Option<beside::Answer>,
    /// The response was longer than the record's cap and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub response_truncated: bool,
    /// `response` has had every built-in detector applied already, by the scan that masked
    /// the answer for the client ([`Recorder::mask_answer`]): it is not scanned again. Set
    /// only with a response made that way; not part of the record's text.
    #[serde(skip)]
    pub response_masked: bool,
    /// `workload` is the connection's block as [`Recorder::mask_workload`] returned it: every
    /// built-in detector applied once per connection, not again per call. Not part of the
    /// record's text.
    #[serde(skip)]
    pub workload_masked: bool,
    pub latency_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RecordedDecision {
    /// allow | deny | approve
    pub action: Cow<'static, str>,
    /// The action was carried out (false in dry-run for deny/approve).
    pub enforced: bool,
    /// The rule that decided (for a call the policy decided, the snapshot's own text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_commit: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub policy_dirty: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Cow<'static, str>>,
    /// The rate limit or quota that refused the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<serde_json::Value>,
}

/// A JSON value kept as its text. A response body goes into its record as the bytes the
/// client got (masked again with every detector) rather than through a parsed tree and back:
/// parsing, walking and re-serialising cost more than the rest of the record together. (A
/// long one is not checked to be JSON either: it is kept beside the record's JSON, [`beside`].)
///
/// `P` holds the text, always exactly one JSON value: boxed for a value that belongs to one
/// record, shared ([`SharedJson`]) for one that many records carry. Text from outside is
/// checked by [`valid::is_json`], not parsed.
#[derive(Clone)]
pub struct RawJson<P = Box<str>>(P);

/// JSON text that many records carry: the workload block is serialised once per connection
/// and its bytes copied into each record, instead of walking the same tree for every call.
pub type SharedJson = RawJson<Arc<str>>;

/// Whether `s` holds a JSON escape that could hide a detector's match: `\u` (any character),
/// `\/` (a `/`, as PHP writes every one: half of AWS secret keys have one), a control
/// character's (`\n`, `\t`, `\r`, `\b`, `\f`), whose letter stands in the text where the
/// detectors look for a boundary (`"line\nAKIA…"`), or a quote's (`\"`), whose backslash
/// stands between a secret's name and its value where only quotes and separators may
/// (`aws_secret_access_key = \"wJalr…\"`, as a text answer with quotes reads once it is a
/// JSON string: found in review). A search of its own, not `memmem::find`, which builds a
/// searcher per call: more than a record's short texts cost to scan.
fn has_hiding_escape(s: &[u8]) -> bool {
    memchr::memchr_iter(b'\\', s).any(|i| {
        matches!(
            s.get(i + 1),
            Some(b'u' | b'/' | b'n' | b't' | b'r' | b'b' | b'f' | b'"')
        )
    })
}

/// Whether an answer's text is kept as its JSON value rather than as a string of it: one JSON
/// value whose escapes decode (every reader, a fleet's `jsonb` included, can read it).
fn reads_as_json(s: &str) -> bool {
    valid::is_json(s.as_bytes()) && valid::escapes_decode(s.as_bytes())
}

impl RawJson {
    /// `text` as a value: itself when it is JSON, else a JSON string of it (invalid UTF-8
    /// replaced).
    pub fn new(text: &[u8]) -> Self {
        match std::str::from_utf8(text) {
            Ok(s) => Self::text(s),
            Err(_) => Self::string(&String::from_utf8_lossy(text)),
        }
    }

    /// [`RawJson::text`] for a string the caller is done with: a valid answer with nothing to
    /// trim becomes the value without being copied (a large answer's record otherwise copies
    /// it once more here).
    pub fn owned(s: String) -> Self {
        let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t' | b'\n' | b'\r'));
        if ws(s.as_bytes().first()) || ws(s.as_bytes().last()) {
            Self::text(&s)
        } else if reads_as_json(&s) {
            Self(s.into_boxed_str())
        } else {
            Self::string(&s)
        }
    }

    /// `s` itself (without the whitespace around it) when it [`reads_as_json`], else a JSON
    /// string of it.
    pub fn text(s: &str) -> Self {
        if reads_as_json(s) {
            Self(s.trim_matches([' ', '\t', '\n', '\r']).into())
        } else {
            Self::string(s)
        }
    }

    /// `s` as a JSON string (a NUL in it as U+FFFD, as [`RawJson::of`] writes it).
    pub fn string(s: &str) -> Self {
        Self::of(s)
    }

    /// What a record keeps instead of an answer of `len` bytes, longer than the record's cap
    /// of `cap`: how long it was, and none of it (a prefix cut at the cap could end inside a
    /// value a detector would have found whole: a card's first digits, a key's first
    /// characters).
    pub fn over_cap(len: u64, cap: usize) -> Self {
        Self::string(&format!("[{len} bytes, over the record cap of {cap}]"))
    }
}

impl<P: From<Box<str>>> RawJson<P> {
    /// `v` serialised, a NUL in a string as U+FFFD ([`json::write`]); `null` if it cannot be
    /// (a map with keys that are not strings).
    pub fn of<T: Serialize + ?Sized>(v: &T) -> Self {
        let mut text = Vec::new();
        let text = match json::write(&mut text, v).map(|()| String::from_utf8(text)) {
            Ok(Ok(t)) => t,
            _ => "null".into(),
        };
        Self(text.into_boxed_str().into())
    }
}

impl<P: Deref<Target = str>> RawJson<P> {
    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.get()).unwrap_or_default()
    }
}

/// Through serde (queries, tests; the log's own text is written by `write_json`), as the raw
/// value it is.
impl<P: Deref<Target = str>> Serialize for RawJson<P> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawValue::from_string(self.get().to_string())
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

impl<'de, P: From<Box<str>>> Deserialize<'de> for RawJson<P> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(d).map(|raw| Self(Box::<str>::from(raw.get()).into()))
    }
}

impl<P: Deref<Target = str>> std::fmt::Debug for RawJson<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl<P: Deref<Target = str>> PartialEq for RawJson<P> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl<P: From<Box<str>>> From<serde_json::Value> for RawJson<P> {
    fn from(v: serde_json::Value) -> Self {
        Self::of(&v)
    }
}

/// A name a record holds, however it holds it (its own, shared with its connection or its
/// policy, or a word the code chose), for [`Recorder::mask`] to read and, on a hit, replace.
trait Name {
    fn text(&self) -> &str;
    fn replace(&mut self, masked: String);
}

impl<T: std::ops::Deref<Target = str> + From<String>> Name for T {
    fn text(&self) -> &str {
        self
    }

    fn replace(&mut self, masked: String) {
        *self = masked.into();
    }
}

impl Record {
    /// A new record with a fresh id, stamped now.
    pub fn new(session: impl Into<Arc<str>>, destination: impl Into<Arc<str>>) -> Self {
        Self {
            // Encoded straight into its text: `to_string` goes through the formatter.
            id: String::from(
                uuid::Uuid::now_v7()
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            ),
            time_ms: now_ms(),
            session: session.into(),
            destination: destination.into(),
            ..Default::default()
        }
    }
}

/// When a record counts as written.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    /// Longest a buffered record waits for its fsync.
    pub commit_window: Duration,
    /// fsync sooner once this many records are waiting.
    pub commit_records: usize,
    /// Bytes of records queued for the writer before `ready` refuses new calls. In bytes, not
    /// records, because a record is anything from 300 bytes to the response cap: the bound is
    /// on memory, and it is what lets intake ride out a disk that stalls an fsync for seconds.
    pub backlog_bytes: usize,
    pub segment_bytes: u64,
    pub segment_age: Duration,
    /// Delete the oldest sealed segments beyond these (0 = keep).
    pub retain_bytes: u64,
    pub retain_age: Duration,
    /// Responses longer than this (as stored: serialised when inline, the text when kept
    /// beside the record's JSON) are cut in records.
    pub response_cap: usize,
    /// Signs checkpoints of the records' Merkle tree (none: no signed checkpoints).
    pub signer: Option<Arc<note::Signer>>,
    /// The log's name in its checkpoints (tlog-checkpoint origin line).
    pub origin: String,
    /// A signed checkpoint is written at the end of a group commit at most this often.
    pub checkpoint_interval: Duration,
}

impl From<&RecordsConfig> for RecorderConfig {
    fn from(cfg: &RecordsConfig) -> Self {
        let mut c = RecorderConfig::new(&cfg.dir);
        c.durability = cfg.durability;
        c.commit_window = cfg.commit_window;
        c.segment_bytes = cfg.segment_bytes;
        c.segment_age = cfg.segment_age;
        c.retain_bytes = cfg.retain_bytes;
        c.retain_age = cfg.retain_age;
        c.response_cap = cfg.response_cap;
        c.backlog_bytes = cfg.backlog_bytes;
        c.checkpoint_interval = cfg.checkpoint_interval;
        c.origin = cfg
            .origin
            .clone()
            .unwrap_or_else(crate::config::default_origin);
        c
    }
}

impl RecorderConfig {
    /// With the checkpoint signer key of `state_dir` (created on first start, or from the
    /// systemd credential).
    pub fn with_signer(mut self, state_dir: &Path) -> Result<Self, note::NoteError> {
        let signer = note::Signer::load_or_create(state_dir, &self.origin)?;
        self.signer = Some(Arc::new(signer));
        Ok(self)
    }
}

impl RecorderConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            durability: Durability::Buffered,
            commit_window: Duration::from_millis(10),
            commit_records: 4096,
            backlog_bytes: 128 << 20,
            segment_bytes: 64 << 20,
            segment_age: Duration::from_secs(3600),
            retain_bytes: 0,
            retain_age: Duration::ZERO,
            response_cap: 64 * 1024,
            signer: None,
            origin: "callgate/records".into(),
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("records directory {dir}: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("records directory {dir}: segment {segment}: {reason}")]
    Corrupt {
        dir: PathBuf,
        segment: String,
        reason: String,
    },
    #[error(
        "call recording is behind ({records} records, {} KiB queued); refusing new calls until it catches up",
        bytes / 1024
    )]
    Backlog { records: usize, bytes: usize },
    #[error("call recording is failing ({0}); refusing new calls until it recovers")]
    Failing(String),
    #[error("the recorder has stopped")]
    Stopped,
    #[error("serialising a record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Shared between the handle and the writer thread.
#[derive(Debug, Default)]
struct Shared {
    /// Set while writes fail (disk full, I/O error); the reason is in `failure`.
    failing: AtomicBool,
    failure: std::sync::Mutex<Option<String>>,
    submitted: AtomicU64,
    /// Records that could not be queued at all: the writer had stopped.
    refused: AtomicU64,
    written: AtomicU64,
    /// Highest sequence number known to be on stable storage.
    durable_seq: AtomicU64,
    fsyncs: AtomicU64,
    write_errors: AtomicU64,
    segments_sealed: AtomicU64,
    truncated_bytes: AtomicU64,
    /// Bytes of entries sent to the writer and not yet taken by it (see [`Entry::cost`]).
    queued_bytes: AtomicUsize,
    /// The tree size of the latest signed checkpoint the writer wrote (for the witnesses).
    signed: tokio::sync::watch::Sender<u64>,
    /// Each witness's state, for `status` and `/metrics`.
    witnesses: std::sync::Mutex<Vec<witness_client::WitnessStatus>>,
    /// `records.witness_quorum`.
    witness_quorum: AtomicUsize,
}

/// What `callgate status` shows about recording.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecorderStatus {
    pub dir: String,
    pub durability: Durability,
    pub backlog: usize,
    #[serde(default)]
    pub backlog_bytes: usize,
    pub submitted: u64,
    pub refused: u64,
    pub written: u64,
    pub durable_seq: u64,
    pub fsyncs: u64,
    pub write_errors: u64,
    pub segments_sealed: u64,
    /// Bytes of a torn final frame cut off at start-up.
    pub truncated_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    /// The witnesses of `records.witnesses` (`callgate witness`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<witness_client::WitnessStatus>,
    /// `records.witness_quorum` (0: none).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub witness_quorum: usize,
    /// The largest tree size that a quorum of witnesses cosigned.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub quorum_size: u64,
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

struct Entry {
    /// The record's text.
    payload: beside::Payload,
    done: Option<tokio::sync::oneshot::Sender<Result<u64, String>>>,
    /// Not a record: commit what is pending and answer with the durable sequence number.
    sync: bool,
    /// With `sync`: then write the checkpoint and sign one of every record, now.
    finish: bool,
}

impl Entry {
    /// What an entry counts against the backlog: its payload and its own size.
    fn cost(&self) -> usize {
        self.payload.held() + std::mem::size_of::<Self>()
    }
}

/// The handle the data path records through. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: Sender<Entry>,
    shared: Arc<Shared>,
    cfg: Arc<RecorderConfig>,
    masks: Arc<MaskRules>,
    key: MaskKey,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// A strict-mode record's pending fsync.
pub struct Durable(tokio::sync::oneshot::Receiver<Result<u64, String>>);

impl Durable {
    /// Waits until the record is on stable storage; its sequence number.
    pub async fn wait(self) -> Result<u64, RecordError> {
        Self::outcome(self.0.await)
    }

    /// Blocking [`Self::wait`], for threads outside the runtime.
    pub fn wait_blocking(self) -> Result<u64, RecordError> {
        Self::outcome(self.0.blocking_recv())
    }

    fn outcome(
        r: Result<Result<u64, String>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<u64, RecordError> {
        match r {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(RecordError::Failing(e)),
            Err(_) => Err(RecordError::Stopped),
        }
    }
}

impl Recorder {
    /// Opens (or creates) the log in `cfg.dir`, cuts a torn final frame, and starts the writer.
    pub fn open(cfg: RecorderConfig, key: MaskKey) -> Result<Self, RecordError> {
        let shared = Arc::new(Shared::default());
        // Unbounded in count: `queued_bytes` bounds it (see `backlog_bytes`).
        let (tx, rx) = crossbeam_channel::unbounded();
        let cfg = Arc::new(cfg);
        let w = writer::Writer::open(cfg.clone(), shared.clone())?;
        let handle = std::thread::Builder::new()
            .name("callgate-recorder".into())
            .spawn(move || w.run(rx))
            .map_err(|source| RecordError::Open {
                dir: cfg.dir.clone(),
                source,
            })?;
        Ok(Self {
            tx,
            shared,
            cfg,
            masks: Arc::new(MaskRules::all_detectors()),
            key,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
        })
    }

    /// How much of a response a record keeps.
    pub fn response_cap(&self) -> usize {
        self.cfg.response_cap
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// Strict durability: a call's answer ends only once its record is on disk.
    pub fn strict(&self) -> bool {
        self.cfg.durability == Durability::Strict
    }

    /// Can a call be taken now? The data path asks before forwarding, so that a call whose
    /// record could not be written is refused rather than carried out unrecorded.
    pub fn ready(&self) -> Result<(), RecordError> {
        if self.shared.failing.load(Ordering::Acquire) {
            let why = self
                .shared
                .failure
                .lock()
                .map(|f| f.clone().unwrap_or_default())
                .unwrap_or_default();
            return Err(RecordError::Failing(why));
        }
        if self.shared.queued_bytes.load(Ordering::Relaxed) >= self.cfg.backlog_bytes {
            return Err(self.backlog());
        }
        Ok(())
    }

    fn backlog(&self) -> RecordError {
        RecordError::Backlog {
            records: self.tx.len(),
            bytes: self.shared.queued_bytes.load(Ordering::Relaxed),
        }
    }

    /// Masks, serialises and queues `rec`, the record of a call that [`Recorder::ready`]
    /// admitted. In strict mode the returned [`Durable`] resolves once it is fsync'd; in
    /// buffered mode it is `None`.
    ///
    /// It is queued even when the backlog has reached its bound or the writer has started
    /// failing since the call was admitted: the call has been carried out, so its record is
    /// owed, and dropping it would be a call nobody can account for. The bound applies at
    /// admission; the backlog can exceed it by the records of the calls in flight when it
    /// filled, each at most `response_cap` of answer.
    pub fn submit(&self, mut rec: Record) -> Result<Option<Durable>, RecordError> {
        self.mask(&mut rec);
        let payload = match rec.response_beside.take() {
            // Around the answer, in the room it was captured with when the head fits there,
            // or before the buffer the client's copy went from.
            Some(answer) if rec.response.is_none() => {
                beside::payload(answer, |out| rec.write_json(out))?
            }
            _ => {
                // Sized up front: growing from serde_json's 128 bytes, doubling, was a
                // quarter of the serialising.
                let raw_len = |r: Option<&str>| r.map_or(0, str::len);
                let mut payload = Vec::with_capacity(
                    512 + raw_len(rec.response.as_ref().map(RawJson::get))
                        + raw_len(rec.workload.as_ref().map(RawJson::get)),
                );
                rec.write_json(&mut payload)?;
                beside::Payload {
                    buf: payload,
                    ..beside::Payload::default()
                }
            }
        };
        let (done, durable) = match self.cfg.durability {
            Durability::Strict => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(Durable(rx)))
            }
            Durability::Buffered => (None, None),
        };
        let entry = Entry {
            payload,
            done,
            sync: false,
            finish: false,
        };
        if let Err(e) = self.enqueue(entry) {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.shared.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(durable)
    }

    /// Hands `entry` to the writer, counted in `queued_bytes` until the writer takes it.
    fn enqueue(&self, entry: Entry) -> Result<(), RecordError> {
        let cost = entry.cost();
        self.shared.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        self.tx.send(entry).map_err(|_| {
            self.shared.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
            RecordError::Stopped
        })
    }

    /// Raw PII never reaches disk: whatever the policy masked already, every built-in detector
    /// runs again over every string in the record.
    fn mask(&self, rec: &mut Record) {
        // Credentials by name first: a detector could rename a key (`"pw@example.com"` as
        // `[MASKED:email]`) that names a credential.
        if let Some(args) = &mut rec.args {
            crate::obligations::mask::drop_credentials(args);
        }
        for v in [
            &mut rec.args,
            &mut rec.caller,
            &mut rec.approval,
            &mut rec.decision.limit,
            // Tool definitions from the upstream, answer keys the caller chose.
            &mut rec.mcp,
        ]
        .into_iter()
        .flatten()
        {
            self.masks.mask_value(&self.key, v);
        }
        // Names are text from the call too: a REST path with an e-mail address in it is the
        // function of an undeclared route; a tool name is the caller's to choose. Almost
        // always clean: one scan over them all, and one per name only on a hit. Each name is
        // listed once, here, whichever way the record holds it.
        let d = &mut rec.decision;
        let mut names: [Option<&mut dyn Name>; 9] = [
            Some(&mut rec.session),
            Some(&mut rec.destination),
            Some(&mut rec.protocol),
            rec.service.as_mut().map(|n| n as &mut dyn Name),
            rec.function.as_mut().map(|n| n as &mut dyn Name),
            d.rule.as_mut().map(|n| n as &mut dyn Name),
            d.mode.as_mut().map(|n| n as &mut dyn Name),
            d.policy_commit.as_mut().map(|n| n as &mut dyn Name),
            d.reason.as_mut().map(|n| n as &mut dyn Name),
        ];
        let texts: smallvec::SmallVec<[&str; 9]> =
            names.iter().flatten().map(|n| n.text()).collect();
        let hit = self.masks.finds_in_any(&texts);
        drop(texts);
        if hit {
            for n in names.iter_mut().flatten() {
                if let Cow::Owned(m) = self.masks.mask_str(&self.key, n.text()) {
                    n.replace(m);
                }
            }
        }
        if !rec.workload_masked {
            if let Some(w) = rec.workload.take() {
                rec.workload = Some(self.mask_workload(w));
            }
        }
        if let Some(answer) = rec.response_beside.take() {
            let text = answer.as_str();
            rec.response_beside = if rec.response.is_some() {
                // A `response` already there wins.
                None
            } else if !beside::keeps(text) {
                rec.response = Some(RawJson::text(text));
                None
            } else if rec.response_masked {
                Some(answer)
            } else if has_hiding_escape(text.as_bytes()) {
                // Escapes a detector does not see through: inline, where they are decoded
                // and masked as JSON (below).
                rec.response = Some(RawJson::text(text));
                None
            } else {
                // Masked as text, as an inline answer without such escapes is.
                Some(match self.masks.mask_str(&self.key, text) {
                    Cow::Owned(masked) => masked.into(),
                    Cow::Borrowed(_) => answer,
                })
            };
        }
        let cap = self.cfg.response_cap;
        if let Some(answer) = &rec.response_beside {
            let len = answer.as_str().len();
            if len > cap {
                rec.response_beside = None;
                rec.response = Some(RawJson::over_cap(len as u64, cap));
                rec.response_truncated = true;
            }
        }
        if let Some(r) = &mut rec.response {
            if !rec.response_masked {
                self.mask_raw(r);
            }
            let len = r.get().len();
            if len > cap {
                *r = RawJson::over_cap(len as u64, cap);
                rec.response_truncated = true;
            }
        }
    }

    /// A connection's workload block as its records keep it: every built-in detector applied,
    /// what root chose (its unit and cgroup path down to it) kept. The data path does this once
    /// per connection and marks its calls' records `workload_masked`; a record without the
    /// mark has it done by [`Recorder::submit`].
    pub fn mask_workload(&self, w: SharedJson) -> SharedJson {
        // Almost always clean: parsed only on a hit.
        if matches!(self.masks.mask_str(&self.key, w.get()), Cow::Borrowed(_))
            && !has_hiding_escape(w.get().as_bytes())
        {
            return w;
        }
        let mut v = w.to_value();
        let owned = root_owned(&v);
        if self.masks.mask_value(&self.key, &mut v) == 0 {
            return w;
        }
        owned.restore(&mut v, |rest| {
            self.masks.mask_str(&self.key, rest).into_owned()
        });
        SharedJson::of(&v)
    }

    /// Puts an answer the client got (a captured buffer the caller is done with) into `rec` as
    /// its record keeps it: masked here with `spans` when the scan that masked the client's
    /// copy found them ([`Recorder::mask_answer`]), else by [`Recorder::submit`]; a long
    /// answer kept beside the record's JSON ([`beside`]), not checked here to be JSON.
    pub fn keep_answer(
        &self,
        rec: &mut Record,
        answer: beside::Captured,
        spans: Option<&AnswerSpans>,
    ) {
        // Bytes no text has (UTF-16 or UTF-32 of ASCII, compressed or binary data) hide
        // values from the detectors, which read ASCII, and a reader of the record decodes
        // them all the same: not kept, whatever the service masks.
        let bytes = answer.bytes();
        if crate::obligations::mask::not_text(bytes) || std::str::from_utf8(bytes).is_err() {
            rec.response = Some(RawJson::string(&format!(
                "[{} bytes not recorded: not UTF-8 text (UTF-16, compressed or binary data), \
                 which the detectors cannot read]",
                bytes.len()
            )));
            return;
        }
        let answer = match spans {
            Some(spans) => {
                rec.response_masked = true;
                match self.mask_answer(answer.bytes(), spans) {
                    Cow::Owned(masked) => Some(masked),
                    Cow::Borrowed(_) => None,
                }
                .map_or(answer, beside::Captured::from)
            }
            None => answer,
        };
        match answer.into_text() {
            Ok(a) if beside::keeps(a.as_str()) => rec.response_beside = Some(a),
            Ok(a) => rec.response = Some(RawJson::owned(a.into_string())),
            Err(bytes) => rec.response = Some(RawJson::string(&String::from_utf8_lossy(&bytes))),
        }
    }

    /// An answer as the client got it, masked for the record: `spans` are the values of the
    /// built-in detectors the client's masks let through, found by the scan that masked it
    /// ([`crate::obligations::mask::BodyMasker::recorded`]). The record's copy is made from
    /// the client's bytes, not parsed and scanned again; set `response_masked` with it.
    pub fn mask_answer<'a>(&self, text: &'a [u8], spans: &AnswerSpans) -> Cow<'a, [u8]> {
        self.masks.mask_spans(&self.key, text, spans)
    }

    /// Masks a value kept as text. Detectors run over the text as it is, keys and values; a
    /// JSON escape (`\u0034` for `4`, `\/`) could hide a match from them, so text with one is
    /// decoded first (parsed and written again: `serde_json` escapes only what JSON requires),
    /// the detectors run over that, and that is what is kept: the text as sent could say more
    /// than its reading (a key given twice, digits beyond a float's). Text with escapes that do
    /// not decode (a lone surrogate, a number out of range) cannot be shown to them: it is not
    /// kept. A hit outside a string (a card number written as a number) leaves text that is no
    /// longer JSON: it is kept as a string.
    fn mask_raw(&self, r: &mut RawJson) {
        let text = r.get();
        if !has_hiding_escape(text.as_bytes()) {
            if let Cow::Owned(masked) = self.masks.mask_str(&self.key, text) {
                *r = RawJson::text(&masked);
            }
            return;
        }
        *r = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(mut v) => {
                // Each string, key and number as it reads decoded (serialised again, a control
                // character is escaped again, its letter before what follows), then the text
                // for what a detector finds by its context (a secret after its key's name).
                self.masks.mask_value(&self.key, &mut v);
                // A text kept as a string: its escapes are its own characters to the record,
                // but a reader may still parse it as the JSON it looks like (`{"n": 1e400,
                // "card": "\u0034111…"}`, which Python reads): what such a reader would find
                // once the text is masked, it is not kept.
                if let serde_json::Value::String(s) = &v
                    && has_hiding_escape(s.as_bytes())
                    && self.masks.finds_through_escapes(s)
                {
                    *r = RawJson::string(&format!(
                        "[{} bytes not recorded: read with their escapes decoded, they hold \
                         what the detectors look for]",
                        s.len()
                    ));
                    return;
                }
                let decoded = RawJson::of(&v);
                match self.masks.mask_str(&self.key, decoded.get()) {
                    Cow::Owned(masked) => RawJson::text(&masked),
                    Cow::Borrowed(_) => decoded,
                }
            }
            Err(e) => RawJson::string(&format!(
                "[{} bytes not recorded: escapes that do not decode ({e}) could hide what the \
                 detectors look for]",
                text.len()
            )),
        };
    }

    pub fn status(&self) -> RecorderStatus {
        let s = &self.shared;
        let mut st = RecorderStatus {
            dir: self.cfg.dir.display().to_string(),
            durability: self.cfg.durability,
            backlog: self.tx.len(),
            backlog_bytes: s.queued_bytes.load(Ordering::Relaxed),
            submitted: s.submitted.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            written: s.written.load(Ordering::Relaxed),
            durable_seq: s.durable_seq.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            segments_sealed: s.segments_sealed.load(Ordering::Relaxed),
            truncated_bytes: s.truncated_bytes.load(Ordering::Relaxed),
            failing: s
                .failing
                .load(Ordering::Acquire)
                .then(|| s.failure.lock().ok().and_then(|f| f.clone()))
                .flatten(),
            witnesses: s.witnesses.lock().map(|w| w.clone()).unwrap_or_default(),
            witness_quorum: s.witness_quorum.load(Ordering::Relaxed),
            quorum_size: 0,
        };
        st.quorum_size = witness_client::quorum_size(&st.witnesses, st.witness_quorum);
        st
    }

    /// Writes and fsyncs everything submitted so far (for a clean shutdown while other handles
    /// are still alive); the durable sequence number. Never refused for the backlog: it is
    /// how the backlog gets written.
    pub fn sync(&self) -> Result<u64, RecordError> {
        self.sync_entry(false)
    }

    /// A graceful stop's last word: [`Recorder::sync`], then the checkpoint and a signed
    /// checkpoint of every record written, however recently the last one was signed. The
    /// writer's own last word waits for the last handle to go, which handles the daemon's
    /// structures still hold (a connection's, a namespace listener's) can keep from coming
    /// before the process ends. The writer goes on taking records after it (a call cut by
    /// the stop is recorded), written if the process lives long enough.
    pub fn finish(&self) -> Result<u64, RecordError> {
        self.sync_entry(true)
    }

    fn sync_entry(&self, finish: bool) -> Result<u64, RecordError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Entry {
            payload: beside::Payload::default(),
            done: Some(tx),
            sync: true,
            finish,
        })?;
        Durable(rx).wait_blocking()
    }

    /// Stops accepting, writes and fsyncs everything queued, and joins the writer (when this
    /// is the last handle; the writer ends when the last handle is gone either way).
    pub fn close(self) {
        let Recorder { tx, writer, .. } = self;
        drop(tx);
        if let Ok(inner) = Arc::try_unwrap(writer) {
            if let Ok(Some(handle)) = inner.into_inner() {
                let _ = handle.join();
            }
        }
    }
}

/// What a workload block holds that the workload did not choose: its systemd unit (the unit
/// that owns its cgroup, made by root: `user@1000.service` reads as an e-mail address to the
/// detectors) and the cgroup path down to that unit. Kept as they are when the rest is masked.
struct RootOwned {
    unit: Option<String>,
    /// The cgroup path through the unit's component, and the path.
    cgroup: Option<(usize, String)>,
}

fn root_owned(w: &serde_json::Value) -> RootOwned {
    let unit = w
        .get("unit")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let cgroup = w
        .get("cgroup")
        .and_then(serde_json::Value::as_str)
        .and_then(|c| {
            let u = unit.as_deref()?;
            let at = c.find(&format!("/{u}"))?;
            let end = at + 1 + u.len();
            (c.len() == end || c.as_bytes()[end] == b'/').then(|| (end, c.to_string()))
        });
    RootOwned { unit, cgroup }
}

impl RootOwned {
    /// Puts back what [`root_owned`] found into a masked workload block; below the unit the
    /// cgroup path is masked on its own (`mask` masks text).
    fn restore(self, w: &mut serde_json::Value, mask: impl Fn(&str) -> String) {
        let Some(obj) = w.as_object_mut() else { return };
        if let Some(u) = self.unit {
            obj.insert("unit".into(), serde_json::Value::String(u));
        }
        if let Some((end, c)) = self.cgroup {
            obj.insert(
                "cgroup".into(),
                serde_json::Value::String(format!("{}{}", &c[..end], mask(&c[end..]))),
            );
        }
    }
}
