//! Direct pass-through: a gateway without a policy, with `direct_pass_through: true`, lets
//! an enabled cgroup's connections go straight to their destination and records each one
//! from the kernel's report of its opening, end and bytes. The bytes arrive whole, the record
//! has the workload and exact counts, a refused connect is recorded as one, and when the
//! gateway stops or its disk fills, direct pass-through stops within a second, with nothing
//! it let through left unrecorded.
use std::{
    net::TcpListener,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use callgate_e2e::*;
use serde_json::Value;

/// An upstream that echoes what it reads and, after the client's FIN, sends a trailer naming
/// how many bytes it got. Serves up to 500 connections (the thread is detached) and counts
/// them.
fn echo_upstream() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    thread::spawn(move || {
        for s in listener.incoming().take(500) {
            let Ok(s) = s else { break };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || echo_with_trailer(s));
        }
    });
    (port, served)
}

/// A gateway without a policy, direct pass-through on, vouching; and an enabled cgroup.
fn setup(test: &str) -> Option<(Gateway, TestCgroup, TestDir)> {
    setup_with(test, "")
}

fn setup_with(test: &str, config: &str) -> Option<(Gateway, TestCgroup, TestDir)> {
    if !ebpf_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-direct");
    let path = dir.join("callgate.yaml");
    std::fs::write(&path, format!("direct_pass_through: true\n{config}")).expect("config");
    let config = path;
    let gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    vouched(&gw);
    let cg = TestCgroup::new("direct");
    gw.enable(&cg);
    Some((gw, cg, dir))
}

