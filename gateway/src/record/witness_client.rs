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
//! Per witness, `witness-<sha256(url)[:8]>.json` in the records directory keeps the URL, the
//! size it cosigned with the tree's frontier there, and the cosigned checkpoint (the note
//! with the witness's signature lines added), which `callgate records checkpoint` prints.
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
    merkle::{self, Frontier, Tree},
    note::{self, Checkpoint},
    tree,
    witness::{self, AddCheckpoint},
};
use crate::util::{outbound::Outbound, time::now_ms};

/// The first retry's delay; doubled per failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
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

/// Starts one task per witness URL; they end when `stop` turns true.
pub fn start(
    recorder: &Recorder,
    urls: &[String],
    http: Outbound,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let dir = recorder.dir().to_path_buf();
    if let Ok(mut board) = recorder.shared.witnesses.lock() {
        *board = urls
            .iter()
            .map(|u| WitnessStatus {
                url: u.clone(),
                ..Default::default()
            })
            .collect();
    }
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let c = Client {
                index: i,
                url: url.clone(),
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
                        _ = stop.changed() => return,
                    }
                    signed.mark_unchanged();
                }
                None => {
                    tokio::select! {
                        r = signed.changed() => if r.is_err() { return },
                        _ = stop.changed() => return,
                    }
                }
            }
            if *stop.borrow() {
                return;
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
                    let lines = match witness::parse_cosignatures(&text) {
                        Ok(l) => l,
                        Err(e) => return Outcome::Failed(e.to_string()),
                    };
                    let stored = Stored {
                        url: self.url.clone(),
                        size: cp.size,
                        tree: to,
                        cosigned: witness::add_signatures(&note, &lines),
                        time_ms: now_ms(),
                    };
                    if let Err(e) = crate::util::fs::write_atomic_mode(
                        &state_path(&self.dir, &self.url),
                        &serde_json::to_vec(&stored).unwrap_or_default(),
                        0o600,
                    ) {
                        warn!(witness = %self.url, error = %e, "could not keep a cosigned checkpoint");
                    }
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
    /// `cp.size`, from the records written after `from` (read off the data path).
    async fn prove(
        &self,
        from: &Frontier,
        cp: &Checkpoint,
    ) -> Result<(Vec<merkle::Hash>, Frontier), String> {
        let dir = self.dir.clone();
        let from = from.clone();
        let (old, new, root) = (from.size(), cp.size, cp.root);
        tokio::task::spawn_blocking(move || {
            let mut t = Tree::from_frontier(&from);
            let mut f = from;
            tree::for_each_record(&dir, old + 1, &mut |fr| {
                if fr.seq > new {
                    return false;
                }
                let h = merkle::leaf_hash(&fr.payload);
                t.push(h);
                f.push(h);
                true
            })?;
            if t.size() != new {
                return Err(format!(
                    "the log holds {} records, its checkpoint says {new}",
                    t.size()
                ));
            }
            if t.root(new).map_err(|e| e.to_string())? != root {
                return Err("the log on disk does not match its own checkpoint".into());
            }
            let proof = t.consistency(old, new).map_err(|e| e.to_string())?;
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
