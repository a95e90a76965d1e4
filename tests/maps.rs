//! The kernel's redirect maps under pressure. They are LRU maps of 65,536 entries: a flood of
//! connections that the gateway has not accepted yet (or entries planted by anyone with
//! access to the pins) evicts the oldest entries instead of failing new connections. A
//! connection whose entry was evicted before the gateway took it arrives at the listener
//! without an original destination and is refused — it fails closed, never passes. An entry
//! never outlives its socket, whatever became of the other map.
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use callgate_e2e::*;
use gateway_common::{REDIRECT_MAP_ENTRIES, Redirect, SockKey, maps};

/// One of the gateway's pinned LRU maps.
fn pinned<K: aya::Pod, V: aya::Pod>(gw: &Gateway, name: &str) -> BpfHashMap<MapData, K, V> {
    let data = MapData::from_pin(gw.bpffs.join("maps").join(name)).expect("pinned map");
    BpfHashMap::try_from(Map::LruHashMap(data)).expect("LRU hash map")
}

fn by_addr(gw: &Gateway) -> BpfHashMap<MapData, SockKey, Redirect> {
    pinned(gw, maps::BY_ADDR)
}

#[test]
fn full_redirect_maps_evict_and_fail_closed() {
    if !ebpf_available("full_redirect_maps_evict_and_fail_closed") {
        return;
    }
    let gw = Gateway::start();
    let cg = TestCgroup::new("maps");
    gw.enable(&cg);
    let www = HttpServer::start("127.0.0.1");

    // Fill the map with entries for connections that will never arrive.
    let mut map = by_addr(&gw);
    for i in 0..REDIRECT_MAP_ENTRIES {
        let key = SockKey {
            // ::ffff:10.255.x.y, ports that no test uses.
            addr: [0, 0, 0xffff_u32.to_be(), (0x0aff_0000 | i).to_be()],
            port: 1,
            ..SockKey::default()
        };
        map.insert(key, Redirect::default(), 0).expect("insert");
    }
    let planted = map.keys().filter_map(Result::ok).count();
    // An LRU hash keeps free nodes in per-CPU lists, moved in batches of 128
    // (LOCAL_FREE_TARGET): a thread that moves to another CPU while it fills the map leaves a
    // batch behind on the one it left, and its inserts evict rather than take those.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    assert!(
        planted as u32 >= REDIRECT_MAP_ENTRIES - 128 * cpus,
        "{planted} entries planted"
    );

    // A full map does not stop new connections: each one's entry evicts a stale one.
    for _ in 0..20 {
        let (code, body) = curl_in(&cg, &[&www.url("/hello.txt")]);
        assert_eq!(code, 0, "{body}");
        assert_eq!(body, HELLO);
    }
    assert_eq!(gw.kernel_counter("map_errors"), 0);

    // A connection whose entry is evicted before the gateway takes it: the gateway is
    // stopped while the workload connects, its entry removed as a flood would, then the
    // gateway resumes and finds no original destination.
    let pid = gw.pid().expect("gateway pid") as i32;
    let refused_before = gw.counter("refused_no_entry");
    // SAFETY: plain signals to the gateway child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let log = std::env::temp_dir().join(unique("maps-client"));
    let mut client = cg.spawn(
        &[
            "python3",
            "-c",
            &format!(
                "import socket\n\
                 s = socket.create_connection(('{}', {}), timeout=15)\n\
                 s.sendall(b'GET /hello.txt HTTP/1.0\\r\\n\\r\\n')\n\
                 print(repr(s.recv(100)))\n",
                www.addr.ip(),
                www.addr.port()
            ),
        ],
        &log,
    );
    let evicted = wait_for(Duration::from_secs(10), || {
        // The client's entry is the one not among the planted ones.
        let mut map = by_addr(&gw);
        let live: Vec<SockKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.port != 1)
            .collect();
        if live.is_empty() {
            return None;
        }
        for k in &live {
            let _ = map.remove(k);
        }
        Some(live.len())
    });
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        evicted.is_some(),
        "the client's redirect entry never appeared"
    );
    let done = wait_for(Duration::from_secs(20), || client.try_wait().ok()?);
    assert!(done.is_some(), "the client did not finish");
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        !out.contains("hello from upstream"),
        "a connection without an entry reached the upstream: {out}"
    );
    let refused = wait_for(Duration::from_secs(5), || {
        (gw.counter("refused_no_entry") > refused_before).then_some(())
    });
    assert!(
        refused.is_some(),
        "not counted as refused:\n{out}\n{}",
        gw.log()
    );
    // And the gateway goes on serving.
    let (code, body) = curl_in(&cg, &[&www.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO));
}

