//! A real container runtime: Podman (from Debian, installed by `cargo xtask setup`) runs
//! containers whose root filesystem is the host's own, overlaid (`--rootfs /:O`: no image is
//! pulled, no registry is reachable), in a network namespace of their own (`--network none`:
//! loopback only). Each container serves HTTP on its own loopback and calls it: the gateway
//! listens and dials inside the container's namespace, decides the calls by `container:`
//! rules naming the container by name and by id, and records them with the container's id and
//! name (read from Podman's state on disk).
//!
//! What Podman 4.3 does on these hosts (no systemd, cgroup v1 controllers with the v2
//! hierarchy at `/sys/fs/cgroup/unified`): the cgroupfs manager puts a container's processes
//! in `<--cgroup-parent>/libpod-<id>` of every hierarchy, the unified one included (with
//! runc; Debian's default crun refuses hybrid hosts whose v2 hierarchy has a controller).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

/// `hello` is allowed for the container named `name`, `secret` denied to the one whose id
/// starts with `id12`; anything else falls to the default (deny).
fn service(port: u16, name: &str, id12: &str) -> String {
    format!(
        r#"
service: in-container
match:
  hosts: ["127.0.0.1:{port}"]
protocol: rest
functions:
  hello: {{ route: "GET /allowed" }}
  secret: {{ route: "GET /denied" }}
rules:
  - {{ name: named-container, function: hello, action: allow, caller: {{ workload: {{ container: {name} }} }} }}
  - {{ name: container-by-id, function: secret, action: deny, caller: {{ workload: {{ container: "{id12}" }} }} }}
"#
    )
}

