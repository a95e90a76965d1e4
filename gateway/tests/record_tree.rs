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
        Record, Recorder, RecorderConfig, merkle,
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
    let mut out = Vec::new();
    tree::for_each_record(dir, 1, &mut |f| {
        out.push(f.payload.clone());
        true
    })
    .unwrap();
    out
}

/// What root on the host can do without the signing key's history: write a log of
/// `payloads` as one segment, hash chain and `head.json` recomputed, so that `verify` passes.
fn forge(dir: &Path, payloads: &[Vec<u8>]) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".seg") || name == "head.json" {
            fs::remove_file(e.path()).unwrap();
        }
    }
    let chain = segment::Chain::Leaf;
    let header = segment::Header {
        first_seq: 1,
        created_ms: 1,
        prev_hash: [0; 32],
        chain,
    };
    let mut bytes = header.encode().to_vec();
    let mut prev = [0u8; 32];
    for (i, p) in payloads.iter().enumerate() {
        let leaf = callgate::record::merkle::leaf_hash(p);
        prev = segment::encode_frame(&mut bytes, chain, &prev, i as u64 + 1, p, &leaf);
    }
    fs::write(dir.join(segment::plain_segment_name(1)), bytes).unwrap();
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
    let leaves = payloads(&dir);
    let t = tree::load(&dir).unwrap();
    let boundary = segs[1].first_seq;
    for seq in [1, boundary - 1, boundary, 150, 300] {
        let leaf = &leaves[seq as usize - 1];
        let p = Inclusion::make(&t, seq, cp.size, leaf).unwrap();
        p.verify(leaf, &cp.root).unwrap();
        let mut bad = leaf.clone();
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
    let leaves = payloads(&dir);
    for seq in [first, 450, 600] {
        let leaf = &leaves[(seq - first) as usize];
        Inclusion::make(&t, seq, 600, leaf)
            .unwrap()
            .verify(leaf, &cp2.root)
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
