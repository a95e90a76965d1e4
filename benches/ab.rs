//! `cargo xtask bench --suite ab`: two builds of the gateway compared on the l7 bench's
//! headline case, in interleaved rounds so that both see the same machine. A is
//! `CALLGATE_BIN_A` (e.g. a build of an earlier commit), B is `CALLGATE_BIN_B` (default: the
//! binary xtask built). Each round runs wrk against one nginx upstream through A, then B (the
//! order alternates per round), with the policy, masking and recording the l7 bench uses, at
//! full load (keep-alive, 160 B answers) and at light load (one connection, one call at a
//! time). It prints each round and the medians: requests per second, the gateway's CPU time
//! per call (from /proc, the figure least moved by a busy neighbour), and the added p50/p99 at
//! light load. `CALLGATE_AB_ROUNDS` sets the rounds (default 5).
//!
//! `CALLGATE_AB_CASE=pass` runs the l7 bench's TCP pass-through case instead: each build
//! without a policy (every connection passed through as plain TCP and recorded), wrk at full
//! load through A, through B and straight to nginx in each round; it prints req/s against
//! direct. The gateway's CPU per call is shown too, but a kernel splice does its copying in
//! kernel workers that this figure does not count: the ratio to direct is the measure.
//!
//! `CALLGATE_AB_CASE=close` runs the headline case with a new connection per request (the l7
//! bench's `new connection per request` load, `Connection: close`) as its full load: what
//! accepting, identifying and closing a connection costs each build.
//!
//! `CALLGATE_AB_CASE=half` runs the l7 bench's half-load case instead: `callgate-paced` at a
//! fixed rate (`CALLGATE_AB_RATE`, default 17,000 req/s: about half of what the headline case
//! serves on these machines) straight to nginx, through A and through B in each round, and
//! prints each one's p50 and p99 from when each call was due, and the medians of what each
//! build adds over direct: the tails of two builds at the same load.
//!
//! `CALLGATE_AB_CASE=agent` is the half-load case at the l7 bench's agent's pace: one
//! connection, 1,000 calls a second (`CALLGATE_AB_RATE` still sets the rate).
//!
//! `CALLGATE_AB_CASE=16k` runs the headline case with the l7 bench's 16 KiB answers (an array
//! of small objects) and its load for them: what masking, checking and recording a larger
//! answer costs each build. `CALLGATE_AB_CASE=1m` does the same with its 1 MiB answers.
//!
//! `CALLGATE_AB_CONFIG_A` / `CALLGATE_AB_CONFIG_B` add lines to one side's `callgate.yaml`
//! (e.g. `records: {enabled: false}`): with the same binary on both sides, what one setting
//! costs, measured in the same interleaved rounds.
use std::{fs, path::PathBuf};

use callgate_benches::{BODY, Wrk, items_service, nginx, paced_on, with_cpu, wrk};
use callgate_e2e::{
    Gateway, TestCgroup, callgate_bin, ebpf_available, free_port, json_of_size, policy_repo, unique,
};

const FULL: &[&str] = &["-t2", "-c32", "-d6s"];
const LIGHT: &[&str] = &["-t1", "-c1", "-d4s"];
/// `CALLGATE_AB_CASE=close`: as the l7 bench's `new connection per request`.
const CLOSE: &[&str] = &["-t2", "-c16", "-d6s", "-H", "Connection: close"];
/// `CALLGATE_AB_CASE=16k`: as the l7 bench's `keep-alive 16 KiB`.
const LARGE: &[&str] = &["-t2", "-c8", "-d6s"];

/// One build under test: its gateway and the cgroup it governs.
struct Side {
    name: &'static str,
    bin: PathBuf,
    gw: Gateway,
    cg: TestCgroup,
    full: Vec<(Wrk, f64)>,
    light: Vec<Wrk>,
}

