//! The intercept stage, userspace half: loads the embedded eBPF object, attaches its programs to
//! enabled cgroups, and hands the accept stage the original destination of each redirected
//! connection.
//!
//! Maps are pinned by name under `<bpffs>/maps` and every link under
//! `<bpffs>/links/<cgroup id>/`, so the kernel keeps redirecting while the gateway is down:
//! connections then fail (nothing listens) instead of bypassing it. A restarted gateway attaches
//! its freshly loaded programs before it unpins the old links, so there is no window either way.
use std::{
    collections::BTreeMap,
    fs, io,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SockOps,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use gateway_common::{self as common, Redirect, SockKey, maps, programs};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    cgroup::{self, Cgroup, CgroupError},
    config::{self, Config},
};

/// The eBPF object, built by `gateway/build.rs`.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/callgate-ebpf.o"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Attach order: the bookkeeping programs first and the redirecting ones last, so that no
/// connection is redirected before its entry can be keyed; detach runs in reverse.
const ATTACH_ORDER: [&str; 7] = [
    programs::SOCK_OPS,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::CONNECT4,
    programs::CONNECT6,
];

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error(
        "callgate needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN) to load eBPF programs; run it as root"
    )]
    NotRoot,
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the eBPF object has no {0} (binary built from mismatched sources?)")]
    Missing(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cgroup {path} is not enabled")]
    NotEnabled { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InterceptError + '_ {
    move |source| InterceptError::Io {
        path: path.into(),
        source,
    }
}

/// What the user asked to enable or disable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Cgroup(String),
    Unit(String),
}

impl Target {
    pub fn resolve(&self, mount: &Path) -> Result<Cgroup, CgroupError> {
        match self {
            Target::Cgroup(p) => cgroup::resolve(mount, p),
            Target::Unit(u) => cgroup::resolve_unit(mount, u),
        }
    }
}

/// An enabled cgroup as persisted in the state dir.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enabled {
    pub path: PathBuf,
    pub id: u64,
    pub unit: Option<String>,
}

/// Outcome of `enable`/`disable`, for the CLI to report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub cgroup: Enabled,
    /// False when the cgroup already was in the requested state.
    pub changed: bool,
}

pub struct Interceptor {
    mount: PathBuf,
    bpffs: PathBuf,
    state_file: PathBuf,
    ebpf: Mutex<Ebpf>,
    /// A handle on the redirect map for each data-path thread (each a duplicated descriptor
    /// of the one map). Taking an entry is two syscalls, a lookup and a delete, which aya's
    /// map needs `&mut` for; behind one shared lock the threads queued on each other's, and
    /// with new connections arriving on both threads every accept waited on a futex.
    by_addr: Vec<Mutex<RedirectMap>>,
    config_map: Mutex<Array<MapData, common::Config>>,
    counters: PerCpuArray<MapData, u64>,
    enabled: Mutex<BTreeMap<u64, Enabled>>,
}

