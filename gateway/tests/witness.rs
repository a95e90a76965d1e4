//! The witness client against an in-process `callgate witness` (no eBPF needed): every new
//! checkpoint is cosigned, the consistency proof is made from the size the witness holds,
//! a witness that lost its state (409 with size 0) is caught up from nothing, and one that
//! is given a log it was not told about answers 404, which `status` shows.
use std::{
    fs,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use callgate::{
    obligations::mask::MaskKey,
    record::{
        Record, Recorder, RecorderConfig,
        note::Signer,
        witness::CosignatureVerifier,
        witness_client::{self, WitnessStatus},
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
