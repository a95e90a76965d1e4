//! Finding cgroups: the cgroup v2 mount (which may be `/sys/fs/cgroup` or, on hybrid hosts,
//! `/sys/fs/cgroup/unified`), resolving a user's path or systemd unit to a cgroup directory,
//! and turning the cgroup id the kernel reports back into a path (and into what that path says
//! of the workloads in it, once per cgroup).
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Component, Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use crate::{call::container::Container, identity::workload::SystemdUnits};

/// statfs magic of a cgroup v2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2Mount,
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(#[source] std::io::Error),
    #[error("cgroup {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("{path} is outside the cgroup v2 mount {mount}")]
    OutsideMount { path: PathBuf, mount: PathBuf },
    #[error("systemd unit {unit}: {reason}")]
    Unit { unit: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A cgroup v2 directory and its id (the inode number, which is what
/// `bpf_get_current_cgroup_id` reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl Cgroup {
    /// Opens `path` (already absolute) and checks it is a cgroup v2 directory.
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let meta = fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => CgroupError::NotFound { path: path.into() },
            _ => CgroupError::Io {
                path: path.into(),
                source,
            },
        })?;
        if !meta.is_dir() || !is_cgroup2(path) {
            return Err(CgroupError::NotCgroup2 { path: path.into() });
        }
        Ok(Self {
            path: path.into(),
            id: meta.ino(),
        })
    }
}

fn is_cgroup2(path: &Path) -> bool {
    crate::util::fs::statfs_type(path) == Some(CGROUP2_SUPER_MAGIC)
}

/// The cgroup v2 mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    find_mount(&info, "cgroup2").ok_or(CgroupError::NoCgroup2Mount)
}

/// The mount point of the first filesystem of type `fstype` in mountinfo text.
pub fn find_mount(mountinfo: &str, fstype: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let ty = post.split_whitespace().next()?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (ty == fstype).then(|| PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves what a user typed: an absolute path inside the mount, or a path relative to the
/// mount (with or without a leading `/`, as `/proc/PID/cgroup` prints it).
pub fn resolve(mount: &Path, user_path: &str) -> Result<Cgroup, CgroupError> {
    let given = Path::new(user_path);
    let path = if given.starts_with(mount) {
        given.to_path_buf()
    } else {
        let rel: PathBuf = given
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if given
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(CgroupError::OutsideMount {
                path: given.into(),
                mount: mount.into(),
            });
        }
        mount.join(rel)
    };
    Cgroup::open(&path)
}

/// Resolves a systemd unit to its cgroup: asks systemd, and falls back to looking for a
/// directory of that name under the usual slices when systemd is not running.
pub fn resolve_unit(mount: &Path, unit: &str) -> Result<Cgroup, CgroupError> {
    if unit.is_empty() || unit.contains('/') {
        return Err(CgroupError::Unit {
            unit: unit.into(),
            reason: "not a unit name".into(),
        });
    }
    let from_systemd = Command::new("systemctl")
        .args(["show", "--property=ControlGroup", "--value", unit])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(cg) = from_systemd {
        return resolve(mount, &cg);
    }
    for slice in ["system.slice", "user.slice", ""] {
        let candidate = mount.join(slice).join(unit);
        if candidate.is_dir() {
            return Cgroup::open(&candidate);
        }
    }
    Err(CgroupError::Unit {
        unit: unit.into(),
        reason: "systemd does not know it and no cgroup of that name exists (is it running?)"
            .into(),
    })
}

/// The systemd unit that owns the cgroup at `path` under `mount`, derived as systemd does
/// ([`SystemdUnits`](crate::identity::workload::SystemdUnits)): never a name below a
/// delegation boundary.
pub fn unit_of(mount: &Path, path: &Path) -> Option<String> {
    crate::identity::workload::SystemdUnits::of_path(mount, path).unit
}

/// Maps cgroup ids back to paths, caching what it finds. Ids are looked up below the given
/// roots (the enabled cgroups), bounded so that a huge tree cannot stall a connection.
#[derive(Debug, Default)]
pub struct CgroupNames {
    cache: Mutex<HashMap<u64, PathBuf>>,
    /// What each cgroup's path says, derived on its first connection: every connection
    /// needs it, and it depends on the cgroup alone (an id names one cgroup for the life of
    /// the host; the path of a cgroup cannot change, as cgroupfs cannot rename).
    facts: Mutex<HashMap<u64, Arc<CgroupFacts>>>,
}

/// What a cgroup's path says of every workload in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupFacts {
    /// As `/proc/PID/cgroup` prints it: relative to the mount, with a leading slash.
    pub cgroup: String,
    pub units: SystemdUnits,
    /// The container, from the runtime's part of the path; its names are not filled (they
    /// may be learnt later: [`ContainerNames`](crate::identity::containers::ContainerNames)).
    pub container: Option<Container>,
}

