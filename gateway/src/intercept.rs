//! The intercept stage, userspace half: loads the embedded eBPF object, attaches its programs to
//! enabled cgroups, and hands the accept stage the original destination of each redirected
//! connection.
//!
//! Maps are pinned by name under `<bpffs>/maps` and every link under
//! `<bpffs>/links/<cgroup id>/`, so the kernel keeps redirecting while the gateway is down:
//! connections then fail (nothing listens) instead of bypassing it. A restarted gateway attaches
//! its freshly loaded programs before it unpins the old links, so there is no window either way.
//!
//! The bind guard (`post_bind4/6`) is attached once at the cgroup root, pinned under
//! `<bpffs>/links/root/`: the redirect target is a loopback port that any process in the
//! network namespace could otherwise listen on, not only one in an enabled cgroup, so the
//! whole host is kept off it. Before binding, a starting gateway claims the port by writing its
//! tgid into the pinned config ([`claim_listener`]), which is how a restart always wins.
use std::{
    collections::BTreeMap,
    fs, io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
};

use crate::util::sync::LockExt;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, SockOps,
        links::{FdLink, LinkError},
    },
};
use gateway_common::{self as common, Redirect, SockKey, maps, programs};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::{
    config::{self, Config},
    intercept::cgroup::{Cgroup, CgroupError},
};

pub mod cgroup;
pub mod direct;
pub mod netns;
pub mod netns_pins;
pub mod netns_watch;
pub mod peers;
mod pins;
mod resolvers;
mod sockdiag;
pub mod splice;

pub use pins::claim_listener;
use pins::{RedirectMap, ensure_bpffs, io_err, lanes, list_links, take_map, unpin};
pub use resolvers::parse_resolv_conf;
use resolvers::{dns_resolvers, ip_key, set_resolvers};

/// The eBPF object, built by `gateway/build.rs`.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/callgate-ebpf.o"));

/// Attach order: the bookkeeping programs first and the redirecting ones last, so that no
/// connection is redirected before its entry can be keyed; detach runs in reverse.
const ATTACH_ORDER: [&str; 10] = [
    programs::SOCK_OPS,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::SOCK_CREATE,
    programs::EGRESS,
    programs::INGRESS,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::CONNECT4,
    programs::CONNECT6,
];

/// The programs of type `cgroup/sock` (the rest are `sock_ops`, `cgroup_skb`
/// ([`programs::EGRESS`], [`programs::INGRESS`]) and `cgroup/sock_addr`).
const CGROUP_SOCK: [&str; 3] = [programs::SOCK_CREATE, programs::BIND4, programs::BIND6];

/// Attached at the cgroup root, not per enabled cgroup (see the module doc).
const GUARD: [&str; 2] = [programs::BIND4, programs::BIND6];

/// Where the root-attached links are pinned, beside the per-cgroup-id directories.
const ROOT_LINKS: &str = "root";

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
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(
        "port {port} on 127.0.0.1 is already in use (callgate pid {pid} holds it; pick another with --listen-port)"
    )]
    PortHeld { port: u16, pid: u32 },
    #[error("cgroup {path} is not enabled")]
    NotEnabled { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    /// How many connections the cgroup had opened before `enable` that did not go through
    /// the gateway were ended, so that the workload reconnects through it.
    #[serde(default)]
    pub ended: usize,
}

