//! `callgate records checkpoint | key | prove | verify --checkpoint | export --with-proofs |
//! verify-export`: the signed checkpoints of the records' Merkle tree, and the proofs that let
//! an auditor check the log, or an exported slice of it, without trusting the host.
use std::{io::Write, path::Path};

use anyhow::{Context, Result, bail};
use base64::Engine;
use callgate::record::{
    Record,
    merkle::Hash,
    note::{self, Checkpoint, Verifier},
    query::Filter,
    segment,
    tree::{self, Inclusion},
    witness, witness_client,
};
use callgate::{fleet::FleetReader, util::visible::visible};
use serde::{Deserialize, Serialize};

/// `--key`: a verifier key (`<name>+<id>+<key>`) or a file holding one. Without it, the key
/// the daemon wrote beside the log is used, which trusts the host being checked.
pub fn verifier(dir: &Path, key: Option<&str>) -> Result<(Verifier, bool)> {
    match key {
        Some(k) => {
            let text = if Path::new(k).is_file() {
                std::fs::read_to_string(k).with_context(|| format!("reading {k}"))?
            } else {
                k.to_string()
            };
            Ok((Verifier::parse(&text).context("--key")?, false))
        }
        None => Ok((tree::host_key(dir).map_err(anyhow::Error::msg)?, true)),
    }
}

/// Reads and opens a signed checkpoint: `None` for the latest one in `dir`.
pub fn open_checkpoint(
    dir: &Path,
    file: Option<&Path>,
    key: &Verifier,
) -> Result<(Checkpoint, String)> {
    let path = file.map_or_else(|| dir.join(note::CHECKPOINT_FILE), Path::to_path_buf);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the checkpoint {}", path.display()))?;
    let cp = Checkpoint::open(&text, key)
        .with_context(|| format!("refusing the checkpoint {}", path.display()))?;
    Ok((cp, text))
}

/// `records checkpoint`: the latest signed checkpoint, as written, with the cosignatures of
/// the witnesses that cosigned it; `cosigned`: the latest one a witness cosigned instead.
pub fn print_checkpoint(dir: &Path, cosigned: bool) -> Result<()> {
    let path = dir.join(note::CHECKPOINT_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no signed checkpoint at {} (has the daemon recorded a call yet?)",
            path.display()
        )
    })?;
    let witnessed = witness_client::stored(dir);
    let body = |note: &str| note.split("\n\n").next().unwrap_or_default().to_string();
    let text = if cosigned {
        let Some(newest) = witnessed
            .iter()
            .filter(|w| !w.cosigned.is_empty())
            .max_by_key(|w| w.size)
        else {
            bail!("no witness has cosigned a checkpoint of this log yet");
        };
        newest.cosigned.clone()
    } else {
        text
    };
    // Every witness's cosignature of this same checkpoint.
    let mut lines = Vec::new();
    for w in witnessed
        .iter()
        .filter(|w| body(&w.cosigned) == body(&text))
    {
        let (_, sigs) = w.cosigned.split_once("\n\n").unwrap_or_default();
        lines.extend(sigs.lines().map(str::to_string));
    }
    print!("{}", witness::add_signatures(&text, &lines));
    Ok(())
}

/// `records key`: the verifier key.
pub fn print_key(dir: &Path) -> Result<()> {
    let v = tree::host_key(dir).map_err(anyhow::Error::msg)?;
    println!("{}", v.encode());
    Ok(())
}

/// `records verify --checkpoint`: the log contains the tree the checkpoint signed. Prints
/// what it found; false if it does not.
pub fn verify(
    dir: &Path,
    file: &Path,
    key: Option<&str>,
    witnesses: &Witnesses,
    out: &mut dyn Write,
) -> Result<bool> {
    let (v, from_host) = verifier(dir, key)?;
    if from_host {
        writeln!(
            out,
            "note: using the verifier key stored on this host ({}); pass --key to check without trusting it",
            v.encode()
        )?;
    }
    let (cp, text) = open_checkpoint(dir, Some(file), &v)?;
    let cosigned = verify_cosignatures(&text, witnesses, out)?;
    let c = tree::check(dir, &cp).map_err(anyhow::Error::msg)?;
    for p in &c.problems {
        writeln!(out, "BROKEN: {p}")?;
    }
    if c.problems.is_empty() {
        writeln!(
            out,
            "checkpoint {} of {} records (signed by {}): contained in the log of {} records (consistency proof of {} hashes verified)",
            cp.origin,
            cp.size,
            v.name(),
            c.log_size,
            c.consistency.len()
        )?;
    }
    Ok(c.problems.is_empty() && cosigned)
}

