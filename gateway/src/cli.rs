//! The `callgate` subcommands, one file each (`main.rs` parses and dispatches), and what they
//! share: the control socket and the request they send the daemon over it.

pub mod approvals;
pub mod checkpoint;
pub mod demo;
pub mod enable;
pub mod install;
pub mod mcp;
pub mod netns;
pub mod policy;
pub mod records;
pub mod run;
pub mod status;
pub mod trust;
pub mod witness;

use std::path::PathBuf;

use anyhow::{Context, Result};
use callgate::{
    admin::{self, Request},
    config,
};
use clap::Args;

#[derive(Args)]
pub struct SocketArg {
    /// The daemon's control socket. Default: `control_socket` in the daemon's configuration
    /// file ($CALLGATE_CONFIG, else /etc/callgate/callgate.yaml), else /run/callgate/admin.sock.
    #[arg(long, env = "CALLGATE_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,
}

impl SocketArg {
    /// The socket the daemon listens on, as `callgate run` would choose it.
    pub fn path(&self) -> PathBuf {
        if let Some(p) = &self.control_socket {
            return p.clone();
        }
        /// Only the one key: the rest of the file is the daemon's business.
        #[derive(serde::Deserialize)]
        struct SocketOnly {
            control_socket: Option<PathBuf>,
        }
        let file = std::env::var_os("CALLGATE_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| config::DEFAULT_CONFIG.into());
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| yaml_serde::from_str::<SocketOnly>(&text).ok())
            .and_then(|f| f.control_socket)
            .unwrap_or_else(|| config::DEFAULT_CONTROL_SOCKET.into())
    }
}

pub async fn request<T: serde::de::DeserializeOwned>(
    socket: &SocketArg,
    req: &Request,
) -> Result<T> {
    let data = admin::call(&socket.path(), req).await?;
    serde_json::from_value(data).context("unexpected response from the daemon (version mismatch?)")
}
