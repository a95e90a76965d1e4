//! The record stage against a real filesystem: chain across segments, rotation and zstd,
//! tampering found and named, torn frames cut, a writer killed with SIGKILL, a full disk.
use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use callgate::{
    config::Durability,
    obligations::mask::MaskKey,
    record::{
        RawJson, Record, RecordError, Recorder, RecorderConfig, SharedJson,
        query::{self, Filter},
        segment,
    },
};
use serde_json::json;

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "callgate-rec-{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    let d = PathBuf::from(d.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
    fs::create_dir_all(&d).expect("temp dir");
    d
}

fn key() -> MaskKey {
    MaskKey::from_bytes([3; 32])
}

fn record(i: u64, session: &str) -> Record {
    let mut r = Record::new(session, "127.0.0.1:18080");
    r.service = Some("payments".into());
    r.function = Some(if i.is_multiple_of(2) { "refund" } else { "get" }.into());
    r.protocol = "rest".into();
    r.args = Some(json!({"amount": i, "note": format!("call {i}")}));
    r.decision.action = if i.is_multiple_of(3) { "deny" } else { "allow" }.into();
    r.decision.enforced = true;
    r.status = Some(200);
    r.latency_ms = 1.5;
    r
}

fn all(dir: &Path) -> Vec<query::Stored> {
    let mut out = Vec::new();
    query::scan(dir, &Filter::default(), &mut |s| {
        out.push(s);
        true
    })
    .expect("scan");
    out
}

fn write(dir: &Path, cfg: impl Fn(&mut RecorderConfig), n: u64) -> Vec<String> {
    let mut c = RecorderConfig::new(dir);
    cfg(&mut c);
    let rec = Recorder::open(c, key()).expect("open");
    let mut ids = Vec::new();
    for i in 0..n {
        let r = record(i, &format!("conn-{}", i % 3));
        ids.push(r.id.clone());
        rec.submit(r).expect("submit");
    }
    rec.close();
    ids
}

