//! The `callgate` binary: command-line parsing and the edge where errors become messages.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use callgate::{
    admin::{
        self, Request, Status,
        visible::{LogWriter, visible as v},
    },
    config::{self, Config, Overrides},
    intercept::{Change, Target},
};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod approvals_cmd;
mod install_cmd;
mod netns_cmd;
mod records_cmd;

/// callgate puts policy in front of every call a workload makes, without changing the workload.
///
/// The daemon (`callgate run`) loads eBPF programs that redirect the outbound TCP connections of
/// enabled cgroups into its listener; `enable`/`disable` choose the cgroups; `status` shows what
/// is happening.
#[derive(Parser)]
#[command(name = "callgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon in the foreground (needs root).
    Run(RunArgs),
    /// Start intercepting the outbound connections of a cgroup (and every cgroup below it).
    Enable(TargetArgs),
    /// Stop intercepting a cgroup; its connections go direct again.
    Disable(TargetArgs),
    /// Work with a policy repository: test, lint, explain, reload.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Read the tamper-evident call log: list, show, replay, verify, export.
    #[command(subcommand)]
    Records(records_cmd::RecordsCommand),
    /// Calls held for human approval: list them, approve or deny, manage grants.
    #[command(subcommand)]
    Approvals(approvals_cmd::ApprovalsCommand),
    /// Install callgate as a hardened systemd service (binary, unit, config, starter policy,
    /// local CA); idempotent, never overwrites configuration.
    Install(install_cmd::InstallArgs),
    /// Stop and remove the service and detach every cgroup; --purge also removes config
    /// and state.
    Uninstall(install_cmd::UninstallArgs),
    /// Show listeners, enabled cgroups, counters and recent connections.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Daemon configuration file (YAML). Missing is fine for the default path.
    #[arg(long, env = "CALLGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Policy repository directory.
    #[arg(long, env = "CALLGATE_POLICIES")]
    policies: Option<PathBuf>,
    /// Directory for persistent state (enabled cgroups). Default /var/lib/callgate.
    #[arg(long, env = "CALLGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Port of the redirect listeners on 127.0.0.1 and [::1]. Default 15001.
    #[arg(long, env = "CALLGATE_LISTEN_PORT")]
    listen_port: Option<u16>,
    /// bpffs directory for pinned maps and links. Default /sys/fs/bpf/callgate.
    #[arg(long, env = "CALLGATE_BPFFS_DIR")]
    bpffs_dir: Option<PathBuf>,
    /// The control socket the CLI talks to. Default: the config file's `control_socket`, else
    /// /run/callgate/admin.sock.
    #[arg(long, env = "CALLGATE_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "CALLGATE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Args)]
struct SocketArg {
    /// The daemon's control socket. Default: `control_socket` in the daemon's configuration
    /// file ($CALLGATE_CONFIG, else /etc/callgate/callgate.yaml), else /run/callgate/admin.sock.
    #[arg(long, env = "CALLGATE_CONTROL_SOCKET")]
    control_socket: Option<PathBuf>,
}

impl SocketArg {
    /// The socket the daemon listens on, as `callgate run` would choose it.
    fn path(&self) -> PathBuf {
        if let Some(p) = &self.control_socket {
            return p.clone();
        }
        /// Only the one key: the rest of the file is the daemon's business.
        #[derive(serde::Deserialize)]
        struct SocketOnly {
            control_socket: Option<PathBuf>,
        }
        let file = std::env::var_os("CALLGATE_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| config::DEFAULT_CONFIG.into());
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| yaml_serde::from_str::<SocketOnly>(&text).ok())
            .and_then(|f| f.control_socket)
            .unwrap_or_else(|| config::DEFAULT_CONTROL_SOCKET.into())
    }
}

