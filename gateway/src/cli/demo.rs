//! `callgate demo`: the product in a minute. Starts, next to a gateway of its own, a small
//! world made of real parts (a REST payments API and an MCP tool server on loopback, Python
//! from the pinned venv), enables a demo cgroup and runs an unmodified agent in it that makes
//! five calls: an allowed read, a denied refund, an answer with a card number and an e-mail
//! that arrive masked, a large refund held for approval, a call over its rate limit. Each call
//! is shown as the gateway decides it, read back from its records (and its approvals, over the
//! control socket). It then keeps the gateway running until Ctrl-C, which removes the demo
//! cgroup and stops every process it started.
//!
//! This is the CLI edge: it prints. The gateway itself runs as a child `callgate run`, its
//! log in the demo's state directory.
use std::{
    collections::HashSet,
    io::Write,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use callgate::{
    admin::{self, Request},
    approve,
    record::query::{self, Filter, Stored},
    util::visible::visible as v,
};
use clap::Args;
use serde_json::Value;

/// Where the demo's two services listen: addresses of their own on loopback, which the demo
/// policy names (any port), so that the ports can be whatever is free.
const PAYMENTS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 41);
const TOOLS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 42);
/// Marks a state directory as the demo's own, which each start may clear.
const MARKER: &str = ".callgate-demo";

/// The demo world's files, built in so that an installed binary has them.
const AGENT_PY: &str = include_str!("../../demo/agent.py");
const PAYMENTS_PY: &str = include_str!("../../demo/payments_api.py");
const TOOLS_PY: &str = include_str!("../../../tests/parties/mcp_server.py");
/// The demo's own login provider for the approvals page (one approver, a password per run).
const LOGIN_PY: &str = include_str!("../../demo/login.py");
/// The one person the demo's login provider knows, in the demo policy's approver group.
const APPROVER: &str = "approver";
/// The demo gateway's client at that provider.
const LOGIN_CLIENT: &str = "callgate-demo";
const POLICY: [(&str, &str); 5] = [
    (
        "callgate.yaml",
        include_str!("../../../policies/demo/callgate.yaml"),
    ),
    (
        "services/payments.yaml",
        include_str!("../../../policies/demo/services/payments.yaml"),
    ),
    (
        "services/tools.yaml",
        include_str!("../../../policies/demo/services/tools.yaml"),
    ),
    (
        "tests/payments.yaml",
        include_str!("../../../policies/demo/tests/payments.yaml"),
    ),
    (
        "tests/tools.yaml",
        include_str!("../../../policies/demo/tests/tools.yaml"),
    ),
];

#[derive(Args)]
pub struct DemoArgs {
    /// The demo's policy repository. Default: a copy of the built-in one (the repository's
    /// `policies/demo/`) in the state directory.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// The demo's own state: gateway state, records, logs, the servers' scripts. Cleared at
    /// each start (only if it is the demo's, or empty).
    #[arg(long, default_value = "/var/lib/callgate-demo")]
    state_dir: PathBuf,
    /// Python with the MCP SDK (`cargo xtask setup` makes one in target/testenv). Default:
    /// target/testenv/bin/python under the current directory if there, else python3.
    #[arg(long, env = "CALLGATE_DEMO_PYTHON")]
    python: Option<PathBuf>,
    /// The demo cgroup, relative to the cgroup v2 mount; the demo policy's rules name
    /// `callgate-demo`, so it must be that or below it.
    #[arg(long, default_value = "callgate-demo/agent")]
    cgroup: String,
    /// Port of the demo gateway's redirect listeners.
    #[arg(long, default_value_t = 15001)]
    listen_port: u16,
    /// Port of its admin HTTP listener on 127.0.0.1 (approvals page, /metrics).
    #[arg(long, default_value_t = 15080)]
    admin_port: u16,
    /// bpffs directory of the demo gateway's pins, removed at the end.
    #[arg(long, default_value = "/sys/fs/bpf/callgate-demo")]
    bpffs_dir: PathBuf,
    /// Approve the held call by itself after this many seconds (for an unattended run).
    #[arg(long, value_name = "SECONDS")]
    auto_approve_after: Option<u64>,
}

