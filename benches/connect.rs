//! `cargo xtask bench --suite connect`: what interception costs a workload.
//!
//! - connect() latency: the same process dials a loopback server outside any enabled cgroup,
//!   then moves itself into an enabled one and dials again (connect4 + sock_ops + redirect);
//! - pass-through throughput: 64 KiB responses on a new connection each, and one bulk stream,
//!   direct and through the gateway.
//!
//! Goals (DESIGN/issue 3): redirect adds ≤ 5 µs per connect; pass-through ≥ 0.9× direct.
//! A plain harness rather than criterion: the process must change cgroup between the baseline
//! and the measured run, which criterion's model of independent benchmarks does not allow.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use callgate_benches::{Samples, micros};
use callgate_e2e::{Gateway, TestCgroup, ebpf_available};

const CONNECTS: usize = 3000;
const TRANSFERS: usize = 1000;
const CHUNK: usize = 64 * 1024;
const BULK: usize = 512 * 1024 * 1024;

fn main() {
    if !ebpf_available("bench connect") {
        return;
    }
    // `cargo bench` passes --bench; nothing else to parse.
    let connect_srv = spawn_server(|mut s| {
        let _ = s.read(&mut [0u8; 1]);
    });
    let chunk_srv = spawn_server(|mut s| {
        let _ = s.write_all(&vec![7u8; CHUNK]);
    });
    let bulk_srv = spawn_server(|mut s| {
        let buf = vec![7u8; 256 * 1024];
        let mut left = BULK;
        while left > 0 {
            let n = left.min(buf.len());
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });

    let gw = Gateway::start();
    let cg = TestCgroup::new("bench-connect");
    gw.enable(&cg);

    let direct = measure(connect_srv, chunk_srv, bulk_srv);
    // Move this whole process (server threads included; accept is not intercepted) into the
    // enabled cgroup.
    std::fs::write(cg.path.join("cgroup.procs"), std::process::id().to_string())
        .expect("join cgroup");
    let via = measure(connect_srv, chunk_srv, bulk_srv);
    let parent = callgate_e2e::cgroup_mount()
        .expect("mount")
        .join("cgroup.procs");
    std::fs::write(parent, std::process::id().to_string()).expect("leave cgroup");

    println!(
        "\nconnect suite ({} connects, {} x 64 KiB transfers, {} MiB bulk)",
        CONNECTS,
        TRANSFERS,
        BULK >> 20
    );
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "", "direct", "intercepted", "ratio"
    );
    let row = |name: &str, d: f64, v: f64, unit: &str| {
        println!(
            "{name:<34} {d:>9.2} {unit:<2} {v:>9.2} {unit:<2} {:>9.2}x",
            v / d
        );
    };
    row(
        "connect() p50",
        micros(direct.connect.pct(50.0)),
        micros(via.connect.pct(50.0)),
        "us",
    );
    row(
        "connect() p99",
        micros(direct.connect.pct(99.0)),
        micros(via.connect.pct(99.0)),
        "us",
    );
    row(
        "64 KiB transfer throughput",
        direct.chunk_mbps,
        via.chunk_mbps,
        "MB/s",
    );
    row(
        "bulk stream throughput",
        direct.bulk_mbps,
        via.bulk_mbps,
        "MB/s",
    );
    let added = micros(via.connect.pct(50.0)) - micros(direct.connect.pct(50.0));
    println!("redirect adds {added:.2} us per connect at p50 (goal <= 5 us)");
    println!(
        "pass-through throughput {:.2}x direct for 64 KiB transfers, {:.2}x for bulk (goal >= 0.9x)",
        via.chunk_mbps / direct.chunk_mbps,
        via.bulk_mbps / direct.bulk_mbps
    );
    assert_eq!(gw.counter("upstream_errors"), 0);
}

struct Run {
    connect: Samples,
    chunk_mbps: f64,
    bulk_mbps: f64,
}

fn measure(connect_srv: SocketAddr, chunk_srv: SocketAddr, bulk_srv: SocketAddr) -> Run {
    let mut samples = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let t = Instant::now();
        let s = TcpStream::connect(connect_srv).expect("connect");
        samples.push(t.elapsed());
        drop(s);
    }
    let mut buf = vec![0u8; 256 * 1024];
    let t = Instant::now();
    let mut total = 0usize;
    for _ in 0..TRANSFERS {
        let mut s = TcpStream::connect(chunk_srv).expect("connect");
        total += read_all(&mut s, &mut buf);
    }
    let chunk_mbps = total as f64 / t.elapsed().as_secs_f64() / 1e6;
    assert_eq!(total, TRANSFERS * CHUNK, "every transfer arrived whole");
    let t = Instant::now();
    let mut s = TcpStream::connect(bulk_srv).expect("connect");
    let got = read_all(&mut s, &mut buf);
    assert_eq!(got, BULK);
    let bulk_mbps = got as f64 / t.elapsed().as_secs_f64() / 1e6;
    Run {
        connect: Samples::new(samples),
        chunk_mbps,
        bulk_mbps,
    }
}

fn read_all(s: &mut TcpStream, buf: &mut [u8]) -> usize {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut total = 0;
    loop {
        match s.read(buf) {
            Ok(0) => return total,
            Ok(n) => total += n,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn spawn_server(handler: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || handler(s));
        }
    });
    addr
}
