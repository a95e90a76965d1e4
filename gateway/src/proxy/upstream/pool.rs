//! The forward stage for calls: HTTP clients to original destinations, pooled by destination,
//! TLS identity (server name and trusted CA) and workload, so that keep-alive and h2
//! multiplexing carry over from one call to the next of the same workload.
//!
//! HTTP/1 takes a shorter way ([`Upstreams::send_http1`]), in plain text and over TLS: an
//! intercepted HTTP/1 connection sends its requests one after another, so it keeps one
//! upstream connection while it is busy, in its own [`Http1Slot`], and a request costs no
//! pool lookup, lock or checkout. When the intercepted connection ends, or has waited a
//! second for its next request (`server1`'s quiet mark), its upstream connection waits in an
//! idle list for the next one of the same workload to the same destination (and, over TLS,
//! the same verified identity), as a pool would keep it: a new intercepted connection then
//! pays neither a connect nor a TLS handshake upstream. Each data-path thread (lane) has its
//! own idle lists, behind a lock no other thread takes on the data path, and sweeps them
//! about once a second ([`Upstreams::sweep_idle`]). A connection NTLM or Negotiate
//! authenticated is never kept for another ([`h1::binds`]).
//!
//! The clients are pruned (see [`Clients`]): idle ones when a new destination comes, the
//! least recently used past a bound.
//!
//! The upstream is always the connection's original destination: the request's Host or
//! `:authority` only names the call; it never picks where the bytes go.
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use crate::util::sync::LockExt;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::{Uri, body::Incoming};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::intercept::{netns::Namespaces, peers::Peers};
use crate::proxy::body::{BodyError, ProxyBody};

pub use super::h1::TlsIdentity;
use super::{
    ForwardError,
    h1::{self, H1Body, Sent, Upstream1},
};

pub type HttpClient = Client<Connector, ProxyBody>;

/// An idle HTTP/1 upstream connection and since when it idles.
type Kept = (Instant, Upstream1);

/// Idle HTTP/1 upstream connections kept per destination, workload and data-path thread, at
/// most.
const IDLE_PER_DESTINATION: usize = 64;

/// Pooled clients kept at most (one per destination and TLS identity, about 2 KiB each with
/// no connection); past it the least recently used go first.
const MAX_CLIENTS: usize = 2048;

/// How long a connection waits in an idle list before the lane's sweep frees its read buffer
/// (the sweep runs about once a second, so it is freed 1 to 2 s after it was kept): one taken
/// sooner, as when clients open a connection a call, keeps its buffer for its next answer.
/// A connection parked when its client went quiet was freed of it then.
const SHED_AFTER: Duration = Duration::from_secs(1);

/// Where a lane's idle HTTP/1 connections wait: per destination, namespace, TLS identity
/// (None: plain text), owner, and whether they carry credentials (marked for the kernel's
/// guard from their SYN on: a connection made without the mark never carries one).
type IdleKey = (SocketAddr, u64, Option<TlsIdentity>, Owner, bool);

/// The workload an idle HTTP/1 upstream connection was opened for, by its cgroup and user.
/// Only connections of the same workload take it again: a server may have authenticated the
/// TCP connection itself (NTLM, Negotiate with persistent auth), and then every request on it
/// passes as that workload's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub cgroup_id: u64,
    pub uid: u32,
}

/// One data-path thread's idle HTTP/1 connections by destination, newest last in each list.
///
/// A socket's readiness arrives on the thread whose runtime it was opened on, so a connection
/// used from another thread costs a cross-thread wake-up (an eventfd write and an extra epoll
/// round on both threads) on every call it carries: each lane keeps its own. Its lock is only
/// ever taken by its thread (and by [`Upstreams::forget_netns`]), so it stays uncontended and
/// in that thread's cache; aligned to its own cache lines for the same reason.
#[repr(align(128))]
struct IdleLane {
    lists: Mutex<HashMap<IdleKey, Vec<Kept>, foldhash::fast::RandomState>>,
    /// The thread that uses the lane, once it did: debug builds check that no other does.
    #[cfg(debug_assertions)]
    owner: std::sync::OnceLock<std::thread::ThreadId>,
}

