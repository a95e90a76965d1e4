//! `callgate approvals …`: list held calls and answer them over the control socket. The
//! socket is root-only, so whoever can use it is the host's operator and may answer any
//! request — except a call made under their own name.
use std::{io::Write, time::Duration};

use anyhow::{Result, bail};
use callgate::{
    admin::{
        Request,
        pages::{short, time},
    },
    approve::{self, Grant, State},
    util::time::now_ms,
    util::visible::{visible as v, visible_json},
};
use clap::Subcommand;

use super::{SocketArg, request};

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// Calls waiting for a verdict, newest first (with --all: answered ones too).
    List {
        /// Also show approved, denied, timed-out, cancelled and interrupted requests.
        #[arg(long)]
        all: bool,
        /// The requests as a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Show one request in full: caller, masked arguments, rule, verdict.
    Show {
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Approve a held call: its client gets the upstream's answer.
    Approve {
        id: String,
        /// Also let this caller's repeats of the call pass for this long (e.g. 30m), up to
        /// the rule's `grant`.
        #[arg(long)]
        grant: Option<String>,
        /// Recorded with the verdict.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Deny a held call: its client gets 403 (or its protocol's refusal) with the comment.
    Deny {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Grants in force, or revoke one.
    #[command(subcommand)]
    Grants(GrantsCommand),
}

#[derive(Subcommand)]
pub enum GrantsCommand {
    /// Grants in force.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// End a grant now: the caller's next call is held again.
    Revoke {
        id: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(clap::Args)]
pub struct Who {
    /// The name the verdict is recorded under. Default: the user behind sudo, else $USER, else
    /// the account running this command.
    #[arg(long = "as", value_name = "NAME")]
    name: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

impl Who {
    fn name(&self) -> Result<String> {
        let name = self
            .name
            .clone()
            .or_else(|| std::env::var("SUDO_USER").ok())
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|n| !n.trim().is_empty())
            .or_else(|| {
                nix::unistd::User::from_uid(nix::unistd::getuid())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            });
        match name {
            Some(n) => Ok(n),
            None => bail!("cannot tell who you are: pass --as NAME"),
        }
    }
}

pub fn run(cmd: ApprovalsCommand, rt: &tokio::runtime::Runtime) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        ApprovalsCommand::List { all, json, socket } => {
            let list: Vec<approve::Request> =
                rt.block_on(request(&socket, &Request::Approvals { all }))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else if list.is_empty() {
                writeln!(
                    out,
                    "{}",
                    if all {
                        "no approval requests"
                    } else {
                        "no calls are waiting for approval"
                    }
                )?;
            } else {
                table(&mut out, &list)?;
            }
        }
        ApprovalsCommand::Show { id, socket } => {
            let list: Vec<approve::Request> =
                rt.block_on(request(&socket, &Request::Approvals { all: true }))?;
            let Some(r) = list.into_iter().find(|r| r.id == id) else {
                bail!("no approval request {id} (try `callgate approvals list --all`)");
            };
            show(&mut out, &r)?;
        }
        ApprovalsCommand::Approve {
            id,
            grant,
            comment,
            who,
        } => {
            let r: approve::Request = rt.block_on(request(
                &who.socket,
                &Request::Answer {
                    id,
                    approve: true,
                    approver: who.name()?,
                    grant: grant.clone(),
                    comment,
                },
            ))?;
            write!(
                out,
                "approved {} ({}.{})",
                v(&r.id),
                v(&r.service),
                v(&r.function)
            )?;
            match grant {
                Some(g) => writeln!(out, "; calls like it from this caller pass for {g}")?,
                None => writeln!(out)?,
            }
        }
        ApprovalsCommand::Deny { id, comment, who } => {
            let r: approve::Request = rt.block_on(request(
                &who.socket,
                &Request::Answer {
                    id,
                    approve: false,
                    approver: who.name()?,
                    grant: None,
                    comment,
                },
            ))?;
            writeln!(
                out,
                "denied {} ({}.{})",
                v(&r.id),
                v(&r.service),
                v(&r.function)
            )?;
        }
        ApprovalsCommand::Grants(GrantsCommand::List { json, socket }) => {
            let grants: Vec<Grant> = rt.block_on(request(&socket, &Request::Grants))?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&grants)?)?;
            } else if grants.is_empty() {
                writeln!(out, "no grants in force")?;
            } else {
                writeln!(
                    out,
                    "{:<36} {:<32} {:<28} {:<10} {:>5} APPROVED BY",
                    "ID", "CALLER", "SERVICE.FUNCTION", "LEFT", "USES"
                )?;
                for g in &grants {
                    writeln!(
                        out,
                        "{:<36} {:<32} {:<28} {:<10} {:>5} {}{}",
                        v(&g.id),
                        v(&g.caller),
                        v(&format!("{}.{}", g.service, g.function)),
                        left(g.expires_at_ms),
                        g.uses,
                        v(&g.approved_by),
                        if g.args_digest.is_some() {
                            " (same arguments only)"
                        } else {
                            ""
                        }
                    )?;
                }
            }
        }
        ApprovalsCommand::Grants(GrantsCommand::Revoke { id, socket }) => {
            let g: Grant = rt.block_on(request(&socket, &Request::Revoke { id }))?;
            writeln!(
                out,
                "revoked grant {} ({} for {}.{})",
                v(&g.id),
                v(&g.caller),
                v(&g.service),
                v(&g.function)
            )?;
        }
    }
    Ok(())
}