fn main() {
    if !ebpf_available("bench ab") {
        return;
    }
    let bin_b = std::env::var_os("CALLGATE_BIN_B").map_or_else(callgate_bin, PathBuf::from);
    let Some(bin_a) = std::env::var_os("CALLGATE_BIN_A").map(PathBuf::from) else {
        eprintln!(
            "bench ab: set CALLGATE_BIN_A to the build to compare with (B: {})",
            bin_b.display()
        );
        std::process::exit(2);
    };
    let rounds: usize = std::env::var("CALLGATE_AB_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let case = std::env::var("CALLGATE_AB_CASE").unwrap_or_default();
    let pass = case == "pass";
    let full = match case.as_str() {
        "close" => CLOSE,
        "16k" | "1m" => LARGE,
        _ => FULL,
    };
    let dir = std::env::temp_dir().join(unique("callgate-bench-ab"));
    fs::create_dir_all(&dir).expect("dir");
    let www = dir.join("www");
    fs::create_dir_all(&www).expect("www");
    fs::write(www.join("16k"), json_of_size(16 * 1024)).expect("answer file");
    fs::write(www.join("1m"), json_of_size(1024 * 1024)).expect("answer file");
    let up_port = free_port();
    let _upstream = nginx(
        &dir,
        "upstream",
        1,
        &format!(
            "server {{ listen 127.0.0.1:{up_port}; keepalive_requests 1000000; \
             location = /v1/items/42 {{ default_type application/json; return 200 '{BODY}'; }} \
             location /v1/items/ {{ default_type application/json; alias {}/; }} }}",
            www.display()
        ),
        up_port,
    );
    let service = items_service(up_port);
    let policies = policy_repo(&dir, "default_action: deny\n", &[("items", &service)]);
    let side = |name: &'static str, bin: PathBuf| {
        let config = dir.join(format!("callgate-{name}.yaml"));
        let extra = std::env::var(format!("CALLGATE_AB_CONFIG_{name}")).unwrap_or_default();
        let records = if extra.contains("records") {
            ""
        } else {
            "records:\n  backlog_mb: 1024\n"
        };
        fs::write(&config, format!("{records}{extra}\n")).expect("config");
        let (policies, config) = (policies.display().to_string(), config.display().to_string());
        let args: Vec<&str> = if pass {
            vec!["--config", &config]
        } else {
            vec!["--policies", &policies, "--config", &config]
        };
        let gw = Gateway::start_bin(&bin, &args);
        let cg = TestCgroup::new(&format!("bench-ab-{}", name.to_lowercase()));
        gw.enable(&cg);
        Side {
            name,
            bin,
            gw,
            cg,
            full: vec![],
            light: vec![],
        }
    };
    let mut sides = [side("A", bin_a), side("B", bin_b)];
    for s in &sides {
        let extra = std::env::var(format!("CALLGATE_AB_CONFIG_{}", s.name)).unwrap_or_default();
        println!("{}: {} {extra}", s.name, s.bin.display());
    }
    let path = match case.as_str() {
        "16k" | "1m" => &case,
        _ => "42",
    };
    let url = format!("http://127.0.0.1:{up_port}/v1/items/{path}");
    if pass {
        pass_through(&mut sides, rounds, &url);
        return;
    }
    if case == "half" || case == "agent" {
        let (default, connections) = if case == "agent" {
            (1_000.0, 1)
        } else {
            (17_000.0, 32)
        };
        let rate = std::env::var("CALLGATE_AB_RATE")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(default);
        half_load(&sides, rounds, rate, connections, &url);
        return;
    }
    let mut direct_light = vec![];
    match case.as_str() {
        "close" => println!("\nfull load: a new connection per request (Connection: close)"),
        "16k" => println!("\n16 KiB answers: full load wrk -t2 -c8, light load one at a time"),
        "1m" => println!("\n1 MiB answers: full load wrk -t2 -c8, light load one at a time"),
        _ => {}
    }
    println!(
        "\n{:>5} {:>4} {:>12} {:>10} {:>10} {:>10}",
        "round", "side", "full req/s", "CPU µs/call", "light p50", "light p99"
    );
    for round in 0..rounds {
        direct_light.push(wrk(None, LIGHT, &url));
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let s = &mut sides[i];
            let (w, cpu) = with_cpu(&s.gw, || wrk(Some(&s.cg), full, &url));
            let l = wrk(Some(&s.cg), LIGHT, &url);
            println!(
                "{:>5} {:>4} {:>12.0} {:>10.1} {:>8.0}µs {:>8.0}µs",
                round + 1,
                s.name,
                w.rps,
                cpu,
                l.p50,
                l.p99
            );
            s.full.push((w, cpu));
            s.light.push(l);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let direct_p50 = median(direct_light.iter().map(|w| w.p50).collect());
    let direct_p99 = median(direct_light.iter().map(|w| w.p99).collect());
    println!(
        "\nmedians over {rounds} rounds (direct light-load p50 {direct_p50:.0} µs, p99 {direct_p99:.0} µs):"
    );
    let mut med = vec![];
    for s in &sides {
        let rps = median(s.full.iter().map(|(w, _)| w.rps).collect());
        let cpu = median(s.full.iter().map(|(_, c)| *c).collect());
        let p50 = median(s.light.iter().map(|w| w.p50).collect()) - direct_p50;
        let p99 = median(s.light.iter().map(|w| w.p99).collect()) - direct_p99;
        println!(
            "  {}: {rps:.0} req/s, {cpu:.1} µs CPU per call, light load adds p50 {p50:.0} µs, p99 {p99:.0} µs",
            s.name
        );
        med.push((rps, cpu));
    }
    let spread = |i: usize| {
        let v: Vec<f64> = sides[i].full.iter().map(|(_, c)| *c).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &c| (l.min(c), h.max(c)));
        (lo, hi)
    };
    let ((alo, ahi), (blo, bhi)) = (spread(0), spread(1));
    println!(
        "  B/A: {:.3}x req/s, {:.3}x CPU per call (A's rounds {alo:.1}–{ahi:.1} µs, B's {blo:.1}–{bhi:.1} µs)",
        med[1].0 / med[0].0,
        med[1].1 / med[0].1,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The TCP pass-through case: full load through A, B and direct, interleaved per round.
fn pass_through(sides: &mut [Side; 2], rounds: usize, url: &str) {
    let load = || {
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "\nTCP pass-through, full load\n{:>5} {:>6} {:>12} {:>10} {:>8} {:>6}",
        "round", "side", "req/s", "CPU µs/call", "x direct", "load"
    );
    let mut direct = vec![];
    for round in 0..rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let d = wrk(None, FULL, url);
        println!(
            "{:>5} {:>6} {:>12.0} {:>10} {:>8} {:>6}",
            round + 1,
            "direct",
            d.rps,
            "",
            "",
            load()
        );
        for i in order {
            let s = &mut sides[i];
            let (w, cpu) = with_cpu(&s.gw, || wrk(Some(&s.cg), FULL, url));
            println!(
                "{:>5} {:>6} {:>12.0} {:>10.1} {:>8.2} {:>6}",
                round + 1,
                s.name,
                w.rps,
                cpu,
                w.rps / d.rps,
                load()
            );
            s.full.push((w, cpu));
        }
        direct.push(d.rps);
    }
    let d = median(direct);
    println!("\nmedians over {rounds} rounds: direct {d:.0} req/s");
    let mut rps = vec![];
    for s in sides.iter() {
        let r = median(s.full.iter().map(|(w, _)| w.rps).collect());
        let cpu = median(s.full.iter().map(|(_, c)| *c).collect());
        println!(
            "  {}: {r:.0} req/s = {:.2}x direct, gateway CPU {cpu:.1} µs per call",
            s.name,
            r / d
        );
        rps.push(r);
    }
    println!("  B/A: {:.3}x req/s", rps[1] / rps[0]);
}

/// The half-load case: direct, A and B paced at `rate`, interleaved per round; what each
/// build adds to direct's p50 and p99, as medians over the rounds.
fn half_load(sides: &[Side; 2], rounds: usize, rate: f64, connections: usize, url: &str) {
    const SECS: f64 = 5.0;
    let exe = env!("CARGO_BIN_EXE_callgate-paced");
    println!(
        "\n{rate:.0} req/s paced over {connections} connection(s), {SECS} s per run\n{:>5} {:>6} {:>10} {:>9} {:>9} {:>12}",
        "round", "side", "req/s", "p50 µs", "p99 µs", "CPU µs/call"
    );
    let mut direct = vec![];
    let mut added: [Vec<(f64, f64)>; 2] = [vec![], vec![]];
    let mut cpus: [Vec<f64>; 2] = [vec![], vec![]];
    let row = |round: usize, name: &str, w: &Wrk, cpu: Option<f64>| {
        println!(
            "{:>5} {:>6} {:>10.0} {:>9.0} {:>9.0} {:>12}",
            round + 1,
            name,
            w.rps,
            w.p50,
            w.p99,
            cpu.map_or("-".to_string(), |c| format!("{c:.1}"))
        );
    };
    for round in 0..rounds {
        let d = paced_on(exe, None, rate, connections, SECS, url);
        row(round, "direct", &d, None);
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let s = &sides[i];
            let (w, cpu) = with_cpu(&s.gw, || {
                paced_on(exe, Some(&s.cg), rate, connections, SECS, url)
            });
            row(round, s.name, &w, Some(cpu));
            assert!(w.non_2xx == 0, "{} error answers at half load", w.non_2xx);
            added[i].push((w.p50 - d.p50, w.p99 - d.p99));
            cpus[i].push(cpu);
        }
        direct.push((d.p50, d.p99));
    }
    println!(
        "\nmedians over {rounds} rounds: direct p50 {:.0} µs, p99 {:.0} µs",
        median(direct.iter().map(|d| d.0).collect()),
        median(direct.iter().map(|d| d.1).collect())
    );
    for ((s, a), c) in sides.iter().zip(&added).zip(&cpus) {
        println!(
            "  {} adds p50 {:.0} µs, p99 {:.0} µs; gateway CPU {:.1} µs per call",
            s.name,
            median(a.iter().map(|x| x.0).collect()),
            median(a.iter().map(|x| x.1).collect()),
            median(c.clone())
        );
    }
    let (a, b) = (median(cpus[0].clone()), median(cpus[1].clone()));
    println!("  B/A: {:.3}x CPU per call", b / a.max(f64::MIN_POSITIVE));
}
