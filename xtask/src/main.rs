//! Developer tasks: `cargo xtask setup | build | run | test | fuzz | bench`.
//!
//! `setup` is idempotent and quiet when everything is present; every other task runs it first,
//! so a fresh machine needs nothing but `cargo xtask run` or `cargo xtask test`.
mod pgo;
mod run;
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
        /// Profile-guided: build instrumented, train it on the `train` bench (root, eBPF,
        /// about a minute), build again with its profile, into `target/pgo/callgate`. About
        /// 10% less CPU per call than the plain release build; three builds' time.
        #[arg(long, requires = "release")]
        pgo: bool,
    },
    /// Build, then run `callgate demo`: a gateway, a payments API, an MCP tool server and an
    /// agent whose calls are shown as they are decided, until Ctrl-C.
    Run {
        /// Extra arguments for `callgate demo` (e.g. `--auto-approve-after 5`).
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
    /// MCP tools/list filtering, path canonicalisation, the record's JSON check. `cargo xtask
    /// test` runs each briefly;
    /// this runs them longer.
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
        /// record), `all` (all but soak and ab), `ab`: this build against another
        /// (`CALLGATE_BIN_A=path/to/callgate`) on the l7 headline case, interleaved rounds, or
        /// `calls`: CPU, context switches and system calls per call at light load.
        #[arg(long, default_value = "connect")]
        suite: String,
        /// Measure the plain release build, not the profile-guided one (`build --pgo`) that
        /// suites running the gateway binary measure by default.
        #[arg(long)]
        no_pgo: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup::run(&setup::Needs::all()),
        Task::Build { release, pgo } => {
            // Training runs the bench world: nginx, wrk, h2load, openssl.
            setup::run(&if pgo {
                setup::Needs::all()
            } else {
                setup::Needs::build()
            })?;
            if pgo {
                pgo::build(&root).map(drop)
            } else {
                build(release)
            }
        }
        Task::Run { args } => {
            setup::run(&setup::Needs::demo())?;
            build_profile(run::PROFILE)?;
            run::demo(&root, &args)
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
                .filter(|t| fuzz(t, seconds, Output::Shown).is_err())
                .collect();
            if !failed.is_empty() {
                bail!("fuzz targets found crashes: {}", failed.join(", "));
            }
            Ok(())
        }
        Task::Bench { suite, no_pgo } => {
            // A misspelt suite is said before any build.
            bench_suites(&suite)?;
            setup::run(&setup::Needs::all())?;
            let bin = if no_pgo || !runs_the_binary(&suite) {
                build(true)?;
                root.join("target/release/callgate")
            } else {
                pgo::build(&root)?
            };
            bench(&suite, &bin)
        }
    }
}

pub(crate) fn workspace_root() -> PathBuf {
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

/// `target/<profile>/callgate` built with a named profile of the workspace's Cargo.toml.
fn build_profile(profile: &str) -> Result<()> {
    run_cmd(cargo().args(["build", "--package", "callgate", "--profile", profile]))
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "callgate"]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)
}

/// Free bytes a clean `cargo xtask test` needs under `target/`: about 5 GB of builds (debug,
/// eBPF, fuzz) and the test parties, with room for the tests' own state and records.
const TEST_DISK_BYTES: u64 = 8 << 30;

/// Stops a test run that would die of a full disk halfway through a link step (where the
/// error reads "Bus error" or a truncated rmeta) with a message that says so up front.
pub(crate) fn check_disk(dir: &Path, needed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .context("running df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(free) = text
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse::<u64>().ok())
    else {
        println!("xtask: could not read free disk space from df ({text:?}); going on");
        return Ok(());
    };
    let used = du_bytes(dir);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "xtask: {:.1} GiB free on the filesystem of {}, {:.1} GiB already used there",
        gib(free),
        dir.display(),
        gib(used)
    );
    // What is already built is reused, so only the rest has to fit.
    if free + used < needed {
        bail!(
            "not enough disk space: {:.1} GiB free under {}, and a full test run needs about \
             {:.1} GiB in all; free some space (e.g. `cargo clean` in other checkouts) and retry",
            gib(free),
            dir.display(),
            gib(needed)
        );
    }
    Ok(())
}

