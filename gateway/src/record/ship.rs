//! Shipping this host's records to the fleet database (`fleet:`), in the background: the
//! local log stays the primary copy and no call waits on the database. Every second, while
//! the database is reachable, the records written since the last batch are read back from
//! the log and sent in batches of [`BATCH`] (one multi-row insert each, idempotent by host
//! and sequence). The next batch is read while the last ones are inserted, and up to
//! [`IN_FLIGHT`] inserts run at once on the pool's connections, acknowledged in log order.
//! The segment being read stays open from batch to batch (a [`Cursor`]); it is opened
//! again only once it has been read to its end (the writer's last group) or after a failed
//! batch, and frames before the wanted sequence are skipped unparsed. Each record goes as
//! the JSON text its frame holds. Where to resume is asked of the database after each
//! (re)connection: as inserts in flight may commit out of order (a younger batch in, an
//! older one lost with its connection), it is not the highest sequence the database has
//! but the first gap among its last `IN_FLIGHT × BATCH + 1` rows ([`resume_after`]), so a
//! restart or an outage neither loses nor doubles a record.
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::segment::{self, Reader, SegmentFile};
use crate::fleet::{Fleet, FleetError, RawJson, ShippedRecord};

/// Records per insert.
pub const BATCH: usize = 2000;
/// Inserts sent and not yet acknowledged, at most. Everything below the oldest of them is
/// in the database, so a gap can only be among the last `IN_FLIGHT × BATCH` rows.
pub const IN_FLIGHT: usize = 2;
/// How many of the database's last rows of this host are looked at to find where to resume.
pub const RESUME_WINDOW: usize = IN_FLIGHT * BATCH + 1;
/// How often new records are looked for.
const EVERY: Duration = Duration::from_secs(1);
/// Batches per round at most (so `stop` is heard); a round that ends on it leaves a
/// backlog, and the next round starts without waiting.
const ROUND: usize = 100;

type Read = (Result<Vec<ShippedRecord>, String>, Option<Cursor>);
type Insert = (u64, usize, Result<u64, FleetError>);

/// How much of shipping overlaps: inserts out at once, and whether the next batch is read
/// while they run. [`Depth::PIPELINED`] is what the daemon runs; [`Depth::ALTERNATING`]
/// (read, insert, wait, read…) is kept for measuring against (`tests/ship.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    pub inserts: usize,
    pub read_ahead: bool,
}

impl Depth {
    pub const PIPELINED: Depth = Depth {
        inserts: IN_FLIGHT,
        read_ahead: true,
    };
    pub const ALTERNATING: Depth = Depth {
        inserts: 1,
        read_ahead: false,
    };
}

/// Ships the records in `dir` until `stop`, then one round more: the daemon says stop once
/// its last records are written, so that they reach the database before it ends.
pub fn start(fleet: Arc<Fleet>, dir: PathBuf, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    start_with(fleet, dir, stop, Depth::PIPELINED)
}

