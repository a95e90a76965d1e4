//! The memory held for inspection is bounded across connections: many slow uploads at once,
//! from an unmodified client in an enabled cgroup, against a small `http.max_inspected_mb`.
//! Those the budget has room for are decided and forwarded; the excess get 503
//! `inspection_busy` without reaching the upstream; the gateway's RSS stays near its size.
use std::{
    fs,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use callgate_e2e::*;
use serde_json::Value;

/// Resident KiB of process `pid`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A JSON-RPC service whose `ledger.balance` calls are allowed (and so read for a decision).
fn ledger(port: u16) -> String {
    format!(
        r#"
service: ledger
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: jsonrpc
functions:
  balance: {{ method: ledger.balance }}
rules:
  - {{ name: balances, function: balance, action: allow }}
"#
    )
}

#[test]
fn many_slow_uploads_share_a_bounded_inspection_budget() {
    const TEST: &str = "many_slow_uploads_share_a_bounded_inspection_budget";
    if !ebpf_available(TEST) || !parties_available(TEST) {
        return;
    }
    let dir = TestDir::new("callgate-inspection");
    let rpc = upstream(&dir, None);
    let policies = policy_repo(
        &dir,
        "default_action: deny\n",
        &[("ledger", &ledger(rpc.port))],
    );
    // Room for four 1.5 MiB bodies at once; 48 arrive together.
    let gw = gateway_with_config(
        &policies,
        "http:\n  max_body_kb: 2048\n  max_inspected_mb: 6\n  body_timeout_s: 30\n",
        &dir,
    );
    let cg = TestCgroup::new("inspection");
    gw.enable(&cg);
    let rpc_url = format!("http://127.0.0.1:{}/rpc", rpc.port);
    let small = r#"{"jsonrpc":"2.0","id":1,"method":"ledger.balance","params":{}}"#;
    let call = || {
        status_in(
            &cg,
            &[
                "-H",
                "Content-Type: application/json",
                "-d",
                small,
                &rpc_url,
            ],
        )
    };
    assert_eq!(call(), "200", "{}", gw.log());
    let pid = gw.pid().expect("gateway pid");
    let base = rss_kib(pid).expect("the gateway's RSS is readable");
    let before = rpc.requests().len();

    const UPLOADS: usize = 48;
    const SIZE: usize = 1536 * 1024;
    let running = AtomicBool::new(true);
    let (out, peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = base;
            // Bounded by the client's own bound (about 40 s) plus a margin.
            for _ in 0..3_000 {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(r) = rss_kib(pid) {
                    peak = peak.max(r);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let script = party_script("slow_uploads.py").display().to_string();
        let out = python_file_in(
            &cg,
            &script,
            &[
                &rpc.port.to_string(),
                &UPLOADS.to_string(),
                &SIZE.to_string(),
            ],
        );
        running.store(false, Ordering::Relaxed);
        (out, sampler.join().expect("sampler"))
    });
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let statuses: Vec<u64> = v["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| s.as_u64().unwrap_or(0))
        .collect();
    let busy_said: Vec<bool> = v["busy"]
        .as_array()
        .expect("busy")
        .iter()
        .map(|b| b.as_bool() == Some(true))
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    let grew_mib = peak.saturating_sub(base) / 1024;
    eprintln!(
        "RSS {base} KiB before, {peak} KiB at peak (+{grew_mib} MiB); {ok} uploads admitted, {busy} busy"
    );
    assert!(
        statuses
            .iter()
            .zip(&busy_said)
            .all(|(&s, &b)| (s == 503) == b),
        "each 503 says inspection_busy, and only those: {v}"
    );
    assert_eq!(
        ok + busy,
        UPLOADS,
        "every upload is either decided or refused as busy: {v}\n{}",
        gw.log()
    );
    // Room for four at most, taken first come first served (chunked ones a piece at a time).
    assert!(
        (2..=4).contains(&ok),
        "the budget is used, and no more: {v}"
    );
    assert!(busy >= 1, "the excess is refused: {v}");
    // The admitted ones reached the upstream whole; the refused ones never did.
    let sent: Vec<Value> = rpc.requests().split_off(before);
    assert_eq!(sent.len(), ok, "{v}");
    assert!(
        sent.iter()
            .all(|r| r["body"].as_str().map(str::len) == Some(SIZE)),
        "forwarded bodies are whole"
    );
    // Unbounded (before the budget), this run took the RSS up by 216 MiB.
    assert!(
        grew_mib < 48,
        "RSS grew by {grew_mib} MiB for a budget of 6 MiB"
    );
    // The refusal names the reason; the budget came back whole, so calls go through again.
    let r = record_where(&gw, "a busy refusal", |r| {
        r["decision"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("inspection_busy"))
    });
    assert_eq!(r["status"], 503, "{r}");
    assert_eq!(call(), "200", "{}", gw.log());
}

/// Runs a Python script file inside `cg` with `args`; its stdout.
fn python_file_in(cg: &TestCgroup, script: &str, args: &[&str]) -> String {
    let mut argv = vec!["python3", script];
    argv.extend_from_slice(args);
    let out = cg.run(&argv);
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The streams of one h2 connection share `max_inspected_per_connection_mb` between them,
/// however much room the shared budget has: one connection cannot take it all.
#[test]
fn one_h2_connections_streams_share_a_bounded_part_of_the_budget() {
    const TEST: &str = "one_h2_connections_streams_share_a_bounded_part_of_the_budget";
    if !ebpf_available(TEST) || !parties_available(TEST) {
        return;
    }
    let dir = TestDir::new("callgate-inspection-h2");
    // The client speaks h2; the gateway reaches this plain-text upstream with HTTP/1.1.
    let up = upstream(&dir, None);
    let policies = policy_repo(
        &dir,
        "default_action: deny\n",
        &[("ledger", &ledger(up.port))],
    );
    // 24 bodies of 1.5 MiB (36 MiB) fit the shared 64 MiB; one connection's 4 MiB holds two.
    let gw = gateway_with_config(
        &policies,
        "http:\n  max_body_kb: 2048\n  max_inspected_mb: 64\n  max_inspected_per_connection_mb: 4\n",
        &dir,
    );
    let cg = TestCgroup::new("inspection-h2");
    gw.enable(&cg);
    const STREAMS: usize = 24;
    let py = party_python().display().to_string();
    let script = party_script("h2_uploads.py").display().to_string();
    let port = up.port.to_string();
    let out = cg.run(&[
        &py,
        &script,
        &port,
        &STREAMS.to_string(),
        &(1536 * 1024).to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    println!("{STREAMS} h2 uploads on one connection: {v}");
    let statuses: Vec<u64> = v["statuses"]
        .as_array()
        .expect("statuses")
        .iter()
        .map(|s| s.as_u64().unwrap_or(0))
        .collect();
    let busy: Vec<bool> = v["busy"]
        .as_array()
        .expect("busy")
        .iter()
        .map(|b| b.as_bool() == Some(true))
        .collect();
    let result: Vec<bool> = v["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|b| b.as_bool() == Some(true))
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(ok + refused, STREAMS, "{v}\n{}", gw.log());
    assert!(
        statuses.iter().zip(&result).all(|(&s, &r)| (s == 200) == r),
        "each 200 is the upstream's result: {v}\n{}",
        gw.log()
    );
    assert!(
        statuses.iter().zip(&busy).all(|(&s, &b)| (s == 503) == b),
        "each 503 says inspection_busy, and only those: {v}"
    );
    assert!(ok >= 1, "the connection's share is used: {v}");
    assert!(
        refused >= 1,
        "the shared budget alone would have taken all: {v}"
    );
    // The upstream ran exactly the admitted calls, whole.
    let ran = up.requests();
    assert_eq!(ran.len(), ok, "{v}");
    assert!(
        ran.iter()
            .all(|r| r["body"].as_str().map(str::len) == Some(1536 * 1024))
    );
}
