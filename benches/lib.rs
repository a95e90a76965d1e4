//! Helpers shared by callgate's benchmarks: percentiles and ratio reporting. Every benchmark
//! measures its baseline in the same run, because these machines are noisy.
use std::{fs, path::Path, process::Command, time::Duration};

use callgate_e2e::{Gateway, Party, TestCgroup};

/// Sorted samples and their percentiles.
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    pub fn pct(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.0.len() - 1) as f64 * p / 100.0).round() as usize;
        self.0[i]
    }
}

/// The benches' small answer (~160 B of JSON), served by the upstream nginx at
/// `/v1/items/42`.
pub const BODY: &str = r#"{"id":42,"name":"widget","owner":"team-a","price":1299,"tags":["a","b","c"],"note":"nothing sensitive here, just a small JSON answer of about two hundred bytes"}"#;

/// The benches' service: one REST read of the upstream at `up_port`, allowed, its answer
/// masked (card numbers, e-mail addresses).
pub fn items_service(up_port: u16) -> String {
    items("items", &format!(r#"{{ hosts: ["127.0.0.1:{up_port}"] }}"#))
}

/// [`items_service`]'s read over TLS at `tls_port`, intercepted: the gateway terminates with
/// a leaf from its own CA (wrk does not verify) and re-originates TLS to the upstream,
/// verified against the test CA at `ca`.
pub fn items_tls_service(tls_port: u16, ca: &Path) -> String {
    items(
        "items-tls",
        &format!(
            r#"{{ hosts: ["127.0.0.1:{tls_port}"], tls: intercept, upstream_ca: "{}" }}"#,
            ca.display()
        ),
    )
}

/// The items read, allowed and masked, as service `name` matching `select`.
fn items(name: &str, select: &str) -> String {
    format!(
        r#"
service: {name}
match: {select}
protocol: rest
functions:
  get_item: {{ route: "GET /v1/items/{{id}}" }}
rules:
  - {{ name: reads, function: get_item, action: allow }}
response:
  mask: [card_number, email]
"#
    )
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// What wrk reported.
pub struct Wrk {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    /// How long it ran.
    pub secs: f64,
    pub requests: u64,
    /// Answers other than 2xx/3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub errors: u64,
}

/// Runs wrk (inside `cg` when given, so that its connections are intercepted).
pub fn wrk(cg: Option<&TestCgroup>, load: &[&str], url: &str) -> Wrk {
    let w = wrk_any(cg, load, url);
    assert!(
        w.non_2xx == 0,
        "wrk saw {} error answers (is the call allowed?)",
        w.non_2xx
    );
    w
}

/// When and at which commit a benchmark ran: its results are named by these.
pub struct RunId {
    pub date: String,
    pub commit: String,
}

impl RunId {
    pub fn now() -> Self {
        let run = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        Self {
            date: run("date", &["-u", "+%Y-%m-%d"]),
            commit: run("git", &["rev-parse", "--short", "HEAD"]),
        }
    }

    /// `benches/results/<date>-<commit>-<suite>` (add the extension), the directory created.
    pub fn results(&self, suite: &str) -> Option<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
        fs::create_dir_all(&dir).ok()?;
        Some(dir.join(format!("{}-{}-{suite}", self.date, self.commit)))
    }
}

/// User and system CPU seconds of process `pid` so far, all its threads.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based); `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

/// A proxy whose CPU time the bench reads, to set callgate's cost per request beside
/// nginx's: that ratio moves less with a noisy neighbour than requests per second do.
pub trait CpuTime {
    fn cpu_seconds(&self) -> f64;
}

impl CpuTime for Gateway {
    /// User + system CPU seconds the gateway process has used so far.
    fn cpu_seconds(&self) -> f64 {
        self.pid().map_or(0.0, process_cpu_seconds)
    }
}

impl CpuTime for Nginx {
    /// The master's and its workers' (its children's, while they live: a child's time reaches
    /// its parent's counters only once it was waited for).
    fn cpu_seconds(&self) -> f64 {
        let pid = self.party.pid();
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        process_cpu_seconds(pid)
            + children
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .map(process_cpu_seconds)
                .sum::<f64>()
    }
}

/// Runs `load` and returns what it measured with `proxy`'s CPU microseconds per request
/// meanwhile.
pub fn with_cpu(proxy: &impl CpuTime, load: impl FnOnce() -> Wrk) -> (Wrk, f64) {
    let cpu0 = proxy.cpu_seconds();
    let w = load();
    let cpu = proxy.cpu_seconds() - cpu0;
    let per_request = cpu * 1e6 / (w.rps * w.secs).max(1.0);
    (w, per_request)
}

/// Runs a load generator (`tool` with its fixed flags, then `load`, then `url`), inside `cg`
/// when given so that its connections are intercepted; its standard output.
fn load_tool(cg: Option<&TestCgroup>, tool: &[&str], load: &[&str], url: &str) -> String {
    let argv: Vec<&str> = tool.iter().chain(load).copied().chain([url]).collect();
    let out = match cg {
        Some(cg) => cg.run(&argv),
        None => Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", argv[0])),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed: {text}{}",
        argv[0],
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Like [`wrk`], error answers allowed (counted in `non_2xx`).
pub fn wrk_any(cg: Option<&TestCgroup>, load: &[&str], url: &str) -> Wrk {
    let text = load_tool(cg, &["wrk", "--latency"], load, url);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
            .to_string()
    };
    let secs = load
        .iter()
        .find_map(|a| {
            a.strip_prefix("-d")
                .and_then(|d| d.trim_end_matches('s').parse().ok())
        })
        .unwrap_or(0.0);
    // `Non-2xx or 3xx responses: N`; `Socket errors: connect 0, read 0, write 0, timeout 0`.
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map_or(0, |e| {
            e.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        });
    let requests = text
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .unwrap_or(0);
    Wrk {
        secs,
        requests,
        non_2xx,
        errors,
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        p50: wrk_micros(&field("50%")),
        p99: wrk_micros(&field("99%")),
    }
}

/// wrk's `123.45us` / `1.20ms` / `2.00s` in microseconds.
fn wrk_micros(s: &str) -> f64 {
    let (n, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        (s, 1.0)
    };
    n.parse::<f64>().unwrap_or(f64::NAN) * scale
}

/// Runs h2load (inside `cg` when given): HTTP/2 with prior knowledge, `load` e.g.
/// `-D6 -c4 -m100`. h2load reports no percentiles: `p50` holds its mean time per request
/// and `p99` is NaN.
pub fn h2load(cg: Option<&TestCgroup>, load: &[&str], url: &str) -> Wrk {
    let text = load_tool(cg, &["h2load"], load, url);
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {prefix:?} in h2load's output:\n{text}"))
    };
    // `finished in 6.00s, 50012.33 req/s, 9.34MB/s`
    let finished = line("finished in");
    let mut parts = finished.split(',').map(str::trim);
    let secs = parts
        .next()
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .unwrap_or(0.0);
    let rps = parts
        .next()
        .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
        .unwrap_or(0.0);
    // `requests: N total, N started, N done, N succeeded, F failed, E errored, T timeout`
    let requests = line("requests:");
    let count = |what: &str| {
        requests
            .split(',')
            .find_map(|p| p.trim().strip_suffix(what)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `time for request:   123us   4.5ms   456us   78us   90.1%`: min, max, mean, sd
    let mean = line("time for request:")
        .split_whitespace()
        .nth(2)
        .map_or(f64::NAN, wrk_micros);
    let status = line("status codes:");
    let non_2xx = status
        .split(',')
        .filter(|p| !p.trim().ends_with("2xx"))
        .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Wrk {
        rps,
        p50: mean,
        p99: f64::NAN,
        secs,
        requests: count("done"),
        non_2xx,
        errors: count("failed") + count("errored") + count("timeout"),
    }
}

/// An nginx of its own (foreground, files under `dir`), stopped on drop.
pub fn nginx(dir: &Path, name: &str, workers: u32, server: &str, port: u16) -> Nginx {
    let root = dir.join(name);
    fs::create_dir_all(&root).expect("nginx dir");
    let conf = root.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; worker_processes {workers}; pid {root}/nginx.pid; \
             error_log {root}/error.log; events {{ worker_connections 4096; }} \
             http {{ access_log off; client_body_temp_path {root}; proxy_temp_path {root}; \
             {server} }}",
            root = root.display()
        ),
    )
    .expect("nginx.conf");
    let (conf, root_dir) = (conf.display().to_string(), root.display().to_string());
    let party = Party::start(
        &["nginx", "-c", &conf, "-p", &root_dir],
        port,
        root.join("nginx.log"),
    );
    Nginx { party }
}

/// A running nginx. Dropping it stops the workers too: killing only the master (what a
/// plain child kill does) would leave them serving, and loading the next benchmark. SIGTERM
/// lets the master stop them; it needs neither the config nor the pid file, which a
/// benchmark may have removed with its directory by then.
pub struct Nginx {
    party: Party,
}

impl Nginx {
    /// The master's pid and its workers'.
    pub fn pids(&self) -> Vec<u32> {
        let pid = self.party.pid();
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        std::iter::once(pid)
            .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.party.terminate(Duration::from_secs(5));
    }
}

/// Runs `callgate-paced` (the bench's open-loop generator; `exe` is its path) at `rate`
/// requests per second over 32 keep-alive connections, inside `cg` when given. Latency counts
/// from when each request was due, so a stall shows in every request it delays.
pub fn paced(exe: &str, cg: Option<&TestCgroup>, rate: f64, secs: f64, url: &str) -> Wrk {
    paced_on(exe, cg, rate, 32, secs, url)
}

/// [`paced`] over `connections` keep-alive connections.
pub fn paced_on(
    exe: &str,
    cg: Option<&TestCgroup>,
    rate: f64,
    connections: usize,
    secs: f64,
    url: &str,
) -> Wrk {
    let (rate, secs_arg) = (format!("{rate:.0}"), format!("{secs}"));
    let connections = connections.to_string();
    let load = [
        "--rate",
        &rate,
        "--connections",
        &connections,
        "--warmup",
        "1",
        "--duration",
        &secs_arg,
    ];
    let text = load_tool(cg, &[exe], &load, url);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("callgate-paced's output {text:?}: {e}"));
    let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Wrk {
        rps: num("rps"),
        p50: num("p50_us"),
        p99: num("p99_us"),
        secs,
        requests: num("answered") as u64,
        non_2xx: num("non_2xx") as u64,
        errors: 0,
    }
}

/// The median of each of `runs`' rates and percentiles: one stall in one round of a noisy
/// machine moves a p99 by milliseconds, the median of three rounds by much less.
pub fn median_of(runs: &[Wrk]) -> Wrk {
    let med = |f: fn(&Wrk) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Wrk {
        rps: med(|w| w.rps),
        p50: med(|w| w.p50),
        p99: med(|w| w.p99),
        secs: runs.iter().map(|w| w.secs).sum(),
        requests: runs.iter().map(|w| w.requests).sum(),
        non_2xx: runs.iter().map(|w| w.non_2xx).sum(),
        errors: runs.iter().map(|w| w.errors).sum(),
    }
}

/// While held, a KVM guest's idle vCPUs poll for up to 200 µs before halting (the
/// `haltpoll` cpuidle driver's `guest_halt_poll_ns`; restored on drop). With polling off, as
/// this machine kind boots, a request that finds its CPU halted waits for the hypervisor to
/// run the vCPU again, and latency percentiles measure that: direct loopback calls show p50
/// ≈ 90–160 µs and p99 in milliseconds. Polling takes that out of every path alike, so that
/// latency rows compare the software. `None` when the knob is absent or read-only.
pub struct GuestIdlePoll {
    /// The value to restore.
    before: String,
}

impl GuestIdlePoll {
    const PATH: &'static str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

    pub fn hold() -> Option<Self> {
        let before = fs::read_to_string(Self::PATH).ok()?.trim().to_string();
        fs::write(Self::PATH, "200000").ok()?;
        Some(Self { before })
    }
}

impl Drop for GuestIdlePoll {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, &self.before);
    }
}