/// Ships the records in `dir` until `stop`, overlapping as `depth` says (at most
/// [`IN_FLIGHT`] inserts, whatever it asks: the resume window relies on it).
pub fn start_with(
    fleet: Arc<Fleet>,
    dir: PathBuf,
    mut stop: watch::Receiver<bool>,
    depth: Depth,
) -> JoinHandle<()> {
    let max_inserts = depth.inserts.clamp(1, IN_FLIGHT);
    tokio::spawn(async move {
        // The next sequence number to ship; unknown until the database has said.
        let mut next: Option<u64> = None;
        // The segment being read, positioned at `next` (dropped whenever `next` is unsure).
        let mut cursor: Option<Cursor> = None;
        // The last round stopped on its bound with more to ship.
        let mut backlog = false;
        // Stopping: this round is the last.
        let mut last_round = false;
        loop {
            let wait = if backlog { Duration::ZERO } else { EVERY };
            if last_round {
                return;
            }
            tokio::select! {
                _ = stop.changed() => last_round = true,
                _ = tokio::time::sleep(wait) => {}
            }
            backlog = false;
            if !fleet.connected() {
                next = None;
                continue;
            }
            let from = match next {
                Some(n) => n,
                None => match fleet.shipped_last(RESUME_WINDOW).await {
                    Ok(seqs) => {
                        let n = resume_after(&seqs);
                        debug!(from_seq = n, "shipping records to the fleet database");
                        n
                    }
                    Err(e) => {
                        debug!(error = %e, "records not shipped: the fleet database is unreachable");
                        continue;
                    }
                },
            };
            next = Some(from);
            // Batches until the log has no more: the next batch is read while the ones
            // before it are inserted.
            let mut reading = Some(read(dir.clone(), from, cursor.take()));
            let mut inserts: VecDeque<JoinHandle<Insert>> = VecDeque::new();
            let mut failed = false;
            let mut more = false;
            for i in 0..ROUND {
                more = false;
                let Some(r) = reading.take() else { break };
                let batch = match r.await {
                    Ok((Ok(b), cur)) => {
                        cursor = cur;
                        b
                    }
                    Ok((Err(e), _)) => {
                        warn!(error = %e, "records could not be read for shipping");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "records shipping task failed");
                        break;
                    }
                };
                let Some(last) = batch.last().map(|r| r.seq) else {
                    break;
                };
                let full = batch.len() >= BATCH;
                more = full;
                let ahead = full && i + 1 < ROUND;
                if ahead && depth.read_ahead {
                    reading = Some(read(dir.clone(), last + 1, cursor.take()));
                }
                if inserts.len() >= max_inserts
                    && let Some(oldest) = inserts.pop_front()
                    && !acknowledged(oldest.await, &mut next)
                {
                    failed = true;
                    break;
                }
                let f = fleet.clone();
                inserts.push_back(tokio::spawn(async move {
                    let n = batch.len();
                    (last, n, f.ship_records(&batch).await)
                }));
                if ahead && !depth.read_ahead {
                    // Alternating: this batch is in before the next is read.
                    if let Some(only) = inserts.pop_front()
                        && !acknowledged(only.await, &mut next)
                    {
                        failed = true;
                        break;
                    }
                    reading = Some(read(dir.clone(), last + 1, cursor.take()));
                }
                if !full {
                    break;
                }
            }
            // The round's inserts, in order; after a failure the rest are waited for (they
            // may commit or not) before the database is asked where to resume.
            while let Some(oldest) = inserts.pop_front() {
                let r = oldest.await;
                if !failed && !acknowledged(r, &mut next) {
                    failed = true;
                }
            }
            if let Some(r) = reading.take() {
                // Read ahead before a failure: its cursor is past `next`.
                let _ = r.await;
                cursor = None;
            }
            backlog = more && !failed;
            if failed {
                next = None;
                cursor = None;
            }
        }
    })
}

/// Reads the batch from `from` on, off the runtime's threads.
fn read(dir: PathBuf, from: u64, mut cursor: Option<Cursor>) -> JoinHandle<Read> {
    tokio::task::spawn_blocking(move || {
        let b = read_batch(&dir, from, &mut cursor);
        (b, cursor)
    })
}

/// Takes an insert's outcome: on success `next` moves past its batch; false when it failed.
fn acknowledged(r: Result<Insert, tokio::task::JoinError>, next: &mut Option<u64>) -> bool {
    match r {
        Ok((last, sent, Ok(new))) => {
            debug!(records = sent, new, up_to = last, "records shipped");
            if new < sent as u64 {
                info!(
                    sent,
                    new, "records the fleet database already had were skipped"
                );
            }
            *next = Some(last + 1);
            true
        }
        Ok((_, _, Err(e))) => {
            debug!(error = %e, "records not shipped: will resume from the database's first gap");
            false
        }
        Err(e) => {
            warn!(error = %e, "records shipping task failed");
            false
        }
    }
}

