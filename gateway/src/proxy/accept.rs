//! The accept stage: listeners on 127.0.0.1 and [::1] that receive redirected connections, look
//! up each one's original destination and workload, sniff what they speak, and route them:
//! HTTP (after TLS interception where the service asks for it) to the [`crate::proxy::http`] stage,
//! TLS passthrough and allowed raw TCP to a splice, everything else refused and recorded.
//! Without a policy the gateway is a recorded TCP pass-through.
//!
//! A connection with no redirect entry (someone dialled the listener directly) or whose
//! original destination is the listener itself is closed: the gateway never forwards to a
//! destination it cannot vouch for.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Instant,
};

use gateway_common::Redirect;
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
};
use tracing::{debug, warn};

use bytes::Bytes;

use crate::proxy::ProxyInputs;
use crate::util::sync::LockExt;
use crate::{
    call::{Caller, Workload},
    config::{self},
    identity::workload::{self},
    intercept::{self},
    policy::{
        Action, PolicyStore,
        schema::{TcpMode, TlsMode},
    },
    proxy::http,
    proxy::sniff::{self, OtherReason, Protocol, Rewind},
    proxy::upstream,
    record::{Record, RecordedDecision, SharedJson, build::ConnectionEnd},
    telemetry::stats::{ActiveGuard, ConnSummary},
};

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(
        "port {port} on {addr} is already in use (is another callgate running? pick another with --listen-port)"
    )]
    PortInUse { addr: std::net::IpAddr, port: u16 },
    #[error("starting a data-path thread: {source}")]
    Worker {
        #[source]
        source: io::Error,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// The bound listeners; bound before anything is spawned so that a port conflict is reported
/// before the gateway claims to be up.
pub struct Listeners {
    pub listeners: Vec<TcpListener>,
}

impl Listeners {
    pub fn bind(port: u16) -> Result<Self, AcceptError> {
        let mut listeners = vec![bind_one(SocketAddr::from((config::LISTEN_V4, port)))?];
        match bind_one(SocketAddr::from((config::LISTEN_V6, port))) {
            Ok(l) => listeners.push(l),
            // A host without IPv6 still gets IPv4 interception.
            Err(AcceptError::Bind { source, .. })
                if source.kind() == io::ErrorKind::AddrNotAvailable =>
            {
                warn!("IPv6 loopback is not available; IPv6 connections cannot be intercepted")
            }
            Err(e) => return Err(e),
        }
        Ok(Self { listeners })
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }
}

fn bind_one(addr: SocketAddr) -> Result<TcpListener, AcceptError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| AcceptError::Bind { addr, source })?;
    socket
        .set_reuseaddr(true)
        .map_err(|source| AcceptError::Bind { addr, source })?;
    // Linux copies TCP_NODELAY from a listener to each connection it accepts: set once here,
    // it spares every accepted connection a setsockopt (test
    // `accepted_connections_inherit_nodelay`; the namespaces' listeners set it too).
    socket
        .set_nodelay(true)
        .map_err(|source| AcceptError::Bind { addr, source })?;
    socket.bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => AcceptError::PortInUse {
            addr: addr.ip(),
            port: addr.port(),
        },
        _ => AcceptError::Bind { addr, source },
    })?;
    socket
        .listen(4096)
        .map_err(|source| AcceptError::Bind { addr, source })
}

/// The data path's threads. Each runs a single-threaded runtime that accepts from every
/// listener (a shared accept queue: whichever thread is free first takes the connection) and
/// keeps each connection it serves, with its upstream connection, for that connection's whole
/// life, as nginx's workers do. A work-stealing runtime moves a connection's tasks between
/// threads from one call to the next; measured with keep-alive calls through policy, that
/// cost a fifth more CPU per call.
///
/// Which thread serves a connection is not left to which one won the accept: see [`Lanes`].
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    lanes: Arc<Lanes>,
}

/// The data-path threads ("lanes") as the accept stage sees them: each one's runtime, and
/// (in [`crate::telemetry::stats::Stats`]) how many connections each serves.
///
/// Every thread accepts from the same listeners, and the one on a CPU when connections come
/// wins the race for all of them: a client opening its keep-alive connections at once (wrk's
/// 32, an agent's pool) could have them all served by one thread while the other idled. In
/// interleaved bench rounds that was one full-load run in six (a fifth fewer calls a second)
/// and four half-load runs in five (one thread did nine tenths of the work; the added p99 was
/// 16 ms, against 5.7 ms with the connections balanced). So a thread that accepts a
/// connection while it serves more than another thread hands it over to the one with the
/// fewest (Envoy's exact connection balance): once per connection, never per call. A
/// connection is accepted without being registered with the accepting thread's poller
/// ([`accept_raw`]) and registered once, by the thread that serves it: a hand-over costs no
/// `epoll_ctl` of its own.
///
/// Fewer hand-overs were tried too (a thread keeping a connection unless it serves two more
/// than another): in interleaved rounds with a new connection per call that saved 3 % of the
/// CPU a call, and it cost the half-load case about 45 µs of added p50 (more in nine rounds
/// of ten, the tenth even), so the balance stays exact. One accepting thread per listener
/// (no thundering herd: 1.8 `accept4` a connection instead of 2.6, one connection at a time)
/// had to hand over about half of all connections, and served 0.89× the calls a second.
/// One listener per thread in a `SO_REUSEPORT` group (the kernel's hash of the addresses
/// picks the thread; no herd and no hand-over at all) was measured too: with a new connection
/// per call the CPU a call did not drop (1.01×), and the uneven spread served 0.90× the calls
/// a second (`benches/results/2026-12-06-44c47ab-ruled-out.md`); steering such a group with
/// an `sk_reuseport` program could at best restore the balance, not save CPU. A group can
/// also be joined by another socket of the same user.
struct Lanes {
    runtimes: Vec<tokio::runtime::Handle>,
}

