//! Record shipping to the fleet database, end to end and timed: records written to a real
//! log by the recorder, shipped by `record::ship` through `fleet::Fleet` to the PostgreSQL
//! named by `CALLGATE_FLEET_PG` (a URL; run it with `--ignored`), until the database
//! has every one. `CALLGATE_SHIP_N` records (default 100,000). The figure in docs/FLEET.md
//! ("Measured here") comes from this test in the `demo` profile.
use std::time::{Duration, Instant};

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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let host = format!("ship-{}", std::process::id());
        let cfg = FleetConfig {
            database: url,
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
        let task = ship::start(fleet.clone(), dir.clone(), stop_rx);
        let mut first: Option<Instant> = None;
        let deadline = started + Duration::from_secs(300);
        loop {
            let up_to = fleet.shipped_up_to().await.expect("max seq");
            if up_to.is_some() && first.is_none() {
                first = Some(Instant::now());
            }
            if up_to == Some(n) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not all shipped: up to {up_to:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let done = Instant::now();
        let total = done - started;
        // The shipper waits its first second before looking: the rate counts from the
        // first batch seen in the database (its own 2,000 records included).
        let from_first = done - first.unwrap_or(started);
        eprintln!(
            "ship: {n} records in the database {total:?} after the shipper started; \
             {from_first:?} from the first batch seen: {:.0} records/s",
            n as f64 / from_first.as_secs_f64().max(1e-9)
        );
        let _ = stop_tx.send(true);
        let _ = task.await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