/// Bytes under `dir`, by `du`; 0 when it cannot tell.
fn du_bytes(dir: &Path) -> u64 {
    Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn test(no_lint: bool, filter: Option<&str>) -> Result<()> {
    check_disk(&workspace_root().join("target"), TEST_DISK_BYTES)?;
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
    // Every test binary runs even after one fails, so one red test does not hide the rest.
    cmd.arg("--no-fail-fast");
    let mut counts = run_counting(&mut cmd)?;
    // A bounded fuzzing run per target, counted as one test each.
    for t in FUZZ_TARGETS {
        match fuzz(t, FUZZ_TEST_SECONDS, Output::Summary) {
            Ok(()) => counts.passed += 1,
            Err(e) => {
                counts.failures.push(format!("fuzz {t}: {e:#}"));
                counts.failed += 1;
            }
        }
    }
    // Repeated last, where a CI log's tail shows it: which tests were skipped at run time
    // (they return early, and libtest counts them as passed), which failed and why.
    if !counts.skips.is_empty() {
        println!(
            "\nxtask: skipped at run time ({}), counted as skipped, not passed",
            counts.skips.len()
        );
        for (test, why) in &counts.skips {
            println!("{test}: {why}");
        }
    }
    if !counts.failures.is_empty() {
        println!("\nxtask: failures");
        for f in &counts.failures {
            println!("{f}");
        }
    }
    println!("\nxtask: {}", counts.summary());
    if counts.failed > 0 || !counts.cargo_ok {
        bail!("tests failed");
    }
    Ok(())
}

/// The cargo-fuzz targets in `gateway/fuzz/fuzz_targets`.
const FUZZ_TARGETS: [&str; 9] = [
    "sniff",
    "extract",
    "policy_yaml",
    "mask_chunks",
    "record_reader",
    "tools_list",
    "http1_requests",
    "canonical_path",
    "json_valid",
];
/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_TEST_SECONDS: u64 = 20;

/// Where a fuzzing run's output goes.
#[derive(Clone, Copy, PartialEq)]
enum Output {
    /// Straight through, for `cargo xtask fuzz`.
    Shown,
    /// To `target/fuzz/logs/TARGET.log`, with one line of figures printed (and the log's tail
    /// on failure), so that libFuzzer's pages of statistics do not bury the test results.
    Summary,
}

/// Runs one fuzz target for `seconds` from its committed seeds plus the corpus grown so far
/// (under `target/fuzz/corpus`); a crash leaves its input under `target/fuzz/artifacts`.
fn fuzz(target: &str, seconds: u64, output: Output) -> Result<()> {
    let root = workspace_root();
    let corpus = root.join("target/fuzz/corpus").join(target);
    let artifacts = root.join("target/fuzz/artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = root.join("gateway/fuzz/seeds").join(target);
    println!("xtask: fuzz {target} for {seconds} s");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &setup::nightly()?, "cargo", "fuzz", "run"])
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
    if output == Output::Shown {
        return run_cmd(&mut cmd);
    }
    let logs = root.join("target/fuzz/logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    cmd.stdout(log.try_clone()?).stderr(log);
    let status = cmd.status().context("running cargo fuzz")?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if status.success() {
        let stat = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map_or("?", str::trim)
                .to_string()
        };
        println!(
            "xtask: fuzz {target}: {} inputs, {} new, no crash (log {})",
            stat("stat::number_of_executed_units:"),
            stat("stat::new_units_added:"),
            log_path.display()
        );
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    bail!(
        "{status}; last lines of {}:\n{tail}\ncrash inputs, if any, are in {}",
        log_path.display(),
        artifacts.display()
    )
}

/// Runs cargo test, passing its output through, and adds up its results, so that the caller's
/// last line (`N passed, M failed, K skipped`) speaks for the whole run rather than for the
/// last test binary (usually the doc tests, with nothing to run). A test that skips at run
/// time (`SKIP <test>: <why>` on stderr, from the e2e harness's `skip`) passes as far as
/// libtest knows; it is counted as skipped instead.
fn run_counting(cmd: &mut Command) -> Result<Counts> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // stderr passes through on a thread of its own, so that neither pipe fills and stalls
    // the tests; it is where the skips are said.
    let stderr = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut skips = std::collections::BTreeMap::new();
            let mut err = BufReader::new(err);
            let mut raw = Vec::new();
            // Bytes, not `lines()`: a line that is not UTF-8 must not stop the draining, or
            // the pipe fills and the tests stall.
            while err.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\n', '\r']);
                eprintln!("{line}");
                if let Some((test, why)) = runtime_skip(line) {
                    skips.insert(test.to_string(), why.to_string());
                }
                raw.clear();
            }
            skips
        })
    });
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    let mut excerpt = FailureExcerpt::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            excerpt.take(&line, &mut failures);
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
    let skips = match stderr {
        Some(t) => t
            .join()
            .map_err(|_| anyhow::anyhow!("reading the tests' stderr panicked"))?,
        None => Default::default(),
    };
    Ok(Counts {
        passed,
        failed,
        ignored,
        skips,
        cargo_ok: status.success(),
        failures,
    })
}