impl Lanes {
    /// Serves `client` on the lane [`Stats::claim_lane`] chose for it. The redirect entry is
    /// taken here, as the connection is accepted, whichever thread then serves it.
    ///
    /// [`Stats::claim_lane`]: crate::telemetry::stats::Stats::claim_lane
    fn dispatch(
        &self,
        client: std::net::TcpStream,
        peer: SocketAddr,
        lane: usize,
        netns: u64,
        inputs: &Arc<ProxyInputs>,
    ) {
        let redirect = inputs.interceptor.take(peer, netns, lane);
        // Once the stop began, the thread that accepted serves it: another one may have
        // drained already, its runtime gone with whatever it is handed.
        let open = match inputs.drains.lane(lane).begun() {
            true => inputs.stats.claim_own_lane(lane),
            false => inputs.stats.claim_lane(lane),
        };
        let to = open.lane();
        let Some(runtime) = self.runtimes.get(to) else {
            let e = io::Error::other(format!("no data-path thread {to}"));
            return handover_failed(inputs, peer, &e);
        };
        if to != lane {
            inputs.stats.handed_over.fetch_add(1, Relaxed);
        }
        let inputs = inputs.clone();
        // Registered with the poller of the thread that runs this: the one serving it.
        let serve = async move {
            let _open = open;
            match TcpStream::from_std(client) {
                Ok(client) => handle(client, peer, redirect, to, netns, &inputs).await,
                Err(e) => handover_failed(&inputs, peer, &e),
            }
        };
        // On this thread's own runtime, spawned into its local queue as `tokio::spawn` would.
        drop(runtime.spawn(serve));
    }
}

/// A connection the thread chosen for it could not take (its poller refused it): closed
/// unserved, counted and said.
fn handover_failed(inputs: &ProxyInputs, peer: SocketAddr, e: &io::Error) {
    inputs.stats.handover_failed.fetch_add(1, Relaxed);
    warn!(%peer, error = %e, "a connection could not be taken by the data-path thread chosen for it; closed");
}

impl Workers {
    /// Starts `count` threads serving `listeners` until `shutdown` flips.
    pub fn start(
        listeners: Listeners,
        count: usize,
        inputs: Arc<ProxyInputs>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, AcceptError> {
        let mut owned = Vec::new();
        for l in listeners.listeners {
            let addr = l
                .local_addr()
                .map_err(|source| AcceptError::Worker { source })?;
            owned.push((
                addr,
                l.into_std()
                    .map_err(|source| AcceptError::Bind { addr, source })?,
            ));
        }
        let count = count.max(1);
        let mut runtimes = Vec::with_capacity(count);
        for _ in 0..count {
            runtimes.push(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| AcceptError::Worker { source })?,
            );
        }
        let lanes = Arc::new(Lanes {
            runtimes: runtimes.iter().map(|rt| rt.handle().clone()).collect(),
        });
        let mut threads = Vec::with_capacity(count);
        let host = inputs.interceptor.namespaces().host();
        for (n, rt) in runtimes.into_iter().enumerate() {
            let mut mine = Vec::with_capacity(owned.len());
            for (addr, l) in &owned {
                mine.push(l.try_clone().map_err(|source| AcceptError::Bind {
                    addr: *addr,
                    source,
                })?);
            }
            let (inputs, lanes, shutdown) = (inputs.clone(), lanes.clone(), shutdown.clone());
            let thread = std::thread::Builder::new()
                .name(format!("callgate-data-{n}"))
                .spawn(move || rt.block_on(run_worker(mine, n, host, inputs, lanes, shutdown)))
                .map_err(|source| AcceptError::Worker { source })?;
            threads.push(thread);
        }
        Ok(Self { threads, lanes })
    }

    /// What serves the listeners of a network namespace: every data-path thread accepts from
    /// them (as from the host's) until the namespace is closed or the gateway stops.
    pub fn namespace_server(
        &self,
        inputs: Arc<ProxyInputs>,
        shutdown: watch::Receiver<bool>,
    ) -> crate::intercept::netns::Serve {
        let lanes = self.lanes.clone();
        Box::new(move |netns, listeners, closed| {
            for (lane, rt) in lanes.runtimes.iter().enumerate() {
                for l in &listeners {
                    let Ok(mine) = l.try_clone() else { continue };
                    let (inputs, lanes, shutdown, closed) = (
                        inputs.clone(),
                        lanes.clone(),
                        shutdown.clone(),
                        closed.clone(),
                    );
                    rt.spawn(async move {
                        let l = match watched(mine) {
                            Ok(l) => l,
                            Err(e) => {
                                return warn!(error = %e, "a data-path thread could not take a namespace's listener");
                            }
                        };
                        tokio::select! {
                            _ = serve(l, lane, netns, inputs, lanes, shutdown) => {}
                            _ = crate::intercept::netns::closed(closed) => {}
                        }
                    });
                }
            }
        })
    }

