//! `callgate records …`: list, show, replay, verify and export the call log. Reads the records
//! directory directly, so it works with the daemon running or not.
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use callgate::record::query::{self, Filter, Stored};
use callgate::util::time::now_ms;
use callgate::util::visible::{visible, visible as v, visible_json};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Args)]
pub struct DirArg {
    /// The records directory (the daemon's state dir + `/records`).
    #[arg(
        long,
        env = "CALLGATE_RECORDS_DIR",
        default_value = "/var/lib/callgate/records"
    )]
    pub dir: PathBuf,
}

#[derive(Args, Default)]
pub struct FilterArgs {
    /// Only calls at or after this time: RFC 3339 (`2026-11-23T10:00:00Z`) or an age (`15m`, `2h`).
    #[arg(long)]
    since: Option<String>,
    /// Only calls at or before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    service: Option<String>,
    #[arg(long)]
    function: Option<String>,
    /// allow | deny | approve
    #[arg(long)]
    decision: Option<String>,
    /// OIDC subject, systemd unit or command name of the caller.
    #[arg(long)]
    caller: Option<String>,
}

#[derive(Subcommand)]
pub enum RecordsCommand {
    /// List recorded calls, oldest first.
    List {
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many (the newest ones).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// The records of every host of the fleet, read from the fleet database named in the
        /// daemon's configuration (`fleet.database`), newest first; `--host`, `--since`,
        /// `--until`, `--service`, `--function`, `--decision`, `--limit` and `--json` apply.
        #[arg(long)]
        fleet: bool,
        /// With `--fleet`: only this host's records.
        #[arg(long, requires = "fleet")]
        host: Option<String>,
        /// With `--fleet`: the daemon's configuration file.
        #[arg(long, env = "CALLGATE_CONFIG", default_value = callgate::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show one recorded call in full (masked, as stored).
    Show {
        id: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// The calls of one session (connection) in order, with their timing.
    Replay {
        session: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Walk the hash chain; exit 1 naming the first broken place of each segment.
    #[command(group(clap::ArgGroup::new("anchor").args(["checkpoint", "fleet"])))]
    Verify {
        /// Start at this sequence number (its segment's header is trusted).
        #[arg(long)]
        from: Option<u64>,
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        json: bool,
        /// Also prove that the log contains the tree this signed checkpoint (taken earlier,
        /// kept off the host) is of: a rolled-back, rewritten or forked log fails.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The verifier key (`<name>+<id>+<key>`, or a file holding it); default: the one
        /// stored beside the log, which trusts the host.
        #[arg(long)]
        key: Option<String>,
        /// With --checkpoint or --fleet: a witness's cosignature verifier key
        /// (`<name>+<id>+<key>`, or a file holding it) whose cosignature (tlog-cosignature
        /// v1) the checkpoint must carry; with --fleet, the largest checkpoint the witnesses
        /// cosigned is the one checked. Repeat for each witness.
        #[arg(long = "witness-key", requires = "anchor")]
        witness_key: Vec<String>,
        /// How many of the --witness-key witnesses must have cosigned (default: all).
        #[arg(long, requires = "witness_key")]
        quorum: Option<usize>,
        /// Check one host's records in the fleet database instead (`--host`, and `--key`:
        /// that host's verifier key, required, as the database is not trusted): the latest
        /// checkpoint shipped must be signed by the key, and the shipped records must make
        /// its root; the first altered, deleted or inserted record is named.
        #[arg(long, requires_all = ["host", "key"], conflicts_with_all = ["checkpoint", "from"])]
        fleet: bool,
        /// With `--fleet`: the host whose records are checked.
        #[arg(long, requires = "fleet")]
        host: Option<String>,
        /// With `--fleet`: the daemon's configuration file.
        #[arg(long, env = "CALLGATE_CONFIG", default_value = callgate::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List the signed checkpoints every host shipped to the fleet database (`--fleet`),
    /// largest first per host.
    Checkpoints {
        /// Read them from the fleet database named in the daemon's configuration (required:
        /// this host's latest checkpoint is `records checkpoint`).
        #[arg(long)]
        fleet: bool,
        /// Only this host's.
        #[arg(long)]
        host: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line (with the signed notes) instead of a table.
        #[arg(long)]
        json: bool,
        /// The daemon's configuration file.
        #[arg(long, env = "CALLGATE_CONFIG", default_value = callgate::config::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the latest signed checkpoint of the records' Merkle tree (C2SP tlog-checkpoint),
    /// with the cosignatures of the witnesses (`records.witnesses`) that cosigned it.
    Checkpoint {
        #[command(flatten)]
        dir: DirArg,
        /// The latest checkpoint a witness cosigned instead (it may be older than the latest),
        /// with every witness's cosignature of it.
        #[arg(long)]
        cosigned: bool,
    },
    /// Print the checkpoints' verifier key (signed-note verifier key format).
    Key {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print an inclusion proof of one record in a checkpoint's tree.
    Prove {
        id: String,
        #[command(flatten)]
        dir: DirArg,
        /// The signed checkpoint (default: the latest one in the records directory).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        key: Option<String>,
    },
    /// Check an export made with `--with-proofs` against a checkpoint and key (off the host).
    VerifyExport {
        /// The exported JSONL file.
        file: PathBuf,
        #[arg(long)]
        checkpoint: PathBuf,
        /// The verifier key, or a file holding it.
        #[arg(long)]
        key: String,
    },
    /// Write records for shipping elsewhere (Vector, Kafka, S3): one JSON object per line.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        #[command(flatten)]
        dir: DirArg,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only records with a sequence number at or above this (resume an export).
        #[arg(long)]
        from: Option<u64>,
        /// Attach to each record its inclusion proof in the checkpoint's tree (records after
        /// it are left out), for `records verify-export`.
        #[arg(long)]
        with_proofs: bool,
        /// The signed checkpoint for --with-proofs (default: the latest).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
}

fn parse_time(s: &str) -> Result<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
    }
    let age = humantime::parse_duration(s)
        .with_context(|| format!("{s:?} is neither an RFC 3339 time nor an age like 15m"))?;
    Ok(now_ms().saturating_sub(age.as_millis() as u64))
}

pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

impl FilterArgs {
    fn build(&self) -> Result<Filter> {
        Ok(Filter {
            since_ms: self.since.as_deref().map(parse_time).transpose()?,
            until_ms: self.until.as_deref().map(parse_time).transpose()?,
            service: self.service.clone(),
            function: self.function.clone(),
            decision: self.decision.clone(),
            caller: self.caller.clone(),
            ..Filter::default()
        })
    }
}

fn check_dir(dir: &DirArg) -> Result<()> {
    if !dir.dir.is_dir() {
        bail!(
            "no records directory at {} (is recording on? use --dir or CALLGATE_RECORDS_DIR)",
            dir.dir.display()
        );
    }
    Ok(())
}

fn caller_of(s: &Stored) -> String {
    query::caller_names(&s.record)
        .next()
        .unwrap_or_else(|| "-".into())
}

/// A record's JSON on exactly one line. A response is kept as the JSON text the upstream
/// sent, whose whitespace may hold line breaks: left in, an answer such as
/// `{"a":\n{"seq":1,…}\n}` would put a line that parses as a record of its own into an
/// export. Outside strings (inside them JSON escapes every control character) a line break is
/// whitespace, and a space means the same. U+0085, U+2028 and U+2029, which some readers
/// (Python's `splitlines`) also break lines at, can only be inside strings: they are written
/// as escapes, which mean the same character.
pub fn one_line(json: String) -> String {
    let breaks = |c: char| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}');
    if !json.contains(breaks) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            '\u{85}' => out.push_str("\\u0085"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The fleet section of the daemon's configuration at `config`: the database's URL and CA.
pub fn fleet_config(config: &Path) -> Result<callgate::config::FleetConfig> {
    let cfg = callgate::config::Config::load(config, true, callgate::config::Overrides::default())
        .with_context(|| format!("reading {}", config.display()))?;
    let Some(f) = cfg.fleet else {
        bail!(
            "{} has no fleet: section (fleet.database)",
            config.display()
        );
    };
    Ok(f)
}

/// `records list --fleet`: straight from the fleet database (no daemon needed).
fn list_fleet(
    config: &Path,
    host: Option<&str>,
    filter: &FilterArgs,
    limit: usize,
    json: bool,
) -> Result<()> {
    if filter.caller.is_some() {
        bail!("--caller does not apply with --fleet (the fleet's table is not indexed by caller)");
    }
    let time = |t: &Option<String>| -> Result<Option<i64>> {
        Ok(t.as_deref()
            .map(parse_time)
            .transpose()?
            .map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)))
    };
    let fleet_filter = callgate::fleet::FleetFilter {
        since_ms: time(&filter.since)?,
        until_ms: time(&filter.until)?,
        service: filter.service.clone(),
        function: filter.function.clone(),
        decision: filter.decision.clone(),
    };
    let f = fleet_config(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rows = rt.block_on(callgate::fleet::fleet_records(
        &f.database,
        f.ca.as_deref(),
        host,
        &fleet_filter,
        limit,
    ))?;
    // Oldest first, as the local list.
    rows.reverse();
    let mut out = std::io::stdout().lock();
    if json {
        for r in &rows {
            writeln!(out, "{}", one_line(serde_json::to_string(r)?))?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<16} {:<8} {:<24} {:<36} {:<28} {:<8} {:>6}",
        "HOST", "SEQ", "TIME", "ID", "SERVICE/FUNCTION", "DECISION", "STATUS"
    )?;
    for r in &rows {
        let s = |k: &str| r.record.get(k).and_then(|v| v.as_str()).unwrap_or("-");
        let call = format!(
            "{}/{}",
            r.record
                .get("service")
                .and_then(|v| v.as_str())
                .unwrap_or(s("destination")),
            s("function")
        );
        let time = r
            .record
            .get("time_ms")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let decision = r
            .record
            .pointer("/decision/action")
            .and_then(|v| v.as_str())
            .unwrap_or("-");
        let status = r
            .record
            .get("status")
            .and_then(|v| v.as_u64())
            .map_or("-".into(), |c| c.to_string());
        writeln!(
            out,
            "{:<16} {:<8} {:<24} {:<36} {:<28} {:<8} {:>6}",
            r.host,
            r.seq,
            format_time(time),
            s("id"),
            call,
            decision,
            status
        )?;
    }
    Ok(())
}

pub fn run(cmd: RecordsCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        RecordsCommand::List {
            dir,
            filter,
            limit,
            json,
            fleet,
            host,
            config,
        } => {
            if fleet {
                return list_fleet(&config, host.as_deref(), &filter, limit, json);
            }
            check_dir(&dir)?;
            let filter = filter.build()?;
            // Keep the newest `limit`: a ring over the scan.
            let mut ring = std::collections::VecDeque::with_capacity(limit.min(10_000));
            let mut total = 0u64;
            query::scan(&dir.dir, &filter, &mut |s| {
                total += 1;
                if ring.len() == limit {
                    ring.pop_front();
                }
                if limit > 0 {
                    ring.push_back(s);
                }
                true
            })?;
            if json {
                for s in &ring {
                    writeln!(out, "{}", one_line(serde_json::to_string(s)?))?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "{:<8} {:<24} {:<36} {:<22} {:<28} {:<8} {:<18} {:>6} {:>9}",
                "SEQ",
                "TIME",
                "ID",
                "SESSION",
                "SERVICE/FUNCTION",
                "DECISION",
                "CALLER",
                "STATUS",
                "MS"
            )?;
            for s in &ring {
                let r = &s.record;
                let call = format!(
                    "{}/{}",
                    r.service.as_deref().unwrap_or(&r.destination),
                    r.function.as_deref().unwrap_or("-")
                );
                writeln!(
                    out,
                    "{:<8} {:<24} {:<36} {:<22} {:<28} {:<8} {:<18} {:>6} {:>9.1}",
                    s.seq,
                    format_time(r.time_ms),
                    v(&r.id),
                    v(&r.session),
                    v(&call),
                    v(&r.decision.action),
                    v(&caller_of(s)),
                    r.status.map_or("-".into(), |c| c.to_string()),
                    r.latency_ms
                )?;
            }
            if total as usize > ring.len() {
                writeln!(
                    out,
                    "({} more; use --limit or filters)",
                    total as usize - ring.len()
                )?;
            }
        }
        RecordsCommand::Show { id, dir } => {
            check_dir(&dir)?;
            let filter = Filter {
                id: Some(id.clone()),
                ..Filter::default()
            };
            let mut found = None;
            query::scan(&dir.dir, &filter, &mut |s| {
                found = Some(s);
                false
            })?;
            let s = found.with_context(|| format!("no record with id {id}"))?;
            writeln!(out, "{}", visible_json(&serde_json::to_string_pretty(&s)?))?;
        }
        RecordsCommand::Replay { session, dir } => {
            check_dir(&dir)?;
            let filter = Filter {
                session: Some(session.clone()),
                ..Filter::default()
            };
            let mut start = None;
            let mut n = 0;
            let mut lines = Vec::new();
            query::scan(&dir.dir, &filter, &mut |s| {
                let t0 = *start.get_or_insert(s.record.time_ms);
                let r = &s.record;
                lines.push(format!(
                    "+{:>8.3}s  {} {}/{} → {}{}{}",
                    (r.time_ms.saturating_sub(t0)) as f64 / 1e3,
                    r.id,
                    r.service.as_deref().unwrap_or(&r.destination),
                    r.function.as_deref().unwrap_or("-"),
                    r.decision.action,
                    r.status.map_or(String::new(), |c| format!(" ({c})")),
                    r.args
                        .as_ref()
                        .map_or(String::new(), |a| format!("  args {a}")),
                ));
                n += 1;
                true
            })?;
            if n == 0 {
                bail!("no calls recorded for session {session}");
            }
            writeln!(out, "session {}: {n} call(s)", v(&session))?;
            for l in lines {
                writeln!(out, "{}", v(&l))?;
            }
        }
        RecordsCommand::Verify {
            from,
            dir,
            json,
            checkpoint,
            key,
            witness_key,
            quorum,
            fleet,
            host,
            config,
        } => {
            if fleet {
                let (Some(host), Some(key)) = (host, key) else {
                    bail!("--fleet needs --host and --key (that host's verifier key)");
                };
                let witnesses = crate::cli::checkpoint::Witnesses {
                    keys: witness_key,
                    quorum,
                };
                let ok = crate::cli::checkpoint::verify_fleet(
                    &config, &host, &key, &witnesses, &mut out,
                )?;
                if !ok {
                    out.flush()?;
                    std::process::exit(1);
                }
                return Ok(());
            }
            check_dir(&dir)?;
            let v = query::verify(&dir.dir, from)?;
            if let Some(cp) = checkpoint {
                let witnesses = crate::cli::checkpoint::Witnesses {
                    keys: witness_key,
                    quorum,
                };
                let ok = crate::cli::checkpoint::verify(
                    &dir.dir,
                    &cp,
                    key.as_deref(),
                    &witnesses,
                    &mut out,
                )?;
                if !ok || !v.ok() {
                    for p in &v.problems {
                        writeln!(out, "BROKEN: {}", visible(p))?;
                    }
                    out.flush()?;
                    std::process::exit(1);
                }
            }
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                for note in &v.notes {
                    writeln!(out, "note: {}", visible(note))?;
                }
                for p in &v.problems {
                    writeln!(out, "BROKEN: {}", visible(p))?;
                }
                let range = match (v.first_seq, v.last_seq) {
                    (Some(a), Some(b)) => format!(", seq {a}–{b}"),
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "{}: {} records in {} segment(s){range}",
                    if v.ok() { "verified" } else { "FAILED" },
                    v.records,
                    v.segments
                )?;
            }
            if !v.ok() {
                out.flush()?;
                std::process::exit(1);
            }
        }
        RecordsCommand::Checkpoints {
            fleet,
            host,
            limit,
            json,
            config,
        } => {
            if !fleet {
                bail!(
                    "records checkpoints lists the fleet database's: give --fleet (this host's latest is `records checkpoint`)"
                );
            }
            crate::cli::checkpoint::list_fleet(&config, host.as_deref(), limit, json, &mut out)?;
        }
        RecordsCommand::Checkpoint { dir, cosigned } => {
            check_dir(&dir)?;
            crate::cli::checkpoint::print_checkpoint(&dir.dir, cosigned)?;
        }
        RecordsCommand::Key { dir } => {
            check_dir(&dir)?;
            crate::cli::checkpoint::print_key(&dir.dir)?;
        }
        RecordsCommand::Prove {
            id,
            dir,
            checkpoint,
            key,
        } => {
            check_dir(&dir)?;
            crate::cli::checkpoint::prove(
                &dir.dir,
                &id,
                checkpoint.as_deref(),
                key.as_deref(),
                &mut out,
            )?;
        }
        RecordsCommand::VerifyExport {
            file,
            checkpoint,
            key,
        } => {
            if !crate::cli::checkpoint::verify_export(&file, &checkpoint, &key, &mut out)? {
                out.flush()?;
                std::process::exit(1);
            }
        }
        RecordsCommand::Export {
            format: ExportFormat::Jsonl,
            dir,
            filter,
            from,
            with_proofs,
            checkpoint,
            key,
        } => {
            check_dir(&dir)?;
            let mut filter = filter.build()?;
            filter.from_seq = from;
            if with_proofs {
                return crate::cli::checkpoint::export(
                    &dir.dir,
                    &filter,
                    checkpoint.as_deref(),
                    key.as_deref(),
                    &mut out,
                );
            }
            let mut err = None;
            query::scan(&dir.dir, &filter, &mut |s| match serde_json::to_string(&s)
                .map_err(anyhow::Error::from)
                .and_then(|line| writeln!(out, "{}", one_line(line)).map_err(anyhow::Error::from))
            {
                Ok(()) => true,
                Err(e) => {
                    err = Some(e);
                    false
                }
            })?;
            if let Some(e) = err {
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn an_exported_record_is_one_line_that_means_the_same() {
        let forged = "{\"seq\":1,\"response\":{\"a\":\n{\"seq\":99,\"id\":\"forged\"}\r\n,\"b\":\"x\u{2028}y\u{85}\"}}";
        let line = one_line(forged.to_string());
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(!line.contains(['\u{85}', '\u{2028}', '\u{2029}']));
        let a: serde_json::Value = serde_json::from_str(forged).unwrap();
        let b: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(a, b);
    }
}
