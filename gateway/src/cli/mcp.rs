//! `callgate mcp …`: MCP tools over the control socket — write a service's pins into the
//! policy repository for review, accept one tool's changed definition on this gateway, or
//! report what the poisoning checks found in the tools the gateway has seen.
use std::path::PathBuf;

use anyhow::{Context, Result};
use callgate::{
    admin::Request, mcp::pins::AuditReport, policy::mcp::PinFile, util::visible::visible as v,
};
use clap::Subcommand;

use super::{SocketArg, request};

#[derive(Subcommand)]
pub enum McpCommand {
    /// Write `pins/SERVICE.yaml` in the policy repository from the tools the gateway has
    /// seen the service list (their definitions and digests), to review and commit.
    Pin {
        service: String,
        /// The policy repository.
        #[arg(long, env = "CALLGATE_POLICIES", default_value = ".")]
        policies: PathBuf,
        /// Print the pin file instead of writing it.
        #[arg(long)]
        stdout: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Report the poisoning checks' findings (invisible characters, instructions aimed at the
    /// model, URLs and e-mail addresses, overlong descriptions) on the service's tools as the
    /// gateway last saw them; exit 1 if any tool is flagged.
    Audit {
        service: String,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Pin one tool to its definition as the gateway last saw it (on this gateway, kept in
    /// its state directory): a changed or new tool is shown and callable again.
    Accept {
        service: String,
        tool: String,
        #[command(flatten)]
        socket: SocketArg,
    },
}

pub fn run(cmd: McpCommand, rt: &tokio::runtime::Runtime) -> Result<()> {
    match cmd {
        McpCommand::Pin {
            service,
            policies,
            stdout,
            socket,
        } => {
            let file: PinFile = rt.block_on(request(
                &socket,
                &Request::McpSeen {
                    service: service.clone(),
                },
            ))?;
            if file.tools.is_empty() {
                anyhow::bail!(
                    "the gateway has seen no tools of service {service:?}: list them through \
                     the gateway first (a client's tools/list)"
                );
            }
            let text = format!(
                "# MCP tool pins of service {service}, written by `callgate mcp pin`.\n\
                 # Review the definitions; a tool that no longer matches its sha256 is hidden\n\
                 # and its calls are refused.\n{}",
                yaml_serde::to_string(&file)?
            );
            if stdout {
                print!("{text}");
                return Ok(());
            }
            let dir = policies.join("pins");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(format!("{service}.yaml"));
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} ({} tools); review and commit it",
                path.display(),
                file.tools.len()
            );
        }
        McpCommand::Audit {
            service,
            json,
            socket,
        } => {
            let report: AuditReport = rt.block_on(request(
                &socket,
                &Request::McpAudit {
                    service: service.clone(),
                },
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.tools_seen.is_empty() {
                println!(
                    "the gateway has seen no tools of service {}: list them through the gateway first",
                    v(&service)
                );
            } else {
                println!(
                    "{}: {} tools seen, {} flagged",
                    v(&service),
                    report.tools_seen.len(),
                    report.flagged.len()
                );
                for (tool, findings) in &report.flagged {
                    for f in findings {
                        println!(
                            "  {}  {}  at {}: {}",
                            v(tool),
                            f.check,
                            v(&f.at),
                            v(&f.found)
                        );
                    }
                }
            }
            if !report.flagged.is_empty() {
                std::process::exit(1);
            }
        }
        McpCommand::Accept {
            service,
            tool,
            socket,
        } => {
            let pin: serde_json::Value = rt.block_on(request(
                &socket,
                &Request::McpAccept {
                    service: service.clone(),
                    tool: tool.clone(),
                },
            ))?;
            println!(
                "pinned {service}/{tool} to sha256 {} on this gateway; commit it with `callgate mcp pin {service}`",
                pin["sha256"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