    /// Waits until every thread stopped accepting. Connections still open end with their
    /// thread's runtime.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

async fn run_worker(
    listeners: Vec<std::net::TcpListener>,
    lane: usize,
    netns: u64,
    inputs: Arc<ProxyInputs>,
    lanes: Arc<Lanes>,
    shutdown: watch::Receiver<bool>,
) {
    let mut serving = tokio::task::JoinSet::new();
    serving.spawn(timer_anchor(
        lane,
        inputs.upstreams.clone(),
        shutdown.clone(),
    ));
    for l in listeners {
        match watched(l) {
            Ok(l) => {
                serving.spawn(serve(
                    l,
                    lane,
                    netns,
                    inputs.clone(),
                    lanes.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => warn!(error = %e, "a data-path thread could not take its listener"),
        }
    }
    while serving.join_next().await.is_some() {}
    drain(lane, &inputs).await;
    // The runtime ends when this returns, and with it the connections it still serves: said
    // first, so that their records say the stop cut them. (Said no sooner, and for this
    // thread only: a client that goes away during the grace is on record as gone.)
    inputs.drains.lane(lane).cut();
}

/// Waits, at most the stop's grace, until this thread serves no connection any more: each
/// one finishes what it is doing and closes ([`crate::proxy::drain`]). Checked every 10 ms;
/// the connections end on this same thread, so nothing wakes it sooner.
async fn drain(lane: usize, inputs: &ProxyInputs) {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(10);
    // What this thread's other accept loops (a container namespace's listeners) took as the
    // stop came is counted before the first look.
    tokio::task::yield_now().await;
    let grace = inputs.cfg.stop_grace;
    let until = tokio::time::Instant::now() + grace;
    let drains = &inputs.drains;
    while inputs.stats.lane_open(lane) > 0
        && tokio::time::Instant::now() < until
        && !drains.cut_now()
    {
        tokio::time::sleep(EVERY.min(grace)).await;
    }
    let left = inputs.stats.lane_open(lane);
    if left > 0 {
        warn!(
            lane,
            open = left,
            grace_s = grace.as_secs_f64(),
            "connections still open at the end of the stop's grace are cut"
        );
    }
}

/// Keeps a timer due within a second on this thread's runtime, always.
///
/// Every call arms timers (hyper's header read timeout, the upstream answer timeout). tokio
/// writes the runtime's eventfd whenever a new timer is due before every timer the runtime
/// knew when it last parked, so that a parked thread wakes in time; when no timer was pending
/// — an idle thread taking one call, the light-load case — that is every timer: measured with
/// one keep-alive client, each call paid an eventfd write and an extra `epoll_wait` on its own
/// thread, 8 syscalls where 6 do. With this timer always nearer, the calls' timers (seconds
/// to minutes away) never come first. It costs one wake-up per second, which also sweeps the
/// thread's idle upstream connections ([`crate::proxy::upstream::pool::Upstreams::sweep_idle`])
/// and lets the allocator return what the thread's quiet connections gave back
/// ([`crate::util::heap::return_freed`]: 1,000 keep-alive connections idle after a call each
/// held 48 MiB of anonymous memory without it, 29 MiB with it).
async fn timer_anchor(
    lane: usize,
    upstreams: Arc<upstream::pool::Upstreams>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(900));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                upstreams.sweep_idle(lane);
                crate::util::heap::return_freed();
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Accepts until `shutdown` flips; `lane` is this data-path thread's number, `netns` the
/// cookie of the network namespace the listener is in.
async fn serve(
    listener: AsyncFd<std::net::TcpListener>,
    lane: usize,
    netns: u64,
    inputs: Arc<ProxyInputs>,
    lanes: Arc<Lanes>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // The stop first: once it began, no connection is taken that its drain may miss.
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            a = accept_raw(&listener) => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                lanes.dispatch(stream, peer, lane, netns, &inputs);
                // Let what this thread has to do run before it takes another connection.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// `listener` as this thread's poller sees it: a non-blocking listening socket watched for
/// connections to accept.
fn watched(listener: std::net::TcpListener) -> io::Result<AsyncFd<std::net::TcpListener>> {
    listener.set_nonblocking(true)?;
    // SAFETY: a `TcpListener` owns its descriptor: it stays open, and `as_raw_fd` names the
    // same one, until the `AsyncFd` (which owns the listener and never swaps it) is dropped.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// The next connection on `listener`, not registered with any poller yet: the thread that
/// serves it registers it ([`Lanes::dispatch`]), once.
async fn accept_raw(
    listener: &AsyncFd<std::net::TcpListener>,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(accepted) = ready.try_io(|l| accept4(l.get_ref())) {
            return accepted;
        }
    }
}

/// `accept4(2)`, the connection non-blocking and close-on-exec from the start (std's
/// `accept` would need an `fcntl` more per connection to make it non-blocking).
fn accept4(listener: &std::net::TcpListener) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    // SAFETY: `try_init` hands the closure storage and its length for a socket address, as
    // accept4 expects them, and trusts the length the closure leaves only on success.
    let (fd, addr) = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            let fd = libc::accept4(
                listener.as_raw_fd(),
                storage.cast(),
                len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            );
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        })?
    };
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("accepted a connection without an IP peer address"))?;
    Ok((stream, peer))
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    redirect: Option<Redirect>,
    lane: usize,
    netns: u64,
    inputs: &Arc<ProxyInputs>,
) {
    debug_assert!(
        std::thread::current().name().is_none_or(
            |n| !n.starts_with("callgate-data-") || n == format!("callgate-data-{lane}")
        ),
        "a connection of lane {lane} served on another thread"
    );
    let stats = &inputs.stats;
    stats.accepted.fetch_add(1, Relaxed);
    let id = stats.next_id();
    let Some(redirect) = redirect else {
        stats.refused_no_entry.fetch_add(1, Relaxed);
        warn!(%peer, "connection to the listener without a redirect entry; closing");
        return;
    };
    let _active = ActiveGuard::new(stats);
    let conn = Connection {
        id,
        session: session_id(&inputs.session_prefix, id),
        started: Instant::now(),
        started_unix_ms: crate::util::time::now_ms(),
        dst: intercept::original_destination(&redirect),
        netns,
        workload: Arc::new(workload_of(&redirect, inputs)),
        owner: owner_of(&redirect),
        lane,
    };
    let ended = if conn.dst.port() == inputs.cfg.listen_port && conn.dst.ip().is_loopback() {
        stats.refused_loop.fetch_add(1, Relaxed);
        Ended::refused("the original destination is the gateway itself")
    } else if let Some(e) = inputs.recorder.as_ref().and_then(|r| r.ready().err()) {
        // Fail closed: nothing goes through that cannot be recorded.
        stats.refused_recording.fetch_add(1, Relaxed);
        Ended {
            record: false,
            ..Ended::refused(e.to_string())
        }
    } else {
        match &inputs.policy {
            // Boxed: the L7 state machine (hyper, TLS, the call pipeline) is tens of KiB, and
            // inline it would make every connection's task that large, pass-through included.
            Some(policy) => Box::pin(route(client, &conn, lane, inputs, policy.clone())).await,
            // Boxed too: the task's own future stays small, and tokio moves it several
            // times when it spawns and finishes it.
            None => {
                Box::pin(pass_through(
                    client,
                    Bytes::new(),
                    false,
                    &conn,
                    inputs,
                    |t, r| Ended::spliced("tcp pass-through (no policy loaded)", t, r),
                ))
                .await
            }
        }
    };
    finish(&conn, inputs, ended);
}