/// TLS towards an upstream for [`Upstreams::send_http1`]: whom to verify, and the client
/// configuration, asked for only when a new connection is made.
pub struct UpstreamTls<'a> {
    pub name: &'a str,
    pub ca: Option<&'a std::path::Path>,
    pub config: &'a (dyn Fn() -> Result<Arc<ClientConfig>, String> + Sync),
}

impl UpstreamTls<'_> {
    fn matches(&self, id: Option<&TlsIdentity>) -> bool {
        id.is_some_and(|id| id.name == self.name && id.ca.as_deref() == self.ca)
    }

    fn identity(&self) -> TlsIdentity {
        TlsIdentity {
            name: self.name.to_string(),
            ca: self.ca.map(std::path::Path::to_path_buf),
        }
    }
}

/// Where and how to reach an upstream; one pool per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    pub dst: SocketAddr,
    /// The network namespace the upstream is dialled from (the workload's): the same address
    /// is another host in another namespace.
    pub netns: u64,
    /// TLS towards the upstream: the server name to verify, and the extra CA bundle.
    pub tls: Option<(String, Option<PathBuf>)>,
    /// Plain-text HTTP/2 with prior knowledge (the client spoke h2c).
    pub h2c: bool,
    /// The workload whose calls the client carries: its connections are not another's (see
    /// [`Owner`]).
    pub owner: Owner,
    /// Its calls carry a credential the gateway injects: its connections are made for
    /// credentials (marked for the kernel's guard; who would take one is looked at first, see
    /// [`Upstreams::with_peers`]).
    pub guarded: bool,
}

/// The pools, created on first use of a key.
pub struct Upstreams {
    clients: Mutex<Clients>,
    /// HTTP/1 connections no intercepted connection holds, one set per data-path thread
    /// ([`Http1Slot::new`]).
    idle_http1: Box<[IdleLane]>,
    connect_timeout: Duration,
    idle: Duration,
    /// Makes the sockets of upstream connections in the workloads' network namespaces.
    namespaces: Option<Arc<Namespaces>>,
    /// Who would take a connection made for credentials (see `intercept::peers`). Without it
    /// (no interception) nobody is looked at; the mark is set all the same.
    peers: Option<Peers>,
}

/// The pooled clients by key, pruned so that a workload reaching ever new destinations does
/// not grow them without end. A lookup only stamps its entry with a count, under the lock it
/// takes anyway (no clock read, no other lock); the pruning runs when a client is added (a
/// new destination, the cold path): a sweep, at most once per idle timeout, drops the clients
/// not used since the sweep before — unused for at least the idle timeout, so hyper has
/// closed their connections already. Past `max`, a sweep runs at once and, if that is not
/// enough, clients are dropped least recently used first. A dropped client's calls under way
/// keep their clone of it.
struct Clients {
    map: HashMap<UpstreamKey, Pooled>,
    /// When the last sweep ran, and the count of uses then.
    swept: (Instant, u64),
    /// Uses so far (lookups and additions): an entry's stamp orders it by recency.
    uses: u64,
    max: usize,
}

struct Pooled {
    client: HttpClient,
    /// [`Clients::uses`] at its last use.
    last: u64,
}