/// `--witness-key KEY... [--quorum N]`: the witnesses whose cosignatures a checkpoint must
/// carry.
pub struct Witnesses {
    pub keys: Vec<String>,
    /// Default: every key.
    pub quorum: Option<usize>,
}

/// The cosignatures (tlog-cosignature v1) of the signed checkpoint `note` by the witnesses'
/// keys: each is named valid, missing or bad. False if one is bad (forged or altered) or
/// fewer than the quorum are valid.
pub fn verify_cosignatures(note: &str, w: &Witnesses, out: &mut dyn Write) -> Result<bool> {
    if w.keys.is_empty() {
        if w.quorum.is_some_and(|q| q > 0) {
            bail!("--quorum needs --witness-key");
        }
        return Ok(true);
    }
    let mut keys = Vec::new();
    for k in &w.keys {
        let text = if Path::new(k).is_file() {
            std::fs::read_to_string(k).with_context(|| format!("reading {k}"))?
        } else {
            k.clone()
        };
        keys.push(
            witness::CosignatureVerifier::parse(&text)
                .with_context(|| format!("--witness-key {k}"))?,
        );
    }
    let quorum = w.quorum.unwrap_or(keys.len());
    if quorum > keys.len() {
        bail!(
            "--quorum {quorum} is more than the {} witness key(s) given",
            keys.len()
        );
    }
    let (body, sigs) = note
        .split_once("\n\n")
        .context("the checkpoint has no signature lines")?;
    let text = format!("{body}\n");
    let lines: Vec<String> = sigs.lines().map(str::to_string).collect();
    let (mut valid, mut bad, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for k in &keys {
        match k.check(&text, &lines) {
            witness::Cosigned::Valid(ts) => {
                writeln!(
                    out,
                    "witness {}: cosigned (at {ts}, Unix seconds)",
                    k.name()
                )?;
                valid.push(k.name().to_string());
            }
            witness::Cosigned::Bad => bad.push(k.name().to_string()),
            witness::Cosigned::Missing => missing.push(k.name().to_string()),
        }
    }
    for name in &bad {
        writeln!(
            out,
            "BROKEN: witness {name}: its cosignature does not verify with its key (forged, altered, or of another checkpoint)"
        )?;
    }
    let met = valid.len() >= quorum;
    for name in &missing {
        writeln!(
            out,
            "{}witness {name}: no cosignature of this checkpoint",
            if met { "note: " } else { "BROKEN: " }
        )?;
    }
    writeln!(
        out,
        "cosignatures: {} of {} witness(es) valid, quorum {quorum} {}",
        valid.len(),
        keys.len(),
        if met { "met" } else { "NOT met" }
    )?;
    Ok(met && bad.is_empty())
}

/// An exported line with its proof.
#[derive(Serialize, Deserialize)]
struct ProvedLine {
    seq: u64,
    hash: String,
    #[serde(flatten)]
    record: serde_json::Value,
    proof: Inclusion,
}

/// `records prove ID`: the inclusion proof of one record in a checkpoint's tree.
pub fn prove(
    dir: &Path,
    id: &str,
    file: Option<&Path>,
    key: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let (v, _) = verifier(dir, key)?;
    let (cp, text) = open_checkpoint(dir, file, &v)?;
    let tree = tree::load(dir).map_err(anyhow::Error::msg)?;
    let mut found = None;
    tree::for_each_record(dir, 1, &mut |f| {
        let hit = callgate::record::beside::json(&f.payload)
            .ok()
            .and_then(|json| serde_json::from_slice::<IdOnly>(&json).ok())
            .is_some_and(|r| r.id == id);
        if hit {
            found = Some((f.seq, f.payload.clone(), f.leaf()));
        }
        !hit
    })
    .map_err(anyhow::Error::msg)?;
    let (seq, payload, leaf) = found.with_context(|| format!("no record with id {id}"))?;
    if seq > cp.size {
        bail!(
            "record {id} (seq {seq}) was written after the checkpoint ({} records): prove it against a later one",
            cp.size
        );
    }
    let mut p = Inclusion::make(&tree, seq, cp.size, &leaf)?;
    p.leaf = Some(String::from_utf8_lossy(&payload).into_owned());
    p.verify(&payload, &cp.root).map_err(anyhow::Error::msg)?;
    #[derive(Serialize)]
    struct Proof<'a> {
        id: &'a str,
        origin: &'a str,
        root: String,
        #[serde(flatten)]
        proof: &'a Inclusion,
        checkpoint: &'a str,
    }
    let doc = Proof {
        id,
        origin: &cp.origin,
        root: base64::engine::general_purpose::STANDARD.encode(cp.root),
        proof: &p,
        checkpoint: &text,
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// `records export --with-proofs`: each matching record of the checkpoint's tree with its
/// inclusion proof and its stored text (what the leaf hash is over).
pub fn export(
    dir: &Path,
    filter: &Filter,
    file: Option<&Path>,
    key: Option<&str>,
    out: &mut dyn Write,
) -> Result<()> {
    let (v, _) = verifier(dir, key)?;
    let (cp, _) = open_checkpoint(dir, file, &v)?;
    let tree = tree::load(dir).map_err(anyhow::Error::msg)?;
    let mut err = None;
    tree::for_each_record(dir, filter.from_seq.unwrap_or(1), &mut |f| {
        if f.seq > cp.size {
            return false;
        }
        let line = (|| -> Result<Option<String>> {
            let record: Record =
                serde_json::from_slice(&callgate::record::beside::json(&f.payload)?)?;
            if !filter.matches(f.seq, &record) {
                return Ok(None);
            }
            let mut proof = Inclusion::make(&tree, f.seq, cp.size, &f.leaf())?;
            proof.leaf = Some(String::from_utf8_lossy(&f.payload).into_owned());
            let line = ProvedLine {
                seq: f.seq,
                hash: segment::hex(&f.hash),
                record: serde_json::to_value(&record)?,
                proof,
            };
            Ok(Some(crate::cli::records::one_line(serde_json::to_string(
                &line,
            )?)))
        })();
        match line.and_then(|l| {
            if let Some(l) = l {
                writeln!(out, "{l}")?;
            }
            Ok(())
        }) {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })
    .map_err(anyhow::Error::msg)?;
    if let Some(e) = err {
        return Err(e);
    }
    Ok(())
}

/// `records verify-export`: every line of an export made with `--with-proofs` is a record of
/// the checkpoint's tree, and says what that record says. Needs neither the log nor the host.
pub fn verify_export(
    export: &Path,
    checkpoint: &Path,
    key: &str,
    out: &mut dyn Write,
) -> Result<bool> {
    let (v, _) = verifier(Path::new("."), Some(key))?;
    let (cp, _) = open_checkpoint(Path::new("."), Some(checkpoint), &v)?;
    let text =
        std::fs::read_to_string(export).with_context(|| format!("reading {}", export.display()))?;
    let mut ok = 0u64;
    let mut bad = 0u64;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match check_line(line, &cp.size, &cp.root) {
            Ok(()) => ok += 1,
            Err(e) => {
                bad += 1;
                writeln!(out, "BROKEN: line {}: {e}", i + 1)?;
            }
        }
    }
    writeln!(
        out,
        "{}: {ok} record(s) proved in checkpoint {} of {} records{}",
        if bad == 0 && ok > 0 {
            "verified"
        } else {
            "FAILED"
        },
        cp.origin,
        cp.size,
        if bad > 0 {
            format!(", {bad} not")
        } else {
            String::new()
        }
    )?;
    Ok(bad == 0 && ok > 0)
}

fn check_line(line: &str, size: &u64, root: &Hash) -> Result<()> {
    let l: ProvedLine =
        serde_json::from_str(line).context("not an exported record with a proof")?;
    let leaf = l
        .proof
        .leaf
        .as_deref()
        .context("the proof does not carry the record's stored text")?;
    if l.proof.seq != l.seq {
        bail!(
            "the proof is for seq {}, the line says {}",
            l.proof.seq,
            l.seq
        );
    }
    if l.proof.tree_size != *size {
        bail!(
            "the proof is for a tree of {} records, the checkpoint has {size}",
            l.proof.tree_size
        );
    }
    l.proof
        .verify(leaf.as_bytes(), root)
        .map_err(|e| anyhow::anyhow!("seq {}: {e}", l.seq))?;
    // What the line shows must be what was proved.
    let stored: Record = serde_json::from_slice(&callgate::record::beside::json(leaf.as_bytes())?)?;
    if serde_json::to_value(&stored)? != l.record {
        bail!(
            "seq {}: the record's fields differ from the text its proof is for (altered export)",
            l.seq
        );
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `records checkpoints --fleet`: the signed checkpoints the hosts shipped, largest first
/// per host.
pub fn list_fleet(
    config: &Path,
    host: Option<&str>,
    limit: usize,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let f = crate::cli::records::fleet_config(config)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = runtime()?.block_on(async {
        let db = FleetReader::connect(&f.database, f.ca.as_deref()).await?;
        db.checkpoints(host, limit, false).await
    })?;
    if json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:>10} {:<46} {:<24} COSIGNED",
        "HOST", "SIZE", "ROOT", "SHIPPED"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<16} {:>10} {:<46} {:<24} {}",
            visible(&r.host),
            r.size,
            visible(&r.root),
            crate::cli::records::format_time(u64::try_from(r.shipped_ms).unwrap_or(0)),
            if r.cosigned.is_some() { "yes" } else { "-" }
        )?;
    }
    Ok(())
}

