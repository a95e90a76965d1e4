//! connect/sendmsg for UDP: DNS passes to the configured resolvers only, anything else (QUIC,
//! port 53 of any other address) is refused so that it cannot carry data around the gateway;
//! and what reaches a resolver must be one DNS query (`cgroup_skb/egress`).
use std::{
    net::UdpSocket,
    sync::Mutex,
    time::{Duration, Instant},
};

use callgate_e2e::*;

/// A resolver that answers one query, on `addr`; its thread returns what it received.
fn resolver(addr: &str) -> std::thread::JoinHandle<std::io::Result<Vec<u8>>> {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, peer) = sock.recv_from(&mut buf)?;
        let got = buf[..n].to_vec();
        buf[2..4].copy_from_slice(&[0x81, 0x80]);
        sock.send_to(&buf[..n], peer)?;
        Ok(got)
    })
}

/// Held by the tests that listen on [::1]:53 (the tests of one file run in parallel and
/// loopback has one IPv6 address).
static V6_PORT_53: Mutex<()> = Mutex::new(());

/// Every datagram that reaches `addr` (at most 32) until none came for two seconds, and for
/// at most 20 seconds in all.
fn collector(addr: &str) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 32 && started.elapsed() < Duration::from_secs(20) {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => got.push(buf[..n].to_vec()),
                Err(_) => break,
            }
        }
        got
    })
}

/// A gateway whose configuration names 127.0.0.153 and 127.0.0.155 as resolvers (one for each
/// test: they run in parallel).
fn gateway(dir: &TestDir) -> Gateway {
    let config = dir.join("callgate.yaml");
    std::fs::write(&config, "dns_resolvers: [127.0.0.153, 127.0.0.155]\n").expect("config");
    Gateway::start_with(&["--config", &config.display().to_string()])
}

#[test]
fn dns_passes_and_other_udp_is_refused() {
    if !ebpf_available("udp") {
        return;
    }
    let dir = TestDir::new("udp");
    let gw = gateway(&dir);
    let cg = TestCgroup::new("cg-udp");
    gw.enable(&cg);

    // The resolver lives outside the cgroup, as a host's resolver does; it answers one query.
    let answer = resolver("127.0.0.153:53");
    let out = python_in(
        &cg,
        "import socket, struct\n\
         q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\\x07example\\x04test\\x00' + struct.pack('>HH', 1, 1)\n\
         c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(5)\n\
         c.sendto(q, ('127.0.0.153', 53))\n\
         r, _ = c.recvfrom(512)\n\
         print('dns', hex(struct.unpack('>H', r[:2])[0]))\n\
         for how in ('sendto', 'connect'):\n\
         \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   try:\n\
         \x20       u.sendto(b'quic', ('127.0.0.1', 443)) if how == 'sendto' else u.connect(('127.0.0.1', 443))\n\
         \x20       print(how, 'allowed')\n\
         \x20   except PermissionError:\n\
         \x20       print(how, 'refused')\n\
         u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         try:\n\
         \x20   u6.sendto(b'quic', ('::1', 443)); print('v6 allowed')\n\
         except PermissionError:\n\
         \x20   print('v6 refused')",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "dns 0x1234",
            "sendto refused",
            "connect refused",
            "v6 refused"
        ]
    );
    answer
        .join()
        .expect("resolver thread")
        .expect("resolver answered");
    assert_eq!(gw.kernel_counter("udp_dns"), 1);
    assert_eq!(gw.kernel_counter("udp_refused"), 3);
}

