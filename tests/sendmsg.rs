//! connect/sendmsg for UDP: DNS passes, anything else (QUIC, say) is refused so that it cannot
//! carry calls around the gateway.
use std::{net::UdpSocket, time::Duration};

use callgate_e2e::*;

#[test]
fn dns_passes_and_other_udp_is_refused() {
    if !ebpf_available("udp") {
        return;
    }
    let gw = Gateway::start();
    let cg = TestCgroup::new("cg-udp");
    gw.enable(&cg);

    // The resolver lives outside the cgroup, as a host's resolver does; it answers one query.
    let resolver = UdpSocket::bind("127.0.0.153:53").expect("bind 127.0.0.153:53");
    resolver
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let answer = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, peer) = resolver.recv_from(&mut buf)?;
        buf[2..4].copy_from_slice(&[0x81, 0x80]);
        resolver.send_to(&buf[..n], peer)
    });

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
    assert!(gw.kernel_counter("udp_dns") >= 1);
    assert_eq!(gw.kernel_counter("udp_refused"), 3);
}
