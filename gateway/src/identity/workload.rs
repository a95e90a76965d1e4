//! The workload behind a connection, as far as the kernel told (pid, uid, gid, comm, cgroup)
//! and as people name it: the user name for the uid, the systemd unit that owns the cgroup
//! (derived as systemd derives it, see [`SystemdUnits`]) and the executable while the process
//! is still alive. Names are cached; the password database is not read per connection.
use std::{
    collections::HashMap,
    path::Path,
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

/// The executable of a process that is still running (it may have exited by now), as text
/// (a name that is not UTF-8 has its invalid bytes replaced, as `Path::display` does). Read
/// for every intercepted connection: the path is put together without the formatter.
pub fn exe(pid: u32) -> Option<String> {
    let mut path = String::with_capacity(24);
    path.push_str("/proc/");
    path.push_str(itoa::Buffer::new().format(pid));
    path.push_str("/exe");
    let exe = std::fs::read_link(path).ok()?.into_os_string();
    Some(
        exe.into_string()
            .unwrap_or_else(|exe| exe.to_string_lossy().into_owned()),
    )
}

/// The command name of thread `tid` of process `tgid`, now (`None` once either is gone).
pub fn thread_comm(tgid: u32, tid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{tgid}/task/{tid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_string())
}

/// Unit types that own cgroups of their own (slices aside).
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// The systemd units a cgroup belongs to, derived as systemd derives them
/// (`cg_path_get_unit`, `cg_path_get_user_unit`): leading `*.slice` components are slices;
/// the first component after them must be a unit name, and that unit owns the cgroup and
/// everything below it. Names below the owning unit are inside its subtree, which the unit
/// may have delegated (`Delegate=`, every `user@UID.service`): whoever the subtree was
/// delegated to creates them, so they never rename the unit. The user manager's own units
/// (`user@UID.service/app.slice/x.service`) are reported apart, as systemd does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemdUnits {
    /// The unit that owns the cgroup (`nginx.service`, `user@1000.service`).
    pub unit: Option<String>,
    /// Under `user@UID.service`: the user manager's unit (`app.slice/x.service` → `x.service`),
    /// which the user creates and names.
    pub user_unit: Option<String>,
    /// The UID of the user manager (`user@UID.service`) that runs `user_unit`.
    pub user_unit_uid: Option<u32>,
}

impl SystemdUnits {
    /// The units of `cgroup`, a path relative to the cgroup v2 mount (with or without a
    /// leading `/`, as `/proc/PID/cgroup` prints it).
    pub fn of(cgroup: &str) -> Self {
        let mut parts = cgroup.split('/').filter(|c| !c.is_empty());
        let Some(unit) = owning_unit(&mut parts) else {
            return Self::default();
        };
        let user_unit_uid = user_manager_uid(unit);
        let user_unit = user_unit_uid
            .and_then(|_| owning_unit(&mut parts))
            .map(str::to_string);
        Self {
            unit: Some(unit.to_string()),
            user_unit_uid: user_unit.as_ref().and(user_unit_uid),
            user_unit,
        }
    }

    /// The units of the cgroup at absolute path `path` under the cgroup v2 mount `mount`.
    pub fn of_path(mount: &Path, path: &Path) -> Self {
        path.strip_prefix(mount)
            .ok()
            .and_then(Path::to_str)
            .map(Self::of)
            .unwrap_or_default()
    }
}

/// Skips slices, then the unit: what systemd's `skip_slices` + `cg_path_decode_unit` give.
fn owning_unit<'p>(parts: &mut impl Iterator<Item = &'p str>) -> Option<&'p str> {
    let first = parts.find(|c| !is_slice(c))?;
    is_unit(first).then_some(first)
}

/// How many leading components of `cgroup` lie above or at a delegation boundary: the
/// slices and the owning unit. Components past that are named by whoever the unit's subtree
/// belongs to (`None` when the path has no systemd unit, where nothing is known).
pub fn systemd_owned_depth(cgroup: &str) -> Option<usize> {
    let mut depth = 0;
    for c in cgroup.split('/').filter(|c| !c.is_empty()) {
        depth += 1;
        if is_slice(c) {
            continue;
        }
        return is_unit(c).then_some(depth);
    }
    None
}