/// A point in the host's share of this machine's CPU time: on a VM, the time the hypervisor
/// ran something else while a vCPU wanted to run ("steal" in `/proc/stat`). A case measured
/// while the host took a few percent says more about the host than about the paths it
/// compares, so the l7 bench prints it beside every row.
#[derive(Clone, Copy)]
pub struct Steal {
    steal: u64,
    /// idle + iowait.
    idle: u64,
    total: u64,
}

impl Steal {
    /// None where `/proc/stat` has no steal column (not Linux, or a kernel before 2.6.11).
    pub fn now() -> Option<Self> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        Self::parse(stat.lines().next()?)
    }

    /// The all-CPU line: `cpu user nice system idle iowait irq softirq steal ...` (USER_HZ).
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let ticks: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
        // guest and guest_nice (9th and 10th) are already counted in user and nice.
        let total = ticks.iter().take(8).sum();
        Some(Self {
            steal: *ticks.get(7)?,
            idle: ticks[3] + ticks[4],
            total,
        })
    }

    /// Percent of all CPUs' time since `self` that this machine's own work took (neither idle
    /// nor stolen): every process, the gateway's and its neighbours'; NaN if none passed.
    pub fn busy_percent_since(&self) -> f64 {
        match Self::now() {
            Some(now) if now.total > self.total => {
                let spent = |s: &Self| s.total - s.idle - s.steal;
                100.0 * spent(&now).saturating_sub(spent(self)) as f64
                    / (now.total - self.total) as f64
            }
            _ => f64::NAN,
        }
    }

    /// Percent of all CPUs' time since `self` that the host took; NaN if none passed.
    pub fn percent_since(&self) -> f64 {
        match Self::now() {
            Some(now) if now.total > self.total => {
                100.0 * now.steal.saturating_sub(self.steal) as f64
                    / (now.total - self.total) as f64
            }
            _ => f64::NAN,
        }
    }
}

