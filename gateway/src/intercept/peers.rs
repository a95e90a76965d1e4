//! Who answers a connection the gateway made. A credential the gateway injects must reach the
//! service the policy names, never a workload it governs: a governed workload that listens on
//! an address and port a credential-injecting service matches (any port of a loopback address
//! the service names without one, the service's own port while the real server is down, its
//! own container's address for a service matched by a CIDR) and then calls itself would
//! otherwise be handed the secret.
//!
//! Two guards. The one that holds is the kernel's: an upstream connection that carries a
//! credential opens with `CREDENTIAL_DSCP` on its handshake (the mark comes off once it is
//! connected: an accepted socket is its listener's cgroup's for life), and
//! `cgroup_skb/ingress` on the enabled cgroups drops such packets before a governed socket
//! receives them, wherever that socket is (another network namespace, behind a veth, a
//! bridge or address translation, handed over from another process after it was made): the
//! handshake never completes and the gateway's connect times out. The one that explains is
//! this module's: before such a connection is dialled to a loopback address, the listener
//! that would take it in the namespace it leaves from is found with `sock_diag` (the kernel's
//! own lookup for a SYN) and, when it was made in an enabled cgroup or below, the call is
//! answered 403 `credential_withheld` at once, saying whose it is.
//!
//! A network namespace owned by a user namespace other than the gateway's (`unshare -Urn`, a
//! rootless container) is its owner's to route, NAT and re-mark packets in: no credential is
//! sent from one.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use crate::util::sync::LockExt;

use super::{Enabled, cgroup, netns::Namespaces};

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

    /// Before a connection that will carry a credential is dialled to `dst` from namespace
    /// `netns`: refused when the namespace is a workload's own, or when the listener that
    /// would take it there (the kernel's own lookup, as for a SYN) was made in a governed
    /// cgroup. What this look cannot see (another namespace, routes or address translation
    /// between, a listener that comes later) is the kernel's guard's (see the module doc).
    pub async fn before_connect(&self, dst: SocketAddr, netns: u64) -> Result<(), PeerError> {
        if self.namespaces.user_owned(netns) {
            return Err(PeerError::UserNamespace { dst });
        }
        // The kernel's lookup takes a listener on 0.0.0.0 for one of any address, while a SYN
        // to an address that is not this namespace's never reaches it: looked at for loopback
        // destinations only, or a governed wildcard listener would withhold every tenant's
        // calls to remote servers on its port.
        let ip = dst.ip().to_canonical();
        if !ip.is_loopback() && !ip.is_unspecified() {
            return Ok(());
        }
        let failed = |e: std::io::Error| PeerError::Unknown {
            dst,
            reason: format!("sock_diag: {e}"),
        };
        let mut diag = self.namespaces.sock_diag(netns).await.map_err(failed)?;
        match diag.listener_for(dst).map_err(failed)? {
            Some(listener) if listener.cgroup_id != 0 => self.outside(listener.cgroup_id, dst),
            // Nothing listens there in this namespace: another host, or a refused connect.
            _ => Ok(()),
        }
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
