//! A credential the gateway injects never reaches a workload it governs. A governed workload
//! that listens on an address and port a credential-injecting service matches (any port of a
//! loopback address named without one; the service's own port while its server is down) and
//! then calls itself through the gateway would be handed the secret: the gateway finds who
//! answers each upstream connection before it carries a credential, and withholds it from a
//! listener in an enabled cgroup, over HTTP/1.1 (its own upstream connections) and h2 (the
//! pooled clients) alike; in the namespace the call was dialled from, in another namespace the
//! connection is routed to (a veth pair, as container networks are), and never from a
//! namespace the workload's own user namespace owns (where it routes and NATs as it likes).
use std::{fs, process::Command, time::Duration};

use callgate_e2e::*;

const SECRET: &str = "gw-key-5b1e0c7d9a";

/// An HTTP/1.1 server on address argv[2], port argv[3] (0: a free one), that writes each
/// request's headers (and a POST's body), one JSON line each, to the file in argv[1] and
/// answers a GET 200 with them; prints its port.
const LISTENER: &str = r#"
import http.server, json, sys
seen = open(sys.argv[1], "a")
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        heads = {k.lower(): v for k, v in self.headers.items()}
        seen.write(json.dumps(heads) + "\n"); seen.flush()
        body = json.dumps(heads).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        heads = {k.lower(): v for k, v in self.headers.items()}
        heads["body"] = self.rfile.read(n).decode("latin-1")
        seen.write(json.dumps(heads) + "\n"); seen.flush()
        self.send_response(400)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn a_credential_never_reaches_a_governed_listener() {
    let test = "a_credential_never_reaches_a_governed_listener";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let secret = secret_file(&dir);
    let up = upstream(&dir, None);
    // The real server, outside the governed cgroup; and a port whose server is down.
    let down_port = free_port();
    // Any port of 127.0.0.1 (what `policy lint` warns about), and one host:port.
    let any_port = injecting("internal", r#""127.0.0.1""#, &secret);
    let one_port = injecting("billing", &format!(r#""127.0.0.2:{down_port}""#), &secret);
    let (gw, cg) = governed(
        test,
        &dir,
        &[("internal", &any_port), ("billing", &one_port)],
    );

    // The real server gets the credential.
    let (code, _) = curl_in(
        &cg,
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{}/echo", up.port),
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(
        up.requests()
            .last()
            .map(|r| r["headers"]["x-api-key"].clone()),
        Some(serde_json::Value::String(SECRET.into())),
        "the real server got the credential"
    );

    // A governed workload's own listeners: a free port of 127.0.0.1, and the port of the
    // service whose server is down.
    for (host, port) in [("127.0.0.1", 0u16), ("127.0.0.2", down_port)] {
        let (listener, seen, port) = listen(&dir, Some(&cg), None, host, port);
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let (code, out) = curl_in(
                &cg,
                &[
                    "-sS",
                    proto,
                    "-w",
                    "\n%{http_code}",
                    &format!("http://{host}:{port}/echo"),
                ],
            );
            assert_eq!(code, 0, "curl {proto} to {host}:{port}: {out}");
            assert!(
                out.ends_with("\n403") && out.contains("credential_withheld"),
                "a call to the workload's own listener at {host}:{port} ({proto}) is refused: {out}"
            );
            assert!(
                !out.contains(SECRET),
                "the answer holds the credential: {out}"
            );
        }
        assert!(
            !heard(&seen).contains(SECRET),
            "the governed listener at {host}:{port} received the credential"
        );
        drop(listener);
    }
    let recs = wait_for(Duration::from_secs(10), || {
        let r = records(&gw);
        (r.iter()
            .filter(|r| {
                r["decision"]["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("governs"))
            })
            .count()
            >= 4)
            .then_some(r)
    })
    .unwrap_or_else(|| panic!("four withheld calls recorded: {:?}", records(&gw)));
    let all = serde_json::to_string(&recs).expect("records");
    assert!(!all.contains(SECRET), "a record holds the credential");
}

/// A network namespace made with `ip netns add`, deleted (with its veth ends) on drop.
struct Netns(String);

impl Netns {
    fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A /24 of 10.x for this test process.
fn subnet(second: u8) -> String {
    format!("10.{second}.{}", 20 + std::process::id() % 200)
}

fn injecting(name: &str, hosts: &str, secret: &std::path::Path) -> String {
    format!(
        r#"
service: {name}
match: {{ hosts: [{hosts}] }}
protocol: rest
functions:
  echo: {{ route: "GET /echo" }}
rules:
  - {{ name: echo, function: echo, action: allow }}
credentials:
  inject: {{ header: X-Api-Key, from: {{ file: "{file}" }} }}
"#,
        file = secret.display()
    )
}

/// A process killed on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// [`LISTENER`] on `host:port` (0: a free one), in namespace `ns` when given, in `cg` when
/// given (else outside every enabled cgroup); the file its requests' headers go to, its port.
fn listen(
    dir: &std::path::Path,
    cg: Option<&TestCgroup>,
    ns: Option<&Netns>,
    host: &str,
    port: u16,
) -> (Running, std::path::PathBuf, u16) {
    let script = dir.join("listener.py");
    fs::write(&script, LISTENER).expect("script");
    let tag = format!("{host}-{port}");
    let seen = dir.join(format!("seen-{tag}.jsonl"));
    let log = dir.join(format!("listener-{tag}.log"));
    let python = party_python();
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = ns {
        argv.extend(["ip", "netns", "exec", &ns.0].map(String::from));
    }
    argv.extend([
        python.display().to_string(),
        script.display().to_string(),
        seen.display().to_string(),
        host.to_string(),
        port.to_string(),
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let child = match cg {
        // `ip netns exec` after joining the cgroup (it remounts /sys).
        Some(cg) => cg.spawn(&argv, &log),
        None => Command::new(argv[0])
            .args(&argv[1..])
            .stdout(fs::File::create(&log).expect("log"))
            .stderr(fs::File::create(dir.join(format!("{tag}.err"))).expect("log"))
            .spawn()
            .expect("listener"),
    };
    let running = Running(child);
    let port = wait_for(Duration::from_secs(10), || {
        fs::read_to_string(&log).ok()?.trim().parse::<u16>().ok()
    })
    .unwrap_or_else(|| {
        panic!(
            "listener {tag}: {}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (running, seen, port)
}

/// curl in `cg`, in namespace `ns` when given: the body and the status.
fn call(cg: &TestCgroup, ns: Option<&Netns>, url: &str) -> String {
    let mut argv: Vec<&str> = Vec::new();
    if let Some(ns) = ns {
        argv.extend(["ip", "netns", "exec", &ns.0]);
    }
    argv.extend([
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        url,
    ]);
    let out = cg.run(&argv);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn heard(seen: &std::path::Path) -> String {
    fs::read_to_string(seen).unwrap_or_default()
}

/// The secret the tests' services inject, in a file of `dir`.
fn secret_file(dir: &std::path::Path) -> std::path::PathBuf {
    let secret = dir.join("k.secret");
    fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    secret
}

/// A gateway with `services` (unknown destinations denied) and a cgroup it governs.
fn governed(test: &str, dir: &std::path::Path, services: &[(&str, &str)]) -> (Gateway, TestCgroup) {
    let policies = policy_repo(
        dir,
        "default_action: deny\nunknown_destination: deny\n",
        services,
    );
    let gw = quick_gateway(dir, &policies);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    (gw, cg)
}

/// A gateway whose upstream connects give up after 1.5 s: a governed listener the kernel keeps
/// a credential-bearing connection from never completes the handshake.
fn quick_gateway(dir: &std::path::Path, policies: &std::path::Path) -> Gateway {
    gateway_with_config(policies, "connect_timeout_ms: 1500\n", dir)
}

/// The call was refused, at once (403 `credential_withheld`) or when the handshake the
/// kernel's guard keeps from completing timed out (502): either way not answered by the
/// listener.
fn refused(out: &str) -> bool {
    (out.ends_with("\n403") && out.contains("credential_withheld"))
        || (out.ends_with("\n502") && out.contains("to send a credential"))
}

/// Containers on one bridge, or a workload and a sidecar of its own: the caller in namespace
/// W, a governed listener in namespace L on the service's `host:port`, joined by a veth pair.
/// No socket in W answers; the gateway finds the peer in L. A server in L outside the
/// enabled cgroups still gets the credential.
#[test]
fn a_governed_listener_in_another_namespace_gets_no_credential() {
    let test = "a_governed_listener_in_another_namespace_gets_no_credential";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let secret = secret_file(&dir);
    let net = subnet(216);
    let (w_ip, l_ip) = (format!("{net}.1"), format!("{net}.2"));
    let (w, l) = (Netns::new("cgw"), Netns::new("cgl"));
    ip(&[
        "-n", &w.0, "link", "add", "cg-w", "type", "veth", "peer", "name", "cg-l", "netns", &l.0,
    ]);
    for (ns, ifname, addr) in [(&w, "cg-w", &w_ip), (&l, "cg-l", &l_ip)] {
        ip(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            ifname,
        ]);
        ip(&["-n", &ns.0, "link", "set", ifname, "up"]);
    }
    let (port, real_port) = (8080, 8081);
    let svc = injecting(
        "internal",
        &format!(r#""{l_ip}:{port}", "{l_ip}:{real_port}""#),
        &secret,
    );
    let (gw, cg) = governed(test, &dir, &[("internal", &svc)]);
    let (_governed, seen, _) = listen(&dir, Some(&cg), Some(&l), &l_ip, port);
    let (_real, real_seen, _) = listen(&dir, None, Some(&l), &l_ip, real_port);
    let out = call(&cg, Some(&w), &format!("http://{l_ip}:{port}/echo"));
    assert!(
        refused(&out),
        "the governed listener in another namespace is refused: {out}\n{}",
        gw.log()
    );
    assert!(!heard(&seen).contains(SECRET), "it got the credential");
    let out = call(&cg, Some(&w), &format!("http://{l_ip}:{real_port}/echo"));
    assert!(out.ends_with("\n200"), "the real server answers: {out}");
    assert!(
        heard(&real_seen).contains(SECRET),
        "the server outside the enabled cgroups gets the credential"
    );
}

/// A workload in the host's namespace calls an address routed over a veth pair into a
/// namespace where a governed process listens (a container's address, for a service matched
/// by a CIDR).
#[test]
fn a_governed_listener_behind_a_veth_from_the_host_gets_no_credential() {
    let test = "a_governed_listener_behind_a_veth_from_the_host_gets_no_credential";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let secret = secret_file(&dir);
    let (l, _link, net, l_ip) = behind_a_veth(217, "cgh");
    let svc = injecting("internal", &format!(r#""{net}.0/24""#), &secret);
    let (gw, cg) = governed(test, &dir, &[("internal", &svc)]);
    let (_governed, seen, _) = listen(&dir, Some(&cg), Some(&l), &l_ip, 8080);
    let out = call(&cg, None, &format!("http://{l_ip}:8080/echo"));
    assert!(
        refused(&out),
        "the governed listener behind the veth is refused: {out}\n{}",
        gw.log()
    );
    assert!(!heard(&seen).contains(SECRET), "it got the credential");
}

/// What an unprivileged workload runs in a user and network namespace of its own (N1): with
/// `mode` `veth`, a second network namespace (N2) joined to N1 by a veth pair, with the
/// listener on the service's address in it; with `nat`, a DNAT rule sending the service's
/// address to its own listener on 127.0.0.1. Then it calls the service.
/// argv: mode, work dir, listener script, N1's address, the service's address, its port.
const UNPRIVILEGED: &str = r#"#!/bin/sh
set -e
M=$1; D=$2; L=$3; A=$4; B=$5; P=$6
ip link set lo up
if [ "$M" = veth ]; then
  unshare -n sh -c "echo \$\$ > $D/n2pid; exec sleep 30" &
  for i in $(seq 20); do [ -s $D/n2pid ] && break; sleep 0.1; done
  N2=$(cat $D/n2pid)
  ip link add name cg-a type veth peer name cg-b netns $N2
  ip addr add $A/24 dev cg-a; ip link set cg-a up
  nsenter -t $N2 -n --preserve-credentials sh -c "ip link set lo up; ip addr add $B/24 dev cg-b; ip link set cg-b up"
  nsenter -t $N2 -n --preserve-credentials /usr/bin/python3 $L $D/seen.jsonl $B $P > $D/listener.log 2>&1 &
else
  ip link add name cg-v0 type veth peer name cg-v1
  ip addr add $A/24 dev cg-v0; ip link set cg-v0 up; ip link set cg-v1 up
  nft add table ip cg
  nft add chain ip cg out '{ type nat hook output priority -100; }'
  nft add rule ip cg out ip daddr $B tcp dport $P dnat to 127.0.0.1:19999
  /usr/bin/python3 $L $D/seen.jsonl 127.0.0.1 19999 > $D/listener.log 2>&1 &
fi
LP=$!
for i in $(seq 40); do [ -s $D/listener.log ] && break; sleep 0.1; done
curl -sS --max-time 10 -w '\n%{http_code}' http://$B:$P/echo || true
kill $LP ${N2:-} 2>/dev/null || true
"#;

/// With no privilege at all, a workload makes a user and network namespace of its own
/// (`unshare -Urn`) and routes or NATs a service's `ip:port` to a listener of its own; the
/// gateway, which dials a call from the caller's namespace, would follow. No credential is
/// sent from a namespace a workload's user namespace owns.
#[test]
fn no_credential_leaves_a_namespace_the_workload_owns() {
    let test = "no_credential_leaves_a_namespace_the_workload_owns";
    if !ebpf_available(test) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new(test);
    let secret = secret_file(&dir);
    fs::set_permissions(&*dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let net = subnet(218);
    let (a_ip, b_ip) = (format!("{net}.1"), format!("{net}.2"));
    let svc = injecting("internal", &format!(r#""{b_ip}:8080""#), &secret);
    let (gw, cg) = governed(test, &dir, &[("internal", &svc)]);
    for mode in ["veth", "nat"] {
        let work = dir.join(mode);
        fs::create_dir_all(&work).expect("work dir");
        fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).expect("chmod");
        let (script, listener) = (work.join("attack.sh"), work.join("listener.py"));
        fs::write(&script, UNPRIVILEGED).expect("script");
        fs::write(&listener, LISTENER).expect("listener");
        let out = cg.run(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "unshare",
            "-Urn",
            "/bin/sh",
            script.to_str().expect("path"),
            mode,
            work.to_str().expect("path"),
            listener.to_str().expect("path"),
            &a_ip,
            &b_ip,
            "8080",
        ]);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.ends_with("\n403") && out.contains("credential_withheld"),
            "{mode}: the call from the workload's own namespace is refused: {out}\n{}",
            gw.log()
        );
        assert!(
            !heard(&work.join("seen.jsonl")).contains(SECRET),
            "{mode}: the workload's listener got the credential"
        );
    }
}

/// A host link deleted on drop.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn sh(ns: &Netns, cmd: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "sh", "-c", cmd])
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace L reached from the host over a veth pair: L, the host's link, the /24 and L's
/// address in it.
fn behind_a_veth(second: u8, prefix: &str) -> (Netns, Link, String, String) {
    let net = subnet(second);
    let (h_ip, l_ip) = (format!("{net}.1"), format!("{net}.2"));
    let l = Netns::new(prefix);
    let host_if = format!("{prefix}{}", std::process::id() % 100_000);
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", "cg-l", "netns", &l.0,
    ]);
    let link = Link(host_if.clone());
    ip(&["addr", "add", &format!("{h_ip}/24"), "dev", &host_if]);
    ip(&["link", "set", &host_if, "up"]);
    ip(&[
        "-n",
        &l.0,
        "addr",
        "add",
        &format!("{l_ip}/24"),
        "dev",
        "cg-l",
    ]);
    ip(&["-n", &l.0, "link", "set", "cg-l", "up"]);
    (l, link, net, l_ip)
}

/// The second attacker pass's cases, each of which got the secret past the first version of
/// the namespace search: a host service outside the enabled cgroups listening on 0.0.0.0 on
/// the governed listener's port (the kernel's lookup fell back to it and vouched for the
/// call); a governed listener handed with SCM_RIGHTS out of its namespace, which was then
/// swept; a router namespace masquerading between caller and listener. The kernel's guard
/// stops each whatever the search sees.
#[test]
fn what_no_search_sees_the_kernel_still_guards() {
    let test = "what_no_search_sees_the_kernel_still_guards";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let secret = secret_file(&dir);
    let (l, _link, net, l_ip) = behind_a_veth(227, "cgv");
    let (a, b) = (subnet(229), subnet(230));
    let svc = injecting("internal", &format!(r#""{net}.0/24", "{b}.0/24""#), &secret);
    let (gw, cg) = governed(test, &dir, &[("internal", &svc)]);

    // An unrelated host service on 0.0.0.0, outside every enabled cgroup, and the governed
    // listener behind the veth on the same port.
    let (_host_service, _, port) = listen(&dir, None, None, "0.0.0.0", 0);
    let (_governed, seen, _) = listen(&dir, Some(&cg), Some(&l), &l_ip, port);
    let out = call(&cg, None, &format!("http://{l_ip}:{port}/echo"));
    assert!(refused(&out), "wildcard listener: {out}\n{}", gw.log());
    assert!(
        !heard(&seen).contains(SECRET),
        "wildcard listener: it got the credential"
    );

    // A listener made in L by a governed process, served by one in the host's namespace
    // after the maker left L.
    let (maker, receiver) = (dir.join("maker.py"), dir.join("receiver.py"));
    fs::write(&maker, MAKER).expect("maker");
    fs::write(&receiver, RECEIVER).expect("receiver");
    let (sock, go, handed) = (
        dir.join("hand.sock"),
        dir.join("go"),
        dir.join("seen-handed.jsonl"),
    );
    let log = dir.join("receiver.log");
    let python = party_python().display().to_string();
    let _receiver = Running(cg.spawn(
        &[
            &python,
            receiver.to_str().expect("path"),
            handed.to_str().expect("path"),
            sock.to_str().expect("path"),
        ],
        &log,
    ));
    let _maker = Running(cg.spawn(
        &[
            "ip",
            "netns",
            "exec",
            &l.0,
            &python,
            maker.to_str().expect("path"),
            &l_ip,
            "8091",
            sock.to_str().expect("path"),
            go.to_str().expect("path"),
        ],
        &dir.join("maker.log"),
    ));
    wait_for(Duration::from_secs(10), || {
        fs::read_to_string(&log).ok()?.trim().parse::<u16>().ok()
    })
    .unwrap_or_else(|| panic!("receiver: {}", fs::read_to_string(&log).unwrap_or_default()));
    fs::write(&go, "").expect("go");
    // The namespace sweep runs about once a second.
    std::thread::sleep(Duration::from_secs(3));
    let out = call(&cg, None, &format!("http://{l_ip}:8091/echo"));
    assert!(refused(&out), "handed-over listener: {out}\n{}", gw.log());
    assert!(
        !heard(&handed).contains(SECRET),
        "handed-over listener: it got the credential"
    );

    // Caller in W, listener in M, a router R between that masquerades toward M.
    let (w, r, m) = (Netns::new("cgmw"), Netns::new("cgmr"), Netns::new("cgml"));
    ip(&[
        "-n", &w.0, "link", "add", "w0", "type", "veth", "peer", "name", "rw", "netns", &r.0,
    ]);
    ip(&[
        "-n", &m.0, "link", "add", "m0", "type", "veth", "peer", "name", "rm", "netns", &r.0,
    ]);
    sh(
        &w,
        &format!("ip addr add {a}.2/24 dev w0; ip link set w0 up; ip route add default via {a}.1"),
    );
    sh(
        &m,
        &format!("ip addr add {b}.2/24 dev m0; ip link set m0 up; ip route add default via {b}.1"),
    );
    sh(
        &r,
        &format!(
            "ip addr add {a}.1/24 dev rw; ip link set rw up; ip addr add {b}.1/24 dev rm; \
             ip link set rm up; sysctl -qw net.ipv4.ip_forward=1; \
             nft add table ip m; \
             nft add chain ip m post '{{ type nat hook postrouting priority 100; }}'; \
             nft add rule ip m post oifname rm masquerade"
        ),
    );
    let m_ip = format!("{b}.2");
    let (_behind_nat, seen, _) = listen(&dir, Some(&cg), Some(&m), &m_ip, 8092);
    let out = call(&cg, Some(&w), &format!("http://{m_ip}:8092/echo"));
    assert!(refused(&out), "masquerading router: {out}\n{}", gw.log());
    assert!(
        !heard(&seen).contains(SECRET),
        "masquerading router: it got the credential"
    );
    assert!(
        gw.kernel_counter("credential_refused") > 0,
        "the kernel's guard dropped the credential's packets"
    );
}

/// Made in namespace L by a governed process: a listener on argv[1]:argv[2], handed over a
/// unix socket (argv[3]) to a governed process elsewhere; then it waits for file argv[4] and
/// exits.
const MAKER: &str = r#"
import os, socket, sys, time
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(16)
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
for _ in range(100):
    try:
        u.connect(sys.argv[3]); break
    except OSError:
        time.sleep(0.1)
socket.send_fds(u, [b"x"], [ls.fileno()])
for _ in range(300):
    if os.path.exists(sys.argv[4]): break
    time.sleep(0.1)
"#;

/// In the host's namespace: receives a listener over unix socket argv[2], serves LISTENER's
/// handler on it (headers to argv[1]); prints the port.
const RECEIVER: &str = r#"
import http.server, json, os, socket, sys
seen = open(sys.argv[1], "a")
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.bind(sys.argv[2]); u.listen(1)
c, _ = u.accept()
_, fds, _, _ = socket.recv_fds(c, 16, 1)
ls = socket.socket(fileno=fds[0])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        heads = {k.lower(): v for k, v in self.headers.items()}
        seen.write(json.dumps(heads) + "\n"); seen.flush()
        body = json.dumps({"reversed": {k: v[::-1] for k, v in heads.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    def server_bind(self): pass
    def server_activate(self): pass
s = S(ls.getsockname(), H, bind_and_activate=False)
s.socket = ls
print(ls.getsockname()[1], flush=True)
s.serve_forever()
"#;

/// The gateway's own calls (here: the OAuth2 client credentials grant for a token it
/// injects, with its client secret) bear the same mark: a governed workload listening where
/// the token endpoint should be (on loopback, while the provider is down) never receives the
/// secret, nor answers with a token of its making.
#[test]
fn the_gateways_own_calls_never_reach_a_governed_listener() {
    let test = "the_gateways_own_calls_never_reach_a_governed_listener";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let client_secret = dir.join("client.secret");
    fs::write(&client_secret, "support-bot-secret\n").expect("secret");
    let up = upstream(&dir, None);
    let token_port = free_port();
    let repo = format!(
        r#"default_action: deny
unknown_destination: deny
credentials:
  upstream-token:
    oauth2:
      token_url: "http://127.0.0.1:{token_port}/token"
      client_id: support-bot
      client_secret: {{ file: "{}" }}
"#,
        client_secret.display()
    );
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  echo: {{ route: "GET /echo" }}
rules:
  - {{ name: echo, function: echo, action: allow }}
credentials:
  inject: {{ header: Authorization, from: {{ credential: upstream-token }}, format: "Bearer {{}}" }}
"#,
        up.port
    );
    let policies = policy_repo(&dir, &repo, &[("payments", &service)]);
    let gw = quick_gateway(&dir, &policies);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    let (_fake, seen, _) = listen(&dir, Some(&cg), None, "127.0.0.1", token_port);
    let out = call(&cg, None, &format!("http://127.0.0.1:{}/echo", up.port));
    assert!(
        out.ends_with("\n503") && out.contains("credential_unavailable"),
        "no token, no call: {out}\n{}",
        gw.log()
    );
    assert!(
        heard(&seen).is_empty(),
        "the governed listener got the gateway's token request (client id and secret): {}",
        heard(&seen)
    );
    assert!(up.requests().is_empty(), "nothing went upstream");
    assert!(gw.kernel_counter("credential_refused") > 0);
}

/// The look before dialling does not refuse what it cannot judge: a governed workload
/// listening on 0.0.0.0 at a remote server's port (the kernel's lookup takes such a listener
/// for one of any address) does not make another tenant's credential calls to that server
/// fail. Four at once, so that some need new connections.
#[test]
fn a_wildcard_listener_does_not_withhold_calls_to_other_hosts() {
    let test = "a_wildcard_listener_does_not_withhold_calls_to_other_hosts";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let secret = secret_file(&dir);
    // The remote server, in a namespace of its own behind a veth, outside every cgroup.
    let (r, _link, _, r_ip) = behind_a_veth(231, "cgr");
    let (_server, remote_seen, port) = listen(&dir, None, Some(&r), &r_ip, 0);
    let svc = injecting("remote", &format!(r#""{r_ip}:{port}""#), &secret);
    let (gw, victim) = governed(test, &dir, &[("remote", &svc)]);
    let squatter = TestCgroup::new(&format!("{test}-squatter"));
    gw.enable(&squatter);
    let (_squat, _, _) = listen(&dir, Some(&squatter), None, "0.0.0.0", port);
    let url = format!("http://{r_ip}:{port}/echo");
    let outs: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| call(&victim, None, &url)))
            .collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    });
    for out in &outs {
        assert!(out.ends_with("\n200"), "the remote server answered: {out}");
    }
    assert!(
        heard(&remote_seen).contains(SECRET),
        "the remote server got the credential"
    );
}
