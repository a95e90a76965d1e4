//! The kernel's redirect maps under pressure. They are LRU maps of 65,536 entries: a flood of
//! connections that the gateway has not accepted yet (or entries planted by anyone with
//! access to the pins) evicts the oldest entries instead of failing new connections. A
//! connection whose entry was evicted before the gateway took it arrives at the listener
//! without an original destination and is refused — it fails closed, never passes.
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use callgate_e2e::*;
use gateway_common::{REDIRECT_MAP_ENTRIES, Redirect, SockKey, maps};

fn by_addr(gw: &Gateway) -> BpfHashMap<MapData, SockKey, Redirect> {
    let data = MapData::from_pin(gw.bpffs.join("maps").join(maps::BY_ADDR)).expect("pinned map");
    BpfHashMap::try_from(Map::LruHashMap(data)).expect("LRU hash map")
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