pub struct Interceptor {
    mount: PathBuf,
    bpffs: PathBuf,
    state_file: PathBuf,
    ebpf: Mutex<Ebpf>,
    /// A handle on the redirect map for each data-path thread (each a duplicated descriptor
    /// of the one map). Taking an entry is one syscall (two, a lookup and a delete, on a
    /// kernel before 5.14), and aya's map needs `&mut` for the delete; behind one shared lock
    /// the threads queued on each other's, and with new connections arriving on both threads
    /// every accept waited on a futex.
    by_addr: Vec<Mutex<RedirectMap>>,
    config_map: Mutex<Array<MapData, common::Config>>,
    counters: PerCpuArray<MapData, u64>,
    enabled: std::sync::Arc<Mutex<BTreeMap<u64, Enabled>>>,
    /// What the kernel intercepts, to pick which older connections `enable` ends.
    rules: Vec<common::Rule>,
    default_intercept: bool,
    listen_port: u16,
    /// What the kernel lets through on UDP, to pick which connected UDP sockets `enable` ends.
    udp_allow: bool,
    resolvers: Vec<IpAddr>,
    /// The network namespaces the gateway listens in.
    namespaces: std::sync::Arc<netns::Namespaces>,
    /// The kernel's reports of namespaces without listeners, until the daemon takes them.
    netns_events: Mutex<Option<RingBuf<MapData>>>,
    /// The kernel splice of pass-through connections, or why there is none.
    splice: Result<splice::Splicer, String>,
    /// Direct pass-through (`direct_pass_through: true`, without a policy).
    direct: Option<direct::Direct>,
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
        for name in ATTACH_ORDER.into_iter().chain(GUARD) {
            let prog = ebpf
                .program_mut(name)
                .ok_or(InterceptError::Missing(name))?;
            let res = if name == programs::SOCK_OPS {
                <&mut SockOps>::try_from(prog).and_then(|p| p.load())
            } else if name == programs::EGRESS || name == programs::INGRESS {
                <&mut CgroupSkb>::try_from(prog).and_then(|p| p.load())
            } else if CGROUP_SOCK.contains(&name) {
                <&mut CgroupSock>::try_from(prog).and_then(|p| p.load())
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
        let direct = if cfg.direct_pass_through {
            flags |= common::FLAG_DIRECT;
            Some(direct::Direct::load(&mut ebpf)?)
        } else {
            None
        };
        let kernel_cfg = common::Config {
            listen_v4: u32::from_ne_bytes(config::LISTEN_V4.octets()),
            listen_v6: crate::util::net::words(u128::from(config::LISTEN_V6)),
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

        let mut resolvers: HashMap<MapData, [u32; 4], u32> = take_map(&mut ebpf, maps::RESOLVERS)?;
        let allowed = dns_resolvers(cfg);
        set_resolvers(&mut resolvers, &allowed)?;
        info!(resolvers = ?allowed, "UDP port 53 is reachable at these resolvers only");
        warn_if_ephemeral(cfg.listen_port);

        let namespaces =
            netns::Namespaces::new(take_map(&mut ebpf, maps::NETNS)?, cfg.listen_port)?;
        let netns_events = take_map(&mut ebpf, maps::NETNS_EVENTS)?;
        let by_addr = lanes(&mut ebpf, maps::BY_ADDR, cfg.workers)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        let splice = if cfg.kernel_splice {
            splice::Splicer::load(&mut ebpf)
        } else {
            Err(splice::OFF.to_string())
        };
        match &splice {
            Ok(_) => info!("pass-through connections are spliced in the kernel (sk_skb)"),
            Err(e) if e == splice::OFF => {
                info!("pass-through connections are copied in user space (kernel_splice: false)")
            }
            Err(e) => warn!(
                reason = %e,
                "pass-through connections are copied in user space: the kernel splice could not be set up"
            ),
        }
        Ok(Self {
            mount,
            bpffs: cfg.bpffs_dir.clone(),
            state_file: cfg.state_dir.join("enabled.json"),
            ebpf: Mutex::new(ebpf),
            by_addr,
            config_map: Mutex::new(config_map),
            counters,
            enabled: Default::default(),
            rules: cfg.intercept.rules.iter().map(|r| r.to_kernel()).collect(),
            default_intercept: cfg.intercept.default_intercept,
            listen_port: cfg.listen_port,
            udp_allow: cfg.udp_allow,
            resolvers: allowed,
            namespaces,
            netns_events: Mutex::new(Some(netns_events)),
            splice,
            direct,
        })
    }

    /// Direct pass-through, when the config asks for it.
    pub fn direct(&self) -> Option<&direct::Direct> {
        self.direct.as_ref()
    }

    /// The kernel splice of pass-through connections, when it could be set up.
    pub fn splicer(&self) -> Option<&splice::Splicer> {
        self.splice.as_ref().ok()
    }

    /// How pass-through connections are copied, for `status`.
    pub fn splice_status(&self) -> splice::SpliceStatus {
        match &self.splice {
            Ok(s) => {
                let (sockets, peers) = s.entries();
                splice::SpliceStatus {
                    mode: splice::SpliceMode::Kernel,
                    sockets,
                    peers,
                }
            }
            Err(reason) => splice::SpliceStatus {
                mode: splice::SpliceMode::Copy {
                    reason: reason.clone(),
                },
                sockets: 0,
                peers: 0,
            },
        }
    }

    pub fn cgroup_mount(&self) -> &Path {
        &self.mount
    }

    /// The network namespaces the gateway listens in.
    pub fn namespaces(&self) -> &std::sync::Arc<netns::Namespaces> {
        &self.namespaces
    }

    /// The kernel's reports of namespaces without listeners (once: the daemon reads them).
    pub fn take_netns_events(&self) -> Option<RingBuf<MapData>> {
        self.netns_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Opens the namespaces the processes of every enabled cgroup are in now.
    pub fn discover_namespaces(&self) {
        for e in self.enabled() {
            self.namespaces.discover(&e.path);
        }
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
        self.attach_guard()?;
        report.push(format!(
            "guarding port {} at the cgroup root",
            self.listen_port()
        ));
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
        *self.enabled.locked() = keep;
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
        let mut enabled = self.enabled.locked();
        if enabled.contains_key(&cg.id) {
            return Ok(Change {
                cgroup: entry,
                changed: false,
                ended: 0,
            });
        }
        self.attach_all(&cg)?;
        enabled.insert(cg.id, entry.clone());
        drop(enabled);
        self.save()?;
        info!(cgroup = %cg.path.display(), id = cg.id, "enabled interception");
        self.namespaces.discover(&cg.path);
        // New connections are redirected from here on; the ones already open are not.
        let ended = self.end_older_connections(&cg);
        Ok(Change {
            cgroup: entry,
            changed: true,
            ended,
        })
    }

    pub fn disable(&self, target: &Target) -> Result<Change, InterceptError> {
        let cg = target.resolve(&self.mount)?;
        let mut enabled = self.enabled.locked();
        let Some(entry) = enabled.remove(&cg.id) else {
            return Err(InterceptError::NotEnabled { path: cg.path });
        };
        drop(enabled);
        self.detach_all(cg.id)?;
        self.save()?;
        info!(cgroup = %cg.path.display(), id = cg.id, "disabled interception");
        // Sockets of the subtree that no other enabled cgroup still covers.
        let mut ids: std::collections::HashSet<u64> =
            cgroup::subtree_ids(&cg.path).into_iter().collect();
        for e in self.enabled() {
            for id in cgroup::subtree_ids(&e.path) {
                ids.remove(&id);
            }
        }
        let forgotten = self.forget_redirects(&ids);
        if forgotten > 0 {
            info!(cgroup = %cg.path.display(), forgotten, "connections redirected and not yet accepted at disable are refused");
        }
        if let Some(direct) = &self.direct {
            let swept = direct.sweep(&ids);
            if swept > 0 {
                info!(cgroup = %cg.path.display(), swept, "direct pass-throughs open at disable are recorded as ended unseen");
            }
        }
        Ok(Change {
            cgroup: entry,
            changed: true,
            ended: 0,
        })
    }

    /// Ends the TCP connections of `cg`'s subtree that the gateway does not carry and would
    /// intercept now, so that the workload reconnects through it (a keep-alive connection
    /// opened before `enable` would otherwise stay ungoverned for as long as it lives), and its
    /// connected UDP sockets the UDP hooks would now refuse (a `send()` on a connected socket
    /// runs no hook). Left alone: connections to the gateway's listener, connections a
    /// workload server accepted (their local port is a listener's), destinations the rules
    /// bypass. Failures are logged, never undo the enable: the redirect is in place either way.
    ///
    /// `sock_diag` lists the sockets of the namespace its netlink socket was made in: the
    /// gateway's own, and for every other namespace the subtree's processes are in (their
    /// containers), a netlink socket made inside that namespace.
    fn end_older_connections(&self, cg: &Cgroup) -> usize {
        let ids = cgroup::subtree_ids(&cg.path);
        let mut ended = match sockdiag::SockDiag::open() {
            Ok(diag) => self.end_older_in(cg, &ids, diag, None),
            Err(e) => {
                warn!(cgroup = %cg.path.display(), error = %e, "cannot list the connections opened before enable; they stay open, ungoverned");
                0
            }
        };
        for (inode, pid) in netns::other_namespaces_under(&cg.path) {
            match netns::in_namespace_of(pid, sockdiag::SockDiag::open) {
                Ok(diag) => ended += self.end_older_in(cg, &ids, diag, Some(inode)),
                Err(e) => {
                    warn!(cgroup = %cg.path.display(), netns = inode, pid, error = %e, "cannot list the connections opened before enable in a workload's network namespace; they stay open, ungoverned");
                }
            }
        }
        ended
    }

    /// [`Interceptor::end_older_connections`] in the namespace `diag` was made in (`netns`:
    /// its inode, `None` for the gateway's own).
    fn end_older_in(
        &self,
        cg: &Cgroup,
        ids: &[u64],
        mut diag: sockdiag::SockDiag,
        netns: Option<u64>,
    ) -> usize {
        let sockets = match diag.sockets() {
            Ok(s) => s,
            Err(e) => {
                warn!(cgroup = %cg.path.display(), error = %e, "cannot list the connections opened before enable; they stay open, ungoverned");
                return 0;
            }
        };
        let listening: std::collections::HashSet<u16> = sockets
            .iter()
            .filter(|s| s.is_listening())
            .map(|s| s.local.port())
            .collect();
        // The gateway may run inside the cgroup it intercepts: its own sockets stay.
        let own = sockdiag::own_socket_inodes();
        let mut ended = 0;
        let mut sample = Vec::new();
        for s in sockets.iter().filter(|s| {
            let ungoverned = if s.is_tcp() {
                !s.is_listening()
                    && !listening.contains(&s.local.port())
                    && !self.is_listener(s.remote)
                    && self.intercepts(s.remote)
            } else {
                !self.udp_passes(s.remote)
            };
            ids.contains(&s.cgroup_id) && !own.contains(&s.inode) && ungoverned
        }) {
            let proto = if s.is_tcp() { "tcp" } else { "udp" };
            let what = format!("{proto} {} -> {}", s.local, s.remote);
            match diag.destroy(s) {
                Ok(()) => {
                    debug!(cgroup = %cg.path.display(), ?netns, connection = %what, "ended a connection opened before enable");
                    ended += 1;
                    if sample.len() < 5 {
                        sample.push(what);
                    }
                }
                Err(e) => {
                    warn!(cgroup = %cg.path.display(), connection = %what, error = %e, "could not end a connection opened before enable (kernel without CONFIG_INET_DIAG_DESTROY?); it stays ungoverned until it closes");
                }
            }
        }
        if ended > 0 {
            info!(cgroup = %cg.path.display(), ?netns, ended, ?sample, "ended the connections opened before enable; they reconnect through the gateway");
        }
        ended
    }

    fn is_listener(&self, addr: SocketAddr) -> bool {
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        addr.port() == self.listen_port
            && (ip == IpAddr::V4(config::LISTEN_V4) || ip == IpAddr::V6(config::LISTEN_V6))
    }

    /// The UDP hooks' decision for a destination (see `udp_verdict` in the eBPF programs).
    fn udp_passes(&self, addr: SocketAddr) -> bool {
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.udp_allow || (addr.port() == 53 && self.resolvers.contains(&ip))
    }

    /// The kernel's decision for a TCP destination: first matching rule, else the default.
    fn intercepts(&self, addr: SocketAddr) -> bool {
        let key = ip_key(addr.ip());
        let port = u32::from(addr.port());
        self.rules
            .iter()
            .find(|r| r.matches(&key, port))
            .map_or(self.default_intercept, |r| {
                r.action == common::RULE_INTERCEPT
            })
    }

    pub fn enabled(&self) -> Vec<Enabled> {
        self.enabled.locked().values().cloned().collect()
    }

    /// Tells who answers the gateway's upstream connections: a workload it governs or not.
    pub fn peers(&self) -> peers::Peers {
        peers::Peers::new(
            self.namespaces.clone(),
            self.mount.clone(),
            self.enabled.clone(),
        )
    }

    /// Takes the entry for a connection accepted from `peer`: each is handed out once.
    /// `lane` is the data-path thread asking (any number works; each thread its own is fast).
    /// `netns` is the cookie of the namespace whose listener accepted it.
    pub fn take(&self, peer: SocketAddr, netns: u64, lane: usize) -> Option<Redirect> {
        let key = sock_key(peer, netns);
        let map = self.by_addr.get(lane % self.by_addr.len().max(1))?;
        let mut map = map.locked();
        match pins::lookup_and_delete(&map, &key) {
            Ok(found) => found,
            // A kernel that cannot do both at once on a hash map (before 5.14).
            Err(_) => {
                let redirect = map.get(&key, 0).ok()?;
                let _ = map.remove(&key);
                Some(redirect)
            }
        }
    }

    /// Removes the redirect entries of connections from the cgroups `ids` that the gateway has
    /// not taken yet. Once a cgroup's programs are detached, no close callback removes its
    /// entries any more: one whose connection ended before the gateway accepted it would stay,
    /// and whoever next dialled the listener from its address and port would be taken for
    /// that workload. Such a connection still on its way is refused: it fails closed.
    fn forget_redirects(&self, ids: &std::collections::HashSet<u64>) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let Some(map) = self.by_addr.first() else {
            return 0;
        };
        let mut map = map.locked();
        let stale: Vec<SockKey> = map
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, r)| ids.contains(&r.workload.cgroup_id))
            .map(|(k, _)| k)
            .collect();
        stale.iter().filter(|k| map.remove(k).is_ok()).count()
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
        let mut map = self.config_map.locked();
        if let Ok(mut cfg) = map.get(&0, 0) {
            cfg.gateway_tgid = 0;
            let _ = map.set(0, cfg, 0);
        }
    }

