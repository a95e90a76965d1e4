//! `cargo xtask bench --suite decide`: decision latency with 10, 100, 1,000 and 10,000 rules
//! spread over 100 services, and the time of a full reload of 1,000 rules.
//!
//! Goals (issue 4): p99 ≤ 2 µs at 1,000 rules; full reload of 1,000 rules ≤ 100 ms.
//! Each call is aimed at the *last* rule of its function, the worst case for first-match.
use std::{hint::black_box, path::PathBuf, time::Instant};

use callgate::call::{Call, Caller};
use callgate::policy::{self, Snapshot};
use callgate_benches::{Samples, micros};
use criterion::{BenchmarkId, Criterion};
use serde_json::json;

const SERVICES: usize = 100;
const FUNCTIONS: usize = 5;

/// Writes a repository with `rules` rules, each with a caller and two argument conditions.
fn repo(rules: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("callgate-bench-{rules}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("services")).expect("mkdir");
    std::fs::write(dir.join("callgate.yaml"), "default_action: deny\n").expect("write");
    let per_service = rules.div_ceil(SERVICES);
    for s in 0..SERVICES.min(rules) {
        let mut text = format!(
            "service: s{s}\nmatch: {{ hosts: [\"s{s}.internal:443\"] }}\nprotocol: jsonrpc\nfunctions:\n"
        );
        for f in 0..FUNCTIONS {
            text.push_str(&format!("  f{f}: {{}}\n"));
        }
        text.push_str("rules:\n");
        for r in 0..per_service {
            text.push_str(&format!(
                "  - name: r{r}\n    function: f{}\n    caller: {{ groups: [g{r}] }}\n    args: {{ amount: {{ max: {} }}, currency: {{ in: [USD, EUR] }} }}\n    action: allow\n",
                r % FUNCTIONS,
                r * 10 + 10
            ));
        }
        std::fs::write(dir.join("services").join(format!("s{s}.yaml")), text).expect("write");
    }
    dir
}

/// The call and caller that only the last rule of the busiest function matches.
fn worst_case(snap: &Snapshot, rules: usize) -> (usize, Call, Caller) {
    let per_service = rules.div_ceil(SERVICES);
    let last = per_service - 1;
    let call = Call {
        function: format!("f{}", last % FUNCTIONS),
        args: json!({"amount": 5, "currency": "EUR"}),
        ..Call::default()
    };
    let caller = Caller {
        subject: Some("u".into()),
        groups: vec![format!("g{last}")],
        authenticated: true,
        ..Default::default()
    };
    let idx = snap.services.len() / 2;
    (idx, call, caller)
}

fn main() {
    let mut c = Criterion::default().configure_from_args().sample_size(50);
    let mut summary = Vec::new();
    for rules in [10, 100, 1_000, 10_000] {
        let dir = repo(rules);
        let (_, snap) = policy::load_snapshot(&dir).expect("bench repo compiles");
        let (idx, call, caller) = worst_case(&snap, rules);
        let service = &snap.services[idx];
        assert_eq!(
            snap.decide(service, &call, &caller).action,
            policy::Action::Allow,
            "the worst case matches"
        );
        c.bench_with_input(BenchmarkId::new("decide", rules), &rules, |b, _| {
            b.iter(|| {
                black_box(snap.decide(black_box(service), black_box(&call), black_box(&caller)))
            })
        });
        // Per-call percentiles, batched by 10 to keep timer overhead out of the figure.
        let mut samples = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            for _ in 0..10 {
                black_box(snap.decide(service, &call, &caller));
            }
            samples.push(t.elapsed() / 10);
        }
        let s = Samples::new(samples);
        let reload = {
            let mut times = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                black_box(policy::load_snapshot(&dir).expect("reload"));
                times.push(t.elapsed());
            }
            Samples::new(times).pct(50.0)
        };
        summary.push((
            rules,
            micros(s.pct(50.0)),
            micros(s.pct(99.0)),
            reload.as_secs_f64() * 1e3,
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
    c.final_summary();
    println!("\ndecide suite ({SERVICES} services, worst-case call: last rule of its function)");
    println!(
        "{:>8} {:>12} {:>12} {:>14}",
        "rules", "p50 (us)", "p99 (us)", "reload (ms)"
    );
    for (rules, p50, p99, reload) in &summary {
        println!("{rules:>8} {p50:>12.3} {p99:>12.3} {reload:>14.1}");
    }
    if let Some((_, _, p99, reload)) = summary.iter().find(|s| s.0 == 1_000) {
        println!(
            "at 1,000 rules: p99 {p99:.3} us (goal <= 2 us), full reload {reload:.1} ms (goal <= 100 ms)"
        );
    }
}