/// What the demo started, stopped and removed on drop whatever happened in between.
#[derive(Default)]
struct World {
    servers: Vec<Child>,
    gateway: Option<Child>,
    agent: Option<Child>,
    /// The demo cgroup and the directories made for it, innermost first.
    cgroups: Vec<PathBuf>,
    bpffs: Option<PathBuf>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroups.first() {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        }
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        if let Some(g) = self.gateway.take() {
            stop(g, Duration::from_secs(10));
        }
        // Unpinning the links detaches the programs from the cgroup.
        if let Some(b) = &self.bpffs {
            let _ = std::fs::remove_dir_all(b);
        }
        for cg in &self.cgroups {
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(cg).is_err() && cg.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for s in self.servers.drain(..) {
            stop(s, Duration::from_secs(5));
        }
    }
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
fn stop(mut child: Child, grace: Duration) {
    // SAFETY: kill(2) on our own child, whose pid stays reserved until we wait for it.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn cgroup_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup v2 mount (the demo needs cgroup v2)")
}

/// A free port on `ip` (the servers bind it right after; nothing else uses these addresses).
fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// Clears the state directory if it is the demo's (or new, or empty), then makes it anew,
/// 0700 and this user's. Its scripts run as root: a directory someone else could write (made
/// by them first under a shared parent, or swapped in between the removal and the making)
/// would let them choose what root runs, so one that is not freshly made here is refused.
fn fresh_state(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Ok(meta) = std::fs::symlink_metadata(dir) {
        let empty = meta.is_dir() && std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} is not empty and not a demo state directory; give another --state-dir",
                dir.display()
            );
        }
        if meta.is_dir() {
            std::fs::remove_dir_all(dir)
        } else {
            // A symlink goes, not what it points at.
            std::fs::remove_file(dir)
        }
        .with_context(|| format!("clearing {}", dir.display()))?;
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "making {} (did something else make it meanwhile?)",
                dir.display()
            )
        })?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    if !meta.is_dir() || meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o077 != 0 {
        bail!("{} is not a private directory of ours", dir.display());
    }
    std::fs::create_dir(dir.join("demo"))?;
    std::fs::write(
        dir.join(MARKER),
        "state of `callgate demo`, cleared at its next start\n",
    )?;
    Ok(())
}

/// Starts the demo's login provider on a free loopback port, with a password and a client
/// secret made for this run: its issuer URL and the password.
fn start_login(
    python: &Path,
    scripts: &Path,
    state: &Path,
    web: &str,
    world: &mut World,
) -> Result<(String, String)> {
    let ip = Ipv4Addr::LOCALHOST;
    let port = free_port(ip)?;
    let password = new_password();
    let secret = new_password() + &new_password();
    std::fs::write(state.join("login-client-secret"), &secret)?;
    let cfg = serde_json::json!({
        "password": password,
        "client_id": LOGIN_CLIENT,
        "client_secret": secret,
        "redirect_uri": format!("{web}/callback"),
    });
    let cfg_file = state.join("login.json");
    std::fs::write(&cfg_file, cfg.to_string())?;
    let log = state.join("login.log");
    let mut child = spawn(
        Command::new(python)
            .arg(scripts.join("login.py"))
            .arg(ip.to_string())
            .arg(port.to_string())
            .arg(&cfg_file),
        &log,
    )?;
    let up = wait_listening(&mut child, ip, port, &log);
    world.servers.push(child);
    up?;
    Ok((format!("http://{ip}:{port}"), password))
}

/// A password to type: 16 letters and digits (about 80 bits), in groups of four.
fn new_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    let chars: Vec<char> = b
        .iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

fn python(args: &DemoArgs) -> PathBuf {
    if let Some(p) = &args.python {
        return p.clone();
    }
    let venv = PathBuf::from("target/testenv/bin/python");
    if venv.exists() {
        // Absolute, but not resolved: a venv's python is a symlink that must stay one.
        return std::env::current_dir().map_or(venv.clone(), |d| d.join(&venv));
    }
    PathBuf::from("python3")
}

