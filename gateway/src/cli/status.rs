//! `callgate status`: what the daemon is doing, as text for people or JSON for tools.
use anyhow::Result;
use callgate::{
    admin::{Request, Status},
    util::time::now_ms,
    util::visible::visible as v,
};
use clap::Args;

use super::{SocketArg, request};

#[derive(Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn run(a: &StatusArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let status: Status = rt.block_on(request(&a.socket, &Request::Status))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}

fn print_status(s: &Status) {
    println!("callgate {} (pid {}, up {}s)", s.version, s.pid, s.uptime_s);
    println!("listeners:     {}", s.listeners.join(", "));
    println!("cgroup mount:  {}", s.cgroup_mount);
    match &s.policy {
        None => println!("policy:        (none; run with --policies DIR)"),
        Some(p) => {
            println!(
                "policy:        {} ({} services, {} rules, commit {}{})",
                v(&p.dir),
                p.services,
                p.rules,
                v(p.commit.as_deref().unwrap_or(&p.source)),
                if p.dirty { ", dirty" } else { "" }
            );
            if let Some(g) = &p.git {
                println!(
                    "  git {} {} every {}s, signed by {}",
                    v(&g.url),
                    v(&g.git_ref),
                    g.poll_s,
                    v(g.signer.as_deref().unwrap_or("-"))
                );
                if let Some(e) = &g.fetch_error {
                    println!(
                        "  last fetch FAILED ({} failures so far; retrying): {}",
                        g.fetch_failures,
                        v(e)
                    );
                }
                if let Some(r) = &g.refused {
                    println!(
                        "  commit {} REFUSED ({}), the commit above stays in force:",
                        v(&r.commit),
                        v(&r.reason)
                    );
                    for e in &r.errors {
                        println!("    {}", v(e));
                    }
                }
            } else if let Some(errors) = &p.last_error {
                println!("  last reload FAILED (the previous policy stays in force):");
                for e in errors {
                    println!("    {}", v(e));
                }
            }
        }
    }
    match &s.records {
        None => println!("records:       off"),
        Some(r) => {
            println!(
                "records:       {} ({:?}; {} written, durable to seq {}, backlog {} ({} KiB), {} refused{})",
                v(&r.dir),
                r.durability,
                r.written,
                r.durable_seq,
                r.backlog,
                r.backlog_bytes / 1024,
                r.refused,
                if r.truncated_bytes > 0 {
                    format!(", {} torn bytes cut at start", r.truncated_bytes)
                } else {
                    String::new()
                }
            );
            if let Some(why) = &r.failing {
                println!("  FAILING, new calls are refused: {}", v(why));
            }
            if r.witness_quorum > 0 {
                println!(
                    "  witness quorum {}: size {} cosigned by a quorum",
                    r.witness_quorum, r.quorum_size
                );
            }
            for w in &r.witnesses {
                let when = match w.last_success_ms {
                    Some(ms) => format!(
                        ", last cosigned {}s ago",
                        callgate::util::time::now_ms().saturating_sub(ms) / 1000
                    ),
                    None => String::new(),
                };
                println!(
                    "  witness {}: cosigned size {}{when}{}{}",
                    v(&w.url),
                    w.size,
                    if w.bad_cosignatures > 0 {
                        format!(", {} bad cosignature(s) refused", w.bad_cosignatures)
                    } else {
                        String::new()
                    },
                    match &w.last_error {
                        Some(e) => format!("; LAST ATTEMPT FAILED: {}", v(e)),
                        None => String::new(),
                    }
                );
            }
        }
    }
    for p in &s.identity {
        let keys = match (p.usable, p.keys_age_s) {
            (true, Some(age)) => format!("{} keys, fetched {age}s ago", p.keys),
            (false, Some(age)) => format!("KEYS EXPIRED ({age}s old): its tokens are refused"),
            (_, None) => "NO KEYS: its tokens are refused".into(),
        };
        println!("identity:      {} {} ({keys})", v(&p.name), v(&p.issuer));
        if let Some(e) = &p.last_error {
            println!("  last fetch failed: {}", v(e));
        }
        if let Some(since) = p.failing_since_ms {
            println!(
                "  unreachable since {} ({} fetches in a row failed, {} of {} in all)",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(since)
                ),
                p.failing_fetches,
                p.failures,
                p.fetches
            );
        }
    }
    if let Some(a) = &s.approvals {
        println!(
            "approvals:     {} pending, {} grants in force{}",
            a.pending,
            a.grants,
            if a.pending > 0 {
                " (see `callgate approvals list`)"
            } else {
                ""
            }
        );
        if let Some(w) = &a.webhook {
            println!(
                "  webhook {}: {} delivered, {} retries, {} lost",
                v(&w.url),
                w.delivered,
                w.retries,
                w.lost
            );
        }
        if let Some(f) = &a.fleet {
            if f.connected {
                println!(
                    "  fleet: host {} on {} (schema {}), connected",
                    v(&f.host),
                    v(&f.database),
                    f.schema_version
                );
            } else {
                let since = f
                    .down_since_ms
                    .map(|t| format!(" for {}s", now_ms().saturating_sub(t) / 1000))
                    .unwrap_or_default();
                println!(
                    "  fleet: host {} on {}: UNREACHABLE{since} ({}); new approvals are refused",
                    v(&f.host),
                    v(&f.database),
                    v(f.error.as_deref().unwrap_or("?"))
                );
            }
            match &f.rate_lease {
                Some(l) if l.expires_in_ms > 0 => println!(
                    "  fleet-wide rate limits: this host's share 1/{} (lease {:.1}s more)",
                    l.hosts,
                    l.expires_in_ms as f64 / 1000.0
                ),
                _ => println!(
                    "  fleet-wide rate limits: no lease on the fleet's rate; their calls are refused"
                ),
            }
            let q = &f.quota_blocks;
            println!(
                "  fleet-wide quotas: blocks of {} keys held, {} counts reserved, {} unused ({} blocks taken, {} counts given back)",
                q.keys, q.reserved, q.unused, q.blocks_taken, q.counts_returned
            );
        }
        match &a.fleet_trust {
            Some(t) if t.sealed => println!(
                "  fleet trust: sealed ({} trusted keys); refused from the database: {} verdicts, {} grants, {} requests",
                t.trusted_keys, t.refused_verdicts, t.refused_grants, t.refused_requests
            ),
            Some(_) => println!(
                "  fleet trust: database trusted (no fleet.trusted_keys: whoever can write to the database can approve calls)"
            ),
            None => {}
        }
    }
    if s.enabled.is_empty() {
        println!("enabled:       (none; try `callgate enable <cgroup>`)");
    } else {
        println!("enabled:");
        for e in &s.enabled {
            let unit = e
                .unit
                .as_deref()
                .map(|u| format!(" [{}]", v(u)))
                .unwrap_or_default();
            println!("  {}{unit} (id {})", v(&e.path.display().to_string()), e.id);
        }
    }
    super::netns::print_namespaces(&s.namespaces);
    let c = &s.counters;
    println!(
        "connections:   {} accepted, {} forwarded, {} active, {} upstream errors, {} without entry, {} loops refused",
        c.accepted, c.forwarded, c.active, c.upstream_errors, c.refused_no_entry, c.refused_loop
    );
    if s.lanes.len() > 1 {
        let lanes: Vec<String> = s.lanes.iter().map(u64::to_string).collect();
        println!("data threads:  {} open connections each", lanes.join(" / "));
    }
    println!("bytes:         {} up, {} down", c.bytes_up, c.bytes_down);
    let kernel: Vec<String> = s.kernel.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("kernel:        {}", kernel.join(" "));
    if let Some(d) = &s.direct {
        println!(
            "pass-through:  direct, recorded from the kernel ({} open{})",
            d.open,
            if d.vouched {
                ""
            } else {
                "; not vouched for now: new connections go through the gateway"
            }
        );
    } else if let Some(sp) = &s.splice {
        match &sp.mode {
            callgate::intercept::splice::SpliceMode::Kernel => println!(
                "pass-through:  spliced in the kernel ({} sockets spliced now)",
                sp.sockets
            ),
            callgate::intercept::splice::SpliceMode::Copy { reason } => println!(
                "pass-through:  copied by the gateway (the kernel splice could not be set up: {})",
                v(reason)
            ),
        }
    }
    if !s.untrusting.is_empty() {
        println!("NOT TRUSTING THE GATEWAY'S CA (their HTTPS calls fail):");
        for u in &s.untrusting {
            println!(
                "  {} (exe {}, uid {}): {} connections refused, last: {}",
                v(&u.workload),
                v(u.exe.as_deref().or(u.comm.as_deref()).unwrap_or("?")),
                opt(u.uid),
                u.refused,
                v(&u.last)
            );
            println!("    fix: {}", v(&u.fix));
        }
    }
    if !s.recent.is_empty() {
        println!("recent connections:");
        for r in s.recent.iter().rev().take(20) {
            println!(
                "  #{} pid {} ({}) uid {} {} -> {}  {}B up {}B down {}ms  {}",
                r.id,
                opt(r.workload.pid),
                v(r.workload.comm.as_deref().unwrap_or("?")),
                opt(r.workload.uid),
                v(r.workload.cgroup.as_deref().unwrap_or("?")),
                r.original_dst,
                r.bytes_up,
                r.bytes_down,
                r.duration_ms,
                v(&r.outcome)
            );
        }
    }
}

/// A number the kernel may not have told, as `?` when absent.
fn opt(n: Option<u32>) -> String {
    n.map_or_else(|| "?".into(), |n| n.to_string())
}
