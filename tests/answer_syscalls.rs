//! What a 16 KiB answer costs the gateway end to end, per call: system calls (strace -c),
//! context switches and CPU time, over a fixed number of keep-alive calls through the real
//! path (intercepted, decided, masked, recorded in full). Not a test of behaviour: run it
//! when measuring, e.g.
//!
//! `CALLGATE_BIN=$PWD/target/demo/callgate CALLGATE_REQUIRE_EBPF=1 cargo test -p
//!  callgate-e2e --test answer_syscalls -- --ignored --nocapture`
//!
//! `CALLGATE_COST_N` calls (default 200), answers of `CALLGATE_COST_SIZE` bytes (default
//! 16384), the l7 bench's JSON. `CALLGATE_COST_CLOSE=1` sends each call on a new connection
//! (`Connection: close`, as the l7 bench's `new connection per request`): the figures are then
//! per connection.
use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use callgate_e2e::{
    Nginx, TestCgroup, TestDir, ebpf_available, gateway_with_config, json_of_size, nginx_available,
    policy_repo,
};

/// (voluntary, involuntary) context switches of every thread of `pid`.
fn switches(pid: u32) -> (u64, u64) {
    let mut t = (0, 0);
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return t;
    };
    for task in tasks.flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            let n = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse().ok());
            if line.starts_with("voluntary_ctxt_switches") {
                t.0 += n(line).unwrap_or(0);
            } else if line.starts_with("nonvoluntary_ctxt_switches") {
                t.1 += n(line).unwrap_or(0);
            }
        }
    }
    t
}

/// User and system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (
        f.get(11).copied().unwrap_or(0),
        f.get(12).copied().unwrap_or(0),
    )
}

#[test]
#[ignore = "a cost probe, not a test"]
fn answer_syscalls() {
    if !ebpf_available("answer_syscalls") || !nginx_available("answer_syscalls") {
        return;
    }
    let n: usize = std::env::var("CALLGATE_COST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let size: usize = std::env::var("CALLGATE_COST_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16384);
    let dir = TestDir::new("answer-syscalls");
    let up = Nginx::start(
        &dir,
        "keepalive_requests 1000000; location /v1/items/ { default_type application/json; alias {www}/; }",
    );
    fs::write(up.www.join("big"), json_of_size(size)).expect("answer");
    let service = format!(
        r#"
service: items
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  get_item: {{ route: "GET /v1/items/{{id}}" }}
rules:
  - {{ name: reads, function: get_item, action: allow }}
response:
  mask: [card_number, email]
"#,
        up.port()
    );
    let policies = policy_repo(&dir, "default_action: deny\n", &[("items", &service)]);
    let gw_dir = dir.join("gateway");
    fs::create_dir_all(&gw_dir).expect("gateway dir");
    let gw = gateway_with_config(&policies, "records:\n  backlog_mb: 1024\n", &gw_dir);
    let cg = TestCgroup::new("answer-syscalls");
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{}/v1/items/big", up.port());
    // Warm: the connection pool, the policy, the recorder.
    let warm = cg.run(&["curl", "-sS", "-o", "/dev/null", &url, &url]);
    assert!(warm.status.success(), "warm-up curl failed");
    let pid = gw.pid().expect("gateway pid");
    // One curl, one keep-alive connection, n calls one after another.
    let close = std::env::var("CALLGATE_COST_CLOSE").as_deref() == Ok("1");
    let mut argv = vec!["curl", "-sS", "--max-time", "25"];
    if close {
        argv.extend(["-H", "Connection: close"]);
    }
    for _ in 0..n {
        argv.extend(["-o", "/dev/null"]);
    }
    argv.extend(std::iter::repeat_n(url.as_str(), n));
    let calls = |what: &str| {
        let out = cg.run(&argv);
        assert!(
            out.status.success(),
            "{what}: curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Let the writer commit what it holds.
        std::thread::sleep(Duration::from_millis(300));
    };
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
    // Under callgrind (CALLGATE_BIN a script that execs the gateway under valgrind with
    // --collect-atstart=no): its counts cover these calls only.
    let callgrind = std::env::var("CALLGATE_COST_CALLGRIND").as_deref() == Ok("1");
    let control = |arg: &str| {
        let _ = Command::new("callgrind_control")
            .args([arg, &pid.to_string()])
            .stdout(Stdio::null())
            .status();
    };
    if callgrind {
        control("-i=on");
    }
    let (sw0, cpu0) = (switches(pid), cpu_ticks(pid));
    calls("untraced");
    let (sw1, cpu1) = (switches(pid), cpu_ticks(pid));
    if callgrind {
        control("-i=off");
        control("-d");
    }
    eprintln!(
        "{n} calls of {size} B through the gateway{}",
        if close {
            ", each on a new connection"
        } else {
            ""
        }
    );
    eprintln!(
        "context switches per call: {:.2} voluntary, {:.2} involuntary",
        per(sw0.0, sw1.0),
        per(sw0.1, sw1.1)
    );
    let ticks = (cpu1.0 + cpu1.1).saturating_sub(cpu0.0 + cpu0.1);
    eprintln!(
        "gateway CPU per call: {:.1} us (user {} sys {} ticks, includes the writer)",
        ticks as f64 * 10_000.0 / n as f64,
        cpu1.0 - cpu0.0,
        cpu1.1 - cpu0.1
    );
    if callgrind {
        return;
    }
    // `CALLGATE_COST_TRACE=FILE`: every system call into FILE instead of the counts.
    let full = std::env::var_os("CALLGATE_COST_TRACE");
    let trace = full
        .as_ref()
        .map_or_else(|| dir.join("strace.txt"), std::path::PathBuf::from);
    let mut strace = Command::new("strace")
        .args(["-f", if full.is_some() { "-tt" } else { "-c" }, "-o"])
        .arg(&trace)
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    std::thread::sleep(Duration::from_millis(500));
    calls("traced");
    // SIGINT: strace detaches and writes its summary.
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let summary = fs::read_to_string(&trace).unwrap_or_default();
    eprintln!("system calls per call (strace -f -c):");
    for line in summary.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if f.len() >= 5 && f[0].parse::<f64>().is_ok() {
            let calls: f64 = f[3].parse().unwrap_or(0.0);
            eprintln!("{:>8.2}  {}", calls / n as f64, f[f.len() - 1]);
        } else if line.contains("total") {
            let calls: f64 = f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            eprintln!("{:>8.2}  total", calls / n as f64);
        }
    }
    let recorded = gw.status()["records"]["written"].as_u64().unwrap_or(0);
    eprintln!("records written: {recorded}");
}