impl Interceptor {
    /// Loads and configures the programs; attaches nothing yet (see [`Interceptor::restore`]).
    pub fn load(cfg: &Config) -> Result<Self, InterceptError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(InterceptError::NotRoot);
        }
        let mount = cgroup::cgroup2_mount()?;
        ensure_bpffs(&cfg.bpffs_dir)?;
        let map_dir = cfg.bpffs_dir.join("maps");
        fs::create_dir_all(&map_dir).map_err(io_err(&map_dir))?;
        fs::create_dir_all(cfg.bpffs_dir.join("links")).map_err(io_err(&cfg.bpffs_dir))?;

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&map_dir)
            .load(EBPF_OBJECT)
            .map_err(|e| match &e {
                aya::EbpfError::MapError(aya::maps::MapError::PinError { .. }) => InterceptError::Bpffs(format!(
                    "{} holds maps of an incompatible callgate version: {e}; remove it with `rm -r {}` after `callgate disable` of every cgroup",
                    map_dir.display(),
                    cfg.bpffs_dir.display()
                )),
                _ => InterceptError::Load(e),
            })?;
        for name in ATTACH_ORDER {
            let prog = ebpf
                .program_mut(name)
                .ok_or(InterceptError::Missing(name))?;
            let res = if name == programs::SOCK_OPS {
                <&mut SockOps>::try_from(prog).and_then(|p| p.load())
            } else {
                <&mut CgroupSockAddr>::try_from(prog).and_then(|p| p.load())
            };
            res.map_err(|source| InterceptError::Program { name, source })?;
        }

        let mut rules: Array<MapData, common::Rule> = take_map(&mut ebpf, maps::RULES)?;
        for (i, rule) in cfg.intercept.rules.iter().enumerate() {
            rules
                .set(i as u32, rule.to_kernel(), 0)
                .map_err(|source| InterceptError::Map {
                    name: maps::RULES,
                    source,
                })?;
        }
        let mut config_map: Array<MapData, common::Config> = take_map(&mut ebpf, maps::CONFIG)?;
        let mut flags = common::FLAG_CONFIGURED;
        if cfg.udp_allow {
            flags |= common::FLAG_UDP_ALLOW;
        }
        if cfg.intercept.default_intercept {
            flags |= common::FLAG_DEFAULT_INTERCEPT;
        }
        let kernel_cfg = common::Config {
            listen_v4: u32::from_ne_bytes(config::LISTEN_V4.octets()),
            listen_v6: config::words(u128::from(config::LISTEN_V6)),
            listen_port: u32::from(cfg.listen_port),
            gateway_tgid: std::process::id(),
            flags,
            rule_count: cfg.intercept.rules.len() as u32,
        };
        config_map
            .set(0, kernel_cfg, 0)
            .map_err(|source| InterceptError::Map {
                name: maps::CONFIG,
                source,
            })?;

        let by_addr = lanes(&mut ebpf, maps::BY_ADDR, cfg.workers)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        Ok(Self {
            mount,
            bpffs: cfg.bpffs_dir.clone(),
            state_file: cfg.state_dir.join("enabled.json"),
            ebpf: Mutex::new(ebpf),
            by_addr,
            config_map: Mutex::new(config_map),
            counters,
            enabled: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn cgroup_mount(&self) -> &Path {
        &self.mount
    }

    /// Re-attaches what the state dir says is enabled, replacing the previous run's links with
    /// this run's programs (new links first, then the old ones go), and drops links of cgroups
    /// that are gone. Returns one line per cgroup for the log.
    pub fn restore(&self) -> Result<Vec<String>, InterceptError> {
        let saved: Vec<Enabled> = match fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| InterceptError::Io {
                path: self.state_file.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&self.state_file)(e)),
        };
        let mut report = Vec::new();
        let mut keep = BTreeMap::new();
        for entry in saved {
            match Cgroup::open(&entry.path) {
                Ok(cg) if cg.id == entry.id => {
                    self.attach_all(&cg)?;
                    report.push(format!("re-attached {}", cg.path.display()));
                    keep.insert(cg.id, entry);
                }
                Ok(_) | Err(_) => {
                    report.push(format!(
                        "forgot {} (the cgroup is gone)",
                        entry.path.display()
                    ));
                    let _ = self.detach_all(entry.id);
                }
            }
        }
        // Links whose cgroup is not in the state file: nobody asked for them any more.
        let links = self.bpffs.join("links");
        if let Ok(dirs) = fs::read_dir(&links) {
            for dir in dirs.flatten() {
                if let Some(id) = dir.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) {
                    if !keep.contains_key(&id) {
                        report.push(format!("detached stale links of cgroup id {id}"));
                        let _ = self.detach_all(id);
                    }
                }
            }
        }
        *self.enabled.lock().unwrap_or_else(|p| p.into_inner()) = keep;
        self.save()?;
        Ok(report)
    }

    pub fn enable(&self, target: &Target) -> Result<Change, InterceptError> {
        let cg = target.resolve(&self.mount)?;
        let entry = Enabled {
            unit: cgroup::unit_of(&self.mount, &cg.path),
            path: cg.path.clone(),
            id: cg.id,
        };
        let mut enabled = self.enabled.lock().unwrap_or_else(|p| p.into_inner());
        if enabled.contains_key(&cg.id) {
            return Ok(Change {
                cgroup: entry,
                changed: false,
            });
        }
        self.attach_all(&cg)?;
        enabled.insert(cg.id, entry.clone());
        drop(enabled);
        self.save()?;
        info!(cgroup = %cg.path.display(), id = cg.id, "enabled interception");
        Ok(Change {
            cgroup: entry,
            changed: true,
        })
    }

    pub fn disable(&self, target: &Target) -> Result<Change, InterceptError> {
        let cg = target.resolve(&self.mount)?;
        let mut enabled = self.enabled.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = enabled.remove(&cg.id) else {
            return Err(InterceptError::NotEnabled { path: cg.path });
        };
        drop(enabled);
        self.detach_all(cg.id)?;
        self.save()?;
        info!(cgroup = %cg.path.display(), id = cg.id, "disabled interception");
        Ok(Change {
            cgroup: entry,
            changed: true,
        })
    }

    pub fn enabled(&self) -> Vec<Enabled> {
        self.enabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Takes the entry for a connection accepted from `peer`: each is handed out once.
    /// `lane` is the data-path thread asking (any number works; each thread its own is fast).
    pub fn take(&self, peer: SocketAddr, lane: usize) -> Option<Redirect> {
        let key = sock_key(peer);
        let map = self.by_addr.get(lane % self.by_addr.len().max(1))?;
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        let redirect = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(redirect)
    }

    /// Kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        common::counter::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total = self
                    .counters
                    .get(&(i as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }

    /// On a clean stop the programs stay attached (connections fail closed until the next
    /// start); only our tgid is withdrawn so that a process reusing it is not exempt.
    pub fn shutdown(&self) {
        let mut map = self.config_map.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(mut cfg) = map.get(&0, 0) {
            cfg.gateway_tgid = 0;
            let _ = map.set(0, cfg, 0);
        }
    }

    fn link_dir(&self, id: u64) -> PathBuf {
        self.bpffs.join("links").join(id.to_string())
    }

    fn attach_all(&self, cg: &Cgroup) -> Result<(), InterceptError> {
        let dir = self.link_dir(cg.id);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let cgroup_file = fs::File::open(&cg.path).map_err(io_err(&cg.path))?;
        let suffix = format!("@{}", std::process::id());
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|p| p.into_inner());
        let mut pinned = Vec::new();
        for name in ATTACH_ORDER {
            let path = dir.join(format!("{name}{suffix}"));
            let _ = fs::remove_file(&path);
            match attach_one(&mut ebpf, name, &cgroup_file).and_then(|link| {
                link.pin(&path).map_err(|source| InterceptError::Pin {
                    path: path.clone(),
                    source,
                })
            }) {
                Ok(_) => pinned.push(path),
                Err(e) => {
                    for path in pinned.iter().rev() {
                        unpin(path);
                    }
                    return Err(e);
                }
            }
        }
        // This run's links are in place: the previous run's can go without a gap.
        for old in list_links(&dir) {
            if !old.to_string_lossy().ends_with(&suffix) {
                unpin(&old);
            }
        }
        Ok(())
    }

    fn detach_all(&self, id: u64) -> Result<(), InterceptError> {
        let dir = self.link_dir(id);
        let mut links = list_links(&dir);
        // connect* first: stop redirecting before the bookkeeping goes.
        links.sort_by_key(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            ATTACH_ORDER
                .iter()
                .rev()
                .position(|n| name.starts_with(n))
                .unwrap_or(usize::MAX)
        });
        for link in links {
            unpin(&link);
        }
        match fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    fn save(&self) -> Result<(), InterceptError> {
        let list = self.enabled();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| InterceptError::Io {
            path: self.state_file.clone(),
            source: io::Error::other(e),
        })?;
        crate::fsutil::write_atomic(&self.state_file, &bytes).map_err(io_err(&self.state_file))
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &fs::File,
) -> Result<FdLink, InterceptError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(InterceptError::Missing(name))?;
    let program_err = |source| InterceptError::Program { name, source };
    let link_err = |source: LinkError| InterceptError::Link { name, source };
    if name == programs::SOCK_OPS {
        let p: &mut SockOps = prog.try_into().map_err(program_err)?;
        let id = p
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(program_err)?;
        FdLink::try_from(p.take_link(id).map_err(program_err)?).map_err(link_err)
    } else {
        let p: &mut CgroupSockAddr = prog.try_into().map_err(program_err)?;
        let id = p
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(program_err)?;
        FdLink::try_from(p.take_link(id).map_err(program_err)?).map_err(link_err)
    }
}

