//! getpeername4/6: a redirected workload still sees the address it dialled.
use callgate_e2e::*;

#[test]
fn getpeername_returns_the_original_destination() {
    if !ebpf_available("getpeername") {
        return;
    }
    let v4 = HttpServer::start("127.0.0.1");
    let v6 = HttpServer::start("::1");
    let gw = Gateway::start();
    let cg = TestCgroup::new("cg-peername");
    gw.enable(&cg);

    let out = python_in(
        &cg,
        &format!(
            "import socket\n\
             a = socket.create_connection(('127.0.0.1', {p4})); print(a.getpeername())\n\
             b = socket.create_connection(('::1', {p6})); print(b.getpeername()[:2])\n\
             c = socket.socket(socket.AF_INET6); c.connect(('::ffff:127.0.0.1', {p4})); print(c.getpeername()[:2])",
            p4 = v4.addr.port(),
            p6 = v6.addr.port()
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("('127.0.0.1', {})", v4.addr.port()),
            format!("('::1', {})", v6.addr.port()),
            format!("('::ffff:127.0.0.1', {})", v4.addr.port()),
        ]
    );
    assert_eq!(
        gw.kernel_counter("redirected"),
        3,
        "all three were redirected, not left direct"
    );
}
