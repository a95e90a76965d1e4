//! `callgate trust env`, and the systemd drop-in of `callgate enable --unit NAME --trust`:
//! the environment that points each runtime at the gateway's trust bundle.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use callgate::{
    config::{self, Config, Overrides},
    proxy::trust::{self, Format, Paths},
};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Subcommand)]
pub enum TrustCommand {
    /// Print the environment that makes Python (ssl, requests, httpx), curl, Go, Node.js and
    /// Java trust the gateway's CA, through the bundle the gateway keeps current.
    Env {
        #[arg(long, value_enum, default_value_t = EnvFormat::Shell)]
        format: EnvFormat,
        #[command(flatten)]
        state: StateDirArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum EnvFormat {
    /// `export NAME='value'` (e.g. `eval "$(callgate trust env)"`).
    Shell,
    /// `Environment=` lines for a unit's `[Service]` section.
    Systemd,
    /// `NAME=value` lines for `docker run --env-file` (the paths must be mounted in).
    Docker,
}

/// Where the daemon keeps its state, hence its trust bundle.
#[derive(Args, Clone)]
pub struct StateDirArg {
    /// The daemon's state directory. Default: `state_dir` in its configuration file
    /// ($CALLGATE_CONFIG, else /etc/callgate/callgate.yaml), else /var/lib/callgate.
    #[arg(long, env = "CALLGATE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl StateDirArg {
    pub fn paths(&self) -> Result<Paths> {
        let state_dir = match &self.state_dir {
            Some(d) => d.clone(),
            None => {
                let file = std::env::var_os("CALLGATE_CONFIG").map(PathBuf::from);
                let explicit = file.is_some();
                let file = file.unwrap_or_else(|| config::DEFAULT_CONFIG.into());
                Config::load(&file, explicit, Overrides::default())
                    .with_context(|| format!("reading {}", file.display()))?
                    .state_dir
            }
        };
        Ok(Paths::for_state_dir(&state_dir))
    }
}

pub fn run(cmd: TrustCommand) -> Result<()> {
    match cmd {
        TrustCommand::Env { format, state } => {
            let paths = state.paths()?;
            if !paths.bundle().exists() {
                eprintln!(
                    "callgate: {} does not exist yet: the daemon writes it when it starts with a policy (or run `callgate install`)",
                    paths.bundle().display()
                );
            }
            let format = match format {
                EnvFormat::Shell => Format::Shell,
                EnvFormat::Systemd => Format::Systemd,
                EnvFormat::Docker => Format::Docker,
            };
            print!("{}", trust::render(&trust::env(&paths), format));
        }
    }
    Ok(())
}

fn unit_dir(root: &Path) -> PathBuf {
    root.join("etc/systemd/system")
}

fn live(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").is_dir()
}

fn daemon_reload(root: &Path) {
    if live(root) {
        match std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("callgate: systemctl daemon-reload failed ({s})"),
            Err(e) => eprintln!("callgate: running systemctl daemon-reload: {e}"),
        }
    }
}

/// Writes the trust drop-in of `unit` under `root` and says what the operator does next.
pub fn write_dropin(root: &Path, unit: &str, paths: &Paths) -> Result<()> {
    let path = trust::dropin_path(&unit_dir(root), unit);
    callgate::util::fs::write_atomic_mode(&path, trust::dropin(paths).as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    daemon_reload(root);
    println!(
        "wrote {} (the environment of `callgate trust env`)",
        path.display()
    );
    println!("restart {unit} for its TLS clients to trust the gateway: systemctl restart {unit}");
    Ok(())
}

/// Removes the trust drop-in of `unit`, if there is one.
pub fn remove_dropin(root: &Path, unit: &str) -> Result<()> {
    let path = trust::dropin_path(&unit_dir(root), unit);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                // Only if nothing else is in it.
                let _ = std::fs::remove_dir(dir);
            }
            daemon_reload(root);
            println!(
                "removed {}; restart {unit} for it to take effect",
                path.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
