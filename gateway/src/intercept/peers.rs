//! Who answers a connection the gateway made. A credential the gateway injects must reach the
//! service the policy names, never a workload it governs: a governed workload that listens on
//! an address and port a credential-injecting service matches (any port of a loopback address
//! the service names without one, or the service's own port while the real server is down)
//! and then calls itself would otherwise be handed the secret. Before such a call goes on an
//! upstream connection, the socket at its other end is found by the kernel's `sock_diag`
//! lookup of the connection's four addresses in the namespace it was dialled from; the cgroup
//! that socket was made in (an accepted socket keeps its listener's) is then looked up among
//! the enabled cgroups and their subtrees. A peer on another host has no socket here.
//!
//! It fails closed: a peer on this host the kernel does not name, or a cgroup that cannot be
//! resolved, withholds the credential too.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::util::sync::LockExt;

use super::{Enabled, cgroup, netns::Namespaces, sockdiag::SockDiag};

/// How many times the peer is looked up while the kernel has not made its socket yet (the
/// handshake's last step is still in its backlog), a millisecond apart.
const LOOKUPS: u32 = 20;

/// Why a connection's peer may not receive a credential.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "{dst} is answered by a process in cgroup {cgroup}, which the gateway governs: the credential is not sent to a governed workload"
    )]
    Governed { dst: SocketAddr, cgroup: String },
    #[error("cannot tell who answers {dst} ({reason}): the credential is not sent")]
    Unknown { dst: SocketAddr, reason: String },
}

/// The lookup, shared by every data-path thread (cheap to clone).
#[derive(Clone)]
pub struct Peers {
    namespaces: Arc<Namespaces>,
    mount: PathBuf,
    enabled: Arc<Mutex<BTreeMap<u64, Enabled>>>,
}

impl Peers {
    pub(super) fn new(
        namespaces: Arc<Namespaces>,
        mount: PathBuf,
        enabled: Arc<Mutex<BTreeMap<u64, Enabled>>>,
    ) -> Self {
        Self {
            namespaces,
            mount,
            enabled,
        }
    }

    /// Whether the peer of `local` → `dst`, a connection dialled from namespace `netns`, is
    /// outside every governed cgroup.
    pub async fn check(
        &self,
        local: SocketAddr,
        dst: SocketAddr,
        netns: u64,
    ) -> Result<(), PeerError> {
        let unknown = |reason: String| PeerError::Unknown { dst, reason };
        let here = on_this_host(dst.ip(), local.ip());
        let mut diag: SockDiag = self
            .namespaces
            .sock_diag(netns)
            .await
            .map_err(|e| unknown(format!("sock_diag: {e}")))?;
        for _ in 0..LOOKUPS {
            match diag
                .peer_of(local, dst)
                .map_err(|e| unknown(format!("sock_diag: {e}")))?
            {
                None if !here => return Ok(()),
                Some(peer) if peer.cgroup_id != 0 => return self.outside(peer.cgroup_id, dst),
                // Not made yet (a pending request names no cgroup), or just gone.
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        Err(unknown("the kernel names no socket for it".into()))
    }

    /// Cgroup `id` is none of the enabled ones nor below one.
    fn outside(&self, id: u64, dst: SocketAddr) -> Result<(), PeerError> {
        let enabled: Vec<PathBuf> = self
            .enabled
            .locked()
            .values()
            .map(|e| e.path.clone())
            .collect();
        if enabled.is_empty() {
            return Ok(());
        }
        let path = cgroup::path_of_id(&self.mount, id).map_err(|e| PeerError::Unknown {
            dst,
            reason: format!("cgroup {id}: {e}"),
        })?;
        match enabled.iter().find(|e| path.starts_with(e)) {
            None => Ok(()),
            Some(_) => Err(PeerError::Governed {
                dst,
                cgroup: path.strip_prefix(&self.mount).map_or_else(
                    |_| path.display().to_string(),
                    |p| format!("/{}", p.display()),
                ),
            }),
        }
    }
}

/// A connection from `local` to `dst` stays on this host: a loopback or unspecified
/// destination, or one the kernel routed from the same address (a route to one of the host's
/// own addresses takes that address as its source).
fn on_this_host(dst: IpAddr, local: IpAddr) -> bool {
    let canonical = |ip: IpAddr| ip.to_canonical();
    let (dst, local) = (canonical(dst), canonical(local));
    dst.is_loopback() || dst.is_unspecified() || dst == local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_on_this_host() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(on_this_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(on_this_host(ip("127.5.6.7"), ip("127.0.0.1")));
        assert!(on_this_host(ip("::ffff:127.0.0.1"), ip("::1")));
        assert!(on_this_host(ip("0.0.0.0"), ip("127.0.0.1")));
        assert!(on_this_host(ip("10.1.2.3"), ip("10.1.2.3")));
        assert!(on_this_host(ip("::ffff:10.1.2.3"), ip("10.1.2.3")));
        assert!(!on_this_host(ip("10.1.2.3"), ip("10.1.2.9")));
        assert!(!on_this_host(ip("2001:db8::1"), ip("2001:db8::2")));
    }
}
