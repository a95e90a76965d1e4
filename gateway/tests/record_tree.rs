//! The records' Merkle tree and signed checkpoints against a real filesystem: the writer's
//! tree goes on across restarts and retention, and a checkpoint taken earlier catches what
//! the hash chain cannot: the log rolled back to an older copy, a tail rewritten with its
//! chain and `head.json` recomputed, a fork; inclusion proofs verify across segments.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use callgate::{
    obligations::mask::MaskKey,
    record::{
        RawJson, Record, Recorder, RecorderConfig, merkle,
        note::{self, Checkpoint, Signer},
        query, segment,
        tree::{self, Inclusion},
    },
};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "callgate-tree-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

fn signer() -> Arc<Signer> {
    Arc::new(
        Signer::parse(
            &Signer::generate("test.example/callgate/records")
                .unwrap()
                .encode(),
        )
        .unwrap(),
    )
}

fn write(dir: &Path, s: &Arc<Signer>, n: u64, cfg: impl Fn(&mut RecorderConfig)) {
    let mut c = RecorderConfig::new(dir);
    c.signer = Some(s.clone());
    c.origin = "test.example/callgate/records".into();
    c.checkpoint_interval = std::time::Duration::ZERO;
    cfg(&mut c);
    let rec = Recorder::open(c, MaskKey::from_bytes([3; 32])).expect("open");
    for i in 0..n {
        let mut r = Record::new(format!("conn-{}", i % 3), "127.0.0.1:18080");
        r.protocol = "rest".into();
        r.function = Some(format!("f{i}"));
        r.decision.action = "allow".into();
        // Every seventh record is longer than 4 KiB: its leaf is over its digest.
        if i % 7 == 3 {
            let items: Vec<String> = (0..800).map(|k| format!(r#"{{"n":{k}}}"#)).collect();
            r.response = Some(RawJson::new(format!("[{}]", items.join(",")).as_bytes()));
        }
        rec.submit(r).expect("submit");
    }
    rec.close();
}

fn latest(dir: &Path, s: &Signer) -> Checkpoint {
    let text = fs::read_to_string(dir.join(note::CHECKPOINT_FILE)).expect("checkpoint written");
    Checkpoint::open(&text, &s.verifier()).expect("signed by the key")
}

fn problems(dir: &Path, cp: &Checkpoint) -> Vec<String> {
    tree::check(dir, cp).expect("check").problems
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn payloads(dir: &Path) -> Vec<Vec<u8>> {
    frames(dir).into_iter().map(|f| f.payload).collect()
}

/// What a large record's leaf is over in the newest kind of segment: `0xFF ‖ BLAKE3(record)`.
fn digest_entry(payload: &[u8]) -> Vec<u8> {
    let mut entry = vec![0xFF];
    entry.extend_from_slice(blake3::hash(payload).as_bytes());
    entry
}

fn frames(dir: &Path) -> Vec<segment::Frame> {
    let mut out = Vec::new();
    tree::for_each_record(dir, 1, &mut |f| {
        out.push(f.clone());
        true
    })
    .unwrap();
    out
}

/// What root on the host can do without the signing key's history: write a log of
/// `payloads` as one segment, hash chain and `head.json` recomputed, so that `verify` passes.
fn forge(dir: &Path, payloads: &[Vec<u8>]) {
    forge_as(dir, payloads, segment::Chain::NEWEST)
}

/// [`forge`], the segment chained as `chain`.
fn forge_as(dir: &Path, payloads: &[Vec<u8>], chain: segment::Chain) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".seg") || name == "head.json" {
            fs::remove_file(e.path()).unwrap();
        }
    }
    let header = segment::Header {
        first_seq: 1,
        created_ms: 1,
        prev_hash: [0; 32],
        chain,
    };
    let mut bytes = Vec::new();
    let mut prev = [0u8; 32];
    for (i, p) in payloads.iter().enumerate() {
        let leaf = chain.leaf(p);
        prev = segment::encode_frame(&mut bytes, chain, &prev, i as u64 + 1, p, &leaf);
    }
    // As the writer writes it: a zstd frame for the header, one for the records.
    let mut z = segment::compressor().unwrap();
    let (mut file, mut packed) = (Vec::new(), Vec::new());
    segment::compress_frame(&mut z, &header.encode(), &mut packed).unwrap();
    file.extend_from_slice(&packed);
    segment::compress_frame(&mut z, &bytes, &mut packed).unwrap();
    file.extend_from_slice(&packed);
    fs::write(dir.join(segment::segment_name(1)), file).unwrap();
    let head =
        serde_json::json!({"seq": payloads.len(), "hash": segment::hex(&prev), "time_ms": 1});
    fs::write(dir.join("head.json"), head.to_string()).unwrap();
    let v = query::verify(dir, None).unwrap();
    assert!(v.ok(), "the forgery passes the chain check: {v:?}");
}

