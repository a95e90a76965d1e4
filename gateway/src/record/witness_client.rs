//! Sends each new signed checkpoint to the witnesses of `records.witnesses` (C2SP
//! tlog-witness, see [`super::witness`]) and keeps the cosignatures they return.
//!
//! One task per witness, off the writer and off the data path: the writer only announces the
//! size of each checkpoint it wrote (a watch channel); the task reads the checkpoint file,
//! builds the consistency proof from the size the witness holds by reading the records
//! written since (it keeps the tree's frontier at that size, so nothing else), and POSTs it.
//! A failure is retried with exponential backoff (capped at [`BACKOFF_MAX`]); a 409 names the
//! size the witness holds, from which the proof is made again.
//!
//! A witness configured with its key (`records.witnesses: [{ url, key }]`) has each cosignature
//! it returns checked against that key: one that does not verify is reported (`status`'s
//! `last_error`, `bad_cosignatures`, the `witness_bad_cosignatures` metric) and not kept.
//!
//! At shutdown, once the writer has signed its final checkpoint, each task makes one last
//! attempt bounded by [`FINAL_WAIT`], so the witnesses hold the log's last state.
//!
//! Per witness, `witness-<sha256(url)[:8]>.json` in the records directory keeps the URL, the
//! size it cosigned with the tree's frontier there, and the cosigned checkpoint (the note
//! with the witness's signature lines added), which `callgate records checkpoint` prints.
//!
//! Retention may remove records a witness has not seen yet (one down for long, with a small
//! `retain_mb`): the proof from its size needs hashes of them. So before a segment goes,
//! [`bridge_retention`] keeps, per witness whose size predates the cut, the roots of the
//! perfect subtrees covering the removed leaves after its size (`bridge-<id>.json`: O(log n)
//! hashes); the proof is then made from those and the records still on disk.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Recorder,
    merkle::{self, Frontier},
    note::{self, Checkpoint},
    tree,
    witness::{self, AddCheckpoint},
};
use crate::util::{outbound::Outbound, time::now_ms};

/// The first retry's delay; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The last attempt at shutdown takes at most this long.
pub const FINAL_WAIT: Duration = Duration::from_secs(3);
/// 409s followed in a row (each names a new size to prove from) before backing off.
const MAX_CONFLICTS: usize = 3;

/// What `status` and `/metrics` show per witness.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WitnessStatus {
    pub url: String,
    /// The size of the last checkpoint the witness cosigned (0: none yet).
    pub size: u64,
    /// Unix ms of the last cosignature received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_ms: Option<u64>,
    /// Why the last attempt failed (none: it did not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Cosignatures that did not verify with the witness's configured key (refused).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_cosignatures: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A witness to send checkpoints to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// Its cosignature verifier key: cosignatures are checked, not just kept.
    pub key: Option<witness::CosignatureVerifier>,
}

impl Target {
    /// `url` with `key` (`<name>+<id>+<key>`) if given.
    pub fn parse(url: &str, key: Option<&str>) -> Result<Self, witness::WitnessError> {
        Ok(Self {
            url: url.to_string(),
            key: key.map(witness::CosignatureVerifier::parse).transpose()?,
        })
    }
}

/// The largest tree size at least `quorum` witnesses cosigned (0: none, or no quorum).
pub fn quorum_size(board: &[WitnessStatus], quorum: usize) -> u64 {
    if quorum == 0 {
        return 0;
    }
    let mut sizes: Vec<u64> = board.iter().map(|w| w.size).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.get(quorum - 1).copied().unwrap_or(0)
}

/// A witness's file in the records directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stored {
    pub url: String,
    pub size: u64,
    /// The tree's frontier at `size`.
    pub tree: Frontier,
    /// The checkpoint the witness cosigned, with its cosignature lines.
    #[serde(default)]
    pub cosigned: String,
    #[serde(default)]
    pub time_ms: u64,
}

/// The checkpoint text of a signed note (up to and with the newline before the blank line).
fn body_of(note: &str) -> String {
    note.split_once("\n\n")
        .map(|(b, _)| format!("{b}\n"))
        .unwrap_or_default()
}

/// The removed leaves after a witness's size, as perfect subtrees: `blocks` (height, root hex)
/// cover the leaves `[size, end)` in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Bridge {
    pub url: String,
    pub size: u64,
    pub end: u64,
    pub blocks: Vec<(u32, String)>,
}

