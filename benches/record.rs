//! `cargo xtask bench --suite record`: recorder throughput with buffered durability (group
//! commit), and the latency a strict-mode caller waits for its fsync, alone and with
//! concurrent callers sharing fsyncs.
//!
//! Goals (issue 5): ≥ 200k records/s buffered; strict-mode latency reported. Baseline in the
//! same run: one `fdatasync` of a small append on the same filesystem. And the check that an
//! answer is one JSON value before the record keeps it as its text (`record/json check`),
//! next to `serde_json`'s raw-value parse of the same answers, the l7 bench's 160 B and 16 KiB.
use std::{
    hint::black_box,
    io::Write,
    path::PathBuf,
    time::{Duration, Instant},
};

use callgate::{
    config::Durability,
    obligations::mask::MaskKey,
    record::{Record, Recorder, RecorderConfig, valid::is_json},
};
use callgate_benches::{BODY, Samples, micros};
use callgate_e2e::json_of_size;
use criterion::Criterion;
use serde_json::json;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("callgate-bench-rec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn record(i: u64) -> Record {
    let mut r = Record::new(format!("conn-{}", i % 64), "10.0.0.7:8080");
    r.service = Some("payments".into());
    r.function = Some("refund".into());
    r.protocol = "rest".into();
    r.args = Some(json!({"payment_id": format!("pay_{i}"), "amount": 42, "currency": "EUR"}));
    r.caller = Some(json!({"subject": "svc-billing", "groups": ["support"]}));
    r.workload = Some(
        json!({"pid": 4242, "uid": 1000, "comm": "python3", "unit": "billing.service"}).into(),
    );
    r.decision.action = "allow".into();
    r.decision.enforced = true;
    r.decision.rule = Some("support-small-refunds".into());
    r.decision.policy_commit = Some("b57b6be".into());
    r.status = Some(200);
    r.response = Some(json!({"id": format!("re_{i}"), "status": "succeeded"}).into());
    r.latency_ms = 3.2;
    r.bytes_in = 180;
    r.bytes_out = 95;
    r
}

/// Submits `n` records and waits until they are all durable; records/s.
fn buffered(n: u64) -> f64 {
    let d = dir("buffered");
    let rec = Recorder::open(RecorderConfig::new(&d), MaskKey::from_bytes([1; 32])).expect("open");
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        // The writer is behind: wait, where a real caller would get a 503.
        if rec.ready().is_err() {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        rec.submit(record(i)).expect("submit");
        i += 1;
    }
    rec.close();
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&d);
    rate
}

/// Per-record strict latency with `callers` threads submitting concurrently.
fn strict(callers: usize, per_caller: usize) -> Samples {
    let d = dir("strict");
    let mut cfg = RecorderConfig::new(&d);
    cfg.durability = Durability::Strict;
    let rec = Recorder::open(cfg, MaskKey::from_bytes([1; 32])).expect("open");
    let samples = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|c| {
                let rec = rec.clone();
                s.spawn(move || {
                    let mut out = Vec::with_capacity(per_caller);
                    for i in 0..per_caller {
                        let t = Instant::now();
                        let durable = rec
                            .submit(record((c * per_caller + i) as u64))
                            .expect("submit")
                            .expect("strict");
                        durable.wait_blocking().expect("durable");
                        out.push(t.elapsed());
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("caller"))
            .collect::<Vec<_>>()
    });
    rec.close();
    let _ = std::fs::remove_dir_all(&d);
    Samples::new(samples)
}

fn fdatasync_baseline() -> Samples {
    let d = dir("fsync");
    std::fs::create_dir_all(&d).expect("dir");
    let mut f = std::fs::File::create(d.join("f")).expect("file");
    let mut out = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&[0u8; 600]).expect("write");
        f.sync_data().expect("fsync");
        out.push(t.elapsed());
    }
    let _ = std::fs::remove_dir_all(&d);
    Samples::new(out)
}

fn main() {
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    c.bench_function("record/submit+serialize+mask", |b| {
        let d = dir("criterion");
        let rec =
            Recorder::open(RecorderConfig::new(&d), MaskKey::from_bytes([1; 32])).expect("open");
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            while rec.ready().is_err() {
                std::thread::sleep(Duration::from_micros(50));
            }
            rec.submit(black_box(record(i))).expect("submit");
        });
        rec.close();
        let _ = std::fs::remove_dir_all(&d);
    });
    let large = json_of_size(16 * 1024);
    for (size, answer) in [("160 B", BODY.as_bytes()), ("16 KiB", large.as_bytes())] {
        c.bench_function(&format!("record/json check/{size}"), |b| {
            b.iter(|| assert!(is_json(black_box(answer))))
        });
        c.bench_function(&format!("record/serde_json raw value/{size}"), |b| {
            b.iter(|| {
                serde_json::from_slice::<Box<serde_json::value::RawValue>>(black_box(answer))
                    .expect("json")
            })
        });
    }
    c.final_summary();
    let rates: Vec<f64> = (0..3).map(|_| buffered(300_000)).collect();
    let best = rates.iter().cloned().fold(0.0, f64::max);
    let base = fdatasync_baseline();
    let alone = strict(1, 300);
    let shared = strict(8, 200);
    println!("\nrecord suite (typical ~600-byte record, masked, JSON, SHA-256 chained)");
    println!(
        "buffered (10 ms group commit): best {best:.0} records/s of runs {:?} (goal >= 200000)",
        rates.iter().map(|r| *r as u64).collect::<Vec<_>>()
    );
    println!(
        "fdatasync baseline:          p50 {:>8.1} us  p99 {:>8.1} us",
        micros(base.pct(50.0)),
        micros(base.pct(99.0))
    );
    println!(
        "strict, 1 caller:            p50 {:>8.1} us  p99 {:>8.1} us",
        micros(alone.pct(50.0)),
        micros(alone.pct(99.0))
    );
    println!(
        "strict, 8 callers:           p50 {:>8.1} us  p99 {:>8.1} us (fsyncs shared by the group)",
        micros(shared.pct(50.0)),
        micros(shared.pct(99.0))
    );
}
