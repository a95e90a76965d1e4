//! `cargo xtask run`: builds, then runs `callgate demo` from this checkout: the demo policy
//! repository `policies/demo/` (edits to it are reloaded live), the pinned Python venv of the
//! test parties, and state under `target/callgate/demo`.
use std::{path::Path, process::Command};

use anyhow::Result;

use crate::run_cmd;

/// The build profile `cargo xtask run` uses (Cargo.toml says why): the first run waits for
/// it, so it trades a little speed for a much shorter build than `release`.
pub const PROFILE: &str = "demo";

pub fn demo(root: &Path, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(root.join("target").join(PROFILE).join("callgate"));
    cmd.arg("demo")
        .arg("--policies")
        .arg(root.join("policies/demo"))
        .arg("--state-dir")
        .arg(root.join("target/callgate/demo"))
        .arg("--python")
        .arg(root.join("target/testenv/bin/python"))
        .args(args);
    println!("xtask: {cmd:?}");
    run_cmd(&mut cmd)
}