/// The prefix of this run's session ids: its start, `unix_secs`, in base 26 written with the
/// letters `a`–`z` (seven of them from 1979 to 2224), so that sessions of different runs
/// differ.
///
/// Letters only, so that no session id is text a detector takes for a value: every string in
/// a record is scanned again before it is written, and a prefix in hex digits (`69327431`, 6 %
/// of start times) and a connection number of five digits or more made a 13-digit run joined
/// by a dash, which the card detector masked one time in ten (a Luhn-valid run), and which
/// every record's scan had to analyse.
pub(crate) fn session_prefix(unix_secs: u64) -> String {
    let mut letters = Vec::with_capacity(14);
    let mut n = unix_secs;
    loop {
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    letters.iter().rev().map(|&c| char::from(c)).collect()
}

/// `PREFIX-ID`: without `format!`, whose machinery was about 1.3k instructions a connection.
pub(super) fn session_id(prefix: &str, id: u64) -> String {
    let mut id_text = itoa::Buffer::new();
    let id_text = id_text.format(id);
    let mut s = String::with_capacity(prefix.len() + 1 + id_text.len());
    s.push_str(prefix);
    s.push('-');
    s.push_str(id_text);
    s
}

/// The workload blocks of the last connections' records, serialised and masked
/// ([`crate::record::Recorder::mask_workload`]), by the thread that connected: a process's
/// connections share one. Serialising and masking it was a quarter of the instructions a new
/// connection cost the data path beyond its call. A slot holds one workload; another thread
/// that lands on it replaces it.
pub struct WorkloadBlocks {
    slots: [Mutex<Option<(Workload, SharedJson)>>; BLOCK_SLOTS],
}

const BLOCK_SLOTS: usize = 16;

impl Default for WorkloadBlocks {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| Mutex::new(None)),
        }
    }
}

impl WorkloadBlocks {
    /// `w`'s block: the one kept when it is for the same workload (every field equal), else
    /// `make`'s, then kept.
    fn block(&self, w: &Workload, make: impl FnOnce() -> SharedJson) -> SharedJson {
        let slot = &self.slots[w.tid.unwrap_or_default() as usize % BLOCK_SLOTS];
        if let Some((kept, block)) = &*slot.locked() {
            if kept == w {
                return block.clone();
            }
        }
        let block = make();
        *slot.locked() = Some((w.clone(), block.clone()));
        block
    }
}

/// One accepted, redirected connection (or one the kernel let go direct, see
/// [`super::direct`]).
pub(super) struct Connection {
    pub(super) id: u64,
    pub(super) session: String,
    pub(super) started: Instant,
    pub(super) started_unix_ms: u64,
    pub(super) dst: SocketAddr,
    /// The network namespace (cookie) the workload connected from; upstreams leave from it.
    pub(super) netns: u64,
    /// Shared with the connection's calls (their [`Caller`]) and its `status` summary.
    pub(super) workload: Arc<Workload>,
    /// Whose upstream connections it may take from the idle lists, as the kernel reported it.
    pub(super) owner: upstream::pool::Owner,
    /// The data-path thread that serves it.
    pub(super) lane: usize,
}

/// How a connection ended, for the log, `status` and its connection record.
pub(super) struct Ended {
    transfer: upstream::Transfer,
    /// `ok`, or why it ended early.
    outcome: String,
    /// A connection record is written (calls on an HTTP connection have their own).
    record: bool,
    protocol: &'static str,
    service: Option<String>,
    function: Option<String>,
    decision: RecordedDecision,
    /// Logged at debug only: the stage that ended it logs its own, rate-limited, line.
    quiet: bool,
}

impl Ended {
    fn refused(why: impl Into<String>) -> Self {
        let why = why.into();
        Ended {
            transfer: upstream::Transfer::default(),
            outcome: format!("refused: {why}"),
            record: true,
            protocol: "tcp",
            service: None,
            function: None,
            quiet: false,
            decision: RecordedDecision::denied(why),
        }
    }

    pub(super) fn spliced(
        why: &str,
        transfer: upstream::Transfer,
        r: Result<(), upstream::ForwardError>,
    ) -> Self {
        let outcome = r.err().map_or_else(|| "ok".to_string(), |e| e.to_string());
        Ended {
            transfer,
            // The decision was to pass it through; an upstream failure is said in the reason.
            decision: RecordedDecision::passed(if outcome == "ok" {
                why.to_string()
            } else {
                format!("{why}; {outcome}")
            }),
            outcome,
            record: true,
            protocol: "tcp",
            service: None,
            function: None,
            quiet: false,
        }
    }
}