/// The container's program: an HTTP server on the container's own loopback, and a client of
/// it that makes rounds of calls when told (`<out>/go-N` appears) and writes what it saw to
/// `<out>/res-N`. Round 1 runs at once. A keep-alive connection is opened in round 1 and
/// reused first in every later round, then a new connection is made.
const PROGRAM: &str = r#"
import http.client, http.server, json, os, sys, threading, time
port, out = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer(('127.0.0.1', port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
def get(conn, path):
    try:
        conn.request('GET', path); r = conn.getresponse(); r.read()
        return str(r.status)
    except Exception as e:
        return type(e).__name__
kept = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
deadline = time.monotonic() + 120
n = 1
while time.monotonic() < deadline:
    if n > 1 and not os.path.exists(f'{out}/go-{n}'):
        time.sleep(0.02)
        continue
    seen = [get(kept, '/allowed')]
    fresh = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    seen += [get(fresh, '/allowed'), get(fresh, '/denied')]
    fresh.close()
    if seen[0] != '200':
        kept = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    with open(f'{out}/res-{n}.tmp', 'w') as f: f.write(' '.join(seen))
    os.rename(f'{out}/res-{n}.tmp', f'{out}/res-{n}')
    n += 1
"#;

fn podman_available(test: &str) -> bool {
    let ok = Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    ok || skip(test, "podman or runc is not installed (cargo xtask setup)")
}

/// A Podman container running [`PROGRAM`], removed (with its cgroups) on drop.
struct Container {
    name: String,
    id: String,
    out: PathBuf,
    parent: String,
}

impl Container {
    /// Starts it below cgroup `parent` (which the test made).
    fn start(parent: &TestCgroup, out: &Path, port: u16) -> Self {
        let me = Self::create(parent, out, port);
        me.run();
        me
    }

    /// Creates it (its id is known from here on) without starting it.
    fn create(parent: &TestCgroup, out: &Path, port: u16) -> Self {
        let mount = cgroup_mount().expect("cgroup v2 mount");
        let rel = parent
            .path
            .strip_prefix(&mount)
            .expect("under the mount")
            .display()
            .to_string();
        let name = unique("cgctr");
        fs::create_dir_all(out).expect("out dir");
        let run = podman(&[
            "create",
            "--name",
            &name,
            "--cgroup-parent",
            &format!("/{rel}"),
            // The hard limits here are below Podman's defaults (1048576 files).
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--network",
            "none",
            "-v",
            &format!("{}:/out", out.display()),
            "--rootfs",
            "/:O",
            "python3",
            "-c",
            PROGRAM,
            &port.to_string(),
            "/out",
        ]);
        let id = String::from_utf8_lossy(&run.stdout).trim().to_string();
        let me = Self {
            name,
            id,
            out: out.to_path_buf(),
            parent: rel,
        };
        assert!(
            run.status.success() && me.id.len() == 64,
            "podman create: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        me
    }

    fn run(&self) {
        let started = Instant::now();
        let out = podman(&["start", &self.name]);
        assert!(
            out.status.success(),
            "podman start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("podman start took {:?}", started.elapsed());
    }

    /// The container's only process's pid, on the host.
    fn pid(&self) -> u32 {
        let out = podman(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("container pid")
    }

    /// Round `n`'s results: `<kept connection> <new connection /allowed> <.. /denied>`.
    fn round(&self, n: usize) -> String {
        if n > 1 {
            fs::write(self.out.join(format!("go-{n}")), "").expect("go file");
        }
        let res = self.out.join(format!("res-{n}"));
        wait_for(Duration::from_secs(40), || fs::read_to_string(&res).ok()).unwrap_or_else(|| {
            let logs = podman(&["logs", &self.name]);
            panic!(
                "round {n} did not finish: {}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            )
        })
    }

    fn remove(&self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
        // The cgroupfs manager made the parent in every v1 hierarchy too, with conmon's
        // cgroup below it (the v2 one is the test's, removed by its TestCgroup).
        let v2 = cgroup_mount();
        if let Ok(dirs) = fs::read_dir("/sys/fs/cgroup") {
            for d in dirs.flatten() {
                if Some(d.path()) == v2 {
                    continue;
                }
                let p = d.path().join(&self.parent);
                for dir in [p.join("conmon"), p] {
                    let _ = wait_for(Duration::from_secs(5), || {
                        (fs::remove_dir(&dir).is_ok() || !dir.exists()).then_some(())
                    });
                }
            }
        }
    }
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .args([
            "60",
            "podman",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
        ])
        .args(args)
        .output()
        .expect("podman")
}

fn gateway(dir: &TestDir, port: u16, name: &str, id: &str) -> Gateway {
    let repo = policy_repo(
        dir,
        REPO,
        &[("in-container", &service(port, name, &id[..12]))],
    );
    Gateway::start_with(&["--policies", &repo.display().to_string()])
}

fn netns_inode(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .expect("container's namespace")
        .ino()
}

fn listed(gw: &Gateway, inode: u64) -> Option<Value> {
    gw.status()["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["inode"] == inode)
        .cloned()
}

/// A parent cgroup is enabled; a Podman container started below it afterwards is governed
/// from its first call (allowed by a rule naming the container by name, denied by one naming
/// it by id), recorded with its id and name, listed by `status`; when it stops, its
/// namespace's listeners close.
#[test]
fn a_podman_container_started_under_an_enabled_parent_is_governed() {
    const TEST: &str = "a_podman_container_started_under_an_enabled_parent_is_governed";
    if !ebpf_available(TEST) || !podman_available(TEST) {
        return;
    }
    let dir = TestDir::new("podman");
    let port = free_port();
    let parent = TestCgroup::new("ctr");
    // Created (so that the policy can name its id), not started: no process, no namespace.
    let ctr = Container::create(&parent, &dir.join("out"), port);
    let gw = gateway(&dir, port, &ctr.name, &ctr.id);
    gw.enable(&parent);
    ctr.run();
    let first = ctr.round(1);
    eprintln!("round 1: {first}");
    let inode = netns_inode(ctr.pid());
    // The kept connection and the new one: the named container may call /allowed; /denied is
    // denied by the id rule.
    assert_eq!(first, "200 200 403", "{}", gw.log());

    let rec = record_where(&gw, "the container's allowed call", |r| {
        r["function"] == "hello" && r["workload"]["netns"] == inode
    });
    let c = &rec["workload"]["container"];
    assert_eq!(c["runtime"], "podman", "{rec}");
    assert_eq!(c["id"], ctr.id.as_str(), "{rec}");
    assert_eq!(c["name"], ctr.name.as_str(), "{rec}");
    assert_eq!(rec["decision"]["action"], "allow", "{rec}");
    let denied = record_where(&gw, "the container's denied call", |r| {
        r["function"] == "secret" && r["workload"]["netns"] == inode
    });
    assert_eq!(denied["decision"]["action"], "deny", "{denied}");
    assert!(
        denied.to_string().contains("container-by-id"),
        "denied by the id rule: {denied}"
    );

    let ns = listed(&gw, inode).unwrap_or_else(|| panic!("not in status: {:#}", gw.status()));
    assert_eq!(ns["state"], "ready", "{ns}");
    assert_eq!(ns["container"]["id"], ctr.id.as_str(), "{ns}");
    assert_eq!(ns["container"]["name"], ctr.name.as_str(), "{ns}");
    let text = gw.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("container {} ({})", ctr.name, &ctr.id[..12])),
        "{text}"
    );

    // The container stops: its namespace's listeners close.
    let removing = Instant::now();
    ctr.remove();
    let stopped = Instant::now();
    eprintln!("podman rm took {:?}", removing.elapsed());
    let gone = wait_for(Duration::from_secs(10), || {
        listed(&gw, inode).is_none().then_some(())
    });
    assert!(gone.is_some(), "{:#}", gw.status()["namespaces"]);
    eprintln!(
        "namespace closed {:?} after podman rm returned",
        stopped.elapsed()
    );
}

/// A container running before it is enabled (by name): the connection it kept open from
/// before is ended by `enable` (its next request fails, its reconnect is governed); a
/// gateway restart with the container still running opens its namespace's listeners again,
/// and its calls are governed as before.
#[test]
fn a_running_container_is_taken_over_by_enable_and_by_a_restart() {
    const TEST: &str = "a_running_container_is_taken_over_by_enable_and_by_a_restart";
    if !ebpf_available(TEST) || !podman_available(TEST) {
        return;
    }
    let dir = TestDir::new("podman-run");
    let port = free_port();
    let parent = TestCgroup::new("ctr-run");
    let ctr = Container::start(&parent, &dir.join("out"), port);
    let mut gw = gateway(&dir, port, &ctr.name, &ctr.id);
    // Not enabled yet: straight to the container's own server.
    assert_eq!(ctr.round(1), "200 200 200");
    let inode = netns_inode(ctr.pid());

    // By name: read from Podman's state, then found as `<parent>/libpod-<id>`.
    let out = gw.cli(&["enable", "--container", &ctr.name]);
    assert!(
        out.status.success(),
        "enable --container {}: {}",
        ctr.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let enabled = gw.status()["enabled"].to_string();
    assert!(
        enabled.contains(&format!("libpod-{}", ctr.id)),
        "the container's own cgroup: {enabled}"
    );
    let opened = wait_for(Duration::from_secs(10), || {
        listed(&gw, inode).filter(|n| n["state"] == "ready")
    });
    assert!(opened.is_some(), "{:#}", gw.status());
    // The kept connection was ended by enable; the new ones are governed.
    let second = ctr.round(2);
    eprintln!("round 2 (after enable): {second}");
    let (kept, fresh) = second.split_once(' ').expect("three results");
    assert_ne!(
        kept, "200",
        "the connection from before enable was ended: {second}"
    );
    assert_eq!(fresh, "200 403", "{}", gw.log());
    assert!(
        gw.log()
            .contains("ended the connections opened before enable"),
        "{}",
        gw.log()
    );
    // An unmodified curl run in the container (`podman exec`: its cgroup, its namespace).
    for (path, want) in [("/allowed", "200"), ("/denied", "403")] {
        let url = format!("http://127.0.0.1:{port}{path}");
        let out = podman(&[
            "exec",
            &ctr.name,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-w",
            "%{http_code}",
            &url,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            want,
            "curl {path} in the container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A restart: the namespace is opened again from the enabled cgroup's processes, before
    // the container makes any new connection.
    gw.restart();
    let reopened = wait_for(Duration::from_secs(10), || {
        listed(&gw, inode).filter(|n| n["state"] == "ready")
    });
    assert!(reopened.is_some(), "{:#}", gw.status());
    let third = ctr.round(3);
    let (_, fresh) = third.split_once(' ').expect("three results");
    assert_eq!(fresh, "200 403", "{}", gw.log());
    let rec = record_where(&gw, "a call after the restart", |r| {
        r["function"] == "secret" && r["workload"]["netns"] == inode
    });
    assert_eq!(
        rec["workload"]["container"]["name"],
        ctr.name.as_str(),
        "{rec}"
    );
}