impl Clients {
    fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            swept: (Instant::now(), 0),
            uses: 0,
            max,
        }
    }

    fn get(&mut self, key: &UpstreamKey) -> Option<HttpClient> {
        let p = self.map.get_mut(key)?;
        self.uses += 1;
        p.last = self.uses;
        Some(p.client.clone())
    }

    /// Adds `client` for `key`, pruning first as the type's doc says.
    fn insert(&mut self, key: UpstreamKey, client: HttpClient, idle: Duration) {
        let now = Instant::now();
        let full = self.map.len() >= self.max;
        let (at, then) = self.swept;
        if full || now.duration_since(at) >= idle {
            self.map.retain(|_, p| p.last > then);
            self.swept = (now, self.uses);
        }
        if self.map.len() >= self.max {
            // Least recently used first: O(n log n) on a rare path, once per overflow, and it
            // makes room for a tenth of the bound so that the next few do not sort again.
            let mut ages: Vec<(u64, UpstreamKey)> =
                self.map.iter().map(|(k, p)| (p.last, k.clone())).collect();
            ages.sort_unstable_by_key(|(last, _)| *last);
            let excess = self.map.len() + 1 - self.max + self.max / 10;
            for (_, k) in ages.into_iter().take(excess) {
                self.map.remove(&k);
            }
        }
        self.uses += 1;
        self.map.insert(
            key,
            Pooled {
                client,
                last: self.uses,
            },
        );
    }
}

/// The upstream connection an intercepted HTTP/1 connection holds between its requests, the
/// data-path thread (lane) the connection is served on, and the workload it serves. A
/// response body puts the upstream connection back when it ends. No default: a slot is always
/// made for its lane and its workload.
pub struct Http1Slot {
    conn: h1::Slot,
    lane: usize,
    owner: Owner,
}

impl Http1Slot {
    /// The slot of a connection of `owner` served on data-path thread `lane`.
    pub fn new(lane: usize, owner: Owner) -> Self {
        Self {
            conn: h1::Slot::default(),
            lane,
            owner,
        }
    }

    fn take(&self) -> Option<Upstream1> {
        self.conn.locked().take()
    }

    /// The workload the slot's connection serves.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// The data-path thread the slot's connection is served on.
    pub fn lane(&self) -> usize {
        self.lane
    }
}

/// A response body from the upstream: from a pooled hyper client, or from this connection's
/// own HTTP/1 upstream connection.
pub enum UpstreamBody {
    Pooled(Incoming),
    Own(H1Body),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Pooled(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BodyError))),
            UpstreamBody::Own(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Pooled(b) => b.is_end_stream(),
            UpstreamBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Pooled(b) => b.size_hint(),
            UpstreamBody::Own(b) => b.size_hint(),
        }
    }
}

impl Upstreams {
    /// Pools for `lanes` data-path threads (at least one; a slot of a lane past them shares
    /// another's idle lists).
    pub fn new(connect_timeout: Duration, idle: Duration, lanes: usize) -> Self {
        Self {
            clients: Mutex::new(Clients::new(MAX_CLIENTS)),
            idle_http1: (0..lanes.max(1))
                .map(|_| IdleLane {
                    lists: Mutex::default(),
                    #[cfg(debug_assertions)]
                    owner: std::sync::OnceLock::new(),
                })
                .collect(),
            connect_timeout,
            idle,
            namespaces: None,
            peers: None,
        }
    }

    /// Dials upstreams from the workloads' own network namespaces.
    pub fn with_namespaces(mut self, namespaces: Arc<Namespaces>) -> Self {
        self.namespaces = Some(namespaces);
        self
    }

    /// Looks, before a connection that carries credentials is made, at who would take it (see
    /// `intercept::peers`).
    pub fn with_peers(mut self, peers: Peers) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Connects to `dst` from the namespace `netns`, marked to carry credentials when
    /// `credential` says so.
    async fn connect(
        &self,
        dst: SocketAddr,
        netns: u64,
        credential: bool,
    ) -> Result<TcpStream, ForwardError> {
        if let Some(peers) = self.peers.as_ref().filter(|_| credential) {
            peers.before_connect(dst, netns).await?;
        }
        super::connect_from(
            self.namespaces.as_deref(),
            netns,
            dst,
            self.connect_timeout,
            credential,
        )
        .await
    }

