//! `cargo xtask bench --suite calls`: what one call costs at light load (an agent's sequential
//! calls: one keep-alive connection, one request at a time, ~160 B answers), counted rather
//! than timed, so that it holds on a noisy shared machine.
//!
//! For nginx as a reverse proxy and for callgate with policy only, + mask, + record and all
//! three, and for TCP pass-through (no policy: bytes relayed, the connection recorded), it
//! reads per call: the proxy's CPU time, and how often each kind of thread was
//! switched out (voluntary: it blocked — a wake-up it then waited for; involuntary: it was
//! preempted). A call that hands work to another thread shows as switches on that thread.
//! Then, under `strace -f`, the system calls per call of each kind of callgate thread with
//! the full pipeline (the trace slows the gateway: those rows count, they do not time).
//! Results go to `benches/results/<date>-<commit>-calls.md` as well as the terminal.
use std::fs;

use callgate_benches::{
    BODY, RunId, ThreadDelta, Threads, items_service, nginx, syscalls_during, with_cpu, wrk,
};
use callgate_e2e::{Gateway, TestCgroup, ebpf_available, free_port, gateway_with_config, unique};

const LIGHT: &[&str] = &["-t1", "-c1", "-d4s"];
const WARM: &[&str] = &["-t1", "-c1", "-d1s"];
const TRACED: &[&str] = &["-t1", "-c1", "-d3s"];

