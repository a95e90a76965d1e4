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
    /// Fuzz the parsers of untrusted input with cargo-fuzz (libFuzzer, nightly): the TLS and
    /// HTTP sniffer, call extraction, policy YAML, masking over chunkings, record segments,
    /// MCP tools/list filtering. `cargo xtask test` runs each briefly; this runs them longer.
    Fuzz {
        /// Only this target (default: every target in turn).
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Run benchmarks and print ratios against a baseline measured in the same run.
    Bench {
        /// Which suite: `connect`, `decide`, `mask`, `record`, `l7`, `soak` (10 minutes;
        /// CALLGATE_SOAK_MINUTES), `micro` (criterion benches of sniff, extract, decide, mask,
        /// record), or `all` (all but soak).
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
        Task::Fuzz { target, seconds } => {
            setup::run(&setup::Needs::all())?;
            let targets = match target {
                Some(t) if FUZZ_TARGETS.contains(&t.as_str()) => vec![t],
                Some(t) => bail!(
                    "unknown fuzz target {t:?}; known: {}",
                    FUZZ_TARGETS.join(", ")
                ),
                None => FUZZ_TARGETS.iter().map(|t| t.to_string()).collect(),
            };
            let failed: Vec<String> = targets
                .into_iter()
                .filter(|t| fuzz(t, seconds).is_err())
                .collect();
            if !failed.is_empty() {
                bail!("fuzz targets found crashes: {}", failed.join(", "));
            }
            Ok(())
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
    let mut counts = run_counting(&mut cmd)?;
    // A bounded fuzzing run per target, counted as one test each.
    for t in FUZZ_TARGETS {
        match fuzz(t, FUZZ_TEST_SECONDS) {
            Ok(()) => counts.passed += 1,
            Err(e) => {
                println!("xtask: fuzz {t}: {e:#}");
                counts.failed += 1;
            }
        }
    }
    println!(
        "\nxtask: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    if counts.failed > 0 || !counts.cargo_ok {
        bail!("tests failed");
    }
    Ok(())
}

/// The cargo-fuzz targets in `gateway/fuzz/fuzz_targets`.
const FUZZ_TARGETS: [&str; 6] = [
    "sniff",
    "extract",
    "policy_yaml",
    "mask_chunks",
    "record_reader",
    "tools_list",
];
/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_TEST_SECONDS: u64 = 20;

/// Runs one fuzz target for `seconds` from its committed seeds plus the corpus grown so far
/// (under `target/fuzz/corpus`); a crash leaves its input under `target/fuzz/artifacts`.
fn fuzz(target: &str, seconds: u64) -> Result<()> {
    let root = workspace_root();
    let corpus = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = root.join("gateway/fuzz/seeds").join(target);
    println!("xtask: fuzz {target} for {seconds} s");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz", "run"])
        .args(["--sanitizer", "none", "--debug-assertions"])
        .arg("--fuzz-dir")
        .arg(root.join("gateway/fuzz"))
        .arg("--target-dir")
        .arg(root.join("target/fuzz/build"))
        .arg(target)
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .current_dir(root.join("gateway"));
    // The outer cargo's settings (it runs on stable) must not reach the nightly build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" || key.starts_with("RUSTUP_") {
            cmd.env_remove(key.as_ref());
        }
    }
    run_cmd(&mut cmd)
}

/// Runs cargo test, passing its output through, and adds up its results, so that the caller's
/// last line (`N passed, M failed, K skipped`) speaks for the whole run rather than for the
/// last test binary (usually the doc tests, with nothing to run).
fn run_counting(cmd: &mut Command) -> Result<Counts> {
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
    Ok(Counts {
        passed,
        failed,
        ignored,
        cargo_ok: status.success(),
    })
}

struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// cargo test itself succeeded (it can fail without a failing test: a build error).
    cargo_ok: bool,
}

fn bench(root: &Path, suite: &str) -> Result<()> {
    const SUITES: [&str; 6] = ["connect", "decide", "mask", "record", "l7", "soak"];
    // The criterion benches of the hot modules, in-process.
    const MICRO: [&str; 4] = ["micro", "decide", "mask", "record"];
    let suites: Vec<&str> = match suite {
        // `all` leaves out the 10-minute soak.
        "all" => SUITES[..5].to_vec(),
        "micro" => MICRO.to_vec(),
        s if SUITES.contains(&s) => vec![s],
        other => bail!(
            "unknown bench suite {other:?}; known: {}, micro, all",
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