/// sniff → the service → tcp/tls policy → splice, refuse, or serve HTTP (TLS terminated first
/// when the service intercepts it).
async fn route(
    mut client: TcpStream,
    conn: &Connection,
    lane: usize,
    inputs: &Arc<ProxyInputs>,
    policy: Arc<PolicyStore>,
) -> Ended {
    let stats = &inputs.stats;
    let sniffed = match sniff::sniff(&mut client, inputs.cfg.http.sniff_timeout).await {
        Ok(s) => s,
        Err(e) => return Ended::refused(format!("reading the first bytes: {e}")),
    };
    let snap = policy.snapshot();
    let sni = match &sniffed.protocol {
        Protocol::Tls(h) => h.sni.clone(),
        _ => None,
    };
    let dst_host = crate::util::net::ip_text(conn.dst.ip());
    let service = snap.service_for(&dst_host, conn.dst.port(), sni.as_deref());
    let refuse = |why: String, service: Option<&str>| {
        stats.refused_policy.fetch_add(1, Relaxed);
        Ended {
            service: service.map(str::to_string),
            function: sni.clone(),
            protocol: if sni.is_some() { "tls" } else { "tcp" },
            ..Ended::refused(why)
        }
    };
    let http_conn = |tls: bool| {
        // Masked for the records once here, not in every call's record.
        let workload = inputs.workload_blocks.block(&conn.workload, || {
            let workload = SharedJson::of(&conn.workload);
            match &inputs.recorder {
                Some(r) => r.mask_workload(workload),
                None => workload,
            }
        });
        let workload_masked = inputs.recorder.is_some();
        Arc::new(http::Conn {
            inputs: inputs.clone(),
            policy: policy.clone(),
            dst: conn.dst,
            netns: conn.netns,
            dst_text: crate::util::net::socket_text(conn.dst).into(),
            dst_host: dst_host.clone(),
            sni: sni.clone(),
            tls,
            workload,
            workload_masked,
            caller: Arc::new(Caller {
                workload: Some(conn.workload.clone()),
                ..Caller::default()
            }),
            last_token: Default::default(),
            http1: upstream::pool::Http1Slot::new(lane, conn.owner),
            session: conn.session.as_str().into(),
        })
    };
    let served = |protocol: &'static str| Ended {
        transfer: upstream::Transfer::default(),
        outcome: "ok".into(),
        record: false,
        protocol,
        service: service.map(|s| s.name.to_string()),
        function: None,
        decision: RecordedDecision::default(),
        quiet: false,
    };
    // A client that refused the gateway's certificate: counted for `status`, recorded.
    let untrusted = |how: &str, service: &str| {
        inputs.stats.untrusting.note(
            &conn.workload,
            &conn.dst.to_string(),
            how,
            crate::util::time::now_ms(),
        );
        Ended {
            service: Some(service.to_string()),
            function: sni.clone(),
            protocol: "tls",
            quiet: true,
            ..Ended::refused(format!(
                "{} ({how}); fix: {}",
                crate::telemetry::untrusting::REASON,
                crate::telemetry::untrusting::fix_for(&conn.workload)
            ))
        }
    };
    match (&sniffed.protocol, service) {
        (Protocol::Http1 | Protocol::H2, _) => {
            // Each request is decided (an unknown destination by its default) and answered
            // in HTTP, which says more than a closed connection.
            let speaks = match sniffed.protocol {
                Protocol::Http1 => http::Speaks::Http1,
                _ => http::Speaks::H2OrEither,
            };
            http::serve(
                Rewind::new(sniffed.prefix, client),
                http_conn(false),
                speaks,
            )
            .await;
            served("http")
        }
        (_, None) => {
            let d = snap.decide_unknown_destination();
            if d.enforced != Action::Allow {
                return refuse(
                    format!("{}: {} ({})", conn.dst, reason(&d), sniffed.protocol),
                    None,
                );
            }
            pass_through(client, sniffed.prefix, false, conn, inputs, |t, r| {
                let mut e = Ended::spliced(
                    "unknown destination, allowed by `unknown_destination: allow`",
                    t,
                    r,
                );
                e.protocol = if sni.is_some() { "tls" } else { "tcp" };
                e.function = sni.clone();
                e.decision.policy_commit = d.policy.commit.clone();
                e
            })
            .await
        }
        (Protocol::Tls(hello), Some(s)) => {
            if let Some(name) = &hello.sni {
                if !s.accepts_host(name, conn.dst.ip()) {
                    return refuse(
                        format!(
                            "SNI {name} does not name service {} (at {})",
                            s.name, conn.dst
                        ),
                        Some(&s.name),
                    );
                }
            }
            match (s.tls, &inputs.authority) {
                (TlsMode::Passthrough, _) => {
                    let name = s.name.to_string();
                    pass_through(client, sniffed.prefix, false, conn, inputs, |t, r| Ended {
                        protocol: "tls",
                        service: Some(name),
                        function: sni.clone(),
                        ..Ended::spliced("tls passthrough", t, r)
                    })
                    .await
                }
                (TlsMode::Intercept, Some(authority)) => {
                    let cfg = authority.server_config(&dst_host);
                    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                    let io = Rewind::new(sniffed.prefix, client);
                    match tokio::time::timeout(inputs.cfg.http.header_timeout, acceptor.accept(io))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let speaks = match tls.get_ref().1.alpn_protocol() {
                                Some(b"http/1.1") => http::Speaks::Http1,
                                _ => http::Speaks::H2OrEither,
                            };
                            // Boxed: serving over TLS (4,512 bytes, the TLS session inline)
                            // is the largest state of this future, and every plain HTTP and
                            // pass-through connection would hold its size while it lives.
                            Box::pin(http::serve(tls, http_conn(true), speaks)).await;
                            served("https")
                        }
                        Ok(Err(e)) => match crate::proxy::trust::refusal(&e) {
                            Some(how) => untrusted(how, &s.name),
                            None => refuse(format!("TLS handshake: {e}"), Some(&s.name)),
                        },
                        Err(_) => refuse("TLS handshake timed out".into(), Some(&s.name)),
                    }
                }
                (TlsMode::Intercept, None) => refuse(
                    "TLS interception is not set up on this gateway".into(),
                    Some(&s.name),
                ),
            }
        }
        (Protocol::Other(OtherReason::BadTls(e)), Some(s)) => {
            refuse(format!("malformed TLS: {e}"), Some(&s.name))
        }
        (Protocol::Other(reason), Some(s)) if s.tcp == TcpMode::Allow => {
            let name = s.name.to_string();
            let silent = *reason == OtherReason::Silent;
            pass_through(client, sniffed.prefix, silent, conn, inputs, |t, r| Ended {
                service: Some(name),
                ..Ended::spliced("tcp: allow", t, r)
            })
            .await
        }
        (Protocol::Other(_), Some(s)) => refuse(
            format!(
                "service {} does not allow non-HTTP TCP (tcp: deny; {})",
                s.name, sniffed.protocol
            ),
            Some(&s.name),
        ),
    }
}