/// Where to resume shipping, given the database's last rows of this host (their sequence
/// numbers, highest first, at most [`RESUME_WINDOW`] of them): after the first one whose
/// successor is missing, counting from the lowest. Inserts commit out of order only
/// among the last [`IN_FLIGHT`] batches, so every row below the lowest given is there and a
/// gap among these is where a batch was lost. A record that was never shipped (not a
/// record's JSON) leaves a hole too: resuming there only sends again rows the database has,
/// which it skips.
pub fn resume_after(seqs_desc: &[u64]) -> u64 {
    let mut it = seqs_desc.iter().rev().peekable();
    while let Some(&s) = it.next() {
        match it.peek() {
            Some(&&n) if n == s + 1 => {}
            _ => return s + 1,
        }
    }
    0
}

/// An open segment and the sequence its next frame should have.
pub struct Cursor {
    seg: SegmentFile,
    reader: Reader,
    next: u64,
}
/// Up to [`BATCH`] records from sequence `from` on, reading on from `cursor` when it is
/// there already; leaves in `cursor` the segment to read on from (none once it was read to
/// its end: the next round opens it again, as the writer may have added to it).
pub fn read_batch(
    dir: &Path,
    from: u64,
    cursor: &mut Option<Cursor>,
) -> Result<Vec<ShippedRecord>, String> {
    if cursor.as_ref().is_some_and(|c| c.next != from) {
        *cursor = None;
    }
    let mut out = Vec::with_capacity(BATCH);
    let mut c = match cursor.take() {
        Some(c) => c,
        None => match open_at(dir, from, None)? {
            Some(c) => c,
            None => return Ok(out),
        },
    };
    loop {
        let frame = c
            .reader
            .next_frame()
            .map_err(|e| format!("{}: {e}", c.seg.name()))?;
        let Some(frame) = frame else {
            // This segment is read to its end: on to the next one if the writer has
            // started it, or else wait for the next round (which opens this one again).
            match open_at(dir, c.next, Some(c.seg.first_seq))? {
                Some(n) => {
                    c = n;
                    continue;
                }
                None => return Ok(out),
            }
        };
        if frame.seq < c.next {
            continue;
        }
        c.next = frame.seq + 1;
        // What `jsonb` may refuse (in an older callgate's record) is looked for in the JSON
        // the record's own fields make: for a payload keeping its answer beside, the head
        // before the answer (the answer reads back as a JSON value only when every reader
        // holds it, else as a string): not in a 16 KiB answer again.
        let fields = match frame.payload.strip_prefix(&[super::beside::MARK]) {
            Some(rest) => &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())],
            None => &frame.payload[..],
        };
        let held = super::valid::is_json(fields) && super::valid::escapes_decode(fields);
        // The row's JSON and, for a payload that keeps its answer beside its JSON, the
        // payload as its `leaf` (what the tree hashed).
        let (json, leaf) = match super::beside::json(&frame.payload) {
            Ok(std::borrow::Cow::Borrowed(_)) => (frame.payload, None),
            Ok(std::borrow::Cow::Owned(json)) => (json, Some(RawJson(frame.payload))),
            Err(e) => {
                warn!(seq = frame.seq, error = %e, "record not shipped: not a record's JSON");
                continue;
            }
        };
        // Written by an older callgate, a record may hold what jsonb refuses (`\u0000`, a
        // lone surrogate, `1e-20000`): its row holds it repaired (the leaf keeps the text as
        // it was hashed).
        let (json, leaf) = match (!held).then(|| for_jsonb(&json)).flatten() {
            Some(fixed) => (fixed, leaf.or(Some(RawJson(json)))),
            None => (json, leaf),
        };
        match time_of(&json) {
            Some(time_ms) => out.push(ShippedRecord {
                seq: frame.seq,
                hash: segment::hex(&frame.hash),
                time_ms,
                record: RawJson(json),
                leaf,
            }),
            None => warn!(seq = frame.seq, "record not shipped: not a record's JSON"),
        }
        if out.len() >= BATCH {
            *cursor = Some(c);
            return Ok(out);
        }
    }
}

