//! Developer tasks: `cargo xtask setup | build | run | test | bench`.
//!
//! `setup` is idempotent and quiet when everything is present; every other task runs it first,
//! so a fresh machine needs nothing but `cargo xtask run` or `cargo xtask test`.
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "callgate's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, nightly + rust-src, bpf-linker).
    Setup,
    /// Build the eBPF object and the `callgate` binary with it embedded.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `callgate run` in the foreground with the repo's policies.
    Run {
        /// Extra arguments for `callgate run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build, then run every test: unit, integration and the root/eBPF end-to-end tests.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// Run benchmarks and print ratios against a baseline measured in the same run.
    Bench {
        /// Which suite: `connect`, `decide`, `mask`, `record`, `l7`, or `all`.
        #[arg(long, default_value = "connect")]
        suite: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::run(&setup::Needs::all()),
        Task::Build { release } => {
            setup::run(&setup::Needs::build())?;
            build(release)
        }
        Task::Run { args } => {
            setup::run(&setup::Needs::build())?;
            build(true)?;
            run_gateway(&root, &args)
        }
        Task::Test { no_lint, filter } => {
            setup::run(&setup::Needs::all())?;
            test(no_lint, filter.as_deref())
        }
        Task::Bench { suite } => {
            setup::run(&setup::Needs::all())?;
            build(true)?;
            bench(&root, &suite)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ is in the workspace")
        .to_path_buf()
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "callgate"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

fn run_gateway(root: &Path, args: &[String]) -> Result<()> {
    let state = root.join("target/callgate/state");
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                post.starts_with("cgroup2 ")
                    .then(|| pre.split_whitespace().nth(4).map(str::to_string))?
            })
        })
        .unwrap_or_else(|| "/sys/fs/cgroup".into());
    println!(
        "callgate: starting the gateway (policies: {}, state: {})",
        root.join("policies").display(),
        state.display()
    );
    println!("To see interception, in another shell as root:");
    println!("  mkdir -p {mount}/demo && target/release/callgate enable demo");
    println!("  sh -c 'echo $$ > {mount}/demo/cgroup.procs; exec curl -sI http://127.0.0.1:8000/'");
    println!("  target/release/callgate status");
    let mut cmd = Command::new(root.join("target/release/callgate"));
    cmd.arg("run")
        .arg("--policies")
        .arg(root.join("policies"))
        .arg("--state-dir")
        .arg(&state)
        .args(args);
    run_cmd(&mut cmd)
}

fn test(no_lint: bool, filter: Option<&str>) -> Result<()> {
    if !no_lint {
        println!("xtask: cargo fmt --check");
        run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
        println!("xtask: cargo clippy");
        run_cmd(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    build(false)?;
    let mut cmd = cargo();
    // Default members: the eBPF crate only builds for the BPF target.
    cmd.arg("test");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    // The end-to-end tests run the binary just built rather than building their own.
    cmd.env(
        "CALLGATE_BIN",
        workspace_root().join("target/debug/callgate"),
    );
    run_counting(&mut cmd)
}

/// Runs cargo test, passing its output through, and ends with one total line
/// (`N passed, M failed, K skipped`) so that the last line speaks for the whole run rather
/// than for the last test binary (usually the doc tests, with nothing to run).
fn run_counting(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            let Some(rest) = line.strip_prefix("test result: ") else {
                continue;
            };
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                let (Some(n), Some(what)) = (
                    words.next().and_then(|n| n.parse::<u64>().ok()),
                    words.next(),
                ) else {
                    continue;
                };
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("\nxtask: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

fn bench(root: &Path, suite: &str) -> Result<()> {
    const SUITES: [&str; 5] = ["connect", "decide", "mask", "record", "l7"];
    let suites: Vec<&str> = match suite {
        "all" => SUITES.to_vec(),
        s if SUITES.contains(&s) => vec![s],
        other => bail!(
            "unknown bench suite {other:?}; known: {}, all",
            SUITES.join(", ")
        ),
    };
    for s in suites {
        run_cmd(
            cargo()
                .args(["bench", "--package", "callgate-benches", "--bench", s])
                .env("CALLGATE_BIN", root.join("target/release/callgate")),
        )?;
    }
    Ok(())
}
