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
    #[arg(required_unless_present = "unit", conflicts_with = "unit")]
    pub cgroup: Option<String>,
    /// A systemd unit instead of a path, e.g. `nightly-batch.service`.
    #[arg(long)]
    pub unit: Option<String>,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn enable(t: &TargetArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
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
    Ok(())
}

pub fn disable(t: &TargetArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
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
    Ok(())
}

fn target(t: &TargetArgs) -> Result<Target> {
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
