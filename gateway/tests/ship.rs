//! Record shipping to the fleet database, end to end and timed: records written to a real
//! log by the recorder, shipped by `record::ship` through `fleet::Fleet` to the PostgreSQL
//! named by `CALLGATE_FLEET_PG` (a URL; run it with `--ignored`), until the database
//! has every one. `CALLGATE_SHIP_N` records (default 100,000), shipped
//! `CALLGATE_SHIP_ROUNDS` times (default 2) each way, interleaved: alternating (read a
//! batch, insert it, wait, read the next: how shipping ran before) and pipelined (what the
//! daemon runs), each round as a host of its own. The figures in docs/FLEET.md ("Measured
//! here") come from this test in the `demo` profile.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use callgate::{
    config::FleetConfig,
    fleet::Fleet,
    obligations::mask::MaskKey,
    record::{Record, Recorder, RecorderConfig, ship},
};
use serde_json::json;

fn record(i: u64) -> Record {
    let mut r = Record::new(format!("conn-{}", i % 7), "127.0.0.1:18080");
    r.service = Some("payments".into());
    r.function = Some(
        if i.is_multiple_of(2) {
            "refund"
        } else {
            "show"
        }
        .into(),
    );
    r.protocol = "rest".into();
    r.args = Some(json!({"payment_id": format!("p_{i}"), "amount": i, "note": "shipped"}));
    r.decision.action = if i.is_multiple_of(3) { "deny" } else { "allow" }.into();
    r.decision.enforced = true;
    r.status = Some(200);
    r.latency_ms = 1.5;
    r
}

#[test]
#[ignore = "a throughput probe against the PostgreSQL in CALLGATE_FLEET_PG, not a test"]
fn records_shipped_end_to_end() {
    let url = std::env::var("CALLGATE_FLEET_PG")
        .expect("CALLGATE_FLEET_PG: the URL of the PostgreSQL to ship to");
    let n: u64 = std::env::var("CALLGATE_SHIP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("CALLGATE_SHIP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = std::env::temp_dir().join(format!(
        "callgate-ship-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("records dir");
    let rec =
        Recorder::open(RecorderConfig::new(&dir), MaskKey::from_bytes([3; 32])).expect("open");
    let written = Instant::now();
    for i in 0..n {
        rec.submit(record(i)).expect("submit");
        if i % 5000 == 4999 {
            rec.sync().expect("sync");
        }
    }
    let last = rec.sync().expect("sync");
    rec.close();
    eprintln!("ship: {n} records written in {:?}", written.elapsed());
    assert_eq!(last, n);

    read_alone(&dir, n);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for round in 0..rounds {
        for (name, depth) in [
            ("alternating", ship::Depth::ALTERNATING),
            ("pipelined", ship::Depth::PIPELINED),
        ] {
            let host = format!("ship-{}-{round}-{name}", std::process::id());
            let rate = rt.block_on(ship_all(&url, host, &dir, n, depth));
            eprintln!(
                "ship: round {round} {name}: {rate:.0} records/s (load {})",
                std::fs::read_to_string("/proc/loadavg")
                    .unwrap_or_default()
                    .trim()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The gateway's side alone: reading the log back as the shipper does (segments
/// decompressed, frames, `time_ms`, the hash in hex), nothing sent; and what the serde pass
/// for `time_ms` (before it was read after the id) cost on the same records.
fn read_alone(dir: &Path, n: u64) {
    #[derive(serde::Deserialize)]
    struct Time {
        #[serde(default)]
        #[allow(dead_code)]
        time_ms: u64,
    }
    let read = Instant::now();
    let (mut from, mut cursor, mut got) = (0, None, 0);
    let mut payloads = Vec::new();
    for _ in 0..=n as usize / ship::BATCH + 1 {
        let b = ship::read_batch(dir, from, &mut cursor).expect("read");
        let Some(l) = b.last() else { break };
        got += b.len();
        from = l.seq + 1;
        payloads.extend(b.into_iter().map(|r| r.record.0));
    }
    let read = read.elapsed();
    let serde = Instant::now();
    let parsed = payloads
        .iter()
        .filter(|p| serde_json::from_slice::<Time>(p).is_ok())
        .count();
    let serde = serde.elapsed();
    assert_eq!(parsed, got);
    eprintln!(
        "ship: reading alone: {got} records in {read:?}: {:.0} records/s; \
         a serde pass for time_ms over them: {serde:?}",
        got as f64 / read.as_secs_f64().max(1e-9)
    );
}

/// Ships the log in `dir` as `host`; records per second from the first batch seen in the
/// database until it has all `n`, with no gap.
async fn ship_all(url: &str, host: String, dir: &Path, n: u64, depth: ship::Depth) -> f64 {
    let cfg = FleetConfig {
        database: url.to_owned(),
        host,
        heartbeat: Duration::from_secs(2),
        dead_after: Duration::from_secs(10),
        pool_size: 4,
        ca: None,
        trusted_keys: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fleet = Fleet::start(cfg, stop_rx.clone()).await.expect("fleet");
    assert!(fleet.connected(), "{:?}", fleet.status());
    let started = Instant::now();
    let task = ship::start_with(fleet.clone(), dir.to_owned(), stop_rx, depth);
    let mut first: Option<Instant> = None;
    let deadline = started + Duration::from_secs(300);
    loop {
        let up_to = fleet.shipped_up_to().await.expect("max seq");
        if up_to.is_some() && first.is_none() {
            first = Some(Instant::now());
        }
        // Inserts run in parallel: the highest is in before the last gap is filled.
        if up_to == Some(n)
            && ship::resume_after(
                &fleet
                    .shipped_last(ship::RESUME_WINDOW)
                    .await
                    .expect("last rows"),
            ) == n + 1
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all shipped: up to {up_to:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = Instant::now();
    // The shipper waits its first second before looking: the rate counts from the first
    // batch seen in the database (its own records included).
    let from_first = done - first.unwrap_or(started);
    eprintln!(
        "ship: {n} records in the database {:?} after the shipper started; \
         {from_first:?} from the first batch seen",
        done - started
    );
    let _ = stop_tx.send(true);
    let _ = task.await;
    n as f64 / from_first.as_secs_f64().max(1e-9)
}
