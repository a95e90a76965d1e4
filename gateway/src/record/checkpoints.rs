//! Signed checkpoints in the fleet database: this host's shipped there in the background
//! (beside its records, [`super::ship`]), and a host's shipped records checked against them
//! by someone who does not trust the database ([`Rebuild`], `records verify --fleet`).
//!
//! The writer keeps only its latest signed checkpoint (`records/checkpoint`). Every
//! [`EVERY`], a checkpoint larger than the largest the database has is taken and held until
//! the database has every record it covers (never a checkpoint ahead of its records), then
//! shipped with its witnesses' cosignatures if they have cosigned it; a cosigned copy that
//! comes later is added to the shipped row. Where to resume is asked of the database after
//! each (re)connection, as for the records.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info};

use super::{
    merkle::{Frontier, Hash},
    note,
    segment::{self, Chain},
    witness, witness_client,
};
use crate::fleet::{Fleet, FleetError, ShippedRow};

/// How often the latest checkpoint is looked at.
const EVERY: Duration = Duration::from_secs(2);

/// A checkpoint read from the records directory, waiting to be shipped.
#[derive(Debug, Clone)]
pub struct Latest {
    pub size: u64,
    /// The root, base64.
    pub root: String,
    pub note: String,
    /// The note with every witness cosignature of it, if a witness cosigned it.
    pub cosigned: Option<String>,
}

/// Ships this host's signed checkpoints in `dir` until `stop`, then one round more (the
/// stop's own signature, once the records it covers are shipped).
pub fn start(fleet: Arc<Fleet>, dir: PathBuf, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The largest checkpoint the database has of this host, and whether cosigned; unknown
        // until it has said.
        let mut shipped: Option<(u64, bool)> = None;
        let mut held: Option<Latest> = None;
        let mut last_round = false;
        loop {
            if last_round {
                return;
            }
            tokio::select! {
                _ = stop.changed() => last_round = true,
                _ = tokio::time::sleep(EVERY) => {}
            }
            if !fleet.connected() {
                shipped = None;
                continue;
            }
            if let Err(e) = round(&fleet, &dir, &mut shipped, &mut held).await {
                debug!(error = %e, "checkpoint not shipped: will resume from the database's last");
                shipped = None;
            }
        }
    })
}

/// One round: take a newer checkpoint if none is held, ship the held one once its records
/// are in.
async fn round(
    fleet: &Fleet,
    dir: &Path,
    shipped: &mut Option<(u64, bool)>,
    held: &mut Option<Latest>,
) -> Result<(), FleetError> {
    let (size, cosigned) = match *shipped {
        Some(s) => s,
        None => {
            let s = fleet.shipped_checkpoint().await?.unwrap_or((0, false));
            *shipped = Some(s);
            s
        }
    };
    if held.is_none() {
        let dir = dir.to_path_buf();
        let latest = tokio::task::spawn_blocking(move || latest(&dir))
            .await
            .ok()
            .flatten();
        *held = latest
            .filter(|l| l.size > size || (l.size == size && !cosigned && l.cosigned.is_some()));
    }
    let Some(l) = held.as_ref() else {
        return Ok(());
    };
    // Every record up to here is in the database. Inserts may commit out of order (two in
    // flight), so the highest sequence alone could stand above a gap still being filled:
    // once it has reached the checkpoint (one index lookup a round), the last rows are read
    // to find the first gap (once per checkpoint, not every round).
    let mut records = fleet.shipped_up_to().await?.unwrap_or(0);
    if records >= l.size {
        let last = fleet.shipped_last(super::ship::RESUME_WINDOW).await?;
        records = super::ship::resume_after(&last).saturating_sub(1);
    }
    if records < l.size {
        debug!(
            size = l.size,
            records, "checkpoint held until the records it covers are shipped"
        );
        return Ok(());
    }
    fleet
        .ship_checkpoint(l.size, &l.root, &l.note, l.cosigned.as_deref())
        .await?;
    info!(
        size = l.size,
        cosigned = l.cosigned.is_some(),
        "signed checkpoint shipped to the fleet database"
    );
    *shipped = Some((l.size, l.cosigned.is_some()));
    *held = None;
    Ok(())
}

