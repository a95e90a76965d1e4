//! `callgate install` / `uninstall`: put the gateway on a host as a hardened systemd service,
//! and take it off again — detaching every eBPF program, so no cgroup is left redirected to
//! a gateway that is gone. `--root` writes under another directory instead of `/` (for
//! packaging, and for the tests) and then leaves the running system alone.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use callgate::config::{self, Config, Overrides};
use clap::Args;

const UNIT_NAME: &str = "callgate.service";
/// What the unit's stop timeout allows beyond the drain's grace: the records flushed and
/// signed, quota counts given back, the fleet's and the witnesses' last rounds (each bounded).
pub const STOP_AFTER_GRACE_S: u64 = 15;
const TRUSTED_CA: &str = "usr/local/share/ca-certificates/callgate-local-ca.crt";

/// The capabilities the daemon keeps: load and attach eBPF programs to cgroups (BPF,
/// PERFMON, NET_ADMIN), read other users' `/proc/PID/exe` for the workload's executable
/// (SYS_PTRACE), read policy and secret files whatever their owner (DAC_READ_SEARCH).
/// `tests/install.rs` runs the gateway under exactly this set.
pub const CAPABILITIES: &[&str] = &[
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_NET_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
];

#[derive(Args)]
pub struct InstallArgs {
    /// Where the binary goes (`<prefix>/bin/callgate`).
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// The policy repository the daemon reads; a starter repository (dry-run mode) is made
    /// there if there is none.
    #[arg(long, default_value = "/etc/callgate/policies")]
    policies: PathBuf,
    /// Also add the gateway's local CA to the system trust store (needed for services with
    /// `tls: intercept`).
    #[arg(long)]
    trust_ca: bool,
    /// Install and enable the service, but do not start it now.
    #[arg(long)]
    no_start: bool,
    /// Write everything under this directory instead of `/` and touch nothing running.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Args)]
pub struct UninstallArgs {
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Also remove the configuration, the policy starter, the state (enabled cgroups, the
    /// CA, approvals) and the call log.
    #[arg(long)]
    purge: bool,
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

/// `root` joined with an absolute path.
fn under(root: &Path, p: impl AsRef<Path>) -> PathBuf {
    root.join(p.as_ref().strip_prefix("/").unwrap_or(p.as_ref()))
}

fn live(root: &Path) -> bool {
    root == Path::new("/")
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn step(what: impl std::fmt::Display) {
    println!("install: {what}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    step(format_args!("running {shown}"));
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// The systemd unit: root, but only with [`CAPABILITIES`], and a read-only view of the
/// system except its own directories and the bpffs/cgroup trees it works on.
///
/// `stop_grace` is the config's `stop_grace_s`: the stop's timeout gives the drain that much and
/// the rest of the stop (records flushed and signed, the fleet's and witnesses' last rounds)
/// [`STOP_AFTER_GRACE_S`] more.
pub fn unit(bin: &Path, config: &Path, stop_grace: std::time::Duration) -> String {
    let stop_timeout = stop_grace.as_secs() + STOP_AFTER_GRACE_S;
    format!(
        "# Installed by `callgate install`; `callgate uninstall` removes it.
[Unit]
Description=callgate function-call gateway
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={bin} run --config {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=1s
# Stopping leaves the eBPF programs pinned: enabled cgroups fail closed until the next start.
# Calls in flight get stop_grace_s to finish, then the records are flushed and signed:
# `callgate install` sets this from the config's stop_grace_s (re-run it after changing that).
KillSignal=SIGTERM
TimeoutStopSec={stop_timeout}s

StateDirectory=callgate
StateDirectoryMode=0700
RuntimeDirectory=callgate
RuntimeDirectoryMode=0700
ConfigurationDirectory=callgate
UMask=0077

CapabilityBoundingSet={caps}
AmbientCapabilities=
NoNewPrivileges=yes
ProtectSystem=strict
# The trust bundle (`callgate trust env`): outside the private state directory, for every
# workload to read.
ReadWritePaths=/sys/fs/bpf -{trust}
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service bpf perf_event_open
SystemCallErrorNumber=EPERM
LimitMEMLOCK=infinity
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
",
        bin = bin.display(),
        config = config.display(),
        caps = CAPABILITIES.join(" "),
        trust = callgate::proxy::trust::dir_for(Path::new(config::DEFAULT_STATE_DIR)).display(),
    )
}

/// What `--trust-ca` does and does not reach (the README's "TLS interception and your
/// runtimes" has the whole table).
const TRUST_CA_COVERS: &str = "\
install: the system store now trusts the CA: that covers curl, Go, Python's ssl module (urllib)
  and other users of OpenSSL's default paths. It does NOT cover runtimes with roots of their
  own: Python requests and httpx (certifi), Node.js (its compiled-in list), Java (cacerts).
  For those: `callgate enable --unit NAME.service --trust` (a drop-in with the environment of
  `callgate trust env`), then restart the unit. `callgate status` names any workload that
  still refuses the CA.";

const STARTER_POLICY: &str = "\
# A callgate policy repository (see the README's \"Policies\"). Keep it in git.
#
# It starts in dry-run: every call of an enabled cgroup is decided and recorded as it would
# be, and nothing is refused. Add services under services/, read `callgate records list`,
# then switch to `mode: enforce`.
mode: dry-run
default_action: deny
unknown_destination: deny
";

fn starter_config(policies: &Path) -> String {
    format!(
        "# callgate daemon configuration (see the README's \"Daemon configuration\").
policies: {}
state_dir: {}
control_socket: {}
# admin_http:                  # approvals page, /metrics, /healthz, /readyz
#   listen: 127.0.0.1:15080
",
        policies.display(),
        config::DEFAULT_STATE_DIR,
        config::DEFAULT_CONTROL_SOCKET
    )
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<bool> {
    if path.exists() {
        step(format_args!("{} exists, kept as it is", path.display()));
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    callgate::util::fs::write_atomic_mode(path, text.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))?;
    step(format_args!("wrote {}", path.display()));
    Ok(true)
}

pub fn install(a: InstallArgs) -> Result<()> {
    let root = &a.root;
    // The binary: a copy of this one.
    let bin_rel = a.prefix.join("bin/callgate");
    let bin = under(root, &bin_rel);
    let me = std::env::current_exe().context("finding this program")?;
    if fs::canonicalize(&me).ok() != fs::canonicalize(&bin).ok() {
        let dir = bin.parent().context("binary path")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(".callgate.new");
        fs::copy(&me, &tmp)
            .with_context(|| format!("copying {} to {}", me.display(), tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &bin).with_context(|| format!("installing {}", bin.display()))?;
        step(format_args!("installed {}", bin.display()));
    }

    // Configuration and a starter policy repository, never overwriting either.
    let config_rel = PathBuf::from(config::DEFAULT_CONFIG);
    write_new(
        &under(root, &config_rel),
        &starter_config(&a.policies),
        0o644,
    )?;
    let policies = under(root, &a.policies);
    if !policies.exists() {
        write_new(&policies.join("callgate.yaml"), STARTER_POLICY, 0o644)?;
        fs::create_dir_all(policies.join("services"))?;
        fs::create_dir_all(policies.join("tests"))?;
    }

    // State, with the local CA made now so that it can be trusted before the first start.
    let state = under(root, config::DEFAULT_STATE_DIR);
    fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700))?;
    let authority = callgate::proxy::tls::Authority::load_or_create(&state)?;
    step(format_args!(
        "local CA in {}",
        state.join("ca.crt").display()
    ));
    // The trust bundle for runtimes with roots of their own, readable before the first start.
    let trust = callgate::proxy::trust::Paths::for_state_dir(&state);
    callgate::proxy::trust::refresh(
        &trust,
        &authority.ca_pem(),
        &callgate::proxy::trust::system_roots(),
    )?;
    step(format_args!(
        "trust bundle in {} (see `callgate trust env`)",
        trust.dir.display()
    ));
    if a.trust_ca {
        let dst = under(root, TRUSTED_CA);
        fs::create_dir_all(dst.parent().context("trust dir")?)?;
        fs::copy(state.join("ca.crt"), &dst)
            .with_context(|| format!("copying the CA to {}", dst.display()))?;
        step(format_args!("trusted the CA: {}", dst.display()));
        if live(root) {
            run(&mut Command::new("update-ca-certificates"))?;
        }
        println!("{TRUST_CA_COVERS}");
    }

    // The stop's timeout follows the config as it now is (ours, or the operator's).
    let config_path = under(root, &config_rel);
    let cfg = Config::load(&config_path, false, Overrides::default())
        .with_context(|| format!("reading {}", config_path.display()))?;
    let unit_path = under(root, Path::new("/etc/systemd/system").join(UNIT_NAME));
    callgate::util::fs::write_atomic_mode(
        &unit_path,
        unit(&bin_rel, &config_rel, cfg.stop_grace).as_bytes(),
        0o644,
    )
    .with_context(|| format!("writing {}", unit_path.display()))?;
    step(format_args!("wrote {}", unit_path.display()));

    if live(root) && systemd_running() {
        run(Command::new("systemctl").arg("daemon-reload"))?;
        let mut enable = Command::new("systemctl");
        enable.arg("enable");
        if !a.no_start {
            enable.arg("--now");
        }
        run(enable.arg(UNIT_NAME))?;
    } else if live(root) {
        step("systemd is not running here: start the daemon with `callgate run` yourself");
    }
    println!(
        "next: `callgate enable --unit NAME.service` for each service to govern; policies in {}",
        a.policies.display()
    );
    Ok(())
}

pub fn uninstall(a: UninstallArgs) -> Result<()> {
    let root = &a.root;
    let config_path = under(root, config::DEFAULT_CONFIG);
    let cfg = Config::load(&config_path, false, Overrides::default())
        .with_context(|| format!("reading {}", config_path.display()))?;
    let unit_path = under(root, Path::new("/etc/systemd/system").join(UNIT_NAME));
    if live(root) && systemd_running() && unit_path.exists() {
        run(Command::new("systemctl").args(["disable", "--now", UNIT_NAME]))?;
    }
    // A daemon still answering would re-attach; it must be gone before its pins are.
    if live(root) && std::os::unix::net::UnixStream::connect(&cfg.control_socket).is_ok() {
        bail!(
            "the daemon still answers at {}: stop it first (systemctl stop callgate, or end `callgate run`)",
            cfg.control_socket.display()
        );
    }
    // Unpinning the links detaches the programs: enabled cgroups go direct again.
    let bpffs = under(root, &cfg.bpffs_dir);
    if bpffs.exists() {
        fs::remove_dir_all(&bpffs).with_context(|| format!("removing {}", bpffs.display()))?;
        step(format_args!(
            "detached every cgroup (removed {})",
            bpffs.display()
        ));
    }
    for p in [
        unit_path,
        under(root, a.prefix.join("bin/callgate")),
        under(root, TRUSTED_CA),
    ] {
        match fs::remove_file(&p) {
            Ok(()) => step(format_args!("removed {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    if live(root) {
        if Path::new("/usr/sbin/update-ca-certificates").exists() {
            run(Command::new("update-ca-certificates").arg("--fresh"))?;
        }
        if systemd_running() {
            run(Command::new("systemctl").arg("daemon-reload"))?;
        }
    }
    let state = under(root, &cfg.state_dir);
    let etc = under(root, "/etc/callgate");
    let trust = callgate::proxy::trust::dir_for(&state);
    if a.purge {
        for dir in [&etc, &state, &trust] {
            if dir.exists() {
                fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
                step(format_args!("removed {}", dir.display()));
            }
        }
    } else {
        step(format_args!(
            "kept {} and {} (configuration, policies, state, call log); --purge removes them",
            etc.display(),
            state.display()
        ));
    }
    Ok(())
}