impl CgroupFacts {
    /// Derived from `path`, a cgroup directory under `mount`.
    pub fn of(mount: &Path, path: &Path) -> Self {
        let units = SystemdUnits::of_path(mount, path);
        let cgroup = path.strip_prefix(mount).map_or_else(
            |_| path.display().to_string(),
            |rel| format!("/{}", rel.display()),
        );
        let container = Container::of_cgroup(Some(cgroup.trim_start_matches('/')))
            .filter(|c| crate::identity::containers::made_by_runtime(path, c));
        Self {
            cgroup,
            units,
            container,
        }
    }
}

const MAX_WALK: usize = 4096;

impl CgroupNames {
    /// The path of cgroup `id`, which process `pid` was in. `roots` (where to walk from when
    /// the process is gone) is asked for only on a miss: a hit is nearly every connection.
    pub fn lookup(
        &self,
        id: u64,
        pid: u32,
        roots: impl FnOnce() -> Vec<PathBuf>,
    ) -> Option<PathBuf> {
        if let Some(p) = self.cache.lock().ok()?.get(&id) {
            return Some(p.clone());
        }
        let found = from_proc(id, pid).or_else(|| walk(id, &roots()))?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(id, found.clone());
        }
        Some(found)
    }

    /// What cgroup `id` (which process `pid` was in) says of its workloads, derived once per
    /// cgroup: [`CgroupNames::lookup`], then [`CgroupFacts::of`]. `None` when the cgroup
    /// cannot be found (asked again on the next connection).
    pub fn facts(
        &self,
        id: u64,
        pid: u32,
        mount: &Path,
        roots: impl FnOnce() -> Vec<PathBuf>,
    ) -> Option<Arc<CgroupFacts>> {
        if let Some(f) = self.facts.lock().ok()?.get(&id) {
            return Some(f.clone());
        }
        let path = self.lookup(id, pid, roots)?;
        let found = Arc::new(CgroupFacts::of(mount, &path));
        if let Ok(mut facts) = self.facts.lock() {
            if facts.len() > 10_000 {
                facts.clear();
            }
            facts.insert(id, found.clone());
        }
        Some(found)
    }
}

/// The cheap way: the process is usually still alive and says where it is.
fn from_proc(id: u64, pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mount = cgroup2_mount().ok()?;
    let path = mount.join(rel.trim_start_matches('/'));
    (fs::metadata(&path).ok()?.ino() == id).then_some(path)
}

