//! Shared pieces of the end-to-end tests: a real gateway process, real cgroups, real servers
//! and clients. Every wait is bounded; everything a test creates is removed when it is dropped.
//!
//! These tests need root and a kernel with cgroup v2 and eBPF. Without them a test prints why
//! and passes, unless `CALLGATE_REQUIRE_EBPF=1` (as in CI), where it fails instead.
use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use serde_json::Value;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
/// A name no other test, of this run or an earlier one, has: the process id, when this
/// process first asked (a pid comes round again, and a failed test keeps its directory for
/// its log: a later process with its pid would otherwise take over that directory, records
/// and all), and a count.
pub fn unique(prefix: &str) -> String {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64 % 1_000_000_000)
    });
    format!(
        "{prefix}-{}-{started}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether the end-to-end prerequisites are here; panics instead of skipping in CI.
pub fn ebpf_available(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if cgroup_mount().is_none() {
        Some("no cgroup v2 mount")
    } else {
        None
    };
    why.is_none_or(|why| skip(test, why))
}

/// Reports a missing prerequisite: a failure in CI (`CALLGATE_REQUIRE_EBPF=1`), a skip
/// otherwise. Returns false (the test does not run) when it returns at all.
pub fn skip(test: &str, why: &str) -> bool {
    if std::env::var("CALLGATE_REQUIRE_EBPF").as_deref() == Ok("1") {
        panic!("{test}: {why}, and CALLGATE_REQUIRE_EBPF=1");
    }
    // Straight to the process's stderr rather than through `eprintln!`, which libtest
    // captures and shows only for a failing test: a skipped test passes, and its skip must
    // still be seen (and counted by `cargo xtask test`).
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIP {test}: {why} (set CALLGATE_REQUIRE_EBPF=1 to fail instead)"
    );
    false
}

pub fn cgroup_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        post.starts_with("cgroup2 ")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The callgate binary: the one xtask built, or the workspace's debug build.
pub fn callgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CALLGATE_BIN") {
        return p.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/callgate")
}

/// Polls `f` every 20 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        sleep(Duration::from_millis(20));
    }
}

/// A port for a server a test starts. Not one the kernel hands out for port 0: between this
/// check and the server's own bind, that port could go to another test's listener or be the
/// source port of any outgoing connection (a CI run once lost its upstream that way). Ports
/// below the ephemeral range, taken in turn from a start that differs per test process,
/// are free of both.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + start.wrapping_add(n) % COUNT) as u16;
        // A host without IPv6 loopback has nothing in use there.
        let free = |ip: &str| match TcpListener::bind((ip, port)) {
            Ok(_) => true,
            // EPERM: a gateway's bind guard keeps the port while that gateway is down.
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
            ),
        };
        if free("127.0.0.1") && free("::1") {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// A directory of one test's own under the system temp dir, removed when dropped — unless
/// the test is failing, so that what it left there can be looked at.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// === cgroups ===

/// A cgroup made for one test, removed (with whatever is left in it killed) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// Its path as `/proc/PID/cgroup`, policy, records and `status` name it: relative to the
    /// cgroup v2 mount, with a leading slash.
    pub fn rel(&self) -> String {
        let mount = cgroup_mount().expect("cgroup v2 mount");
        let rel = self.path.strip_prefix(&mount).expect("under the mount");
        format!("/{}", rel.display())
    }

    pub fn new(name: &str) -> Self {
        let mount = cgroup_mount().expect("cgroup v2 mount");
        Self::at(mount.join(unique(name)))
    }

    /// A cgroup named like a systemd unit (`<name>-<pid>-<started>-<n>.service`) under the mount's root,
    /// which `callgate enable --unit` finds and names the workloads in it by.
    pub fn unit(name: &str) -> Self {
        let mount = cgroup_mount().expect("cgroup v2 mount");
        Self::at(mount.join(format!("{}.service", unique(name))))
    }

    /// A slice (`<name>-<pid>-<n>.slice`) under the mount's root: units made in it with
    /// [`TestCgroup::child`] are named by their own name, whatever the slice (two hosts'
    /// cgroups of one job, in a test).
    pub fn slice(name: &str) -> Self {
        let mount = cgroup_mount().expect("cgroup v2 mount");
        Self::at(mount.join(format!("{}.slice", unique(name))))
    }

    /// The unit name of a cgroup made by [`TestCgroup::unit`].
    pub fn unit_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn child(&self, name: &str) -> Self {
        Self::at(self.path.join(name))
    }

    fn at(path: PathBuf) -> Self {
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub fn id(&self) -> u64 {
        fs::metadata(&self.path).expect("cgroup exists").ino()
    }

    /// Runs `argv` inside this cgroup (the shell moves itself in, then execs), at most 30 s.
    pub fn run(&self, argv: &[&str]) -> Output {
        let script = format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
            self.path.display()
        );
        Command::new("timeout")
            .args(["30", "sh", "-c", &script, "sh"])
            .args(argv)
            .output()
            .expect("spawn sh")
    }

    /// Like [`TestCgroup::run`] but leaves the process running.
    pub fn spawn(&self, argv: &[&str], log: &Path) -> Child {
        let script = format!(
            "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
            self.path.display()
        );
        let log = fs::File::create(log).expect("log file");
        Command::new("sh")
            .args(["-c", &script, "sh"])
            .args(argv)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn sh")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let _ = wait_for(Duration::from_secs(5), || fs::remove_dir(&self.path).ok());
    }
}

