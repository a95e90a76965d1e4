//! The one vocabulary of a call, from extraction to the record: what was called and by whom.
//! Every stage imports it; it imports none of them.

pub mod container;
pub mod number;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// A call as the extract stage produces it, as policy decides it and as the record keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Call {
    pub function: String,
    #[serde(default)]
    pub args: Json,
    /// Some of what the upstream may read arguments from could not be read (a multipart or
    /// binary body): every condition on the arguments is then unknown.
    #[serde(default)]
    pub partial: bool,
    /// How policy treats it. A call given to `explain` or a test case is governed.
    #[serde(skip)]
    pub role: Role,
    /// The JSON-RPC id (None for a notification, or for non-RPC calls).
    #[serde(skip)]
    pub rpc_id: Option<Json>,
    /// The JSON-RPC message as sent, to forward the allowed part of a batch.
    #[serde(skip)]
    pub message: Option<Json>,
}

/// What a call is to policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Role {
    /// Decided by policy.
    #[default]
    Governed,
    /// Protocol housekeeping (MCP `initialize`, `ping`, notifications, responses, lists):
    /// allowed, recorded.
    Session,
    /// MCP `tools/list`: allowed, and the answer is filtered to the tools the caller may call.
    ListTools,
}

/// Who is calling: the token's identity (if any) and the workload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Caller {
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub claims: Json,
    /// A token was presented and verified.
    #[serde(default)]
    pub authenticated: bool,
    /// Why a presented token was not accepted (`invalid_token: expired`).
    #[serde(default)]
    pub token_error: Option<String>,
    /// The provider (its name in `callgate.yaml`) that vouched for the token.
    #[serde(default)]
    pub provider: Option<String>,
    /// Shared with the connection that made the call: one per connection, not per call.
    #[serde(default)]
    pub workload: Option<Arc<Workload>>,
}

/// The process that made a call, as the kernel saw it at connect time and as policy, records
/// and `status` all see it: one type from the connection to the record. Every field is
/// optional because a policy test case names only what it matches on; the gateway fills what
/// the kernel told it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Process id (the kernel's tgid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The thread that called connect().
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The systemd unit that owns the cgroup, derived as systemd does: never a name below a
    /// delegation boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Under `user@UID.service`: the user manager's unit. The user names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_unit: Option<String>,
    /// The UID of the user manager that runs `user_unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_unit_uid: Option<u32>,
    /// cgroup path relative to the cgroup v2 mount, as `/proc/PID/cgroup` prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The cgroup's id (its inode), as the kernel reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The executable, read from `/proc` when the gateway took the connection in (the
    /// process may have exited by then, or exec'd another program: `comm`, pid, uid and
    /// cgroup are the kernel's at `connect()`, this is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The container (and pod) its cgroup belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<container::Container>,
    /// The inode of its network namespace (`readlink /proc/PID/ns/net`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    /// The gateway holds that namespace open because the policy names its inode, so the
    /// inode is this namespace's and not a later one's that the kernel gave the number of a
    /// named namespace that ended ([`crate::intercept::netns_pins`]). A `netns:` condition
    /// matches only then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub netns_held: bool,
}

impl Workload {
    /// What logs and messages call it: its command name, else its pid.
    pub fn comm_or_pid(&self) -> String {
        match (&self.comm, self.pid) {
            (Some(c), _) => c.clone(),
            (None, Some(p)) => format!("pid {p}"),
            (None, None) => "?".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Rest,
    Jsonrpc,
    Mcp,
    Grpc,
    #[default]
    Http,
}