/// The latest signed checkpoint in the records directory `dir`, with the cosignatures of
/// the witnesses that cosigned that same checkpoint (`None`: none written yet).
pub fn latest(dir: &Path) -> Option<Latest> {
    let note = std::fs::read_to_string(dir.join(note::CHECKPOINT_FILE)).ok()?;
    let body = |n: &str| n.split_once("\n\n").map(|(b, _)| b.to_string());
    let cp = note::Checkpoint::parse(&body(&note)?).ok()?;
    let mut lines = Vec::new();
    for w in witness_client::stored(dir) {
        if body(&w.cosigned) == body(&note)
            && let Some((_, sigs)) = w.cosigned.split_once("\n\n")
        {
            lines.extend(sigs.lines().map(str::to_string));
        }
    }
    let cosigned = (!lines.is_empty()).then(|| witness::add_signatures(&note, &lines));
    Some(Latest {
        size: cp.size,
        root: base64::engine::general_purpose::STANDARD.encode(cp.root),
        note,
        cosigned,
    })
}

/// A host's Merkle tree rebuilt from its shipped records, one row at a time in sequence
/// order (a frontier: memory grows with the log's height, not its length). Each row's text
/// is checked against the JSON queries read and against its chain hash, so that an altered,
/// deleted or inserted record is named by its sequence; the root is then checked against a
/// checkpoint the host signed, which no one without its key can make agree with a rewritten
/// log.
pub struct Rebuild {
    tree: Frontier,
    prev: Hash,
    next: u64,
    /// How the rows so far were chained: over their leaf hashes from the first such row on,
    /// since a host's log goes from the older chain to that one once.
    chain: Chain,
}

impl Default for Rebuild {
    fn default() -> Self {
        Self::new()
    }
}

impl Rebuild {
    pub fn new() -> Self {
        Self {
            tree: Frontier::new(),
            prev: [0; 32],
            next: 1,
            chain: Chain::Payload,
        }
    }

    /// Records taken so far.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Takes the next row; an error names the first bad sequence.
    pub fn push(&mut self, row: &ShippedRow) -> Result<(), String> {
        let seq = row.seq;
        if seq != self.next {
            return Err(if self.next == 1 {
                format!(
                    "the fleet database has this host's records from seq {seq} on: records 1–{} are missing (deleted, or never shipped)",
                    seq - 1
                )
            } else {
                format!(
                    "record seq {} is missing from the fleet database (deleted): the next record there is seq {seq}",
                    self.next
                )
            });
        }
        let Some(leaf) = &row.leaf else {
            return Err(format!(
                "record seq {seq} was shipped without the text its host hashed (by a callgate older than schema 5): it cannot be checked"
            ));
        };
        let same = super::beside::json(leaf.as_bytes())
            .ok()
            .and_then(|json| {
                // As shipped: what `jsonb` refuses (in an older callgate's record) as U+FFFD.
                let fixed = super::ship::for_jsonb(&json);
                serde_json::from_slice::<serde_json::Value>(fixed.as_deref().unwrap_or(&json)).ok()
            })
            .is_some_and(|v| same_value(&v, &row.record));
        if !same {
            return Err(format!(
                "record seq {seq} was altered in the fleet database: its JSON is not the text its host hashed"
            ));
        }
        // Chained as this version chains, or (written into a segment an older version
        // began) as an older one did: the row does not say which, so any kind makes its hash,
        // but never an older after a newer.
        let text = leaf.as_bytes();
        let (chain, leaf_hash, hash) = [Chain::Digest, Chain::Leaf, Chain::Payload]
            .into_iter()
            .filter(|&c| c >= self.chain)
            .map(|c| {
                let leaf_hash = c.leaf(text);
                (c, leaf_hash, c.hash_with_leaf(&self.prev, seq, text, &leaf_hash))
            })
            .find(|(_, _, h)| segment::hex(h) == row.hash)
            .ok_or_else(|| {
                format!(
                    "record seq {seq} was altered in the fleet database: its text does not make its chain hash"
                )
            })?;
        self.chain = chain;
        self.prev = hash;
        self.tree.push(leaf_hash);
        self.next = seq + 1;
        Ok(())
    }

