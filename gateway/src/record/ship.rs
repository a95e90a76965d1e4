//! Shipping this host's records to the fleet database (`fleet:`), in the background: the
//! local log stays the primary copy and no call waits on the database. Every second, while
//! the database is reachable, the records written since the last batch are read back from
//! the log and sent in batches of [`BATCH`] (one multi-row insert each, idempotent by host
//! and sequence). The segment being read stays open from batch to batch (a [`Cursor`]);
//! it is opened again only once it has been read to its end (the writer's last group) or
//! after a failed batch, and frames before the wanted sequence are skipped unparsed. Each
//! record goes as the JSON text its frame holds. Where to resume is asked of the database after each (re)connection — the
//! highest sequence it has of this host — so a restart or an outage neither loses nor
//! doubles a record.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::segment::{self, Reader, SegmentFile};
use crate::fleet::{Fleet, RawJson, ShippedRecord};

/// Records per insert.
pub const BATCH: usize = 2000;
/// How often new records are looked for.
const EVERY: Duration = Duration::from_secs(1);

/// Ships the records in `dir` until `stop`.
pub fn start(fleet: Arc<Fleet>, dir: PathBuf, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The next sequence number to ship; unknown until the database has said.
        let mut next: Option<u64> = None;
        // The segment being read, positioned at `next` (dropped whenever `next` is unsure).
        let mut cursor: Option<Cursor> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            if !fleet.connected() {
                next = None;
                continue;
            }
            let from = match next {
                Some(n) => n,
                None => match fleet.shipped_up_to().await {
                    Ok(m) => {
                        let n = m.map_or(0, |s| s + 1);
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
            // Batches until the log has no more (bounded per round, so `stop` is heard).
            for _ in 0..100 {
                let Some(n) = next else { break };
                let dir = dir.clone();
                let mut cur = cursor.take();
                let read = tokio::task::spawn_blocking(move || {
                    let b = read_batch(&dir, n, &mut cur);
                    (b, cur)
                })
                .await;
                let batch = match read {
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
                match fleet.ship_records(&batch).await {
                    Ok(new) => {
                        debug!(records = batch.len(), new, up_to = last, "records shipped");
                        if new < batch.len() as u64 {
                            info!(
                                sent = batch.len(),
                                new, "records the fleet database already had were skipped"
                            );
                        }
                        next = Some(last + 1);
                    }
                    Err(e) => {
                        debug!(error = %e, "records not shipped: will resume from the database's last");
                        next = None;
                        cursor = None;
                        break;
                    }
                }
                if batch.len() < BATCH {
                    break;
                }
            }
        }
    })
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
        match time_of(&frame.payload) {
            Some(time_ms) => out.push(ShippedRecord {
                seq: frame.seq,
                hash: segment::hex(&frame.hash),
                time_ms,
                record: RawJson(frame.payload),
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

/// A record's `time_ms`, without building the record.
fn time_of(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Time {
        #[serde(default)]
        time_ms: u64,
    }
    serde_json::from_slice::<Time>(payload)
        .ok()
        .map(|t| t.time_ms)
}
