//! `cargo xtask bench --suite soak`: a bounded soak. Mixed calls — clean reads, reads whose
//! answer carries a card number (masked), and calls the policy denies — through callgate from
//! an enabled cgroup at about half of the capacity measured at the start of the same run, in
//! 20-second rounds for 10 minutes (`CALLGATE_SOAK_MINUTES`). After each round it reads the
//! gateway's resident memory and open file descriptors, and for the round: the host's steal
//! and the machine's busy share (`/proc/stat`), the gateway's CPU time (`/proc/PID/stat`) as a
//! share of one CPU and per call, and its recorder thread's share. A round whose rate dips
//! with steal up and the gateway's CPU per call flat was the host; with the gateway's CPU per
//! call (or its recorder's) up, the gateway.
//!
//! Goals (issue 10): memory and descriptors flat, p99 stable, no errors other than the
//! intended denials, every record verifies. Results go to
//! `benches/results/<date>-<commit>-soak.md`.
use std::{fs, process::Command};

use callgate_benches::{CpuTime, RunId, Steal, Threads, nginx, wrk, wrk_any};
use callgate_e2e::{
    Gateway, TestCgroup, callgate_bin, ebpf_available, free_port, policy_repo, unique,
};

const ITEM: &str =
    r#"{"id":42,"name":"widget","owner":"team-a","price":1299,"note":"nothing sensitive here"}"#;
const CARD: &str = r#"{"id":7,"holder":"A. Customer","card":"4111 1111 1111 1111","email":"a.customer@example.com"}"#;