/// A tmpfs mounted for one test (a disk that fills up), unmounted and removed on drop.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(size: &str) -> Self {
        let mnt = std::env::temp_dir().join(unique("callgate-tmpfs"));
        fs::create_dir_all(&mnt).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "callgate-e2e"])
            .arg(&mnt)
            .status()
            .expect("mount");
        assert!(ok.success(), "mount tmpfs on {}", mnt.display());
        Self(mnt)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

// === the gateway ===

/// A `callgate run` of its own: own port, state dir, control socket and bpffs directory.
pub struct Gateway {
    pub port: u16,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    /// Passed to `callgate run` after the per-gateway ones (e.g. `--policies DIR`).
    pub extra_args: Vec<String>,
    /// Extra environment for the gateway process (e.g. a preloaded fake clock).
    pub env: Vec<(String, String)>,
    /// The `callgate` binary it runs: [`callgate_bin`] unless an A/B benchmark chose one.
    pub bin: PathBuf,
    child: Option<Child>,
}

impl Gateway {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_with_env(extra_args, &[])
    }

    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(unique("callgate-e2e"));
        fs::create_dir_all(&dir).expect("temp dir");
        let mut gw = Self {
            port: free_port(),
            bpffs: PathBuf::from("/sys/fs/bpf").join(unique("callgate-e2e")),
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bin: callgate_bin(),
            child: None,
        };
        gw.restart();
        gw
    }

    /// A gateway that runs `bin` (another build, for an A/B comparison) with `extra_args`.
    pub fn start_bin(bin: &Path, extra_args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(unique("callgate-e2e"));
        fs::create_dir_all(&dir).expect("temp dir");
        let mut gw = Self {
            port: free_port(),
            bpffs: PathBuf::from("/sys/fs/bpf").join(unique("callgate-e2e")),
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            bin: bin.to_path_buf(),
            child: None,
        };
        gw.restart();
        gw
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "run".into(),
            "--listen-port".into(),
            self.port.to_string(),
            "--state-dir".into(),
            self.dir.join("state").display().to_string(),
            "--bpffs-dir".into(),
            self.bpffs.display().to_string(),
            "--control-socket".into(),
            self.socket().display().to_string(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// Starts (again) with the same state, port and pins.
    pub fn restart(&mut self) {
        self.kill();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))
            .expect("log");
        let child = Command::new(&self.bin)
            .args(self.args())
            .env("CALLGATE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn callgate");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Replaces this gateway with one `spawn` starts some other way (e.g. inside a cgroup)
    /// with this one's args. This one stops first: both want the same listener port.
    pub fn adopt(&mut self, spawn: impl FnOnce() -> Child) {
        self.kill();
        self.child = Some(spawn());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let ready = wait_for(Duration::from_secs(20), || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("callgate exited early ({status}):\n{}", self.log());
                }
            }
            self.try_status().ok()
        });
        assert!(
            ready.is_some(),
            "callgate did not become ready:\n{}",
            self.log()
        );
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The gateway's resident memory, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS")
    }

    /// A `kB` line of the gateway's `/proc/PID/status` (`VmRSS`, `RssAnon`, `RssFile`).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// SIGTERM, as an operator stops it: waits up to `within` for it to exit, and says whether
    /// it did (a gateway still running then is killed).
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) on our own child's pid, which stays reserved until we wait for it.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let exited = wait_for(within, || child.try_wait().ok()?).is_some();
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
        exited
    }

    /// Waits up to `within` for the gateway to exit by itself (after a signal the test sent),
    /// and says whether it did (a gateway still running then is killed).
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let exited = wait_for(within, || child.try_wait().ok()?).is_some();
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
        exited
    }

    /// SIGKILL: no clean-up of any kind, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--control-socket")
            .arg(self.socket())
            .output()
            .expect("run callgate")
    }

    pub fn enable(&self, cg: &TestCgroup) {
        let out = self.cli(&["enable", &cg.path.display().to_string()]);
        assert!(
            out.status.success(),
            "enable failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn disable(&self, cg: &TestCgroup) {
        let out = self.cli(&["disable", &cg.path.display().to_string()]);
        assert!(
            out.status.success(),
            "disable failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn try_status(&self) -> Result<Value, String> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("status: {e}\n{}", self.log()))
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or(0)
    }

    pub fn kernel_counter(&self, name: &str) -> u64 {
        self.status()["kernel"][name].as_u64().unwrap_or(0)
    }

    /// Finished connections, oldest first.
    pub fn recent(&self) -> Vec<Value> {
        self.status()["recent"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        // Unpinning every link detaches it; the test cgroups then go back to normal.
        let _ = fs::remove_dir_all(&self.bpffs);
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("gateway log ({}):\n{}", self.dir.display(), self.log());
        }
    }
}

// === servers ===

/// Python's http.server on a loopback address, serving `hello.txt` = "hello from upstream\n".
pub struct HttpServer {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

pub const HELLO: &str = "hello from upstream\n";

impl HttpServer {
    pub fn start(ip: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("callgate-www"));
        fs::create_dir_all(&dir).expect("www dir");
        fs::write(dir.join("hello.txt"), HELLO).expect("hello.txt");
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                ip,
                "--directory",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn python3 http.server");
        let addr: SocketAddr = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
        .parse()
        .expect("address");
        let up = wait_for(Duration::from_secs(10), || TcpStream::connect(addr).ok());
        assert!(up.is_some(), "http.server on {addr} did not come up");
        Self { addr, child, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether nginx is installed (`cargo xtask setup` installs it); panics in CI when it is not.
pub fn nginx_available(test: &str) -> bool {
    Command::new("nginx")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
        || skip(test, "nginx is not installed (run `cargo xtask setup`)")
}

/// nginx on 127.0.0.1, one process in the foreground, its files under `dir/nginx-PORT`. `server`
/// is the inside of its one `server {}` block besides `listen`, with `{www}` standing for a
/// directory it serves from (`Nginx::www`). Every request it parses is logged as a JSON line
/// (`method`, `path`, `status`), which [`Party::requests`] reads: a request it never logged
/// is one it never ran.
pub struct Nginx {
    pub party: Party,
    pub www: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path, server: &str) -> Self {
        let port = free_port();
        let root = dir.join(format!("nginx-{port}"));
        let www = root.join("www");
        for d in ["www", "tmp"] {
            fs::create_dir_all(root.join(d)).expect("nginx dirs");
        }
        let r = root.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {r}/nginx.pid;\n\
             error_log {r}/error.log info;\nevents {{ worker_connections 256; }}\n\
             http {{\n\
             log_format lines escape=json '{{\"method\":\"$request_method\",\"path\":\"$request_uri\",\"status\":$status}}';\n\
             access_log {r}/access.log lines;\n\
             client_body_temp_path {r}/tmp/body; proxy_temp_path {r}/tmp/proxy;\n\
             fastcgi_temp_path {r}/tmp/fcgi; uwsgi_temp_path {r}/tmp/uwsgi; scgi_temp_path {r}/tmp/scgi;\n\
             server {{\nlisten 127.0.0.1:{port};\n{}\n}}\n}}\n",
            server.replace("{www}", &www.display().to_string())
        );
        let conf_path = root.join("nginx.conf");
        fs::write(&conf_path, conf).expect("nginx.conf");
        let conf_arg = conf_path.display().to_string();
        let prefix = format!("{r}/");
        let error = format!("{r}/error.log");
        let argv = ["nginx", "-p", &prefix, "-e", &error, "-c", &conf_arg];
        let party = Party::start(&argv, port, root.join("access.log"));
        Self { party, www }
    }

    pub fn port(&self) -> u16 {
        self.party.port
    }
}

/// An echo upstream's side of one connection (splice and direct pass-through tests): echoes
/// what it reads and, after the client's FIN, sends `after-eof:N` naming how many bytes it got,
/// then closes. Returns N.
pub fn echo_with_trailer(mut s: TcpStream) -> std::io::Result<usize> {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
        s.write_all(&buf[..n])?;
    }
    s.write_all(format!("after-eof:{total}").as_bytes())?;
    Ok(total)
}

/// The client of [`echo_with_trailer`], in Python: sends `size` pseudo-random bytes (binary,
/// so not HTTP) while reading the echo on a thread, half-closes, and prints `ok` and the
/// bytes it got back when they are the same bytes followed by the trailer (else `MISMATCH`).
pub fn echo_client(port: u16, size: usize) -> String {
    format!(
        "import socket, random, threading\n\
         data = random.Random(7).randbytes({size})\n\
         s = socket.create_connection(('127.0.0.1', {port}), timeout=30)\n\
         got = []\n\
         def rd():\n\
         \x20   while True:\n\
         \x20       c = s.recv(1 << 16)\n\
         \x20       if not c: break\n\
         \x20       got.append(c)\n\
         t = threading.Thread(target=rd); t.start()\n\
         s.sendall(data)\n\
         s.shutdown(socket.SHUT_WR)\n\
         t.join(30)\n\
         back = b''.join(got)\n\
         trailer = ('after-eof:%d' % len(data)).encode()\n\
         print('ok' if back == data + trailer else 'MISMATCH', len(back))"
    )
}

/// Runs a Python snippet inside `cg` and returns its stdout; panics with stderr on failure.
pub fn python_in(cg: &TestCgroup, code: &str) -> String {
    let out = cg.run(&["python3", "-c", code]);
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// curl inside `cg`: (exit code, body).
pub fn curl_in(cg: &TestCgroup, args: &[&str]) -> (i32, String) {
    let mut argv = vec!["curl", "-sS", "--max-time", "10"];
    argv.extend_from_slice(args);
    let out = cg.run(&argv);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// curl with `args` inside `cg`, the body discarded: the HTTP status it got (`000` for none).
pub fn status_in(cg: &TestCgroup, args: &[&str]) -> String {
    let mut argv = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    argv.extend_from_slice(args);
    curl_in(cg, &argv).1
}

// === test parties (installed by `cargo xtask test` under target/) ===

/// The venv `cargo xtask test` builds: Python with httpx, the MCP SDK and grpcio, pinned.
pub fn party_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/testenv/bin/python")
}

/// A script from `tests/parties/`.
pub fn party_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("parties")
        .join(name)
}

/// A grpcio server (`parties/grpc_first_value.py`) whose `demo.Admin/Delete` answers `deleted
/// <message>` and logs the call with the first `x-team` metadata value, as grpc-go's
/// `md.Get(k)[0]` reads it.
pub fn grpc_admin_party(dir: &Path) -> Party {
    let port = free_port();
    let log = dir.join(format!("grpc-{port}.jsonl"));
    Party::start(
        &[
            &party_python().display().to_string(),
            &party_script("grpc_first_value.py").display().to_string(),
            &port.to_string(),
            &log.display().to_string(),
        ],
        port,
        log,
    )
}

/// Whether the pinned Python test parties are installed; panics in CI when they are not.
pub fn parties_available(test: &str) -> bool {
    party_python().exists()
        || skip(
            test,
            "the test parties are not installed (run `cargo xtask test`)",
        )
}

/// A server process started for a test, killed on drop.
pub struct Party {
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Party {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `argv` and waits (at most 30 s) for 127.0.0.1:`port` to accept.
    pub fn start(argv: &[&str], port: u16, log: PathBuf) -> Self {
        let out = fs::File::create(log.with_extension("out")).expect("party log");
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        let mut p = Self { port, log, child };
        let up = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "{argv:?} exited ({status}):\n{}",
                    fs::read_to_string(p.log.with_extension("out")).unwrap_or_default()
                );
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        assert!(up.is_some(), "{argv:?} did not listen on {port}");
        p
    }

    /// The JSON lines the upstream logged, one per request it received.
    pub fn requests(&self) -> Vec<Value> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Asks the party to stop (SIGTERM) and waits up to `within` for it to exit; a server that
    /// manages worker processes (nginx) stops them itself, which a kill would not let it do.
    pub fn terminate(&mut self, within: Duration) {
        // SAFETY: kill(2) on our own child's pid, which stays reserved until we wait for it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = wait_for(within, || self.child.try_wait().ok()?);
    }
}

impl Drop for Party {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "party output:\n{}",
                fs::read_to_string(self.log.with_extension("out")).unwrap_or_default()
            );
        }
    }
}