/// One thread of a process at a moment: its name and how often it was switched out.
#[derive(Clone, Debug)]
struct ThreadStat {
    tid: u32,
    name: String,
    /// Switches the thread asked for (it blocked: a read, a futex, an epoll wait).
    voluntary: u64,
    /// Switches the scheduler forced (preempted).
    involuntary: u64,
    /// User + system clock ticks.
    ticks: u64,
}

/// Every thread of a process at one moment: to count, per call, how often each kind of thread
/// blocked and woke (a cross-thread hand-off shows as a switch on both sides) and the CPU
/// each used.
pub struct Threads(Vec<ThreadStat>);

/// What one kind of thread did between two [`Threads`] snapshots.
#[derive(Clone, Debug)]
pub struct ThreadDelta {
    /// The threads' name with a trailing number dropped (`callgate-data-0` and `-1` are one).
    pub name: String,
    pub threads: usize,
    pub voluntary: u64,
    pub involuntary: u64,
    pub cpu_seconds: f64,
}

impl Threads {
    pub fn of(pid: u32) -> Self {
        let mut v = Vec::new();
        let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return Self(v);
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let base = e.path();
            let name = fs::read_to_string(base.join("comm")).unwrap_or_default();
            let status = fs::read_to_string(base.join("status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            let stat = fs::read_to_string(base.join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            v.push(ThreadStat {
                tid,
                name: group_name(name.trim()),
                voluntary: field("voluntary_ctxt_switches:"),
                involuntary: field("nonvoluntary_ctxt_switches:"),
                ticks: tick(11) + tick(12),
            });
        }
        Self(v)
    }

    /// Per kind of thread, what its threads did since `before` (a thread started meanwhile
    /// counts from zero; one that ended is left out), busiest first.
    pub fn since(&self, before: &Threads) -> Vec<ThreadDelta> {
        let mut out: Vec<ThreadDelta> = Vec::new();
        for t in &self.0 {
            let b = before.0.iter().find(|b| b.tid == t.tid);
            let d = |now: u64, then: fn(&ThreadStat) -> u64| now - b.map_or(0, then).min(now);
            let (vol, invol) = (
                d(t.voluntary, |b| b.voluntary),
                d(t.involuntary, |b| b.involuntary),
            );
            let secs = d(t.ticks, |b| b.ticks) as f64 / 100.0;
            match out.iter_mut().find(|o| o.name == t.name) {
                Some(o) => {
                    o.threads += 1;
                    o.voluntary += vol;
                    o.involuntary += invol;
                    o.cpu_seconds += secs;
                }
                None => out.push(ThreadDelta {
                    name: t.name.clone(),
                    threads: 1,
                    voluntary: vol,
                    involuntary: invol,
                    cpu_seconds: secs,
                }),
            }
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.voluntary + d.involuntary));
        out
    }

    /// The kind of thread `tid` is (see [`ThreadDelta::name`]).
    pub fn name_of(&self, tid: u32) -> Option<&str> {
        self.0
            .iter()
            .find(|t| t.tid == tid)
            .map(|t| t.name.as_str())
    }
}