    fn link_dir(&self, id: u64) -> PathBuf {
        self.bpffs.join("links").join(id.to_string())
    }

    fn listen_port(&self) -> u32 {
        let map = self.config_map.locked();
        map.get(&0, 0).map(|c| c.listen_port).unwrap_or(0)
    }

    /// Attaches the bind guard at the cgroup root (this run's links first, then the previous
    /// run's go, as for enabled cgroups): it stays pinned while the gateway is down.
    fn attach_guard(&self) -> Result<(), InterceptError> {
        let dir = self.bpffs.join("links").join(ROOT_LINKS);
        let root = Cgroup::open(&self.mount)?;
        self.attach_programs(&root, &dir, &GUARD)
    }

    fn attach_all(&self, cg: &Cgroup) -> Result<(), InterceptError> {
        self.attach_programs(cg, &self.link_dir(cg.id), &ATTACH_ORDER)
    }

    /// Attaches `names` to `cg`, pinned in `dir` with this process's id as suffix, and then
    /// unpins every other link in `dir` (the previous run's).
    fn attach_programs(
        &self,
        cg: &Cgroup,
        dir: &Path,
        names: &[&'static str],
    ) -> Result<(), InterceptError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cgroup_file = fs::File::open(&cg.path).map_err(io_err(&cg.path))?;
        let suffix = format!("@{}", std::process::id());
        let mut ebpf = self.ebpf.locked();
        let mut pinned = Vec::new();
        for &name in names {
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
        for old in list_links(dir) {
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
        crate::util::fs::write_atomic(&self.state_file, &bytes).map_err(io_err(&self.state_file))
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
    } else if name == programs::EGRESS || name == programs::INGRESS {
        let p: &mut CgroupSkb = prog.try_into().map_err(program_err)?;
        let direction = if name == programs::EGRESS {
            CgroupSkbAttachType::Egress
        } else {
            CgroupSkbAttachType::Ingress
        };
        let id = p
            .attach(cgroup, direction, CgroupAttachMode::Single)
            .map_err(program_err)?;
        FdLink::try_from(p.take_link(id).map_err(program_err)?).map_err(link_err)
    } else if CGROUP_SOCK.contains(&name) {
        let p: &mut CgroupSock = prog.try_into().map_err(program_err)?;
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

/// A listener port inside the ephemeral range can be handed to a `listen()` on an unbound
/// socket, which no bind hook sees: say so unless the port is reserved.
fn warn_if_ephemeral(port: u16) {
    let read = |name: &str| fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"));
    let Ok(range) = read("ip_local_port_range") else {
        return;
    };
    let mut bounds = range
        .split_whitespace()
        .filter_map(|w| w.parse::<u16>().ok());
    let (Some(lo), Some(hi)) = (bounds.next(), bounds.next()) else {
        return;
    };
    let reserved = read("ip_local_reserved_ports").unwrap_or_default();
    let is_reserved = reserved.trim().split(',').any(|part| {
        let mut ends = part.split('-').filter_map(|w| w.trim().parse::<u16>().ok());
        match (ends.next(), ends.next()) {
            (Some(a), Some(b)) => (a..=b).contains(&port),
            (Some(a), None) => a == port,
            _ => false,
        }
    });
    if (lo..=hi).contains(&port) && !is_reserved {
        warn!(
            port,
            "the listener port is in net.ipv4.ip_local_port_range: an unbound listen() could be given it while the gateway is down; add it to net.ipv4.ip_local_reserved_ports"
        );
    }
}

/// The kernel's key for a peer address in namespace `netns`: IPv6 form, IPv4 as v4-mapped.
pub fn sock_key(peer: SocketAddr, netns: u64) -> SockKey {
    let addr = match peer {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped(),
        SocketAddr::V6(v6) => *v6.ip(),
    };
    SockKey {
        netns,
        addr: crate::util::net::words(u128::from(addr)),
        port: u32::from(peer.port()),
        _pad: 0,
    }
}

/// The original destination of a redirect, as a socket address in the workload's family.
pub fn original_destination(r: &Redirect) -> SocketAddr {
    let ip = crate::util::net::from_words(&r.dst_addr);
    let port = r.dst_port as u16;
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::from((v4, port)),
        None => SocketAddr::from((ip, port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn keys_match_the_kernel_layout() {
        let k = sock_key(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1), 40000)), 7);
        assert_eq!(k.netns, 7);
        assert_eq!(
            k.addr,
            common::v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
        );
        assert_eq!(k.port, 40000);
        let k6 = sock_key(SocketAddr::from((Ipv6Addr::LOCALHOST, 1)), 7);
        assert_eq!(k6.addr, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\nsearch example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver\noptions edns0\n nameserver 1.1.1.1\n";
        assert_eq!(
            parse_resolv_conf(text),
            [
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap(),
                "1.1.1.1".parse().unwrap()
            ]
        );
        assert_eq!(
            ip_key("127.0.0.153".parse().unwrap()),
            common::v4_mapped(u32::from_ne_bytes([127, 0, 0, 153]))
        );
    }

    #[test]
    fn original_destination_keeps_the_family() {
        let mut r = Redirect {
            dst_port: 443,
            ..Default::default()
        };
        r.dst_addr = common::v4_mapped(u32::from_ne_bytes([10, 1, 2, 3]));
        assert_eq!(original_destination(&r), "10.1.2.3:443".parse().unwrap());
        r.dst_addr = crate::util::net::words(u128::from(Ipv6Addr::LOCALHOST));
        assert_eq!(original_destination(&r), "[::1]:443".parse().unwrap());
    }
}