#[test]
fn port_53_of_anything_but_a_resolver_is_refused() {
    if !ebpf_available("port_53_of_anything_but_a_resolver_is_refused") {
        return;
    }
    let _v6 = V6_PORT_53.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("dns-tunnel");
    let gw = gateway(&dir);
    let cg = TestCgroup::new("cg-dns");
    gw.enable(&cg);

    // Listeners on port 53 of addresses that are no resolver of this host: each would log a
    // datagram it got. The tunnel's payload is not even DNS.
    let tunnels: Vec<_> = ["127.0.0.154:53", "[::1]:53"]
        .into_iter()
        .map(|addr| (addr, resolver(addr)))
        .collect();
    let out = python_in(
        &cg,
        "import socket\n\
         for family, host, how in ((socket.AF_INET, '127.0.0.154', 'sendto'), (socket.AF_INET, '127.0.0.154', 'connect'),\n\
         \x20                         (socket.AF_INET6, '::1', 'sendto'), (socket.AF_INET6, '::ffff:127.0.0.154', 'sendto')):\n\
         \x20   u = socket.socket(family, socket.SOCK_DGRAM)\n\
         \x20   try:\n\
         \x20       if how == 'sendto':\n\
         \x20           u.sendto(b'secret=4111111111111111', (host, 53))\n\
         \x20       else:\n\
         \x20           u.connect((host, 53)); u.send(b'secret=4111111111111111')\n\
         \x20       print(host, how, 'sent')\n\
         \x20   except PermissionError:\n\
         \x20       print(host, how, 'refused')",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "127.0.0.154 sendto refused",
            "127.0.0.154 connect refused",
            "::1 sendto refused",
            "::ffff:127.0.0.154 sendto refused"
        ]
    );
    for (addr, listener) in tunnels {
        let got = listener.join().expect("listener thread");
        assert!(
            got.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "{addr} received {got:?}"
        );
    }
    assert_eq!(gw.kernel_counter("dns_refused"), 4);
    assert_eq!(gw.kernel_counter("udp_dns"), 0);

    // The configured resolver is still reachable from the same cgroup, over a v4-mapped v6
    // socket too.
    let answer = resolver("127.0.0.155:53");
    let out = python_in(
        &cg,
        "import socket\n\
         u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.settimeout(5)\n\
         u.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x01a\\x00\\x00\\x01\\x00\\x01', ('::ffff:127.0.0.155', 53))\n\
         print(u.recvfrom(512)[0][:2].hex())",
    );
    assert_eq!(out, "1234");
    assert!(answer.join().expect("resolver thread").is_ok());
    assert_eq!(gw.kernel_counter("udp_dns"), 1);
}

/// Python that sends each case to `host`:53 over `family` and prints `<case> sent` or
/// `<case> refused`; each case's bytes are printed by `--show`. `gso` is one send with
/// `UDP_SEGMENT` (103) that leaves as two datagrams, a valid query and then the card number;
/// `connected` sends on a connected socket, which runs no sendmsg hook.
const DNS_CASES: &str = "import socket, struct, sys\n\
hdr = lambda flags, qd, ar: struct.pack('>HHHHHH', 0x1234, flags, qd, 0, 0, ar)\n\
q = b'\\x07example\\x04test\\x00' + struct.pack('>HH', 1, 1)\n\
opt = b'\\x00' + struct.pack('>HHIH', 41, 1232, 0, 0)\n\
cases = [\n\
\x20   ('query', hdr(0x0100, 1, 0) + q),\n\
\x20   ('edns', hdr(0x0120, 1, 1) + q + opt),\n\
\x20   ('exfil', b'exfil: card 4111 1111 1111 1111'),\n\
\x20   ('response', hdr(0x8180, 1, 0) + q),\n\
\x20   ('two-questions', hdr(0x0100, 2, 0) + q + b'\\x04card\\x104111111111111111\\x00' + struct.pack('>HH', 1, 1)),\n\
\x20   ('trailing', hdr(0x0100, 1, 0) + q + b'card 4111111111111111'),\n\
\x20   ('pointer', hdr(0x0100, 1, 0) + b'\\xc0\\x0c' + struct.pack('>HH', 1, 1)),\n\
\x20   ('edns-trailing', hdr(0x0100, 1, 1) + q + opt + b'4111111111111111'),\n\
\x20   ('gso', hdr(0x0100, 1, 0) + q + b'card 4111111111111111'.ljust(len(q) + 12)),\n\
\x20   ('connected', b'exfil: card 4111 1111 1111 1111'),\n\
]\n\
family, host = (socket.AF_INET6, sys.argv[1]) if ':' in sys.argv[1] else (socket.AF_INET, sys.argv[1])\n\
for name, payload in cases:\n\
\x20   if len(sys.argv) > 2:\n\
\x20       print(name, payload.hex()); continue\n\
\x20   u = socket.socket(family, socket.SOCK_DGRAM)\n\
\x20   if name == 'gso':\n\
\x20       u.setsockopt(socket.SOL_UDP, 103, len(q) + 12)\n\
\x20   try:\n\
\x20       if name == 'connected':\n\
\x20           u.connect((host, 53)); u.send(payload)\n\
\x20       else:\n\
\x20           u.sendto(payload, (host, 53))\n\
\x20       print(name, 'sent')\n\
\x20   except PermissionError:\n\
\x20       print(name, 'refused')";

