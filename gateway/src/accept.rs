//! The accept stage: listeners on 127.0.0.1 and [::1] that receive redirected connections, look
//! up each one's original destination and workload, and hand it to the forward stage.
//!
//! A connection with no redirect entry (someone dialled the listener directly) or whose
//! original destination is the listener itself is closed: the gateway never forwards to a
//! destination it cannot vouch for.
use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use gateway_common::Redirect;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tracing::{debug, info, warn};

use crate::{
    cgroup::{self, CgroupNames},
    config::{self, Config},
    forward,
    intercept::{self, Interceptor},
    record::{Record, RecordedDecision, Recorder},
    stats::{ActiveGuard, ConnSummary, Stats, WorkloadInfo},
};

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(
        "port {port} on {addr} is already in use (is another callgate running? pick another with --listen-port)"
    )]
    PortInUse { addr: std::net::IpAddr, port: u16 },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// What every connection handler needs, shared by all listeners.
pub struct ProxyInputs {
    pub cfg: Arc<Config>,
    pub interceptor: Arc<Interceptor>,
    pub stats: Arc<Stats>,
    pub names: CgroupNames,
    /// The call log; `None` when recording is off.
    pub recorder: Option<Recorder>,
    /// Makes session ids unique across restarts (connection ids start at 1 each run).
    pub session_prefix: String,
}

/// The bound listeners; bound before anything is spawned so that a port conflict is reported
/// before the gateway claims to be up.
pub struct Listeners {
    pub listeners: Vec<TcpListener>,
}

impl Listeners {
    pub fn bind(port: u16) -> Result<Self, AcceptError> {
        let mut listeners = vec![bind_one(SocketAddr::from((config::LISTEN_V4, port)))?];
        match bind_one(SocketAddr::from((config::LISTEN_V6, port))) {
            Ok(l) => listeners.push(l),
            // A host without IPv6 still gets IPv4 interception.
            Err(AcceptError::Bind { source, .. })
                if source.kind() == io::ErrorKind::AddrNotAvailable =>
            {
                warn!("IPv6 loopback is not available; IPv6 connections cannot be intercepted")
            }
            Err(e) => return Err(e),
        }
        Ok(Self { listeners })
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, AcceptError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| AcceptError::Bind { addr, source })?;
    socket
        .set_reuseaddr(true)
        .map_err(|source| AcceptError::Bind { addr, source })?;
    socket.bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => AcceptError::PortInUse {
            addr: addr.ip(),
            port: addr.port(),
        },
        _ => AcceptError::Bind { addr, source },
    })?;
    socket
        .listen(4096)
        .map_err(|source| AcceptError::Bind { addr, source })
}

/// Accepts until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<ProxyInputs>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let inputs = inputs.clone();
                tokio::spawn(async move { handle(stream, peer, &inputs).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(client: TcpStream, peer: SocketAddr, inputs: &ProxyInputs) {
    let stats = &inputs.stats;
    // Connection ids are the accept count: unique across listeners and easy to read.
    let id = stats.accepted.fetch_add(1, Relaxed) + 1;
    let Some(redirect) = inputs.interceptor.take(peer) else {
        stats.refused_no_entry.fetch_add(1, Relaxed);
        warn!(%peer, "connection to the listener without a redirect entry; closing");
        return;
    };
    let _active = ActiveGuard::new(stats);
    let started = Instant::now();
    let started_unix_ms = crate::record::now_ms();
    let dst = intercept::original_destination(&redirect);
    let workload = workload_info(&redirect, inputs);

    let unrecordable = inputs.recorder.as_ref().and_then(|r| r.ready().err());
    let refused_for_recording = unrecordable.is_some();
    let (transfer, outcome) = if dst.port() == inputs.cfg.listen_port && dst.ip().is_loopback() {
        stats.refused_loop.fetch_add(1, Relaxed);
        (
            forward::Transfer::default(),
            Err("refused: the original destination is the gateway itself".to_string()),
        )
    } else if let Some(e) = unrecordable {
        // Fail closed: nothing goes through that cannot be recorded.
        stats.refused_recording.fetch_add(1, Relaxed);
        (forward::Transfer::default(), Err(format!("refused: {e}")))
    } else {
        let _ = client.set_nodelay(true);
        match forward::connect(dst, inputs.cfg.connect_timeout).await {
            Ok(upstream) => {
                stats.forwarded.fetch_add(1, Relaxed);
                let (t, r) = forward::splice(client, upstream, inputs.cfg.idle_timeout).await;
                (t, r.map_err(|e| e.to_string()))
            }
            Err(e) => {
                stats.upstream_errors.fetch_add(1, Relaxed);
                (forward::Transfer::default(), Err(e.to_string()))
            }
        }
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let outcome = outcome.err().unwrap_or_else(|| "ok".into());
    if outcome == "ok" {
        info!(
            conn = id, pid = workload.pid, uid = workload.uid, comm = %workload.comm,
            cgroup = workload.cgroup.as_deref().unwrap_or("?"), dst = %dst,
            bytes_up = transfer.up, bytes_down = transfer.down, duration_ms, "connection closed"
        );
    } else {
        warn!(
            conn = id, pid = workload.pid, uid = workload.uid, comm = %workload.comm,
            cgroup = workload.cgroup.as_deref().unwrap_or("?"), dst = %dst,
            bytes_up = transfer.up, bytes_down = transfer.down, duration_ms, outcome = %outcome, "connection ended"
        );
    }
    debug!(conn = id, %peer, "peer");
    if let Some(recorder) = &inputs.recorder
        && !refused_for_recording
    {
        let mut rec = Record::new(format!("{}-{id}", inputs.session_prefix), dst.to_string());
        rec.time_ms = started_unix_ms;
        rec.protocol = "tcp".into();
        rec.workload = serde_json::to_value(&workload).ok();
        let refused = outcome.starts_with("refused");
        rec.decision = RecordedDecision {
            action: if refused { "deny" } else { "allow" }.into(),
            enforced: true,
            // The decision was to pass it through; an upstream failure is said in the reason.
            reason: Some(if outcome == "ok" {
                "tcp pass-through".into()
            } else {
                outcome.clone()
            }),
            ..RecordedDecision::default()
        };
        rec.latency_ms = duration_ms as f64;
        rec.bytes_in = transfer.up;
        rec.bytes_out = transfer.down;
        if let Err(e) = recorder.submit(rec) {
            stats.record_errors.fetch_add(1, Relaxed);
            warn!(conn = id, error = %e, "could not record a finished connection");
        }
    }
    stats.finished(ConnSummary {
        id,
        started_unix_ms,
        workload,
        original_dst: dst.to_string(),
        bytes_up: transfer.up,
        bytes_down: transfer.down,
        duration_ms,
        outcome,
    });
}

fn workload_info(r: &Redirect, inputs: &ProxyInputs) -> WorkloadInfo {
    let w = &r.workload;
    let comm_len = w.comm.iter().position(|&b| b == 0).unwrap_or(w.comm.len());
    let roots: Vec<_> = inputs
        .interceptor
        .enabled()
        .into_iter()
        .map(|e| e.path)
        .collect();
    let cgroup = inputs.names.lookup(w.cgroup_id, w.tgid, &roots);
    WorkloadInfo {
        pid: w.tgid,
        tid: w.pid,
        uid: w.uid,
        gid: w.gid,
        comm: String::from_utf8_lossy(&w.comm[..comm_len]).into_owned(),
        cgroup_id: w.cgroup_id,
        unit: cgroup.as_deref().and_then(cgroup::unit_of),
        cgroup: cgroup.map(|p| p.display().to_string()),
    }
}