fn bridge_path(dir: &Path, url: &str) -> PathBuf {
    let h = Sha256::digest(url.as_bytes());
    dir.join(format!(
        "bridge-{:02x}{:02x}{:02x}{:02x}.json",
        h[0], h[1], h[2], h[3]
    ))
}

/// The bridge of the witness at `url` from `size`, if one was kept.
fn bridge(dir: &Path, url: &str, size: u64) -> Option<(u64, Vec<(u32, merkle::Hash)>)> {
    let b: Bridge = serde_json::from_slice(&std::fs::read(bridge_path(dir, url)).ok()?).ok()?;
    if b.url != url || b.size != size {
        return None;
    }
    let blocks = b
        .blocks
        .iter()
        .map(|(h, x)| Some((*h, merkle::parse_hex(x)?)))
        .collect::<Option<Vec<_>>>()?;
    Some((b.end, blocks))
}

/// The perfect, aligned subtrees that cover the leaves `[from, to)`, largest first where
/// each starts: `(start, height)`.
fn cover(from: u64, to: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut p = from;
    while p < to {
        let fit = 63 - (to - p).leading_zeros();
        let h = if p == 0 {
            fit
        } else {
            p.trailing_zeros().min(fit)
        };
        out.push((p, h));
        p += 1 << h;
    }
    out
}

/// Called by retention before it removes the records before seq `next_first`: for every
/// witness whose cosigned size is smaller, extends its bridge over the leaves about to go.
pub(super) fn bridge_retention(dir: &Path, next_first: u64) {
    let cut = next_first.saturating_sub(1);
    for w in stored(dir) {
        if w.size >= cut {
            continue;
        }
        let (end, mut blocks) = bridge(dir, &w.url, w.size).unwrap_or((w.size, Vec::new()));
        if end >= cut {
            continue;
        }
        let plan = cover(end, cut);
        let mut i = 0;
        let mut f = Frontier::new();
        let mut expect = end + 1;
        let read = tree::for_each_record(dir, end + 1, &mut |fr| {
            if fr.seq != expect || i >= plan.len() {
                return false;
            }
            expect += 1;
            f.push(fr.leaf());
            if f.size() == 1 << plan[i].1 {
                blocks.push((plan[i].1, f.root()));
                f = Frontier::new();
                i += 1;
            }
            i < plan.len()
        });
        if read.is_err() || i < plan.len() {
            warn!(witness = %w.url, size = w.size, "could not keep the hashes a witness needs of the records retention removes: it will not be proved to from its size");
            continue;
        }
        let b = Bridge {
            url: w.url.clone(),
            size: w.size,
            end: cut,
            blocks: blocks
                .iter()
                .map(|(h, x)| (*h, super::segment::hex(x)))
                .collect(),
        };
        let bytes = serde_json::to_vec(&b).unwrap_or_default();
        if let Err(e) = crate::util::fs::write_atomic_mode(&bridge_path(dir, &w.url), &bytes, 0o600)
        {
            warn!(witness = %w.url, error = %e, "could not keep a witness's bridge over removed records");
        }
    }
}

/// The file of the witness at `url`.
pub fn state_path(dir: &Path, url: &str) -> PathBuf {
    let h = Sha256::digest(url.as_bytes());
    dir.join(format!(
        "witness-{:02x}{:02x}{:02x}{:02x}.json",
        h[0], h[1], h[2], h[3]
    ))
}

/// Every witness file in `dir` (`records checkpoint` adds their cosignatures).
pub fn stored(dir: &Path) -> Vec<Stored> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<Stored> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("witness-") && n.ends_with(".json")
        })
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a, b| a.url.cmp(&b.url));
    out
}

/// Starts one task per witness URL (no keys); they end when `stop` turns true.
pub fn start(
    recorder: &Recorder,
    urls: &[String],
    http: Outbound,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let targets: Vec<Target> = urls
        .iter()
        .map(|u| Target {
            url: u.clone(),
            key: None,
        })
        .collect();
    start_targets(recorder, &targets, 0, http, stop)
}