fn reason(d: &crate::policy::Decision) -> String {
    d.reason
        .as_deref()
        .unwrap_or("denied by the policy default")
        .to_string()
}

/// Connects to the original destination, replays what sniffing read, and copies both ways;
/// `ended` says what the connection's record is, from what moved and how it ended. A
/// connection cut before it ended (the gateway stopped, which drops its task) is recorded
/// all the same, with what moved until then: its bytes may have reached the upstream.
async fn pass_through<'a, F>(
    client: TcpStream,
    prefix: Bytes,
    silent: bool,
    conn: &'a Connection,
    inputs: &'a ProxyInputs,
    ended: F,
) -> Ended
where
    F: FnOnce(upstream::Transfer, Result<(), upstream::ForwardError>) -> Ended,
{
    let cut = PassingCut {
        conn,
        inputs,
        moved: upstream::Moved::default(),
        ended: Some(ended),
    };
    let r = passing(client, prefix, silent, conn, inputs, &cut.moved).await;
    cut.end(r)
}

/// Writes a pass-through connection's record if its future is dropped before [`Self::end`].
struct PassingCut<'a, F: FnOnce(upstream::Transfer, Result<(), upstream::ForwardError>) -> Ended> {
    conn: &'a Connection,
    inputs: &'a ProxyInputs,
    moved: upstream::Moved,
    ended: Option<F>,
}

impl<F: FnOnce(upstream::Transfer, Result<(), upstream::ForwardError>) -> Ended> PassingCut<'_, F> {
    /// The connection ended: its record is the caller's to write.
    fn end(mut self, r: Result<(), upstream::ForwardError>) -> Ended {
        let ended = self.ended.take().expect("ended once");
        ended(self.moved.transfer(), r)
    }
}

impl<F: FnOnce(upstream::Transfer, Result<(), upstream::ForwardError>) -> Ended> Drop
    for PassingCut<'_, F>
{
    fn drop(&mut self) {
        let Some(ended) = self.ended.take() else {
            return;
        };
        let by_stop = self.inputs.drains.lane(self.conn.lane).cutting();
        let why = match by_stop {
            true => "cut by the gateway's stop",
            false => "cut before it ended",
        };
        let mut ended = ended(self.moved.transfer(), Err(upstream::ForwardError::Cut(why)));
        // At a stop every open connection ends at once: their records say so, not a warning
        // line each.
        ended.quiet = by_stop;
        finish(self.conn, self.inputs, ended);
    }
}

/// [`pass_through`]'s copying, counting what moves in `moved`.
async fn passing(
    mut client: TcpStream,
    prefix: Bytes,
    silent: bool,
    conn: &Connection,
    inputs: &ProxyInputs,
    moved: &upstream::Moved,
) -> Result<(), upstream::ForwardError> {
    let stats = &inputs.stats;
    let dial = upstream::connect_from(
        Some(inputs.interceptor.namespaces()),
        conn.netns,
        conn.dst,
        inputs.cfg.connect_timeout,
        false,
    );
    let mut upstream = match dial.await {
        Ok(u) => u,
        Err(e) => {
            stats.upstream_errors.fetch_add(1, Relaxed);
            return Err(e);
        }
    };
    stats.forwarded.fetch_add(1, Relaxed);
    // A client that said nothing within the sniff: a protocol whose server speaks first. Until
    // the upstream has, what the client sends is still sniffed, and HTTP or TLS is refused: a
    // client that waits out the sniff must not have its call spliced past the policy.
    let prefix = if silent {
        let idle = inputs.cfg.idle_timeout;
        let first = first_word(&mut client, &upstream, inputs.cfg.http.sniff_timeout);
        match tokio::time::timeout(idle, first).await {
            Ok(Ok(late)) => late,
            Ok(Err(e)) => return Err(e),
            // Neither side spoke: idle, as a spliced connection would be.
            Err(_) => return Err(upstream::ForwardError::Idle(idle)),
        }
    } else {
        prefix
    };
    if !prefix.is_empty() {
        use tokio::io::AsyncWriteExt;
        upstream.write_all(&prefix).await?;
        moved.up.fetch_add(prefix.len() as u64, Relaxed);
    }
    let idle = inputs.cfg.idle_timeout;
    let splicer = inputs
        .cfg
        .kernel_splice
        .then(|| inputs.interceptor.splicer())
        .flatten();
    let (client, upstream) = match splicer {
        Some(splicer) => {
            // What waits on the client beyond the sniffed bytes goes first, from here: the
            // kernel splice starts at a packet boundary.
            let (n, whole) = upstream::drain_waiting(&client, &upstream, DRAIN_ROUNDS).await?;
            moved.up.fetch_add(n, Relaxed);
            if whole {
                // Boxed: its state (4,712 bytes) would make every copied connection's
                // future that large too (1,512 bytes without it).
                let sent = moved.up.load(Relaxed);
                let spliced = Box::pin(upstream::splice_in_kernel(
                    splicer, client, upstream, sent, idle, moved,
                ));
                match spliced.await {
                    Ok((t, r)) => {
                        moved.up.store(t.up, Relaxed);
                        moved.down.store(t.down, Relaxed);
                        return r;
                    }
                    // What the kernel moved before a splice that could not be completed.
                    Err((client, upstream, k)) => {
                        moved.up.fetch_add(k.up, Relaxed);
                        moved.down.fetch_add(k.down, Relaxed);
                        (client, upstream)
                    }
                }
            } else {
                (client, upstream)
            }
        }
        None => (client, upstream),
    };
    upstream::splice_counted(client, upstream, idle, moved).await
}