fn list_links(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Removing the pin of a link nobody else holds detaches it.
fn unpin(path: &Path) {
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

fn take_map<V: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<V, InterceptError> {
    let map = ebpf.take_map(name).ok_or(InterceptError::Missing(name))?;
    V::try_from(map).map_err(|source| InterceptError::Map { name, source })
}

/// Where the kernel notes each redirected connection, by the workload's local address.
type RedirectMap = HashMap<MapData, SockKey, Redirect>;

/// `count` (at least one) handles on the map `name`: the map itself, then duplicates of its
/// descriptor.
fn lanes(
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

/// The kernel's key for a peer address: IPv6 form, IPv4 as v4-mapped.
pub fn sock_key(peer: SocketAddr) -> SockKey {
    let addr = match peer {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
        SocketAddr::V6(v6) => *v6.ip(),
    };
    SockKey {
        addr: config::words(u128::from(addr)),
        port: u32::from(peer.port()),
    }
}

/// The original destination of a redirect, as a socket address in the workload's family.
pub fn original_destination(r: &Redirect) -> SocketAddr {
    let ip = config::from_words(&r.dst_addr);
    let port = r.dst_port as u16;
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::from((v4, port)),
        None => SocketAddr::from((ip, port)),
    }
}

/// Makes sure `dir`'s parent is on a bpffs, mounting `/sys/fs/bpf` if that is what is missing.
fn ensure_bpffs(dir: &Path) -> Result<(), InterceptError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if crate::fsutil::statfs_type(parent) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if parent.starts_with(default) && crate::fsutil::statfs_type(default) != Some(BPF_FS_MAGIC) {
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
        if crate::fsutil::statfs_type(parent) == Some(BPF_FS_MAGIC) {
            return Ok(());
        }
    }
    Err(InterceptError::Bpffs(format!(
        "{} is not on a bpf filesystem; mount one with `mount -t bpf bpf {}`",
        parent.display(),
        parent.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn keys_match_the_kernel_layout() {
        let k = sock_key(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 40000)));
        assert_eq!(
            k.addr,
            common::v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
        );
        assert_eq!(k.port, 40000);
        let k6 = sock_key(SocketAddr::from((Ipv6Addr::LOCALHOST, 1)));
        assert_eq!(k6.addr, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
    }

    #[test]
    fn original_destination_keeps_the_family() {
        let mut r = Redirect {
            dst_port: 443,
            ..Default::default()
        };
        r.dst_addr = common::v4_mapped(u32::from_ne_bytes([10, 1, 2, 3]));
        assert_eq!(original_destination(&r), "10.1.2.3:443".parse().unwrap());
        r.dst_addr = config::words(u128::from(Ipv6Addr::LOCALHOST));
        assert_eq!(original_destination(&r), "[::1]:443".parse().unwrap());
    }
}
