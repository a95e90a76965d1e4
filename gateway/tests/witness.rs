//! The witness client against an in-process `callgate witness` (no eBPF needed): every new
//! checkpoint is cosigned, the consistency proof is made from the size the witness holds,
//! a witness that lost its state (409 with size 0) is caught up from nothing, and one that
//! is given a log it was not told about answers 404, which `status` shows. With the witnesses'
//! keys, a forged cosignature is refused and `records verify --witness-key` names the
//! witnesses that are missing or bad; the final checkpoint reaches the witnesses at stop.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use callgate::{
    obligations::mask::MaskKey,
    record::{
        Record, Recorder, RecorderConfig,
        note::Signer,
        witness::{CosignatureVerifier, Cosigner},
        witness_client::{self, Target, WitnessStatus},
        witness_server::Witness,
    },
    util::outbound::Outbound,
};

const ORIGIN: &str = "test.example/callgate/records";

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("callgate-witc-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("temp dir");
    d
}

async fn submit(rec: &Recorder, n: u64) -> u64 {
    for i in 0..n {
        let mut r = Record::new("conn", "127.0.0.1:18080");
        r.protocol = "rest".into();
        r.function = Some(format!("f{i}"));
        r.decision.action = "allow".into();
        rec.submit(r).expect("submit");
    }
    let r = rec.clone();
    tokio::task::spawn_blocking(move || r.sync())
        .await
        .expect("join")
        .expect("sync")
}