#[test]
fn only_dns_queries_reach_a_resolver() {
    if !ebpf_available("only_dns_queries_reach_a_resolver") {
        return;
    }
    let _v6 = V6_PORT_53.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("dns-payload");
    let config = dir.join("callgate.yaml");
    std::fs::write(&config, "dns_resolvers: [127.0.0.156, '::1']\n").expect("config");
    let gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    let cg = TestCgroup::new("cg-dns-payload");
    gw.enable(&cg);

    let script = dir.join("cases.py");
    std::fs::write(&script, DNS_CASES).expect("script");
    let script = script.display().to_string();
    // The bytes of each case, from the same script, outside the cgroup.
    let shown = std::process::Command::new("python3")
        .args([&script, "127.0.0.156", "--show"])
        .output()
        .expect("python3");
    let bytes = |case: &str| -> Vec<u8> {
        let text = String::from_utf8_lossy(&shown.stdout);
        let hex = text
            .lines()
            .find_map(|l| l.strip_prefix(case)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no case {case} in {text}"));
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    };

    for host in ["127.0.0.156", "::1"] {
        let listener = collector(&if host.contains(':') {
            format!("[{host}]:53")
        } else {
            format!("{host}:53")
        });
        let out = String::from_utf8_lossy(&cg.run(&["python3", &script, host]).stdout).into_owned();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "query sent",
                "edns sent",
                "exfil refused",
                "response refused",
                "two-questions refused",
                "trailing refused",
                "pointer refused",
                "edns-trailing refused",
                "gso refused",
                "connected refused"
            ],
            "{host}"
        );
        let got = listener.join().expect("listener thread");
        assert_eq!(got, [bytes("query"), bytes("edns")], "{host} received");
    }
    assert_eq!(gw.kernel_counter("dns_malformed"), 16);
    assert_eq!(gw.kernel_counter("dns_refused"), 0);
}

/// An unprivileged socket may carry an SRv6 routing header (`IPV6_RTHDR`, type 4): the kernel
/// then sends the datagram to the header's next segment, an address the sendmsg hook never
/// saw (it checked the final one). No routing header leaves an enabled cgroup.
#[test]
fn an_ipv6_routing_header_does_not_leave() {
    if !ebpf_available("an_ipv6_routing_header_does_not_leave") {
        return;
    }
    let dir = TestDir::new("dns-routed");
    let config = dir.join("callgate.yaml");
    std::fs::write(&config, "dns_resolvers: ['::1', 127.0.0.157]\n").expect("config");
    let gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    let cg = TestCgroup::new("cg-dns-routed");
    gw.enable(&cg);

    // Segments: [final, next hop]; both loopback here, so nothing leaves the host either way.
    let code = "import socket, struct\n\
        q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\\x07example\\x04test\\x00' + struct.pack('>HH', 1, 1)\n\
        lo = socket.inet_pton(socket.AF_INET6, '::1')\n\
        srh = struct.pack('>BBBBBBH', 0, 4, 4, 1, 1, 0, 0) + lo + lo\n\
        for routed in (False, True):\n\
        \x20   u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
        \x20   if routed:\n\
        \x20       u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh)\n\
        \x20   try:\n\
        \x20       u.sendto(q, ('::1', 53)); print('routed' if routed else 'plain', 'sent')\n\
        \x20   except PermissionError:\n\
        \x20       print('routed' if routed else 'plain', 'refused')";
    // As nobody (the system Python: a user's pyenv may not be readable by nobody); outside
    // any enabled cgroup the kernel sends the routed datagram.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/python3",
        "-c",
        code,
    ];
    let run = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let outside = std::process::Command::new(nobody[0])
        .args(&nobody[1..])
        .output()
        .expect("setpriv");
    assert_eq!(run(outside), "plain sent\nrouted sent");
    assert_eq!(run(cg.run(&nobody)), "plain sent\nrouted refused");
    assert_eq!(gw.kernel_counter("routed_refused"), 1);

    // IPv4 source routing takes CAP_NET_RAW (out of scope), but root shows the egress program
    // judging where a datagram really goes: the sendmsg hook sees the resolver 127.0.0.157,
    // the IP header names the first hop 127.0.0.154.
    let lsrr = "import socket, struct\n\
        q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\\x07example\\x04test\\x00' + struct.pack('>HH', 1, 1)\n\
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        u.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([0x83, 7, 4]) + socket.inet_aton('127.0.0.154') + b'\\x01')\n\
        try:\n\
        \x20   u.sendto(q, ('127.0.0.157', 53)); print('lsrr sent')\n\
        except PermissionError:\n\
        \x20   print('lsrr refused')";
    assert_eq!(python_in(&cg, lsrr), "lsrr refused");
    assert_eq!(gw.kernel_counter("dns_refused"), 1);
    assert_eq!(gw.kernel_counter("dns_malformed"), 0);
}
