//! Network namespaces: the gateway's listeners (and its upstream sockets) inside every network
//! namespace an enabled workload uses, as Istio's ztunnel does for pods ("in-pod redirection").
//!
//! A workload in its own namespace (a container, a pod) is redirected to 127.0.0.1 and [::1]
//! of *its* namespace, so the gateway must listen there, and its calls must leave from there
//! too (with the workload's own address, routes and view of the network). Each namespace gets
//! one thread that enters it (`setns(2)` on `/proc/<pid>/ns/net`) and stays: it binds the
//! namespace's listeners and then creates, on request, the sockets upstream connections are
//! dialled from. A socket belongs to the namespace it was created in, whichever thread uses
//! it later, so the data path serves and dials them like the host's.
//!
//! How a namespace becomes known, so that it is governed from its first connection:
//! - when a cgroup is enabled (or re-attached at start), the namespaces of its processes;
//! - from the kernel: `sock_create` and `connect` report, on a ring buffer, a socket of an
//!   enabled cgroup in a namespace that is not in the `CALLGATE_NETNS` map. A workload's first
//!   socket is reported before it can connect; its connection is redirected all the same and
//!   its SYN is held back by `cgroup_skb/egress` (dropped; `sock_ops` gave it a first
//!   retransmission timeout of 10 jiffies, so TCP sends it again within 10-40 ms, then
//!   doubling) until this module has put the namespace in the map, which it does only once
//!   the listeners listen. A namespace whose listeners cannot be opened keeps its connections waiting and
//!   then failing; none is let through.
//!
//! Namespaces whose processes all left the enabled cgroups (or exited) are closed by
//! [`Namespaces::sweep`]: out of the map first, then their listeners and thread.
use std::{
    collections::HashMap,
    fs, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::{call::container::Container, identity::containers::ContainerNames};

/// `SO_NETNS_COOKIE` (Linux 5.14), not in every libc crate.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// A namespace that could not be opened is retried at most this often.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A namespace is not swept this soon after it was opened: its first process may not have
/// joined the enabled cgroup's `cgroup.procs` scan yet.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// Stack of a namespace's thread: it only makes sockets.
const THREAD_STACK: usize = 64 * 1024;

/// Hands a namespace's bound listeners to the data path, which serves them until the
/// receiver flips. Set once by the daemon.
pub type Serve = Box<dyn Fn(u64, Vec<std::net::TcpListener>, watch::Receiver<bool>) + Send + Sync>;

/// Told the cookie of each namespace that is closed (to drop what else was kept for it).
pub type OnClose = Box<dyn Fn(u64) + Send + Sync>;

/// What `status` shows of a namespace.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NetnsStatus {
    /// The kernel's cookie for the namespace (what the redirect keys carry).
    pub cookie: u64,
    /// The namespace's inode (`ls -l /proc/PID/ns/net`), when known.
    pub inode: Option<u64>,
    /// The process through which it was entered.
    pub pid: u32,
    /// `host` (the gateway's own), `ready`, `opening` or `failed: reason`.
    pub state: String,
    pub listeners: Vec<String>,
    /// The container whose process it was entered through (id from its cgroup, names from
    /// its runtime's state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

enum State {
    Opening,
    Ready,
    Failed(String),
}

struct Entry {
    inode: Option<u64>,
    pid: u32,
    since: Instant,
    state: State,
    listeners: Vec<SocketAddr>,
    container: Option<Container>,
    /// Requests for sockets to the namespace's thread; dropped to end it.
    sockets: Option<mpsc::Sender<SocketRequest>>,
    /// Flipped to make the data path close the namespace's listeners.
    stop: Option<watch::Sender<bool>>,
    /// Owned by a user namespace other than the gateway's (`unshare -Urn`, a rootless
    /// container): a process of that user namespace may route and NAT in it as it likes.
    user_owned: bool,
}

struct SocketRequest {
    want: Want,
    reply: oneshot::Sender<io::Result<OwnedFd>>,
}

/// What a namespace's thread makes.
#[derive(Clone, Copy)]
enum Want {
    /// A TCP socket for an upstream connection, IPv6 or IPv4.
    Tcp { v6: bool },
    /// A `sock_diag` socket, to ask who owns a socket of the namespace.
    SockDiag,
}

/// The namespaces the gateway listens in.
pub struct Namespaces {
    host: u64,
    host_inode: Option<u64>,
    listen_port: u16,
    ready: Mutex<BpfHashMap<MapData, u64, u32>>,
    entries: Mutex<HashMap<u64, Entry>>,
    serve: Mutex<Option<Arc<Serve>>>,
    on_close: Mutex<Vec<OnClose>>,
    containers: Arc<ContainerNames>,
    pins: super::netns_pins::NetnsPins,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("the gateway's own network namespace cookie: {0}")]
    HostCookie(#[source] io::Error),
    #[error("eBPF map CALLGATE_NETNS: {0}")]
    Map(#[source] aya::maps::MapError),
}

impl Namespaces {
    /// The gateway's own namespace is marked ready (its listeners are bound before the
    /// programs load); every other entry a previous run left is dropped: its listeners died
    /// with that run, and its connections now wait for this run's.
    pub fn new(
        mut ready: BpfHashMap<MapData, u64, u32>,
        listen_port: u16,
    ) -> Result<Arc<Self>, NetnsError> {
        let host = own_cookie().map_err(NetnsError::HostCookie)?;
        let stale: Vec<u64> = ready
            .keys()
            .filter_map(Result::ok)
            .filter(|k| *k != host)
            .collect();
        for k in stale {
            let _ = ready.remove(&k);
        }
        ready.insert(host, 1, 0).map_err(NetnsError::Map)?;
        Ok(Arc::new(Self {
            host,
            host_inode: inode_of(Path::new("/proc/self/ns/net")),
            listen_port,
            ready: Mutex::new(ready),
            entries: Mutex::new(HashMap::new()),
            serve: Mutex::new(None),
            on_close: Mutex::new(Vec::new()),
            containers: Arc::new(ContainerNames::default()),
            pins: super::netns_pins::NetnsPins::default(),
        }))
    }

    /// Container names read from the runtimes' state, shared with the data path: a
    /// namespace's container is looked up when the namespace is opened, so its first call
    /// finds the names cached.
    pub fn containers(&self) -> &Arc<ContainerNames> {
        &self.containers
    }

    /// The gateway's own namespace.
    pub fn host(&self) -> u64 {
        self.host
    }

    /// Set by the daemon once the data path runs; namespaces are opened only after.
    pub fn set_serve(&self, serve: Serve) {
        *lock(&self.serve) = Some(Arc::new(serve));
    }

    /// Calls `f` with the cookie of every namespace closed from now on (the upstream pools
    /// drop the connections they keep from it).
    pub fn on_close(&self, f: OnClose) {
        lock(&self.on_close).push(f);
    }

    /// Whether namespace `cookie` (a workload's, or the host's) is owned by a user namespace
    /// other than the gateway's, so that a workload may route and NAT in it. Unknown
    /// namespaces count as owned.
    pub fn user_owned(&self, cookie: u64) -> bool {
        if cookie == self.host || cookie == 0 {
            return false;
        }
        lock(&self.entries)
            .get(&cookie)
            .is_none_or(|e| e.user_owned)
    }

    /// The namespaces held open because the policy names them (see [`super::netns_pins`]).
    pub fn pins(&self) -> &super::netns_pins::NetnsPins {
        &self.pins
    }

    /// The inode of a namespace the gateway knows, for records.
    pub fn inode(&self, cookie: u64) -> Option<u64> {
        if cookie == self.host {
            return self.host_inode;
        }
        lock(&self.entries).get(&cookie).and_then(|e| e.inode)
    }

    /// The kernel saw a socket in `cookie`, made by thread `pid`: opens it unless it is
    /// known (or failed a moment ago).
    pub fn reported(self: &Arc<Self>, cookie: u64, pid: u32) {
        if cookie == self.host {
            return;
        }
        {
            let mut entries = lock(&self.entries);
            if let Some(e) = entries.get(&cookie) {
                match &e.state {
                    State::Opening | State::Ready => return,
                    State::Failed(_) if e.since.elapsed() < RETRY_AFTER => return,
                    State::Failed(_) => {}
                }
            }
            entries.insert(cookie, Entry::opening(pid, None));
        }
        self.open(pid, Some(cookie));
    }

    /// Opens the namespaces the processes of `cgroup` (and its descendants) are in now.
    pub fn discover(self: &Arc<Self>, cgroup: &Path) {
        let mut seen = std::collections::HashSet::new();
        for pid in procs_under(cgroup) {
            let Some(inode) = inode_of(&ns_path(pid)) else {
                continue;
            };
            if Some(inode) == self.host_inode || !seen.insert(inode) {
                continue;
            }
            if lock(&self.entries).values().any(|e| e.inode == Some(inode)) {
                continue;
            }
            debug!(
                pid,
                inode, "opening the network namespace of an enabled process"
            );
            self.open(pid, None);
        }
    }

    /// Starts the namespace's thread; it reports back through [`Namespaces::opened`].
    fn open(self: &Arc<Self>, pid: u32, expect: Option<u64>) {
        let this = self.clone();
        let port = self.listen_port;
        let (tx, rx) = mpsc::channel::<SocketRequest>();
        let spawned = std::thread::Builder::new()
            .name(format!("callgate-ns-{pid}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                // Off the data path: the container's names, for its first call and `status`.
                let container = container_of(pid).map(|mut c| {
                    this.containers.fill(&mut c);
                    c
                });
                let opened = enter_and_listen(pid, port);
                let serving = match opened {
                    Ok((cookie, inode, user_owned, listeners)) => this.opened(
                        pid,
                        expect,
                        (cookie, inode, container, user_owned),
                        listeners,
                        tx,
                    ),
                    Err(e) => {
                        this.failed(expect, pid, e);
                        false
                    }
                };
                if serving {
                    serve_sockets(rx);
                }
            });
        if let Err(e) = spawned {
            self.failed(expect, pid, format!("starting its thread: {e}"));
        }
    }

    /// Called on the namespace's thread once its listeners listen: hands them to the data
    /// path, then tells the kernel. Returns whether the thread should go on making sockets.
    fn opened(
        &self,
        pid: u32,
        expect: Option<u64>,
        (cookie, inode, container, user_owned): (u64, Option<u64>, Option<Container>, bool),
        listeners: Vec<std::net::TcpListener>,
        sockets: mpsc::Sender<SocketRequest>,
    ) -> bool {
        if let Some(want) = expect.filter(|w| *w != cookie) {
            // The thread moved or exited and its pid was reused: try again on the next report.
            self.failed(
                Some(want),
                pid,
                format!("pid {pid} is no longer in the namespace"),
            );
            return false;
        }
        let Some(serve) = lock(&self.serve).clone() else {
            self.failed(Some(cookie), pid, "the data path is not running".into());
            return false;
        };
        let mut entries = lock(&self.entries);
        if expect.is_none() && cookie == self.host {
            return false;
        }
        if expect.is_none() && entries.contains_key(&cookie) {
            // Found by a scan while the kernel's report opened it too.
            return false;
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let (stop_tx, stop_rx) = watch::channel(false);
        serve(cookie, listeners, stop_rx);
        if let Err(e) = lock(&self.ready).insert(cookie, 1, 0) {
            let _ = stop_tx.send(true);
            drop(entries);
            self.failed(Some(cookie), pid, format!("marking it ready: {e}"));
            return false;
        }
        info!(cookie, inode, pid, listeners = ?addrs, "listening in a workload's network namespace");
        entries.insert(
            cookie,
            Entry {
                inode,
                pid,
                since: Instant::now(),
                state: State::Ready,
                listeners: addrs,
                container,
                sockets: Some(sockets),
                stop: Some(stop_tx),
                user_owned,
            },
        );
        true
    }

    fn failed(&self, cookie: Option<u64>, pid: u32, reason: String) {
        warn!(?cookie, pid, %reason, "cannot listen in a workload's network namespace; its connections wait and then fail");
        if let Some(cookie) = cookie {
            let mut entries = lock(&self.entries);
            let mut entry = Entry::opening(pid, None);
            entry.state = State::Failed(reason);
            entries.insert(cookie, entry);
        }
    }

    /// A socket in namespace `cookie` for an upstream connection. Unknown namespaces (closed
    /// meanwhile) get none: the call fails rather than leave from the host's namespace.
    pub async fn socket(&self, cookie: u64, v6: bool) -> io::Result<tokio::net::TcpSocket> {
        if cookie == self.host || cookie == 0 {
            return if v6 {
                tokio::net::TcpSocket::new_v6()
            } else {
                tokio::net::TcpSocket::new_v4()
            };
        }
        let fd = self.made_in(cookie, Want::Tcp { v6 }).await?;
        Ok(tokio::net::TcpSocket::from_std_stream(
            std::net::TcpStream::from(fd),
        ))
    }

    /// A `sock_diag` socket of namespace `cookie` (the gateway's own for 0): what it lists are
    /// that namespace's sockets.
    pub(super) async fn sock_diag(&self, cookie: u64) -> io::Result<super::sockdiag::SockDiag> {
        if cookie == self.host || cookie == 0 {
            return super::sockdiag::SockDiag::open();
        }
        let fd = self.made_in(cookie, Want::SockDiag).await?;
        Ok(super::sockdiag::SockDiag::from_fd(fd))
    }

    /// What namespace `cookie`'s thread makes. Unknown namespaces (closed meanwhile) get
    /// nothing.
    async fn made_in(&self, cookie: u64, want: Want) -> io::Result<OwnedFd> {
        let (reply, rx) = oneshot::channel();
        let sent = lock(&self.entries)
            .get(&cookie)
            .and_then(|e| e.sockets.as_ref())
            .map(|s| s.send(SocketRequest { want, reply }).is_ok());
        if sent != Some(true) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("network namespace {cookie} is not open"),
            ));
        }
        rx.await
            .map_err(|_| io::Error::other("the namespace's thread ended"))?
    }

    /// Closes the namespaces no process of `cgroups` (enabled cgroups, with descendants) is
    /// in any more. Returns how many were closed.
    pub fn sweep(&self, cgroups: &[PathBuf]) -> usize {
        // Nothing open but the host's: no process list to read.
        if lock(&self.entries).is_empty() {
            return 0;
        }
        let in_use: std::collections::HashSet<u64> = cgroups
            .iter()
            .flat_map(|cg| procs_under(cg))
            .filter_map(|pid| inode_of(&ns_path(pid)))
            .collect();
        let mut closed = Vec::new();
        {
            let mut entries = lock(&self.entries);
            entries.retain(|cookie, e| {
                let used = e.inode.is_some_and(|i| in_use.contains(&i));
                let young = e.since.elapsed() < SWEEP_GRACE;
                let opening = matches!(e.state, State::Opening);
                if used || young || opening {
                    return true;
                }
                closed.push((*cookie, e.stop.take()));
                false
            });
        }
        {
            let mut ready = lock(&self.ready);
            for (cookie, stop) in &closed {
                let _ = ready.remove(cookie);
                if let Some(stop) = stop {
                    let _ = stop.send(true);
                }
                debug!(
                    cookie,
                    "closed the listeners of a network namespace no workload uses"
                );
            }
        }
        let on_close = lock(&self.on_close);
        for (cookie, _) in &closed {
            for f in on_close.iter() {
                f(*cookie);
            }
        }
        closed.len()
    }

    /// Closes every namespace's listeners (the daemon is stopping).
    pub fn close_all(&self) {
        let entries: Vec<(u64, Entry)> = lock(&self.entries).drain().collect();
        let mut ready = lock(&self.ready);
        for (cookie, e) in entries {
            let _ = ready.remove(&cookie);
            if let Some(stop) = e.stop {
                let _ = stop.send(true);
            }
        }
    }

    /// The namespaces for `status`, the host's first.
    pub fn status(&self) -> Vec<NetnsStatus> {
        let mut list = vec![NetnsStatus {
            cookie: self.host,
            inode: self.host_inode,
            pid: std::process::id(),
            state: "host".into(),
            listeners: Vec::new(),
            container: None,
        }];
        let entries = lock(&self.entries);
        let mut rest: Vec<NetnsStatus> = entries
            .iter()
            .map(|(cookie, e)| NetnsStatus {
                cookie: *cookie,
                inode: e.inode,
                pid: e.pid,
                state: match &e.state {
                    State::Opening => "opening".into(),
                    State::Ready => "ready".into(),
                    State::Failed(r) => format!("failed: {r}"),
                },
                listeners: e.listeners.iter().map(ToString::to_string).collect(),
                container: e.container.clone(),
            })
            .collect();
        rest.sort_by_key(|s| s.cookie);
        list.extend(rest);
        list
    }
}

