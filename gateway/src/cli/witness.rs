//! `callgate witness`: a C2SP tlog-witness for callgate logs, to run on a host other than the
//! gateways' (see [`callgate::record::witness_server`]).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, bail};
use callgate::record::{note, witness::Cosigner, witness_server::Witness};
use clap::{Args, Subcommand};

/// `callgate witness` (its help is the `Witness` command's, in `main.rs`).
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WitnessArgs {
    #[command(subcommand)]
    command: Option<WitnessCommand>,
    /// Where to listen (HTTP).
    #[arg(long, default_value = "127.0.0.1:7380")]
    listen: SocketAddr,
    #[command(flatten)]
    state: StateArg,
    /// A log's verifier key (`<origin>+<key id>+<key>`, as `callgate records key` prints it),
    /// or a file of them, one a line; repeat for more logs.
    #[arg(long = "log-key", value_name = "FILE")]
    log_keys: Vec<String>,
    /// The witness's name in its cosignatures, used when its key is created
    /// (default: `<hostname>/callgate/witness`).
    #[arg(long)]
    name: Option<String>,
    /// Print the witness's verifier key (creating the key if needed) and exit.
    #[arg(long)]
    print_key: bool,
}

#[derive(Args)]
struct StateArg {
    /// The witness's state directory: its key (`witness.key`, created 0600 on first start)
    /// and the latest checkpoint of each log.
    #[arg(long, default_value = "/var/lib/callgate-witness")]
    state: PathBuf,
}

#[derive(Subcommand)]
enum WitnessCommand {
    /// Print the witness's verifier key (tlog-cosignature Ed25519, `<name>+<id>+<key>`), for
    /// whoever checks cosigned checkpoints.
    Key {
        #[command(flatten)]
        state: StateArg,
        #[arg(long)]
        name: Option<String>,
    },
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control() && *c != '+')
        .collect();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{host}/callgate/witness")
}

fn state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

fn print_key(dir: &Path, name: Option<String>) -> Result<()> {
    state_dir(dir)?;
    let key = Cosigner::load_or_create(dir, &name.unwrap_or_else(default_name))?;
    println!("{}", key.verifier().encode());
    Ok(())
}

fn log_keys(args: &[String]) -> Result<Vec<note::Verifier>> {
    let mut out = Vec::new();
    for a in args {
        let text = if Path::new(a).is_file() {
            std::fs::read_to_string(a).with_context(|| format!("reading {a}"))?
        } else {
            a.clone()
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(note::Verifier::parse(line).with_context(|| format!("--log-key {a}"))?);
        }
    }
    Ok(out)
}

pub fn run(a: WitnessArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    if let Some(WitnessCommand::Key { state, name }) = a.command {
        return print_key(&state.state, name);
    }
    if a.print_key {
        return print_key(&a.state.state, a.name);
    }
    let keys = log_keys(&a.log_keys)?;
    if keys.is_empty() {
        bail!("no --log-key: give the verifier key of each log this witness cosigns");
    }
    state_dir(&a.state.state)?;
    let name = a.name.unwrap_or_else(default_name);
    let origins: Vec<String> = keys.iter().map(|k| k.name().to_string()).collect();
    let witness = Arc::new(Witness::open(&a.state.state, &name, keys)?);
    init_logging();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("listening on {}", a.listen))?;
        tracing::info!(
            listen = %a.listen,
            key = %witness.key().verifier().encode(),
            logs = ?origins,
            "callgate witness is running"
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(witness.serve(listener, stop_rx));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing signal handlers")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
        let _ = server.await;
        Ok(())
    })
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CALLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
