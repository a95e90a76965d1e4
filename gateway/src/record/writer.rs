//! The writer thread: appends frames, commits them in groups with one fsync, rotates
//! segments, applies retention, and recovers from a crash or a full disk.
//!
//! Frames are encoded into `pending` and each group is written compressed, as one zstd
//! frame, with one `write` + `fdatasync`. Until that fsync succeeds the frames stay in memory:
//! if it fails (ENOSPC, EIO) the file is cut back to its last durable length and the group is
//! written again once the disk recovers, so a failure never leaves a hole or a torn frame in
//! the chain.
//!
//! In buffered durability nothing on the data path wakes the writer while records flow: it
//! takes them from the channel once per commit window by itself (a sender only pays for a
//! wake-up, a futex call and the writer scheduled in the middle of its call, when the writer
//! waits on the channel, which it does only once the log has been quiet for [`QUIET`]).
use crate::{config::Durability, util::time::now_ms};
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use tracing::{error, info, warn};

use super::{
    Entry, RecordError, RecorderConfig, Shared,
    merkle::Frontier,
    note,
    segment::{self, Chain, End, HEADER_LEN, Hash, Header, Reader, SegmentFile},
    tree,
};

/// In buffered durability no call waits for the writer, so it yields to the data path: as
/// `SCHED_BATCH` it keeps its fair share of the CPU (it never falls behind for want of one),
/// but waking for a commit it does not preempt the thread running, so a group's hashing and
/// compression (a few hundred µs at full load, every commit window) waits for a CPU to come
/// free instead of stalling the calls of a data-path thread. In strict durability calls wait
/// on the commit, and the writer keeps the ordinary policy.
fn yield_to_data_path() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread, and `param` is a valid `sched_param`.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        warn!(
            error = %io::Error::last_os_error(),
            "the recorder's writer could not take SCHED_BATCH; it may preempt the data path"
        );
    }
}

/// How often a failing writer retries.
const RETRY: Duration = Duration::from_millis(250);
/// How often the checkpoint (`head.json`) is refreshed while records flow.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);
/// Buffered mode: while records came within this long, the writer looks for them once per
/// commit window instead of waiting on the channel, so that no data-path thread pays a
/// wake-up (a futex syscall, and the writer scheduled in the middle of its call) for a
/// record. Quiet for longer, it waits on the channel, and the next record wakes it.
///
/// The trade: while records flow the writer wakes once per commit window (100 times a second
/// at the default 10 ms) whether or not one came, where it was woken by the first record
/// after each commit; at a few hundred calls a second that is more writer wake-ups per call
/// (0.25 against 0.03 measured with debug builds, benches/calls.rs), none of them on a call's
/// path. Whether that helps light- and half-load tails still wants an optimised A/B run.
const QUIET: Duration = Duration::from_millis(500);

pub(super) struct Writer {
    cfg: Arc<RecorderConfig>,
    shared: Arc<Shared>,
    file: File,
    seg_path: PathBuf,
    seg_opened: Instant,
    /// Bytes of the active segment's file known to be on stable storage.
    durable_len: u64,
    /// Those bytes decompressed: what a segment's size is measured in.
    raw_len: u64,
    next_seq: u64,
    last_hash: Hash,
    /// How the active segment's frames are chained: [`Chain::NEWEST`], unless it is a segment
    /// an older version began.
    chain: Chain,
    /// Frames not yet fsync'd, and who waits for them.
    pending: Vec<u8>,
    pending_count: u64,
    pending_since: Option<Instant>,
    /// When the writer last took a record (buffered mode looks for records by itself while
    /// this is within [`QUIET`]).
    last_taken: Option<Instant>,
    waiters: Vec<(u64, tokio::sync::oneshot::Sender<Result<u64, String>>)>,
    zstd: zstd::bulk::Compressor<'static>,
    /// `pending` compressed, reused from group to group.
    packed: Vec<u8>,
    checkpointed_seq: u64,
    last_checkpoint: Instant,
    /// The Merkle tree over every record appended (`None`: it could not be restored, see
    /// [`tree::restore`]).
    tree: Option<Frontier>,
    /// The tree size of the last signed checkpoint, and when it was written.
    signed_size: u64,
    last_signed: Option<Instant>,
}

/// `head.json`: the last durable record, so that `verify` can tell a cut-off log.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time_ms: u64,
    /// The Merkle tree's frontier over records 1..=seq (`head.json`: to go on appending after
    /// a restart; `anchor.json`: for the records retention removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<Frontier>,
}

