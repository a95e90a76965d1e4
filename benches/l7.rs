//! `cargo xtask bench --suite l7`: small JSON calls over HTTP/1.1 keep-alive, with `wrk`,
//! against one nginx upstream reached three ways in the same run:
//!
//! - direct;
//! - through an nginx reverse proxy (2 workers, upstream keep-alive);
//! - through callgate, intercepted from an enabled cgroup, with policy, masking (card numbers,
//!   e-mail) and recording all on.
//!
//! Goals (issue 6): callgate ≥ 1.0× nginx's requests per second at full load; added p99 over
//! direct ≤ 150 µs at light load. wrk has no fixed-rate mode (that is wrk2, not in Debian), so
//! "light load" is one connection, one request at a time.
use std::{fs, path::Path, process::Command};

use callgate_e2e::{Gateway, Party, TestCgroup, ebpf_available, free_port, policy_repo, unique};

const BODY: &str = r#"{"id":42,"name":"widget","owner":"team-a","price":1299,"tags":["a","b","c"],"note":"nothing sensitive here, just a small JSON answer of about two hundred bytes"}"#;
const FULL: &[&str] = &["-t2", "-c32", "-d8s"];
const LIGHT: &[&str] = &["-t1", "-c1", "-d5s"];

fn main() {
    if !ebpf_available("bench l7") {
        return;
    }
    let dir = std::env::temp_dir().join(unique("callgate-bench-l7"));
    fs::create_dir_all(&dir).expect("dir");
    let up_port = free_port();
    let _upstream = nginx(
        &dir,
        "upstream",
        1,
        &format!(
            "server {{ listen 127.0.0.1:{up_port}; keepalive_requests 1000000; \
             location / {{ default_type application/json; return 200 '{BODY}'; }} }}"
        ),
        up_port,
    );
    let proxy_port = free_port();
    let _proxy = nginx(
        &dir,
        "proxy",
        2,
        &format!(
            "upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }} \
             server {{ listen 127.0.0.1:{proxy_port}; keepalive_requests 1000000; \
             location / {{ proxy_pass http://up; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }} }}"
        ),
        proxy_port,
    );
    let service = format!(
        r#"
service: items
match: {{ hosts: ["127.0.0.1:{up_port}"] }}
protocol: rest
functions:
  get_item: {{ route: "GET /v1/items/{{id}}" }}
rules:
  - {{ name: reads, function: get_item, action: allow }}
response:
  mask: [card_number, email]
"#
    );
    let policies = policy_repo(&dir, "default_action: deny\n", &[("items", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    // The gateway logs each connection, not each call: keep-alive means few lines.
    let cg = TestCgroup::new("bench-l7");
    gw.enable(&cg);

    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/items/42");
    let direct = (
        wrk(None, FULL, &url(up_port)),
        wrk(None, LIGHT, &url(up_port)),
    );
    let proxy = (
        wrk(None, FULL, &url(proxy_port)),
        wrk(None, LIGHT, &url(proxy_port)),
    );
    let gate = (
        wrk(Some(&cg), FULL, &url(up_port)),
        wrk(Some(&cg), LIGHT, &url(up_port)),
    );
    let calls = gw.counter("calls");
    assert!(
        calls as f64 >= gate.0.rps,
        "the callgate runs did not go through the gateway ({calls} calls)"
    );

    println!(
        "\nl7 suite: GET of a {} byte JSON answer, HTTP/1.1 keep-alive, wrk",
        BODY.len()
    );
    println!("full load ({}):", FULL.join(" "));
    println!(
        "{:<12} {:>12} {:>10} {:>10} {:>14}",
        "", "req/s", "p50 µs", "p99 µs", "req/s vs nginx"
    );
    for (name, r) in [
        ("direct", &direct.0),
        ("nginx", &proxy.0),
        ("callgate", &gate.0),
    ] {
        println!(
            "{name:<12} {:>12.0} {:>10.0} {:>10.0} {:>13.2}x",
            r.rps,
            r.p50,
            r.p99,
            r.rps / proxy.0.rps
        );
    }
    println!("light load ({}):", LIGHT.join(" "));
    println!(
        "{:<12} {:>12} {:>10} {:>10} {:>16}",
        "", "req/s", "p50 µs", "p99 µs", "added p99 µs"
    );
    for (name, r) in [
        ("direct", &direct.1),
        ("nginx", &proxy.1),
        ("callgate", &gate.1),
    ] {
        println!(
            "{name:<12} {:>12.0} {:>10.0} {:>10.0} {:>16.0}",
            r.rps,
            r.p50,
            r.p99,
            r.p99 - direct.1.p99
        );
    }
    println!(
        "goals: callgate/nginx req/s ≥ 1.00x (got {:.2}x); added p99 ≤ 150 µs (got {:.0} µs)",
        gate.0.rps / proxy.0.rps,
        gate.1.p99 - direct.1.p99
    );
    let _ = fs::remove_dir_all(&dir);
}

struct Wrk {
    rps: f64,
    p50: f64,
    p99: f64,
}

/// Runs wrk (inside `cg` when given, so that its connections are intercepted).
fn wrk(cg: Option<&TestCgroup>, load: &[&str], url: &str) -> Wrk {
    let mut argv = vec!["wrk", "--latency"];
    argv.extend_from_slice(load);
    argv.push(url);
    let out = match cg {
        Some(cg) => cg.run(&argv),
        None => Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .expect("run wrk"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx"),
        "wrk saw error answers (is the call allowed?):\n{text}"
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
            .to_string()
    };
    Wrk {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: micros(&field("50%")),
        p99: micros(&field("99%")),
    }
}

/// wrk's `123.45us` / `1.20ms` / `2.00s` in microseconds.
fn micros(s: &str) -> f64 {
    let (n, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        (s, 1.0)
    };
    n.parse::<f64>().unwrap_or(f64::NAN) * scale
}

/// An nginx of its own (foreground, files under `dir`), stopped on drop.
fn nginx(dir: &Path, name: &str, workers: u32, server: &str, port: u16) -> Party {
    let root = dir.join(name);
    fs::create_dir_all(&root).expect("nginx dir");
    let conf = root.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; worker_processes {workers}; pid {root}/nginx.pid; \
             error_log {root}/error.log; events {{ worker_connections 4096; }} \
             http {{ access_log off; client_body_temp_path {root}; proxy_temp_path {root}; \
             {server} }}",
            root = root.display()
        ),
    )
    .expect("nginx.conf");
    Party::start(
        &[
            "nginx",
            "-c",
            &conf.display().to_string(),
            "-p",
            &root.display().to_string(),
        ],
        port,
        root.join("nginx.log"),
    )
}