impl Entry {
    fn opening(pid: u32, inode: Option<u64>) -> Self {
        Self {
            inode,
            pid,
            since: Instant::now(),
            state: State::Opening,
            listeners: Vec::new(),
            container: None,
            sockets: None,
            stop: None,
            user_owned: true,
        }
    }
}

/// Resolves when a namespace's listeners are to close (its sender flipped or dropped).
pub async fn closed(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|closed| *closed).await;
}

/// On the namespace's own thread: enters the namespace of `pid` and binds 127.0.0.1 and [::1]
/// there. Returns its cookie, inode and the listeners.
fn enter_and_listen(
    pid: u32,
    port: u16,
) -> Result<(u64, Option<u64>, bool, Vec<std::net::TcpListener>), String> {
    let path = ns_path(pid);
    let ns = fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let inode = inode_of(&path);
    // Unknown counts as owned by a workload: it only ever withholds a credential.
    let user_owned = !matches!(
        (owning_user_ns(&ns), own_user_ns()),
        (Ok(owner), Some(own)) if owner == own
    );
    // SAFETY: a valid namespace descriptor; CLONE_NEWNET moves this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", io::Error::last_os_error()));
    }
    drop(ns);
    let cookie = own_cookie().map_err(|e| format!("its cookie: {e}"))?;
    let mut listeners =
        vec![listen((Ipv4Addr::LOCALHOST, port).into()).map_err(|e| e.to_string())?];
    match listen((Ipv6Addr::LOCALHOST, port).into()) {
        Ok(l) => listeners.push(l),
        // IPv6 disabled in the namespace: nothing can connect over it either.
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
        Err(e) => return Err(e.to_string()),
    }
    Ok((cookie, inode, user_owned, listeners))
}

