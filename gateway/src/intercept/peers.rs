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
//! A connection routed out of the namespace it was dialled from may end in another namespace
//! of this host (a container on a bridge, the host from a container): every namespace the
//! gateway listens in is searched for a socket connected from this connection's address.
//! A namespace a workload's own user namespace owns (`unshare -Urn`, a rootless container) is
//! the workload's to route and NAT in as it likes, so no credential is sent from it at all.
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

use super::{Enabled, cgroup, netns::Namespaces};

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
    #[error(
        "the call to {dst} leaves from a network namespace a workload's user namespace owns, where it may route and NAT as it likes: the credential is not sent from it"
    )]
    UserNamespace { dst: SocketAddr },
}

/// Where the peer was found.
enum Found {
    /// On no socket of this host's namespaces the gateway knows: another host.
    Elsewhere,
    /// A socket made in this cgroup.
    Socket(u64),
    /// A socket that names no cgroup yet, or none where one must be.
    Pending,
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
        if self.namespaces.user_owned(netns) {
            return Err(PeerError::UserNamespace { dst });
        }
        let here = on_this_host(dst.ip(), local.ip());
        for _ in 0..LOOKUPS {
            match self.find(local, dst, netns, here).await? {
                Found::Elsewhere => return Ok(()),
                Found::Socket(cgroup) => return self.outside(cgroup, dst),
                // Not made yet (a pending request names no cgroup), or just gone.
                Found::Pending => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        Err(PeerError::Unknown {
            dst,
            reason: "the kernel names no socket for it".into(),
        })
    }

    /// Looks for the peer: in the namespace the connection was dialled from by the kernel's
    /// own lookup; routed out of it, in every other namespace the gateway listens in (a
    /// container on a bridge, the host from a container), as a socket whose remote address
    /// is this connection's local one.
    async fn find(
        &self,
        local: SocketAddr,
        dst: SocketAddr,
        netns: u64,
        here: bool,
    ) -> Result<Found, PeerError> {
        let failed = |e: std::io::Error| PeerError::Unknown {
            dst,
            reason: format!("sock_diag: {e}"),
        };
        let mut diag = self.namespaces.sock_diag(netns).await.map_err(failed)?;
        match diag.peer_of(local, dst).map_err(failed)? {
            Some(peer) if peer.cgroup_id != 0 => return Ok(Found::Socket(peer.cgroup_id)),
            Some(_) => return Ok(Found::Pending),
            None if here => return Ok(Found::Pending),
            None => {}
        }
        let cgroups = self.enabled_paths();
        let mut pending = false;
        for at in self.namespaces.searchable(netns, &cgroups) {
            let mut diag = match self.namespaces.sock_diag_of(at).await {
                Ok(d) => d,
                // The only process in it ended: so did its sockets, or another process
                // there made one and is found on the next look.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(failed(e)),
            };
            for peer in diag.connected_to(local).map_err(failed)? {
                if peer.cgroup_id != 0 {
                    return Ok(Found::Socket(peer.cgroup_id));
                }
                pending = true;
            }
        }
        Ok(if pending {
            Found::Pending
        } else {
            Found::Elsewhere
        })
    }

    fn enabled_paths(&self) -> Vec<PathBuf> {
        self.enabled
            .locked()
            .values()
            .map(|e| e.path.clone())
            .collect()
    }

    /// Cgroup `id` is none of the enabled ones nor below one.
    fn outside(&self, id: u64, dst: SocketAddr) -> Result<(), PeerError> {
        let enabled = self.enabled_paths();
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