    /// Sends `req` (origin-form, with its Host) to the HTTP/1 upstream `dst` (over TLS when
    /// `tls` says so) over the connection `slot` holds, or a kept or new one; the answer's body
    /// puts that connection back in `slot` for the next request when it ends. A kept
    /// connection the upstream closed meanwhile is replaced, and the request, which it never
    /// took, goes on the new one. `guarded`: the request carries an injected credential, and
    /// goes only on a connection made for credentials.
    pub async fn send_http1(
        &self,
        slot: &Http1Slot,
        dst: SocketAddr,
        netns: u64,
        tls: Option<UpstreamTls<'_>>,
        guarded: bool,
        req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let mut req = h1::encode(req).await?;
        let held = slot
            .take()
            .and_then(|mut c| (!c.looks_closed()).then_some(c));
        let held = match held {
            // A request on the same connection naming another server (no SNI, another Host)
            // needs an upstream verified as that one, and a request with a credential a
            // connection made for credentials (and one without, one made without): the held
            // one waits for its own kind.
            Some(c)
                if !same_tls(tls.as_ref(), c.identity()) || c.carries_credentials() != guarded =>
            {
                // A full list closes it: the request needs another kind anyway.
                drop(self.keep_http1(slot, dst, netns, c));
                None
            }
            other => other,
        };
        let kept = held.or_else(|| {
            let identity = tls.as_ref().map(|t| t.identity());
            self.kept_http1(slot, (dst, netns, identity, slot.owner, guarded))
        });
        let mut conn = match kept {
            Some(c) => c,
            None => {
                self.connect_http1(dst, netns, tls.as_ref(), guarded)
                    .await?
            }
        };
        loop {
            match h1::send(conn, req, &slot.conn).await? {
                Sent::Answered(resp) => return Ok(resp.map(UpstreamBody::Own)),
                // A new connection is not retried again: its failure is the answer.
                Sent::Retry(again) => {
                    req = again;
                    conn = self
                        .connect_http1(dst, netns, tls.as_ref(), guarded)
                        .await?;
                }
            }
        }
    }

