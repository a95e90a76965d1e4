//! `callgate policy`: test, lint, explain and reload a policy repository.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use callgate::admin::Request;
use clap::{Subcommand, ValueEnum};

use super::{SocketArg, request};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Run the repository's test cases (tests/*.yaml); exit 1 if any fails.
    Test {
        /// The policy repository.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Also write JUnit XML here, for CI systems.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Check schema and semantics: errors with file:line:col, shadowed rules, unreferenced
    /// functions, overlapping services, allow rules open to anyone. Exit 1 on errors.
    Lint {
        #[arg(default_value = ".")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Show which rule decides a call, and why every rule before it did not match.
    Explain {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// JSON: {"service": .., "function": .., "args": {..}} (or "destination": "host:port").
        #[arg(long)]
        call: PathBuf,
        /// JSON: {"subject": .., "groups": [..], "authenticated": true, "workload": {..}}.
        #[arg(long)]
        caller: Option<PathBuf>,
    },
    /// Ask the running daemon to reload its policy now.
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// With `policies: { git: … }`: have the running daemon fetch its remote now, verify the
    /// commit's signature, compile and take it; prints the outcome (exit 1 if refused or the
    /// fetch failed).
    Sync {
        #[command(flatten)]
        socket: SocketArg,
        /// Take the remote's commit even if it does not descend from the last commit taken
        /// (the ref was moved back or force-pushed): an operator's deliberate rollback. It
        /// must still be signed and compile.
        #[arg(long)]
        allow_rollback: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// `callgate policy …`: test and lint exit 1 on failures they report, as CI expects.
pub fn run(cmd: PolicyCommand, rt: &tokio::runtime::Runtime) -> Result<()> {
    use callgate::policy::{self, Severity};
    let load = |dir: &PathBuf| -> Result<(policy::Loaded, policy::Snapshot)> {
        policy::load_snapshot(dir).map_err(|findings| {
            for f in &findings {
                eprintln!("{f}");
            }
            anyhow::anyhow!("{} error(s) in {}", findings.len(), dir.display())
        })
    };
    match cmd {
        PolicyCommand::Test { dir, junit } => {
            let (loaded, snap) = load(&dir)?;
            let outcomes = policy::testing::run(&loaded, &snap);
            for o in &outcomes {
                match &o.failure {
                    None => println!("ok   {}: {}", o.file.display(), o.name),
                    Some(why) => println!("FAIL {}: {}: {why}", o.file.display(), o.name),
                }
            }
            let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            if let Some(path) = junit {
                let xml = policy::testing::junit(&outcomes).map_err(anyhow::Error::msg)?;
                std::fs::write(&path, xml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if failed > 0 {
                std::process::exit(1);
            }
        }
        PolicyCommand::Lint {
            dir,
            format,
            deny_warnings,
        } => {
            let findings = match policy::load_snapshot(&dir) {
                Ok((loaded, snap)) => policy::lint::lint(&loaded, &snap),
                Err(errors) => errors,
            };
            match format {
                OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
                OutputFormat::Text => {
                    for f in &findings {
                        println!("{f}");
                    }
                    let errors = findings
                        .iter()
                        .filter(|f| f.severity == Severity::Error)
                        .count();
                    println!("{errors} error(s), {} warning(s)", findings.len() - errors);
                }
            }
            let fail = findings
                .iter()
                .any(|f| f.severity == Severity::Error || deny_warnings);
            if fail {
                std::process::exit(1);
            }
        }
        PolicyCommand::Explain { dir, call, caller } => {
            let (_, snap) = load(&dir)?;
            let read = |p: &PathBuf| -> Result<serde_json::Value> {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", p.display()))
            };
            let call_json = read(&call)?;
            let caller: callgate::call::Caller = match &caller {
                Some(p) => serde_json::from_value(read(p)?)
                    .with_context(|| format!("{}: not a caller", p.display()))?,
                None => callgate::call::Caller::default(),
            };
            let the_call: callgate::call::Call = serde_json::from_value(call_json.clone())
                .with_context(|| format!("{}: needs \"function\"", call.display()))?;
            let service = match (
                call_json.get("service").and_then(|v| v.as_str()),
                call_json.get("destination").and_then(|v| v.as_str()),
            ) {
                (Some(name), _) => snap
                    .service(name)
                    .with_context(|| format!("no service named {name:?}"))?,
                (None, Some(dst)) => {
                    let (h, p) = policy::split_destination(dst).map_err(anyhow::Error::msg)?;
                    match snap.service_for(&h, p, None) {
                        Some(s) => s,
                        None => {
                            let d = snap.decide_unknown_destination();
                            println!(
                                "decision: {} (no service claims {dst}; unknown_destination)",
                                d.action
                            );
                            return Ok(());
                        }
                    }
                }
                (None, None) => bail!("{}: give \"service\" or \"destination\"", call.display()),
            };
            let (d, trace) = snap.explain(service, &the_call, &caller);
            println!("service {}, function {}", service.name, the_call.function);
            for t in &trace {
                println!(
                    "  {} {:<32} {}",
                    if t.matched { "→" } else { "·" },
                    t.rule,
                    t.why
                );
            }
            println!(
                "decision: {} by {} (mode {:?}, policy {}{})",
                d.action,
                d.rule.as_deref().unwrap_or("default"),
                d.mode,
                d.policy.commit.as_deref().unwrap_or(&d.policy.source),
                if d.policy.dirty { ", dirty" } else { "" }
            );
            if let Some(r) = &d.reason {
                println!("reason: {r}");
            }
            println!("obligations: {}", serde_json::to_string(&*d.obligations)?);
        }
        PolicyCommand::Sync {
            socket,
            allow_rollback,
        } => {
            let r: callgate::policy::store::SyncReport =
                rt.block_on(request(&socket, &Request::PolicySync { allow_rollback }))?;
            let commit = r.commit.as_deref().unwrap_or("-");
            let in_force = r.status.commit.as_deref().unwrap_or("-");
            match r.outcome.as_str() {
                "taken" => println!(
                    "taken: commit {commit} ({} services, {} rules{})",
                    r.status.services,
                    r.status.rules,
                    r.status
                        .git
                        .as_ref()
                        .and_then(|g| g.signer.as_deref())
                        .map(|s| format!(", signed by {s}"))
                        .unwrap_or_default()
                ),
                "unchanged" => println!("unchanged: commit {commit} is in force"),
                other => {
                    println!("{other}: commit {commit}; commit {in_force} stays in force");
                    for d in &r.detail {
                        println!("  {d}");
                    }
                    std::process::exit(1);
                }
            }
        }
        PolicyCommand::Reload { socket } => {
            let status: callgate::policy::store::ReloadStatus =
                rt.block_on(request(&socket, &Request::Reload))?;
            println!(
                "policy reloaded: {} services, {} rules, commit {}{}",
                status.services,
                status.rules,
                status.commit.as_deref().unwrap_or(&status.source),
                if status.dirty { " (dirty)" } else { "" }
            );
        }
    }
    Ok(())
}