/// A `SKIP <test>: <why>` line: the test and why it did not run.
fn runtime_skip(line: &str) -> Option<(&str, &str)> {
    let (test, why) = line.trim_start().strip_prefix("SKIP ")?.split_once(": ")?;
    (!test.is_empty() && !test.contains(char::is_whitespace)).then_some((test, why))
}

/// Picks out of libtest's report of a failed test the lines that say what failed: the test's
/// name, its panic message and the lines just after it (the assertion's values), and the test's
/// last lines (the harness prints the gateway's log tail there). Captured output can run to
/// thousands of lines; these are what a reader of a CI log's tail needs.
#[derive(Default)]
struct FailureExcerpt {
    /// The test being reported (`---- NAME stdout ----`), with the lines kept so far.
    current: Option<(String, Vec<String>, std::collections::VecDeque<String>)>,
    /// Lines still to keep after a panic message.
    after_panic: usize,
}

impl FailureExcerpt {
    const AFTER_PANIC: usize = 8;
    const LAST: usize = 12;

    fn take(&mut self, line: &str, out: &mut Vec<String>) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.finish(out);
            self.current = Some((name.to_string(), Vec::new(), Default::default()));
            return;
        }
        let Some((_, kept, last)) = &mut self.current else {
            return;
        };
        // libtest's list of failed names, or the next binary's results, ends the report.
        if line == "failures:" || line.starts_with("test result: ") {
            self.finish(out);
            return;
        }
        if is_backtrace(line) {
            return;
        }
        if line.contains("panicked at") {
            // What follows the panic (the gateway's log, printed as the test unwinds) matters
            // more than what came before it.
            last.clear();
            self.after_panic = Self::AFTER_PANIC + 1;
        }
        if self.after_panic > 0 {
            self.after_panic -= 1;
            kept.push(line.to_string());
        } else {
            if last.len() == Self::LAST {
                last.pop_front();
            }
            last.push_back(line.to_string());
        }
    }

    fn finish(&mut self, out: &mut Vec<String>) {
        if let Some((name, kept, last)) = self.current.take() {
            let mut text = format!("--- {name}");
            for l in kept
                .iter()
                .chain(std::iter::once(&"  ...".to_string()))
                .chain(&last)
            {
                text.push_str("\n  ");
                text.push_str(l);
            }
            out.push(text);
        }
        self.after_panic = 0;
    }
}

/// A line of a panic's backtrace (RUST_BACKTRACE is set in CI), which says less than the
/// message above it and would crowd it out of a short excerpt.
fn is_backtrace(line: &str) -> bool {
    let t = line.trim_start();
    t == "stack backtrace:"
        || t.starts_with("at ")
        || t.starts_with("note: Some details are omitted")
        || t.split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

struct Counts {
    /// Passed as libtest counts them: the run-time skips among them.
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Tests that skipped at run time (a missing prerequisite), by name: why.
    skips: std::collections::BTreeMap<String, String>,
    /// What failed, in brief, to repeat at the end.
    failures: Vec<String>,
    /// cargo test itself succeeded (it can fail without a failing test: a build error).
    cargo_ok: bool,
}

impl Counts {
    /// `N passed, M failed, K skipped`, a run-time skip counted as skipped, not passed.
    fn summary(&self) -> String {
        let skipped = self.skips.len() as u64;
        format!(
            "{} passed, {} failed, {} skipped ({} ignored, {skipped} at run time)",
            self.passed.saturating_sub(skipped),
            self.failed,
            self.ignored + skipped,
            self.ignored,
        )
    }
}

/// Whether a bench suite runs the `callgate` binary (the others are criterion benches of its
/// modules, in-process, which a profile of the binary does not change).
fn runs_the_binary(suite: &str) -> bool {
    !matches!(suite, "micro" | "decide" | "mask" | "record")
}

/// The bench targets a suite runs.
fn bench_suites(suite: &str) -> Result<Vec<&'static str>> {
    const SUITES: [&str; 8] = [
        "connect", "decide", "mask", "record", "l7", "soak", "ab", "calls",
    ];
    // The criterion benches of the hot modules, in-process.
    const MICRO: [&str; 4] = ["micro", "decide", "mask", "record"];
    Ok(match suite {
        // `all` leaves out the 10-minute soak.
        "all" => SUITES[..5].to_vec(),
        "micro" => MICRO.to_vec(),
        s => match SUITES.iter().find(|&&k| k == s) {
            Some(&k) => vec![k],
            None => bail!(
                "unknown bench suite {s:?}; known: {}, micro, all",
                SUITES.join(", ")
            ),
        },
    })
}