    /// A new upstream connection for [`Upstreams::send_http1`], with its TLS handshake done;
    /// marked to carry credentials when `credential` says so.
    async fn connect_http1(
        &self,
        dst: SocketAddr,
        netns: u64,
        tls: Option<&UpstreamTls<'_>>,
        credential: bool,
    ) -> Result<Upstream1, ForwardError> {
        let tcp = self.connect(dst, netns, credential).await?;
        let Some(tls) = tls else {
            return Ok(Upstream1::new(tcp).for_credentials(credential));
        };
        let tls_error = |reason: String| ForwardError::Tls { dst, reason };
        let config = (tls.config)().map_err(tls_error)?;
        let server = ServerName::try_from(tls.name.to_string())
            .map_err(|_| tls_error(format!("{:?} is not a valid server name", tls.name)))?;
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(config).connect(server, tcp),
        )
        .await
        .map_err(|_| ForwardError::ConnectTimeout {
            dst,
            after: self.connect_timeout,
        })?
        .map_err(|e| tls_error(format!("{}: {e}", tls.name)))?;
        Ok(Upstream1::tls(stream, tls.identity()).for_credentials(credential))
    }

    /// Drops every connection kept from network namespace `netns` (it was closed): idle
    /// HTTP/1 connections and the pooled clients dialled from it. Calls under way keep theirs.
    pub fn forget_netns(&self, netns: u64) {
        for lane in &self.idle_http1 {
            lane.lists.locked().retain(|(_, n, _, _, _), _| *n != netns);
        }
        self.clients.locked().map.retain(|k, _| k.netns != netns);
    }

    /// Keeps the connection an intercepted connection held, when it ended, for the next one
    /// (one that went quiet goes through [`Self::quiet_http1`]).
    pub fn release_http1(&self, dst: SocketAddr, netns: u64, slot: &Http1Slot) {
        // Still out with a response body, that body was cut off: the connection is dropped
        // with it, since it cannot carry another request.
        let Some(conn) = slot.take() else { return };
        // A full list closes it.
        drop(self.keep_http1(slot, dst, netns, conn));
    }

    /// [`Self::release_http1`] for a connection that went quiet but stays open: its upstream
    /// connection goes to the idle list only while that has room. A full list would close it,
    /// and the client's next request would pay a new connection (and TLS handshake) for it.
    /// Kept either way, it gives back its read buffer.
    pub fn quiet_http1(&self, dst: SocketAddr, netns: u64, slot: &Http1Slot) {
        let Some(mut conn) = slot.take() else { return };
        conn.shed_buffer();
        let stays = if conn.is_private() {
            Some(conn)
        } else {
            self.keep_http1(slot, dst, netns, conn)
        };
        if let Some(conn) = stays {
            *slot.conn.locked() = Some(conn);
        }
    }

    /// The idle lists of `lane`, locked, from the lane's own thread.
    fn idle_lane(
        &self,
        lane: usize,
    ) -> std::sync::MutexGuard<'_, HashMap<IdleKey, Vec<Kept>, foldhash::fast::RandomState>> {
        let l = &self.idle_http1[lane % self.idle_http1.len()];
        #[cfg(debug_assertions)]
        {
            let me = std::thread::current().id();
            debug_assert_eq!(
                *l.owner.get_or_init(|| me),
                me,
                "idle lane {lane} used from a thread other than its own"
            );
        }
        l.lists.locked()
    }

    /// Closes the idle connections of `lane` that idled out or that their upstream closed (a
    /// taker skips them; this frees their sockets), and frees the read buffers of those kept
    /// for [`SHED_AFTER`] or longer. The lane's thread calls it about once a second.
    pub fn sweep_idle(&self, lane: usize) {
        let now = Instant::now();
        self.idle_lane(lane).retain(|_, kept| {
            kept.retain_mut(|(at, c)| {
                let usable = self.still_usable(*at, now, c);
                if usable && now.duration_since(*at) >= SHED_AFTER {
                    c.shed_buffer();
                }
                usable
            });
            !kept.is_empty()
        });
    }

    /// Puts `conn` in the idle list of `slot`'s lane and workload, or closes it when the
    /// upstream closed it or it is private to the connection that opened it. When the list is
    /// full it is handed back, still open, for the caller to keep or drop.
    #[must_use = "a connection the idle list has no room for is handed back"]
    fn keep_http1(
        &self,
        slot: &Http1Slot,
        dst: SocketAddr,
        netns: u64,
        mut conn: Upstream1,
    ) -> Option<Upstream1> {
        if conn.looks_closed() || conn.is_private() {
            return None;
        }
        let mut idle = self.idle_lane(slot.lane);
        let key = (
            dst,
            netns,
            conn.identity().cloned(),
            slot.owner,
            conn.carries_credentials(),
        );
        let kept = idle.entry(key).or_default();
        if kept.len() < IDLE_PER_DESTINATION {
            kept.push((Instant::now(), conn));
            None
        } else {
            Some(conn)
        }
    }

    fn kept_http1(&self, slot: &Http1Slot, key: IdleKey) -> Option<Upstream1> {
        let mut idle = self.idle_lane(slot.lane);
        let kept = idle.get_mut(&key)?;
        let now = Instant::now();
        while let Some((at, mut c)) = kept.pop() {
            if self.still_usable(at, now, &mut c) {
                return Some(c);
            }
        }
        None
    }

    /// A connection kept since `at` has not idled out, nor been closed by the upstream.
    fn still_usable(&self, at: Instant, now: Instant, c: &mut Upstream1) -> bool {
        now.duration_since(at) < self.idle && !c.looks_closed()
    }

    /// The client for `key`; `tls` supplies the client configuration when the key needs one.
    pub fn client(&self, key: &UpstreamKey, tls: Option<Arc<ClientConfig>>) -> HttpClient {
        let mut clients = self.clients.locked();
        if let Some(c) = clients.get(key) {
            return c;
        }
        let connector = Connector {
            dst: key.dst,
            netns: key.netns,
            namespaces: self.namespaces.clone(),
            peers: self.peers.clone().filter(|_| key.guarded),
            credential: key.guarded,
            tls: key
                .tls
                .as_ref()
                .zip(tls)
                .map(|((name, _), cfg)| (name.clone(), TlsConnector::from(cfg))),
            timeout: self.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(key.h2c)
            .build(connector);
        clients.insert(key.clone(), client.clone(), self.idle);
        client
    }
}