/// `NS_GET_USERNS` (`_IO(0xb7, 0x1)`): the user namespace that owns a namespace.
const NS_GET_USERNS: libc::c_ulong = 0xb701;

/// The inode of the user namespace owning the namespace `ns` is a descriptor of.
fn owning_user_ns(ns: &fs::File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: a valid namespace descriptor; the ioctl takes no argument and returns a new one.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor this function owns.
    let user = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(user.metadata()?.ino())
}

/// The inode of the gateway's own user namespace.
fn own_user_ns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/user").ok().map(|m| m.ino())
}

/// A listener bound with `IP_FREEBIND`: a namespace's loopback may not be up yet (a container
/// runtime brings it up after creating the namespace); it listens as soon as it is.
fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    // Inherited by every accepted connection (see `proxy::accept`): no setsockopt per accept.
    socket.set_tcp_nodelay(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A non-blocking, close-on-exec TCP socket in this thread's namespace.
fn new_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The namespace's thread, after its listeners: makes upstream sockets until the namespace is
/// closed (its sender dropped).
fn serve_sockets(rx: mpsc::Receiver<SocketRequest>) {
    while let Ok(req) = rx.recv() {
        let made = match req.want {
            Want::Tcp { v6: true } => new_socket(libc::AF_INET6),
            Want::Tcp { v6: false } => new_socket(libc::AF_INET),
            Want::SockDiag => super::sockdiag::new_fd(),
        };
        let _ = req.reply.send(made);
    }
}

/// The cookie of the calling thread's network namespace.
fn own_cookie() -> io::Result<u64> {
    let fd = new_socket(libc::AF_INET)?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid out-parameters of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The container process `pid` runs in, from its cgroup path.
fn container_of(pid: u32) -> Option<Container> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let container = Container::of_cgroup(Some(rel))?;
    let mount = super::cgroup::cgroup2_mount().ok()?;
    let path = mount.join(rel.trim_start_matches('/'));
    crate::identity::containers::made_by_runtime(&path, &container).then_some(container)
}

fn ns_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The inode of a namespace file: what `ip netns identify` and `lsns` compare.
pub fn inode_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// One process (the first found) of `cgroup`'s subtree in each network namespace other than
/// the gateway's own, with that namespace's inode.
pub fn other_namespaces_under(cgroup: &Path) -> Vec<(u64, u32)> {
    let host = inode_of(Path::new("/proc/self/ns/net"));
    let mut seen = std::collections::HashSet::new();
    procs_under(cgroup)
        .into_iter()
        .filter_map(|pid| Some((inode_of(&ns_path(pid))?, pid)))
        .filter(|(inode, _)| Some(*inode) != host && seen.insert(*inode))
        .collect()
}

/// Runs `f` on a short-lived thread inside the network namespace of `pid`: what it creates
/// (a socket) belongs to that namespace, wherever it is used afterwards.
pub fn in_namespace_of<T: Send>(
    pid: u32,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(format!("callgate-in-{pid}"))
            .stack_size(THREAD_STACK)
            .spawn_scoped(s, move || {
                let ns = fs::File::open(ns_path(pid))?;
                // SAFETY: a valid namespace descriptor; CLONE_NEWNET moves this thread only,
                // and the thread ends right after `f`.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace's thread panicked")))
    })
}

/// Every process of `cgroup` and of the cgroups below it.
fn procs_under(cgroup: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    // Bounded: a cgroup tree is finite, and each directory is visited once.
    while let Some(dir) = dirs.pop() {
        if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(children) = fs::read_dir(&dir) {
            dirs.extend(
                children
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_a_cookie() {
        let a = own_cookie().expect("SO_NETNS_COOKIE");
        assert_ne!(a, 0);
        assert_eq!(a, own_cookie().unwrap());
    }
}