fn vouched(gw: &Gateway) {
    wait_for(Duration::from_secs(10), || {
        (gw.status()["direct"]["vouched"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("direct pass-through is on: {}\n{}", gw.status(), gw.log()));
}

fn direct_records(gw: &Gateway, port: u16) -> Vec<Value> {
    direct_records_in(&gw.dir.join("state/records"), port)
}

fn direct_records_in(dir: &std::path::Path, port: u16) -> Vec<Value> {
    records_in(dir)
        .into_iter()
        .filter(|r| {
            r["destination"] == format!("127.0.0.1:{port}")
                && r["decision"]["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("direct"))
        })
        .collect()
}

#[test]
fn connections_go_straight_to_their_destination_and_are_recorded_with_exact_counts() {
    let Some((gw, cg, _dir)) = setup("direct_recorded") else {
        return;
    };
    let (port, _) = echo_upstream();
    let size = 1_000_000;
    let out = python_in(&cg, &echo_client(port, size));
    let trailer = format!("after-eof:{size}").len();
    assert_eq!(out, format!("ok {}", size + trailer), "{}", gw.log());
    // Not through the gateway: the kernel let it go, nothing was redirected or accepted.
    assert_eq!(gw.kernel_counter("direct"), 1, "{}", gw.status());
    assert_eq!(gw.kernel_counter("redirected"), 0, "{}", gw.status());
    assert_eq!(gw.counter("accepted"), 0, "{}", gw.status());
    let r = wait_for(Duration::from_secs(10), || {
        direct_records(&gw, port).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no record of the direct connection:\n{:#?}", records(&gw)));
    assert_eq!(r["bytes_in"], size as u64, "{r}");
    assert_eq!(r["bytes_out"], (size + trailer) as u64, "{r}");
    assert_eq!(r["decision"]["action"], "allow", "{r}");
    let w = &r["workload"];
    assert_eq!(w["comm"], "python3", "{r}");
    assert!(
        w["exe"].as_str().is_some_and(|e| e.contains("python")),
        "the executable is read while the process runs: {r}"
    );
    assert!(
        w["cgroup"].as_str().is_some_and(|c| c.contains("direct")),
        "{r}"
    );
    assert!(
        r["latency_ms"].as_f64().is_some_and(|l| l < 30_000.0),
        "{r}"
    );
    // Closed: nothing is left open in the kernel's account.
    let open = wait_for(Duration::from_secs(5), || {
        (gw.status()["direct"]["open"] == 0).then_some(())
    });
    assert!(open.is_some(), "{}", gw.status());
}

#[test]
fn a_refused_connect_is_recorded_as_one() {
    let Some((gw, cg, _dir)) = setup("direct_refused") else {
        return;
    };
    let port = free_port();
    let out = python_in(
        &cg,
        &format!(
            "import socket\n\
             try:\n\
             \x20   socket.create_connection(('127.0.0.1', {port}), timeout=10)\n\
             \x20   print('connected')\n\
             except ConnectionRefusedError:\n\
             \x20   print('refused')"
        ),
    );
    assert_eq!(
        out,
        "refused",
        "what connecting directly gives: {}",
        gw.log()
    );
    let r = wait_for(Duration::from_secs(10), || {
        direct_records(&gw, port).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no record of the refused connect:\n{:#?}", records(&gw)));
    assert!(
        r["decision"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("connecting to")),
        "{r}"
    );
    assert_eq!(r["bytes_in"], 0, "{r}");
}

#[test]
fn a_stopped_gateway_ends_direct_pass_through_and_records_what_went_when_back() {
    let Some((mut gw, cg, dir)) = setup("direct_stopped") else {
        return;
    };
    let (port, _) = echo_upstream();
    // A connection open when the gateway is killed (no clean-up of any kind) ends while it is
    // down: the kernel's report of its end waits in the pinned ring.
    let go = dir.join("go");
    let log = dir.join("client.log");
    let mut child = cg.spawn(
        &[
            "python3",
            "-c",
            &format!(
                "import socket, time, os\n\
                 s = socket.create_connection(('127.0.0.1', {port}), timeout=30)\n\
                 s.sendall(b'x' * 1000)\n\
                 for i in range(300):\n\
                 \x20   if os.path.exists('{}'): break\n\
                 \x20   time.sleep(0.1)\n\
                 s.shutdown(socket.SHUT_WR)\n\
                 back = b''\n\
                 while True:\n\
                 \x20   c = s.recv(4096)\n\
                 \x20   if not c: break\n\
                 \x20   back += c\n\
                 print(len(back), flush=True)",
                go.display()
            ),
        ],
        &log,
    );
    let open = wait_for(Duration::from_secs(10), || {
        (gw.status()["direct"]["open"] == 1).then_some(())
    });
    assert!(open.is_some(), "{}", gw.status());
    gw.kill();
    std::fs::write(&go, "").expect("go");
    let status = child.wait().expect("client");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{out}");
    assert_eq!(out.trim(), (1000 + "after-eof:1000".len()).to_string());
    // Once the word has run out, connections are redirected to where nothing listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let out = python_in(
            &cg,
            &format!(
                "import socket\n\
                 try:\n\
                 \x20   s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n\
                 \x20   s.sendall(b'x'); s.shutdown(socket.SHUT_WR)\n\
                 \x20   print('through' if s.recv(100) else 'closed')\n\
                 except OSError as e:\n\
                 \x20   print('refused')"
            ),
        );
        if out == "refused" || Instant::now() > deadline {
            break out;
        }
        thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(refused, "refused", "a stopped gateway's word ran out");
    // Back: it reads what the kernel reported while it was down.
    gw.restart();
    let r = wait_for(Duration::from_secs(15), || {
        direct_records(&gw, port)
            .into_iter()
            .find(|r| r["bytes_in"] == 1000)
    })
    .unwrap_or_else(|| {
        panic!(
            "the connection made while down is recorded:\n{:#?}\n{}",
            records(&gw),
            gw.log()
        )
    });
    assert_eq!(r["workload"]["comm"], "python3", "{r}");
}

#[test]
fn a_connection_open_when_its_cgroup_is_disabled_is_recorded_as_ended_unseen() {
    let Some((gw, cg, dir)) = setup("direct_disabled") else {
        return;
    };
    let (port, _) = echo_upstream();
    let log = dir.join("client.log");
    let mut child = cg.spawn(
        &[
            "python3",
            "-c",
            &format!(
                "import socket, time\n\
                 s = socket.create_connection(('127.0.0.1', {port}), timeout=30)\n\
                 s.sendall(b'hello'); s.recv(5)\n\
                 print('open', flush=True)\n\
                 time.sleep(30)"
            ),
        ],
        &log,
    );
    let open = wait_for(Duration::from_secs(10), || {
        (gw.status()["direct"]["open"] == 1).then_some(())
    });
    assert!(
        open.is_some(),
        "{}\n{}",
        gw.status(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Disabled with it open: the kernel will not report its end; the gateway says so.
    gw.disable(&cg);
    let r = wait_for(Duration::from_secs(10), || {
        direct_records(&gw, port).into_iter().next()
    })
    .unwrap_or_else(|| {
        panic!(
            "no record of the connection open at disable:\n{:#?}\n{}",
            records(&gw),
            gw.log()
        )
    });
    assert!(
        r["decision"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("cgroup was disabled")),
        "{r}"
    );
    assert_eq!(r["workload"]["comm"], "python3", "{r}");
    assert_eq!(gw.status()["direct"]["open"], 0, "{}", gw.status());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_connect_that_fails_before_its_syn_leaves_nothing_behind() {
    let Some((gw, cg, _dir)) = setup("direct_unrouted") else {
        return;
    };
    // A namespace of the test's own with only `lo`: 10.0.0.1 has no route, so `connect()`
    // fails after `connect4` admitted it and before any SYN (the kernel never reports it).
    let ns = unique("cgdirect");
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let out = cg.run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "python3",
        "-c",
        "import socket\n\
         try:\n\
         \x20   socket.create_connection(('10.0.0.1', 80), timeout=5)\n\
         \x20   print('connected')\n\
         except OSError as e:\n\
         \x20   print(e.errno)",
    ]);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .status();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "101",
        "ENETUNREACH: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gw.kernel_counter("direct"), 1, "{}", gw.status());
    assert_eq!(gw.status()["direct"]["pending"], 1, "{}", gw.status());
    // The gateway clears it (after 10 s, once a second): the pending map cannot fill up.
    let cleared = wait_for(Duration::from_secs(20), || {
        (gw.status()["direct"]["pending"] == 0).then_some(())
    });
    assert!(cleared.is_some(), "{}", gw.status());
    assert_eq!(gw.status()["direct"]["open"], 0, "{}", gw.status());
}

/// Makes up to 400 connections one after the other (each: 4 bytes up, half-close, the echo
/// and trailer back) until one fails; prints how many went through and how the first
/// failure looked.
const UNTIL_REFUSED: &str = r#"
import socket, time
ok, how = 0, 'never refused'
for i in range(400):
    try:
        s = socket.create_connection(('127.0.0.1', PORT), timeout=5)
        s.sendall(b'ping'); s.shutdown(socket.SHUT_WR)
        back = b''
        while True:
            c = s.recv(100)
            if not c: break
            back += c
        s.close()
        if back != b'pingafter-eof:4':
            how = 'answer %r' % back
            break
        ok += 1
    except OSError as e:
        how = 'error %s' % e.errno
        break
    time.sleep(0.02)
print(ok, how)
"#;

#[test]
fn a_full_disk_ends_direct_pass_through_and_loses_no_record() {
    let mnt = Tmpfs::mount("64k");
    let ballast = mnt.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 48 * 1024]).expect("ballast");
    let records_dir = mnt.0.join("records");
    let Some((gw, cg, _dir)) = setup_with(
        "direct_full_disk",
        &format!(
            "records:\n  dir: {}\n  commit_window_ms: 1\n",
            records_dir.display()
        ),
    ) else {
        return;
    };
    let (port, served) = echo_upstream();
    // Direct until the recorder cannot write: then the gateway withdraws its word and the
    // connections come to it, which refuses what it cannot record.
    let out = python_in(&cg, &UNTIL_REFUSED.replace("PORT", &port.to_string()));
    let (ok, how) = out.split_once(' ').expect("count and how");
    let ok: usize = ok.parse().expect("count");
    assert!(ok >= 1 && how != "never refused", "{out}\n{}", gw.log());
    assert_eq!(
        served.load(Ordering::SeqCst),
        ok,
        "only the connections that went through reached the upstream ({out})"
    );
    assert!(gw.kernel_counter("redirected") >= 1, "{}", gw.status());
    assert!(gw.counter("refused_recording") >= 1, "{}", gw.status());
    // Space back: direct again, and every connection that went through has its record.
    std::fs::remove_file(&ballast).expect("free space");
    vouched(&gw);
    let all = wait_for(Duration::from_secs(15), || {
        let n = direct_records_in(&records_dir, port).len();
        (n == ok).then_some(n)
    });
    assert!(
        all.is_some(),
        "{ok} went through, {} recorded\n{}",
        direct_records_in(&records_dir, port).len(),
        gw.log()
    );
    let out = Command::new(callgate_bin())
        .args(["records", "verify", "--dir"])
        .arg(&records_dir)
        .output()
        .expect("records verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn past_the_open_bound_connections_go_through_the_gateway_and_all_are_recorded() {
    let Some((gw, cg, _dir)) = setup("direct_bound") else {
        return;
    };
    // One more than the bound and a few: 4,096 go direct, the rest are redirected to the
    // gateway, which copies them (no policy) — every one reaches the listener and back.
    const N: usize = 4100;
    let out = python_in(
        &cg,
        &format!(
            "import socket, resource\n\
             resource.setrlimit(resource.RLIMIT_NOFILE, (3 * {N}, 3 * {N}))\n\
             l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen({N}); l.settimeout(10)\n\
             port = l.getsockname()[1]\n\
             pairs = []\n\
             for i in range({N}):\n\
             \x20   c = socket.create_connection(('127.0.0.1', port), timeout=10)\n\
             \x20   a, _ = l.accept(); a.settimeout(10)\n\
             \x20   c.sendall(b'ping'); assert a.recv(4) == b'ping'\n\
             \x20   pairs.append((c, a))\n\
             for c, a in pairs:\n\
             \x20   c.close(); a.close()\n\
             print(port)"
        ),
    );
    let port: u16 = out.trim().parse().expect("the listener's port");
    let bound = 4096;
    assert_eq!(gw.kernel_counter("direct"), bound, "{}", gw.status());
    assert_eq!(
        gw.kernel_counter("redirected"),
        (N - bound as usize) as u64,
        "{}",
        gw.status()
    );
    assert_eq!(
        gw.counter("accepted"),
        (N - bound as usize) as u64,
        "{}",
        gw.status()
    );
    let recorded = wait_for(Duration::from_secs(60), || {
        let n = records(&gw)
            .iter()
            .filter(|r| r["destination"] == format!("127.0.0.1:{port}") && r["bytes_in"] == 4)
            .count();
        (n == N).then_some(n)
    });
    assert!(
        recorded.is_some(),
        "all {N} connections recorded with their 4 bytes: {} found\n{}",
        records(&gw)
            .iter()
            .filter(|r| r["destination"] == format!("127.0.0.1:{port}"))
            .count(),
        gw.status()
    );
    // Closed, so the bound has room again: the next connection goes direct.
    wait_for(Duration::from_secs(10), || {
        (gw.status()["direct"]["open"] == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("all closed: {}", gw.status()));
    let (echo_port, _) = echo_upstream();
    assert_eq!(python_in(&cg, &echo_client(echo_port, 10)), "ok 22");
    assert_eq!(gw.kernel_counter("direct"), bound + 1, "{}", gw.status());
}

#[test]
fn a_client_that_closes_before_the_peers_fin_is_counted_exactly() {
    // FIN_WAIT2 closes the same way whether the peer's FIN came or the client closed first:
    // the byte the kernel counts for a FIN that came must not be taken off one that did not.
    let Some((gw, cg, _dir)) = setup("direct_early_close") else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = thread::spawn(move || -> std::io::Result<usize> {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(b"answer!")?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        // The client closes while this side is still open: its FIN comes too late.
        thread::sleep(Duration::from_millis(500));
        Ok(got.len())
    });
    let out = python_in(
        &cg,
        &format!(
            "import socket\n\
             s = socket.create_connection(('127.0.0.1', {port}), timeout=20)\n\
             s.sendall(b'f' * 4441)\n\
             s.shutdown(socket.SHUT_WR)\n\
             got = b''\n\
             while len(got) < 7:\n\
             \x20   c = s.recv(100)\n\
             \x20   if not c: break\n\
             \x20   got += c\n\
             s.close()\n\
             print(got.decode())"
        ),
    );
    assert_eq!(out, "answer!");
    assert_eq!(server.join().expect("server").expect("served"), 4441);
    let r = wait_for(Duration::from_secs(10), || {
        direct_records(&gw, port).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no record:\n{:#?}", records(&gw)));
    assert_eq!(r["bytes_in"], 4441, "{r}");
    assert_eq!(r["bytes_out"], 7, "{r}");
}

#[test]
fn a_process_that_execs_before_its_opening_is_read_names_no_executable() {
    // The executable is read from /proc when the gateway reads the opening; by then the
    // process that connected may be another program. Held: the gateway is stopped (its
    // vouch lasts a second) while the client connects and execs, and continued after.
    let Some((gw, cg, _dir)) = setup("direct_exec") else {
        return;
    };
    let (port, served) = echo_upstream();
    let pid = gw.pid().expect("gateway pid") as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let script = format!(
        "import socket, os\n\
         s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n\
         s.sendall(b'12345')\n\
         os.set_inheritable(s.fileno(), True)\n\
         os.execv('/bin/sleep', ['sleep', '5'])"
    );
    let mut client = cg.spawn(&["python3", "-c", &script], &gw.dir.join("client.log"));
    // Connected and exec'd (sleep runs), all while the gateway could not read the opening.
    let execd = wait_for(Duration::from_secs(5), || {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", client.id())).ok()?;
        (served.load(Ordering::SeqCst) == 1 && comm.trim() == "sleep").then_some(())
    });
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(execd.is_some(), "the client connected and exec'd");
    let r = wait_for(Duration::from_secs(10), || {
        direct_records(&gw, port).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no record:\n{:#?}\n{}", records(&gw), gw.status()));
    assert_eq!(r["workload"]["comm"], "python3", "{r}");
    assert!(
        r["workload"].get("exe").is_none_or(|e| e.is_null()),
        "the executable now is sleep, not what connected: {r}"
    );
    assert_eq!(r["bytes_in"], 5, "{r}");
    let _ = client.kill();
    let _ = client.wait();
}

/// An MPTCP client in a network namespace of its own whose path manager opens a second
/// subflow from another local address once the connection is up. Prints the subflows the
/// client's socket reports (or `fallback` when MPTCP fell back to TCP), the bytes the server
/// got and its answer.
const MPTCP_CLIENT: &str = r#"
import socket, subprocess, threading, time
def ip(*a):
    subprocess.run(["ip", *a], check=True)
ip("link", "set", "lo", "up")
ip("addr", "add", "10.9.0.1/32", "dev", "lo")
ip("addr", "add", "10.9.0.2/32", "dev", "lo")
ip("mptcp", "limits", "set", "subflow", "4", "add_addr_accepted", "4")
ip("mptcp", "endpoint", "add", "10.9.0.2", "dev", "lo", "subflow")
MPTCP, SOL_MPTCP, MPTCP_INFO = 262, 284, 1
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, MPTCP)
srv.bind(("10.9.0.1", 0))
srv.listen(8)
srv.settimeout(10)
got = []
def serve():
    c, _ = srv.accept()
    c.settimeout(10)
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    got.append(n)
    c.sendall(b"done")
    c.close()
t = threading.Thread(target=serve, daemon=True)
t.start()
cl = socket.socket(socket.AF_INET, socket.SOCK_STREAM, MPTCP)
cl.settimeout(10)
cl.connect(("10.9.0.1", srv.getsockname()[1]))
cl.sendall(b"x" * 1000)
time.sleep(1.0)
cl.sendall(b"y" * 1000)
try:
    subflows = str(cl.getsockopt(SOL_MPTCP, MPTCP_INFO, 256)[0])
except OSError:
    subflows = "fallback"
cl.shutdown(socket.SHUT_WR)
answer = cl.recv(100).decode()
t.join(10)
print(subflows, got[0] if got else -1, answer)
"#;

/// MPTCP never goes direct: its path manager would open further subflows from a kernel
/// worker, recorded under the worker and the root cgroup instead of the workload (found by
/// an attacker's pass: 3 subflows, one of them a kworker's). Its first subflow is redirected,
/// MPTCP falls back to plain TCP at the gateway, and every byte is recorded under the
/// workload.
#[test]
fn mptcp_goes_through_the_gateway_and_opens_no_subflow_of_a_kernel_worker() {
    let Some((gw, cg, _dir)) = setup("direct_mptcp") else {
        return;
    };
    let out = cg.run(&["unshare", "-n", "python3", "-c", MPTCP_CLIENT]);
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{said}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert!(
        said == "fallback 2000 done" || said == "0 2000 done",
        "one plain TCP connection through the gateway: {said}\n{}",
        gw.status()
    );
    assert_eq!(gw.kernel_counter("direct"), 0, "{}", gw.status());
    let ours = wait_for(Duration::from_secs(10), || {
        let ours: Vec<Value> = records(&gw)
            .into_iter()
            .filter(|r| {
                r["destination"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("10.9.0."))
            })
            .collect();
        (!ours.is_empty()).then_some(ours)
    })
    .unwrap_or_else(|| panic!("no record of the MPTCP connection:\n{:#?}", records(&gw)));
    for r in &ours {
        assert_eq!(r["workload"]["comm"], "python3", "{r}");
    }
    assert_eq!(ours.len(), 1, "{ours:#?}");
    assert_eq!(ours[0]["bytes_in"], 2000, "{ours:#?}");
}