/// The upstream of `tests/parties/upstream.py` (REST + JSON-RPC), plain or with TLS.
pub fn upstream(dir: &Path, tls: Option<(&Path, &Path)>) -> Party {
    upstream_with(dir, tls, &[])
}

/// [`upstream`] with more of its flags (e.g. `--fail-hooks 1`).
pub fn upstream_with(dir: &Path, tls: Option<(&Path, &Path)>, flags: &[&str]) -> Party {
    let port = free_port();
    let log = dir.join(format!("upstream-{port}.jsonl"));
    let py = party_python();
    let script = party_script("upstream.py");
    let mut argv: Vec<String> = vec![
        py.display().to_string(),
        script.display().to_string(),
        "--port".into(),
        port.to_string(),
        "--log".into(),
        log.display().to_string(),
    ];
    if let Some((cert, key)) = tls {
        argv.extend([
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
    }
    argv.extend(flags.iter().map(|f| f.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    Party::start(&argv, port, log)
}

/// A gateway deciding with `policies` and configured by `config` (YAML, written to
/// `dir/callgate.yaml`).
pub fn gateway_with_config(policies: &Path, config: &str, dir: &Path) -> Gateway {
    gateway_with_config_env(policies, config, dir, &[])
}

/// [`gateway_with_config`] with extra environment for the gateway process.
pub fn gateway_with_config_env(
    policies: &Path,
    config: &str,
    dir: &Path,
    env: &[(&str, &str)],
) -> Gateway {
    let path = dir.join("callgate.yaml");
    fs::write(&path, config).expect("config");
    Gateway::start_with_env(
        &[
            "--policies",
            &policies.display().to_string(),
            "--config",
            &path.display().to_string(),
        ],
        env,
    )
}

/// A policy repository written for one test: `callgate.yaml` plus `services/<name>.yaml`.
pub fn policy_repo(dir: &Path, repo: &str, services: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("policies");
    fs::create_dir_all(root.join("services")).expect("policy dir");
    fs::write(root.join("callgate.yaml"), repo).expect("callgate.yaml");
    for (name, text) in services {
        fs::write(root.join("services").join(format!("{name}.yaml")), text).expect("service");
    }
    root
}

/// A policy repository in `dir` with one service, `payments` at the upstream on loopback
/// `port`: `get_payment` (`GET /v1/payments/{payment_id}`) allowed, anything else denied.
pub fn payments_reads(dir: &Path, port: u16) -> PathBuf {
    payments_reads_with(dir, port, "")
}

/// [`payments_reads`] with `more` (top-level YAML, e.g. `response:` masks) in the service.
pub fn payments_reads_with(dir: &Path, port: u16, more: &str) -> PathBuf {
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
rules:
  - {{ name: reads, function: get_payment, action: allow }}
{more}"#
    );
    policy_repo(
        dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &service)],
    )
}

/// Every record a gateway wrote so far (`callgate records export`).
pub fn records(gw: &Gateway) -> Vec<Value> {
    records_in(&gw.dir.join("state/records"))
}

/// Every record in the records directory `dir` (`callgate records export`).
pub fn records_in(dir: &Path) -> Vec<Value> {
    let out = Command::new(callgate_bin())
        .args(["records", "export", "--format", "jsonl", "--dir"])
        .arg(dir)
        .output()
        .expect("records list");
    assert!(
        out.status.success(),
        "records export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(a)) => a,
        _ => text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
    }
}

/// Waits (at most 10 s) for a record matching `pred`; panics with every record if none comes.
pub fn record_where(gw: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(10), || {
        records(gw).into_iter().find(&pred)
    })
    .unwrap_or_else(|| panic!("no record of {what}:\n{:#?}", records(gw)))
}

