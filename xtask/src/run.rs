//! `cargo xtask run`: builds, then runs `callgate demo` from this checkout: the demo policy
//! repository `policies/demo/` (edits to it are reloaded live), the pinned Python venv of the
//! test parties, and state under `target/callgate/demo`.
use std::{path::Path, process::Command};

use anyhow::Result;

use crate::run_cmd;

pub fn demo(root: &Path, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(root.join("target/release/callgate"));
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