fn main() {
    if !ebpf_available("bench soak") {
        return;
    }
    let minutes: u32 = std::env::var("CALLGATE_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let dir = std::env::temp_dir().join(unique("callgate-soak"));
    fs::create_dir_all(&dir).expect("dir");
    let up_port = free_port();
    let _upstream = nginx(
        &dir,
        "upstream",
        1,
        &format!(
            "server {{ listen 127.0.0.1:{up_port}; keepalive_requests 1000000; \
             default_type application/json; \
             location = /v1/items/42 {{ return 200 '{ITEM}'; }} \
             location = /v1/cards/7 {{ return 200 '{CARD}'; }} \
             location / {{ return 200 '{{}}'; }} }}"
        ),
        up_port,
    );
    let service = format!(
        r#"
service: shop
match: {{ hosts: ["127.0.0.1:{up_port}"] }}
protocol: rest
functions:
  get_item: {{ route: "GET /v1/items/{{id}}" }}
  get_card: {{ route: "GET /v1/cards/{{id}}" }}
  reset: {{ route: "POST /v1/admin/reset" }}
rules:
  - {{ name: reads, function: get_item, action: allow }}
  - {{ name: cards, function: get_card, action: allow }}
  - {{ name: no-resets, function: reset, action: deny, reason: not from workloads }}
response:
  mask: [card_number, email]
"#
    );
    let policies = policy_repo(&dir, "default_action: deny\n", &[("shop", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("bench-soak");
    gw.enable(&cg);
    let pid = gw.pid().expect("gateway pid");
    let base = format!("http://127.0.0.1:{up_port}");

    // Capacity in this run, then half of it: wrk paces each connection with `delay()` (ms).
    let full = wrk(
        Some(&cg),
        &["-t2", "-c32", "-d5s"],
        &format!("{base}/v1/items/42"),
    );
    let target = full.rps / 2.0;
    let delay_ms = 2.0;
    let conns = ((target * delay_ms / 1000.0).round() as u32).clamp(2, 256);
    let script = dir.join("soak.lua");
    fs::write(
        &script,
        format!(
            "local paths = {{ {{'GET', '/v1/items/42'}}, {{'GET', '/v1/items/42'}}, \
             {{'GET', '/v1/cards/7'}}, {{'POST', '/v1/admin/reset'}} }}\n\
             local i = 0\n\
             request = function()\n  i = i + 1\n  local p = paths[(i % #paths) + 1]\n  \
             return wrk.format(p[1], p[2])\nend\n\
             delay = function() return {delay_ms} end\n"
        ),
    )
    .expect("lua");
    println!(
        "soak: capacity {:.0} req/s; {minutes} minutes in 20 s rounds at ~{target:.0} req/s \
         ({conns} connections, {delay_ms} ms apart); a quarter of the calls are denied",
        full.rps
    );
    let conns_arg = format!("-c{conns}");
    let script_arg = script.display().to_string();
    let mut rows = Vec::new();
    // Rounds stay well inside the 30 s a command in a test cgroup may run.
    for round in 1..=minutes * 3 {
        let (host, cpu0, threads0) = (Steal::now(), gw.cpu_seconds(), Threads::of(pid));
        let started = std::time::Instant::now();
        let w = wrk_any(
            Some(&cg),
            &["-t2", &conns_arg, "-d20s", "-s", &script_arg],
            &base,
        );
        let wall = started.elapsed().as_secs_f64();
        let cpu = gw.cpu_seconds() - cpu0;
        let recorder = Threads::of(pid)
            .since(&threads0)
            .iter()
            .filter(|t| t.name == "callgate-record")
            .map(|t| t.cpu_seconds)
            .sum::<f64>();
        let load = Load {
            steal: host.map_or(f64::NAN, |h| h.percent_since()),
            busy: host.map_or(f64::NAN, |h| h.busy_percent_since()),
            gateway: 100.0 * cpu / wall,
            per_call: cpu * 1e6 / w.requests.max(1) as f64,
            recorder: 100.0 * recorder / wall,
        };
        let rss_kib = gw.rss_kib().unwrap_or(0) as f64;
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        println!(
            "round {round:>2}: {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  denied {:>5.1}%  \
             errors {}  RSS {:>5.1} MiB  fds {fds}  steal {:.1}%  busy {:.0}%  gateway {:.0}% \
             ({:.1} µs/call, recorder {:.0}%)",
            w.rps,
            w.p50,
            w.p99,
            100.0 * w.non_2xx as f64 / w.requests.max(1) as f64,
            w.errors,
            rss_kib / 1024.0,
            load.steal,
            load.busy,
            load.gateway,
            load.per_call,
            load.recorder,
        );
        rows.push((round, w, rss_kib, fds, load));
    }

    // A masked answer still arrives masked, and the whole log verifies.
    let out = cg.run(&["curl", "-sS", &format!("{base}/v1/cards/7")]);
    let card = String::from_utf8_lossy(&out.stdout).into_owned();
    let verify = Command::new(callgate_bin())
        .args(["records", "verify", "--dir"])
        .arg(gw.dir.join("state/records"))
        .output()
        .expect("verify");
    let verified = verify.status.success();

    // The first minute warms up (allocator, pools); memory is compared from there on.
    let first = &rows[rows.len().min(3) - 1];
    let last = &rows[rows.len() - 1];
    let errors: u64 = rows.iter().map(|r| r.1.errors).sum();
    let requests: u64 = rows.iter().map(|r| r.1.requests).sum();
    let denied: u64 = rows.iter().map(|r| r.1.non_2xx).sum();
    let mut md = format!(
        "callgate soak, 2 CPUs: capacity {:.0} req/s measured first; {minutes} minutes in \
         20-second rounds at half of it, mixed calls (1/2 clean reads, 1/4 masked card answers, 1/4 \
         denied)\n\n| round | req/s | p50 µs | p99 µs | denied | errors | RSS MiB | fds | \
         host steal % | machine busy % | gateway CPU % | gateway µs/call | recorder CPU % |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        full.rps
    );
    for (round, w, rss, fds, load) in &rows {
        md.push_str(&format!(
            "| {round} | {:.0} | {:.0} | {:.0} | {:.1}% | {} | {:.1} | {fds} | {:.1} | {:.0} | \
             {:.0} | {:.1} | {:.1} |\n",
            w.rps,
            w.p50,
            w.p99,
            100.0 * w.non_2xx as f64 / w.requests.max(1) as f64,
            w.errors,
            rss / 1024.0,
            load.steal,
            load.busy,
            load.gateway,
            load.per_call,
            load.recorder,
        ));
    }
    md.push_str(
        "\n(per round: host steal % and machine busy % are shares of all CPUs' time from \
         /proc/stat — busy is every process's work, the load generator's and the upstream's \
         too; gateway CPU % is the gateway's CPU time from /proc/PID/stat as a share of one \
         CPU, also per call; recorder CPU % its record writer thread's)\n",
    );
    md.push_str(&format!(
        "\n{requests} calls, {denied} denied as intended ({:.1}%), {errors} errors; RSS round \
         {} → {}: {:.1} → {:.1} MiB; fds {} → {}; p99 {:.0} → {:.0} µs; records verify: {}; \
         masked answer: {}\n",
        100.0 * denied as f64 / requests.max(1) as f64,
        first.0,
        last.0,
        first.2 / 1024.0,
        last.2 / 1024.0,
        first.3,
        last.3,
        first.1.p99,
        last.1.p99,
        if verified { "ok" } else { "FAILED" },
        card.trim()
    ));
    println!("\n{md}");
    save(&md);
    assert!(errors == 0, "{errors} socket errors in the soak");
    assert!(
        verified,
        "records verify failed: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(
        card.contains("************1111") && !card.contains("4111 1111"),
        "{card}"
    );
    let quarter = denied as f64 / requests.max(1) as f64;
    assert!((0.2..0.3).contains(&quarter), "denied share {quarter}");
}

fn save(md: &str) {
    let Some(path) = RunId::now().results("soak").map(|b| b.with_extension("md")) else {
        return;
    };
    if let Err(e) = fs::write(&path, md) {
        eprintln!("could not write {}: {e}", path.display());
    }
}

/// Where a round's time went, to tell a dip the host caused from one the gateway caused.
struct Load {
    /// The host's share of all CPUs' time (steal), percent.
    steal: f64,
    /// This machine's own work, all processes, percent of all CPUs.
    busy: f64,
    /// The gateway's CPU time, percent of one CPU.
    gateway: f64,
    /// The gateway's CPU microseconds per call.
    per_call: f64,
    /// Its record writer's CPU time, percent of one CPU.
    recorder: f64,
}
