//! connect4/connect6 + sock_ops + the accept stage: which connections are redirected, and that
//! redirected ones reach the right upstream with the right workload attached.
use callgate_e2e::*;

#[test]
fn curl_and_python_in_an_enabled_cgroup_go_through_the_gateway() {
    if !ebpf_available("curl_and_python") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let gw = Gateway::start();
    let cg = TestCgroup::new("cg-clients");
    gw.enable(&cg);

    let (code, body) = curl_in(&cg, &[&server.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO));
    let py = python_in(
        &cg,
        &format!(
            "import urllib.request; print(urllib.request.urlopen('{}', timeout=10).read().decode(), end='')",
            server.url("/hello.txt")
        ),
    );
    assert_eq!(py, HELLO.trim());

    let recent = gw.recent();
    assert_eq!(recent.len(), 2, "{recent:#?}");
    let cgroup = cg.rel();
    for (conn, comm) in recent.iter().zip(["curl", "python3"]) {
        assert_eq!(conn["original_dst"], server.addr.to_string());
        assert_eq!(conn["workload"]["comm"], comm);
        assert_eq!(conn["workload"]["cgroup"], cgroup.as_str());
        assert_eq!(conn["workload"]["uid"], 0);
        assert!(conn["workload"]["pid"].as_u64().unwrap_or(0) > 1);
        assert_eq!(conn["outcome"], "ok");
        assert!(conn["bytes_down"].as_u64().unwrap_or(0) > HELLO.len() as u64);
    }
    // A connection that ended well is logged at debug only: its record is the trail.
    for comm in ["curl", "python3"] {
        let r = record_where(&gw, comm, |r| r["workload"]["comm"] == comm);
        assert_eq!(r["destination"], server.addr.to_string(), "{r}");
        assert_eq!(r["workload"]["pid"], recent_pid(&recent, comm), "{r}");
    }
    assert!(
        !gw.log().contains("connection closed"),
        "a connection that ended well is not logged at info"
    );
}

fn recent_pid(recent: &[serde_json::Value], comm: &str) -> serde_json::Value {
    recent
        .iter()
        .find(|c| c["workload"]["comm"] == comm)
        .map(|c| c["workload"]["pid"].clone())
        .unwrap_or_default()
}

#[test]
fn a_process_outside_the_cgroup_is_not_intercepted() {
    if !ebpf_available("outside") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let gw = Gateway::start();
    let cg = TestCgroup::new("cg-enabled");
    let other = TestCgroup::new("cg-other");
    gw.enable(&cg);

    let (code, body) = curl_in(&other, &[&server.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO));
    assert_eq!(gw.counter("accepted"), 0);
    assert_eq!(gw.kernel_counter("redirected"), 0);
}

#[test]
fn ipv6_and_ipv4_mapped_destinations_are_intercepted() {
    if !ebpf_available("ipv6") {
        return;
    }
    let v6 = HttpServer::start("::1");
    let v4 = HttpServer::start("127.0.0.1");
    let gw = Gateway::start();
    let cg = TestCgroup::new("cg-v6");
    gw.enable(&cg);

    let (code, body) = curl_in(&cg, &["-g", &v6.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO));
    // An AF_INET6 socket dialling ::ffff:127.0.0.1 travels over IPv4.
    let mapped = python_in(
        &cg,
        &format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET6)\n\
             s.connect(('::ffff:127.0.0.1', {port}))\n\
             s.sendall(b'GET /hello.txt HTTP/1.0\\r\\n\\r\\n')\n\
             data = b''\n\
             while True:\n\
             \x20   chunk = s.recv(4096)\n\
             \x20   if not chunk: break\n\
             \x20   data += chunk\n\
             print(data.split(b'\\r\\n\\r\\n', 1)[1].decode(), end='')",
            port = v4.addr.port()
        ),
    );
    assert_eq!(mapped, HELLO.trim());

    let recent = gw.recent();
    let dsts: Vec<&str> = recent
        .iter()
        .filter_map(|c| c["original_dst"].as_str())
        .collect();
    assert_eq!(
        dsts,
        [v6.addr.to_string(), v4.addr.to_string()],
        "{recent:#?}"
    );
}

