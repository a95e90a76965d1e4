//! The control socket: a root-only unix socket speaking one JSON request and one JSON response
//! per line. The CLI's `enable`, `disable`, `status` and `approvals` go through it. The
//! optional HTTP admin listener ([`web`]) serves the approvals page.
pub mod login;
pub mod metrics;
pub mod pages;
pub mod web;

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{debug, warn};

use crate::{
    intercept::{Change, Enabled, Interceptor, Target},
    policy::{PolicyStore, store::ReloadStatus},
    telemetry::stats::{ConnSummary, Counters, Stats},
};

/// Longest request line accepted; a status request is a few dozen bytes.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot reach the callgate daemon at {path}: {source} (is `callgate run` running? is this the right --control-socket?)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("permission denied on {path}: the control socket is root-only")]
    Permission { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {path}: malformed response: {source}")]
    Protocol {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Daemon(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Enable {
        target: Target,
    },
    Disable {
        target: Target,
    },
    Status,
    Reload,
    /// One round with the policy's git remote (fetch, verify, compile, swap); with
    /// `allow_rollback`, a commit that does not descend from the last one taken too.
    PolicySync {
        #[serde(default)]
        allow_rollback: bool,
    },
    /// Pending approval requests, or (`all`) the recent ones too.
    Approvals {
        #[serde(default)]
        all: bool,
    },
    /// An approver's verdict on a held call.
    Answer {
        id: String,
        approve: bool,
        /// Who answers (the CLI user: the host's operator).
        approver: String,
        #[serde(default)]
        grant: Option<String>,
        #[serde(default)]
        comment: Option<String>,
    },
    Grants,
    Revoke {
        id: String,
    },
    /// A service's MCP tools as the gateway last saw them, as a pin file.
    McpSeen {
        service: String,
    },
    /// The poisoning checks' findings on a service's tools as last seen.
    McpAudit {
        service: String,
    },
    /// Pin a tool to its definition as last seen.
    McpAccept {
        service: String,
        tool: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Response {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

/// What `callgate status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub listeners: Vec<String>,
    pub cgroup_mount: String,
    pub policy: Option<ReloadStatus>,
    #[serde(default)]
    pub records: Option<crate::record::RecorderStatus>,
    /// OIDC providers and the state of their signing keys.
    #[serde(default)]
    pub identity: Vec<crate::identity::oidc::ProviderStatus>,
    #[serde(default)]
    pub approvals: Option<crate::approve::ApprovalsStatus>,
    /// Services that pin their MCP tools: refused tools and changes found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_pins: Vec<crate::mcp::pins::ServiceStatus>,
    pub enabled: Vec<Enabled>,
    /// The network namespaces the gateway listens in (the host's first).
    #[serde(default)]
    pub namespaces: Vec<crate::intercept::netns::NetnsStatus>,
    pub counters: Counters,
    /// Each data-path thread's open connections.
    #[serde(default)]
    pub lanes: Vec<u64>,
    /// Counters kept by the eBPF programs.
    pub kernel: BTreeMap<String, u64>,
    /// How pass-through connections are copied (in the kernel, or by the gateway and why).
    #[serde(default)]
    pub splice: Option<crate::intercept::splice::SpliceStatus>,
    /// Direct pass-through (`direct_pass_through: true`), when it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<crate::intercept::direct::DirectStatus>,
    pub recent: Vec<ConnSummary>,
    /// Workloads whose TLS clients refused the gateway's certificate (they do not trust its
    /// CA), with the command that fixes each.
    #[serde(default)]
    pub untrusting: Vec<crate::telemetry::untrusting::Untrusting>,
}

/// Everything the control socket serves from.
pub struct AdminInputs {
    pub interceptor: Arc<Interceptor>,
    pub stats: Arc<Stats>,
    pub listeners: Vec<String>,
    pub policy: Option<Arc<PolicyStore>>,
    pub recorder: Option<crate::record::Recorder>,
    pub verifier: Option<Arc<crate::identity::Verifier>>,
    pub approvals: Option<Arc<crate::approve::Approvals>>,
    /// MCP tool pins.
    pub pins: Arc<crate::mcp::pins::PinStore>,
    pub started: Instant,
}

/// Binds the control socket; the returned file holds `<path>.lock` (an exclusive `flock`)
/// for as long as it is open, so that two daemons starting at once cannot both take the
/// socket (the check for a live one and the bind are otherwise two steps).
pub fn bind(path: &Path) -> Result<(UnixListener, std::fs::File), AdminError> {
    use std::os::{fd::AsRawFd, unix::fs::OpenOptionsExt};
    let io_err = |source| AdminError::Io {
        path: path.into(),
        source,
    };
    let in_use = |why: &str| AdminError::Io {
        path: path.into(),
        source: io::Error::new(io::ErrorKind::AddrInUse, why.to_string()),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    // A stale socket from a killed daemon would make bind fail; a live one answers connect.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(in_use("another callgate daemon is answering on it"));
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err)?;
    // SAFETY: flock on a descriptor this function owns; released when the file closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(in_use("another callgate daemon is starting on it"));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok((listener, lock))
}

pub async fn serve(
    listener: UnixListener,
    inputs: Arc<AdminInputs>,
    mut shutdown: watch::Receiver<bool>,
) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = conn else { continue };
        // File mode 0600 already keeps others out; the peer check also covers a socket
        // directory with loose permissions.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
            other => {
                warn!(peer = ?other.map(|c| c.uid()), "control socket: refusing non-root peer");
                continue;
            }
        }
        let inputs = inputs.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &inputs).await {
                debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, inputs: &Arc<AdminInputs>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req, inputs).await,
            Err(e) => Response {
                ok: false,
                error: Some(format!("bad request: {e}")),
                data: serde_json::Value::Null,
            },
        };
        let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

async fn handle(req: Request, inputs: &Arc<AdminInputs>) -> Response {
    let result: Result<serde_json::Value, String> = match req {
        Request::Status => serde_json::to_value(status(inputs)).map_err(|e| e.to_string()),
        Request::Enable { target } => change(inputs, target, true).await,
        Request::Disable { target } => change(inputs, target, false).await,
        Request::Reload => reload(inputs).await,
        Request::PolicySync { allow_rollback } => policy_sync(inputs, allow_rollback).await,
        Request::Approvals { all } => match approvals(inputs) {
            Ok(a) => to_json(a.list_fleet(all).await),
            Err(e) => Err(e),
        },
        Request::Answer {
            id,
            approve,
            approver,
            grant,
            comment,
        } => answer(inputs, &id, approve, approver, grant, comment).await,
        Request::Grants => approvals(inputs).and_then(|a| to_json(a.grants())),
        Request::Revoke { id } => match approvals(inputs) {
            Ok(a) => a.revoke_fleet(&id).await.and_then(to_json),
            Err(e) => Err(e),
        },
        Request::McpSeen { service } => to_json(inputs.pins.pin_file(&service)),
        Request::McpAudit { service } => to_json(inputs.pins.audit_report(&service)),
        Request::McpAccept { service, tool } => {
            inputs.pins.accept(&service, &tool).and_then(to_json)
        }
    };
    match result {
        Ok(data) => Response {
            ok: true,
            error: None,
            data,
        },
        Err(e) => Response {
            ok: false,
            error: Some(e),
            data: serde_json::Value::Null,
        },
    }
}

/// The operator's verdict, given over the control socket.
async fn answer(
    inputs: &AdminInputs,
    id: &str,
    approve: bool,
    approver: String,
    grant: Option<String>,
    comment: Option<String>,
) -> Result<serde_json::Value, String> {
    let a = approvals(inputs)?;
    let grant = match grant.as_deref() {
        None => None,
        Some(g) => Some(
            crate::util::time::parse_duration(g)
                .ok_or_else(|| format!("--grant {g:?} is not a duration like 30m"))?,
        ),
    };
    let who = crate::approve::Approver {
        name: approver,
        groups: Vec::new(),
        operator: true,
    };
    to_json(a.answer(id, approve, &who, grant, comment).await?)
}

fn approvals(inputs: &AdminInputs) -> Result<&crate::approve::Approvals, String> {
    inputs
        .approvals
        .as_deref()
        .ok_or_else(|| "this gateway runs without a policy: no call is ever held".into())
}

fn to_json(v: impl Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

async fn change(
    inputs: &Arc<AdminInputs>,
    target: Target,
    enable: bool,
) -> Result<serde_json::Value, String> {
    let interceptor = inputs.interceptor.clone();
    // bpf(2) calls and `systemctl show` block; keep them off the runtime's workers.
    let res: Result<Change, String> = tokio::task::spawn_blocking(move || {
        if enable {
            interceptor.enable(&target)
        } else {
            interceptor.disable(&target)
        }
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?;
    serde_json::to_value(res?).map_err(|e| e.to_string())
}

async fn policy_sync(
    inputs: &Arc<AdminInputs>,
    allow_rollback: bool,
) -> Result<serde_json::Value, String> {
    let Some(store) = inputs.policy.clone() else {
        return Err("the daemon runs without a policy repository (--policies)".into());
    };
    let report = tokio::task::spawn_blocking(move || store.sync(true, allow_rollback))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the policy is a directory, not a git remote: use `callgate policy reload`")?;
    serde_json::to_value(report).map_err(|e| e.to_string())
}

async fn reload(inputs: &Arc<AdminInputs>) -> Result<serde_json::Value, String> {
    let Some(store) = inputs.policy.clone() else {
        return Err("the daemon runs without a policy repository (--policies)".into());
    };
    let res = tokio::task::spawn_blocking(move || store.reload().map(|()| store.status()))
        .await
        .map_err(|e| e.to_string())?;
    match res {
        Ok(status) => serde_json::to_value(status).map_err(|e| e.to_string()),
        Err(findings) => Err(format!(
            "policy rejected, the previous one stays in force:\n{}",
            findings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )),
    }
}

fn status(inputs: &AdminInputs) -> Status {
    Status {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_s: inputs.started.elapsed().as_secs(),
        listeners: inputs.listeners.clone(),
        cgroup_mount: inputs.interceptor.cgroup_mount().display().to_string(),
        policy: inputs.policy.as_ref().map(|p| p.status()),
        records: inputs.recorder.as_ref().map(|r| r.status()),
        identity: inputs
            .verifier
            .as_ref()
            .map(|v| v.status())
            .unwrap_or_default(),
        approvals: inputs.approvals.as_ref().map(|a| a.status()),
        mcp_pins: inputs
            .policy
            .as_ref()
            .map(|p| inputs.pins.status(&p.snapshot().services))
            .unwrap_or_default(),
        enabled: inputs.interceptor.enabled(),
        namespaces: inputs.interceptor.namespaces().status(),
        counters: inputs.stats.snapshot(),
        lanes: inputs.stats.lanes(),
        kernel: inputs
            .interceptor
            .counters()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        splice: Some(inputs.interceptor.splice_status()),
        direct: inputs.interceptor.direct().map(|d| d.status()),
        recent: inputs.stats.recent(),
        untrusting: inputs.stats.untrusting.snapshot(),
    }
}

/// The CLI side: sends one request, returns the response's data or the daemon's error.
pub async fn call(path: &Path, req: &Request) -> Result<serde_json::Value, AdminError> {
    let stream = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(path))
        .await
        .map_err(|_| AdminError::Connect {
            path: path.into(),
            source: io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => AdminError::Permission { path: path.into() },
            _ => AdminError::Connect {
                path: path.into(),
                source,
            },
        })?;
    let io_err = |source| AdminError::Io {
        path: path.into(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| io_err(io::Error::other(e)))?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io_err)?;
    let mut reply = String::new();
    let n = tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(read).read_line(&mut reply),
    )
    .await
    .map_err(|_| io_err(io::ErrorKind::TimedOut.into()))?
    .map_err(io_err)?;
    if n == 0 {
        return Err(AdminError::Permission { path: path.into() });
    }
    let response: Response =
        serde_json::from_str(&reply).map_err(|source| AdminError::Protocol {
            path: path.into(),
            source,
        })?;
    if response.ok {
        Ok(response.data)
    } else {
        Err(AdminError::Daemon(
            response.error.unwrap_or_else(|| "unknown error".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_daemon_per_control_socket() {
        let dir = std::env::temp_dir().join(format!("callgate-admin-{}", std::process::id()));
        let path = dir.join("admin.sock");
        let first = bind(&path).expect("the first daemon binds");
        // A live daemon answers on it.
        let err = bind(&path)
            .expect_err("a second daemon binds too")
            .to_string();
        assert!(err.contains("answering on it"), "{err}");
        // Two starting at once: the second gets past the connect check (as if the first had
        // not bound yet) but not past the lock.
        std::fs::remove_file(&path).expect("unlink");
        let err = bind(&path)
            .expect_err("a second daemon binds too")
            .to_string();
        assert!(
            err.contains("starting on it") && err.contains("admin.sock"),
            "{err}"
        );
        // Once the first is gone, a stale socket is no obstacle.
        drop(first);
        assert!(bind(&path).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