/// After a silent opening: whichever side speaks first. The upstream: nothing to read yet (its
/// greeting is copied with the rest). The client: its opening, sniffed as any is, and refused
/// if it is HTTP or TLS (the service decides those per call, and they were not sent in time
/// to be); another protocol's bytes are returned to go first.
async fn first_word(
    client: &mut TcpStream,
    upstream: &TcpStream,
    limit: std::time::Duration,
) -> Result<Bytes, upstream::ForwardError> {
    tokio::select! {
        r = upstream.readable() => {
            r?;
            Ok(Bytes::new())
        }
        r = client.readable() => {
            r?;
            let late = sniff::sniff(client, limit).await?;
            match late.protocol {
                Protocol::Other(OtherReason::Unknown | OtherReason::Closed | OtherReason::Silent) => {
                    Ok(late.prefix)
                }
                other => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "refused: the client sent {other} only after the sniff's time, \
                         on a service that splices other TCP (tcp: allow)"
                    ),
                )
                .into()),
            }
        }
    }
}

/// Reads of what waits on a client before its connection is spliced in the kernel; a client
/// that keeps sending longer is copied by the gateway instead.
const DRAIN_ROUNDS: usize = 16;

/// Logs the connection, writes its record, and adds it to `status`.
///
/// A connection that ended well is logged at debug only: its record (or its calls' records)
/// is the audit trail, and the line cost each new connection a quarter of what the data path
/// spends on it (formatting, escaping, a write). One that ended early is a warning.
fn finish(conn: &Connection, inputs: &ProxyInputs, ended: Ended) {
    finish_after(conn, inputs, ended, conn.started.elapsed());
}

/// [`finish`] for a connection that ended `took` after it started (not necessarily now).
pub(super) fn finish_after(
    conn: &Connection,
    inputs: &ProxyInputs,
    ended: Ended,
    took: std::time::Duration,
) {
    let duration_ms = took.as_millis() as u64;
    let (w, dst, t) = (&conn.workload, conn.dst, ended.transfer);
    if ended.quiet {
        debug!(
            conn = conn.id, pid = w.pid, comm = w.comm.as_deref().unwrap_or("?"), dst = %dst, outcome = %ended.outcome,
            "connection ended"
        );
    } else if ended.outcome == "ok" {
        debug!(
            conn = conn.id, pid = w.pid, uid = w.uid, comm = w.comm.as_deref().unwrap_or("?"),
            cgroup = w.cgroup.as_deref().unwrap_or("?"), dst = %dst, protocol = ended.protocol,
            bytes_up = t.up, bytes_down = t.down, duration_ms, "connection closed"
        );
    } else {
        warn!(
            conn = conn.id, pid = w.pid, uid = w.uid, comm = w.comm.as_deref().unwrap_or("?"),
            cgroup = w.cgroup.as_deref().unwrap_or("?"), dst = %dst, protocol = ended.protocol,
            bytes_up = t.up, bytes_down = t.down, duration_ms, outcome = %ended.outcome,
            "connection ended"
        );
    }
    if let (Some(recorder), true) = (&inputs.recorder, ended.record) {
        let rec = Record::of_connection(ConnectionEnd {
            session: &conn.session,
            destination: crate::util::net::socket_text(dst),
            started_ms: conn.started_unix_ms,
            workload: SharedJson::of(w),
            protocol: ended.protocol,
            service: ended.service,
            function: ended.function,
            decision: ended.decision,
            latency_ms: duration_ms as f64,
            bytes_in: t.up,
            bytes_out: t.down,
        });
        if let Err(e) = recorder.submit(rec) {
            inputs.stats.record_errors.fetch_add(1, Relaxed);
            warn!(conn = conn.id, error = %e, "could not record a finished connection");
        }
    }
    inputs.stats.finished(ConnSummary {
        id: conn.id,
        started_unix_ms: conn.started_unix_ms,
        workload: conn.workload.clone(),
        original_dst: dst,
        bytes_up: t.up,
        bytes_down: t.down,
        duration_ms,
        outcome: ended.outcome,
    });
}

/// `bytes` as text, invalid UTF-8 replaced (a command name is almost always ASCII: checked
/// first, without the lossy conversion's chunking).
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The workload whose kept upstream connections this one may take: the cgroup and user the
/// kernel reported, never a default.
pub(super) fn owner_of(r: &Redirect) -> upstream::pool::Owner {
    upstream::pool::Owner {
        cgroup_id: r.workload.cgroup_id,
        uid: r.workload.uid,
    }
}

