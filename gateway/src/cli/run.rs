//! `callgate run`: the daemon in the foreground, with its log on stderr.
use std::path::PathBuf;

use anyhow::Result;
use callgate::{
    config::{self, Config, Overrides},
    util::visible::LogWriter,
};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct RunArgs {
    /// Daemon configuration file (YAML). Missing is fine for the default path.
    #[arg(long, env = "CALLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Policy repository directory.
    #[arg(long, env = "CALLGATE_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Directory for persistent state (enabled cgroups). Default /var/lib/callgate.
    #[arg(long, env = "CALLGATE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Port of the redirect listeners on 127.0.0.1 and [::1]. Default 15001.
    #[arg(long, env = "CALLGATE_LISTEN_PORT")]
    pub listen_port: Option<u16>,
    /// bpffs directory for pinned maps and links. Default /sys/fs/bpf/callgate.
    #[arg(long, env = "CALLGATE_BPFFS_DIR")]
    pub bpffs_dir: Option<PathBuf>,
    /// The control socket the CLI talks to. Default: the config file's `control_socket`, else
    /// /run/callgate/admin.sock.
    #[arg(long, env = "CALLGATE_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "CALLGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub fn run(args: RunArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
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
    Ok(())
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