#[derive(Args)]
struct TargetArgs {
    /// A cgroup v2 directory: absolute, or relative to the cgroup v2 mount
    /// (e.g. `system.slice/app.service`, as /proc/PID/cgroup prints it).
    #[arg(
        required_unless_present_any = ["unit", "pid", "container"],
        conflicts_with_all = ["unit", "pid", "container"]
    )]
    cgroup: Option<String>,
    /// A systemd unit instead of a path, e.g. `nightly-batch.service`.
    #[arg(long, conflicts_with_all = ["pid", "container"])]
    unit: Option<String>,
    /// The cgroup process PID is in (a container's, a pod's: its network namespace is
    /// governed too).
    #[arg(long, conflicts_with = "container")]
    pid: Option<u32>,
    /// A Docker, Podman, containerd or CRI-O container: its id (12+ hex digits) or a name
    /// `podman`/`docker inspect` knows; its scope is found in the cgroup tree.
    #[arg(long)]
    container: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the repository's test cases (tests/*.yaml); exit 1 if any fails.
    Test {
        /// The policy repository.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Also write JUnit XML here, for CI systems.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Check schema and semantics: errors with file:line:col, shadowed rules, unreferenced
    /// functions, overlapping services, allow rules open to anyone. Exit 1 on errors.
    Lint {
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Show which rule decides a call, and why every rule before it did not match.
    Explain {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// JSON: {"service": .., "function": .., "args": {..}} (or "destination": "host:port").
        #[arg(long)]
        call: PathBuf,
        /// JSON: {"subject": .., "groups": [..], "authenticated": true, "workload": {..}}.
        #[arg(long)]
        caller: Option<PathBuf>,
    },
    /// Ask the running daemon to reload its policy now.
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// glibc malloc's arena locks showed up in profiles of the L7 path (allocations made on one
/// worker thread and freed on another); mimalloc's thread-local free lists avoid them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc advises them for its arenas, and the daemon's
    // resident memory then grows in 2 MiB steps however little of each is used (1,000 idle
    // connections: 62 MiB with them, 33-42 MiB without; small calls got no slower).
    // Set before the runtime's threads start allocating.
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // A CLI whose reader went away (`callgate status | head`) ends quietly, like other
        // Unix tools; the daemon keeps Rust's default of EPIPE errors instead.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callgate: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message before it
/// already includes (most of ours name their cause).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Command::Run(args) => {
            init_logging(args.log_format);
            let explicit = args.config.is_some();
            let path = args.config.unwrap_or_else(|| config::DEFAULT_CONFIG.into());
            let cfg = Config::load(
                &path,
                explicit,
                Overrides {
                    listen_port: args.listen_port,
                    state_dir: args.state_dir,
                    control_socket: args.control_socket,
                    bpffs_dir: args.bpffs_dir,
                    policies: args.policies,
                },
            )?;
            rt.block_on(callgate::daemon::run_with(cfg, || {
                // Loading the eBPF programs parses the kernel's BTF: tens of MiB, freed right
                // after, which mimalloc would otherwise keep for the life of the process.
                // SAFETY: mi_collect has no preconditions.
                unsafe { libmimalloc_sys::mi_collect(true) };
            }))?;
        }
        Command::Enable(t) => {
            let change: Change = rt.block_on(request(
                &t.socket,
                &Request::Enable {
                    target: target(&t)?,
                },
            ))?;
            let verb = if change.changed {
                "enabled"
            } else {
                "already enabled:"
            };
            println!(
                "{verb} {} (cgroup id {})",
                change.cgroup.path.display(),
                change.cgroup.id
            );
        }
        Command::Disable(t) => {
            let change: Change = rt.block_on(request(
                &t.socket,
                &Request::Disable {
                    target: target(&t)?,
                },
            ))?;
            println!(
                "disabled {} (cgroup id {})",
                change.cgroup.path.display(),
                change.cgroup.id
            );
        }
        Command::Policy(cmd) => return policy_command(cmd, &rt),
        Command::Records(cmd) => return records_cmd::run(cmd),
        Command::Approvals(cmd) => return approvals_cmd::run(cmd, &rt),
        Command::Install(a) => return install_cmd::install(a),
        Command::Uninstall(a) => return install_cmd::uninstall(a),
        Command::Status { json, socket } => {
            let status: Status = rt.block_on(request(&socket, &Request::Status))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
    }
    Ok(())
}

