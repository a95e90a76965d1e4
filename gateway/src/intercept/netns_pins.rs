//! Holds open the network namespaces a policy names by inode (`caller.workload.netns`).
//!
//! The kernel gives a new namespace the lowest free inode number, so an inode names one
//! namespace only while that namespace lives: once it is gone, the next namespace made (by a
//! container runtime for another pod, or by any user with `unshare -Urn`) may get the same
//! number and, with it, whatever a rule allowed the first one. Holding a descriptor to each
//! namespace a policy names keeps it, and its inode, allocated for as long as the policy
//! names it, so that no later namespace can take the number. An inode no namespace has when
//! the policy loads is held by nothing, and a `netns:` condition naming it matches no
//! namespace (the namespace the kernel hands that number later could be anyone's); it is
//! looked for again at each reload.
//!
//! What this cannot cover: a named namespace that ended while the gateway was not running
//! (nothing held it then), whose inode a new namespace took before the gateway started.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::util::sync::LockExt;

/// Where named namespaces are bind-mounted (`ip netns add`, Docker), looked at before every
/// thread of every process.
const MOUNT_DIRS: [&str; 3] = ["/run/netns", "/var/run/netns", "/run/docker/netns"];

/// The namespaces held open, by inode.
#[derive(Default)]
pub struct NetnsPins {
    held: Mutex<BTreeMap<u64, File>>,
    /// One [`NetnsPins::hold`] at a time: the last to run is what stays.
    holding: Mutex<()>,
}

impl NetnsPins {
    /// Holds the namespaces with these inodes and lets go of the others. Returns the inodes
    /// no namespace has now (a `netns:` condition naming one matches nothing).
    ///
    /// The look through every thread runs without the lock that [`Self::holds`], on the data
    /// path, takes.
    pub fn hold(&self, wanted: &BTreeSet<u64>) -> Vec<u64> {
        let _one_at_a_time = self.holding.locked();
        let mut missing: BTreeSet<u64> = {
            let mut held = self.held.locked();
            held.retain(|inode, _| wanted.contains(inode));
            wanted
                .iter()
                .filter(|i| !held.contains_key(i))
                .copied()
                .collect()
        };
        if missing.is_empty() {
            return Vec::new();
        }
        // Every namespace file is on the one nsfs: a file elsewhere with the same inode
        // number (a bind-mount directory is on tmpfs) is not a namespace.
        let Some(nsfs) = fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev()) else {
            return missing.into_iter().collect();
        };
        let mut found = Vec::new();
        for path in candidates() {
            if missing.is_empty() {
                break;
            }
            let Ok(m) = fs::metadata(&path) else { continue };
            if m.dev() != nsfs || !missing.contains(&m.ino()) {
                continue;
            }
            // What was opened is what counts: the process may have exited, or its pid been
            // reused, between the look and the open.
            let Ok(f) = File::open(&path) else { continue };
            let Ok(opened) = f.metadata() else { continue };
            if opened.dev() == nsfs && missing.remove(&opened.ino()) {
                found.push((opened.ino(), f));
            }
        }
        self.held.locked().extend(found);
        missing.into_iter().collect()
    }

    /// Whether the namespace with `inode` is one the gateway holds: then that inode is this
    /// namespace's, and no other namespace can have it.
    pub fn holds(&self, inode: u64) -> bool {
        self.held.locked().contains_key(&inode)
    }
}

/// Namespace files to look at: the bind mounts, then each thread's (a thread may have entered
/// a namespace its process is not in).
fn candidates() -> impl Iterator<Item = PathBuf> {
    let mounts = MOUNT_DIRS.into_iter().flat_map(|d| entries(Path::new(d)));
    let threads = entries(Path::new("/proc"))
        .filter(|p| is_number(p))
        .flat_map(|p| entries(&p.join("task")))
        .map(|t| t.join("ns/net"));
    mounts.chain(threads)
}

fn entries(dir: &Path) -> impl Iterator<Item = PathBuf> + use<> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
}

fn is_number(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_the_gateways_own_namespace_and_lets_go_of_what_is_no_longer_named() {
        let Ok(own) = fs::metadata("/proc/self/ns/net").map(|m| m.ino()) else {
            return;
        };
        let pins = NetnsPins::default();
        // An inode no namespace has: reported, not held.
        let absent = u64::MAX;
        let missing = pins.hold(&BTreeSet::from([own, absent]));
        assert_eq!(missing, vec![absent]);
        assert!(pins.holds(own));
        assert!(!pins.holds(absent));
        assert!(pins.hold(&BTreeSet::new()).is_empty());
        assert!(!pins.holds(own));
    }
}
