//! The bypass matrix: ways a process in an enabled cgroup might open a TCP connection, each of
//! which must go through the gateway (or be refused), never straight out. Each case runs on
//! its own and must add exactly one connection to the gateway's count. (IPv6, IPv4-mapped,
//! UDP/QUIC and a direct connection to the listener are in `connect.rs` and `sendmsg.rs`.)
use callgate_e2e::*;

/// Python that fetches `/hello.txt` from `HOST:PORT` some way and prints the body.
const FETCH: &str = "
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
REQ = b'GET /hello.txt HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'
def body(s):
    data = b''
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b'\\r\\n\\r\\n', 1)[1].decode()
";

fn cases() -> Vec<(&'static str, String, bool)> {
    let nobody = true;
    vec![
        (
            "blocking connect",
            "s = socket.create_connection((host, port), 5); s.sendall(REQ); print(body(s), end='')"
                .into(),
            !nobody,
        ),
        (
            "non-blocking connect",
            "import select
s = socket.socket(); s.setblocking(False)
s.connect_ex((host, port)); select.select([], [s], [], 5); s.setblocking(True)
s.sendall(REQ); print(body(s), end='')"
                .into(),
            !nobody,
        ),
        (
            "TCP Fast Open (sendto with MSG_FASTOPEN)",
            "s = socket.socket()  # blocking: without a cookie the SYN goes first
s.sendto(REQ, socket.MSG_FASTOPEN, (host, port)); s.settimeout(5); print(body(s), end='')"
                .into(),
            !nobody,
        ),
        (
            "a thread started after enable",
            "import threading
out = []
def run():
    s = socket.create_connection((host, port), 5); s.sendall(REQ); out.append(body(s))
t = threading.Thread(target=run); t.start(); t.join(); print(out[0], end='')"
                .into(),
            !nobody,
        ),
        (
            "a child process forked after enable",
            "import os
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    s = socket.create_connection((host, port), 5); s.sendall(REQ); os.write(w, body(s).encode()); os._exit(0)
os.waitpid(pid, 0); print(os.read(r, 4096).decode(), end='')"
                .into(),
            !nobody,
        ),
        (
            "an unprivileged process that tries to leave its cgroup",
            "import os
mount = [l.split()[4] for l in open('/proc/self/mountinfo') if ' - cgroup2 ' in l][0]
try:
    open(os.path.join(mount, 'cgroup.procs'), 'w').write(str(os.getpid()))
    sys.exit('moved itself out of its cgroup')
except PermissionError:
    pass
s = socket.create_connection((host, port), 5); s.sendall(REQ); print(body(s), end='')"
                .into(),
            nobody,
        ),
    ]
}

