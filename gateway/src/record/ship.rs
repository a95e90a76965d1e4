//! Shipping this host's records to the fleet database (`fleet:`), in the background: the
//! local log stays the primary copy and no call waits on the database. Every second, while
//! the database is reachable, the records written since the last batch are read back from
//! the log and sent in batches of [`BATCH`] (one multi-row insert each, idempotent by host
//! and sequence). Where to resume is asked of the database after each (re)connection — the
//! highest sequence it has of this host — so a restart or an outage neither loses nor
//! doubles a record.
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

use super::query::{self, Filter};
use crate::fleet::{Fleet, ShippedRecord};

/// Records per insert.
pub const BATCH: usize = 2000;
/// How often new records are looked for.
const EVERY: Duration = Duration::from_secs(1);

/// Ships the records in `dir` until `stop`.
pub fn start(fleet: Arc<Fleet>, dir: PathBuf, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The next sequence number to ship; unknown until the database has said.
        let mut next: Option<u64> = None;
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
                let read = tokio::task::spawn_blocking(move || read_batch(&dir, n)).await;
                let batch = match read {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
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

/// Up to [`BATCH`] records from sequence `from` on.
fn read_batch(dir: &std::path::Path, from: u64) -> Result<Vec<ShippedRecord>, query::QueryError> {
    let filter = Filter {
        from_seq: Some(from),
        ..Filter::default()
    };
    let mut out = Vec::with_capacity(BATCH);
    query::scan(dir, &filter, &mut |s| {
        let time_ms = s.record.time_ms;
        match serde_json::to_value(&s.record) {
            Ok(record) => out.push(ShippedRecord {
                seq: s.seq,
                hash: s.hash,
                time_ms,
                record,
            }),
            Err(e) => warn!(seq = s.seq, error = %e, "record not shipped: not JSON"),
        }
        out.len() < BATCH
    })?;
    Ok(out)
}
