//! Reading the call log back: iterate records with filters (`list`, `show`, `replay`,
//! `export`) and walk the hash chain (`verify`). Works on the directory directly, so it needs
//! no running daemon.
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{
    Record,
    segment::{self, End, Hash, Reader, SegmentFile},
    writer::{ANCHOR_FILE, CHECKPOINT_FILE, Checkpoint},
};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("records directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{segment}: {reason}")]
    Segment { segment: String, reason: String },
}

/// A record with where it sits in the log.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub seq: u64,
    pub hash: String,
    #[serde(flatten)]
    pub record: Record,
}

/// Which records to return. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub service: Option<String>,
    pub function: Option<String>,
    pub decision: Option<String>,
    pub caller: Option<String>,
    pub session: Option<String>,
    pub id: Option<String>,
    pub from_seq: Option<u64>,
}

/// The names a caller goes by, most specific first: OIDC subject, systemd unit, command.
pub fn caller_names(r: &Record) -> impl Iterator<Item = String> + '_ {
    /// The workload's names, read from its text in one pass.
    #[derive(Default, serde::Deserialize)]
    struct Names {
        unit: Option<serde_json::Value>,
        comm: Option<serde_json::Value>,
    }
    let subject = r.caller.as_ref().and_then(|c| c.get("subject")?.as_str());
    let w: Names = r
        .workload
        .as_ref()
        .and_then(|w| serde_json::from_str(w.get()).ok())
        .unwrap_or_default();
    let names = [w.unit, w.comm].into_iter().flatten();
    subject
        .map(str::to_owned)
        .into_iter()
        .chain(names.filter_map(|v| v.as_str().map(str::to_owned)))
}

impl Filter {
    pub fn matches(&self, seq: u64, r: &Record) -> bool {
        let caller_matches = |want: &str| caller_names(r).any(|n| n == want);
        self.from_seq.is_none_or(|s| seq >= s)
            && self.since_ms.is_none_or(|t| r.time_ms >= t)
            && self.until_ms.is_none_or(|t| r.time_ms <= t)
            && self
                .service
                .as_deref()
                .is_none_or(|s| r.service.as_deref() == Some(s))
            && self
                .function
                .as_deref()
                .is_none_or(|f| r.function.as_deref() == Some(f))
            && self
                .decision
                .as_deref()
                .is_none_or(|d| r.decision.action == d)
            && self.session.as_deref().is_none_or(|s| &*r.session == s)
            && self.id.as_deref().is_none_or(|i| r.id == i)
            && self.caller.as_deref().is_none_or(caller_matches)
    }
}

