//! post_bind4/6 at the cgroup root: the listener port belongs to the gateway alone. While the
//! gateway is down (crashed or stopped) nobody, inside an enabled cgroup or not, can listen
//! where the redirected connections arrive; the restarted gateway binds and governs again.
use std::time::Duration;

use callgate_e2e::*;

/// Python that tries to take `PORT` every way a squatter might and prints one line per try:
/// `<address> bound` or `<address> refused <errno name>`.
const SQUAT: &str = "
import errno, socket, sys
port = int(sys.argv[1])
for family, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1'),
                     (socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::'),
                     (socket.AF_INET6, '::ffff:127.0.0.1')):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, port)); s.listen(16)
        print(host, 'bound')
    except OSError as e:
        print(host, 'refused', errno.errorcode.get(e.errno, e.errno))
    s.close()
";

const NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

fn squat(cg: &TestCgroup, port: u16, as_nobody: bool) -> String {
    let port = port.to_string();
    let mut argv: Vec<&str> = Vec::new();
    if as_nobody {
        argv.extend(NOBODY);
    }
    // The system Python: a user's (pyenv) may not be readable by nobody.
    argv.extend(["/usr/bin/python3", "-c", SQUAT, &port]);
    let out = cg.run(&argv);
    assert!(
        out.status.success(),
        "squatter failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_all_refused(out: &str, who: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{who}: {out}");
    for line in lines {
        assert!(
            line.ends_with("refused EPERM"),
            "{who} took the listener port while the gateway was down: {line}\n{out}"
        );
    }
}

/// Waits until the gateway no longer answers on its control socket.
fn wait_down(gw: &Gateway) {
    let down = wait_for(Duration::from_secs(10), || gw.try_status().err());
    assert!(down.is_some(), "the gateway did not stop");
}

#[test]
fn nobody_but_the_gateway_can_take_the_listener_port() {
    if !ebpf_available("nobody_but_the_gateway_can_take_the_listener_port") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let mut gw = Gateway::start();
    let cg = TestCgroup::new("squat");
    let outside = TestCgroup::new("squat-outside");
    gw.enable(&cg);
    assert_eq!(
        curl_in(&cg, &[&server.url("/hello.txt")]),
        (0, HELLO.to_string())
    );

    // A crash: SIGKILL, nothing cleaned up.
    gw.kill();
    assert_all_refused(&squat(&cg, gw.port, true), "nobody in the enabled cgroup");
    assert_all_refused(&squat(&outside, gw.port, true), "nobody outside it");
    // Root that is not the gateway (a process in a workload running as uid 0, say).
    assert_all_refused(&squat(&cg, gw.port, false), "root in the enabled cgroup");
    let (code, _) = curl_in(&cg, &[&server.url("/hello.txt")]);
    assert_eq!(code, 7, "with the gateway down nothing listens on its port");

    // The restart wins.
    gw.restart();
    assert_eq!(
        curl_in(&cg, &[&server.url("/hello.txt")]),
        (0, HELLO.to_string())
    );
    assert_eq!(
        gw.counter("forwarded"),
        1,
        "the restarted gateway carried it"
    );
    // The restart replaced the guard's links with its own: two, not four.
    let guard_links = std::fs::read_dir(gw.bpffs.join("links/root"))
        .expect("guard links")
        .count();
    assert_eq!(guard_links, 2);

    // A clean stop (SIGTERM) withdraws the gateway's tgid: the port stays guarded.
    let pid = gw.pid().expect("running") as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_down(&gw);
    assert_all_refused(
        &squat(&cg, gw.port, true),
        "nobody in the enabled cgroup after a clean stop",
    );
    gw.restart();
    assert_eq!(
        curl_in(&cg, &[&server.url("/hello.txt")]),
        (0, HELLO.to_string())
    );
    assert_eq!(gw.counter("forwarded"), 1);
    // Each refused bind is counted (the crash and the clean stop: 20 tries in all; counters
    // live in the pinned map, so they survive the restarts). At least: the guard covers the
    // whole host, and another test's port probe may have tried this port too.
    assert!(gw.kernel_counter("bind_refused") >= 20);
}

#[test]
fn a_squatter_waiting_for_the_port_never_gets_it() {
    if !ebpf_available("a_squatter_waiting_for_the_port_never_gets_it") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let mut gw = Gateway::start();
    let cg = TestCgroup::new("squat-wait");
    gw.enable(&cg);
    gw.kill();
    // Tries to bind 127.0.0.1:PORT in a loop for a bounded time, around the restart.
    let log = gw.dir.join("squatter.log");
    let port = gw.port.to_string();
    let mut argv: Vec<&str> = NOBODY.to_vec();
    argv.extend([
        "/usr/bin/python3",
        "-c",
        "import socket, sys, time
port = int(sys.argv[1]); deadline = time.monotonic() + 4; tries = 0
while time.monotonic() < deadline:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tries += 1
    try:
        s.bind(('127.0.0.1', port)); s.listen(1); print('bound', flush=True); time.sleep(5); break
    except OSError:
        s.close(); time.sleep(0.005)
print('tries', tries, flush=True)",
        &port,
    ]);
    let mut squatter = cg.spawn(&argv, &log);
    std::thread::sleep(Duration::from_millis(500));
    gw.restart();
    assert_eq!(
        curl_in(&cg, &[&server.url("/hello.txt")]),
        (0, HELLO.to_string())
    );
    let status = wait_for(Duration::from_secs(10), || {
        squatter.try_wait().ok().flatten()
    });
    if status.is_none() {
        let _ = squatter.kill();
        let _ = squatter.wait();
    }
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !out.contains("bound") && out.contains("tries"),
        "squatter: {out}"
    );
    assert_eq!(gw.counter("forwarded"), 1);
}