/// The Node test parties' directory (`oidc-provider`, pinned, in its `node_modules`).
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/testenv/node")
}

/// Whether the pinned Node test parties are installed; panics in CI when they are not.
pub fn node_parties_available(test: &str) -> bool {
    node_dir().join("node_modules/oidc-provider").exists()
        || skip(
            test,
            "the Node test parties are not installed (run `cargo xtask test`)",
        )
}

/// A real OpenID provider (`tests/parties/oidc_provider.mjs`, npm `oidc-provider`) on
/// loopback, issuing client-credentials JWT access tokens with a `groups` claim.
pub struct Oidc {
    pub port: u16,
    dir: PathBuf,
    /// The script's copy beside `node_modules`: ES modules resolve packages from the
    /// script's own directory. One per provider, so parallel tests never see a half copy.
    script: PathBuf,
    /// Where the `callgate-approvals` client may send browsers back to after log-in.
    redirects: Vec<String>,
    party: Option<Party>,
}

/// A copy of `tests/parties/<name>` beside `node_modules`: ES modules resolve packages from
/// the script's own directory. One per use, so parallel tests never see a half copy.
pub fn node_script(name: &str) -> PathBuf {
    let stem = name.trim_end_matches(".mjs");
    let script = node_dir().join(format!("{}.mjs", unique(stem)));
    fs::copy(party_script(name), &script).unwrap_or_else(|e| panic!("copy {name}: {e}"));
    script
}