fn segments(dir: &Path) -> Result<Vec<SegmentFile>, QueryError> {
    segment::list(dir).map_err(|source| QueryError::Dir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Calls `f` with every matching record in log order, until it returns false. Frames are not
/// verified here (that is `verify`'s job); a frame that does not parse is reported.
pub fn scan(
    dir: &Path,
    filter: &Filter,
    f: &mut dyn FnMut(Stored) -> bool,
) -> Result<(), QueryError> {
    let segs = segments(dir)?;
    for (i, seg) in segs.iter().enumerate() {
        let next_first = segs.get(i + 1).map(|s| s.first_seq);
        if let (Some(from), Some(next)) = (filter.from_seq, next_first) {
            if next <= from {
                continue;
            }
        }
        let err = |reason: String| QueryError::Segment {
            segment: seg.name(),
            reason,
        };
        let mut r = Reader::open(seg).map_err(|e| err(e.to_string()))?;
        while let Some(frame) = r.next_frame().map_err(|e| err(e.to_string()))? {
            let record: Record = super::beside::json(&frame.payload)
                .map_err(|e| e.to_string())
                .and_then(|json| serde_json::from_slice(&json).map_err(|e| e.to_string()))
                .map_err(|e| {
                    err(format!(
                        "record at offset {} (seq {}) does not parse: {e}",
                        frame.offset, frame.seq
                    ))
                })?;
            if filter.matches(frame.seq, &record) {
                let stored = Stored {
                    seq: frame.seq,
                    hash: segment::hex(&frame.hash),
                    record,
                };
                if !f(stored) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// What `verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Problems; empty means the chain verifies.
    pub problems: Vec<String>,
    /// Things worth knowing that are not tampering (retention, a frame being written).
    pub notes: Vec<String>,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn parse_hex(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Walks the whole chain (from `from_seq` if given: verification starts at the segment that
/// holds it, trusting that segment's header). Stops at the first broken frame of a segment,
/// naming it; continues with later segments so every broken place is reported.
pub fn verify(dir: &Path, from_seq: Option<u64>) -> Result<Verification, QueryError> {
    let mut v = Verification::default();
    let segs = segments(dir)?;
    let start = match from_seq {
        Some(from) => segs.iter().rposition(|s| s.first_seq <= from).unwrap_or(0),
        None => 0,
    };
    let anchor: Option<Checkpoint> = read_json(&dir.join(ANCHOR_FILE));
    let checkpoint: Option<Checkpoint> = read_json(&dir.join(CHECKPOINT_FILE));
    let mut expect: Option<(u64, Hash)> = None;
    // The last sequence number the chain accounts for, records or segment headers.
    let mut chain_end: Option<u64> = None;
    let last_index = segs.len().saturating_sub(1);
    // A log only goes from older kinds of segment to newer ones; the segments before
    // `from_seq`'s count too, whose headers are read for that alone.
    let mut newest_before = segs[..start]
        .iter()
        .filter_map(|s| Reader::open(s).ok().map(|r| r.header.chain))
        .max();
    for (i, seg) in segs.iter().enumerate().skip(start) {
        v.segments += 1;
        let name = seg.name();
        let mut r = match Reader::open(seg) {
            Ok(r) => r,
            Err(e) => {
                v.problems.push(format!("{name}: {e}"));
                expect = None;
                continue;
            }
        };
        let h = r.header;
        match newest_before {
            Some(newer) if newer > h.chain => v.problems.push(format!(
                "{name}: chained as only versions older than the segments before it wrote ({:?} after {newer:?}; its header was changed?)",
                h.chain
            )),
            _ => newest_before = Some(h.chain),
        }
        if h.first_seq != seg.first_seq {
            v.problems.push(format!(
                "{name}: the file name says it starts at seq {} but its header says {} (renamed or reordered segment)",
                seg.first_seq, h.first_seq
            ));
        }
        match expect {
            Some((seq, hash)) => {
                if h.first_seq != seq {
                    v.problems.push(format!(
                        "{name}: starts at seq {} but the previous segment ended at seq {}: {}",
                        h.first_seq,
                        seq.saturating_sub(1),
                        if h.first_seq > seq {
                            format!(
                                "records {}–{} are missing (deleted segment?)",
                                seq,
                                h.first_seq - 1
                            )
                        } else {
                            "segments overlap (reordered or duplicated segment?)".to_string()
                        }
                    ));
                } else if h.prev_hash != hash {
                    v.problems.push(format!(
                        "{name}: its header does not continue the chain of the previous segment (replaced or reordered segment)"
                    ));
                }
            }
            None if i == 0 && from_seq.is_none() => {
                let genesis = h.first_seq == 1 && h.prev_hash == [0; 32];
                let anchored = anchor.as_ref().is_some_and(|a| {
                    a.seq == h.first_seq && parse_hex(&a.hash) == Some(h.prev_hash)
                });
                if anchored && !genesis {
                    v.notes.push(format!(
                        "the log starts at seq {} (older segments removed by retention)",
                        h.first_seq
                    ));
                } else if !genesis {
                    v.problems.push(format!(
                        "{name}: the log starts at seq {} with no retention anchor for it: records 1–{} are missing (deleted segment?)",
                        h.first_seq,
                        h.first_seq.saturating_sub(1)
                    ));
                }
            }
            None => {}
        }
        let mut seq = h.first_seq;
        let mut hash = h.prev_hash;
        chain_end = Some(chain_end.unwrap_or(0).max(h.first_seq.saturating_sub(1)));
        let mut broken = false;
        loop {
            let frame = match r.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    v.problems.push(format!("{name}: read error: {e}"));
                    broken = true;
                    break;
                }
            };
            if frame.seq != seq {
                v.problems.push(format!(
                    "{name}: frame at offset {} has seq {} where seq {} was expected (frames removed or reordered)",
                    frame.offset, frame.seq, seq
                ));
                broken = true;
                break;
            }
            if h.chain.hash(&hash, frame.seq, &frame.payload) != frame.hash {
                v.problems.push(format!(
                    "{name}: frame at offset {} (seq {}) does not match its hash (altered record)",
                    frame.offset, frame.seq
                ));
                broken = true;
                break;
            }
            v.first_seq.get_or_insert(frame.seq);
            v.last_seq = Some(frame.seq);
            chain_end = Some(frame.seq);
            v.records += 1;
            seq += 1;
            hash = frame.hash;
        }
        match r.end {
            Some(End::Torn { offset, bytes }) if i == last_index => v.notes.push(format!(
                "{name}: the last frame (offset {offset}, {bytes} bytes) is incomplete: being written now, or torn by a crash (cut off at the next start)"
            )),
            Some(End::Torn { offset, .. }) => v.problems.push(format!(
                "{name}: ends inside a frame at offset {offset} (truncated segment)"
            )),
            Some(End::BadLength { offset, len }) => v.problems.push(format!(
                "{name}: frame at offset {offset} claims {len} bytes (corrupted length)"
            )),
            _ => {}
        }
        expect = (!broken).then_some((seq, hash));
    }
    if let Some(cp) = &checkpoint {
        let last = chain_end.unwrap_or(0);
        if cp.seq > last && v.problems.is_empty() {
            v.problems.push(format!(
                "the log ends at seq {last} but the checkpoint says seq {} was written: records {}–{} are missing (truncated log)",
                cp.seq,
                last + 1,
                cp.seq
            ));
        }
    }
    Ok(v)
}