fn walk(id: u64, roots: &[PathBuf]) -> Option<PathBuf> {
    let mut stack: Vec<PathBuf> = roots.to_vec();
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > MAX_WALK {
            return None;
        }
        if fs::metadata(&dir).map(|m| m.ino()).ok() == Some(id) {
            return Some(dir);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// The path of cgroup `id` from the kernel itself: cgroup v2 ids are kernfs file handles, so
/// `open_by_handle_at` on the mount opens the cgroup's directory whatever its place in the tree
/// (needs `CAP_DAC_READ_SEARCH`), and its descriptor's link names it. Constant cost, unlike a
/// walk of the tree; an error (`ESTALE`: the cgroup is gone) says the id names no cgroup now.
pub fn path_of_id(mount: &Path, id: u64) -> std::io::Result<PathBuf> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    /// `struct file_handle` with room for the 8-byte kernfs id.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: [u8; 8],
    }
    /// `FILEID_KERNFS` (include/linux/exportfs.h).
    const FILEID_KERNFS: i32 = 0xfe;
    let root = fs::File::open(mount)?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id: id.to_ne_bytes(),
    };
    // SAFETY: `handle` is a valid file_handle followed by `handle_bytes` bytes of handle; the
    // result is checked before use.
    let fd = unsafe {
        libc::open_by_handle_at(
            root.as_raw_fd(),
            (&mut handle as *mut KernfsHandle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor this function owns.
    let dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    // The link is relative to this process's cgroup namespace root, which for the gateway (in
    // the host's) is the mount; a path outside it says the gateway runs in another one.
    Ok(if path.starts_with(mount) {
        path
    } else {
        mount.join(path.strip_prefix("/").unwrap_or(&path))
    })
}

/// The ids of the cgroup at `root` and of every cgroup below it (at most `MAX_WALK`; enabling
/// a cgroup covers its whole subtree).
pub fn subtree_ids(root: &Path) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if ids.len() >= MAX_WALK {
            break;
        }
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        ids.push(meta.ino());
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroups_facts_come_from_its_path() {
        let id = "a".repeat(64);
        let mount = Path::new("/sys/fs/cgroup");
        let path = mount.join(format!("system.slice/docker-{id}.scope"));
        let f = CgroupFacts::of(mount, &path);
        assert_eq!(f.cgroup, format!("/system.slice/docker-{id}.scope"));
        assert_eq!(
            f.units.unit.as_deref(),
            Some(format!("docker-{id}.scope").as_str())
        );
        let c = f.container.expect("a docker container");
        assert_eq!(c.id.as_deref(), Some(id.as_str()));
        assert_eq!(c.runtime.as_deref(), Some("docker"));
        // Not under the mount (cannot happen for a real id): said as it is, no unit.
        let odd = CgroupFacts::of(mount, Path::new("/elsewhere/x.service"));
        assert_eq!(odd.cgroup, "/elsewhere/x.service");
        assert_eq!(odd.units, SystemdUnits::default());
    }

    #[test]
    fn facts_are_derived_once_per_cgroup() {
        let names = CgroupNames::default();
        let dir = std::env::temp_dir().join(format!("callgate-facts-{}", std::process::id()));
        fs::create_dir_all(dir.join("app.service")).unwrap();
        let id = fs::metadata(dir.join("app.service")).unwrap().ino();
        // The process is unknown (pid 0 has no /proc entry): found by walking the roots.
        let first = names
            .facts(id, 0, &dir, || vec![dir.clone()])
            .expect("found by the walk");
        assert_eq!(first.cgroup, "/app.service");
        assert_eq!(first.units.unit.as_deref(), Some("app.service"));
        let again = names
            .facts(id, 0, &dir, || panic!("a second connection walks nothing"))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert!(names.facts(id + 1_000_000_007, 0, &dir, Vec::new).is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_mount(hybrid, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "25 30 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_mount(unified, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(find_mount("", "cgroup2"), None);
    }

    #[test]
    fn unescapes_mount_points() {
        let line = "41 31 0:38 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_mount(line, "cgroup2"),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    #[test]
    fn refuses_paths_that_climb_out() {
        let err = resolve(Path::new("/sys/fs/cgroup"), "../../etc").unwrap_err();
        assert!(matches!(err, CgroupError::OutsideMount { .. }), "{err}");
    }

    #[test]
    fn unit_from_path() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            unit_of(m, Path::new("/sys/fs/cgroup/system.slice/nginx.service")).as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit_of(
                m,
                Path::new("/sys/fs/cgroup/system.slice/x.service/y.service")
            )
            .as_deref(),
            Some("x.service")
        );
        assert_eq!(unit_of(m, Path::new("/sys/fs/cgroup/test")), None);
    }
}