/// `callgate-data-1` → `callgate-data`; `tokio-runtime-w` stays.
fn group_name(comm: &str) -> String {
    let trimmed = comm.trim_end_matches(|c: char| c.is_ascii_digit());
    match trimmed.strip_suffix('-') {
        Some(t) if trimmed.len() < comm.len() => t.to_string(),
        _ => comm.to_string(),
    }
}

/// System calls counted per kind of thread: (thread kind, system call, count).
pub type SyscallCounts = Vec<(String, String, u64)>;

/// The system calls each kind of thread of processes `pids` made while `load` ran, from a
/// full `strace -f` of every thread (the trace slows the processes: count calls with it, do
/// not time them). `None` without strace. Each entry: thread kind, system call, count.
pub fn syscalls_during<R>(
    pids: &[u32],
    dir: &Path,
    load: impl FnOnce() -> R,
) -> (R, Option<SyscallCounts>) {
    let Some(&pid) = pids.first() else {
        return (load(), None);
    };
    let out = dir.join(format!("strace-{pid}.txt"));
    let threads: Vec<Threads> = pids.iter().map(|&p| Threads::of(p)).collect();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"]).arg(&out);
    for p in pids {
        cmd.args(["-p", &p.to_string()]);
    }
    let child = cmd.stderr(std::process::Stdio::null()).spawn();
    let Ok(mut child) = child else {
        return (load(), None);
    };
    // Attached once every thread has a tracer.
    let attached = || {
        pids.iter().all(|pid| {
            fs::read_dir(format!("/proc/{pid}/task"))
                .map(|d| {
                    d.flatten().all(|t| {
                        fs::read_to_string(t.path().join("status"))
                            .unwrap_or_default()
                            .lines()
                            .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
                    })
                })
                .unwrap_or(false)
        })
    };
    for _ in 0..50 {
        if attached() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = load();
    // SIGINT: strace detaches and writes out what it has.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let text = fs::read_to_string(&out).unwrap_or_default();
    let _ = fs::remove_file(&out);
    let mut counts: SyscallCounts = Vec::new();
    for line in text.lines() {
        let Some((tid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        // `<... epoll_wait resumed>` ends a call already counted; `+++`/`---`: signals, exits.
        if call.starts_with('<') || call.starts_with('+') || call.starts_with('-') {
            continue;
        }
        let Some(name) = call.split('(').next().filter(|n| !n.is_empty()) else {
            continue;
        };
        let kind = tid
            .parse()
            .ok()
            .and_then(|t| threads.iter().find_map(|th| th.name_of(t)))
            .unwrap_or("(new thread)")
            .to_string();
        match counts.iter_mut().find(|c| c.0 == kind && c.1 == name) {
            Some(c) => c.2 += 1,
            None => counts.push((kind, name.to_string(), 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.2));
    (r, Some(counts))
}

#[cfg(test)]
mod tests {
    use super::Steal;

    #[test]
    fn steal_is_the_eighth_column_of_the_cpu_line() {
        let s = Steal::parse("cpu  2626935 3323 457013 2342771 43150 0 123322 129248 0 0")
            .expect("a cpu line");
        assert_eq!(s.steal, 129248);
        assert_eq!(
            s.total,
            2626935 + 3323 + 457013 + 2342771 + 43150 + 123322 + 129248
        );
        assert!(Steal::parse("cpu0 1 2 3 4 5 6 7 8").is_none());
        assert!(Steal::parse("cpu 1 2 3").is_none());
    }
}