/// Whether a connection verified as `id` (None: plain text) serves calls that want `tls`.
fn same_tls(tls: Option<&UpstreamTls<'_>>, id: Option<&TlsIdentity>) -> bool {
    match tls {
        Some(t) => t.matches(id),
        None => id.is_none(),
    }
}

/// Connects to one destination, whatever the URI says.
#[derive(Clone)]
pub struct Connector {
    dst: SocketAddr,
    netns: u64,
    namespaces: Option<Arc<Namespaces>>,
    /// Set for a guarded key's client: who would take a connection is looked at first.
    peers: Option<Peers>,
    /// A guarded key's client: its connections are marked to carry credentials.
    credential: bool,
    tls: Option<(String, TlsConnector)>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if let Some(peers) = &this.peers {
                peers.before_connect(this.dst, this.netns).await?;
            }
            let tcp = super::connect_from(
                this.namespaces.as_deref(),
                this.netns,
                this.dst,
                this.timeout,
                this.credential,
            )
            .await?;
            let Some((name, connector)) = this.tls else {
                return Ok(TokioIo::new(UpstreamStream::Plain(tcp)));
            };
            let server = ServerName::try_from(name.clone()).map_err(|_| ForwardError::Tls {
                dst: this.dst,
                reason: format!("{name:?} is not a valid server name"),
            })?;
            let tls = tokio::time::timeout(this.timeout, connector.connect(server, tcp))
                .await
                .map_err(|_| ForwardError::ConnectTimeout {
                    dst: this.dst,
                    after: this.timeout,
                })?
                .map_err(|e| ForwardError::Tls {
                    dst: this.dst,
                    reason: format!("{name}: {e}"),
                })?;
            Ok(TokioIo::new(UpstreamStream::Tls(Box::new(tls))))
        })
    }
}

pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(_) => Connected::new(),
            UpstreamStream::Tls(t) => {
                if t.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn key(port: u16) -> UpstreamKey {
        UpstreamKey {
            dst: SocketAddr::from(([127, 0, 0, 1], port)),
            netns: 0,
            tls: None,
            h2c: false,
            owner: ONE_WORKLOAD,
            guarded: false,
        }
    }

    /// The workload of the tests where only one calls.
    pub(crate) const ONE_WORKLOAD: Owner = Owner {
        cgroup_id: 1,
        uid: 0,
    };

    /// A GET of `/` on `slot`'s HTTP/1 connection to `addr` (taken from the idle list or
    /// opened), its answer's body whole.
    pub(crate) async fn get(up: &Upstreams, slot: &Http1Slot, addr: SocketAddr) -> Bytes {
        use http_body_util::BodyExt;
        let req = Request::get("/")
            .header("host", "upstream.test")
            .body(
                http_body_util::Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .expect("request");
        let resp = up
            .send_http1(slot, addr, 0, None, false, req)
            .await
            .expect("call");
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    fn has(up: &Upstreams, port: u16) -> bool {
        up.clients.locked().map.contains_key(&key(port))
    }

    fn count(up: &Upstreams) -> usize {
        up.clients.locked().map.len()
    }

    #[tokio::test]
    async fn clients_unused_for_an_idle_timeout_are_dropped_when_another_is_added() {
        let idle = Duration::from_millis(300);
        let up = Upstreams::new(Duration::from_secs(1), idle, 1);
        for port in 1..=1000 {
            up.client(&key(port), None);
        }
        assert_eq!(count(&up), 1000);
        // Lookups alone never prune (and take no other lock than the map's).
        for port in 1..=1000 {
            up.client(&key(port), None);
        }
        assert_eq!(count(&up), 1000);
        tokio::time::sleep(idle).await;
        // The first sweep finds every one used since the start.
        up.client(&key(5000), None);
        assert_eq!(count(&up), 1001);
        up.client(&key(1), None);
        tokio::time::sleep(idle).await;
        // The next drops those unused since the sweep before: all but 1 and 5000.
        up.client(&key(5001), None);
        assert_eq!(count(&up), 3);
        assert!(has(&up, 1) && has(&up, 5000) && has(&up, 5001));
        // Within the idle timeout of a sweep, nothing is swept again.
        up.client(&key(5002), None);
        assert_eq!(count(&up), 4);
    }

    #[tokio::test]
    async fn past_the_bound_the_least_recently_used_go_first() {
        let mut up = Upstreams::new(Duration::from_secs(1), Duration::from_secs(3600), 1);
        up.clients = Mutex::new(Clients::new(100));
        for port in 1..=100 {
            up.client(&key(port), None);
        }
        up.client(&key(1), None);
        up.client(&key(101), None);
        // A tenth of the bound and one more make room: 2..=12 were the oldest.
        assert_eq!(count(&up), 90);
        assert!(has(&up, 1) && has(&up, 101) && has(&up, 13));
        assert!((2..=12).all(|p| !has(&up, p)));

        // The measured leak: 15,000 destinations (ports) within the idle timeout.
        let up = Upstreams::new(Duration::from_secs(1), Duration::from_secs(3600), 1);
        for port in 1..=15_000 {
            up.client(&key(port), None);
            assert!(count(&up) <= MAX_CLIENTS);
        }
        assert!(has(&up, 15_000) && !has(&up, 1));
    }

    /// An upstream connection gives back its read buffer (room for at least 32 KiB after any
    /// answer) when its client connection goes quiet, or once it has been kept idle for
    /// [`SHED_AFTER`], at the lane's sweep; and still carries the next call (16 KiB answers,
    /// so that a read after the shed must make room for more than one read's worth).
    #[tokio::test]
    async fn an_idle_kept_connection_frees_its_read_buffer_and_still_carries_a_call() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const ANSWER: usize = 16 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut answer =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {ANSWER}\r\n\r\n").into_bytes();
            answer.resize(answer.len() + ANSWER, b'x');
            let (mut buf, mut seen) = ([0u8; 4096], Vec::new());
            for _ in 0..3 {
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                seen.clear();
                if s.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
        let up = Upstreams::new(Duration::from_secs(2), Duration::from_secs(30), 1);
        let slot = Http1Slot::new(0, ONE_WORKLOAD);
        let call = || get(&up, &slot, addr);
        let held = |up: &Upstreams| {
            let idle = up.idle_lane(0);
            let kept: Vec<_> = idle.values().flatten().collect();
            assert_eq!(kept.len(), 1, "the connection is kept");
            kept[0].1.buffer_capacity()
        };
        assert_eq!(call().await.len(), ANSWER);
        up.quiet_http1(addr, 0, &slot);
        assert_eq!(held(&up), 0);
        // Taken again by the client's next call, and released when the client closes.
        assert_eq!(call().await.len(), ANSWER);
        up.release_http1(addr, 0, &slot);
        // Swept before SHED_AFTER: the buffer stays for a taker that comes soon.
        up.sweep_idle(0);
        assert!(held(&up) > 8 * 1024, "held {}", held(&up));
        tokio::time::sleep(SHED_AFTER + Duration::from_millis(50)).await;
        up.sweep_idle(0);
        assert_eq!(held(&up), 0);
        // Taken again, it reads the next answer whole.
        assert_eq!(call().await.len(), ANSWER);
    }
}
