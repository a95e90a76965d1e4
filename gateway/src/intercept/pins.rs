//! The kernel objects the gateway keeps on the bpf filesystem: the mount itself, pinned links
//! and maps, the redirect map's per-thread handles, and the listener port's claim in the
//! pinned config (how a restarted gateway always wins its port back).
use std::{
    fs, io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError},
    programs::links::PinnedLink,
};
use gateway_common::{self as common, Redirect, SockKey, maps};
use tracing::{info, warn};

use super::InterceptError;
use crate::config::Config;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InterceptError + '_ {
    move |source| InterceptError::Io {
        path: path.into(),
        source,
    }
}

pub(super) fn list_links(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Removing the pin of a link nobody else holds detaches it.
pub(super) fn unpin(path: &Path) {
    match PinnedLink::from_pin(path) {
        Ok(link) => {
            if let Err(e) = link.unpin() {
                warn!(path = %path.display(), error = %e, "could not unpin link");
            }
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "not a pinned link; removing");
            let _ = fs::remove_file(path);
        }
    }
}

pub(super) fn take_map<V: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<V, InterceptError> {
    let map = ebpf.take_map(name).ok_or(InterceptError::Missing(name))?;
    V::try_from(map).map_err(|source| InterceptError::Map { name, source })
}

/// Where the kernel notes each redirected connection, by the workload's local address.
pub(super) type RedirectMap = HashMap<MapData, SockKey, Redirect>;

/// Takes `key`'s entry out of `map` in one system call (`BPF_MAP_LOOKUP_AND_DELETE_ELEM`, on
/// hash maps since Linux 5.14), where a lookup and a delete were two per accepted connection.
/// Ok(None): no entry. An error: the kernel cannot do it (take the entry in two steps).
pub(super) fn lookup_and_delete(map: &RedirectMap, key: &SockKey) -> io::Result<Option<Redirect>> {
    use aya::maps::IterableMap;
    use std::os::fd::AsRawFd;
    /// The kernel's `union bpf_attr` as the map element commands read it.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let mut value = std::mem::MaybeUninit::<Redirect>::uninit();
    let attr = ElemAttr {
        map_fd: map.map().fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: key as *const SockKey as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` has the kernel's layout for this command and names a live map whose key
    // and value sizes are those of `SockKey` and `Redirect` (aya checked them when it opened
    // the map); the key is read and the value written only during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &attr as *const ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        // SAFETY: the kernel wrote a whole value; `Redirect` is plain data.
        return Ok(Some(unsafe { value.assume_init() }));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

/// `count` (at least one) handles on the map `name`: the map itself, then duplicates of its
/// descriptor.
pub(super) fn lanes(
    ebpf: &mut Ebpf,
    name: &'static str,
    count: usize,
) -> Result<Vec<Mutex<RedirectMap>>, InterceptError> {
    let map = ebpf.take_map(name).ok_or(InterceptError::Missing(name))?;
    let map_err = |source| InterceptError::Map { name, source };
    let dup = |data: &MapData| -> Result<MapData, MapError> {
        MapData::from_fd(data.fd().as_fd().try_clone_to_owned()?)
    };
    let mut handles = Vec::with_capacity(count.max(1));
    for _ in 1..count {
        let another = match &map {
            Map::HashMap(data) => Map::HashMap(dup(data).map_err(map_err)?),
            Map::LruHashMap(data) => Map::LruHashMap(dup(data).map_err(map_err)?),
            // Not a hash map: the conversion below says so.
            _ => break,
        };
        handles.push(HashMap::try_from(another).map_err(map_err)?);
    }
    handles.insert(0, HashMap::try_from(map).map_err(map_err)?);
    Ok(handles.into_iter().map(Mutex::new).collect())
}

/// Claims the listener port for this process before it binds: the bind guard a previous run
/// left attached lets only the tgid in the pinned config bind it. A gateway that is still
/// running keeps its claim (and this start fails as a port conflict would); a dead one's is
/// taken over. Nothing pinned yet (first start): nothing to claim.
pub fn claim_listener(cfg: &Config) -> Result<(), InterceptError> {
    let path = cfg.bpffs_dir.join("maps").join(maps::CONFIG);
    // SAFETY: geteuid has no preconditions. Without root, loading reports it.
    if unsafe { libc::geteuid() } != 0 || !path.exists() {
        return Ok(());
    }
    let map_err = |source| InterceptError::Map {
        name: maps::CONFIG,
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    // Maps of another version: loading says so with advice; there is nothing to claim here.
    let Ok(mut map) = Array::<MapData, common::Config>::try_from(Map::Array(data)) else {
        return Ok(());
    };
    let mut kernel_cfg = map.get(&0, 0).map_err(map_err)?;
    let me = std::process::id();
    let holder = kernel_cfg.gateway_tgid;
    if holder != 0 && holder != me && is_live_gateway(holder) {
        return Err(InterceptError::PortHeld {
            port: cfg.listen_port,
            pid: holder,
        });
    }
    kernel_cfg.gateway_tgid = me;
    map.set(0, kernel_cfg, 0).map_err(map_err)
}

/// Whether `pid` is a running callgate: alive, named so, and root's (an unprivileged process
/// that happens to get a dead gateway's pid must not keep the port from its restart).
pub(super) fn is_live_gateway(pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let root_owned = fs::metadata(&proc).is_ok_and(|m| m.uid() == 0);
    let comm = fs::read_to_string(proc.join("comm")).unwrap_or_default();
    root_owned && comm.trim_end() == "callgate"
}

/// Makes sure `dir`'s parent is on a bpffs, mounting `/sys/fs/bpf` if that is what is missing.
pub(super) fn ensure_bpffs(dir: &Path) -> Result<(), InterceptError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if crate::util::fs::statfs_type(parent) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if parent.starts_with(default) && crate::util::fs::statfs_type(default) != Some(BPF_FS_MAGIC) {
        fs::create_dir_all(default).map_err(io_err(default))?;
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
        // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(InterceptError::Bpffs(format!(
                "/sys/fs/bpf is not mounted and mounting it failed: {}; run `mount -t bpf bpf /sys/fs/bpf`",
                io::Error::last_os_error()
            )));
        }
        info!("mounted bpffs at /sys/fs/bpf");
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        if crate::util::fs::statfs_type(parent) == Some(BPF_FS_MAGIC) {
            return Ok(());
        }
    }
    Err(InterceptError::Bpffs(format!(
        "{} is not on a bpf filesystem; mount one with `mount -t bpf bpf {}`",
        parent.display(),
        parent.display()
    )))
}