fn bench(suite: &str, bin: &Path) -> Result<()> {
    for s in bench_suites(suite)? {
        run_cmd(
            cargo()
                .args(["bench", "--package", "callgate-benches", "--bench", s])
                .env("CALLGATE_BIN", bin),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Counts, FailureExcerpt, run_counting, runtime_skip};

    #[test]
    fn run_counting_reads_skips_from_stderr_past_a_line_that_is_not_utf8() {
        let script = r#"
            echo "test a ... ok"
            printf 'SKIP first_test: not running as root (set ...)\n' >&2
            printf 'bad \377 bytes\n' >&2
            printf 'SKIP second_test: no cgroup v2 mount\n' >&2
            echo "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out""#;
        let counts =
            run_counting(std::process::Command::new("sh").args(["-c", script])).expect("run");
        assert_eq!(counts.skips.len(), 2, "{:?}", counts.skips);
        assert_eq!(
            counts.summary(),
            "1 passed, 0 failed, 3 skipped (1 ignored, 2 at run time)"
        );
    }

    #[test]
    fn runtime_skips_are_counted_as_skipped_not_passed() {
        let stderr = "\
    Finished `test` profile [unoptimized + debuginfo] target(s) in 0.2s
     Running tests/l7.rs (target/debug/deps/l7-1)
SKIP rest_calls_are_decided: not running as root (set CALLGATE_REQUIRE_EBPF=1 to fail instead)
SKIP records_full_disk: no cgroup v2 mount (set CALLGATE_REQUIRE_EBPF=1 to fail instead)
SKIPPED nothing: this is not the harness's line
SKIP rest_calls_are_decided: not running as root (set CALLGATE_REQUIRE_EBPF=1 to fail instead)";
        let skips: std::collections::BTreeMap<String, String> = stderr
            .lines()
            .filter_map(runtime_skip)
            .map(|(t, w)| (t.to_string(), w.to_string()))
            .collect();
        assert_eq!(skips.len(), 2, "{skips:?}");
        assert!(skips["records_full_disk"].starts_with("no cgroup v2 mount"));
        let counts = Counts {
            passed: 10,
            failed: 1,
            ignored: 3,
            skips,
            failures: Vec::new(),
            cargo_ok: false,
        };
        assert_eq!(
            counts.summary(),
            "8 passed, 1 failed, 5 skipped (3 ignored, 2 at run time)"
        );
    }

    #[test]
    fn failure_excerpt_keeps_name_panic_and_last_lines_without_backtrace() {
        let report = "\
failures:

---- t::bad stdout ----
before

thread 't::bad' (32646) panicked at src/lib.rs:4:67:
assertion `left == right` failed: numbers differ
  left: 1
 right: 2
stack backtrace:
   0: __rustc::rust_begin_unwind
             at /rustc/library/std/src/panicking.rs:689:5
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.
gateway log: denied
---- t::worse stdout ----
thread 't::worse' panicked at src/lib.rs:9:1:
boom

failures:
    t::bad
    t::worse

test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        let mut excerpt = FailureExcerpt::default();
        let mut out = Vec::new();
        for line in report.lines() {
            excerpt.take(line, &mut out);
        }
        assert_eq!(out.len(), 2, "{out:#?}");
        assert!(out[0].starts_with("--- t::bad\n"), "{}", out[0]);
        assert!(out[0].contains("numbers differ") && out[0].contains(" right: 2"));
        assert!(out[0].contains("gateway log: denied"));
        assert!(!out[0].contains("before") && !out[0].contains("rust_begin_unwind"));
        assert!(!out[0].contains("RUST_BACKTRACE"));
        assert!(out[1].starts_with("--- t::worse\n") && out[1].contains("boom"));
    }
}
