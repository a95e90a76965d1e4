//! Connections spread over the data-path threads. Every thread accepts from the same
//! listeners, and the one on a CPU when connections come used to win the race for all of them:
//! a client's keep-alive pool opened at once could be served by one thread while the others
//! idled (32 against 0 in one bench run in six). Each thread now serves its share, the
//! connections it hands over are served as well as its own, and a thread's count falls back
//! when its connections close.
use std::{fs, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

/// Opens `CONNS` connections at once (all connected before any is used), makes three
/// keep-alive calls on each, reports, and holds them until `release` exists.
const CLIENT: &str = r#"
import os, socket, sys, time
port, conns, ready, release = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(conns)]
ok = 0
for round in range(3):
    for i, s in enumerate(socks):
        s.sendall(f"GET /v1/payments/p{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    for s in socks:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("closed early")
            head += chunk
        top, _, body = head.partition(b"\r\n\r\n")
        length = 0
        for line in top.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("closed early")
            body += chunk
        ok += top.startswith(b"HTTP/1.1 200")
with open(ready, "w") as f:
    f.write(str(ok))
deadline = time.time() + 30
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.02)
"#;

const CONNS: usize = 32;

fn lanes(gw: &Gateway) -> Vec<u64> {
    gw.status()["lanes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[test]
fn connections_opened_at_once_are_spread_over_the_data_threads() {
    let test = "connections_opened_at_once_are_spread_over_the_data_threads";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new("callgate-lanes");
    let up = upstream(&dir, None);
    let policies = payments_reads(&dir, up.port);
    // More threads than CPUs: the accept race is then the most uneven.
    let web = free_port();
    let gw = gateway_with_config(
        &policies,
        &format!("workers: 4\nadmin_http:\n  listen: 127.0.0.1:{web}\n"),
        &dir,
    );
    let cg = TestCgroup::new("lanes");
    gw.enable(&cg);
    let script = dir.join("client.py");
    fs::write(&script, CLIENT).expect("client");
    let py = party_python().display().to_string();
    for attempt in 0..3 {
        let ready = dir.join(format!("ready-{attempt}"));
        let release = dir.join(format!("release-{attempt}"));
        let mut client = cg.spawn(
            &[
                &py,
                &script.display().to_string(),
                &up.port.to_string(),
                &CONNS.to_string(),
                &ready.display().to_string(),
                &release.display().to_string(),
            ],
            &dir.join(format!("client-{attempt}.log")),
        );
        let ok = wait_for(Duration::from_secs(20), || {
            fs::read_to_string(&ready).ok().filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| {
            panic!(
                "the client never got its answers: {}\n{}",
                fs::read_to_string(dir.join(format!("client-{attempt}.log"))).unwrap_or_default(),
                gw.log()
            )
        });
        assert_eq!(
            ok,
            (3 * CONNS).to_string(),
            "every call on every connection answered"
        );
        let open = lanes(&gw);
        assert_eq!(open.len(), 4, "one count per data-path thread: {open:?}");
        assert_eq!(open.iter().sum::<u64>(), CONNS as u64, "{open:?}");
        // Exact but for two threads accepting at the same moment (each keeps its own).
        let (min, max) = (open.iter().min(), open.iter().max());
        assert!(
            max.zip(min)
                .is_some_and(|(max, min)| max - min <= 2 && *max <= CONNS as u64 / 4 + 1),
            "attempt {attempt}: {CONNS} connections opened at once were served {open:?} by the \
             data-path threads"
        );
        // The metric says the same.
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{web}/metrics"))
            .output()
            .expect("curl");
        let metrics = String::from_utf8_lossy(&out.stdout);
        for (lane, n) in open.iter().enumerate() {
            let line = format!("callgate_lane_connections{{lane=\"{lane}\"}} {n}");
            assert!(
                metrics.lines().any(|l| l == line),
                "no `{line}` in\n{metrics}"
            );
        }
        // Connections that moved are counted, and none failed to (each is served above).
        let moved = gw.counter("handed_over");
        let line = format!("callgate_connections_handed_over_total {moved}");
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
        assert_eq!(gw.counter("handover_failed"), 0, "{}", gw.log());
        fs::write(&release, "").expect("release");
        let _ = client.wait();
        let closed = wait_for(Duration::from_secs(10), || {
            let open = lanes(&gw);
            open.iter().all(|n| *n == 0).then_some(open)
        });
        assert!(
            closed.is_some(),
            "the threads' counts fell back to 0 once the connections closed: {:?}",
            lanes(&gw)
        );
    }
}
