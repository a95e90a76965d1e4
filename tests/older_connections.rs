//! `enable` ends the connections a workload opened before it: a keep-alive connection to an
//! upstream would otherwise stay ungoverned for as long as it lives. The workload's next
//! request on it fails, its reconnect goes through the gateway and is decided; connections a
//! workload server accepted are left alone.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use callgate_e2e::*;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

fn payments(port: u16) -> String {
    format!(
        r#"
service: payments
match:
  hosts: ["127.0.0.1:{port}"]
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
rules:
  - name: no-reads
    function: get_payment
    action: deny
"#
    )
}

/// The workload: a keep-alive client of the upstream and a server of its own. It makes one
/// request, accepts one inbound connection, then waits for `go` (the test enables its cgroup
/// meanwhile) and tries again on the same connection, then on a new one; it prints one line
/// per step.
const WORKLOAD: &str = r#"
import http.client, os, socket, sys, time
up_port, own_port, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.1', own_port)); srv.listen(1)
c = http.client.HTTPConnection('127.0.0.1', up_port, timeout=10)
c.request('GET', '/v1/payments/p1'); r = c.getresponse(); r.read()
print('first', r.status, flush=True)
inbound, _ = srv.accept()
print('accepted', flush=True)
deadline = time.monotonic() + 20
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.02)
try:
    c.request('GET', '/v1/payments/p2'); r = c.getresponse(); r.read()
    print('second', r.status, flush=True)
except Exception as e:
    print('second failed', type(e).__name__, flush=True)
c = http.client.HTTPConnection('127.0.0.1', up_port, timeout=10)
c.request('GET', '/v1/payments/p3'); r = c.getresponse(); r.read()
print('reconnect', r.status, flush=True)
inbound.sendall(b'still here')
inbound.close()
"#;

#[test]
fn enable_ends_connections_opened_before_it() {
    let test = "enable_ends_connections_opened_before_it";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new("older-conns");
    let up = upstream(&dir, None);
    let policies = policy_repo(&dir, REPO, &[("payments", &payments(up.port))]);
    let gw = gateway_with_config(&policies, "", &dir);
    let cg = TestCgroup::new("older");
    let own_port = free_port();
    let go = dir.join("go");
    let log = dir.join("workload.log");
    let mut workload = cg.spawn(
        &[
            "python3",
            "-c",
            WORKLOAD,
            &up.port.to_string(),
            &own_port.to_string(),
            &go.display().to_string(),
        ],
        &log,
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let first = wait_for(Duration::from_secs(15), || {
        read_log().contains("first").then_some(())
    });
    assert!(first.is_some(), "workload: {}", read_log());
    // A client outside the cgroup connects to the workload's own server.
    let mut inbound = TcpStream::connect(("127.0.0.1", own_port)).expect("connect to workload");
    inbound
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let accepted = wait_for(Duration::from_secs(10), || {
        read_log().contains("accepted").then_some(())
    });
    assert!(accepted.is_some(), "workload: {}", read_log());

    gw.enable(&cg);
    std::fs::write(&go, "").expect("go");
    let done = wait_for(Duration::from_secs(25), || {
        workload.try_wait().ok().flatten()
    });
    if done.is_none() {
        let _ = workload.kill();
        let _ = workload.wait();
    }
    let out = read_log();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"first 200"), "{out}");
    let second = lines.get(2).copied().unwrap_or_default();
    assert!(
        [
            "ConnectionResetError",
            "ConnectionAbortedError",
            "BrokenPipeError",
            "RemoteDisconnected"
        ]
        .iter()
        .any(|e| second == format!("second failed {e}")),
        "the old connection still worked after enable: {out}"
    );
    assert_eq!(
        lines.get(3),
        Some(&"reconnect 403"),
        "the reconnect was not decided: {out}"
    );
    let requests = up.requests();
    assert_eq!(
        requests
            .iter()
            .map(|r| r["path"].as_str())
            .collect::<Vec<_>>(),
        [Some("/v1/payments/p1")],
        "the upstream saw more than the request made before enable"
    );
    // The inbound connection the workload accepted was not ended.
    let mut got = Vec::new();
    inbound.read_to_end(&mut got).expect("read inbound");
    assert_eq!(got, b"still here");
    let _ = inbound.write_all(b"");
    assert!(
        gw.log()
            .contains("ended the connections opened before enable"),
        "{}",
        gw.log()
    );
}

#[test]
fn enable_ends_connected_udp_sockets_it_would_refuse() {
    let test = "enable_ends_connected_udp_sockets_it_would_refuse";
    if !ebpf_available(test) {
        return;
    }
    let dir = TestDir::new("older-udp");
    let gw = Gateway::start();
    let cg = TestCgroup::new("older-udp");
    // QUIC-like: a UDP "server" outside the cgroup that logs every datagram.
    let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    server
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let port = server.local_addr().expect("addr").port();
    let go = dir.join("go");
    let log = dir.join("workload.log");
    let mut workload = cg.spawn(
        &[
            "python3",
            "-c",
            "import os, socket, sys, time
port, go = int(sys.argv[1]), sys.argv[2]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('127.0.0.1', port))
u.send(b'before'); print('sent before', flush=True)
deadline = time.monotonic() + 20
while not os.path.exists(go) and time.monotonic() < deadline:
    time.sleep(0.02)
try:
    u.send(b'after'); print('sent after', flush=True)
except OSError as e:
    print('after failed', type(e).__name__, flush=True)",
            &port.to_string(),
            &go.display().to_string(),
        ],
        &log,
    );
    let mut buf = [0u8; 64];
    let (n, _) = server
        .recv_from(&mut buf)
        .expect("the datagram before enable");
    assert_eq!(&buf[..n], b"before");
    gw.enable(&cg);
    std::fs::write(&go, "").expect("go");
    let done = wait_for(Duration::from_secs(25), || {
        workload.try_wait().ok().flatten()
    });
    if done.is_none() {
        let _ = workload.kill();
        let _ = workload.wait();
    }
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.contains("sent before\nafter failed"),
        "the connected UDP socket still sent after enable: {out}"
    );
    let got = server.recv_from(&mut buf);
    assert!(
        got.is_err(),
        "the server received {:?}",
        got.map(|(n, _)| buf[..n].to_vec())
    );
    assert!(
        gw.log()
            .contains("ended the connections opened before enable")
    );
}