/// Starts one task per witness; `quorum` witnesses make a checkpoint witnessed (`status`).
/// When `stop` turns true each makes a last attempt (at most [`FINAL_WAIT`]) and ends: send
/// it once the writer has signed its final checkpoint.
pub fn start_targets(
    recorder: &Recorder,
    targets: &[Target],
    quorum: usize,
    http: Outbound,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let dir = recorder.dir().to_path_buf();
    recorder
        .shared
        .witness_quorum
        .store(quorum, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut board) = recorder.shared.witnesses.lock() {
        *board = targets
            .iter()
            .map(|t| WitnessStatus {
                url: t.url.clone(),
                ..Default::default()
            })
            .collect();
    }
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let url = &t.url;
            let c = Client {
                index: i,
                url: url.clone(),
                key: t.key.clone(),
                endpoint: format!("{}/add-checkpoint", url.trim_end_matches('/')),
                dir: dir.clone(),
                shared: recorder.shared.clone(),
                http: http.clone(),
                state: None,
            };
            tokio::spawn(c.run(recorder.shared.signed.subscribe(), stop.clone()))
        })
        .collect()
}

struct Client {
    index: usize,
    url: String,
    key: Option<witness::CosignatureVerifier>,
    endpoint: String,
    dir: PathBuf,
    shared: Arc<super::Shared>,
    http: Outbound,
    /// What the witness is known to hold (`None`: not known yet; the first request says 0).
    state: Option<Stored>,
}

/// How one attempt ended.
enum Outcome {
    Done,
    /// Nothing to send (no checkpoint yet, or the witness has it).
    Idle,
    Failed(String),
}