pub const CHECKPOINT_FILE: &str = "head.json";
pub const ANCHOR_FILE: &str = "anchor.json";

impl Writer {
    pub(super) fn open(cfg: Arc<RecorderConfig>, shared: Arc<Shared>) -> Result<Self, RecordError> {
        let dir = cfg.dir.clone();
        let open_err = open_error(&dir);
        fs::create_dir_all(&dir).map_err(open_err)?;
        for entry in fs::read_dir(&dir).map_err(open_err)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        let segments = segment::list(&dir).map_err(open_err)?;
        let mut zstd = segment::compressor().map_err(open_err)?;
        let (next_seq, last_hash, active) = match segments.last() {
            None => (1, [0; 32], None),
            Some(last) => {
                let r = recover(&cfg.dir, last, &shared)?;
                (r.next, r.hash, r.active)
            }
        };
        let (file, seg_path, durable_len, raw_len, chain) = match active {
            Some(Active {
                path,
                file_len,
                raw_len,
                chain,
            }) => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(open_err)?;
                f.seek(SeekFrom::Start(file_len)).map_err(open_err)?;
                (f, path, file_len, raw_len, chain)
            }
            None => {
                let (f, path, len) =
                    new_segment(&cfg.dir, next_seq, &last_hash, &mut zstd).map_err(open_err)?;
                (f, path, len, HEADER_LEN as u64, Chain::NEWEST)
            }
        };
        shared
            .durable_seq
            .store(next_seq.saturating_sub(1), Ordering::Relaxed);
        let tree = tree::restore(&cfg.dir, next_seq - 1);
        if tree.is_none() {
            warn!(
                "the records' Merkle tree cannot be rebuilt (the oldest records were removed by a version that kept none); no signed checkpoints for this log"
            );
        }
        if let Some(signer) = &cfg.signer {
            let vkey = format!("{}\n", signer.verifier().encode());
            // Not secret, but everything in the records directory is owner-only.
            crate::util::fs::write_atomic_mode(
                &cfg.dir.join(note::VERIFIER_FILE),
                vkey.as_bytes(),
                0o600,
            )
            .map_err(open_err)?;
        }
        info!(
            dir = %cfg.dir.display(),
            next_seq,
            segment = %seg_path.display(),
            durability = ?cfg.durability,
            "recording calls"
        );
        Ok(Self {
            cfg,
            shared,
            file,
            seg_path,
            seg_opened: Instant::now(),
            durable_len,
            raw_len,
            next_seq,
            last_hash,
            chain,
            pending: Vec::with_capacity(1 << 20),
            pending_count: 0,
            pending_since: None,
            last_taken: None,
            waiters: Vec::new(),
            zstd,
            packed: Vec::new(),
            checkpointed_seq: 0,
            last_checkpoint: Instant::now(),
            tree,
            signed_size: 0,
            last_signed: None,
        })
    }

    pub(super) fn run(mut self, rx: Receiver<Entry>) {
        if self.cfg.durability == Durability::Buffered {
            yield_to_data_path();
        }
        loop {
            if self.shared.failing.load(Ordering::Acquire) {
                std::thread::sleep(RETRY);
                self.commit();
                // Still failing: only look whether the last handle is gone. An entry met on
                // the way joins the group instead of being dropped.
                if self.shared.failing.load(Ordering::Acquire) {
                    match rx.try_recv() {
                        Ok(e) => self.append(e),
                        Err(TryRecvError::Disconnected) => return self.last_handle_gone(),
                        Err(TryRecvError::Empty) => {}
                    }
                }
                continue;
            }
            // Buffered: once a group is open, let it fill for the rest of the window without
            // being woken per record (senders only pay for a wake-up when the writer waits).
            if let Some(t) = self.pending_since
                && self.waiters.is_empty()
            {
                std::thread::sleep(self.cfg.commit_window.saturating_sub(t.elapsed()));
                while !self.segment_full() {
                    match rx.try_recv() {
                        Ok(e) => self.append(e),
                        Err(_) => break,
                    }
                }
                self.commit();
                continue;
            }
            // Buffered, records flowing: one look per commit window, never woken by a sender.
            if self.cfg.durability == Durability::Buffered
                && self.waiters.is_empty()
                && self.last_taken.is_some_and(|t| t.elapsed() < QUIET)
            {
                std::thread::sleep(self.cfg.commit_window);
                loop {
                    if self.segment_full() {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(e) => self.append(e),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return self.last_handle_gone(),
                    }
                }
                if !self.pending.is_empty() || !self.waiters.is_empty() {
                    self.commit();
                }
                continue;
            }
            let timeout = match self.pending_since {
                Some(t) => self.cfg.commit_window.saturating_sub(t.elapsed()),
                None => Duration::from_millis(500),
            };
            match rx.recv_timeout(timeout) {
                Ok(e) => {
                    self.append(e);
                    while self.pending_count < self.cfg.commit_records as u64
                        && !self.segment_full()
                    {
                        match rx.try_recv() {
                            Ok(e) => self.append(e),
                            Err(_) => break,
                        }
                    }
                    let due = !self.waiters.is_empty()
                        || self.segment_full()
                        || self.pending_count >= self.cfg.commit_records as u64
                        || self
                            .pending_since
                            .is_some_and(|t| t.elapsed() >= self.cfg.commit_window);
                    if due {
                        self.commit();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !self.pending.is_empty() {
                        self.commit();
                    }
                    self.housekeeping();
                }
                Err(RecvTimeoutError::Disconnected) => return self.last_handle_gone(),
            }
        }
    }

    /// Every handle is gone: write what is pending (one more try if the disk is full) and stop.
    fn last_handle_gone(&mut self) {
        self.commit();
        if self.shared.failing.load(Ordering::Acquire) {
            std::thread::sleep(RETRY);
            self.commit();
        }
        if !self.pending.is_empty() {
            error!(
                records = self.pending_count,
                "recorder stopped with records it could not write"
            );
        }
        self.checkpoint();
        self.sign(true);
    }

    /// The group would fill the segment: commit it so the segment rotates at about its size.
    fn segment_full(&self) -> bool {
        self.raw_len + self.pending.len() as u64 >= self.cfg.segment_bytes
    }

    fn append(&mut self, e: Entry) {
        self.shared
            .queued_bytes
            .fetch_sub(e.cost(), Ordering::Relaxed);
        if e.sync && e.finish {
            // A graceful stop: everything durable, checkpointed and signed, now.
            self.commit();
            let answer = if self.shared.failing.load(Ordering::Acquire) {
                let why = self.shared.failure.lock().ok().and_then(|f| f.clone());
                Err(why.unwrap_or_else(|| "the records could not be written".into()))
            } else {
                self.checkpoint();
                self.sign(true);
                Ok(self.next_seq.saturating_sub(1))
            };
            if let Some(done) = e.done {
                let _ = done.send(answer);
            }
            return;
        }
        if e.sync {
            // Answered by the commit that follows (see `run`): it is a waiter.
            if let Some(done) = e.done {
                self.waiters.push((self.next_seq.saturating_sub(1), done));
            }
            self.pending_since.get_or_insert_with(Instant::now);
            return;
        }
        self.last_taken = Some(Instant::now());
        let seq = self.next_seq;
        // Hashed once, for the tree and the chain.
        let parts = e.payload.parts();
        let leaf = self.chain.leaf_of(&parts);
        self.last_hash = segment::encode_frame_of(
            &mut self.pending,
            self.chain,
            &self.last_hash,
            seq,
            &parts,
            &leaf,
        );
        if let Some(t) = &mut self.tree {
            t.push(leaf);
        }
        self.next_seq += 1;
        self.pending_count += 1;
        self.pending_since.get_or_insert_with(Instant::now);
        if let Some(done) = e.done {
            self.waiters.push((seq, done));
        }
    }

    /// Writes and fsyncs `pending`. On failure the file is cut back to its durable length and
    /// the writer enters the failing state; `pending` is kept for the retry.
    fn commit(&mut self) {
        if self.pending.is_empty() {
            for (seq, done) in self.waiters.drain(..) {
                let _ = done.send(Ok(seq));
            }
            self.pending_since = None;
            self.recovered();
            return;
        }
        let result = segment::compress_frame(&mut self.zstd, &self.pending, &mut self.packed)
            .and_then(|()| self.file.write_all(&self.packed))
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.durable_len += self.packed.len() as u64;
                self.raw_len += self.pending.len() as u64;
                let last = self.next_seq - 1;
                self.shared.durable_seq.store(last, Ordering::Release);
                self.shared
                    .written
                    .fetch_add(self.pending_count, Ordering::Relaxed);
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                for (seq, done) in self.waiters.drain(..) {
                    let _ = done.send(Ok(seq));
                }
                self.pending.clear();
                self.pending_count = 0;
                self.pending_since = None;
                self.recovered();
                if self.raw_len >= self.cfg.segment_bytes
                    || self.seg_opened.elapsed() >= self.cfg.segment_age
                {
                    self.rotate();
                }
                if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                    self.checkpoint();
                }
                self.sign(false);
            }
            Err(e) => self.fail(&format!("writing {}: {e}", self.seg_path.display())),
        }
    }

    fn fail(&mut self, why: &str) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        // Whatever part of the group reached the file is cut off; it is rewritten whole.
        if let Err(e) = self
            .file
            .set_len(self.durable_len)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.durable_len)).map(drop))
        {
            warn!(error = %e, "could not cut the segment back to its durable length");
        }
        for (_, done) in self.waiters.drain(..) {
            let _ = done.send(Err(why.to_string()));
        }
        // The reason first: a call refused once `failing` is seen must find it.
        if let Ok(mut f) = self.shared.failure.lock() {
            *f = Some(why.to_string());
        }
        if !self.shared.failing.swap(true, Ordering::AcqRel) {
            error!(
                reason = why,
                "call recording is failing; new calls are refused until it recovers"
            );
        }
    }

    fn recovered(&mut self) {
        if self.shared.failing.swap(false, Ordering::AcqRel) {
            info!("call recording recovered; accepting calls again");
            if let Ok(mut f) = self.shared.failure.lock() {
                *f = None;
            }
        }
    }

    fn rotate(&mut self) {
        match new_segment(
            &self.cfg.dir,
            self.next_seq,
            &self.last_hash,
            &mut self.zstd,
        ) {
            Ok((file, path, len)) => {
                self.seg_path = path;
                self.file = file;
                self.chain = Chain::NEWEST;
                self.durable_len = len;
                self.raw_len = HEADER_LEN as u64;
                self.seg_opened = Instant::now();
                self.shared.segments_sealed.fetch_add(1, Ordering::Relaxed);
                self.checkpoint();
                if let Err(e) = retain(&self.cfg) {
                    warn!(error = %e, "records retention failed");
                }
            }
            // The old segment simply grows until a new one can be made.
            Err(e) => warn!(error = %e, "could not start a new records segment"),
        }
    }

    fn housekeeping(&mut self) {
        if self.seg_opened.elapsed() >= self.cfg.segment_age && self.raw_len > HEADER_LEN as u64 {
            self.rotate();
        }
        if self.checkpointed_seq != self.next_seq - 1 {
            self.checkpoint();
        }
        self.sign(false);
    }

    /// Writes a signed checkpoint of the tree if it grew, at most every
    /// `checkpoint_interval` unless `now`. Only between groups: every leaf is durable.
    fn sign(&mut self, now: bool) {
        let (Some(signer), Some(tree)) = (&self.cfg.signer, &self.tree) else {
            return;
        };
        let due = now
            || self
                .last_signed
                .is_none_or(|t| t.elapsed() >= self.cfg.checkpoint_interval);
        if !due
            || !self.pending.is_empty()
            || tree.size() == self.signed_size
            || tree.size() != self.next_seq - 1
        {
            return;
        }
        let cp = note::Checkpoint {
            origin: self.cfg.origin.clone(),
            size: tree.size(),
            root: tree.root(),
        };
        let signed = signer.sign(&cp.text());
        match crate::util::fs::write_atomic_mode(
            &self.cfg.dir.join(note::CHECKPOINT_FILE),
            signed.as_bytes(),
            0o600,
        ) {
            Ok(()) => {
                self.signed_size = cp.size;
                self.last_signed = Some(Instant::now());
                // The witness client's cue (see `witness_client`); nobody may be listening.
                self.shared.signed.send_replace(cp.size);
            }
            Err(e) => warn!(error = %e, "could not write the signed records checkpoint"),
        }
    }

    fn checkpoint(&mut self) {
        let seq = self.shared.durable_seq.load(Ordering::Acquire);
        if seq == 0 || seq == self.checkpointed_seq || !self.pending.is_empty() {
            return;
        }
        let cp = Checkpoint {
            seq,
            hash: segment::hex(&self.last_hash),
            time_ms: now_ms(),
            tree: self.tree.clone().filter(|t| t.size() == seq),
        };
        let text = serde_json::to_vec(&cp).unwrap_or_default();
        match crate::util::fs::write_atomic(&self.cfg.dir.join(CHECKPOINT_FILE), &text) {
            Ok(()) => {
                self.checkpointed_seq = seq;
                self.last_checkpoint = Instant::now();
            }
            Err(e) => warn!(error = %e, "could not write the records checkpoint"),
        }
    }
}