/// `callgate policy …`: test and lint exit 1 on failures they report, as CI expects.
fn policy_command(cmd: PolicyCommand, rt: &tokio::runtime::Runtime) -> Result<()> {
    use callgate::policy::{self, Severity};
    let load = |dir: &PathBuf| -> Result<(policy::Loaded, policy::Snapshot)> {
        policy::load_snapshot(dir).map_err(|findings| {
            for f in &findings {
                eprintln!("{f}");
            }
            anyhow::anyhow!("{} error(s) in {}", findings.len(), dir.display())
        })
    };
    match cmd {
        PolicyCommand::Test { dir, junit } => {
            let (loaded, snap) = load(&dir)?;
            let outcomes = policy::testing::run(&loaded, &snap);
            for o in &outcomes {
                match &o.failure {
                    None => println!("ok   {}: {}", o.file.display(), o.name),
                    Some(why) => println!("FAIL {}: {}: {why}", o.file.display(), o.name),
                }
            }
            let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            if let Some(path) = junit {
                let xml = policy::testing::junit(&outcomes).map_err(anyhow::Error::msg)?;
                std::fs::write(&path, xml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if failed > 0 {
                std::process::exit(1);
            }
        }
        PolicyCommand::Lint {
            dir,
            format,
            deny_warnings,
        } => {
            let findings = match policy::load_snapshot(&dir) {
                Ok((loaded, snap)) => policy::lint::lint(&loaded, &snap),
                Err(errors) => errors,
            };
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
                OutputFormat::Text => {
                    for f in &findings {
                        println!("{f}");
                    }
                    let errors = findings
                        .iter()
                        .filter(|f| f.severity == Severity::Error)
                        .count();
                    println!("{errors} error(s), {} warning(s)", findings.len() - errors);
                }
            }
            let fail = findings
                .iter()
                .any(|f| f.severity == Severity::Error || deny_warnings);
            if fail {
                std::process::exit(1);
            }
        }
        PolicyCommand::Explain { dir, call, caller } => {
            let (_, snap) = load(&dir)?;
            let read = |p: &PathBuf| -> Result<serde_json::Value> {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", p.display()))
            };
            let call_json = read(&call)?;
            let caller: policy::Caller = match &caller {
                Some(p) => serde_json::from_value(read(p)?)
                    .with_context(|| format!("{}: not a caller", p.display()))?,
                None => policy::Caller::default(),
            };
            let the_call: policy::Call = serde_json::from_value(call_json.clone())
                .with_context(|| format!("{}: needs \"function\"", call.display()))?;
            let service = match (
                call_json.get("service").and_then(|v| v.as_str()),
                call_json.get("destination").and_then(|v| v.as_str()),
            ) {
                (Some(name), _) => snap
                    .service(name)
                    .with_context(|| format!("no service named {name:?}"))?,
                (None, Some(dst)) => {
                    let (h, p) = policy::split_destination(dst).map_err(anyhow::Error::msg)?;
                    match snap.service_for(&h, p, None) {
                        Some(s) => s,
                        None => {
                            let d = snap.decide_unknown_destination();
                            println!(
                                "decision: {} (no service claims {dst}; unknown_destination)",
                                d.action
                            );
                            return Ok(());
                        }
                    }
                }
                (None, None) => bail!("{}: give \"service\" or \"destination\"", call.display()),
            };
            let (d, trace) = snap.explain(service, &the_call, &caller);
            println!("service {}, function {}", service.name, the_call.function);
            for t in &trace {
                println!(
                    "  {} {:<32} {}",
                    if t.matched { "→" } else { "·" },
                    t.rule,
                    t.why
                );
            }
            println!(
                "decision: {} by {} (mode {:?}, policy {}{})",
                d.action,
                d.rule.as_deref().unwrap_or("default"),
                d.mode,
                d.policy.commit.as_deref().unwrap_or(&d.policy.source),
                if d.policy.dirty { ", dirty" } else { "" }
            );
            if let Some(r) = &d.reason {
                println!("reason: {r}");
            }
            println!("obligations: {}", serde_json::to_string(&*d.obligations)?);
        }
        PolicyCommand::Reload { socket } => {
            let status: callgate::policy::store::ReloadStatus =
                rt.block_on(request(&socket, &Request::Reload))?;
            println!(
                "policy reloaded: {} services, {} rules, commit {}{}",
                status.services,
                status.rules,
                status.commit.as_deref().unwrap_or(&status.source),
                if status.dirty { " (dirty)" } else { "" }
            );
        }
    }
    Ok(())
}

fn target(t: &TargetArgs) -> Result<Target> {
    if let Some(pid) = t.pid {
        return Ok(Target::Cgroup(netns_cmd::cgroup_of_pid(pid)?));
    }
    if let Some(c) = &t.container {
        return Ok(Target::Cgroup(netns_cmd::cgroup_of_container(c)?));
    }
    Ok(match (&t.cgroup, &t.unit) {
        (_, Some(unit)) => Target::Unit(unit.clone()),
        (Some(path), None) => {
            // A relative path that exists from here means the user is standing in cgroupfs.
            let p = PathBuf::from(path);
            let resolved = if p.is_relative() && p.exists() {
                std::fs::canonicalize(&p)?
            } else {
                p
            };
            Target::Cgroup(resolved.display().to_string())
        }
        (None, None) => bail!("give a cgroup path or --unit NAME"),
    })
}

async fn request<T: serde::de::DeserializeOwned>(socket: &SocketArg, req: &Request) -> Result<T> {
    let data = admin::call(&socket.path(), req).await?;
    serde_json::from_value(data).context("unexpected response from the daemon (version mismatch?)")
}

fn print_status(s: &Status) {
    println!("callgate {} (pid {}, up {}s)", s.version, s.pid, s.uptime_s);
    println!("listeners:     {}", s.listeners.join(", "));
    println!("cgroup mount:  {}", s.cgroup_mount);
    match &s.policy {
        None => println!("policy:        (none; run with --policies DIR)"),
        Some(p) => {
            println!(
                "policy:        {} ({} services, {} rules, commit {}{})",
                v(&p.dir),
                p.services,
                p.rules,
                v(p.commit.as_deref().unwrap_or(&p.source)),
                if p.dirty { ", dirty" } else { "" }
            );
            if let Some(errors) = &p.last_error {
                println!("  last reload FAILED (the previous policy stays in force):");
                for e in errors {
                    println!("    {}", v(e));
                }
            }
        }
    }
    match &s.records {
        None => println!("records:       off"),
        Some(r) => {
            println!(
                "records:       {} ({:?}; {} written, durable to seq {}, backlog {} ({} KiB), {} refused{})",
                v(&r.dir),
                r.durability,
                r.written,
                r.durable_seq,
                r.backlog,
                r.backlog_bytes / 1024,
                r.refused,
                if r.truncated_bytes > 0 {
                    format!(", {} torn bytes cut at start", r.truncated_bytes)
                } else {
                    String::new()
                }
            );
            if let Some(why) = &r.failing {
                println!("  FAILING, new calls are refused: {}", v(why));
            }
        }
    }
    for p in &s.identity {
        let keys = match (p.usable, p.keys_age_s) {
            (true, Some(age)) => format!("{} keys, fetched {age}s ago", p.keys),
            (false, Some(age)) => format!("KEYS EXPIRED ({age}s old): its tokens are refused"),
            (_, None) => "NO KEYS: its tokens are refused".into(),
        };
        println!("identity:      {} {} ({keys})", v(&p.name), v(&p.issuer));
        if let Some(e) = &p.last_error {
            println!("  last fetch failed: {}", v(e));
        }
    }
    if let Some(a) = &s.approvals {
        println!(
            "approvals:     {} pending, {} grants in force{}",
            a.pending,
            a.grants,
            if a.pending > 0 {
                " (see `callgate approvals list`)"
            } else {
                ""
            }
        );
        if let Some(w) = &a.webhook {
            println!(
                "  webhook {}: {} delivered, {} retries, {} lost",
                v(&w.url),
                w.delivered,
                w.retries,
                w.lost
            );
        }
    }
    if s.enabled.is_empty() {
        println!("enabled:       (none; try `callgate enable <cgroup>`)");
    } else {
        println!("enabled:");
        for e in &s.enabled {
            let unit = e
                .unit
                .as_deref()
                .map(|u| format!(" [{}]", v(u)))
                .unwrap_or_default();
            println!("  {}{unit} (id {})", v(&e.path.display().to_string()), e.id);
        }
    }
    netns_cmd::print_namespaces(&s.namespaces);
    let c = &s.counters;
    println!(
        "connections:   {} accepted, {} forwarded, {} active, {} upstream errors, {} without entry, {} loops refused",
        c.accepted, c.forwarded, c.active, c.upstream_errors, c.refused_no_entry, c.refused_loop
    );
    println!("bytes:         {} up, {} down", c.bytes_up, c.bytes_down);
    let kernel: Vec<String> = s.kernel.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("kernel:        {}", kernel.join(" "));
    if !s.recent.is_empty() {
        println!("recent connections:");
        for r in s.recent.iter().rev().take(20) {
            println!(
                "  #{} pid {} ({}) uid {} {} -> {}  {}B up {}B down {}ms  {}",
                r.id,
                r.workload.pid,
                v(&r.workload.comm),
                r.workload.uid,
                v(r.workload.cgroup.as_deref().unwrap_or("?")),
                r.original_dst,
                r.bytes_up,
                r.bytes_down,
                r.duration_ms,
                v(&r.outcome)
            );
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CALLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Log fields carry workload-chosen names (comm, cgroup): the writer escapes what would
    // not show as itself, and the log has no colours of its own for it to break.
    let json = matches!(format, LogFormat::Json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(move || LogWriter::new(std::io::stderr(), json));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