fn table(out: &mut impl Write, list: &[approve::Request]) -> Result<()> {
    // Fleet mode lists every host's calls: which host holds each.
    let hosts = list.iter().any(|r| r.host.is_some());
    let host = |r: &approve::Request| {
        if hosts {
            format!("{:<16} ", v(r.host.as_deref().unwrap_or("-")))
        } else {
            String::new()
        }
    };
    writeln!(
        out,
        "{:<36} {}{:<11} {:<28} {:<34} {:<18} {:<9} RULE",
        "ID",
        if hosts {
            format!("{:<16} ", "HOST")
        } else {
            String::new()
        },
        "STATE",
        "SERVICE.FUNCTION",
        "CALLER",
        "REQUESTED",
        "EXPIRES"
    )?;
    for r in list {
        let expires = if r.state == State::Pending {
            left(r.expires_at_ms)
        } else {
            "-".into()
        };
        writeln!(
            out,
            "{:<36} {}{:<11} {:<28} {:<34} {:<18} {:<9} {}",
            v(&r.id),
            host(r),
            r.state.as_str(),
            v(&format!("{}.{}", r.service, r.function)),
            v(&r.caller.describe()),
            ago(r.requested_at_ms),
            expires,
            v(&r.rule)
        )?;
    }
    Ok(())
}

fn show(out: &mut impl Write, r: &approve::Request) -> Result<()> {
    let c = &r.caller;
    writeln!(out, "id:           {}", v(&r.id))?;
    writeln!(out, "state:        {}", r.state.as_str())?;
    if let Some(h) = &r.host {
        writeln!(out, "held on:      {}", v(h))?;
    }
    writeln!(out, "call:         {}.{}", v(&r.service), v(&r.function))?;
    writeln!(out, "destination:  {}", v(&r.destination))?;
    writeln!(
        out,
        "caller:       {}{}",
        v(&c.describe()),
        c.provider
            .as_deref()
            .map(|p| format!(" [token from {}; groups {}]", v(p), v(&c.groups.join(", "))))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "workload:     pid {} {} cgroup {}{}",
        c.pid.map_or("?".into(), |p| p.to_string()),
        v(c.comm.as_deref().unwrap_or("?")),
        v(c.cgroup.as_deref().unwrap_or("?")),
        c.unit
            .as_deref()
            .map(|u| format!(" unit {}", v(u)))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "rule:         {} (policy commit {})",
        v(&r.rule),
        v(r.policy_commit.as_deref().unwrap_or("-"))
    )?;
    writeln!(
        out,
        "approvers:    groups [{}] subjects [{}]; grants up to {}",
        v(&r.approvers.groups.join(", ")),
        v(&r.approvers.subjects.join(", ")),
        r.max_grant_s.map_or("none (once only)".into(), |s| {
            humantime::format_duration(Duration::from_secs(s)).to_string()
        })
    )?;
    writeln!(out, "requested:    {}", time(r.requested_at_ms))?;
    writeln!(out, "expires:      {}", time(r.expires_at_ms))?;
    if let Some(verdict) = &r.verdict {
        writeln!(
            out,
            "verdict:      {} by {} via {} at {}{}{}",
            if verdict.approved {
                "approved"
            } else {
                "denied"
            },
            v(&verdict.by),
            v(&verdict.via),
            time(verdict.at_ms),
            verdict
                .grant
                .as_deref()
                .map(|g| format!(" with grant {}", v(g)))
                .unwrap_or_default(),
            verdict
                .comment
                .as_deref()
                .map(|c| format!(": {}", v(c)))
                .unwrap_or_default()
        )?;
    }
    writeln!(
        out,
        "arguments (masked):\n{}",
        visible_json(&serde_json::to_string_pretty(&r.args)?)
    )?;
    Ok(())
}

fn ago(ms: u64) -> String {
    format!("{} ago", short(now_ms().saturating_sub(ms)))
}

fn left(ms: u64) -> String {
    short(ms.saturating_sub(now_ms()))
}
