//! Pass-through at kernel speed: a connection the policy lets through as plain TCP
//! (`tcp: allow`) is spliced socket to socket in the kernel (`sk_skb` redirect). The bytes
//! arrive whole both ways, a half-close is carried, an idle connection is ended, the record
//! counts the bytes, and closed connections leave nothing in the splice maps.
use std::{net::TcpListener, thread, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

/// An upstream that echoes what it reads and, after the client's FIN, sends a trailer naming
/// how many bytes it got, then closes. Serves `conns` connections, one thread each.
fn echo_upstream(conns: usize) -> (u16, thread::JoinHandle<Vec<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = thread::spawn(move || {
        let mut handles = Vec::new();
        for _ in 0..conns {
            let Ok((s, _)) = listener.accept() else { break };
            handles.push(thread::spawn(move || echo_with_trailer(s).unwrap_or(0)));
        }
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    (port, server)
}

/// The gateway, the enabled cgroup, the upstream's port, the test's directory and the
/// upstream's thread (bytes it read per connection).
type Setup = (
    Gateway,
    TestCgroup,
    u16,
    TestDir,
    thread::JoinHandle<Vec<usize>>,
);

fn setup(test: &str, conns: usize, config: &str) -> Option<Setup> {
    if !ebpf_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-splice");
    let (port, server) = echo_upstream(conns);
    let raw = format!("service: raw\nmatch:\n  hosts: [\"127.0.0.1:{port}\"]\ntcp: allow\n");
    let policies = policy_repo(&dir, REPO, &[("raw", &raw)]);
    let gw = gateway_with_config(&policies, config, &dir);
    let splice = &gw.status()["splice"];
    assert_eq!(
        splice["mode"],
        "kernel",
        "the kernel splice is set up: {splice}\n{}",
        gw.log()
    );
    let cg = TestCgroup::new("splice");
    gw.enable(&cg);
    Some((gw, cg, port, dir, server))
}

fn finished(gw: &Gateway, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(15), || {
        let r = gw.recent();
        (r.len() >= n).then_some(r)
    })
    .unwrap_or_else(|| {
        panic!(
            "{n} connections did not finish: {:#?}\n{}",
            gw.recent(),
            gw.log()
        )
    })
}

#[test]
fn large_transfers_arrive_whole_both_ways_with_half_close_and_counts() {
    let Some((gw, cg, port, _dir, server)) = setup(
        "splice_large",
        1,
        "idle_timeout_s: 30\nkernel_splice: true\n",
    ) else {
        return;
    };
    let size = 8_000_000;
    let out = python_in(&cg, &echo_client(port, size));
    let trailer = format!("after-eof:{size}").len();
    assert_eq!(out, format!("ok {}", size + trailer), "{}", gw.log());
    assert_eq!(server.join().expect("server"), vec![size]);
    let conn = &finished(&gw, 1)[0];
    assert_eq!(conn["outcome"], "ok", "{conn}");
    assert_eq!(conn["bytes_up"], size as u64, "{conn}");
    assert_eq!(conn["bytes_down"], (size + trailer) as u64, "{conn}");
    let r = record_where(&gw, "the spliced connection", |r| r["service"] == "raw");
    assert_eq!(r["bytes_in"], size as u64, "{r}");
    assert_eq!(r["bytes_out"], (size + trailer) as u64, "{r}");
    // Spliced in the kernel: the connection is gone from the maps.
    let splice = &gw.status()["splice"];
    assert_eq!(
        (splice["sockets"].as_u64(), splice["peers"].as_u64()),
        (Some(0), Some(0)),
        "{splice}"
    );
}

#[test]
fn an_idle_spliced_connection_is_ended() {
    let Some((gw, cg, port, _dir, _server)) =
        setup("splice_idle", 1, "idle_timeout_s: 2\nkernel_splice: true\n")
    else {
        return;
    };
    let code = format!(
        "import socket, time\n\
         s = socket.create_connection(('127.0.0.1', {port}), timeout=20)\n\
         s.sendall(b'\\x00\\x01binary hello')\n\
         print(s.recv(100))\n\
         t = time.time()\n\
         rest = s.recv(100)\n\
         print(repr(rest), 1.5 < time.time() - t < 10)"
    );
    let out = python_in(&cg, &code);
    assert_eq!(out, "b'\\x00\\x01binary hello'\nb'' True", "{}", gw.log());
    let conn = &finished(&gw, 1)[0];
    assert!(
        conn["outcome"].as_str().is_some_and(|o| o.contains("idle")),
        "{conn}"
    );
    assert_eq!(conn["bytes_up"], 14, "{conn}");
    assert_eq!(conn["bytes_down"], 14, "{conn}");
}

#[test]
fn many_connections_leave_the_splice_maps_empty() {
    let n = 150;
    let Some((gw, cg, port, _dir, server)) = setup(
        "splice_many",
        n,
        "idle_timeout_s: 30\nkernel_splice: true\n",
    ) else {
        return;
    };
    // Half of them close at once without half-closing first (the kernel sees a FIN with
    // bytes still in flight, or a reset).
    let code = format!(
        "import socket\n\
         ok = 0\n\
         for i in range({n}):\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n\
         \x20   msg = bytes([0, 1, 2]) + str(i).encode()\n\
         \x20   s.sendall(msg)\n\
         \x20   if i % 2 == 0:\n\
         \x20       s.shutdown(socket.SHUT_WR)\n\
         \x20       got = b''\n\
         \x20       while True:\n\
         \x20           c = s.recv(100)\n\
         \x20           if not c: break\n\
         \x20           got += c\n\
         \x20   else:\n\
         \x20       got = s.recv(100)\n\
         \x20   want = msg + b'after-eof:%d' % len(msg) if i % 2 == 0 else msg\n\
         \x20   if got == want: ok += 1\n\
         \x20   else: print(i, got)\n\
         \x20   s.close()\n\
         print(ok)"
    );
    let out = python_in(&cg, &code);
    assert_eq!(out, n.to_string(), "{}", gw.log());
    finished(&gw, n.min(100));
    let splice = wait_for(Duration::from_secs(15), || {
        let s = gw.status()["splice"].clone();
        (s["sockets"] == 0 && s["peers"] == 0).then_some(s)
    });
    assert!(
        splice.is_some(),
        "maps not empty: {}",
        gw.status()["splice"]
    );
    assert_eq!(server.join().expect("server").len(), n);
}
