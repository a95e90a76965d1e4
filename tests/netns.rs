//! Workloads in their own network namespaces (containers, pods): the gateway listens inside
//! each namespace an enabled workload uses and dials upstreams from inside it. The namespaces
//! are made by the test (`ip netns`, veth pairs, addresses chosen here), the clients are an
//! unmodified curl and Python, started after `enable` in a namespace the gateway has never
//! seen: their very first connection is governed.
use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";
const UPSTREAM_PORT: u16 = 8080;

/// The subnet of this test process: 10.213.N.0/24, N from the pid, so that parallel test
/// processes' namespaces never share addresses (they are separate namespaces anyway).
fn subnet() -> u8 {
    20 + (std::process::id() % 200) as u8
}

fn workload_ip() -> String {
    format!("10.213.{}.1", subnet())
}

fn upstream_ip() -> String {
    format!("10.213.{}.2", subnet())
}

/// `hello` is allowed from every namespace, or from the `only` ones (by inode) when given.
fn service(only: &[u64]) -> String {
    let caller = if only.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = only.iter().map(u64::to_string).collect();
        format!(
            ", caller: {{ workload: {{ netns: [{}] }} }}",
            list.join(", ")
        )
    };
    format!(
        r#"
service: ns-upstream
match:
  hosts: ["{}:{UPSTREAM_PORT}"]
protocol: rest
functions:
  hello: {{ route: "GET /allowed" }}
  secret: {{ route: "GET /denied" }}
rules:
  - {{ name: hello-ok, function: hello, action: allow{caller} }}
  - {{ name: secret-no, function: secret, action: deny }}
"#,
        upstream_ip()
    )
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace (`ip netns add`), deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    fn inode(&self) -> u64 {
        fs::metadata(Path::new("/run/netns").join(&self.name))
            .expect("netns file")
            .ino()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A workload namespace and an upstream namespace joined by a veth pair.
struct Pair {
    workload: Netns,
    upstream: Netns,
}

impl Pair {
    fn new() -> Self {
        let (workload, upstream) = (Netns::new("cgw"), Netns::new("cgu"));
        // Interface names are at most 15 bytes; they live in their namespaces only.
        let (w_if, u_if) = ("cgveth-w", "cgveth-u");
        ip(&[
            "-n",
            &workload.name,
            "link",
            "add",
            w_if,
            "type",
            "veth",
            "peer",
            "name",
            u_if,
            "netns",
            &upstream.name,
        ]);
        for (ns, ifname, addr) in [
            (&workload, w_if, workload_ip()),
            (&upstream, u_if, upstream_ip()),
        ] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                ifname,
            ]);
            ip(&["-n", &ns.name, "link", "set", ifname, "up"]);
        }
        Self { workload, upstream }
    }
}

/// An HTTP server inside a namespace that answers every GET with who it is and the peer
/// address it saw, and logs each request.
struct Upstream {
    child: Child,
    log: PathBuf,
}