fn by_cookie(gw: &Gateway) -> BpfHashMap<MapData, u64, Redirect> {
    pinned(gw, maps::BY_COOKIE)
}

/// A connection that ends before the gateway accepts it takes its address-keyed entry with
/// it, even when its cookie entry is gone (evicted: connects that fail before their SYN leave
/// cookie entries behind, so that LRU map churns). Were the entry left, a process that bound
/// the same local port and dialled the listener directly would be taken for the workload,
/// and its bytes sent where the workload was going.
#[test]
fn an_entry_goes_with_its_socket_even_after_its_cookie_entry_was_evicted() {
    if !ebpf_available("an_entry_goes_with_its_socket_even_after_its_cookie_entry_was_evicted") {
        return;
    }
    use std::{
        io::Read,
        net::{SocketAddr, TcpListener, TcpStream},
        sync::{Arc, Mutex},
    };
    let gw = Gateway::start();
    let cg = TestCgroup::new("stale");
    gw.enable(&cg);

    // Where the workload was going: whatever arrives there is kept.
    let upstream = TcpListener::bind("127.0.0.1:0").expect("upstream");
    let upstream_addr = upstream.local_addr().expect("addr");
    upstream.set_nonblocking(true).expect("nonblocking");
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                match upstream.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 256];
                        if let Ok(n) = s.read(&mut buf) {
                            received.lock().expect("lock").extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };

    // The gateway stops taking connections, and its listener's queue is filled, so that the
    // workload's SYN is dropped: its connection will end before the gateway sees it.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a struct of the right type.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let pid = gw.pid().expect("gateway pid") as i32;
    // SAFETY: plain signals to the gateway child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let listener: SocketAddr = format!("127.0.0.1:{}", gw.port).parse().expect("addr");
    let mut queued = Vec::new();
    for _ in 0..5_000 {
        match TcpStream::connect_timeout(&listener, Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            // The SYN was dropped: the queue is full.
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("filling the listener's queue: {e}"),
        }
    }
    assert!(
        queued.len() < 5_000,
        "the listener's queue never filled ({} connections)",
        queued.len()
    );

    let go = std::env::temp_dir().join(unique("stale-go"));
    let log = std::env::temp_dir().join(unique("stale-victim"));
    let mut victim = cg.spawn(
        &[
            "python3",
            "-c",
            &format!(
                "import os, socket, sys, time\n\
                 s = socket.socket()\n\
                 s.setblocking(False)\n\
                 s.connect_ex(('{}', {}))\n\
                 print(s.getsockname()[1], flush=True)\n\
                 for _ in range(300):\n\
                 \x20   if os.path.exists('{}'): break\n\
                 \x20   time.sleep(0.05)\n\
                 s.close()\n",
                upstream_addr.ip(),
                upstream_addr.port(),
                go.display()
            ),
        ],
        &log,
    );
    let port: Option<u16> = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok()?.trim().parse().ok()
    });
    let port = port.expect("the workload's local port");
    let entry = wait_for(Duration::from_secs(5), || {
        by_addr(&gw)
            .keys()
            .filter_map(Result::ok)
            .find(|k| k.port == u32::from(port))
    });
    assert!(entry.is_some(), "the workload's connection was not keyed");
    // Its cookie entry goes, as an eviction would take it.
    let mut cookies = by_cookie(&gw);
    let keys: Vec<u64> = cookies.keys().filter_map(Result::ok).collect();
    assert!(!keys.is_empty(), "no cookie entry to evict");
    for k in keys {
        let _ = cookies.remove(&k);
    }
    // The connection ends, still waiting for its SYN's answer.
    std::fs::write(&go, "").expect("go");
    let ended = wait_for(Duration::from_secs(20), || victim.try_wait().ok()?);
    let _ = std::fs::remove_file(&go);
    let _ = std::fs::remove_file(&log);
    assert!(ended.is_some(), "the workload did not finish");
    let left = wait_for(Duration::from_secs(5), || {
        let left = by_addr(&gw)
            .keys()
            .filter_map(Result::ok)
            .any(|k| k.port == u32::from(port));
        (!left).then_some(())
    });

    // Whoever dials the listener from that port now gets no entry, so nothing goes upstream.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let filled = queued.len() as u64;
    drop(queued);
    let drained = wait_for(Duration::from_secs(30), || {
        (gw.counter("refused_no_entry") >= filled).then_some(())
    });
    assert!(
        drained.is_some(),
        "the gateway did not take the queued connections"
    );
    let attacker = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket\n\
                 s = socket.socket()\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('127.0.0.1', {port}))\n\
                 s.settimeout(10)\n\
                 s.connect(('127.0.0.1', {}))\n\
                 s.sendall(b'taken for the workload\\n')\n\
                 try:\n\
                 \x20   print(repr(s.recv(100)))\n\
                 except OSError as e:\n\
                 \x20   print(e)\n",
                gw.port
            ),
        ])
        .output()
        .expect("python3");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    let got = String::from_utf8_lossy(&received.lock().expect("lock")).into_owned();
    assert!(
        !got.contains("taken for the workload"),
        "a direct dial from the workload's old port reached its destination: {:?}",
        String::from_utf8_lossy(&attacker.stdout)
    );
    assert!(
        left.is_some(),
        "the address-keyed entry outlived its socket (port {port})"
    );
    // And the gateway goes on serving the workload.
    let www = HttpServer::start("127.0.0.1");
    let (code, body) = curl_in(&cg, &[&www.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO));
}