/// `user@UID.service` → UID.
pub fn user_manager_uid(unit: &str) -> Option<u32> {
    unit.strip_prefix("user@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

pub fn is_slice(name: &str) -> bool {
    name.strip_suffix(".slice")
        .is_some_and(|p| !p.is_empty() && valid_unit_chars(p))
}

/// A unit name systemd would accept for a cgroup-owning unit: `prefix[@instance].type`.
pub fn is_unit(name: &str) -> bool {
    name.len() <= 255
        && UNIT_SUFFIXES.iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|p| {
                let prefix = p.split_once('@').map_or(p, |(pre, _)| pre);
                !prefix.is_empty() && valid_unit_chars(p)
            })
        })
}

fn valid_unit_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The executable's text is what `Path::display` gave for it, and a process that is gone
    /// has none.
    #[test]
    fn exe_is_the_running_binary_as_text() {
        let me = std::env::current_exe().expect("the test binary's path");
        assert_eq!(exe(std::process::id()), Some(me.display().to_string()));
        assert_eq!(exe(u32::MAX), None);
    }

    #[test]
    fn units_as_systemd_derives_them() {
        /// cgroup → (unit, user unit, user manager's uid).
        type Row<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<u32>);
        let table: [Row; 16] = [
            (
                "/system.slice/nginx.service",
                Some("nginx.service"),
                None,
                None,
            ),
            (
                "system.slice/nginx.service/",
                Some("nginx.service"),
                None,
                None,
            ),
            // A delegated subtree never renames its unit.
            (
                "/system.slice/runner.service/billing-agent.service",
                Some("runner.service"),
                None,
                None,
            ),
            (
                "/system.slice/docker-1.scope/x.slice/y.service",
                Some("docker-1.scope"),
                None,
                None,
            ),
            ("/init.scope", Some("init.scope"), None, None),
            (
                "/system.slice/var-lib.mount",
                Some("var-lib.mount"),
                None,
                None,
            ),
            (
                "/system.slice/getty@tty1.service",
                Some("getty@tty1.service"),
                None,
                None,
            ),
            // The user manager's units are user units, with the uid of their manager.
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/billing-agent.service",
                Some("user@1000.service"),
                Some("billing-agent.service"),
                Some(1000),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/billing-agent.service/sub/x.service",
                Some("user@1000.service"),
                Some("billing-agent.service"),
                Some(1000),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                Some("user@1000.service"),
                Some("init.scope"),
                Some(1000),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service",
                Some("user@1000.service"),
                None,
                None,
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some("session-3.scope"),
                None,
                None,
            ),
            // Not under a unit: no unit at all, whatever names follow.
            (
                "/callgate-1/x.slice/user@4242.service/app.slice/billing-agent.service",
                None,
                None,
                None,
            ),
            ("/rt2/trusted", None, None, None),
            ("/user.slice", None, None, None),
            ("/system.slice/.service", None, None, None),
        ];
        for (path, unit, user_unit, uid) in table {
            let u = SystemdUnits::of(path);
            assert_eq!(u.unit.as_deref(), unit, "{path}");
            assert_eq!(u.user_unit.as_deref(), user_unit, "{path}");
            assert_eq!(u.user_unit_uid, uid, "{path}");
        }
        assert_eq!(
            SystemdUnits::of_path(
                Path::new("/sys/fs/cgroup"),
                Path::new("/sys/fs/cgroup/system.slice/a.service/b.service")
            )
            .unit
            .as_deref(),
            Some("a.service")
        );
    }

    #[test]
    fn depth_owned_by_systemd() {
        assert_eq!(systemd_owned_depth("system.slice/a.service"), Some(2));
        assert_eq!(systemd_owned_depth("/system.slice/a.service/sub"), Some(2));
        assert_eq!(systemd_owned_depth("system.slice"), None);
        assert_eq!(systemd_owned_depth("rt2/trusted"), None);
    }

    #[test]
    fn names_root_and_this_process() {
        let users = Users::default();
        assert_eq!(users.name(0).as_deref(), Some("root"));
        assert_eq!(users.name(0).as_deref(), Some("root"), "cached");
        assert!(exe(std::process::id()).is_some());
    }
}
