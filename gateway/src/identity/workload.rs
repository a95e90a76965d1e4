//! The workload behind a connection, as far as the kernel told (pid, uid, gid, comm, cgroup)
//! and as people name it: the user name for the uid and the executable while the process is
//! still alive. Names are cached; the password database is not read per connection.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

/// Most uids remembered; a host has a few dozen in use.
const MAX_USERS: usize = 4096;

/// uid → user name, looked up once (through NSS, so LDAP/sssd users resolve too).
#[derive(Default)]
pub struct Users {
    cache: Mutex<HashMap<u32, Option<Arc<str>>>>,
}

impl Users {
    pub fn name(&self, uid: u32) -> Option<Arc<str>> {
        if let Some(hit) = self.cache.lock().ok()?.get(&uid) {
            return hit.clone();
        }
        let name: Option<Arc<str>> = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name.into());
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_USERS {
                cache.clear();
            }
            cache.insert(uid, name.clone());
        }
        name
    }
}

/// The executable of a process that is still running (it may have exited by now).
pub fn exe(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_root_and_this_process() {
        let users = Users::default();
        assert_eq!(users.name(0).as_deref(), Some("root"));
        assert_eq!(users.name(0).as_deref(), Some("root"), "cached");
        assert!(exe(std::process::id()).is_some());
    }
}