/// Creates the segment starting at `first_seq`, header written and durable; its length.
fn new_segment(
    dir: &Path,
    first_seq: u64,
    prev: &Hash,
    z: &mut zstd::bulk::Compressor<'static>,
) -> io::Result<(File, PathBuf, u64)> {
    let path = dir.join(segment::segment_name(first_seq));
    use std::os::unix::fs::OpenOptionsExt;
    // Calls are private whatever the directory's mode: owner-only from the start.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    let header = Header {
        first_seq,
        created_ms: now_ms(),
        prev_hash: *prev,
        chain: Chain::NEWEST,
    };
    let mut packed = Vec::new();
    let result = segment::compress_frame(z, &header.encode(), &mut packed)
        .and_then(|()| f.write_all(&packed))
        .and_then(|()| f.sync_all())
        .and_then(|()| crate::util::fs::sync_dir(dir));
    if let Err(e) = result {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok((f, path, packed.len() as u64))
}

/// How an I/O error opening the log in `dir` is reported.
fn open_error(dir: &Path) -> impl Fn(io::Error) -> RecordError + Copy + '_ {
    move |source| RecordError::Open {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Where the log left off.
struct Recovered {
    next: u64,
    hash: Hash,
    /// The segment to go on appending to; `None` to start a new one (an empty log, or a plain
    /// segment of an older version, left sealed).
    active: Option<Active>,
}

/// The segment a restarted writer goes on appending to.
struct Active {
    path: PathBuf,
    /// Its file's length, and its content's (decompressed).
    file_len: u64,
    raw_len: u64,
    /// How its frames are chained: a segment keeps the chain it began with.
    chain: Chain,
}

/// Reads the last segment through: the next sequence number, the chain's last hash, and
/// where appending goes on. A torn final frame (a crash mid-commit) is cut off with a log
/// line; a frame that is whole but does not verify is an error, because cutting it would
/// destroy evidence.
fn recover(dir: &Path, last: &SegmentFile, shared: &Shared) -> Result<Recovered, RecordError> {
    let corrupt = |reason: String| RecordError::Corrupt {
        dir: dir.to_path_buf(),
        segment: last.name(),
        reason,
    };
    let io_err = open_error(dir);
    // A compressed segment can only be torn between zstd frames' worth of whole groups.
    let mut file_len = 0;
    if last.compressed {
        let bytes = fs::read(&last.path).map_err(io_err)?;
        let keep = segment::whole_frames(&bytes).map_err(&corrupt)?;
        if keep < bytes.len() {
            cut(&last.path, keep as u64, bytes.len() as u64, shared).map_err(io_err)?;
        }
        if keep == 0 {
            return recover_before(dir, last, shared);
        }
        file_len = keep as u64;
    }
    let mut r = match Reader::open(last) {
        Ok(r) => r,
        // A crash while creating the segment: nothing but (part of) a header.
        Err(segment::ReadError::BadHeader) if !last.compressed => {
            let len = fs::metadata(&last.path).map(|m| m.len()).unwrap_or(0);
            if len < HEADER_LEN as u64 {
                return recover_before(dir, last, shared);
            }
            return Err(corrupt("bad header".into()));
        }
        Err(e) => return Err(corrupt(e.to_string())),
    };
    // Only a log an older version began ends in a segment of an older kind: not one whose
    // segments before are of a newer kind.
    if r.header.chain < Chain::NEWEST {
        let segs = segment::list(dir).map_err(io_err)?;
        let before = segs.iter().rev().find(|s| s.first_seq < last.first_seq);
        if before.is_some_and(|b| Reader::open(b).is_ok_and(|b| b.header.chain > r.header.chain)) {
            return Err(corrupt(
                "chained as only versions older than the segments before it wrote, which no callgate does; run `callgate records verify` (refusing to append to a log that does not verify)".into(),
            ));
        }
    }
    let mut next = r.header.first_seq;
    let mut hash = r.header.prev_hash;
    let mut good = HEADER_LEN as u64;
    while let Some(f) = r.next_frame().map_err(|e| corrupt(e.to_string()))? {
        if f.seq != next || r.header.chain.hash(&hash, f.seq, &f.payload) != f.hash {
            return Err(corrupt(format!(
                "frame at offset {} (seq {}) does not verify; run `callgate records verify` (refusing to append to a log that does not verify)",
                f.offset, f.seq
            )));
        }
        next += 1;
        hash = f.hash;
        good = f.offset + (segment::FRAME_HEADER_LEN + f.payload.len()) as u64;
    }
    match r.end {
        Some(End::Torn { offset, .. }) | Some(End::BadLength { offset, .. })
            if !last.compressed =>
        {
            let total = fs::metadata(&last.path).map(|m| m.len()).unwrap_or(offset);
            cut(&last.path, offset, total, shared).map_err(io_err)?;
        }
        Some(End::Torn { offset, .. }) | Some(End::BadLength { offset, .. }) => {
            return Err(corrupt(format!(
                "a whole compressed group ends inside a frame at offset {offset}"
            )));
        }
        _ => {}
    }
    // A plain segment holding nothing but its header says no more than the compressed one
    // that replaces it will, under the same name but for `.zst`.
    if !last.compressed && good == HEADER_LEN as u64 {
        fs::remove_file(&last.path).map_err(io_err)?;
    }
    Ok(Recovered {
        next,
        hash,
        active: last.compressed.then(|| Active {
            path: last.path.clone(),
            file_len,
            raw_len: good,
            chain: r.header.chain,
        }),
    })
}

/// `last` never got a whole header (a crash while creating it): removes it and recovers the
/// segment before it, to start a new one after that.
fn recover_before(
    dir: &Path,
    last: &SegmentFile,
    shared: &Shared,
) -> Result<Recovered, RecordError> {
    warn!(segment = %last.name(), "removing a segment whose header was never completed");
    let _ = fs::remove_file(&last.path);
    let rest = segment::list(dir).map_err(open_error(dir))?;
    let Some(prev) = rest.last() else {
        return Ok(Recovered {
            next: 1,
            hash: [0; 32],
            active: None,
        });
    };
    let r = recover(dir, prev, shared)?;
    Ok(Recovered { active: None, ..r })
}

/// Cuts `path` (`total` bytes long) back to `keep` bytes: a torn final frame.
fn cut(path: &Path, keep: u64, total: u64, shared: &Shared) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(keep).and_then(|()| f.sync_all()))?;
    let bytes = total.saturating_sub(keep);
    shared.truncated_bytes.fetch_add(bytes, Ordering::Relaxed);
    warn!(
        segment = %path.display(),
        offset = keep,
        bytes,
        "cut off a torn final frame (the previous run stopped mid-append); no durable record is lost"
    );
    Ok(())
}