/// `disable` removes the entries of the cgroup's connections that the gateway has not taken:
/// once its programs are detached no close callback would, and an entry left behind would
/// pass its workload's identity to whoever next dialled the listener from that address and
/// port. Entries of cgroups still enabled stay.
#[test]
fn disable_forgets_the_cgroups_connections_not_yet_accepted() {
    if !ebpf_available("disable_forgets_the_cgroups_connections_not_yet_accepted") {
        return;
    }
    let gw = Gateway::start();
    let (gone, kept) = (TestCgroup::new("disabled"), TestCgroup::new("kept"));
    gw.enable(&gone);
    gw.enable(&kept);
    let below = gone.child("below");
    // As the kernel leaves them for connections redirected and not accepted yet.
    let plant = |map: &mut BpfHashMap<MapData, SockKey, Redirect>, port: u32, cgroup_id: u64| {
        let key = SockKey {
            addr: [0, 0, 0xffff_u32.to_be(), 0x0aff_0001_u32.to_be()],
            port,
            ..SockKey::default()
        };
        let mut r = Redirect::default();
        r.workload.cgroup_id = cgroup_id;
        map.insert(key, r, 0).expect("insert");
    };
    let mut map = by_addr(&gw);
    plant(&mut map, 1, gone.id());
    plant(&mut map, 2, below.id());
    plant(&mut map, 3, kept.id());
    gw.disable(&gone);
    let ports: Vec<u32> = by_addr(&gw)
        .keys()
        .filter_map(Result::ok)
        .map(|k| k.port)
        .collect();
    assert_eq!(ports, [3], "only the enabled cgroup's entry stays");
}