fn main() {
    if !ebpf_available("bench calls") {
        return;
    }
    let dir = std::env::temp_dir().join(unique("callgate-bench-calls"));
    fs::create_dir_all(&dir).expect("dir");
    let up_port = free_port();
    let _upstream = nginx(
        &dir,
        "upstream",
        1,
        &format!(
            "server {{ listen 127.0.0.1:{up_port}; keepalive_requests 1000000; \
             location = /v1/items/42 {{ default_type application/json; return 200 '{BODY}'; }} }}"
        ),
        up_port,
    );
    let proxy_port = free_port();
    let proxy = nginx(
        &dir,
        "proxy",
        2,
        &format!(
            "upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }} \
             server {{ listen 127.0.0.1:{proxy_port}; keepalive_requests 1000000; \
             location / {{ proxy_pass http://up; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; proxy_buffering off; }} }}"
        ),
        proxy_port,
    );
    let service = items_service(up_port);
    let unmasked: String = service
        .lines()
        .filter(|l| !l.starts_with("response:") && !l.trim_start().starts_with("mask:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let variants: [(&str, &str, bool); 4] = [
        ("callgate, policy only", &unmasked, false),
        ("callgate, policy + mask", &service, false),
        ("callgate, policy + record", &unmasked, true),
        ("callgate, policy + mask + record", &service, true),
    ];
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/items/42");
    let mut md = format!(
        "callgate calls bench, {} CPUs: per call at light load (wrk -t1 -c1, keep-alive, 160 B)\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    md.push_str(
        "| path | req/s | p50 µs | p99 µs | proxy CPU µs/call | switches/call (voluntary+preempted) by thread |\n\
         |---|---:|---:|---:|---:|---|\n",
    );
    // nginx: the master and its workers, all processes.
    wrk(None, WARM, &url(proxy_port));
    let before: Vec<Threads> = proxy.pids().into_iter().map(Threads::of).collect();
    let (w, cpu) = with_cpu(&proxy, || wrk(None, LIGHT, &url(proxy_port)));
    let after: Vec<Threads> = proxy.pids().into_iter().map(Threads::of).collect();
    let deltas: Vec<ThreadDelta> = after
        .iter()
        .zip(&before)
        .flat_map(|(a, b)| a.since(b))
        .collect();
    md.push_str(&row("nginx", &w, cpu, &deltas));

    // TCP pass-through: a gateway without policies relays the bytes and records the
    // connection, no HTTP work: the floor of the interception path.
    let plain = Gateway::start();
    let cg_plain = TestCgroup::new("bench-calls-plain");
    plain.enable(&cg_plain);
    wrk(Some(&cg_plain), WARM, &url(up_port));
    let plain_pid = plain.pid().expect("gateway pid");
    let before = Threads::of(plain_pid);
    let (w, cpu) = with_cpu(&plain, || wrk(Some(&cg_plain), LIGHT, &url(up_port)));
    let deltas = Threads::of(plain_pid).since(&before);
    md.push_str(&row("callgate, TCP pass-through", &w, cpu, &deltas));

    let mut full: Option<(Gateway, TestCgroup)> = None;
    for (i, (name, svc, record)) in variants.iter().enumerate() {
        let sub = dir.join(format!("gw-{i}"));
        fs::create_dir_all(&sub).expect("gateway dir");
        let policies = callgate_e2e::policy_repo(&sub, "default_action: deny\n", &[("items", svc)]);
        let gw = gateway_with_config(&policies, &format!("records:\n  enabled: {record}\n"), &sub);
        let cg = TestCgroup::new(&format!("bench-calls-{i}"));
        gw.enable(&cg);
        wrk(Some(&cg), WARM, &url(up_port));
        let pid = gw.pid().expect("gateway pid");
        let before = Threads::of(pid);
        let (w, cpu) = with_cpu(&gw, || wrk(Some(&cg), LIGHT, &url(up_port)));
        let deltas = Threads::of(pid).since(&before);
        md.push_str(&row(name, &w, cpu, &deltas));
        if i == variants.len() - 1 {
            full = Some((gw, cg));
        }
    }
    md.push_str(
        "\n(switches per call: each kind of thread's context switches over the run divided by \
         the calls; `×N` is how many threads of that kind; kinds under 0.01 per call left out)\n",
    );
    let (w, counts) = syscalls_during(&proxy.pids(), &dir, || wrk(None, TRACED, &url(proxy_port)));
    md.push_str(&syscall_table("nginx", &w, counts));
    let (w, counts) = syscalls_during(&[plain_pid], &dir, || {
        wrk(Some(&cg_plain), TRACED, &url(up_port))
    });
    md.push_str(&syscall_table("callgate, TCP pass-through", &w, counts));
    drop(plain);
    if let Some((gw, cg)) = full {
        let pid = gw.pid().expect("gateway pid");
        let (w, counts) = syscalls_during(&[pid], &dir, || wrk(Some(&cg), TRACED, &url(up_port)));
        md.push_str(&syscall_table(
            "callgate, policy + mask + record",
            &w,
            counts,
        ));
    }
    println!("\n{md}");
    if let Some(path) = RunId::now().results("calls") {
        let path = path.with_extension("md");
        match fs::write(&path, &md) {
            Ok(()) => println!("saved {}", path.display()),
            Err(e) => eprintln!("could not save {}: {e}", path.display()),
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

/// System calls per call by kind of thread and call, from [`syscalls_during`].
fn syscall_table(
    name: &str,
    w: &callgate_benches::Wrk,
    counts: Option<callgate_benches::SyscallCounts>,
) -> String {
    let Some(counts) = counts else {
        return format!("\n({name}: no strace, system calls not counted)\n");
    };
    let calls = w.requests.max(1) as f64;
    let mut md = format!(
        "\nsystem calls per call, {name}, under strace ({} calls)\n\n\
         | thread | system call | per call |\n|---|---|---:|\n",
        w.requests
    );
    let mut total = 0.0;
    for (thread, call, n) in &counts {
        let per = *n as f64 / calls;
        total += per;
        if per >= 0.01 {
            md.push_str(&format!("| {thread} | {call} | {per:.2} |\n"));
        }
    }
    md.push_str(&format!("| all | all | {total:.2} |\n"));
    md
}

/// One table row: rate, latency, CPU per call and switches per call by kind of thread.
fn row(name: &str, w: &callgate_benches::Wrk, cpu_us: f64, deltas: &[ThreadDelta]) -> String {
    let calls = w.requests.max(1) as f64;
    let mut by_kind: Vec<(String, usize, f64, f64)> = Vec::new();
    for d in deltas {
        match by_kind.iter_mut().find(|k| k.0 == d.name) {
            Some(k) => {
                k.1 += d.threads;
                k.2 += d.voluntary as f64 / calls;
                k.3 += d.involuntary as f64 / calls;
            }
            None => by_kind.push((
                d.name.clone(),
                d.threads,
                d.voluntary as f64 / calls,
                d.involuntary as f64 / calls,
            )),
        }
    }
    by_kind.sort_by(|a, b| (b.2 + b.3).total_cmp(&(a.2 + a.3)));
    let switches: Vec<String> = by_kind
        .iter()
        .filter(|k| k.2 + k.3 >= 0.01)
        .map(|(n, t, v, i)| format!("{n} ×{t}: {v:.2}+{i:.2}"))
        .collect();
    format!(
        "| {name} | {:.0} | {:.0} | {:.0} | {cpu_us:.1} | {} |\n",
        w.rps,
        w.p50,
        w.p99,
        switches.join("; ")
    )
}