#[test]
fn the_tree_goes_on_across_restarts_and_each_checkpoint_extends_the_last() {
    let dir = tempdir("restart");
    let s = signer();
    write(&dir, &s, 40, |_| {});
    let cp1 = latest(&dir, &s);
    assert_eq!(cp1.size, 40);
    assert!(problems(&dir, &cp1).is_empty());
    // The saved frontier is used after a restart; without it the tree is rebuilt.
    write(&dir, &s, 25, |_| {});
    fs::remove_file(dir.join("head.json")).unwrap();
    write(&dir, &s, 10, |c| c.segment_bytes = 2048);
    let cp2 = latest(&dir, &s);
    assert_eq!(cp2.size, 75);
    let t = tree::load(&dir).unwrap();
    assert_eq!(t.root(75).unwrap(), cp2.root);
    assert_eq!(t.root(40).unwrap(), cp1.root);
    let c = t.consistency(40, 75).unwrap();
    merkle::verify_consistency(40, 75, &cp1.root, &cp2.root, &c).unwrap();
    assert!(problems(&dir, &cp1).is_empty() && problems(&dir, &cp2).is_empty());
    // The verifier key is beside the log, in note format.
    assert_eq!(tree::host_key(&dir).unwrap(), s.verifier());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_rollback_a_rewritten_tail_and_a_fork_fail_the_checkpoint() {
    let dir = tempdir("tamper");
    let old = tempdir("tamper-old");
    let s = signer();
    write(&dir, &s, 30, |_| {});
    copy_dir(&dir, &old);
    write(&dir, &s, 30, |_| {});
    let cp = latest(&dir, &s);
    assert_eq!(cp.size, 60);
    assert!(problems(&dir, &cp).is_empty());

    // Rolled back to the older copy: it verifies on its own, not against the checkpoint.
    assert!(query::verify(&old, None).unwrap().ok());
    let p = problems(&old, &cp).join("\n");
    assert!(p.contains("records 31–60 are missing"), "{p}");

    // The last 5 records rewritten, chain and head.json recomputed.
    let good = payloads(&dir);
    let rewritten = tempdir("tamper-tail");
    copy_dir(&dir, &rewritten);
    let mut forged = good.clone();
    for p in &mut forged[55..] {
        *p = String::from_utf8(p.clone())
            .unwrap()
            .replace("allow", "deny!")
            .into_bytes();
    }
    forge(&rewritten, &forged);
    let p = problems(&rewritten, &cp).join("\n");
    assert!(p.contains("not the ones the checkpoint signed"), "{p}");

    // A fork: another log of the same size.
    let fork = tempdir("tamper-fork");
    write(&fork, &s, 60, |_| {});
    let p = problems(&fork, &cp).join("\n");
    assert!(p.contains("not the ones the checkpoint signed"), "{p}");

    // The original, with more records since: still passes.
    forge(&rewritten, &good);
    assert!(problems(&rewritten, &cp).is_empty());

    // A checkpoint altered after signing is refused.
    let text = fs::read_to_string(dir.join(note::CHECKPOINT_FILE)).unwrap();
    let altered = text.replacen("\n60\n", "\n30\n", 1);
    assert!(matches!(
        Checkpoint::open(&altered, &s.verifier()),
        Err(note::NoteError::BadSignature(_))
    ));
    for d in [dir, old, rewritten, fork] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn inclusion_proofs_verify_across_segments_and_after_retention() {
    let dir = tempdir("prove");
    let s = signer();
    write(&dir, &s, 300, |c| c.segment_bytes = 4 * 1024);
    let cp = latest(&dir, &s);
    let segs = segment::list(&dir).unwrap();
    assert!(segs.len() > 3, "several segments: {segs:?}");
    let fs_ = frames(&dir);
    let t = tree::load(&dir).unwrap();
    let boundary = segs[1].first_seq;
    // Record 4 (and every seventh after it) is a large one, its leaf over its digest.
    assert!(fs_[3].payload.len() > segment::DIGEST_ABOVE);
    assert_ne!(fs_[3].leaf(), merkle::leaf_hash(&fs_[3].payload));
    for seq in [1, 4, boundary - 1, boundary, 150, 151, 300] {
        let f = &fs_[seq as usize - 1];
        let p = Inclusion::make(&t, seq, cp.size, &f.leaf()).unwrap();
        p.verify(&f.payload, &cp.root).unwrap();
        let mut bad = f.payload.clone();
        bad[5] ^= 1;
        assert!(p.verify(&bad, &cp.root).is_err(), "a changed record fails");
    }

    // Retention removes the oldest segments: their frontier is kept in the anchor.
    write(&dir, &s, 300, |c| {
        c.segment_bytes = 4 * 1024;
        c.retain_bytes = 12 * 1024;
    });
    let first = segment::list(&dir).unwrap()[0].first_seq;
    assert!(first > 1, "retention removed segments");
    let cp2 = latest(&dir, &s);
    assert_eq!(cp2.size, 600);
    let t = tree::load(&dir).unwrap();
    assert_eq!(t.root(600).unwrap(), cp2.root);
    let fs_ = frames(&dir);
    for seq in [first, (first + 600) / 2, 600] {
        let f = &fs_[(seq - first) as usize];
        Inclusion::make(&t, seq, 600, &f.leaf())
            .unwrap()
            .verify(&f.payload, &cp2.root)
            .unwrap();
    }
    assert!(problems(&dir, &cp2).is_empty());
    // A checkpoint older than what is kept cannot be checked: said so, not passed.
    if cp.size < first - 1 {
        let p = problems(&dir, &cp).join("\n");
        assert!(p.contains("older than the oldest records kept"), "{p}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A log the previous version wrote (`CALLGATE-RECORD2`, every leaf over its record) goes on in
/// this version's segments (`CALLGATE-RECORD3`, a large record's leaf over its digest): the
/// older segment keeps its leaves, a checkpoint signed before the newer segments stays
/// consistent with the log after them, and a large record's proof verifies in either kind.
#[test]
fn a_log_of_the_previous_kind_goes_on_and_stays_provable() {
    use segment::Chain;
    let dir = tempdir("upgrade");
    let s = signer();
    write(&dir, &s, 30, |c| c.segment_bytes = 1 << 20);
    forge_as(&dir, &payloads(&dir), Chain::Leaf);
    let _ = fs::remove_file(dir.join(note::CHECKPOINT_FILE));
    let kinds = |dir: &Path| -> Vec<Chain> {
        segment::list(dir)
            .unwrap()
            .iter()
            .map(|s| segment::Reader::open(s).unwrap().header.chain)
            .collect()
    };
    // Still the older kind's segment: the record appended goes into it, as it is chained.
    write(&dir, &s, 1, |c| c.segment_bytes = 1 << 20);
    assert_eq!(kinds(&dir), [Chain::Leaf]);
    let cp1 = latest(&dir, &s);
    assert_eq!(cp1.size, 31);
    write(&dir, &s, 40, |c| c.segment_bytes = 8 * 1024);
    let k = kinds(&dir);
    assert!(
        k[0] == Chain::Leaf && k.len() > 2 && k[1..].iter().all(|c| *c == Chain::Digest),
        "{k:?}"
    );
    assert!(query::verify(&dir, None).unwrap().ok());
    let cp2 = latest(&dir, &s);
    assert_eq!(cp2.size, 71);
    let t = tree::load(&dir).unwrap();
    assert_eq!(t.root(71).unwrap(), cp2.root);
    assert_eq!(t.root(31).unwrap(), cp1.root);
    assert!(problems(&dir, &cp1).is_empty() && problems(&dir, &cp2).is_empty());
    let fs_ = frames(&dir);
    for kind in [Chain::Leaf, Chain::Digest] {
        let f = fs_
            .iter()
            .find(|f| f.chain == kind && f.payload.len() > segment::DIGEST_ABOVE)
            .expect("a large record in a segment of each kind");
        assert_eq!(
            f.leaf() == merkle::leaf_hash(&f.payload),
            kind == Chain::Leaf,
            "a large record's leaf is over its digest in the newer kind only"
        );
        let p = Inclusion::make(&t, f.seq, cp2.size, &f.leaf()).unwrap();
        p.verify(&f.payload, &cp2.root).unwrap();
        let mut bad = f.payload.clone();
        let at = bad.len() - 10;
        bad[at] ^= 1;
        assert!(p.verify(&bad, &cp2.root).is_err(), "a changed record fails");
        if kind == Chain::Digest {
            // Its digest entry is not a record that the proof proves.
            let entry = digest_entry(&f.payload);
            assert_eq!(merkle::leaf_hash(&entry), f.leaf());
            let e = p.verify(&entry, &cp2.root).unwrap_err();
            assert!(e.contains("not a record"), "{e}");
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Root on the host replaces each large record by its 33-byte digest entry and relabels the
/// log as an older kind, chain recomputed: were the older kinds' leaf over such an entry the
/// entry itself, it would make the large record's leaf and every proof would hold. A payload
/// beginning with 0xFF is digested in every kind, so the checkpoint catches it.
#[test]
fn a_large_record_replaced_by_its_digest_entry_fails_the_checkpoint() {
    use segment::Chain;
    let dir = tempdir("entry");
    let s = signer();
    write(&dir, &s, 20, |_| {});
    let cp = latest(&dir, &s);
    let mut forged = payloads(&dir);
    let mut replaced = 0;
    for p in &mut forged {
        if p.len() > segment::DIGEST_ABOVE {
            *p = digest_entry(p);
            replaced += 1;
        }
    }
    assert!(replaced > 0, "no large record to replace");
    for kind in [Chain::Leaf, Chain::Payload, Chain::Digest] {
        let d = tempdir("entry-forged");
        copy_dir(&dir, &d);
        forge_as(&d, &forged, kind);
        let p = problems(&d, &cp).join("\n");
        assert!(
            p.contains("not the ones the checkpoint signed"),
            "{kind:?}: {p}"
        );
        let _ = fs::remove_dir_all(&d);
    }
    let _ = fs::remove_dir_all(&dir);
}