#[test]
fn nested_cgroups_and_two_enabled_cgroups() {
    if !ebpf_available("nested") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let gw = Gateway::start();
    let a = TestCgroup::new("cg-a");
    let a_child = a.child("worker");
    let b = TestCgroup::new("cg-b");
    gw.enable(&a);
    gw.enable(&b);

    for cg in [&a_child, &b] {
        let (code, body) = curl_in(cg, &[&server.url("/hello.txt")]);
        assert_eq!((code, body.as_str()), (0, HELLO));
    }
    assert_eq!(gw.counter("forwarded"), 2);
    let cgroups: Vec<String> = gw
        .recent()
        .iter()
        .filter_map(|c| c["workload"]["cgroup"].as_str().map(String::from))
        .collect();
    assert_eq!(cgroups, [a_child.rel(), b.rel()]);

    // Disabling one leaves the other intercepted.
    gw.disable(&a);
    curl_in(&a_child, &[&server.url("/hello.txt")]);
    curl_in(&b, &[&server.url("/hello.txt")]);
    assert_eq!(
        gw.counter("forwarded"),
        3,
        "only b's connection went through the gateway"
    );

    // Enabling a cgroup and its parent at once still forwards each connection once.
    gw.enable(&a);
    gw.enable(&a_child);
    let (code, body) = curl_in(&a_child, &[&server.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO));
    assert_eq!(gw.counter("forwarded"), 4);
}

#[test]
fn a_gateway_inside_an_enabled_cgroup_does_not_loop() {
    if !ebpf_available("no_loop") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let mut gw = Gateway::start();
    let cg = TestCgroup::new("cg-gateway");
    // Run the gateway itself inside the cgroup it intercepts: its own upstream connection to
    // the (intercepted) server must not come back to it.
    let bin = callgate_bin().display().to_string();
    let mut argv: Vec<String> = vec![bin];
    argv.extend(gw.args());
    let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
    let log = gw.dir.join("gateway.log");
    gw.adopt(|| cg.spawn(&argv_ref, &log));
    gw.enable(&cg);

    let (code, body) = curl_in(&cg, &[&server.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO));
    assert_eq!(
        gw.counter("accepted"),
        1,
        "one connection: the workload's, not the gateway's own"
    );
    assert!(gw.kernel_counter("skipped_gateway") >= 1);
}

#[test]
fn a_direct_connection_to_the_listener_is_closed() {
    if !ebpf_available("direct_listener") {
        return;
    }
    let gw = Gateway::start();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{}/", gw.port),
        ])
        .output()
        .expect("curl");
    assert!(
        !out.status.success(),
        "the listener must not serve a connection it has no entry for"
    );
    assert_eq!(gw.counter("refused_no_entry"), 1);
    assert_eq!(gw.counter("forwarded"), 0);
}

#[test]
fn half_close_is_carried_across_and_large_bodies_arrive_whole() {
    if !ebpf_available("half_close") {
        return;
    }
    // The upstream reads until the client's FIN, then answers: only a gateway that forwards
    // the half-close lets this finish.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = upstream.local_addr().expect("addr");
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        use std::io::{Read, Write};
        let (mut s, _) = upstream.accept()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        s.write_all(format!("got {} bytes", got.len()).as_bytes())?;
        Ok(got.len())
    });
    let gw = Gateway::start();
    let cg = TestCgroup::new("cg-halfclose");
    gw.enable(&cg);
    let out = python_in(
        &cg,
        &format!(
            "import socket\n\
             s = socket.create_connection(('127.0.0.1', {port}), timeout=20)\n\
             s.sendall(b'x' * 3_000_000)\n\
             s.shutdown(socket.SHUT_WR)\n\
             reply = b''\n\
             while True:\n\
             \x20   chunk = s.recv(65536)\n\
             \x20   if not chunk: break\n\
             \x20   reply += chunk\n\
             print(reply.decode())",
            port = addr.port()
        ),
    );
    assert_eq!(out, "got 3000000 bytes");
    assert_eq!(
        server.join().expect("server thread").expect("server io"),
        3_000_000
    );
    let conn = &gw.recent()[0];
    assert_eq!(conn["bytes_up"], 3_000_000);
    assert_eq!(conn["outcome"], "ok");
}
