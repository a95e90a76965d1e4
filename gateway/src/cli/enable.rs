//! `callgate enable` and `disable`: start or stop intercepting a cgroup (or a systemd unit's).
use std::path::PathBuf;

use anyhow::{Result, bail};
use callgate::{
    admin::Request,
    intercept::{Change, Target},
};
use clap::Args;

use super::{SocketArg, request};

#[derive(Args)]
pub struct TargetArgs {
    /// A cgroup v2 directory: absolute, or relative to the cgroup v2 mount
    /// (e.g. `system.slice/app.service`, as /proc/PID/cgroup prints it).
    #[arg(
        required_unless_present_any = ["unit", "pid", "container"],
        conflicts_with_all = ["unit", "pid", "container"]
    )]
    pub cgroup: Option<String>,
    /// A systemd unit instead of a path, e.g. `nightly-batch.service`.
    #[arg(long, conflicts_with_all = ["pid", "container"])]
    pub unit: Option<String>,
    /// With --unit: also write a systemd drop-in that points the unit's TLS clients at the
    /// gateway's trust bundle (`callgate trust env`); `disable --unit` removes it.
    #[arg(long, requires = "unit")]
    pub trust: bool,
    /// Where the drop-in goes: `<root>/etc/systemd/system/UNIT.d/`.
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
    #[command(flatten)]
    pub state: super::trust::StateDirArg,
    /// The cgroup process PID is in (a container's, a pod's: its network namespace is
    /// governed too).
    #[arg(long, conflicts_with = "container")]
    pub pid: Option<u32>,
    /// A Docker, Podman, containerd or CRI-O container: its id (12+ hex digits) or its
    /// name (read from Podman's and Docker's state, else `podman`/`docker inspect`); its
    /// cgroup is found in the cgroup tree.
    #[arg(long)]
    pub container: Option<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn enable(t: &TargetArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let change: Change =
        rt.block_on(request(&t.socket, &Request::Enable { target: target(t)? }))?;
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
    if let (true, Some(unit)) = (t.trust, &t.unit) {
        super::trust::write_dropin(&t.root, unit, &t.state.paths()?)?;
    }
    Ok(())
}

pub fn disable(t: &TargetArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let change: Change =
        rt.block_on(request(&t.socket, &Request::Disable { target: target(t)? }))?;
    println!(
        "disabled {} (cgroup id {})",
        change.cgroup.path.display(),
        change.cgroup.id
    );
    if let Some(unit) = &t.unit {
        super::trust::remove_dropin(&t.root, unit)?;
    }
    Ok(())
}

fn target(t: &TargetArgs) -> Result<Target> {
    if let Some(pid) = t.pid {
        return Ok(Target::Cgroup(super::netns::cgroup_of_pid(pid)?));
    }
    if let Some(c) = &t.container {
        return Ok(Target::Cgroup(super::netns::cgroup_of_container(c)?));
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