impl Oidc {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// A provider that also lets people log in to client `callgate-approvals` (secret
    /// `callgate-approvals-secret`) and come back to `redirects`.
    pub fn start_with(dir: &Path, redirects: &[String]) -> Self {
        let mut o = Self {
            port: free_port(),
            dir: dir.to_path_buf(),
            script: node_script("oidc_provider.mjs"),
            redirects: redirects.to_vec(),
            party: None,
        };
        o.restart(false);
        o
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts on the same port with the same keys; `rotate` adds a new signing key.
    pub fn restart(&mut self, rotate: bool) {
        self.stop();
        let port = self.port.to_string();
        let keys = self.dir.join("oidc-keys.json").display().to_string();
        let script = self.script.display().to_string();
        let mut argv = vec!["node", &script, "--port", &port, "--keys", &keys];
        if rotate {
            argv.push("--rotate");
        }
        for r in &self.redirects {
            argv.extend(["--redirect-uri", r]);
        }
        let log = self.dir.join(format!("oidc-{}", self.port));
        self.party = Some(Party::start(&argv, self.port, log));
    }

    pub fn stop(&mut self) {
        self.party = None;
    }

    /// An access token for service account `client` (its secret is `<client>-secret`), got
    /// as a client would: client credentials at the token endpoint. `resource` picks the
    /// audience (`urn:callgate:other` gives one the gateway does not accept).
    pub fn token(&self, client: &str, resource: Option<&str>) -> String {
        let mut args = vec![
            "-sS".to_string(),
            "--max-time".into(),
            "10".into(),
            "-u".into(),
            format!("{client}:{client}-secret"),
            "-d".into(),
            "grant_type=client_credentials".into(),
        ];
        if let Some(r) = resource {
            args.extend(["-d".into(), format!("resource={r}")]);
        }
        args.push(format!("{}/token", self.issuer()));
        let out = Command::new("curl").args(&args).output().expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("token endpoint: {}", String::from_utf8_lossy(&out.stdout)));
        v["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {v}"))
            .to_string()
    }

    /// A token no provider would issue: `otherkey` (signed by an unpublished key under the
    /// published kid) or `none` (unsigned).
    pub fn forged(&self, kind: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("{}/test/forge?kind={kind}", self.issuer()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Oidc {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_file(&self.script);
    }
}

/// The `kid` in a JWT's header.
pub fn jwt_kid(token: &str) -> String {
    let header = token.split('.').next().unwrap_or_default();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys,base64,json; h=sys.argv[1]; print(json.loads(base64.urlsafe_b64decode(h+'='*(-len(h)%4)))['kid'])",
            header,
        ])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A test CA (`ca.crt`) and a leaf for `api.test` and 127.0.0.1 (`leaf.crt`, `leaf.key`) in