/// The workload the kernel reported for this connection, with what the host knows of it.
pub(super) fn workload_of(r: &Redirect, inputs: &ProxyInputs) -> Workload {
    let w = &r.workload;
    let comm_len = w.comm.iter().position(|&b| b == 0).unwrap_or(w.comm.len());
    let roots = || {
        inputs
            .interceptor
            .enabled()
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    let facts = inputs.names.facts(
        w.cgroup_id,
        w.tgid,
        inputs.interceptor.cgroup_mount(),
        roots,
    );
    let facts = facts.as_deref();
    let units = facts.map(|f| f.units.clone()).unwrap_or_default();
    let namespaces = inputs.interceptor.namespaces();
    let container = facts.and_then(|f| f.container.clone()).map(|mut c| {
        // Cached by id: read from the runtime's files once per container, usually
        // already when its namespace was opened.
        namespaces.containers().fill(&mut c);
        c
    });
    let netns = namespaces.inode(w.netns);
    Workload {
        pid: Some(w.tgid),
        tid: Some(w.pid),
        uid: Some(w.uid),
        gid: Some(w.gid),
        comm: Some(text(&w.comm[..comm_len])),
        cgroup_id: Some(w.cgroup_id),
        unit: units.unit,
        user_unit: units.user_unit,
        user_unit_uid: units.user_unit_uid,
        container,
        cgroup: facts.map(|f| f.cgroup.clone()),
        user: inputs.users.name(w.uid).map(|u| u.to_string()),
        exe: workload::exe(w.tgid),
        netns,
        netns_held: netns.is_some_and(|i| namespaces.pins().holds(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A command name is kept as text; bytes that are not UTF-8 are replaced, not dropped.
    #[test]
    fn comm_text_replaces_invalid_bytes() {
        assert_eq!(text(b"python3"), "python3");
        assert_eq!(text(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(text(b""), "");
    }

    /// The data path no longer sets TCP_NODELAY per accepted connection: it relies on Linux
    /// copying the listener's. If that ever stops holding, answers wait on Nagle.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay() {
        let listener = bind_one(SocketAddr::from((config::LISTEN_V4, 0))).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        assert!(accepted.nodelay().expect("getsockopt"));
        // The client's own socket is untouched: only what the listener accepts inherits it.
        assert!(!client.nodelay().expect("getsockopt"));
    }

    /// The prefix is letters only, one per start second; a session id with it is never
    /// masked in a record, where an all-digit hex prefix made card numbers.
    #[test]
    fn session_prefixes_are_letters_no_detector_takes_for_a_value() {
        assert_eq!(session_prefix(0), "a");
        assert_eq!(session_prefix(25), "z");
        assert_eq!(session_prefix(26), "ba");
        let now = 0x6932_7431;
        let p = session_prefix(now);
        assert_eq!(p.len(), 7);
        assert!(p.bytes().all(|c| c.is_ascii_lowercase()), "{p}");
        assert_ne!(session_prefix(now + 1), p);
        let masks = crate::obligations::mask::MaskRules::all_detectors();
        for secs in (now..now + 2_000_000).step_by(997) {
            let p = session_prefix(secs);
            for id in [1, 12_345, 1_234_567_890] {
                let s = session_id(&p, id);
                assert!(!masks.finds_in_any(&[&s]), "{s}");
            }
        }
        // The hex prefix of that second, and a connection number that makes the run
        // Luhn-valid: taken for a card.
        let hex = format!("{now:x}");
        let luhn = (10_000..10_010)
            .map(|id| session_id(&hex, id))
            .find(|s| masks.finds_in_any(&[s]))
            .expect("an old-style session id taken for a card number");
        assert!(luhn.starts_with("69327431-"), "{luhn}");
        for id in [1, 10_000, 10_001, 99_999_999, u64::MAX] {
            let s = session_id(&p, id);
            assert!(!masks.finds_in_any(&[&s]), "{s}");
        }
    }

    #[test]
    fn session_ids_are_prefix_dash_id() {
        assert_eq!(session_id("bxkqfza", 1), "bxkqfza-1");
        assert_eq!(
            session_id("bxkqfza", u64::MAX),
            format!("bxkqfza-{}", u64::MAX)
        );
    }

    /// A lane's timer closes its idled-out upstream connections by itself: no other call
    /// comes on the lane, and the upstream still sees its connection end.
    #[tokio::test]
    async fn each_lanes_timer_closes_its_idled_out_upstream_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (mut buf, mut seen) = ([0u8; 4096], Vec::new());
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            if let Ok(0) = s.read(&mut buf).await {
                let _ = ended_tx.send(());
            }
        });
        let ups = Arc::new(upstream::pool::Upstreams::new(
            Duration::from_secs(2),
            Duration::from_millis(300),
            1,
        ));
        let (_stop, stop_rx) = watch::channel(false);
        tokio::spawn(timer_anchor(0, ups.clone(), stop_rx));
        let slot = upstream::pool::Http1Slot::new(0, upstream::pool::tests::ONE_WORKLOAD);
        let body = upstream::pool::tests::get(&ups, &slot, addr).await;
        assert_eq!(&body[..], b"ok");
        ups.release_http1(addr, 0, &slot);
        tokio::time::timeout(Duration::from_secs(5), ended_rx)
            .await
            .expect("the idled-out connection was closed by the lane's timer")
            .expect("the upstream saw it end");
    }

    #[test]
    fn a_workload_block_is_reused_only_for_the_same_workload() {
        let blocks = WorkloadBlocks::default();
        let ada = Workload {
            pid: Some(10),
            tid: Some(11),
            comm: Some("ada".into()),
            ..Workload::default()
        };
        // Same thread id, another process (the id was reused): same slot, other block.
        let bob = Workload {
            comm: Some("bob".into()),
            ..ada.clone()
        };
        let made = std::cell::Cell::new(0);
        let make = |w: &Workload| {
            made.set(made.get() + 1);
            SharedJson::of(w)
        };
        let a = blocks.block(&ada, || make(&ada));
        assert_eq!(blocks.block(&ada, || make(&ada)).get(), a.get());
        assert_eq!(made.get(), 1);
        let b = blocks.block(&bob, || make(&bob));
        assert!(b.get().contains("bob"), "{}", b.get());
        assert_eq!(made.get(), 2);
        assert!(blocks.block(&ada, || make(&ada)).get().contains("ada"));
        assert_eq!(made.get(), 3);
    }
}