impl Upstream {
    fn start(ns: &Netns, name: &str, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.jsonl"));
        let ready = dir.join(format!("{name}.ready"));
        let code = format!(
            r#"
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({{"name": {name:?}, "peer": self.client_address[0], "path": self.path}}).encode()
        with open({log:?}, 'a') as f: f.write(body.decode() + '\n')
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = http.server.ThreadingHTTPServer(({addr:?}, {UPSTREAM_PORT}), H)
open({ready:?}, 'w').close()
s.serve_forever()
"#,
            log = log.display().to_string(),
            ready = ready.display().to_string(),
            addr = upstream_ip(),
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &code])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("upstream");
        assert!(
            wait_for(Duration::from_secs(10), || ready.exists().then_some(())).is_some(),
            "the upstream in {} did not start",
            ns.name
        );
        Self { child, log }
    }

    fn requests(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `argv` in `cg`, inside namespace `ns`: the cgroup is joined first, since `ip netns exec`
/// remounts /sys for its command.
fn run_in(cg: &TestCgroup, ns: &Netns, argv: &[&str]) -> std::process::Output {
    let mut full = vec!["ip", "netns", "exec", &ns.name];
    full.extend_from_slice(argv);
    cg.run(&full)
}

fn curl_status(cg: &TestCgroup, ns: &Netns, url: &str) -> (String, String) {
    let out = run_in(
        cg,
        ns,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            url,
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.to_string(),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn setup(dir: &TestDir, only: &[u64]) -> (Gateway, TestCgroup) {
    let repo = policy_repo(dir, REPO, &[("ns-upstream", &service(only))]);
    let gw = Gateway::start_with(&["--policies", &repo.display().to_string()]);
    let cg = TestCgroup::new("netns");
    gw.enable(&cg);
    (gw, cg)
}

#[test]
fn a_workload_in_its_own_namespace_is_governed_from_its_first_connection() {
    if !ebpf_available("a_workload_in_its_own_namespace_is_governed_from_its_first_connection") {
        return;
    }
    let dir = TestDir::new("netns");
    let (gw, cg) = setup(&dir, &[]);
    // The namespaces exist only after `enable`, and no process of the cgroup was in them.
    let pair = Pair::new();
    let up = Upstream::start(&pair.upstream, "upstream", &dir);
    // A process of the workload that stays in the namespace (it makes no socket, so the
    // gateway still learns of the namespace from curl's first one), as a container's would:
    // the namespace's listeners are kept while it is there.
    let keep = KillOnDrop(cg.spawn(
        &["ip", "netns", "exec", &pair.workload.name, "sleep", "60"],
        &dir.join("sleep.log"),
    ));
    let url = |path: &str| format!("http://{}:{UPSTREAM_PORT}{path}", upstream_ip());

    // curl's first connection in a namespace the gateway has never seen: allowed, and it
    // leaves from the workload's namespace, with its own address.
    let started = Instant::now();
    let (code, body) = curl_status(&cg, &pair.workload, &url("/allowed"));
    let first = started.elapsed();
    assert_eq!(code, "200", "{body}\n{}", gw.log());
    let answer: Value = serde_json::from_str(body.trim()).expect("upstream JSON");
    assert_eq!(answer["peer"], workload_ip().as_str(), "{answer}");

    // Denied: the gateway's 403, and the upstream never hears of it.
    let (code, body) = curl_status(&cg, &pair.workload, &url("/denied"));
    assert_eq!(code, "403", "{body}");
    assert!(
        up.requests().iter().all(|r| r["path"] != "/denied"),
        "{:?}",
        up.requests()
    );

    // Python: the same, and getpeername() still names the upstream.
    let py = format!(
        "import socket, urllib.request\n\
         s = socket.create_connection(({up:?}, {UPSTREAM_PORT}), 10)\n\
         print(s.getpeername()[0], s.getpeername()[1])\n\
         s.close()\n\
         print(urllib.request.urlopen('{u}', timeout=10).status)\n\
         try:\n    urllib.request.urlopen('{d}', timeout=10)\n\
         except urllib.error.HTTPError as e:\n    print(e.code)\n",
        up = upstream_ip(),
        u = url("/allowed"),
        d = url("/denied"),
    );
    let out = run_in(&cg, &pair.workload, &["python3", "-c", &py]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{} {UPSTREAM_PORT}\n200\n403\n", upstream_ip()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let allowed = up
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/allowed")
        .collect::<Vec<_>>();
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    assert!(allowed.iter().all(|r| r["peer"] == workload_ip().as_str()));

    // Recorded with the namespace; `status` lists it with its listeners.
    let inode = pair.workload.inode();
    let rec = record_where(&gw, "the allowed call from the namespace", |r| {
        r["function"] == "hello" && r["workload"]["netns"] == inode
    });
    assert_eq!(rec["decision"]["action"], "allow", "{rec}");
    let denied = record_where(&gw, "the denied call from the namespace", |r| {
        r["function"] == "secret" && r["workload"]["netns"] == inode
    });
    assert_eq!(denied["decision"]["action"], "deny", "{denied}");
    let status = gw.status();
    let listed = status["namespaces"]
        .as_array()
        .expect("namespaces in status")
        .iter()
        .find(|n| n["inode"] == inode)
        .unwrap_or_else(|| panic!("namespace not in status: {status:#}"))
        .clone();
    assert_eq!(listed["state"], "ready", "{listed}");
    assert_eq!(
        listed["listeners"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    eprintln!(
        "first connection from a new namespace took {first:?}; SYNs held: {}",
        gw.kernel_counter("syn_held")
    );

    // The workload leaves: the namespace is closed, and the upstream connection the gateway
    // kept from it for the next call goes too.
    let established = || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.upstream.name,
                "ss",
                "-Htn",
                "state",
                "established",
            ])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert!(
        established() >= 1,
        "the gateway keeps its upstream connection"
    );
    drop(keep);
    let gone = wait_for(Duration::from_secs(10), || {
        let open = gw.status()["namespaces"]
            .as_array()
            .is_some_and(|l| l.iter().any(|n| n["inode"] == inode));
        (!open && established() == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "{} upstream connections left: {:#}",
        established(),
        gw.status()["namespaces"]
    );
}

/// Two workload namespaces with the same addresses, each joined to an upstream of its own at
/// the same address: connections from both, made from the same local address and port while
/// the gateway is stopped (so both redirect entries are in the kernel's map at once), each
/// reach their own namespace's upstream.
#[test]
fn two_namespaces_using_the_same_addresses_and_ports_do_not_collide() {
    if !ebpf_available("two_namespaces_using_the_same_addresses_and_ports_do_not_collide") {
        return;
    }
    let dir = TestDir::new("netns2");
    let (one, two) = (Pair::new(), Pair::new());
    // `hello` is allowed from these two namespaces only.
    let (mut gw, cg) = setup(&dir, &[one.workload.inode(), two.workload.inode()]);
    let _up1 = Upstream::start(&one.upstream, "one", &dir);
    let _up2 = Upstream::start(&two.upstream, "two", &dir);
    // A long-lived process of the workload in each namespace, as a container has.
    let mut keep = Vec::new();
    for pair in [&one, &two] {
        let log = dir.join(format!("sleep-{}.log", pair.workload.name));
        keep.push(KillOnDrop(cg.spawn(
            &["ip", "netns", "exec", &pair.workload.name, "sleep", "60"],
            &log,
        )));
    }
    let url = format!("http://{}:{UPSTREAM_PORT}/allowed", upstream_ip());
    for pair in [&one, &two] {
        let (code, body) = curl_status(&cg, &pair.workload, &url);
        assert_eq!(code, "200", "{body}");
    }

    let pid = gw.pid().expect("gateway pid") as i32;
    // SAFETY: signals to the gateway child this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let client = format!(
        "import socket, time, json, sys\n\
         s = socket.create_connection(({up:?}, {UPSTREAM_PORT}), 10, source_address=({w:?}, 41000))\n\
         open(sys.argv[1], 'w').close()\n\
         time.sleep(0.5)\n\
         s.sendall(b'GET /allowed HTTP/1.1\\r\\nHost: {up}:{UPSTREAM_PORT}\\r\\nConnection: close\\r\\n\\r\\n')\n\
         out = b''\n\
         while True:\n    c = s.recv(65536)\n    if not c: break\n    out += c\n\
         print(json.loads(out.split(b'\\r\\n\\r\\n', 1)[1])['name'])\n",
        up = upstream_ip(),
        w = workload_ip(),
    );
    let mut clients = Vec::new();
    for pair in [&one, &two] {
        let connected = dir.join(format!("{}.connected", pair.workload.name));
        let log = dir.join(format!("{}.out", pair.workload.name));
        let child = cg.spawn(
            &[
                "ip",
                "netns",
                "exec",
                &pair.workload.name,
                "python3",
                "-c",
                &client,
                &connected.display().to_string(),
            ],
            &log,
        );
        clients.push((KillOnDrop(child), connected, log));
    }
    let both = wait_for(Duration::from_secs(10), || {
        clients.iter().all(|(_, c, _)| c.exists()).then_some(())
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(
        both.is_some(),
        "both clients connected while the gateway was stopped"
    );
    let mut answers = Vec::new();
    for (mut child, _, log) in clients {
        let _ = wait_for(Duration::from_secs(15), || child.0.try_wait().ok()?);
        answers.push(
            fs::read_to_string(&log)
                .unwrap_or_default()
                .trim()
                .to_string(),
        );
    }
    assert_eq!(answers, ["one", "two"], "{}", gw.log());

    // A third namespace with the same addresses, not named by the rule: denied.
    let three = Pair::new();
    let up3 = Upstream::start(&three.upstream, "three", &dir);
    let (code, body) = curl_status(&cg, &three.workload, &url);
    assert_eq!(code, "403", "{body}");
    assert!(up3.requests().is_empty());
    drop(keep);
    gw.kill();
}

/// A rule that names a namespace by inode names that namespace, not the number: the kernel
/// gives a new namespace the lowest free inode, so once a named namespace is gone the next one
/// made (another pod's, or any user's `unshare -Urn`) could take its number and what the rule
/// allowed. The gateway holds each named namespace open while the policy names it, so its
/// number stays taken; and a named inode that no namespace had when the policy loaded matches
/// nothing, whoever gets it later.
#[test]
fn a_namespace_named_by_inode_does_not_pass_its_rules_to_the_next_owner_of_the_number() {
    if !ebpf_available(
        "a_namespace_named_by_inode_does_not_pass_its_rules_to_the_next_owner_of_the_number",
    ) {
        return;
    }
    let dir = TestDir::new("netns-reuse");
    let named = Pair::new();
    let named_inode = named.workload.inode();
    // A namespace that ends before the policy loads: its number is free for the next one.
    let gone = Netns::new("cgx");
    let gone_inode = gone.inode();
    drop(gone);
    let (mut gw, cg) = setup(&dir, &[named_inode, gone_inode]);
    let url = format!("http://{}:{UPSTREAM_PORT}/allowed", upstream_ip());
    {
        let up = Upstream::start(&named.upstream, "named", &dir);
        let (code, body) = curl_status(&cg, &named.workload, &url);
        assert_eq!(code, "200", "the named namespace: {body}");
        assert_eq!(up.requests().len(), 1);
    }
    // The pod goes away: its processes and its mount.
    drop(named);
    let mut reused = false;
    for round in 0..3 {
        let next = Pair::new();
        let inode = next.workload.inode();
        assert_ne!(
            inode, named_inode,
            "the kernel gave the inode of a namespace the gateway holds to a new one"
        );
        reused |= inode == gone_inode;
        let up = Upstream::start(&next.upstream, &format!("next{round}"), &dir);
        let (code, body) = curl_status(&cg, &next.workload, &url);
        assert_eq!(
            code, "403",
            "a namespace made later (inode {inode}; named: {named_inode} held, {gone_inode} \
             gone before the policy loaded): {body}"
        );
        assert!(up.requests().is_empty(), "the upstream ran a denied call");
    }
    // Said in the log unless another test's namespace had taken the number by the load (then
    // that one was held, and no later namespace could take it either).
    let said = gw
        .log()
        .contains(&format!("names network namespace inode {gone_inode}"));
    eprintln!(
        "a later namespace took the number of the one gone before the load: {reused}; \
         the gateway said no namespace had it: {said}"
    );
    gw.kill();
}

/// A container as a runtime lays it out (a scope named after its id, under a slice, its
/// processes in a network namespace of their own), enabled by its short id as `docker ps`
/// shows it: its calls are governed and recorded with the container.
#[test]
fn a_container_enabled_by_its_id_is_governed_and_named_in_records() {
    if !ebpf_available("a_container_enabled_by_its_id_is_governed_and_named_in_records") {
        return;
    }
    let dir = TestDir::new("netns-ctr");
    let repo = policy_repo(&dir, REPO, &[("ns-upstream", &service(&[]))]);
    let gw = Gateway::start_with(&["--policies", &repo.display().to_string()]);
    // Its first twelve characters (the short id) hold the pid: a scope another run left
    // behind has another one.
    let id = format!(
        "{:08x}{:08x}{:016x}{:016x}{:016x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() as u32 ^ 0x5eed,
        0xc0ffee_u64,
        0x5eed_u64,
        0xdecafbad_u64
    );
    let slice = cgroup_mount()
        .expect("cgroup v2 mount")
        .join(format!("{}.slice", unique("cgtest")));
    let _slice = RemoveOnDrop(slice.clone());
    let scope = slice.join(format!("docker-{id}.scope"));
    fs::create_dir_all(&scope).expect("container scope");
    let cg = TestCgroup { path: scope };
    let out = gw.cli(&["enable", "--container", &id[..12]]);
    assert!(
        out.status.success(),
        "enable --container: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pair = Pair::new();
    let _up = Upstream::start(&pair.upstream, "upstream", &dir);
    let url = |path: &str| format!("http://{}:{UPSTREAM_PORT}{path}", upstream_ip());
    assert_eq!(curl_status(&cg, &pair.workload, &url("/allowed")).0, "200");
    assert_eq!(curl_status(&cg, &pair.workload, &url("/denied")).0, "403");
    let rec = record_where(&gw, "the container's call", |r| r["function"] == "hello");
    assert_eq!(rec["workload"]["container"]["id"], id.as_str(), "{rec}");
    assert_eq!(rec["workload"]["container"]["runtime"], "docker", "{rec}");
    assert_eq!(rec["workload"]["netns"], pair.workload.inode(), "{rec}");
    // An id that names no container is an error, not a guess.
    let out = gw.cli(&["enable", "--container", "0123456789ab"]);
    assert!(!out.status.success());
    drop(cg);
}

/// Short-lived namespaces (`unshare -n`, gone when their process exits), each used by one
/// connection, three times 200 of them: every first connection reaches the gateway, and once they
/// are gone the gateway's descriptors and namespace threads are back where they were and its
/// memory does not grow from one round to the next.
#[test]
fn namespaces_that_come_and_go_leave_nothing_behind() {
    if !ebpf_available("namespaces_that_come_and_go_leave_nothing_behind") {
        return;
    }
    const ROUNDS: usize = 200;
    const PARALLEL: usize = 8;
    let gw = Gateway::start();
    let cg = TestCgroup::new("netns-churn");
    gw.enable(&cg);
    let pid = gw.pid().expect("gateway pid");
    let churn = |n: usize| {
        std::thread::scope(|s| {
            for t in 0..PARALLEL {
                let cg = &cg;
                s.spawn(move || {
                    for _ in (t..n).step_by(PARALLEL) {
                        // Nothing listens on port 9 in the new namespace: the gateway's dial
                        // from inside it is refused, and the client sees the connection end.
                        let out = cg.run(&[
                            "unshare",
                            "-n",
                            "sh",
                            "-c",
                            "ip link set lo up && curl -s -o /dev/null --max-time 10 http://127.0.0.1:9/; echo $?",
                        ]);
                        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        // 52 (empty reply) or 56 (reset): the gateway took the connection and
                        // ended it; 7 would be a refused connect, 28 a held one never let in.
                        assert!(
                            code == "52" || code == "56",
                            "curl exit {code}: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                });
            }
        })
    };
    let settled = |what: &str| {
        wait_for(Duration::from_secs(10), || {
            let ns = gw.status()["namespaces"].as_array().map_or(0, Vec::len);
            (ns == 1).then_some(())
        })
        .unwrap_or_else(|| panic!("namespaces still open {what}: {:#}", gw.status()));
    };
    let fds = || fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    // The namespaces' own threads (tokio's blocking pool comes and goes on its own).
    let threads = || {
        fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("callgate-ns"))
                })
                .count()
        })
    };

    // Warm up (lazily made things: pools, buffers), then measure.
    churn(2 * PARALLEL);
    settled("after the warm-up");
    let (fd0, th0, rss0) = (fds(), threads(), gw.rss_kib().unwrap_or(0));
    let accepted0 = gw.counter("accepted");
    // Three rounds: the first may leave memory the allocator keeps for reuse; a leak grows
    // again in each of the others, reuse does not.
    let mut rss = Vec::new();
    for round in 1..=3 {
        let started = Instant::now();
        churn(ROUNDS);
        let took = started.elapsed();
        assert_eq!(
            gw.counter("accepted") - accepted0,
            (round * ROUNDS) as u64,
            "every first connection reached the gateway"
        );
        assert_eq!(gw.counter("refused_no_entry"), 0);
        settled("after the churn");
        let back = wait_for(Duration::from_secs(10), || {
            (fds() <= fd0 && threads() == 0).then_some(())
        });
        rss.push(gw.rss_kib().unwrap_or(0));
        eprintln!(
            "round {round}: {ROUNDS} namespaces in {took:?}; fds {fd0} -> {}; namespace threads {th0} -> {}; rss {rss0} KiB -> {rss:?} KiB",
            fds(),
            threads()
        );
        assert!(
            back.is_some(),
            "fds {} (was {fd0}), namespace threads {} (was {th0})",
            fds(),
            threads()
        );
    }
    // Descriptors and threads must come back exactly (above). Resident memory is the
    // allocator's to keep, and it keeps some in steps: one CI run saw 42.6 -> 50.3 -> 55.6 MiB
    // over two rounds, another 40.8 -> 47.0 -> 44.8. Nothing grows with the namespaces,
    // though: six rounds (1,200 namespaces) measured 43.9 -> 47.4, 48.3, 47.7, 47.5, 47.9,
    // 47.4 MiB (and at 32 at a time 46.0 -> 48.0, 47.4, 48.1, 47.7), never more than 0.9 MiB
    // from one round to the next and no trend. A leak grows every round; an allocator step
    // does not repeat: of the two rounds after the first, at least one adds less than 3 MiB
    // (15 KiB per namespace; the loosened bound let 40 through) — a leak of that size fails
    // both. One run next to the other tests of this file added 1.07 and 1.04 MiB.
    let growth = [rss[1] as i64 - rss[0] as i64, rss[2] as i64 - rss[1] as i64];
    assert!(
        rss[0] < rss0 + 16 * 1024 && growth.iter().min().is_some_and(|g| *g < 3 * 1024),
        "rss {rss0} KiB, then {rss:?} KiB"
    );
}

/// A cgroup directory made by hand (a slice above a test's scope), removed on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = wait_for(Duration::from_secs(5), || fs::remove_dir(&self.0).ok());
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