fn retain(cfg: &RecorderConfig) -> io::Result<()> {
    if cfg.retain_bytes == 0 && cfg.retain_age.is_zero() {
        return Ok(());
    }
    let segments = segment::list(&cfg.dir)?;
    let Some((_, sealed)) = segments.split_last() else {
        return Ok(());
    };
    let sizes: Vec<u64> = segments
        .iter()
        .map(|s| fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0))
        .collect();
    let mut total: u64 = sizes.iter().sum();
    for (i, seg) in sealed.iter().enumerate() {
        let old = !cfg.retain_age.is_zero()
            && fs::metadata(&seg.path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > cfg.retain_age);
        let big = cfg.retain_bytes > 0 && total > cfg.retain_bytes;
        if !old && !big {
            break;
        }
        // The anchor says where the chain now legitimately starts.
        let next = &segments[i + 1];
        let header = Reader::open(next)
            .map(|r| r.header)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let anchor = Checkpoint {
            seq: header.first_seq,
            hash: segment::hex(&header.prev_hash),
            time_ms: now_ms(),
            tree: tree::frontier_before(&cfg.dir, header.first_seq),
        };
        crate::util::fs::write_atomic(
            &cfg.dir.join(ANCHOR_FILE),
            &serde_json::to_vec(&anchor).unwrap_or_default(),
        )?;
        // What witnesses behind the cut need of these records, kept before they go.
        super::witness_client::bridge_retention(&cfg.dir, header.first_seq);
        fs::remove_file(&seg.path)?;
        total -= sizes[i];
        info!(segment = %seg.name(), "records retention removed a segment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread that yields takes SCHED_BATCH (which needs no privilege), and only it.
    #[test]
    fn the_buffered_writer_yields_to_the_data_path() {
        // SAFETY: sched_getscheduler(0) reads the calling thread's policy.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let writer = std::thread::spawn(move || {
            yield_to_data_path();
            policy()
        })
        .join()
        .expect("the thread ran");
        assert_eq!(writer, libc::SCHED_BATCH);
        assert_eq!(policy(), before, "the test's own thread is left alone");
    }
}