/// How often `records verify --fleet` says how far it got (on stderr).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// `records verify --fleet --host H --key KEY`: the latest checkpoint `host` shipped must be
/// signed by `key`, and the host's shipped records, streamed in sequence order, must make its
/// root. Prints what it found; false if the check failed.
pub fn verify_fleet(
    config: &Path,
    host: &str,
    key: &str,
    witnesses: &Witnesses,
    out: &mut dyn Write,
) -> Result<bool> {
    let f = crate::cli::records::fleet_config(config)?;
    let (key, _) = verifier(Path::new(""), Some(key))?;
    let rt = runtime()?;
    let db = rt.block_on(FleetReader::connect(&f.database, f.ca.as_deref()))?;
    // With witnesses to check, the largest checkpoint they cosigned (a witness cosigns
    // after the host signs, so the very latest may not carry it yet).
    let cosigned_only = !witnesses.keys.is_empty();
    let Some(row) = rt
        .block_on(db.checkpoints(Some(host), 1, cosigned_only))?
        .into_iter()
        .next()
    else {
        if cosigned_only {
            writeln!(
                out,
                "FAILED: host {}: no checkpoint in the fleet database carries a witness cosignature",
                visible(host)
            )?;
            return Ok(false);
        }
        bail!(
            "the fleet database has no signed checkpoint of host {host:?} (has it shipped records since checkpoints are shipped?)"
        );
    };
    let fail = |out: &mut dyn Write, why: String| -> Result<bool> {
        writeln!(out, "FAILED: host {}: {}", visible(host), visible(&why))?;
        Ok(false)
    };
    let cp = match Checkpoint::open(&row.note, &key) {
        Ok(cp) => cp,
        Err(e) => {
            return fail(
                out,
                format!(
                    "the latest checkpoint in the fleet database (size {}) is not signed by the key {}: {e} (a forged or altered checkpoint row, or not this host's key)",
                    row.size,
                    key.name()
                ),
            );
        }
    };
    let root = base64::engine::general_purpose::STANDARD.encode(cp.root);
    if cp.size != row.size || root != row.root {
        return fail(
            out,
            format!(
                "the checkpoint row's size {} and root {} are not the ones its signed note holds ({} records, root {root}): the row was altered",
                row.size, row.root, cp.size
            ),
        );
    }
    if let Some(cosigned) = row.cosigned.as_deref().filter(|_| cosigned_only) {
        // The cosigned copy must be this very checkpoint, signed by the host.
        match Checkpoint::open(cosigned, &key) {
            Ok(c) if c.size == cp.size && c.root == cp.root => {}
            _ => {
                return fail(
                    out,
                    format!(
                        "the cosigned copy of checkpoint {} is not that checkpoint signed by {} (an altered row)",
                        cp.size,
                        key.name()
                    ),
                );
            }
        }
        if !verify_cosignatures(cosigned, witnesses, out)? {
            return fail(
                out,
                format!(
                    "the witness cosignatures of checkpoint {} do not meet the quorum",
                    cp.size
                ),
            );
        }
    }
    let started = std::time::Instant::now();
    let mut said = started;
    let mut rebuild = callgate::record::checkpoints::Rebuild::new();
    let size = cp.size;
    let walked = rt.block_on(db.for_each_record(host, size, &mut |r| {
        rebuild.push(&r)?;
        if said.elapsed() >= PROGRESS_EVERY {
            said = std::time::Instant::now();
            eprintln!(
                "records verify --fleet: {} of {size} records checked ({:.0}s)",
                rebuild.size(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }))?;
    if let Err(why) = walked.and_then(|()| rebuild.finish(&cp)) {
        return fail(out, why);
    }
    let after = rt.block_on(db.records_after(host, size))?;
    if after > 0 {
        writeln!(
            out,
            "note: {after} record(s) after seq {size} are not covered by a shipped checkpoint yet"
        )?;
    }
    writeln!(
        out,
        "verified: host {}: records 1–{size} in the fleet database make the root {root} of the checkpoint {} signed ({})",
        visible(host),
        visible(&cp.origin),
        key.name()
    )?;
    Ok(true)
}