/// Starts a process in a process group of its own (a Ctrl-C at the terminal is the demo's
/// to handle, not theirs), its output to `log`.
fn spawn(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// Waits (at most 30 s) until `ip:port` accepts, failing early if `child` exits.
fn wait_listening(child: &mut Child, ip: Ipv4Addr, port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}):\n{}",
                log.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if TcpStream::connect((ip, port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nothing listens on {ip}:{port} after 30 s (see {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn run(args: DemoArgs) -> Result<()> {
    // From the start: a Ctrl-C while the world is being set up is taken when the live loop
    // begins, and cleans up like any other (by default it would end this process and leave
    // the children, in process groups of their own, running).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo loads eBPF programs and makes a cgroup: run it as root");
    }
    let mount = cgroup_mount()?;
    let first = args.cgroup.split('/').next().unwrap_or_default();
    if first != "callgate-demo" || args.cgroup.contains("..") {
        bail!("--cgroup must be callgate-demo or below it (the demo policy names that cgroup)");
    }
    let exe = std::env::current_exe().context("finding the callgate binary")?;
    let python = python(&args);
    let check = Command::new(&python)
        .args(["-c", "import mcp"])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !check.status.success() {
        bail!(
            "{} has no MCP SDK (`pip install mcp`, or `cargo xtask setup` for target/testenv); \
             pass --python",
            python.display()
        );
    }
    let state = args.state_dir.clone();
    if admin::call(&state.join("admin.sock"), &Request::Status)
        .await
        .is_ok()
    {
        bail!(
            "a demo is already running with state in {} (stop it, or give another --state-dir)",
            state.display()
        );
    }
    fresh_state(&state)?;
    let state = std::fs::canonicalize(&state)?;
    let scripts = state.join("demo");
    for (name, text) in [
        ("agent.py", AGENT_PY),
        ("payments_api.py", PAYMENTS_PY),
        ("mcp_server.py", TOOLS_PY),
        ("login.py", LOGIN_PY),
    ] {
        std::fs::write(scripts.join(name), text)?;
    }
    let policies = match &args.policies {
        Some(p) => std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?,
        None => {
            let p = state.join("policies");
            for (name, text) in POLICY {
                let f = p.join(name);
                std::fs::create_dir_all(f.parent().unwrap_or(&p))?;
                std::fs::write(f, text)?;
            }
            p
        }
    };
    let mut world = World::default();

    // The upstreams.
    let pay_port = free_port(PAYMENTS_IP)?;
    let tools_port = free_port(TOOLS_IP)?;
    for (script, ip, port, argv) in [
        (
            "payments_api.py",
            PAYMENTS_IP,
            pay_port,
            vec![PAYMENTS_IP.to_string(), pay_port.to_string()],
        ),
        (
            "mcp_server.py",
            TOOLS_IP,
            tools_port,
            vec![tools_port.to_string(), TOOLS_IP.to_string()],
        ),
    ] {
        let log = state.join(script.replace(".py", ".log"));
        let mut child = spawn(
            Command::new(&python).arg(scripts.join(script)).args(argv),
            &log,
        )?;
        let up = wait_listening(&mut child, ip, port, &log);
        world.servers.push(child);
        up?;
    }

    // The approvals page's login: a provider of the demo's own, with a password per run.
    let web = format!("http://127.0.0.1:{}", args.admin_port);
    let password = match start_login(&python, &scripts, &state, &web, &mut world) {
        Ok((issuer, password)) => Some((issuer, password)),
        Err(e) => {
            println!("(the approvals page will have no login: {e:#})");
            None
        }
    };

    // The gateway.
    let socket = state.join("admin.sock");
    let config = state.join("callgate-run.yaml");
    let mut yaml = format!(
        "# Written by `callgate demo`.\nadmin_http:\n  listen: 127.0.0.1:{}\n",
        args.admin_port
    );
    if let Some((issuer, _)) = &password {
        yaml.push_str(&format!(
            "  login:\n    issuer: {issuer}\n    client_id: {LOGIN_CLIENT}\n    \
             client_secret_file: {}\n",
            state.join("login-client-secret").display()
        ));
    }
    std::fs::write(&config, yaml)?;
    let gw_log = state.join("gateway.log");
    world.bpffs = Some(args.bpffs_dir.clone());
    let mut gw = spawn(
        Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--policies")
            .arg(&policies)
            .arg("--state-dir")
            .arg(state.join("gateway"))
            .arg("--listen-port")
            .arg(args.listen_port.to_string())
            .arg("--bpffs-dir")
            .arg(&args.bpffs_dir)
            .arg("--control-socket")
            .arg(&socket)
            .env("CALLGATE_LOG", "info"),
        &gw_log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Some(status) = gw.try_wait()? {
            break Err(anyhow::anyhow!(
                "the gateway exited ({status}); is another one on port {} (--listen-port) or \
                 {} (--admin-port)? Its log:\n{}",
                args.listen_port,
                args.admin_port,
                std::fs::read_to_string(&gw_log).unwrap_or_default()
            ));
        }
        if admin::call(&socket, &Request::Status).await.is_ok() {
            break Ok(());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the gateway did not answer on {} within 30 s (log: {})",
                socket.display(),
                gw_log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    world.gateway = Some(gw);
    ready?;

    // The demo cgroup, enabled.
    let cgroup = mount.join(&args.cgroup);
    let mut dir = mount.clone();
    for part in args.cgroup.split('/').filter(|p| !p.is_empty()) {
        dir = dir.join(part);
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            // Innermost first, for the removal.
            world.cgroups.insert(0, dir.clone());
        }
    }
    admin::call(
        &socket,
        &Request::Enable {
            target: callgate::intercept::Target::Cgroup(cgroup.display().to_string()),
        },
    )
    .await
    .context("enabling the demo cgroup")?;

    let records = state.join("gateway/records");
    let login_note = match &password {
        Some((_, p)) => format!("log in as {APPROVER}, password {p} (this run only)"),
        None => "needs admin_http.login".into(),
    };
    let cli = |rest: &str| format!("{} {rest}", exe.display());
    println!("callgate demo: a gateway governing one agent, with real upstreams on loopback");
    println!("  policy    {}", policies.display());
    println!(
        "  upstreams payments (REST) {PAYMENTS_IP}:{pay_port}, tools (MCP) {TOOLS_IP}:{tools_port}"
    );
    println!(
        "  agent     {} in cgroup {} (enabled)",
        scripts.join("agent.py").display(),
        cgroup.display()
    );
    println!("  approvals {web}/approvals ({login_note})");
    println!("  logs      {}", state.display());
    println!();
    let mut table = Table::default();
    table.header();

    // The agent, unmodified: it only knows where its services are. The shell moves itself
    // into the cgroup (its path an argument, not part of the script), then becomes the agent.
    let agent_log = state.join("agent.log");
    world.agent = Some(spawn(
        Command::new("sh")
            .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
            .arg(&cgroup)
            .arg(&python)
            .arg(scripts.join("agent.py"))
            .env(
                "DEMO_PAYMENTS_URL",
                format!("http://{PAYMENTS_IP}:{pay_port}"),
            )
            .env(
                "DEMO_TOOLS_URL",
                format!("http://{TOOLS_IP}:{tools_port}/mcp"),
            ),
        &agent_log,
    )?);

    let mut next_seq = None;
    let mut held: HashSet<String> = HashSet::new();
    let mut finished_at: Option<Instant> = None;
    let mut summary_shown = false;
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        // New records, in log order.
        let filter = Filter {
            from_seq: next_seq,
            ..Filter::default()
        };
        // A segment being started (its header not written yet) reads as an error for a
        // moment: the next pass reads it again, from the record after the last one shown.
        if records.is_dir() {
            let _ = query::scan(&records, &filter, &mut |s| {
                next_seq = Some(s.seq + 1);
                table.record(&s);
                true
            });
        }
        // Calls waiting for a verdict.
        if let Ok(list) = admin::call(&socket, &Request::Approvals { all: false }).await {
            let list: Vec<approve::Request> = serde_json::from_value(list).unwrap_or_default();
            for r in list {
                if held.insert(r.id.clone()) {
                    table.held(&r);
                    println!(
                        "          ↳ waiting for you. In another root shell:\n            {}\n          \
                         or the approvals page: {web}/approvals/{} ({login_note})",
                        cli(&format!(
                            "approvals approve {} --control-socket {}",
                            r.id,
                            socket.display()
                        )),
                        r.id
                    );
                }
                let age = callgate::util::time::now_ms().saturating_sub(r.requested_at_ms) / 1000;
                if args.auto_approve_after.is_some_and(|after| age >= after) {
                    let _ = admin::call(
                        &socket,
                        &Request::Answer {
                            id: r.id.clone(),
                            approve: true,
                            approver: "callgate-demo".into(),
                            grant: None,
                            comment: Some("--auto-approve-after".into()),
                        },
                    )
                    .await;
                }
            }
        }
        let agent_done = match world.agent.as_mut() {
            Some(a) => match a.try_wait()? {
                Some(status) if !status.success() && finished_at.is_none() => {
                    println!("the agent failed ({status}); the end of its output:");
                    let text = std::fs::read_to_string(&agent_log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    for l in &lines[lines.len().saturating_sub(15)..] {
                        println!("  {}", v(l));
                    }
                    true
                }
                Some(_) => true,
                None => false,
            },
            None => true,
        };
        if agent_done && finished_at.is_none() {
            finished_at = Some(Instant::now());
        }
        // A moment for the last records to be written, then the way on.
        if !summary_shown && finished_at.is_some_and(|t| t.elapsed() > Duration::from_millis(1500))
        {
            summary_shown = true;
            println!();
            println!("The agent got (its own output, {}):", agent_log.display());
            for line in std::fs::read_to_string(&agent_log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("agent: "))
            {
                println!("  {}", v(line));
            }
            if table.housekeeping > 0 {
                println!(
                    "({} protocol housekeeping calls (MCP initialize, notifications, tools/list) \
                     passed too and are recorded; not shown)",
                    table.housekeeping
                );
            }
            println!();
            println!("Look further, in another root shell:");
            println!(
                "  {}",
                cli(&format!("records list --dir {}", records.display()))
            );
            println!(
                "  {}",
                cli(&format!("records verify --dir {}", records.display()))
            );
            println!(
                "  {}",
                cli(&format!("status --control-socket {}", socket.display()))
            );
            println!("  curl -s {web}/metrics | grep '^callgate_calls'");
            println!(
                "The gateway keeps running (log {}); Ctrl-C stops it, removes the demo cgroup \
                 and stops the servers.",
                gw_log.display()
            );
        }
        let _ = std::io::stdout().flush();
        if let Some(g) = world.gateway.as_mut() {
            if let Some(status) = g.try_wait()? {
                bail!(
                    "the gateway exited ({status}); its log: {}",
                    gw_log.display()
                );
            }
        }
    }
    println!();
    println!("stopping: disabling the demo cgroup, stopping the gateway and the servers");
    let _ = admin::call(
        &socket,
        &Request::Disable {
            target: callgate::intercept::Target::Cgroup(cgroup.display().to_string()),
        },
    )
    .await;
    drop(world);
    println!("stopped; the records stay in {}", records.display());
    Ok(())
}

/// The live table: one row per call as it is decided.
#[derive(Default)]
struct Table {
    /// MCP protocol housekeeping (initialize, notifications) seen and not shown.
    housekeeping: u64,
}

const ROW: usize = 108;

impl Table {
    fn header(&self) {
        println!(
            "{:<8}  {:<22} {:<24} {:<9} {:<30} {:>8}",
            "TIME", "CALLER", "CALL", "DECISION", "RULE", "MS"
        );
        println!("{}", "─".repeat(ROW));
    }

    fn row(&self, time_ms: u64, caller: &str, call: &str, decision: &str, rule: &str, ms: &str) {
        let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(time_ms))
            .to_string();
        // HH:MM:SS of the UTC time.
        let clock = t.get(11..19).unwrap_or(&t);
        println!(
            "{clock:<8}  {:<22} {:<24} {:<9} {:<30} {:>8}",
            v(caller),
            v(call),
            decision,
            v(rule),
            ms
        );
    }

    fn held(&self, r: &approve::Request) {
        let caller = caller_label(
            r.caller.cgroup.as_deref(),
            r.caller.comm.as_deref(),
            r.caller.subject.as_deref(),
        );
        self.row(
            r.requested_at_ms,
            &caller,
            &format!("{}.{}", r.service, r.function),
            "HELD",
            &r.rule,
            "…",
        );
    }

    fn record(&mut self, s: &Stored) {
        let r = &s.record;
        let function = r.function.as_deref().unwrap_or("-");
        // Under a default of deny, what passes without a rule is protocol housekeeping
        // (MCP initialize, notifications, tools/list, the session's GET and DELETE).
        if r.decision.action == "allow" && r.decision.rule.is_none() {
            self.housekeeping += 1;
            return;
        }
        let w: Value = r
            .workload
            .as_ref()
            .and_then(|w| serde_json::from_str(w.get()).ok())
            .unwrap_or_default();
        let caller = caller_label(
            w["cgroup"].as_str(),
            w["comm"].as_str(),
            r.caller.as_ref().and_then(|c| c["subject"].as_str()),
        );
        let approval = r.approval.as_ref();
        let decision = match &*r.decision.action {
            _ if r.decision.limit.is_some() => "limited".to_string(),
            "approve" => approval
                .and_then(|a| a["state"].as_str())
                .unwrap_or("approve")
                .to_string(),
            other => other.to_string(),
        };
        self.row(
            r.time_ms,
            &caller,
            &format!(
                "{}.{function}",
                r.service.as_deref().unwrap_or(&r.destination)
            ),
            &decision,
            r.decision.rule.as_deref().unwrap_or("default"),
            &format!("{:.1}", r.latency_ms),
        );
        let note = match (decision.as_str(), &r.decision.reason, &r.decision.limit) {
            ("limited", _, Some(l)) => Some(format!(
                "over its rate limit: {}",
                l["limit"].as_str().unwrap_or("?")
            )),
            (_, Some(reason), _) if r.decision.action == "deny" => Some(reason.clone()),
            ("approved", ..) => approval
                .and_then(|a| a["verdict"]["by"].as_str())
                .map(|by| format!("approved by {by}, then forwarded")),
            _ => None,
        };
        if let Some(n) = note {
            println!("          ↳ {}", v(&n));
        }
        if decision == "allow" || decision == "approved" {
            if let Some(resp) = &r.response {
                let text = answer_excerpt(resp.get());
                if text.contains("****") || text.contains("[MASKED") {
                    println!("          ↳ answer as the agent got it: {}", v(&text));
                }
            }
        }
    }
}

/// The caller as a person reads it: the cgroup's last part and the command.
fn caller_label(cgroup: Option<&str>, comm: Option<&str>, subject: Option<&str>) -> String {
    if let Some(s) = subject {
        return s.to_string();
    }
    let leaf = cgroup
        .and_then(|c| c.trim_end_matches('/').rsplit('/').next())
        .unwrap_or("?");
    match comm {
        Some(c) => format!("{leaf} ({c})"),
        None => leaf.to_string(),
    }
}

/// The text of an answer, short: an MCP result's text content when there is one (the answer
/// may be an event stream, kept in the record as a string, whose `data:` line holds it).
fn answer_excerpt(json: &str) -> String {
    let parsed: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let message = match &parsed {
        Value::String(events) => events
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null),
        other => other.clone(),
    };
    let text = message["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| json.to_string());
    // Around the first masked value, where the point is.
    let at = ["****", "[MASKED"]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(0);
    let skip = text[..at].chars().count().saturating_sub(40);
    let mut short: String = if skip > 0 {
        "…".into()
    } else {
        String::new()
    };
    short.extend(text.chars().skip(skip).take(90));
    if text.chars().count() > skip + 90 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::{MARKER, answer_excerpt, caller_label, fresh_state};

    #[test]
    fn the_state_directory_is_made_private_and_only_a_demos_is_cleared() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("callgate-demo-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        // Someone else's files: refused, left alone.
        let other = base.join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("keep"), "x").unwrap();
        assert!(fresh_state(&other).is_err());
        assert!(other.join("keep").exists());
        // A demo's, world-writable as someone left it: made anew, 0700.
        let demo = base.join("demo");
        std::fs::create_dir(&demo).unwrap();
        std::fs::write(demo.join(MARKER), "").unwrap();
        std::fs::write(demo.join("agent.py"), "planted").unwrap();
        std::fs::set_permissions(&demo, std::fs::Permissions::from_mode(0o777)).unwrap();
        fresh_state(&demo).unwrap();
        assert!(!demo.join("agent.py").exists());
        let mode = std::fs::metadata(&demo).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A symlink to a demo-looking directory elsewhere: the link goes, the target stays.
        let target = base.join("target");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join(MARKER), "").unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        fresh_state(&link).unwrap();
        assert!(target.join(MARKER).exists());
        assert!(std::fs::symlink_metadata(&link).unwrap().is_dir());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn callers_and_answers_read_short() {
        assert_eq!(
            caller_label(Some("/callgate-demo/agent"), Some("python3"), None),
            "agent (python3)"
        );
        assert_eq!(caller_label(None, None, Some("alice")), "alice");
        let mcp = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"card [card_number]"}]}}"#;
        assert_eq!(answer_excerpt(mcp), "card [card_number]");
        let sse = serde_json::to_string(&format!("event: message\r\ndata: {mcp}\r\n\r\n")).unwrap();
        assert_eq!(answer_excerpt(&sse), "card [card_number]");
        assert!(answer_excerpt(&format!("\"{}\"", "x".repeat(200))).ends_with('…'));
        let rest = format!(
            r#"{{"pad": "{}", "card": "************1111"}}"#,
            "é".repeat(100)
        );
        let short = answer_excerpt(&rest);
        assert!(
            short.starts_with('…') && short.contains("************1111"),
            "{short}"
        );
    }
}
