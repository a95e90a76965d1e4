//! The Merkle tree of the log on disk: the writer's frontier restored at start-up, the
//! frontier kept for the records that retention removes, the whole tree built for proofs, and
//! a signed checkpoint checked against the log.
//!
//! Leaf `i` is the payload of the record with sequence number `i + 1` (see [`super::merkle`]).
//! The writer's frontier is saved in `head.json` with the last durable record; after a crash it
//! is replayed from there over the records written since. When retention removes segments,
//! `anchor.json` keeps the frontier of the records it removed, so the tree (and proofs for
//! every record still on disk, and consistency from any checkpoint taken since) goes on.
use std::path::Path;

use serde::Serialize;

use super::{
    merkle::{self, Frontier, Hash, ProofError, Tree},
    note,
    segment::{self, Chain, Reader},
    writer::{ANCHOR_FILE, CHECKPOINT_FILE, Checkpoint},
};

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Calls `f` with every frame (record) with `seq >= from` in log order, until it returns
/// false. Fails at the first frame that does not follow the one before (`verify` names such
/// places).
pub fn for_each_record(
    dir: &Path,
    from: u64,
    f: &mut dyn FnMut(&segment::Frame) -> bool,
) -> Result<(), String> {
    let segs = segment::list(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let start = segs.iter().rposition(|s| s.first_seq <= from).unwrap_or(0);
    let mut expect: Option<u64> = None;
    for seg in &segs[start..] {
        let mut r = Reader::open(seg).map_err(|e| format!("{}: {e}", seg.name()))?;
        if expect.is_some_and(|e| e != r.header.first_seq) {
            return Err(format!(
                "{}: starts at seq {} where seq {} was expected",
                seg.name(),
                r.header.first_seq,
                expect.unwrap_or(0)
            ));
        }
        let mut seq = r.header.first_seq;
        while let Some(fr) = r.next_frame().map_err(|e| format!("{}: {e}", seg.name()))? {
            if fr.seq != seq {
                return Err(format!(
                    "{}: frame at offset {} has seq {} where seq {seq} was expected",
                    seg.name(),
                    fr.offset,
                    fr.seq
                ));
            }
            if seq >= from && !f(&fr) {
                return Ok(());
            }
            seq += 1;
        }
        expect = Some(seq);
    }
    Ok(())
}

/// Where the tree of this log starts: the frontier of the records retention removed (empty
/// if none were), or `None` when they were removed by a version that kept no tree.
fn base(dir: &Path) -> Option<Frontier> {
    let first = segment::list(dir).ok()?.first().map_or(1, |s| s.first_seq);
    if first == 1 {
        return Some(Frontier::new());
    }
    let anchor: Checkpoint = read_json(&dir.join(ANCHOR_FILE))?;
    anchor
        .tree
        .filter(|t| t.is_valid() && anchor.seq == first && t.size() + 1 == first)
}

/// The writer's frontier for a log whose last record is `last_seq`: from `head.json`, with
/// the records written after it replayed; rebuilt from the start (or the retention anchor)
/// when `head.json` has none that fits. `None` if the tree cannot be had.
pub(super) fn restore(dir: &Path, last_seq: u64) -> Option<Frontier> {
    let saved: Option<Frontier> =
        read_json::<Checkpoint>(&dir.join(CHECKPOINT_FILE)).and_then(|c| {
            c.tree
                .filter(|t| t.is_valid() && t.size() == c.seq && c.seq <= last_seq)
        });
    let mut f = match saved {
        Some(f) => f,
        None => base(dir)?,
    };
    if f.size() < last_seq {
        let from = f.size() + 1;
        for_each_record(dir, from, &mut |fr| {
            f.push(fr.leaf());
            true
        })
        .ok()?;
    }
    (f.size() == last_seq).then_some(f)
}

/// The frontier after the records of the segments retention is about to remove, which end
/// just before `next_first`: the previous anchor's (or the empty one) with their leaves added.
pub(super) fn frontier_before(dir: &Path, next_first: u64) -> Option<Frontier> {
    let mut f = base(dir)?;
    for_each_record(dir, f.size() + 1, &mut |fr| {
        if fr.seq >= next_first {
            return false;
        }
        f.push(fr.leaf());
        true
    })
    .ok()?;
    (f.size() + 1 == next_first).then_some(f)
}

/// The whole tree of the log on disk, and the record payloads it was built from if asked for.
pub fn load(dir: &Path) -> Result<Tree, String> {
    let base = base(dir).ok_or_else(|| {
        "the log's oldest records were removed by a version that kept no Merkle tree".to_string()
    })?;
    let mut t = Tree::from_frontier(&base);
    for_each_record(dir, base.size() + 1, &mut |fr| {
        t.push(fr.leaf());
        true
    })?;
    Ok(t)
}

/// The verifier key the daemon wrote beside the log (to be used only when the user gives
/// none: it comes from the host being checked).
pub fn host_key(dir: &Path) -> Result<note::Verifier, String> {
    let path = dir.join(note::VERIFIER_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    note::Verifier::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// What checking a checkpoint against the log found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointCheck {
    pub origin: String,
    pub checkpoint_size: u64,
    pub log_size: u64,
    /// The log's current root (base64).
    pub log_root: String,
    /// The consistency proof from the checkpoint's tree to the log's (base64 hashes).
    pub consistency: Vec<String>,
    pub problems: Vec<String>,
}

fn b64(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

/// Does the log in `dir` contain the tree `cp` signed? A consistency proof from it to the
/// log's current tree is made from the records on disk and verified against the signed
/// root, so a log rolled back to an older copy, a rewritten tail or a fork fails.
pub fn check(dir: &Path, cp: &note::Checkpoint) -> Result<CheckpointCheck, String> {
    let tree = load(dir)?;
    let n = tree.size();
    let m = cp.size;
    let log_root = tree.root(n).map_err(|e| e.to_string())?;
    let mut out = CheckpointCheck {
        origin: cp.origin.clone(),
        checkpoint_size: m,
        log_size: n,
        log_root: b64(&log_root),
        consistency: Vec::new(),
        problems: Vec::new(),
    };
    if m > n {
        out.problems.push(format!(
            "the checkpoint signed {m} records but the log holds {n}: records {}–{m} are missing (the log was rolled back to an older copy or cut)",
            n + 1
        ));
        return Ok(out);
    }
    let proof = match tree.consistency(m, n) {
        Ok(p) => p,
        Err(ProofError::Pruned(first)) => {
            out.problems.push(format!(
                "the checkpoint ({m} records) is older than the oldest records kept (retention removed records before seq {first}): it cannot be checked against this log"
            ));
            return Ok(out);
        }
        Err(e) => return Err(e.to_string()),
    };
    out.consistency = proof.iter().map(b64).collect();
    if let Err(e) = merkle::verify_consistency(m, n, &cp.root, &log_root, &proof) {
        out.problems.push(format!(
            "the log's first {m} records are not the ones the checkpoint signed ({e}): records up to seq {m} were altered, replaced or removed (rewritten log or fork)"
        ));
    }
    Ok(out)
}

/// An inclusion proof of one record, as `records prove` prints it and `records export
/// --with-proofs` attaches it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Inclusion {
    pub seq: u64,
    /// The tree size the proof is for (the checkpoint's).
    pub tree_size: u64,
    /// The record's Merkle leaf hash, base64: SHA-256(0x00 ‖ record), or for a record of
    /// more than 4 KiB in a segment this version wrote, SHA-256(0x00 ‖ 0xFF ‖ BLAKE3(record))
    /// (see `segment`).
    pub leaf_hash: String,
    /// The record exactly as it is hashed (its stored JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf: Option<String>,
    /// Sibling hashes from the leaf up (RFC 9162 §2.1.3), base64.
    pub hashes: Vec<String>,
}

impl Inclusion {
    /// The proof for record `seq`, whose leaf hash is `leaf` ([`segment::Frame::leaf`]).
    pub fn make(tree: &Tree, seq: u64, size: u64, leaf: &Hash) -> Result<Self, ProofError> {
        let hashes = tree.inclusion(seq - 1, size)?;
        Ok(Self {
            seq,
            tree_size: size,
            leaf_hash: b64(leaf),
            leaf: None,
            hashes: hashes.iter().map(b64).collect(),
        })
    }

    /// Checks the proof against `root`, for the record whose stored text is `leaf`.
    pub fn verify(&self, leaf: &[u8], root: &Hash) -> Result<(), String> {
        use base64::Engine;
        let dec = |s: &String| -> Result<Hash, String> {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| "a proof hash is not base64 SHA-256".to_string())
        };
        let hashes = self.hashes.iter().map(dec).collect::<Result<Vec<_>, _>>()?;
        if self.seq == 0 {
            return Err("seq 0 is not a record".into());
        }
        // The proof does not say which kind of segment held the record, so the leaf is over
        // it by either kind's rule. A record never begins with 0xFF (see `segment`): a text
        // that does could be a large record's digest entry read by the older rule.
        if leaf.first() == Some(&0xFF) {
            return Err("not a record: its text begins with 0xFF".into());
        }
        let stated = dec(&self.leaf_hash)?;
        let leaf_hash = [Chain::NEWEST, Chain::Leaf]
            .map(|c| c.leaf(leaf))
            .into_iter()
            .find(|h| *h == stated)
            .ok_or(
                "the record's text does not make the proof's leaf hash (the record was altered)",
            )?;
        merkle::verify_inclusion(self.seq - 1, self.tree_size, &leaf_hash, &hashes, root)
            .map_err(|e| e.to_string())
    }
}