async fn wait_status(
    rec: &Recorder,
    what: &str,
    f: impl Fn(&WitnessStatus) -> bool,
) -> WitnessStatus {
    let start = Instant::now();
    loop {
        let w = rec.status().witnesses;
        if let Some(w) = w.first()
            && f(w)
        {
            return w.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {:?}",
            rec.status().witnesses
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve(w: Arc<Witness>) -> (String, tokio::sync::watch::Sender<bool>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(w.serve(l, rx));
    (url, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_cosigned_and_a_witness_that_lost_its_state_is_caught_up() {
    let dir = tempdir("log");
    let wdir = tempdir("witness");
    let signer = Arc::new(Signer::generate(ORIGIN).expect("key"));
    let mut c = RecorderConfig::new(dir.join("records"));
    c.signer = Some(signer.clone());
    c.origin = ORIGIN.into();
    c.checkpoint_interval = Duration::ZERO;
    c.commit_window = Duration::from_millis(1);
    let rec = Recorder::open(c, MaskKey::from_bytes([3; 32])).expect("open");
    let witness =
        Arc::new(Witness::open(&wdir, "w.example/w", vec![signer.verifier()]).expect("w"));
    let wkey = CosignatureVerifier::parse(&witness.key().verifier().encode()).expect("wkey");
    let (url, _stop_server) = serve(witness.clone()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = witness_client::start(
        &rec,
        std::slice::from_ref(&url),
        Outbound::with_system_roots(),
        stop_rx,
    );

    assert_eq!(submit(&rec, 10).await, 10);
    let st = wait_status(&rec, "size 10", |w| w.size == 10).await;
    assert!(
        st.last_error.is_none() && st.last_success_ms.is_some(),
        "{st:?}"
    );
    // Proofs from the size held.
    for n in [11, 17, 32] {
        let now = submit(&rec, n - rec.status().durable_seq).await;
        assert_eq!(now, n);
        wait_status(&rec, "grows", |w| w.size == n).await;
        assert_eq!(witness.latest(ORIGIN).expect("held").0.size, n);
    }
    // The cosignature kept beside the checkpoint verifies with the witness's key.
    let stored = witness_client::stored(&dir.join("records"));
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].size, 32);
    let (text, sigs) = stored[0].cosigned.split_once("\n\n").expect("note");
    let lines: Vec<String> = sigs.lines().map(str::to_string).collect();
    assert!(
        wkey.verify(&format!("{text}\n"), &lines).is_some(),
        "{sigs}"
    );

    // The witness loses its state: 409 with size 0, and the client starts from nothing.
    fs::remove_dir_all(wdir.join("logs")).expect("forget");
    submit(&rec, 3).await;
    let st = wait_status(&rec, "caught up", |w| w.size == 35).await;
    assert!(st.last_error.is_none(), "{st:?}");

    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.expect("task");
    }
    rec.close();
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&wdir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_that_does_not_know_the_log_is_reported() {
    let dir = tempdir("unknown");
    let wdir = tempdir("unknown-w");
    let signer = Arc::new(Signer::generate(ORIGIN).expect("key"));
    let other = Signer::generate("other.example/log").expect("other");
    let mut c = RecorderConfig::new(dir.join("records"));
    c.signer = Some(signer);
    c.origin = ORIGIN.into();
    c.checkpoint_interval = Duration::ZERO;
    let rec = Recorder::open(c, MaskKey::from_bytes([3; 32])).expect("open");
    let witness = Arc::new(Witness::open(&wdir, "w.example/w", vec![other.verifier()]).expect("w"));
    let (url, _stop_server) = serve(witness).await;
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let _tasks = witness_client::start(&rec, &[url], Outbound::with_system_roots(), stop_rx);
    submit(&rec, 2).await;
    let st = wait_status(&rec, "404", |w| {
        w.last_error.as_deref().is_some_and(|e| e.contains("404"))
    })
    .await;
    assert_eq!(st.size, 0);
    rec.close();
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&wdir);
}

fn recorder(dir: &Path, signer: &Arc<Signer>, interval: Duration) -> Recorder {
    let mut c = RecorderConfig::new(dir.join("records"));
    c.signer = Some(signer.clone());
    c.origin = ORIGIN.into();
    c.checkpoint_interval = interval;
    c.commit_window = Duration::from_millis(1);
    Recorder::open(c, MaskKey::from_bytes([3; 32])).expect("open")
}

fn keyed(url: &str, w: &Witness) -> Target {
    Target {
        url: url.to_string(),
        key: Some(w.key().verifier()),
    }
}

/// `callgate records ARGS --dir DIR`: (exit code, stdout and stderr).
fn records_cli(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callgate"))
        .arg("records")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("callgate records");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Answers every request 200 with a cosignature line by `name` and key ID `id` whose
/// signature is garbage (a witness that lies, or a forger in the middle).
async fn forger(name: String, id: [u8; 4]) -> String {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        for _ in 0..200 {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut raw = id.to_vec();
            raw.extend_from_slice(&[7u8; 72]);
            let body = format!(
                "\u{2014} {name} {}\n",
                base64::engine::general_purpose::STANDARD.encode(raw)
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_cosignature_is_refused_not_kept() {
    let dir = tempdir("forged");
    let signer = Arc::new(Signer::generate(ORIGIN).expect("key"));
    let rec = recorder(&dir, &signer, Duration::ZERO);
    let real = Cosigner::generate("w.example/forged").expect("w");
    let v = real.verifier();
    // The key ID is the real one's: only the signature is wrong.
    let id_line = real.cosign("x\n", 1);
    let raw = {
        use base64::Engine;
        let b64 = id_line.trim_end().rsplit_once(' ').expect("line").1;
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("b64")
    };
    let url = forger(v.name().to_string(), [raw[0], raw[1], raw[2], raw[3]]).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = witness_client::start_targets(
        &rec,
        &[Target {
            url: url.clone(),
            key: Some(v),
        }],
        0,
        Outbound::with_system_roots(),
        stop_rx,
    );
    submit(&rec, 3).await;
    let st = wait_status(&rec, "refused", |w| w.bad_cosignatures > 0).await;
    assert_eq!(st.size, 0, "{st:?}");
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("does not verify")),
        "{st:?}"
    );
    // Nothing was kept: no cosigned checkpoint to print.
    assert!(
        witness_client::stored(&dir.join("records"))
            .iter()
            .all(|s| s.cosigned.is_empty()),
        "a forged cosignature was kept"
    );
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.expect("task");
    }
    rec.close();
    let _ = fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_verify_checks_cosignatures_and_names_the_missing_and_bad() {
    let dir = tempdir("quorum");
    let (w1dir, w2dir) = (tempdir("quorum-w1"), tempdir("quorum-w2"));
    let signer = Arc::new(Signer::generate(ORIGIN).expect("key"));
    let log_key = signer.verifier().encode();
    let rec = recorder(&dir, &signer, Duration::ZERO);
    let w1 = Arc::new(Witness::open(&w1dir, "w.example/w1", vec![signer.verifier()]).expect("w1"));
    let w2 = Arc::new(Witness::open(&w2dir, "w.example/w2", vec![signer.verifier()]).expect("w2"));
    let (k1, k2) = (w1.key().verifier().encode(), w2.key().verifier().encode());
    let (u1, _s1) = serve(w1.clone()).await;
    let (u2, _s2) = serve(w2.clone()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = witness_client::start_targets(
        &rec,
        &[keyed(&u1, &w1), keyed(&u2, &w2)],
        2,
        Outbound::with_system_roots(),
        stop_rx,
    );
    submit(&rec, 5).await;
    let start = Instant::now();
    while rec.status().quorum_size != 5 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            rec.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records = dir.join("records");
    let (code, cosigned) = records_cli(&records, &["checkpoint", "--cosigned"]);
    assert_eq!(code, 0, "{cosigned}");
    let file = dir.join("cosigned");
    fs::write(&file, &cosigned).expect("write");
    let f = file.to_str().expect("path");
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--checkpoint", f, "--key", &log_key];
        args.extend_from_slice(extra);
        records_cli(&records, &args)
    };
    let (code, out) = verify(&["--witness-key", &k1, "--witness-key", &k2]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2 of 2 witness(es) valid, quorum 2 met"),
        "{out}"
    );

    // A forged cosignature: one byte of w2's signature changed. The
    // character changed is well inside the base64 text: the last one before
    // the padding also carries unused bits, and setting those makes the text
    // non-canonical base64 (refused as malformed, not as a bad signature).
    let forged: String = cosigned
        .lines()
        .map(|l| {
            if l.starts_with("\u{2014} w.example/w2 ") {
                let mut b = l.to_string();
                let at = b.trim_end_matches('=').len() - 10;
                let c = if &b[at..at + 1] == "A" { 'B' } else { 'A' };
                b.replace_range(at..at + 1, &c.to_string());
                b
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    assert_ne!(forged, cosigned);
    let forged_file = dir.join("forged");
    fs::write(&forged_file, &forged).expect("write");
    let (code, out) = records_cli(
        &records,
        &[
            "verify",
            "--checkpoint",
            forged_file.to_str().expect("path"),
            "--key",
            &log_key,
            "--witness-key",
            &k1,
            "--witness-key",
            &k2,
            "--quorum",
            "1",
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN: witness w.example/w2: its cosignature does not verify"),
        "{out}"
    );

    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.expect("task");
    }
    rec.close();

    // Quorum of 2 with one witness down: verify says which is missing.
    let dir2 = tempdir("quorum-down");
    let rec = recorder(&dir2, &signer, Duration::ZERO);
    let down = format!("http://127.0.0.1:{}", closed_port());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // w1 holds the first log at 5: tell it this log is new by giving it a fresh state.
    let w3dir = tempdir("quorum-w3");
    let w3 = Arc::new(Witness::open(&w3dir, "w.example/w3", vec![signer.verifier()]).expect("w3"));
    let k3 = w3.key().verifier().encode();
    let (u3, _s3) = serve(w3.clone()).await;
    let tasks = witness_client::start_targets(
        &rec,
        &[
            keyed(&u3, &w3),
            Target {
                url: down.clone(),
                key: Some(w2.key().verifier()),
            },
        ],
        2,
        Outbound::with_system_roots(),
        stop_rx,
    );
    submit(&rec, 4).await;
    wait_status(&rec, "w3 cosigned", |w| w.size == 4).await;
    let st = rec.status();
    assert_eq!(st.quorum_size, 0, "{st:?}");
    assert!(st.witnesses[1].last_error.is_some(), "{st:?}");
    let records2 = dir2.join("records");
    let (code, cosigned) = records_cli(&records2, &["checkpoint", "--cosigned"]);
    assert_eq!(code, 0, "{cosigned}");
    let file2 = dir2.join("cosigned");
    fs::write(&file2, &cosigned).expect("write");
    let f2 = file2.to_str().expect("path");
    let (code, out) = records_cli(
        &records2,
        &[
            "verify",
            "--checkpoint",
            f2,
            "--key",
            &log_key,
            "--witness-key",
            &k3,
            "--witness-key",
            &k2,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BROKEN: witness w.example/w2: no cosignature of this checkpoint"),
        "{out}"
    );
    assert!(
        out.contains("1 of 2 witness(es) valid, quorum 2 NOT met"),
        "{out}"
    );
    // A quorum of 1 is met.
    let (code, out) = records_cli(
        &records2,
        &[
            "verify",
            "--checkpoint",
            f2,
            "--key",
            &log_key,
            "--witness-key",
            &k3,
            "--witness-key",
            &k2,
            "--quorum",
            "1",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note: witness w.example/w2: no cosignature"),
        "{out}"
    );

    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    rec.close();
    for d in [&dir, &dir2, &w1dir, &w2dir, &w3dir] {
        let _ = fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_checkpoint_reaches_the_witness_at_stop() {
    let dir = tempdir("final");
    let wdir = tempdir("final-w");
    let signer = Arc::new(Signer::generate(ORIGIN).expect("key"));
    // Checkpoints at most hourly: only the first and the one signed at close.
    let rec = recorder(&dir, &signer, Duration::from_secs(3600));
    let witness =
        Arc::new(Witness::open(&wdir, "w.example/w", vec![signer.verifier()]).expect("w"));
    let (url, _stop_server) = serve(witness.clone()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = witness_client::start_targets(
        &rec,
        &[keyed(&url, &witness)],
        1,
        Outbound::with_system_roots(),
        stop_rx,
    );
    submit(&rec, 2).await;
    wait_status(&rec, "first", |w| w.size == 2).await;
    submit(&rec, 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(witness.latest(ORIGIN).expect("held").0.size, 2);
    // As the daemon stops: the writer signs its last checkpoint, then the tasks are told.
    tokio::task::spawn_blocking(move || rec.close())
        .await
        .expect("close");
    let started = Instant::now();
    let _ = stop_tx.send(true);
    for t in tasks {
        tokio::time::timeout(witness_client::FINAL_WAIT + Duration::from_secs(1), t)
            .await
            .expect("bounded")
            .expect("task");
    }
    assert!(started.elapsed() < witness_client::FINAL_WAIT + Duration::from_secs(1));
    assert_eq!(witness.latest(ORIGIN).expect("held").0.size, 7);
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&wdir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_behind_records_retention_removed_is_still_proved_to() {
    let dir = tempdir("retained");
    let wdir = tempdir("retained-w");
    let signer = Arc::new(Signer::generate(ORIGIN).expect("key"));
    let mut c = RecorderConfig::new(dir.join("records"));
    c.signer = Some(signer.clone());
    c.origin = ORIGIN.into();
    c.checkpoint_interval = Duration::ZERO;
    c.commit_window = Duration::from_millis(1);
    c.segment_bytes = 4 * 1024;
    c.retain_bytes = 12 * 1024;
    let rec = Recorder::open(c, MaskKey::from_bytes([3; 32])).expect("open");
    let witness =
        Arc::new(Witness::open(&wdir, "w.example/w", vec![signer.verifier()]).expect("w"));
    let (url, _stop_server) = serve(witness.clone()).await;
    let start = |rec: &Recorder| {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let tasks = witness_client::start_targets(
            rec,
            &[keyed(&url, &witness)],
            1,
            Outbound::with_system_roots(),
            rx,
        );
        (tx, tasks)
    };
    // The witness cosigns 13 (an odd size: the proof needs subtrees inside removed segments).
    let (tx, tasks) = start(&rec);
    submit(&rec, 13).await;
    wait_status(&rec, "13", |w| w.size == 13).await;
    let _ = tx.send(true);
    for t in tasks {
        t.await.expect("task");
    }
    // Many records while nobody sends: retention removes the segments after 13.
    let mut n = 13;
    for _ in 0..30 {
        n = submit(&rec, 40).await;
    }
    let records = dir.join("records");
    let first = callgate::record::segment::list(&records)
        .expect("segments")
        .first()
        .map(|s| s.first_seq)
        .expect("a segment");
    assert!(first > 100, "retention removed nothing: first seq {first}");
    assert!(
        fs::read_dir(&records)
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("bridge-")),
        "no bridge kept"
    );
    // The witness, still at 13, is proved to from there.
    let (tx, tasks) = start(&rec);
    let st = wait_status(&rec, "caught up past retention", |w| w.size == n).await;
    assert!(st.last_error.is_none(), "{st:?}");
    assert_eq!(witness.latest(ORIGIN).expect("held").0.size, n);
    let _ = tx.send(true);
    for t in tasks {
        t.await.expect("task");
    }
    rec.close();
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&wdir);
}