#[test]
fn chain_survives_reopen_and_filters_work() {
    let dir = tempdir("reopen");
    let a = write(&dir, |_| {}, 50);
    let b = write(&dir, |_| {}, 50);
    let got = all(&dir);
    assert_eq!(got.len(), 100);
    let ids: Vec<&str> = got.iter().map(|s| s.record.id.as_str()).collect();
    assert_eq!(
        ids,
        a.iter().chain(&b).map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(got.last().map(|s| s.seq), Some(100));
    let v = query::verify(&dir, None).expect("verify");
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.records, 100);

    let mut n = 0;
    let f = Filter {
        function: Some("refund".into()),
        decision: Some("deny".into()),
        ..Filter::default()
    };
    query::scan(&dir, &f, &mut |s| {
        assert_eq!(s.record.function.as_deref(), Some("refund"));
        assert_eq!(s.record.decision.action, "deny");
        n += 1;
        true
    })
    .expect("scan");
    assert_eq!(n, 2 * 9, "i % 6 == 0 in each run of 50");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn sync_makes_everything_submitted_durable() {
    let dir = tempdir("sync");
    let mut cfg = RecorderConfig::new(&dir);
    // A long window: only the sync makes the records durable early (it waits at most one).
    cfg.commit_window = Duration::from_secs(1);
    let rec = Recorder::open(cfg, key()).expect("open");
    assert_eq!(rec.sync().expect("empty sync"), 0);
    for i in 0..5 {
        rec.submit(record(i, "s")).expect("submit");
    }
    assert_eq!(rec.sync().expect("sync"), 5);
    assert_eq!(all(&dir).len(), 5, "readable before close");
    rec.close();
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn backlog_is_bounded_in_bytes_and_drains() {
    let dir = tempdir("backlog");
    let mut cfg = RecorderConfig::new(&dir);
    // The writer sleeps through a long window once a group is open, as it does through a
    // stalled fsync: what arrives meanwhile queues up against the bound.
    cfg.commit_window = Duration::from_secs(2);
    cfg.backlog_bytes = 8 << 10;
    let rec = Recorder::open(cfg, key()).expect("open");
    // One record opens the group; once the writer has taken it, it sleeps through the window.
    rec.submit(record(0, "b")).expect("the first record");
    let deadline = Instant::now() + Duration::from_secs(5);
    while rec.status().backlog > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    // Calls are admitted while the backlog is under its bound, then refused.
    let mut accepted = 1;
    let refusal = (0..1000).find_map(|i| match rec.ready() {
        Ok(()) => {
            rec.submit(record(i, "b"))
                .expect("an admitted call's record");
            accepted += 1;
            None
        }
        Err(e) => Some(e),
    });
    let refusal = refusal.expect("a full backlog refuses calls");
    assert!(refusal.to_string().contains("behind"), "{refusal}");
    assert!(rec.status().backlog_bytes >= 8 << 10, "{:?}", rec.status());
    assert!((5..100).contains(&accepted), "{accepted} accepted");
    // A call admitted before the bound was reached still gets its record, past the bound:
    // it has been carried out, so dropping its record would lose it.
    let before = rec.status().backlog_bytes;
    rec.submit(record(accepted, "b"))
        .expect("the record of a call in flight");
    accepted += 1;
    assert!(rec.status().backlog_bytes > before);
    assert_eq!(rec.status().refused, 0);
    // Nothing accepted is lost, and once written the bound frees up.
    assert_eq!(rec.sync().expect("sync"), accepted);
    assert_eq!(rec.status().backlog_bytes, 0);
    rec.ready().expect("admitting again");
    rec.submit(record(0, "b")).expect("accepted again");
    rec.close();
    assert_eq!(all(&dir).len() as u64, accepted + 1);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn rotation_compresses_and_verify_spans_segments() {
    let dir = tempdir("rotate");
    write(&dir, |c| c.segment_bytes = 8 * 1024, 300);
    let segs = segment::list(&dir).expect("list");
    assert!(segs.len() > 3, "{segs:?}");
    assert!(segs.iter().all(|s| s.compressed), "{segs:?}");
    // Rotation goes by the records' size, and what reaches the disk is a fraction of it.
    let on_disk: u64 = segs
        .iter()
        .map(|s| fs::metadata(&s.path).expect("size").len())
        .sum();
    let raw: u64 = segs
        .iter()
        .map(|s| {
            let mut n = Vec::new();
            s.open().expect("open").read_to_end(&mut n).expect("read");
            n.len() as u64
        })
        .sum();
    assert!(on_disk * 3 < raw, "{on_disk} bytes on disk for {raw}");
    assert_eq!(all(&dir).len(), 300);
    let v = query::verify(&dir, None).expect("verify");
    assert!(v.ok(), "{v:?}");
    let from = query::verify(&dir, Some(200)).expect("verify --from");
    assert!(from.ok() && from.records < 300, "{from:?}");
    let _ = fs::remove_dir_all(&dir);
}

fn fresh_log(name: &str) -> PathBuf {
    let dir = tempdir(name);
    write(
        &dir,
        |c| {
            c.segment_bytes = 4 * 1024;
            c.durability = Durability::Buffered;
        },
        120,
    );
    // Decompress every segment so the test can edit bytes in place.
    for s in segment::list(&dir).expect("list") {
        if s.compressed {
            let mut text = Vec::new();
            s.open()
                .expect("open")
                .read_to_end(&mut text)
                .expect("read");
            fs::write(dir.join(segment::plain_segment_name(s.first_seq)), text).expect("write");
            fs::remove_file(&s.path).expect("rm");
        }
    }
    assert!(query::verify(&dir, None).expect("verify").ok());
    dir
}

fn problems(dir: &Path) -> String {
    let v = query::verify(dir, None).expect("verify");
    assert!(!v.ok(), "tampering went unnoticed");
    v.problems.join("\n")
}

#[test]
fn tampering_is_found_and_named() {
    // One flipped byte inside a record.
    let dir = fresh_log("flip");
    let segs = segment::list(&dir).expect("list");
    let victim = &segs[1];
    let mut bytes = fs::read(&victim.path).expect("read");
    let at = segment::HEADER_LEN + segment::FRAME_HEADER_LEN + 10;
    bytes[at] ^= 0x20;
    fs::write(&victim.path, bytes).expect("write");
    let p = problems(&dir);
    assert!(
        p.contains(&victim.name()) && p.contains("offset 64") && p.contains("altered"),
        "{p}"
    );
    let _ = fs::remove_dir_all(&dir);

    // A deleted segment.
    let dir = fresh_log("delete");
    let segs = segment::list(&dir).expect("list");
    fs::remove_file(&segs[2].path).expect("rm");
    let p = problems(&dir);
    assert!(p.contains(&segs[3].name()) && p.contains("missing"), "{p}");
    let _ = fs::remove_dir_all(&dir);

    // Two segments swapped by renaming.
    let dir = fresh_log("reorder");
    let segs = segment::list(&dir).expect("list");
    let tmp = dir.join("swap");
    fs::rename(&segs[1].path, &tmp).expect("mv");
    fs::rename(&segs[2].path, &segs[1].path).expect("mv");
    fs::rename(&tmp, &segs[2].path).expect("mv");
    let p = problems(&dir);
    assert!(p.contains("renamed or reordered"), "{p}");
    let _ = fs::remove_dir_all(&dir);

    // Whole records cut off the end: the checkpoint notices.
    let dir = fresh_log("truncate");
    let mut segs = segment::list(&dir).expect("list");
    // The newest segment with records in it; newer (empty) ones go too.
    let (last, first) = loop {
        let last = segs.pop().expect("a segment with records");
        let mut r = segment::Reader::open(&last).expect("reader");
        match r.next_frame().expect("read") {
            Some(first) => break (last, first),
            None => fs::remove_file(&last.path).expect("rm"),
        }
    };
    let len = fs::metadata(&last.path).expect("meta").len();
    assert!(len > first.offset);
    fs::OpenOptions::new()
        .write(true)
        .open(&last.path)
        .and_then(|f| f.set_len(first.offset))
        .expect("truncate");
    let p = problems(&dir);
    assert!(
        p.contains("truncated log") && p.contains("checkpoint"),
        "{p}"
    );
    let _ = fs::remove_dir_all(&dir);

    // A segment's records replaced by their leaf hashes and its magic changed to the older
    // chain's: were the newer chain not tagged, SHA-256(prev ‖ seq ‖ leaf) would be the older
    // hash of that frame, and every hash after it would still hold.
    let dir = fresh_log("magic");
    let segs = segment::list(&dir).expect("list");
    let victim = &segs[1];
    let mut r = segment::Reader::open(victim).expect("reader");
    assert_eq!(r.header.chain, segment::Chain::NEWEST);
    let mut forged = segment::Header {
        chain: segment::Chain::Payload,
        ..r.header
    }
    .encode()
    .to_vec();
    while let Some(f) = r.next_frame().expect("frame") {
        let leaf = f.leaf();
        forged.extend_from_slice(&32u32.to_le_bytes());
        forged.extend_from_slice(&f.seq.to_le_bytes());
        forged.extend_from_slice(&f.hash);
        forged.extend_from_slice(&leaf);
    }
    fs::write(&victim.path, forged).expect("write");
    let p = problems(&dir);
    assert!(
        p.contains(&victim.name()) && p.contains("altered record"),
        "{p}"
    );
    let _ = fs::remove_dir_all(&dir);

    // A segment rewritten in the older chain, its hashes (and the next segment's header)
    // recomputed: a log never goes back to it, so verify says so.
    let dir = fresh_log("older-after-newer");
    let segs = segment::list(&dir).expect("list");
    let victim = segs.last().expect("segment");
    let mut r = segment::Reader::open(victim).expect("reader");
    let header = segment::Header {
        chain: segment::Chain::Payload,
        ..r.header
    };
    let mut rewritten = header.encode().to_vec();
    let mut prev = header.prev_hash;
    while let Some(f) = r.next_frame().expect("frame") {
        let leaf = callgate::record::merkle::leaf_hash(&f.payload);
        prev = segment::encode_frame(
            &mut rewritten,
            segment::Chain::Payload,
            &prev,
            f.seq,
            &f.payload,
            &leaf,
        );
    }
    fs::write(&victim.path, rewritten).expect("write");
    let head = json!({"seq": all(&dir).last().expect("records").seq, "hash": segment::hex(&prev), "time_ms": 1});
    fs::write(dir.join("head.json"), head.to_string()).expect("head");
    let p = problems(&dir);
    assert!(
        p.contains(&victim.name()) && p.contains("older than the segments before it"),
        "{p}"
    );
    // Also when verifying from inside it, and the writer does not append to it.
    let from = query::verify(&dir, Some(victim.first_seq)).expect("verify --from");
    assert!(
        from.problems
            .iter()
            .any(|p| p.contains("older than the segments before it")),
        "{from:?}"
    );
    let err = Recorder::open(RecorderConfig::new(&dir), key())
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("older than the segments before it wrote"),
        "{err}"
    );
    let _ = fs::remove_dir_all(&dir);

    // The first segment removed without retention.
    let dir = fresh_log("head");
    let segs = segment::list(&dir).expect("list");
    fs::remove_file(&segs[0].path).expect("rm");
    let p = problems(&dir);
    assert!(p.contains("records 1–") && p.contains("missing"), "{p}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn retention_anchors_the_chain() {
    let dir = tempdir("retain");
    write(
        &dir,
        |c| {
            c.segment_bytes = 4 * 1024;
            c.retain_bytes = 8 * 1024;
        },
        400,
    );
    std::thread::sleep(Duration::from_millis(300));
    let v = query::verify(&dir, None).expect("verify");
    assert!(v.ok(), "{v:?}");
    assert!(v.first_seq > Some(1), "old segments were removed: {v:?}");
    assert!(v.notes.iter().any(|n| n.contains("retention")), "{v:?}");
    let _ = fs::remove_dir_all(&dir);
}

/// What a crash mid-commit leaves at the end of the active segment: the first `n` bytes of a
/// group's zstd frame, holding a whole frame and the start of the next.
fn torn_group(n: usize) -> Vec<u8> {
    let mut raw = vec![200, 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 0];
    raw.extend(std::iter::repeat_n(7u8, 32 + 200));
    raw.extend_from_slice(&[200, 0, 0, 0, 12]);
    let mut z = segment::compressor().expect("zstd");
    let mut packed = Vec::new();
    segment::compress_frame(&mut z, &raw, &mut packed).expect("compress");
    packed.truncate(n.min(packed.len() - 1));
    packed
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open");
    std::io::Write::write_all(&mut f, bytes).expect("append");
}

#[test]
fn torn_final_frame_is_cut_at_start() {
    let dir = tempdir("torn");
    write(&dir, |_| {}, 10);
    let segs = segment::list(&dir).expect("list");
    let active = &segs.last().expect("segment").path;
    let torn = torn_group(usize::MAX);
    append(active, &torn);
    let v = query::verify(&dir, None).expect("verify");
    assert!(
        v.ok() && v.notes.iter().any(|n| n.contains("incomplete")),
        "{v:?}"
    );

    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("reopen");
    assert_eq!(rec.status().truncated_bytes, torn.len() as u64);
    rec.submit(record(99, "after")).expect("submit");
    rec.close();
    let got = all(&dir);
    assert_eq!(got.len(), 11);
    assert_eq!(got[10].seq, 11);
    assert!(query::verify(&dir, None).expect("verify").ok());
    let _ = fs::remove_dir_all(&dir);
}

/// Not a test on its own: the child process `killed_writer_loses_nothing_durable` runs and
/// kills. Writes strict-mode records forever, printing each id once it is durable.
#[test]
fn torn_zstd_header_is_cut_and_garbage_is_refused() {
    // A crash a few bytes into a group's frame: not even its header is whole.
    let dir = tempdir("torn-hdr");
    write(&dir, |_| {}, 3);
    let active = segment::list(&dir)
        .expect("list")
        .last()
        .expect("seg")
        .path
        .clone();
    append(&active, &torn_group(3));
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("reopen");
    assert_eq!(rec.status().truncated_bytes, 3);
    rec.close();
    assert_eq!(all(&dir).len(), 3);

    // Bytes that are no zstd frame at all are not a crash's doing: refuse, cut nothing.
    append(&active, b"not a frame");
    let len = fs::metadata(&active).expect("len").len();
    let err = Recorder::open(RecorderConfig::new(&dir), key())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not a zstd frame"), "{err}");
    assert_eq!(fs::metadata(&active).expect("len").len(), len);
    let _ = fs::remove_dir_all(&dir);
}

/// The active segment an older version began, its frames chained over their payloads
/// (`CALLGATE-RECORDS`): verified and appended to as it is, then the next segments are
/// chained over the records' leaf hashes (`CALLGATE-RECORD2`), and `verify` walks both, naming
/// an altered record in either.
#[test]
fn segments_chained_over_payloads_are_verified_and_continued() {
    use callgate::record::{merkle, segment::Chain};
    let dir = tempdir("chain-payload");
    let header = segment::Header {
        first_seq: 1,
        created_ms: 1,
        prev_hash: [0; 32],
        chain: Chain::Payload,
    };
    let mut z = segment::compressor().expect("zstd");
    let mut packed = Vec::new();
    segment::compress_frame(&mut z, &header.encode(), &mut packed).expect("compress");
    let mut file = packed.clone();
    let (mut raw, mut prev) = (Vec::new(), [0u8; 32]);
    for i in 1..=5 {
        let payload = serde_json::to_vec(&record(i, "older")).expect("json");
        let leaf = merkle::leaf_hash(&payload);
        let before = prev;
        prev = segment::encode_frame(&mut raw, Chain::Payload, &prev, i, &payload, &leaf);
        // Chained over the payload itself, not its leaf hash.
        assert_eq!(prev, segment::chain(&before, i, &payload));
        assert_ne!(prev, Chain::Leaf.hash(&before, i, &payload));
    }
    segment::compress_frame(&mut z, &raw, &mut packed).expect("compress");
    file.extend_from_slice(&packed);
    fs::write(dir.join(segment::segment_name(1)), &file).expect("write");
    assert!(query::verify(&dir, None).expect("verify").ok());

    write(&dir, |c| c.segment_bytes = 4 * 1024, 40);
    let segs = segment::list(&dir).expect("list");
    assert!(segs.len() > 2, "{segs:?}");
    let chains: Vec<Chain> = segs
        .iter()
        .map(|s| segment::Reader::open(s).expect("open").header.chain)
        .collect();
    assert_eq!(
        chains[0],
        Chain::Payload,
        "the older segment keeps its chain"
    );
    assert!(
        chains[1..].iter().all(|c| *c == Chain::NEWEST),
        "{chains:?}"
    );
    let v = query::verify(&dir, None).expect("verify");
    assert!(v.ok() && v.notes.is_empty(), "{v:?}");
    assert_eq!(all(&dir).len(), 45);
    // The older segment got records of this version too: they are in its chain.
    let first = segment::Reader::open(&segs[0]).expect("open");
    let mut r = first;
    let mut n = 0;
    while r.next_frame().expect("frame").is_some() {
        n += 1;
    }
    assert!(n > 5, "appended to the older segment: {n} frames");

    // An altered record is named in a segment of either chain.
    for seg in [&segs[0], &segs[1]] {
        let copy = tempdir("chain-payload-flip");
        for s in &segs {
            let mut text = Vec::new();
            s.open()
                .expect("open")
                .read_to_end(&mut text)
                .expect("read");
            if s.path == seg.path {
                let at = text
                    .windows(6)
                    .position(|w| w == b"refund")
                    .expect("a record to alter");
                text[at] = b'R';
            }
            fs::write(copy.join(segment::plain_segment_name(s.first_seq)), text).expect("write");
        }
        let p = problems(&copy);
        assert!(
            p.contains(&seg.name().replace(".zst", "")) && p.contains("altered record"),
            "{p}"
        );
        let _ = fs::remove_dir_all(&copy);
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn plain_segments_of_older_versions_are_read_and_continued() {
    // An older version wrote plain `.seg` files: the log as fresh_log leaves it.
    let dir = fresh_log("plain");
    let before = all(&dir).len();
    write(&dir, |c| c.segment_bytes = 4 * 1024, 30);
    let segs = segment::list(&dir).expect("list");
    assert!(segs.iter().any(|s| !s.compressed), "{segs:?}");
    assert!(segs.last().expect("seg").compressed, "{segs:?}");
    let v = query::verify(&dir, None).expect("verify");
    assert!(v.ok() && v.notes.is_empty(), "{v:?}");
    assert_eq!(all(&dir).len(), before + 30);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn child_strict_writer() {
    let Ok(dir) = std::env::var("CALLGATE_TEST_CHILD_DIR") else {
        return;
    };
    let mut cfg = RecorderConfig::new(&dir);
    cfg.durability = Durability::Strict;
    let rec = Recorder::open(cfg, key()).expect("open");
    let stdout = std::io::stdout();
    for i in 0..1_000_000 {
        let r = record(i, "child");
        let id = r.id.clone();
        let durable = rec.submit(r).expect("submit").expect("strict");
        let seq = durable.wait_blocking().expect("durable");
        let mut out = stdout.lock();
        let _ = std::io::Write::write_all(&mut out, format!("durable {seq} {id}\n").as_bytes());
        let _ = std::io::Write::flush(&mut out);
    }
}

#[test]
fn killed_writer_loses_nothing_durable() {
    let dir = tempdir("sigkill");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_strict_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CALLGATE_TEST_CHILD_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut durable = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while durable.len() < 300 && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("durable ") {
                    let (_, id) = rest.split_once(' ').expect("seq id");
                    durable.push(id.to_string());
                }
            }
            _ => break,
        }
    }
    // SIGKILL mid-stream: the child is appending the next record right now.
    child.kill().expect("kill");
    let _ = child.wait();
    // Lines printed before the kill but not yet read are durable too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("durable ") {
            if let Some((_, id)) = rest.split_once(' ') {
                durable.push(id.to_string());
            }
        }
    }
    assert!(
        durable.len() >= 300,
        "child reported {} durable records",
        durable.len()
    );

    // Start-up recovery, then the chain verifies and holds every reported record.
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("recover");
    rec.close();
    let v = query::verify(&dir, None).expect("verify");
    assert!(v.ok(), "{v:?}");
    let stored: std::collections::HashSet<String> =
        all(&dir).into_iter().map(|s| s.record.id).collect();
    let missing: Vec<&String> = durable.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "durable records lost: {missing:?}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn planted_pii_never_reaches_disk() {
    let dir = tempdir("pii");
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("open");
    let mut r = record(1, "pii");
    r.args = Some(
        json!({"card": "4111 1111 1111 1111", "email": "victim@example.com", "n": 4012888888881881u64}),
    );
    // Responses are kept as their text: detectors run over it as written, a card written as a
    // number included, and over decoded strings when an escape could hide one.
    r.response = Some(RawJson::new(
        br#"{"ssn": "123-45-6789", "token": "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "n": 5555555555554444}"#,
    ));
    r.caller = Some(json!({"subject": "alice@example.com"}));
    r.decision.reason = Some("refund to victim@example.com refused".into());
    rec.submit(r).expect("submit");
    let mut escaped = record(2, "pii");
    escaped.response = Some(RawJson::new(
        br#"{"card": "\u0034111 1111 1111 1111", "note": "caf\u00e9"}"#,
    ));
    rec.submit(escaped).expect("submit");
    // Every name a record carries is scanned (one scan over them all, one per name on a hit):
    // a value in any of them, at either end, is masked.
    let mut names = record(3, "pii");
    names.session = "conn-carol@example.com".into();
    names.destination = "AKIAIOSFODNN7EXAMPLE.example:443".into();
    names.protocol = "rest-grace@example.com".into();
    names.service = Some("svc-dave@example.com".into());
    names.function =
        Some("/users/erin@example.com/ghp_abcdefghijklmnopqrstuvwxyz0123456780".into());
    names.decision.rule = Some("123-45-6780".into());
    names.decision.mode = Some("frank@example.com".into());
    names.decision.policy_commit = Some("5105105105105100".into());
    // What MCP tool pinning notes: an upstream's tool definition, answer keys the caller chose.
    names.mcp = Some(json!({
        "tool": "t",
        "definition": {"description": "Mail heidi@example.com the results."},
        "input_round": {"input_responses": ["ivan@example.com"]},
    }));
    rec.submit(names).expect("submit");
    // Keys are text too: a query's or a body's names, a tool schema's properties, an answer's.
    let mut keys = record(4, "pii");
    keys.args = Some(json!({"judy@example.com": 1, "nested": {"4111 1111 1111 1111": "x"}}));
    keys.mcp =
        Some(json!({"definition": {"inputSchema": {"properties": {"karl@example.com": {}}}}}));
    keys.response = Some(RawJson::new(br#"{"leo@example.com": "Jos\u00e9"}"#));
    rec.submit(keys).expect("submit");
    // Escapes that do not decode (a lone surrogate, a number out of range) could hide a value
    // from the detectors: such an answer is not kept.
    for (i, text) in [
        &br#"{"ssn": "123-45-6781", "cut": "\ud800", "mail": "mallory@example.com"}"#[..],
        br#"{"big": 1e400, "card": "\u0034111 1111 1111 1111"}"#,
        // A key given twice: its reading keeps the last; the first must not reach disk either.
        br#"{"card": "4111 1111 1111 1111", "card": "", "n": "Jos\u00e9"}"#,
        // `\/` (PHP writes every `/` so) inside an AWS secret key.
        br#"{"aws_secret_access_key": "wJalrXUtnFEMI\/K7MDENG\/bPxRfiCYEXAMPLEKEY"}"#,
        // A control character's escape: its letter stands right before the value, where the
        // detectors look for a boundary (`nAKIA…`).
        br#"{"log": "line\nAKIAI44QH8DHBEXAMPLE", "to": "x\tnina@example.com"}"#,
        // Text that is not JSON, a line feed before the key: a string once in the record.
        b"first line\nAKIAJ7777777777EXAMP second",
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = record(5 + i as u64, "pii");
        r.response = Some(RawJson::new(text));
        rec.submit(r).expect("submit");
    }
    rec.close();
    let text = disk_text(&dir);
    for pii in [
        "4111 1111 1111 1111",
        "victim@example.com",
        "4012888888881881",
        "123-45-6789",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "alice@example.com",
        "5555555555554444",
        "111 1111 1111 1111",
        "carol@example.com",
        "AKIAIOSFODNN7EXAMPLE",
        "dave@example.com",
        "erin@example.com",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456780",
        "123-45-6780",
        "frank@example.com",
        "5105105105105100",
        "grace@example.com",
        "heidi@example.com",
        "ivan@example.com",
        "judy@example.com",
        "karl@example.com",
        "leo@example.com",
        "123-45-6781",
        "mallory@example.com",
        "bPxRfiCYEXAMPLEKEY",
        "AKIAI44QH8DHBEXAMPLE",
        "nina@example.com",
        "AKIAJ7777777777EXAMP",
    ] {
        assert!(!text.contains(pii), "{pii} reached disk");
    }
    assert!(
        text.contains("[MASKED:email]") && text.contains("1111"),
        "{text}"
    );
    let _ = fs::remove_dir_all(&dir);
}

/// A connection's workload block is masked once, when the connection begins
/// (`Recorder::mask_workload`), and its calls' records say so (`workload_masked`) instead of
/// being scanned again: what reaches disk is masked either way, and what root chose (the
/// unit, the cgroup path down to it) stays readable.
/// An answer kept as a string (not JSON to the record: here, a number past f64) that a
/// lenient reader still parses as JSON (Python's `json` reads `1e400` as infinity) and whose
/// escapes then spell a card is not kept; a text whose escapes hide nothing is kept, masked
/// where it shows something as written.
#[test]
fn a_text_whose_escapes_spell_a_value_is_not_kept() {
    let dir = tempdir("escaped-text");
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("open");
    let answers: [&[u8]; 7] = [
        br#"{"big": 1e400, "log": "a\nb", "to": "olga@example.com"}"#,
        br#"{"big": 1e400, "card": "\u0034111 1111 1111 1111"}"#,
        br#"{"big": 1e400, "log": "line\nAKIAI44QH8DHBEXAMPLE"}"#,
        // Escapes the masker's unescaper leaves as written, their last letter or digit right
        // before the value (found in review).
        br#"{"big": 1e400, "key": "\u000aAKIAIOSFODNN7EXAMPLE"}"#,
        br#"{"big": 1e400, "card": "\u00284111 1111 1111 1111)"}"#,
        br#"{"big": 1e400, "key": "\ud83d\ude00AKIAJ7777777777EXAMP\u0022"}"#,
        // Escapes between a secret's name and its value: 22 tabs, six bytes each (found in
        // review).
        br#"{"big": 1e400, "env": "aws_secret_access_key=\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009\u0009wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}"#,
    ];
    for (i, text) in answers.into_iter().enumerate() {
        let mut r = record(i as u64 + 1, "escaped-text");
        r.response = Some(RawJson::new(text));
        assert!(
            r.response
                .as_ref()
                .is_some_and(|r| r.get().starts_with('"'))
        );
        rec.submit(r).expect("submit");
    }
    rec.close();
    let got: Vec<String> = all(&dir)
        .into_iter()
        .map(|s| {
            s.record
                .response
                .map(|r| r.get().to_string())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        got[0].contains(r"a\\nb") && got[0].contains("[MASKED:email]") && !got[0].contains("olga"),
        "{got:?}"
    );
    for got in &got[1..] {
        assert!(got.contains("not recorded"), "{got}");
        assert!(
            !got.contains("AKIA") && !got.contains("1111") && !got.contains("EXAMPLEKEY"),
            "{got}"
        );
    }
}

/// A text answer with quotes is a JSON string in its record, each quote `\"`: the backslash
/// stood between a secret's name and its value, where the detector allows only separators
/// and quotes, and the key reached disk (found in review).
#[test]
fn a_text_answer_with_quotes_has_its_secret_masked() {
    let dir = tempdir("quoted-text");
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("open");
    let mut r = record(1, "quoted-text");
    r.response = Some(RawJson::new(
        br#"aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY""#,
    ));
    rec.submit(r).expect("submit");
    rec.close();
    let text = disk_text(&dir);
    assert!(!text.contains("bPxRfiCYEXAMPLEKEY"), "{text}");
    assert!(text.contains("aws_secret_access_key"), "{text}");
}

#[test]
fn workloads_masked_once_per_connection_leave_nothing_unmasked_on_disk() {
    let dir = tempdir("workload-once");
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("open");
    let planted = json!({
        "pid": 7,
        "comm": "victim@example.com",
        "unit": "user@1000.service",
        "cgroup": "/user.slice/user-1000.slice/user@1000.service/app-4111 1111 1111 1111.scope",
        "exe": "/home/carol@example.org/bin/agent",
    });
    let once = rec.mask_workload(SharedJson::of(&planted));
    assert!(!once.get().contains("victim@example.com"), "{}", once.get());
    for i in 1..=3 {
        let mut r = record(i, "workload-once");
        r.workload = Some(once.clone());
        r.workload_masked = true;
        rec.submit(r).expect("submit");
    }
    // A record that does not say so is masked at submit, as before.
    let mut unmarked = record(4, "workload-once");
    unmarked.workload = Some(SharedJson::of(&planted));
    rec.submit(unmarked).expect("submit");
    rec.close();
    let text = disk_text(&dir);
    for pii in [
        "victim@example.com",
        "carol@example.org",
        "4111 1111 1111 1111",
    ] {
        assert!(!text.contains(pii), "{pii} reached disk: {text}");
    }
    assert_eq!(text.matches("user@1000.service").count(), 8, "{text}");
    let _ = fs::remove_dir_all(&dir);
}

/// Reads every record file in `dir` as text, compressed segments decompressed.
fn disk_text(dir: &Path) -> String {
    let mut text = Vec::new();
    for e in fs::read_dir(dir).expect("dir").flatten() {
        let s = segment::SegmentFile {
            path: e.path(),
            first_seq: 0,
            compressed: e.path().extension().is_some_and(|x| x == "zst"),
        };
        if e.path().to_string_lossy().contains(".seg") {
            s.open()
                .expect("open")
                .read_to_end(&mut text)
                .expect("read");
        } else {
            text.extend(fs::read(e.path()).expect("read"));
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Masked once: a policy masking only e-mail addresses, an answer with cards in it (in a
/// string, as a number, spelled with `\u` escapes) and other detectors' values. The client
/// gets the cards; the record's copy, made from the client's bytes and the spans the same
/// scan found, is not scanned again, and the disk has neither the cards nor the address.
#[test]
fn answers_masked_once_leave_nothing_unmasked_on_disk() {
    use callgate::obligations::mask::{BodyKind, BodyMasker, MaskRules, MaskSpec};
    use std::sync::Arc;
    let dir = tempdir("once");
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("open");
    let policy =
        Arc::new(MaskRules::compile(&[MaskSpec::Detector("email".into())]).expect("rules"));
    let answer = br#"{"card": "4111 1111 1111 1111", "n": 5555555555554444, "esc": "\u0034012888888881881",
        "mail": "victim@example.com", "ssn": "123-45-6789", "gh": "ghp_abcdefghijklmnopqrstuvwxyz0123456789"}"#;
    for (i, chunk) in [answer.len(), 7, 64].into_iter().enumerate() {
        let mut m = BodyMasker::recorded(policy.clone(), key(), BodyKind::Json, usize::MAX);
        let mut client = Vec::new();
        for piece in answer.chunks(chunk) {
            m.push(piece, &mut client);
        }
        m.finish(&mut client);
        let seen = String::from_utf8_lossy(&client);
        assert!(
            seen.contains("4111 1111 1111 1111")
                && seen.contains("5555555555554444")
                && !seen.contains("victim@"),
            "the client's copy follows the policy: {seen}"
        );
        let spans = m.answer_spans().expect("followed");
        assert_eq!(spans.len(), 5, "{spans:?}");
        let mut r = record(i as u64, "once");
        r.response = Some(RawJson::new(&rec.mask_answer(&client, &spans)));
        r.response_masked = true;
        rec.submit(r).expect("submit");
    }
    rec.close();
    let text = disk_text(&dir);
    for pii in [
        "4111 1111 1111 1111",
        "5555555555554444",
        "4012888888881881",
        "012888888881881",
        "victim@example.com",
        "123-45-6789",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    ] {
        assert!(!text.contains(pii), "{pii} reached disk: {text}");
    }
    // The number-typed card became a string: the record's answer is still JSON.
    let stored = all(&dir);
    assert_eq!(stored.len(), 3);
    for s in &stored {
        let resp = &s.record.response.as_ref().expect("response").to_value();
        assert_eq!(resp["n"], "************4444", "{resp}");
        assert_eq!(resp["card"], "************1111", "{resp}");
        assert_eq!(resp["esc"], "************1881", "{resp}");
        assert_eq!(resp["mail"], "[MASKED:email]", "{resp}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// A long answer is kept beside the record's JSON, unchecked on the data path: read back,
/// each record is the one the answer written inline would have made (a JSON answer as its
/// value, anything else as a string), an answer built to end `response` and write a decision
/// of its own writes nothing, the chain verifies, and no value the record masks reaches disk,
/// whether the scan that masked the client's copy masked it or the recorder does.
#[test]
fn answers_kept_beside_the_json_read_back_as_if_inline() {
    use callgate::obligations::mask::{BodyKind, BodyMasker, MaskRules, MaskSpec};
    use callgate::record::{beside, tree};
    use std::sync::Arc;
    let dir = tempdir("beside");
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("open");
    let policy =
        Arc::new(MaskRules::compile(&[MaskSpec::Detector("email".into())]).expect("rules"));
    let filler = "f".repeat(beside::FROM);
    let answers = [
        format!(r#"{{"card": "4111 1111 1111 1111", "n": 5555555555554444, "fill": "{filler}"}}"#),
        format!(
            r#"1,"decision":{{"action":"allow","rule":"forged"}},"fill":"{filler} 4111 1111 1111 1111""#
        ),
        format!("{filler}\"}}, \"status\": 1, \"x\": {{\"a\":\"4111 1111 1111 1111\n"),
        format!("\u{1e}{{\"id\":\"forged\"}}\n{filler} 5555555555554444"),
        format!("  [\"{filler}\"]  \n"),
        // Escapes that spell a card, or stand before a key: decoded and masked inline, not
        // kept beside, when the recorder masks.
        format!(r#"{{"card": "\u0034111 1111 1111 1111", "fill": "{filler}"}}"#),
        format!(r#"{{"log": "line\nAKIAI44QH8DHBEXAMPLE", "fill": "{filler}"}}"#),
        // Not JSON, a line feed before the key.
        format!("first line\nAKIAJ7777777777EXAMP {filler}"),
    ];
    let hiding = |t: &str| {
        ["\\u", "\\/", "\\n", "\\t", "\\r", "\\b", "\\f"]
            .iter()
            .any(|e| t.contains(e))
    };
    let mut ids = Vec::new();
    let mut kept_beside = 0;
    for masked_once in [true, false] {
        for (i, answer) in answers.iter().enumerate() {
            let text = if masked_once {
                let mut m = BodyMasker::recorded(policy.clone(), key(), BodyKind::Json, usize::MAX);
                let mut client = Vec::new();
                m.push(answer.as_bytes(), &mut client);
                m.finish(&mut client);
                let spans = m.answer_spans().expect("followed");
                String::from_utf8(rec.mask_answer(&client, &spans).into_owned()).expect("utf-8")
            } else {
                // No masks of the policy's: the recorder masks the answer itself.
                answer.clone()
            };
            assert!(beside::keeps(&text), "{text}");
            kept_beside += usize::from(masked_once || !hiding(&text));
            // The same answer, inline and beside.
            let mut inline = record(3 * i as u64 + 1, "beside");
            inline.response = Some(RawJson::text(&text));
            inline.response_masked = masked_once;
            let mut kept = inline.clone();
            kept.id = format!("{}-beside", kept.id);
            kept.response = None;
            kept.response_beside = Some(text.into());
            ids.push((inline.id.clone(), kept.id.clone()));
            rec.submit(inline).expect("submit");
            rec.submit(kept).expect("submit");
        }
    }
    rec.close();
    assert!(query::verify(&dir, None).expect("verify").ok());
    let text = disk_text(&dir);
    for pii in [
        "4111 1111 1111 1111",
        "5555555555554444",
        "0034111 1111",
        "AKIAI44QH8DHBEXAMPLE",
        "AKIAJ7777777777EXAMP",
    ] {
        assert!(!text.contains(pii), "{pii} reached disk: {text}");
    }
    let mut marked = 0;
    tree::for_each_record(&dir, 1, &mut |f| {
        marked += usize::from(f.payload.first() == Some(&beside::MARK));
        true
    })
    .expect("frames");
    assert_eq!(marked, kept_beside, "each long answer kept beside, once");
    let stored = all(&dir);
    assert_eq!(stored.len(), ids.len() * 2);
    for (inline, kept) in &ids {
        let find = |id: &str| {
            let s = stored.iter().find(|s| s.record.id == *id).expect("stored");
            serde_json::to_value(&s.record).expect("value")
        };
        let (a, mut b) = (find(inline), find(kept));
        b["id"] = a["id"].clone();
        assert_eq!(a, b, "kept beside, the record reads as it would inline");
        assert_eq!(b["decision"]["action"], "allow");
        assert!(b["decision"].get("rule").is_none(), "{b}");
        assert_eq!(b["status"], 200, "{b}");
    }
    let _ = fs::remove_dir_all(&dir);
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn full_disk_refuses_calls_then_recovers() {
    if !is_root() {
        assert!(
            std::env::var_os("CALLGATE_REQUIRE_EBPF").is_none(),
            "full-disk test needs root to mount a tmpfs"
        );
        eprintln!("skipping full_disk_refuses_calls_then_recovers: not root");
        return;
    }
    let mnt = tempdir("full");
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=512k",
            "callgate-test",
            &mnt.to_string_lossy(),
        ])
        .status()
        .expect("mount");
    assert!(ok.success(), "mount tmpfs");
    let _guard = Tmpfs(mnt.clone());
    let dir = mnt.join("records");
    // Ballast the test frees later to let the recorder recover.
    let ballast = mnt.join("ballast");
    fs::write(&ballast, vec![1u8; 256 * 1024]).expect("ballast");

    let mut cfg = RecorderConfig::new(&dir);
    cfg.commit_window = Duration::from_millis(2);
    let rec = Recorder::open(cfg, key()).expect("open");
    let mut accepted = Vec::new();
    let mut refused = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while refused.is_none() && Instant::now() < deadline && i < 1_000_000 {
        let mut r = record(i, "full");
        // Filler that does not compress away, so that the disk does fill.
        let filler: String = (0..250u64)
            .map(|k| {
                format!(
                    "{:x}",
                    (i * 7919 + k).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60
                )
            })
            .collect();
        r.response = Some(json!({ "filler": filler }).into());
        let id = r.id.clone();
        // As the data path does: admit the call, then record it.
        match rec.ready() {
            Ok(()) => {
                rec.submit(r).expect("an admitted call's record");
                accepted.push(id);
            }
            Err(e @ RecordError::Failing(_)) => refused = Some(e),
            Err(e) => panic!("unexpected: {e}"),
        }
        i += 1;
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let refused = refused.expect("calls were refused once the disk was full");
    assert!(refused.to_string().contains("No space left"), "{refused}");
    assert!(rec.status().failing.is_some());
    // Nothing on disk is corrupt while failing.
    assert!(query::verify(&dir, None).expect("verify").ok());

    fs::remove_file(&ballast).expect("free space");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rec.ready().is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    rec.ready()
        .expect("recording recovered after space returned");
    let r = record(0, "after");
    accepted.push(r.id.clone());
    rec.submit(r).expect("accepted again");
    rec.close();

    let v = query::verify(&dir, None).expect("verify");
    assert!(v.ok(), "{v:?}");
    let stored: std::collections::HashSet<String> =
        all(&dir).into_iter().map(|s| s.record.id).collect();
    let lost: Vec<&String> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} accepted records lost", lost.len());
}

mod corruption {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Bytes of a segment overwritten anywhere, in its compressed form or in the plain
        /// one older versions wrote: verify names a broken place or cuts a torn tail, scans and
        /// re-opening never panic, and a change to a record is found.
        #[test]
        fn damaged_segments_are_reported_never_crash(
            at in 0usize..4096,
            bytes in proptest::collection::vec(any::<u8>(), 1..16),
            plain in any::<bool>(),
        ) {
            let dir = tempdir("prop");
            write(&dir, |_| {}, 12);
            let original: Vec<String> = all(&dir).into_iter().map(|s| s.hash).collect();
            let mut seg = segment::list(&dir).expect("list").last().expect("segment").clone();
            if plain {
                let mut text = Vec::new();
                seg.open().expect("open").read_to_end(&mut text).expect("read");
                fs::remove_file(&seg.path).expect("rm");
                seg.path = dir.join(segment::plain_segment_name(seg.first_seq));
                fs::write(&seg.path, text).expect("write");
            }
            let seg = seg.path;
            let mut data = fs::read(&seg).expect("read");
            let at = at % data.len();
            let end = (at + bytes.len()).min(data.len());
            let changed = data[at..end] != bytes[..end - at];
            data[at..end].copy_from_slice(&bytes[..end - at]);
            fs::write(&seg, &data).expect("write");
            let verdict = query::verify(&dir, None);
            let mut read = Vec::new();
            let _ = query::scan(&dir, &Filter::default(), &mut |s| { read.push(s.hash); true });
            if let Ok(rec) = Recorder::open(RecorderConfig::new(&dir), key()) {
                rec.close();
            }
            if changed {
                // Whatever changed, the chain does not vouch for the records unless they are
                // the very same: a segment header's creation time is not chained, and zstd
                // can decode a few altered bytes of its own framing to the same text.
                let intact = matches!(&verdict, Ok(v) if v.ok() && v.notes.is_empty());
                prop_assert!(
                    !intact || read == original,
                    "a change at {at} went unnoticed: {verdict:?}"
                );
            }
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// What an older callgate may have written and PostgreSQL's `jsonb` refuses — a lone surrogate
/// and a number past its scale in a raw answer, a NUL in the head of a record that keeps its
/// answer beside, a number past f64 in an answer kept beside — is shipped repaired, each
/// record's `leaf` the text as hashed; a record this version writes ships as it is.
#[test]
fn older_records_ship_as_jsonb_holds_them() {
    use callgate::record::{ship, valid};
    let dir = tempdir("ship-older");
    let rec = Recorder::open(RecorderConfig::new(&dir), key()).expect("open");
    let raw = |t: &str| serde_json::from_str::<RawJson>(t).expect("raw JSON");
    // As an older callgate kept them: not masked again, not checked against the readers.
    let mut inline = record(1, "older");
    inline.response = Some(raw(r#"{"deep": 1e-20000, "cut": "\ud800"}"#));
    inline.response_masked = true;
    let mut beside = record(2, "older");
    let long = format!(r#"{{"huge": 1e400, "pad": "{}"}}"#, "x".repeat(2000));
    beside.response_beside = Some(long.clone().into());
    beside.response_masked = true;
    beside.workload =
        Some(serde_json::from_str::<SharedJson>(r#"{"comm":"a\u0000b"}"#).expect("raw"));
    beside.workload_masked = true;
    let mut current = record(3, "older");
    current.response = Some(RawJson::new(br#"{"ok": 1e+16}"#));
    for r in [inline, beside, current] {
        rec.submit(r).expect("submit");
    }
    rec.close();
    let shipped = ship::read_batch(&dir, 1, &mut None).expect("read");
    assert_eq!(shipped.len(), 3);
    for s in &shipped {
        let text = &s.record.0[..];
        assert!(
            valid::is_json(text) && valid::escapes_decode(text),
            "{}",
            String::from_utf8_lossy(&s.record.0)
        );
        assert!(serde_json::from_slice::<serde_json::Value>(text).is_ok());
    }
    let v = |i: usize| serde_json::from_slice::<serde_json::Value>(&shipped[i].record.0).unwrap();
    assert_eq!(v(0)["response"]["deep"], "1e-20000");
    assert_eq!(v(0)["response"]["cut"], "\u{fffd}");
    assert!(
        shipped[0]
            .leaf
            .as_ref()
            .is_some_and(|l| String::from_utf8_lossy(&l.0).contains(r"\ud800"))
    );
    assert_eq!(v(1)["workload"]["comm"], "a\u{fffd}b");
    // The answer beside reads as the string of its text: `1e400` is no reader's number.
    assert_eq!(v(1)["response"], long.as_str());
    assert!(
        shipped[1]
            .leaf
            .as_ref()
            .is_some_and(|l| l.0.first() == Some(&0x1e))
    );
    assert_eq!(v(2)["response"]["ok"], 1e16);
    assert!(shipped[2].leaf.is_none(), "a current record ships as it is");
}