    /// After every row up to the checkpoint's size: does the rebuilt tree have the root the
    /// checkpoint signed?
    pub fn finish(&self, cp: &note::Checkpoint) -> Result<(), String> {
        if self.tree.size() < cp.size {
            return Err(format!(
                "records {}–{} are missing from the fleet database (deleted): the checkpoint signed {} records",
                self.next, cp.size, cp.size
            ));
        }
        if self.tree.root() != cp.root {
            return Err(format!(
                "the fleet database's records 1–{} do not make the root the checkpoint signed: records were altered, inserted or replaced there, with their chain hashes rewritten",
                cp.size
            ));
        }
        Ok(())
    }
}

/// Whether a record as its host wrote it (`host`) and as a fleet database's `jsonb` gives it
/// back (`db`) are the same value. `jsonb` keeps a number's value, not its text: `1e+16` (as
/// Python writes a float that large) comes back as `10000000000000000`, which `serde_json` reads
/// as an integer where it read the host's text as a float. So a host's float is the same as
/// the database's integer that it is exactly (1e16 is not 10000000000000001, though they are
/// the same f64); a host's integer is the same only as an equal integer (`jsonb` never writes
/// an integer with a point: `1234.0000000000000001` in its place is an alteration, though it
/// reads as the f64 1234); two floats are the same as `f64` (what every reader of a record
/// gets from either: an alteration below f64's precision between two floats passes, and an
/// integer beyond 64 bits is a float to `serde_json`, so one altered in its last digits does).
fn same_value(host: &serde_json::Value, db: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (host, db) {
        (Value::Number(x), Value::Number(y)) => {
            let exactly =
                |i: i128, f: f64| f.fract() == 0.0 && f.abs() < 2f64.powi(127) && f as i128 == i;
            match (x.as_i128(), y.as_i128(), x.as_f64(), y.as_f64()) {
                (Some(x), Some(y), _, _) => x == y,
                (None, Some(i), Some(f), _) => exactly(i, f),
                (None, None, Some(x), Some(y)) => x == y,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => host == db,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `jsonb` gives back for a number is its value: the same record whatever text it
    /// came as; another value is another record.
    #[test]
    fn a_record_is_the_same_value_as_jsonb_gives_it_back() {
        let v = |t: &str| serde_json::from_str::<serde_json::Value>(t).expect(t);
        let same = |a: &str, b: &str| same_value(&v(a), &v(b));
        // As written (Python's `json.dumps(1e16)`, ryu's `1e16`), as PostgreSQL returns it.
        assert!(same(
            r#"{"n":1e+16,"m":[1E2,-0,0.1e1,2.50]}"#,
            r#"{"m":[100,0,1,2.5],"n":10000000000000000}"#
        ));
        assert!(same("1.8446744073709551616e19", "18446744073709551616"));
        assert!(same("-9.223372036854775808e18", "-9223372036854775808"));
        // A host's integer as a float, however close: jsonb never writes one so.
        assert!(!same("1234", "1234.0000000000000001"));
        assert!(!same(r#"{"n":2}"#, r#"{"n":2.0}"#));
        assert!(!same(r#"{"n":1e+16}"#, r#"{"n":10000000000000001}"#));
        assert!(!same("[1,2]", "[2,1]"));
        assert!(!same(r#"{"a":1}"#, r#"{"a":1,"b":2}"#));
        assert!(!same(r#"{"a":"1"}"#, r#"{"a":1}"#));
        assert!(!same("9007199254740993", "9007199254740992"));
    }

    /// `texts` as shipped rows, chained as this version writes them.
    fn rows(texts: &[&str]) -> Vec<ShippedRow> {
        rows_chained(texts, |_| Chain::NEWEST)
    }

    /// `texts` as shipped rows, the one at index `i` chained as `chain(i)` says.
    fn rows_chained(texts: &[&str], chain: impl Fn(usize) -> Chain) -> Vec<ShippedRow> {
        let mut prev = [0; 32];
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let seq = i as u64 + 1;
                prev = chain(i).hash(&prev, seq, t.as_bytes());
                ShippedRow {
                    seq,
                    hash: segment::hex(&prev),
                    leaf: Some(t.to_string()),
                    record: serde_json::from_str(t).unwrap(),
                }
            })
            .collect()
    }

    fn checkpoint(texts: &[&str]) -> note::Checkpoint {
        checkpoint_chained(texts, |_| Chain::NEWEST)
    }

    /// The checkpoint of `texts`, the one at index `i` in a segment of kind `chain(i)`.
    fn checkpoint_chained(texts: &[&str], chain: impl Fn(usize) -> Chain) -> note::Checkpoint {
        let mut f = Frontier::new();
        for (i, t) in texts.iter().enumerate() {
            f.push(chain(i).leaf(t.as_bytes()));
        }
        note::Checkpoint {
            origin: "test/callgate/records".into(),
            size: f.size(),
            root: f.root(),
        }
    }

    const TEXTS: &[&str] = &[
        r#"{"id":"a","time_ms":1,"response":{"z":1, "a":[2]}}"#,
        r#"{"id":"b","time_ms":2}"#,
        r#"{"id":"c","time_ms":3}"#,
    ];

    fn rebuild(rows: &[ShippedRow]) -> Result<Rebuild, String> {
        let mut r = Rebuild::new();
        for row in rows {
            r.push(row)?;
        }
        Ok(r)
    }

    #[test]
    fn the_latest_checkpoint_is_read_with_its_witnesses_cosignatures() {
        let dir = std::env::temp_dir().join(format!("callgate-cps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(latest(&dir).is_none());
        let signer = note::Signer::generate("test/callgate/records").unwrap();
        let cp = checkpoint(TEXTS);
        let signed = signer.sign(&cp.text());
        std::fs::write(dir.join(note::CHECKPOINT_FILE), &signed).unwrap();
        let l = latest(&dir).unwrap();
        assert_eq!(
            (l.size, l.note.as_str(), l.cosigned),
            (3, signed.as_str(), None)
        );
        assert_eq!(
            l.root,
            base64::engine::general_purpose::STANDARD.encode(cp.root)
        );
        // A witness cosigned this same checkpoint: its line is added; one of another is not.
        let w = witness::Cosigner::generate("witness.example").unwrap();
        let line = |text: &str| {
            let c = w.cosign(text, 7);
            c.trim_end().to_string()
        };
        let mine = line(&cp.text());
        let other = line(&checkpoint(&TEXTS[..2]).text());
        for (name, text, l) in [
            ("a", &signed, &mine),
            ("b", &signer.sign(&checkpoint(&TEXTS[..2]).text()), &other),
        ] {
            let stored = witness_client::Stored {
                url: format!("https://{name}.example"),
                size: 3,
                cosigned: format!("{text}{l}\n"),
                ..Default::default()
            };
            std::fs::write(
                dir.join(format!("witness-{name}.json")),
                serde_json::to_vec(&stored).unwrap(),
            )
            .unwrap();
        }
        let l = latest(&dir).unwrap();
        assert_eq!(l.cosigned, Some(format!("{signed}{mine}\n")));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_shipped_records_make_the_signed_root() {
        let r = rebuild(&rows(TEXTS)).unwrap();
        r.finish(&checkpoint(TEXTS)).unwrap();
        // A checkpoint of fewer records than shipped is checked on those only by the caller
        // (it reads up to its size); a larger one says which are missing.
        let mut more = TEXTS.to_vec();
        more.push(r#"{"id":"d"}"#);
        let e = r.finish(&checkpoint(&more)).unwrap_err();
        assert!(e.contains("records 4–4 are missing"), "{e}");
    }

    /// Records an older version chained over their text, in the segment it began, and the
    /// ones after them chained over their leaf hash: the rows do not say which, both verify.
    #[test]
    fn records_chained_by_an_older_version_verify_too() {
        let older = |i: usize| if i < 2 { Chain::Payload } else { Chain::Leaf };
        for rs in [
            rows_chained(TEXTS, |_| Chain::Payload),
            rows_chained(TEXTS, older),
        ] {
            let r = rebuild(&rs).unwrap();
            r.finish(&checkpoint(TEXTS)).unwrap();
        }
        // Never the older chain after the newer one.
        let rs = rows_chained(TEXTS, |i| if i == 1 { Chain::Leaf } else { Chain::Payload });
        let e = rebuild(&rs).err().unwrap();
        assert!(e.contains("record seq 3 was altered"), "{e}");
        // Either way, a changed text is still named.
        let mut rs = rows_chained(TEXTS, older);
        rs[0].leaf = Some(r#"{"id":"A","time_ms":1}"#.into());
        rs[0].record = serde_json::json!({"id": "A", "time_ms": 1});
        let e = rebuild(&rs).err().unwrap();
        assert!(e.contains("record seq 1 was altered"), "{e}");
    }

    /// A record of more than 4 KiB is a leaf over its digest in the segments this version
    /// writes and over its text in older ones: each row finds its kind by its chain hash, and
    /// the tree gets that kind's leaf.
    #[test]
    fn large_records_of_each_kind_make_the_signed_root() {
        let large = format!(r#"{{"id":"L","response":"{}"}}"#, "x".repeat(6000));
        let texts = [TEXTS[0], large.as_str(), TEXTS[1], large.as_str(), TEXTS[2]];
        let kind = |i: usize| if i < 2 { Chain::Leaf } else { Chain::Digest };
        assert_ne!(
            Chain::Leaf.leaf(large.as_bytes()),
            Chain::Digest.leaf(large.as_bytes())
        );
        let r = rebuild(&rows_chained(&texts, kind)).unwrap();
        r.finish(&checkpoint_chained(&texts, kind)).unwrap();
        // The signed tree had the other kind's leaf for a record: not this log.
        let e = r
            .finish(&checkpoint_chained(&texts, |_| Chain::Leaf))
            .unwrap_err();
        assert!(e.contains("do not make the root"), "{e}");
        // Never the older kind after the newer one.
        let back = |i: usize| if i < 2 { Chain::Digest } else { Chain::Leaf };
        let e = rebuild(&rows_chained(&texts, back)).err().unwrap();
        assert!(e.contains("record seq 3 was altered"), "{e}");
    }

    #[test]
    fn an_altered_deleted_or_rewritten_record_is_named() {
        let mut rs = rows(TEXTS);
        rs[1].record = serde_json::json!({"id": "b", "time_ms": 99});
        let e = rebuild(&rs).err().unwrap();
        assert!(e.contains("record seq 2 was altered"), "{e}");

        let mut rs = rows(TEXTS);
        rs.remove(1);
        let e = rebuild(&rs).err().unwrap();
        assert!(e.contains("record seq 2 is missing"), "{e}");

        let mut rs = rows(TEXTS);
        rs[2].leaf = Some(r#"{"id":"X","time_ms":3}"#.into());
        rs[2].record = serde_json::json!({"id": "X", "time_ms": 3});
        let e = rebuild(&rs).err().unwrap();
        assert!(e.contains("record seq 3 was altered"), "{e}");

        // Text, JSON and chain all rewritten: only the signed root tells.
        let forged = [TEXTS[0], r#"{"id":"B","time_ms":2}"#, TEXTS[2]];
        let r = rebuild(&rows(&forged)).unwrap();
        let e = r.finish(&checkpoint(TEXTS)).unwrap_err();
        assert!(e.contains("do not make the root"), "{e}");
    }
}