/// `dir`, made with the openssl CLI.
pub fn test_pki(dir: &Path) {
    let sh = format!(
        "set -e; cd '{}'
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
           -keyout ca.key -out ca.crt -days 2 -subj /CN=callgate-test-ca 2>/dev/null
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
           -keyout leaf.key -out leaf.csr -subj /CN=api.test 2>/dev/null
         printf 'subjectAltName=DNS:api.test,IP:127.0.0.1\\n' > ext.cnf
         openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
           -out leaf.crt -days 2 -extfile ext.cnf 2>/dev/null",
        dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &sh])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// === PostgreSQL ===

/// Debian's PostgreSQL 15 server programs (`cargo xtask setup` installs `postgresql-15`).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether a PostgreSQL server can be started here; a failure in CI, a skip otherwise.
pub fn postgres_available(test: &str) -> bool {
    if Path::new(PG_BIN).join("postgres").exists() && Path::new("/usr/bin/psql").exists() {
        return true;
    }
    skip(
        test,
        "PostgreSQL 15 is not installed (cargo xtask setup installs it)",
    )
}

/// A private PostgreSQL cluster of one test: `initdb` into a directory of its own (as the
/// `postgres` user: initdb refuses root), serving on a loopback port and a socket in that
/// directory only, trust authentication (nothing but this host's loopback reaches it), one
/// database `callgate`. Stopped and removed when dropped; every wait is bounded.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    uid: u32,
    gid: u32,
    running: bool,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// A server that takes TLS only (`ssl = on`, `hostssl` lines only in pg_hba.conf),
    /// its certificate (for 127.0.0.1 and localhost) signed by a CA this makes: returns
    /// the server and the CA's PEM file.
    pub fn start_tls() -> (Self, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "callgate test database CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
        let pg = Self::start_inner(Some((cert.pem(), key.serialize_pem())));
        let ca_path = pg.dir.join("ca.pem");
        fs::write(&ca_path, ca.pem()).expect("CA PEM");
        (pg, ca_path)
    }

    /// A CA of its own, that signed nothing the server has: its PEM file in `dir`.
    pub fn unrelated_ca(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "some other CA");
        let path = dir.join(unique("other-ca"));
        fs::write(&path, params.self_signed(&key).expect("CA").pem()).expect("write CA");
        path
    }

    fn start_inner(tls: Option<(String, String)>) -> Self {
        let (uid, gid) = account("postgres").expect("a postgres account (Debian's postgresql)");
        let dir = std::env::temp_dir().join(unique("callgate-pg"));
        fs::create_dir_all(dir.join("sock")).expect("pg dir");
        for d in [dir.clone(), dir.join("sock")] {
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).expect("chown pg dir");
        }
        let mut pg = Self {
            port: free_port(),
            dir,
            uid,
            gid,
            running: false,
        };
        let data = pg.data();
        pg.as_postgres(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        if let Some((cert, key)) = tls {
            let data = PathBuf::from(pg.data());
            for (name, text) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                fs::write(&path, text).expect("server TLS file");
                std::os::unix::fs::chown(&path, Some(pg.uid), Some(pg.gid)).expect("chown");
                fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .expect("chmod");
            }
            let mut conf = fs::read_to_string(data.join("postgresql.conf")).expect("conf");
            conf.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            fs::write(data.join("postgresql.conf"), conf).expect("conf");
            // TLS or nothing over TCP; the local socket stays for pg_ctl.
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("pg_hba.conf");
        }
        pg.start_again();
        pg.psql("postgres", "CREATE DATABASE callgate");
        pg
    }

    /// `postgresql://` URL of the `callgate` database, on the loopback port.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/callgate", self.port)
    }

    /// Starts the server (again, after [`Postgres::stop`]) and waits until it accepts
    /// connections (at most 30 s).
    pub fn start_again(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.join("sock").display()
        );
        let log = self.dir.join("server.log").display().to_string();
        let data = self.data();
        self.as_postgres(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "30", "start",
            ],
        );
        self.running = true;
    }

    /// Stops the server (fast: open connections are closed), waiting at most 20 s.
    pub fn stop(&mut self) {
        let data = self.data();
        self.as_postgres(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "20", "stop"],
        );
        self.running = false;
    }

    /// Runs `sql` in `db` with psql; its output, unaligned, tuples only.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("/usr/bin/psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of the server's programs as the `postgres` user; panics if it fails.
    fn as_postgres(&self, program: &str, args: &[&str]) {
        let out = Command::new("setpriv")
            .args([
                &format!("--reuid={}", self.uid),
                &format!("--regid={}", self.gid),
                "--clear-groups",
                "--",
            ])
            .arg(Path::new(PG_BIN).join(program))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("setpriv");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = Command::new("setpriv")
                .args([
                    &format!("--reuid={}", self.uid),
                    &format!("--regid={}", self.gid),
                    "--clear-groups",
                    "--",
                ])
                .arg(Path::new(PG_BIN).join("pg_ctl"))
                .args(["-D", &data, "-m", "immediate", "-w", "-t", "10", "stop"])
                .current_dir(&self.dir)
                .output();
        }
        if std::thread::panicking() {
            eprintln!("postgres log ({}):\n{}", self.dir.display(), self.log());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The uid and gid of account `name`.
fn account(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// A `callgate witness` process (C2SP tlog-witness), killed when dropped.
pub struct Witness {
    port: u16,
    state: PathBuf,
    name: String,
    keys: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Witness {
    /// Starts a witness named `name` on `port` with its state in `state`, for the logs whose
    /// verifier keys (or files holding them) are `keys`; waits (≤ 10 s) for it to answer.
    pub fn start(port: u16, state: &Path, name: &str, keys: &[&str]) -> Self {
        let mut w = Self {
            port,
            state: state.to_path_buf(),
            name: name.to_string(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            log: state.with_extension("log"),
            child: None,
        };
        w.restart();
        w
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        self.kill();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("witness log");
        let mut c = Command::new(callgate_bin());
        c.args(["witness", "--listen"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state")
            .arg(&self.state)
            .args(["--name", &self.name]);
        for k in &self.keys {
            c.args(["--log-key", k]);
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn witness");
        self.child = Some(child);
        let health = format!("{}/healthz", self.url());
        let up = wait_for(Duration::from_secs(10), || {
            let out = Command::new("curl")
                .args([
                    "-sS",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "2",
                    "-w",
                    "%{http_code}",
                ])
                .arg(&health)
                .output()
                .ok()?;
            (out.stdout == b"200").then_some(())
        });
        assert!(up.is_some(), "the witness did not start: {}", self.log());
    }

    /// Its cosignature verifier key (`callgate witness key`).
    pub fn key(&self) -> String {
        let out = Command::new(callgate_bin())
            .args(["witness", "key", "--state"])
            .arg(&self.state)
            .output()
            .expect("witness key");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The checkpoint the witness holds for the log (its only log here).
    pub fn held(&self) -> String {
        let dir = self.state.join("logs");
        let e = fs::read_dir(&dir)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok);
        e.and_then(|e| fs::read_to_string(e.path()).ok())
            .unwrap_or_default()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("witness log:\n{}", self.log());
        }
    }
}

/// A JSON document of about `size` bytes (an array of small objects), so masking reads it:
/// the answers of the l7 bench and the answer probes.
pub fn json_of_size(size: usize) -> String {
    let item =
        r#"{"id":12345,"name":"a widget of some kind","tags":["x","y"],"note":"plain text"}"#;
    let mut s = String::from("[");
    while s.len() + item.len() + 2 < size {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    s
}

/// An MCP server party of `tests/parties` (run as `SCRIPT PORT RUNS [EXTRA...]`, appending
/// each tool it runs to RUNS) behind a gateway whose only service is `svc` (`PORT` in it
/// replaced by the server's port; unknown destinations denied), and a cgroup it governs.
pub struct McpWorld {
    pub cg: TestCgroup,
    pub gw: Gateway,
    _server: Party,
    runs: PathBuf,
    pub port: u16,
    _dir: TestDir,
}

impl McpWorld {
    pub fn start(test: &str, script: &str, extra: &[&str], svc: &str) -> Self {
        Self::start_with_config(test, script, extra, svc, "")
    }

    /// [`McpWorld::start`] with `config` for the gateway's configuration file.
    pub fn start_with_config(
        test: &str,
        script: &str,
        extra: &[&str],
        svc: &str,
        config: &str,
    ) -> Self {
        let dir = TestDir::new(test);
        let port = free_port();
        let runs = dir.join("runs.log");
        let py = party_python().display().to_string();
        let server = party_script(script).display().to_string();
        let (port_s, runs_s) = (port.to_string(), runs.display().to_string());
        let mut argv = vec![
            py.as_str(),
            server.as_str(),
            port_s.as_str(),
            runs_s.as_str(),
        ];
        argv.extend_from_slice(extra);
        let server = Party::start(&argv, port, dir.join("server"));
        let svc = svc.replace("PORT", &port.to_string());
        let name = svc
            .lines()
            .find_map(|l| l.strip_prefix("service:"))
            .map_or("svc", str::trim);
        let policies = policy_repo(
            &dir,
            "default_action: deny\nunknown_destination: deny\n",
            &[(name, &svc)],
        );
        let gw = gateway_with_config(&policies, config, &dir);
        let cg = TestCgroup::new(test);
        gw.enable(&cg);
        Self {
            cg,
            gw,
            _server: server,
            runs,
            port,
            _dir: dir,
        }
    }

    /// The Python party `script` run in the cgroup with `args`: the one JSON object it prints.
    pub fn client(&self, script: &str, args: &[&str]) -> Value {
        let py = party_python().display().to_string();
        let script = party_script(script).display().to_string();
        let mut argv = vec![py.as_str(), script.as_str()];
        argv.extend_from_slice(args);
        let out = self.cg.run(&argv);
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "the client's output is not JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The tools the server ran, in order.
    pub fn ran(&self) -> Vec<String> {
        fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}
