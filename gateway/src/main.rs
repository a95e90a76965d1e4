//! The `callgate` binary: command-line parsing and the edge where errors become messages.
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod alloc;
mod cli;

/// glibc malloc's arena locks showed up in profiles of the L7 path (allocations made on one
/// worker thread and freed on another); mimalloc's thread-local free lists avoid them.
#[global_allocator]
static ALLOC: alloc::Allocator = alloc::Allocator;

/// `callgate --version`: the package version, and the cargo profile that built the binary.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CALLGATE_BUILD_PROFILE"),
    " build)"
);

/// callgate puts policy in front of every call a workload makes, without changing the workload.
///
/// The daemon (`callgate run`) loads eBPF programs that redirect the outbound TCP connections of
/// enabled cgroups into its listener; `enable`/`disable` choose the cgroups; `status` shows what
/// is happening.
#[derive(Parser)]
#[command(name = "callgate", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon in the foreground (needs root).
    Run(cli::run::RunArgs),
    /// Start intercepting the outbound connections of a cgroup (and every cgroup below it).
    Enable(cli::enable::TargetArgs),
    /// Stop intercepting a cgroup; its connections go direct again.
    Disable(cli::enable::TargetArgs),
    /// Work with a policy repository: test, lint, explain, reload.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Read the tamper-evident call log: list, show, replay, verify, export.
    #[command(subcommand)]
    Records(cli::records::RecordsCommand),
    /// Calls held for human approval: list them, approve or deny, manage grants.
    #[command(subcommand)]
    Approvals(cli::approvals::ApprovalsCommand),
    /// MCP tools: write a service's pins for review, accept a changed tool, audit definitions.
    #[command(subcommand)]
    Mcp(cli::mcp::McpCommand),
    /// Install callgate as a hardened systemd service (binary, unit, config, starter policy,
    /// local CA); idempotent, never overwrites configuration.
    Install(cli::install::InstallArgs),
    /// Stop and remove the service and detach every cgroup; --purge also removes config
    /// and state.
    Uninstall(cli::install::UninstallArgs),
    /// Make workloads' runtimes trust the gateway's CA (TLS interception).
    #[command(subcommand)]
    Trust(cli::trust::TrustCommand),
    /// The product in a minute: a gateway, a payments API and an MCP tool server on loopback,
    /// and an unmodified agent whose five calls are shown as they are decided (needs root).
    Demo(cli::demo::DemoArgs),
    /// Show listeners, enabled cgroups, counters and recent connections.
    Status(cli::status::StatusArgs),
    /// Run a witness for callgate logs (on another host): cosigns each log's signed
    /// checkpoints after checking them consistent with the last it cosigned (C2SP
    /// tlog-witness), and refuses a rolled-back, rewritten or forked log.
    ///
    /// A party the gateway's host does not control then holds each log's latest good
    /// checkpoint: root on that host can no longer roll the records back, rewrite their tail
    /// or fork them without the witness refusing the next checkpoint.
    ///
    /// Gateways send their checkpoints with `records.witnesses: [http://HOST:PORT]`; give the
    /// witness each log's key with `--log-key` (what `callgate records key` prints on the
    /// gateway host). Protocol: C2SP tlog-witness, `POST /add-checkpoint` with `old <size>`,
    /// the consistency proof, a blank line and the signed checkpoint. Answers: 200 with a
    /// tlog-cosignature (Ed25519) line; 409 with the size it holds (`text/x.tlog.size`) when
    /// the old size is not that, or for another tree of the size it holds (a fork); 422 when
    /// the consistency proof does not verify; 403 for a bad signature; 404 for a log it has no
    /// key for. Per log it keeps the latest cosigned checkpoint in `<state>/logs/` (written
    /// atomically before it answers) and the last refused request in `<state>/refused/`.
    Witness(cli::witness::WitnessArgs),
}

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
        Command::Run(args) => cli::run::run(args, &rt)?,
        Command::Enable(t) => cli::enable::enable(&t, &rt)?,
        Command::Disable(t) => cli::enable::disable(&t, &rt)?,
        Command::Policy(cmd) => return cli::policy::run(cmd, &rt),
        Command::Records(cmd) => return cli::records::run(cmd),
        Command::Approvals(cmd) => return cli::approvals::run(cmd, &rt),
        Command::Mcp(cmd) => return cli::mcp::run(cmd, &rt),
        Command::Install(a) => return cli::install::install(a),
        Command::Uninstall(a) => return cli::install::uninstall(a),
        Command::Trust(cmd) => return cli::trust::run(cmd),
        Command::Demo(a) => return rt.block_on(cli::demo::run(a)),
        Command::Status(a) => cli::status::run(&a, &rt)?,
        Command::Witness(a) => return cli::witness::run(a, &rt),
    }
    Ok(())
}