#[test]
fn every_way_to_connect_goes_through_the_gateway() {
    if !ebpf_available("every_way_to_connect_goes_through_the_gateway") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let gw = Gateway::start();
    let cg = TestCgroup::new("bypass");
    gw.enable(&cg);
    let host = server.addr.ip().to_string();
    let port = server.addr.port().to_string();
    for (name, code, as_nobody) in cases() {
        let script = format!("{FETCH}{code}");
        let mut argv: Vec<&str> = Vec::new();
        if as_nobody {
            argv.extend([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        // The system Python: a user's (pyenv) may not be readable by nobody.
        argv.extend(["/usr/bin/python3", "-c", &script, &host, &port]);
        let before = gw.counter("accepted");
        let out = cg.run(&argv);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout == HELLO,
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let went = wait_for(std::time::Duration::from_secs(5), || {
            (gw.counter("accepted") == before + 1).then_some(())
        });
        assert!(
            went.is_some(),
            "{name}: not through the gateway ({} accepted)",
            gw.counter("accepted")
        );
    }
}

/// The same matrix from a workload in a network namespace of its own (a container's), made
/// after `enable`: each way to connect reaches the gateway's listener inside that namespace,
/// and the gateway reaches the server on the namespace's own loopback (the host has none
/// there), so nothing is carried past the gateway nor dialled from the host's view.
#[test]
fn every_way_to_connect_from_a_namespace_of_its_own_goes_through_the_gateway() {
    use std::process::{Command, Stdio};
    if !ebpf_available("every_way_to_connect_from_a_namespace_of_its_own_goes_through_the_gateway")
    {
        return;
    }
    let gw = Gateway::start();
    let cg = TestCgroup::new("bypass-ns");
    gw.enable(&cg);
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let ns = Ns(unique("cgbyp"));
    let ip = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    };
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    // The server runs in the namespace but outside the enabled cgroup.
    let www = TestDir::new("bypass-ns-www");
    std::fs::write(www.join("hello.txt"), HELLO).expect("hello.txt");
    let port = "8081";
    let mut server = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-m", "http.server", port])
        .args(["--bind", "127.0.0.1", "--directory"])
        .arg(&*www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("http.server");
    let probe = format!("import socket; socket.create_connection(('127.0.0.1', {port}), 1)");
    let up = wait_for(std::time::Duration::from_secs(10), || {
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "python3", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(())
    });
    assert!(up.is_some(), "the server in the namespace did not start");
    // `ip netns exec` mounts a sysfs of its own, without the cgroup2 mount that case looks
    // for to try to leave (a container's cgroup namespace shows it only its own subtree).
    let cases = cases()
        .into_iter()
        .filter(|(name, _, _)| !name.contains("leave its cgroup"));
    for (name, code, as_nobody) in cases {
        let script = format!("{FETCH}{code}");
        let mut argv: Vec<&str> = vec!["ip", "netns", "exec", &ns.0];
        if as_nobody {
            argv.extend([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        argv.extend(["/usr/bin/python3", "-c", &script, "127.0.0.1", port]);
        let before = gw.counter("accepted");
        let out = cg.run(&argv);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout == HELLO,
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let went = wait_for(std::time::Duration::from_secs(5), || {
            (gw.counter("accepted") == before + 1).then_some(())
        });
        assert!(
            went.is_some(),
            "{name}: not through the gateway ({} accepted)",
            gw.counter("accepted")
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_connect_through_io_uring_goes_through_the_gateway() {
    if !ebpf_available("a_connect_through_io_uring_goes_through_the_gateway") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let gw = Gateway::start();
    let cg = TestCgroup::new("bypass-uring");
    gw.enable(&cg);
    let out = cg.run(&[
        env!("CARGO_BIN_EXE_uring-connect"),
        &server.addr.to_string(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        HELLO,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        gw.counter("accepted"),
        1,
        "IORING_OP_CONNECT went around the gateway"
    );
}

/// Without `CAP_NET_RAW`, raw sockets are refused by the kernel's own rule, the same in an
/// enabled cgroup and in one callgate does not touch: that is a precondition of the threat
/// model, not a bypass callgate stops. With it (root here), callgate's `sock_create` refuses
/// raw IP in an enabled cgroup (raw IP would carry TCP past the connect hooks) while the same
/// process opens them in an untouched cgroup; `AF_PACKET` has no cgroup hook at all and stays
/// the kernel's rule alone.
#[test]
fn raw_sockets_are_the_kernels_cap_net_raw_rule_not_callgates() {
    if !ebpf_available("raw_sockets_are_the_kernels_cap_net_raw_rule_not_callgates") {
        return;
    }
    let gw = Gateway::start();
    let enabled = TestCgroup::new("bypass-raw");
    let untouched = TestCgroup::new("bypass-raw-untouched");
    gw.enable(&enabled);
    let try_raw = |cg: &TestCgroup, as_nobody: bool| {
        let mut argv: Vec<&str> = Vec::new();
        if as_nobody {
            argv.extend([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        argv.extend([
            "/usr/bin/python3",
            "-c",
            "import socket\n\
             for name, args in (('inet raw', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),\n\
             \x20                  ('inet6 raw', (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)),\n\
             \x20                  ('packet raw', (socket.AF_PACKET, socket.SOCK_RAW, 0)),\n\
             \x20                  ('packet dgram', (socket.AF_PACKET, socket.SOCK_DGRAM, 0))):\n\
             \x20   try:\n\
             \x20       socket.socket(*args).close(); print(name, 'opened')\n\
             \x20   except PermissionError:\n\
             \x20       print(name, 'refused')",
        ]);
        let out = cg.run(&argv);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = "inet raw refused\ninet6 raw refused\npacket raw refused\npacket dgram refused\n";
    assert_eq!(try_raw(&enabled, true), refused, "without CAP_NET_RAW");
    assert_eq!(
        try_raw(&untouched, true),
        refused,
        "the same without callgate: the kernel's rule, not ours"
    );
    assert_eq!(
        gw.kernel_counter("socket_refused"),
        0,
        "the kernel refused first"
    );
    // With CAP_NET_RAW: callgate's own refusal, for what it has a hook for.
    assert_eq!(
        try_raw(&untouched, false),
        "inet raw opened\ninet6 raw opened\npacket raw opened\npacket dgram opened\n"
    );
    assert_eq!(
        try_raw(&enabled, false),
        "inet raw refused\ninet6 raw refused\npacket raw opened\npacket dgram opened\n"
    );
    assert_eq!(gw.kernel_counter("socket_refused"), 2);
}

/// Datagram sockets the connect/sendmsg hooks do not govern: an ICMP echo carries any payload
/// to any host (ping sockets are unprivileged wherever `net.ipv4.ping_group_range` allows, as
/// systemd sets it by default), and UDP-Lite sends like UDP without the UDP hooks. Each is
/// tried by an unprivileged process in its own network namespace (where the test may widen
/// `ping_group_range`; cgroup hooks do not depend on the namespace), in an enabled cgroup and
/// in an untouched one: without callgate the payload reaches its receiver.
#[test]
fn icmp_echo_and_udplite_do_not_leave_an_enabled_cgroup() {
    if !ebpf_available("icmp_echo_and_udplite_do_not_leave_an_enabled_cgroup") {
        return;
    }
    let gw = Gateway::start();
    let enabled = TestCgroup::new("bypass-dgram");
    let untouched = TestCgroup::new("bypass-dgram-untouched");
    gw.enable(&enabled);
    const PROBE: &str = "import socket
def t(name, f):
    try:
        print(name, f())
    except PermissionError:
        print(name, 'refused')
def ping(family, proto, dst, echo):
    s = socket.socket(family, socket.SOCK_DGRAM, proto); s.settimeout(2)
    s.sendto(echo + b'\\0\\0\\0\\0\\0\\1' + b'exfil', (dst, 0))
    return s.recvfrom(100)[0][8:].decode()
def lite(family, dst):
    r = socket.socket(family, socket.SOCK_DGRAM, 136); r.bind((dst, 9999)); r.settimeout(2)
    s = socket.socket(family, socket.SOCK_DGRAM, 136); s.sendto(b'exfil', (dst, 9999))
    return r.recvfrom(100)[0].decode()
t('icmp', lambda: ping(socket.AF_INET, socket.IPPROTO_ICMP, '127.0.0.1', b'\\x08\\0'))
t('icmp6', lambda: ping(socket.AF_INET6, socket.IPPROTO_ICMPV6, '::1', b'\\x80\\0'))
t('udplite', lambda: lite(socket.AF_INET, '127.0.0.1'))
t('udplite6', lambda: lite(socket.AF_INET6, '::1'))";
    let probe = |cg: &TestCgroup| {
        let out = cg.run(&[
            "unshare",
            "-n",
            "sh",
            "-c",
            "ip link set lo up && sysctl -qw net.ipv4.ping_group_range='0 2147483647' \
             && exec setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c \"$0\"",
            PROBE,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        probe(&untouched),
        "icmp exfil\nicmp6 exfil\nudplite exfil\nudplite6 exfil\n",
        "without callgate each carries its payload (else this test shows nothing)"
    );
    assert_eq!(
        probe(&enabled),
        "icmp refused\nicmp6 refused\nudplite refused\nudplite6 refused\n"
    );
    assert_eq!(gw.kernel_counter("socket_refused"), 4);
}