/// The segment that holds sequence `from` (the last one starting at or before it, or the
/// first there is), opened; with `after`, only a segment that starts after that one.
fn open_at(dir: &Path, from: u64, after: Option<u64>) -> Result<Option<Cursor>, String> {
    let segs = segment::list(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let segs: Vec<SegmentFile> = segs
        .into_iter()
        .filter(|s| after.is_none_or(|a| s.first_seq > a))
        .collect();
    let pick = segs.iter().rposition(|s| s.first_seq <= from).unwrap_or(0);
    let Some(seg) = segs.into_iter().nth(pick) else {
        return Ok(None);
    };
    let reader = Reader::open(&seg).map_err(|e| format!("{}: {e}", seg.name()))?;
    Ok(Some(Cursor {
        seg,
        reader,
        next: from,
    }))
}

/// A record's JSON as a fleet database's `jsonb` can hold it, when it cannot as it is: each
/// escape `jsonb` refuses — a NUL (`\u0000`) or half of a surrogate pair without its other
/// half (`\ud800`) — as U+FFFD (`\ufffd`), and each number out of the range every reader
/// holds ([`super::valid::number`]: `1e400`, `1e-20000`) as a string of its text; every other
/// byte as it was. `None`: it can (every record this version writes). Written by an older
/// callgate, which kept a JSON answer's text as it came, a record may hold any of them, and
/// one row the database refused kept every later record of its host from being shipped.
pub fn for_jsonb(json: &[u8]) -> Option<Vec<u8>> {
    use super::valid;
    if valid::is_json(json) && valid::escapes_decode(json) {
        return None;
    }
    let hex = |at: usize| valid::code_unit(json, at);
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut changed = false;
    let mut at = 0;
    let mut inside = false;
    while at < json.len() {
        let (i, b) = if inside {
            match memchr::memchr2(b'\\', b'"', &json[at..]) {
                Some(off) => (at + off, json[at + off]),
                None => break,
            }
        } else {
            match json[at..]
                .iter()
                .position(|&b| matches!(b, b'"' | b'-' | b'0'..=b'9'))
            {
                Some(off) => (at + off, json[at + off]),
                None => break,
            }
        };
        out.extend_from_slice(&json[at..i]);
        at = i;
        match b {
            b'"' => {
                inside = !inside;
                out.push(b'"');
                at += 1;
            }
            b'\\' => {
                let code = (json.get(i + 1) == Some(&b'u'))
                    .then(|| hex(i + 2))
                    .flatten();
                let (keep, len) = match code {
                    // Another escape (`\\` included: what follows it is text), or not one.
                    None => (true, if i + 1 < json.len() { 2 } else { 1 }),
                    Some(0) => (false, 6),
                    Some(0xD800..=0xDBFF) => {
                        match hex(i + 8).filter(|_| json.get(i + 6..i + 8) == Some(br"\u")) {
                            Some(0xDC00..=0xDFFF) => (true, 12),
                            _ => (false, 6),
                        }
                    }
                    Some(0xDC00..=0xDFFF) => (false, 6),
                    Some(_) => (true, 6),
                };
                if keep {
                    out.extend_from_slice(&json[i..i + len]);
                } else {
                    out.extend_from_slice(br"\ufffd");
                    changed = true;
                }
                at = i + len;
            }
            _ => {
                // A number (outside strings): its whole run up to the next token.
                let end = json[i..]
                    .iter()
                    .position(|&b| valid::ends_scalar(b))
                    .map_or(json.len(), |n| i + n);
                let run = &json[i..end];
                if valid::number(json, i) == Some(end)
                    || !run.iter().all(|b| b"+-.eE0123456789".contains(b))
                {
                    out.extend_from_slice(run);
                } else {
                    out.push(b'"');
                    out.extend_from_slice(run);
                    out.push(b'"');
                    changed = true;
                }
                at = end;
            }
        }
    }
    out.extend_from_slice(&json[at..]);
    changed.then_some(out)
}

/// A record's `time_ms`, without building the record. The writer puts it second, after
/// the id (`{"id":"…","time_ms":N,`): read there without parsing the rest; any other shape
/// takes one serde pass.
fn time_of(payload: &[u8]) -> Option<u64> {
    time_after_id(payload).or_else(|| {
        #[derive(serde::Deserialize)]
        struct Time {
            #[serde(default)]
            time_ms: u64,
        }
        serde_json::from_slice::<Time>(payload)
            .ok()
            .map(|t| t.time_ms)
    })
}

/// `N` from a payload that starts `{"id":"<no quote nor backslash>","time_ms":N,` or
/// `…:N}`, where it is the top-level member; `None` for anything else.
fn time_after_id(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(br#"{"id":""#)?;
    let close = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[close] != b'"' {
        return None;
    }
    let rest = rest[close + 1..].strip_prefix(br#","time_ms":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || !matches!(rest.get(digits), Some(b',' | b'}')) {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_after_the_highest_when_there_is_no_gap() {
        assert_eq!(resume_after(&[]), 0);
        assert_eq!(resume_after(&[1]), 2);
        assert_eq!(resume_after(&[7, 6, 5]), 8);
    }

    /// Two batches in flight, the younger committed and the older lost with its
    /// connection: shipping resumes at the older, not after the younger.
    #[test]
    fn resumes_at_a_batch_lost_below_a_younger_one() {
        // 1..=10 in; 11..=20 lost; 21..=30 committed.
        let mut seqs: Vec<u64> = (1..=10).chain(21..=30).collect();
        seqs.reverse();
        assert_eq!(resume_after(&seqs), 11);
    }

    /// The window the database is asked for reaches below the lowest batch that can be
    /// missing: with `IN_FLIGHT` full batches out and only the youngest committed, the
    /// last row of those acknowledged before is still among the rows looked at.
    #[test]
    fn the_window_reaches_below_every_batch_in_flight() {
        let acked = 5 * BATCH as u64;
        let in_flight = IN_FLIGHT as u64 * BATCH as u64;
        // Worst case: every batch in flight but the oldest committed.
        let committed: Vec<u64> = (1..=acked)
            .chain(acked + BATCH as u64 + 1..=acked + in_flight)
            .rev()
            .take(RESUME_WINDOW)
            .collect();
        assert!(committed.contains(&acked));
        assert_eq!(resume_after(&committed), acked + 1);
    }

    #[test]
    fn a_hole_the_shipper_left_resumes_there_harmlessly() {
        // Sequence 4 was never shipped (not a record's JSON): resuming at 4 only sends
        // 5..=6 again, which the database skips.
        assert_eq!(resume_after(&[6, 5, 3, 2, 1]), 4);
    }

    #[test]
    fn hashes_go_as_lowercase_hex() {
        let mut h = [0u8; 32];
        h[0] = 0x0f;
        h[1] = 0xa0;
        h[31] = 0xff;
        let s = segment::hex(&h);
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("0fa000"));
        assert!(s.ends_with("00ff"));
    }

    #[test]
    fn time_is_read_after_the_id_or_else_parsed() {
        let fast =
            br#"{"id":"0190-ab","time_ms":1764763000123,"session":"s","args":{"time_ms":5}}"#;
        assert_eq!(time_after_id(fast), Some(1_764_763_000_123));
        assert_eq!(time_of(fast), Some(1_764_763_000_123));
        // Another order: the serde pass finds the top-level member.
        let other = br#"{"session":"s","args":{"time_ms":5},"time_ms":42,"id":"x"}"#;
        assert_eq!(time_after_id(other), None);
        assert_eq!(time_of(other), Some(42));
        // An escaped quote in the id, a fraction, a sign: not the fast path's.
        assert_eq!(time_after_id(br#"{"id":"a\"","time_ms":1}"#), None);
        assert_eq!(time_after_id(br#"{"id":"a","time_ms":1.5}"#), None);
        assert_eq!(time_after_id(br#"{"id":"a","time_ms":-1}"#), None);
        assert_eq!(
            time_after_id(br#"{"id":"a","time_ms":99999999999999999999}"#),
            None
        );
        assert_eq!(time_after_id(br#"{"id":"a","time_ms":7}"#), Some(7));
        assert_eq!(time_of(b"not json"), None);
    }

    /// What an older callgate may have written, and `jsonb` refuses: a NUL, and half of a
    /// surrogate pair alone. Repaired in the text (nothing else changes), as the row ships it.
    #[test]
    fn an_older_record_ships_as_jsonb_holds_it() {
        let older = br#"{"id":"r","args":{"k\u0000":"a\u0000b","n":1},"s":"\\u0000","t":"x\\"}"#;
        let fixed = for_jsonb(older).expect("a NUL to replace");
        let v: serde_json::Value = serde_json::from_slice(&fixed).expect("JSON");
        assert_eq!(v["args"]["k\u{fffd}"], "a\u{fffd}b");
        assert_eq!(v["s"], "\\u0000", "an escaped backslash is not a NUL");
        assert_eq!(v["t"], "x\\");
        assert!(for_jsonb(br#"{"id":"r","s":"\\u0001\u00e9\ud83d\ude00"}"#).is_none());

        // Lone halves, high or low, at the end, before another escape or a pair; a pair kept.
        let older = br#"{"a":"\ud800","b":"x\uDC00y","c":"\ud800\u0041","d":"\ud800\ud83d\ude00","e":"\ud800\""}"#;
        assert!(serde_json::from_slice::<serde_json::Value>(older).is_err());
        let fixed = for_jsonb(older).expect("lone surrogates to replace");
        assert_eq!(
            String::from_utf8_lossy(&fixed),
            r#"{"a":"\ufffd","b":"x\ufffdy","c":"\ufffd\u0041","d":"\ufffd\ud83d\ude00","e":"\ufffd\""}"#
        );
        assert!(super::super::valid::escapes_decode(&fixed));
        let v: serde_json::Value = serde_json::from_slice(&fixed).expect("JSON");
        assert_eq!(v["d"], "\u{fffd}\u{1f600}");
        // A number out of some reader's range (`1e400` past f64, `1e-20000` past jsonb's
        // scale), outside strings: a string of its text; one inside a string, or in range, as
        // it was.
        let older = br#"{"a":[1e400,-1e-20000,1e+16,0.5],"b":"1e400","c":{"1e400":2e308}}"#;
        let fixed = for_jsonb(older).expect("numbers to repair");
        assert_eq!(
            String::from_utf8_lossy(&fixed),
            r#"{"a":["1e400","-1e-20000",1e+16,0.5],"b":"1e400","c":{"1e400":"2e308"}}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&fixed).expect("JSON");
        assert_eq!(v["a"][0], "1e400");
        // Text that is not JSON at all is left as it is.
        assert!(for_jsonb(br"not \uzzzz json \").is_none());
    }

    /// The fast path agrees with the serde pass on what the writer writes.
    #[test]
    fn time_of_a_written_record() {
        let mut r = crate::record::Record::new("conn-1", "127.0.0.1:1");
        r.time_ms = 1_764_763_000_999;
        let payload = serde_json::to_vec(&r).unwrap_or_default();
        assert_eq!(time_after_id(&payload), Some(1_764_763_000_999));
    }
}