impl Client {
    async fn run(mut self, mut signed: watch::Receiver<u64>, mut stop: watch::Receiver<bool>) {
        self.state = std::fs::read(state_path(&self.dir, &self.url))
            .ok()
            .and_then(|b| serde_json::from_slice::<Stored>(&b).ok())
            .filter(|s| s.url == self.url && s.tree.is_valid() && s.tree.size() == s.size);
        if let Some(s) = &self.state {
            self.report(|w| {
                w.size = s.size;
                w.last_success_ms = Some(s.time_ms);
            });
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            let wait = match self.attempt().await {
                Outcome::Done | Outcome::Idle => {
                    backoff = BACKOFF_MIN;
                    None
                }
                Outcome::Failed(why) => {
                    warn!(witness = %self.url, error = %why, retry_in = ?backoff, "a witness did not cosign the records checkpoint");
                    self.report(|w| w.last_error = Some(why.clone()));
                    let w = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    Some(w)
                }
            };
            match wait {
                // After a failure: the backoff, whatever new checkpoints come meanwhile.
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.changed() => return self.last_attempt().await,
                    }
                    signed.mark_unchanged();
                }
                None => {
                    tokio::select! {
                        r = signed.changed() => if r.is_err() { return self.last_attempt().await },
                        _ = stop.changed() => return self.last_attempt().await,
                    }
                }
            }
            if *stop.borrow() {
                return self.last_attempt().await;
            }
        }
    }

    /// At shutdown: the final checkpoint to the witness, within [`FINAL_WAIT`].
    async fn last_attempt(&mut self) {
        match tokio::time::timeout(FINAL_WAIT, self.attempt()).await {
            Ok(Outcome::Failed(why)) => {
                warn!(witness = %self.url, error = %why, "a witness did not cosign the final records checkpoint");
                self.report(|w| w.last_error = Some(why));
            }
            Ok(_) => {}
            Err(_) => {
                warn!(witness = %self.url, "a witness did not answer for the final records checkpoint in time");
            }
        }
    }

    fn report(&self, f: impl FnOnce(&mut WitnessStatus)) {
        if let Ok(mut board) = self.shared.witnesses.lock()
            && let Some(w) = board.get_mut(self.index)
        {
            f(w);
        }
    }

    /// Sends the latest checkpoint if the witness has not cosigned it.
    async fn attempt(&mut self) -> Outcome {
        let note_path = self.dir.join(note::CHECKPOINT_FILE);
        let Ok(note) = std::fs::read_to_string(&note_path) else {
            return Outcome::Idle;
        };
        let Some(cp) = note
            .split_once("\n\n")
            .and_then(|(body, _)| Checkpoint::parse(&format!("{body}\n")).ok())
        else {
            return Outcome::Failed(format!("{} is not a checkpoint", note_path.display()));
        };
        match &self.state {
            Some(s) if s.size > cp.size && !s.cosigned.is_empty() => {
                return Outcome::Failed(format!(
                    "the witness cosigned {} records but the log's checkpoint has {}: the log was rolled back",
                    s.size, cp.size
                ));
            }
            Some(s) if s.size >= cp.size => return Outcome::Idle,
            _ => {}
        }
        let mut conflicts = 0;
        loop {
            let (old, from) = match &self.state {
                Some(s) => (s.size, s.tree.clone()),
                None => (0, Frontier::new()),
            };
            // From nothing there is nothing to prove: only the frontier to keep is wanted.
            let made = if old == 0 {
                self.frontier_at(cp.size).await.and_then(|f| {
                    (f.root() == cp.root)
                        .then_some((Vec::new(), f))
                        .ok_or_else(|| "the log on disk does not match its own checkpoint".into())
                })
            } else {
                self.prove(&from, &cp).await
            };
            let (proof, to) = match made {
                Ok(p) => p,
                Err(e) => return Outcome::Failed(e),
            };
            let body = AddCheckpoint {
                old,
                proof,
                checkpoint: note.clone(),
            }
            .encode();
            let req = match http::Request::post(&self.endpoint)
                .header(http::header::CONTENT_TYPE, "text/plain")
                .body(body.into_bytes())
            {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(format!("bad witness URL: {e}")),
            };
            let resp = match self.http.send(req).await {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let text = String::from_utf8_lossy(resp.body()).into_owned();
            match resp.status() {
                http::StatusCode::OK => {
                    let mut lines = match witness::parse_cosignatures(&text) {
                        Ok(l) => l,
                        Err(e) => return Outcome::Failed(e.to_string()),
                    };
                    // With the witness's key: its cosignature must verify, and only it is kept.
                    if let Some(key) = &self.key {
                        let body = note.split_once("\n\n").map(|(b, _)| format!("{b}\n"));
                        let verdict =
                            body.map_or(witness::Cosigned::Missing, |b| key.check(&b, &lines));
                        if !matches!(verdict, witness::Cosigned::Valid(_)) {
                            self.report(|w| w.bad_cosignatures += 1);
                            return Outcome::Failed(format!(
                                "the witness answered without a valid cosignature by its key {} ({}): not kept",
                                key.encode(),
                                if verdict == witness::Cosigned::Bad {
                                    "a cosignature by that key does not verify: forged or of another checkpoint"
                                } else {
                                    "no cosignature by that key"
                                }
                            ));
                        }
                        let id = format!("\u{2014} {} ", key.name());
                        lines.retain(|l| {
                            l.starts_with(&id)
                                && key
                                    .verify(&body_of(&note), std::slice::from_ref(l))
                                    .is_some()
                        });
                    }
                    let stored = Stored {
                        url: self.url.clone(),
                        size: cp.size,
                        tree: to,
                        cosigned: witness::add_signatures(&note, &lines),
                        time_ms: now_ms(),
                    };
                    // fsync'd: off the runtime's threads.
                    let path = state_path(&self.dir, &self.url);
                    let bytes = serde_json::to_vec(&stored).unwrap_or_default();
                    let written = tokio::task::spawn_blocking(move || {
                        crate::util::fs::write_atomic_mode(&path, &bytes, 0o600)
                    })
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                    if let Err(e) = written {
                        warn!(witness = %self.url, error = %e, "could not keep a cosigned checkpoint");
                    }
                    // The witness is past what a bridge was kept for.
                    let _ = std::fs::remove_file(bridge_path(&self.dir, &self.url));
                    self.report(|w| {
                        w.size = stored.size;
                        w.last_success_ms = Some(stored.time_ms);
                        w.last_error = None;
                    });
                    info!(witness = %self.url, size = cp.size, "a witness cosigned the records checkpoint");
                    self.state = Some(stored);
                    return Outcome::Done;
                }
                http::StatusCode::CONFLICT => {
                    let Some(held) = witness::parse_conflict(&text) else {
                        return Outcome::Failed(format!("409 Conflict: {}", text.trim_end()));
                    };
                    conflicts += 1;
                    if held > cp.size {
                        return Outcome::Failed(format!(
                            "the witness holds a checkpoint of {held} records but this log has {}: the log was rolled back or replaced",
                            cp.size
                        ));
                    }
                    if held == old || conflicts > MAX_CONFLICTS {
                        return Outcome::Failed(format!(
                            "409 Conflict: the witness holds size {held} with another tree (a forked or rewritten log)"
                        ));
                    }
                    // Resend from the size the witness holds.
                    match self.frontier_at(held).await {
                        Ok(f) => {
                            self.state = Some(Stored {
                                url: self.url.clone(),
                                size: held,
                                tree: f,
                                ..Default::default()
                            });
                        }
                        Err(e) => return Outcome::Failed(e),
                    }
                }
                s => {
                    return Outcome::Failed(format!(
                        "{s}: {}",
                        text.trim_end().chars().take(300).collect::<String>()
                    ));
                }
            }
        }
    }

    /// The consistency proof from the tree `from` holds to `cp`'s, and the frontier at
    /// `cp.size`, from the records written after `from` (read off the data path, in one pass
    /// and O(log n) memory: a witness down for days is caught up without holding the tree).
    async fn prove(
        &self,
        from: &Frontier,
        cp: &Checkpoint,
    ) -> Result<(Vec<merkle::Hash>, Frontier), String> {
        let dir = self.dir.clone();
        let url = self.url.clone();
        let from = from.clone();
        let (old, new, root) = (from.size(), cp.size, cp.root);
        tokio::task::spawn_blocking(move || {
            let mut p = Prover::new(&from, new)?;
            // The records retention removed after the witness's size, as kept for it.
            let mut next = old;
            if let Some((end, blocks)) = bridge(&dir, &url, old).filter(|(e, _)| *e <= new) {
                for (h, hash) in blocks {
                    p.push_node(h, hash)
                        .ok_or("a kept subtree does not fit the tree")?;
                }
                next = end;
            }
            let mut gap = None;
            tree::for_each_record(&dir, next + 1, &mut |fr| {
                if fr.seq > new {
                    return false;
                }
                if fr.seq != p.tree.size() + 1 {
                    gap = Some(fr.seq);
                    return false;
                }
                p.push(fr.leaf());
                true
            })?;
            if let Some(seq) = gap {
                return Err(format!(
                    "records {}–{} were removed by retention and no hashes of them were kept: the witness (size {old}) cannot be proved to",
                    p.tree.size() + 1,
                    seq - 1
                ));
            }
            let (proof, f) = p.finish()?;
            if f.root() != root {
                return Err("the log on disk does not match its own checkpoint".into());
            }
            Ok((proof, f))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The tree's frontier at `size`, read from the log.
    async fn frontier_at(&self, size: u64) -> Result<Frontier, String> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            if size == 0 {
                return Ok(Frontier::new());
            }
            tree::frontier_before(&dir, size + 1).ok_or_else(|| {
                format!("the witness holds size {size}, which this log cannot prove from (records removed by retention?)")
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// A consistency proof (RFC 6962 §2.1.2) from a tree known by its [`Frontier`] to a larger
/// one, made from the new leaves as they stream by. Every hash of such a proof is the root of
/// a subtree that lies either wholly in the old tree, where it is one of the frontier's
/// nodes, or wholly among the new leaves, where a frontier of its own makes it.
struct Prover {
    /// Per proof hash: the old frontier's node, or the new leaves' range and its frontier.
    parts: Vec<Part>,
    /// The new tree's frontier.
    tree: Frontier,
    new: u64,
}

enum Part {
    Old(merkle::Hash),
    New { start: u64, end: u64, f: Frontier },
}

/// The ranges `[a, b)` of leaves whose subtree hashes, in order, are the consistency proof
/// from size `m` to size `n` (RFC 6962 §2.1.2's SUBPROOF).
fn proof_ranges(m: u64, n: u64) -> Vec<(u64, u64)> {
    fn sub(m: u64, a: u64, b: u64, complete: bool, out: &mut Vec<(u64, u64)>) {
        let n = b - a;
        if m == n {
            if !complete {
                out.push((a, b));
            }
            return;
        }
        // The largest power of two smaller than n.
        let k = 1u64 << (63 - (n - 1).leading_zeros());
        if m <= k {
            sub(m, a, a + k, complete, out);
            out.push((a + k, b));
        } else {
            sub(m - k, a + k, b, false, out);
            out.push((a, a + k));
        }
    }
    let mut out = Vec::new();
    if m > 0 && m < n {
        sub(m, 0, n, true, &mut out);
    }
    out
}

impl Prover {
    fn new(from: &Frontier, new: u64) -> Result<Self, String> {
        let m = from.size();
        if new < m {
            return Err(format!("tree size {m} is larger than tree size {new}"));
        }
        let mut parts = Vec::new();
        for (a, b) in proof_ranges(m, new) {
            if a >= m {
                parts.push(Part::New {
                    start: a,
                    end: b,
                    f: Frontier::new(),
                });
                continue;
            }
            // A perfect subtree ending at or before m: the frontier's node of its height.
            let len = b - a;
            let h = len.trailing_zeros();
            let is_node = len.is_power_of_two()
                && b <= m
                && (m >> h) & 1 == 1
                && a == (m >> h >> 1) << h << 1;
            let node = (m >> h >> 1).count_ones() as usize;
            match from.nodes().get(node) {
                Some(hash) if is_node => parts.push(Part::Old(*hash)),
                _ => return Err(format!("no subtree [{a}, {b}) in a tree of {m}")),
            }
        }
        Ok(Self {
            parts,
            tree: from.clone(),
            new,
        })
    }

    /// The next `2^height` leaves, as their perfect subtree's root.
    fn push_node(&mut self, height: u32, hash: merkle::Hash) -> Option<()> {
        let i = self.tree.size();
        for p in &mut self.parts {
            if let Part::New { start, end, f } = p
                && (*start..*end).contains(&i)
            {
                f.push_node(height, hash)?;
            }
        }
        self.tree.push_node(height, hash)
    }

    /// The next leaf's hash.
    fn push(&mut self, leaf: merkle::Hash) {
        let i = self.tree.size();
        for p in &mut self.parts {
            if let Part::New { start, end, f } = p
                && (*start..*end).contains(&i)
            {
                f.push(leaf);
            }
        }
        self.tree.push(leaf);
    }

    /// The proof and the new tree's frontier, once all the new leaves are in.
    fn finish(self) -> Result<(Vec<merkle::Hash>, Frontier), String> {
        if self.tree.size() != self.new {
            return Err(format!(
                "the log holds {} records, its checkpoint says {}",
                self.tree.size(),
                self.new
            ));
        }
        let proof = self
            .parts
            .into_iter()
            .map(|p| match p {
                Part::Old(h) => h,
                Part::New { f, .. } => f.root(),
            })
            .collect();
        Ok((proof, self.tree))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::merkle::{Tree, leaf_hash, verify_consistency};

    /// The streamed proof is the one the whole tree gives, for every pair of sizes up to 70.
    #[test]
    fn a_streamed_proof_is_the_whole_trees() {
        let leaves: Vec<merkle::Hash> = (0..70u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut t = Tree::new();
        for l in &leaves {
            t.push(*l);
        }
        for m in 0..=70u64 {
            let mut from = Frontier::new();
            for l in &leaves[..m as usize] {
                from.push(*l);
            }
            for n in m..=70u64 {
                let mut p = Prover::new(&from, n).unwrap();
                for l in &leaves[m as usize..n as usize] {
                    p.push(*l);
                }
                let (proof, f) = p.finish().unwrap();
                assert_eq!(proof, t.consistency(m, n).unwrap(), "{m} -> {n}");
                assert_eq!(f.root(), t.root(n).unwrap(), "{m} -> {n}");
                if m > 0 {
                    verify_consistency(m, n, &t.root(m).unwrap(), &f.root(), &proof).unwrap();
                }
            }
        }
        // With a bridge over leaves [m, t): the subtrees `cover` names, then the leaves.
        for m in 1..=40u64 {
            let mut from = Frontier::new();
            for l in &leaves[..m as usize] {
                from.push(*l);
            }
            for cut in m..=50u64 {
                let n = 70;
                let mut p = Prover::new(&from, n).unwrap();
                for (start, h) in cover(m, cut) {
                    let mut f = Frontier::new();
                    for l in &leaves[start as usize..(start + (1 << h)) as usize] {
                        f.push(*l);
                    }
                    p.push_node(h, f.root()).unwrap();
                }
                for l in &leaves[cut as usize..n as usize] {
                    p.push(*l);
                }
                let (proof, f) = p.finish().unwrap();
                assert_eq!(proof, t.consistency(m, n).unwrap(), "{m} -> {n} via {cut}");
                assert_eq!(f.root(), t.root(n).unwrap());
            }
        }
        // Too few leaves.
        let p = Prover::new(&Frontier::new(), 3).unwrap();
        assert!(p.finish().is_err());
    }
}
