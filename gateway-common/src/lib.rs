//! Types shared by the eBPF programs (`gateway-ebpf`) and the userspace gateway.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding: the kernel hashes map
//! keys byte by byte, so a padding byte left uninitialised would make equal keys unequal.
//! Addresses are kept in IPv6 form (IPv4 as `::ffff:a.b.c.d`) and in network byte order, so one
//! key type serves both families; ports are in host byte order.
#![no_std]

/// Capacity of the redirect maps. LRU-bounded: an entry that is never consumed (the gateway
/// was down, the client gave up) ages out instead of filling the map.
pub const REDIRECT_MAP_ENTRIES: u32 = 65_536;

/// How many intercept rules the kernel evaluates (first match wins).
pub const MAX_RULES: u32 = 32;

/// How many DNS resolvers the kernel lets enabled cgroups reach on UDP port 53.
pub const MAX_RESOLVERS: u32 = 16;

/// How many network namespaces the gateway can have listeners in at once.
pub const MAX_NETNS: u32 = 4096;

/// Size of the ring buffer through which the kernel reports namespaces without listeners.
pub const NETNS_EVENTS_BYTES: u32 = 64 * 1024;

/// Length of a task's `comm`, as the kernel defines it.
pub const COMM_LEN: usize = 16;

/// Names of the maps, as the eBPF object defines them and userspace opens them.
pub mod maps {
    pub const CONFIG: &str = "CALLGATE_CONFIG";
    pub const RULES: &str = "CALLGATE_RULES";
    pub const BY_COOKIE: &str = "CALLGATE_BY_COOKIE";
    pub const BY_ADDR: &str = "CALLGATE_BY_ADDR";
    pub const COUNTERS: &str = "CALLGATE_COUNTERS";
    /// The DNS resolvers (IPv6-form address → 1) reachable on UDP port 53.
    pub const RESOLVERS: &str = "CALLGATE_RESOLVERS";
    /// The network namespaces (by cookie) in which the gateway's listeners are open.
    pub const NETNS: &str = "CALLGATE_NETNS";
    /// Ring buffer (not pinned): a namespace without listeners was seen ([`super::NetnsEvent`]).
    pub const NETNS_EVENTS: &str = "CALLGATE_NETNS_EVENTS";
    /// Every pinned map the object defines; all are pinned by name so that a restarted gateway
    /// (and the programs still attached from the previous run) share one set.
    pub const ALL: [&str; 11] = [
        CONFIG,
        RULES,
        BY_COOKIE,
        BY_ADDR,
        COUNTERS,
        RESOLVERS,
        NETNS,
        DIRECT_PENDING,
        DIRECT_OPEN,
        DIRECT_EVENTS,
        DIRECT_STATE,
    ];
    /// Hash: socket cookie → [`super::DirectConn`], a direct pass-through between
    /// `connect4/6` and the SYN (`sock_ops` moves it to [`DIRECT_OPEN`]). Not LRU: an entry
    /// evicted in that window would let a connection go unreported. A connect that fails
    /// before its SYN leaves its entry, which the gateway removes after a few seconds.
    pub const DIRECT_PENDING: &str = "CALLGATE_DIRECT_PENDING";
    /// Hash: socket cookie → [`super::DirectConn`], the direct pass-throughs open now.
    pub const DIRECT_OPEN: &str = "CALLGATE_DIRECT_OPEN";
    /// Ring buffer: each direct pass-through's opening and end ([`super::DirectEvent`]).
    /// Pinned, so what a gateway did not read before it stopped is read by the next.
    pub const DIRECT_EVENTS: &str = "CALLGATE_DIRECT_EVENTS";
    /// Array of u64, indexed by [`super::direct`]: the counts that bound the open direct
    /// pass-throughs, and until when the gateway vouches to record them.
    pub const DIRECT_STATE: &str = "CALLGATE_DIRECT_STATE";
    /// Sock hash (not pinned) with the splice verdict attached: the pass-through sockets
    /// spliced in the kernel, keyed by socket cookie.
    pub const SPLICE: &str = "CALLGATE_SPLICE";
    /// Sock hash (not pinned, no program): the same sockets as redirect targets. Each socket
    /// is put here before either goes into [`SPLICE`], so that the first byte either
    /// receives finds its peer.
    pub const SPLICE_TO: &str = "CALLGATE_SPLICE_TO";
    /// Hash (not pinned): socket cookie → [`super::SplicePeer`], where a spliced socket's bytes
    /// go and how many went.
    pub const SPLICE_PEERS: &str = "CALLGATE_SPLICE_PEERS";
}

/// Names of the programs in the eBPF object, with the hook each attaches to.
pub mod programs {
    pub const CONNECT4: &str = "callgate_connect4";
    pub const CONNECT6: &str = "callgate_connect6";
    pub const GETPEERNAME4: &str = "callgate_getpeername4";
    pub const GETPEERNAME6: &str = "callgate_getpeername6";
    pub const SENDMSG4: &str = "callgate_sendmsg4";
    pub const SENDMSG6: &str = "callgate_sendmsg6";
    pub const SOCK_OPS: &str = "callgate_sock_ops";
    /// `post_bind4/6`, attached at the cgroup root: the listener port is the gateway's alone.
    pub const BIND4: &str = "callgate_bind4";
    pub const BIND6: &str = "callgate_bind6";
    /// `sock_create`: the socket kinds an enabled cgroup may create at all.
    pub const SOCK_CREATE: &str = "callgate_sock_create";
    /// `cgroup_skb/egress`: what is sent to UDP port 53 must be a DNS query; no IPv6 routing
    /// header leaves.
    pub const EGRESS: &str = "callgate_egress";
    /// `cgroup_skb/ingress`: no packet of a connection that carries a credential the gateway
    /// injected ([`super::CREDENTIAL_DSCP`]) reaches a socket of an enabled cgroup.
    pub const INGRESS: &str = "callgate_ingress";
    /// `sk_skb/stream_verdict` on [`super::maps::SPLICE`]: what a spliced socket receives
    /// leaves by its peer.
    pub const SPLICE: &str = "callgate_splice";
}

/// The DSCP an upstream connection that carries an injected credential (or the gateway's own
/// call out) opens with, on its handshake, from RFC 2474's pool for experimental and local
/// use (`xxxx11`): `cgroup_skb/ingress` drops such packets at the sockets of enabled cgroups,
/// so that no governed workload completes a handshake with one, whatever namespaces, routes
/// or address translation lie between.
pub const CREDENTIAL_DSCP: u8 = 0b11_0011;

/// Capacity of the splice maps: two entries per spliced connection.
pub const SPLICE_ENTRIES: u32 = 65_536;

/// A spliced socket: the cookie of the socket its bytes are sent out of, and how many bytes
/// it has received and handed on (written by the verdict only, which the kernel runs under
/// the socket's lock: one writer per entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplicePeer {
    pub peer: u64,
    pub bytes: u64,
}

/// `Config::flags`: the gateway has written this config (programs do nothing until then).
pub const FLAG_CONFIGURED: u32 = 1 << 0;
/// `Config::flags`: let UDP other than DNS through (default: refused, so QUIC cannot bypass L7).
pub const FLAG_UDP_ALLOW: u32 = 1 << 1;
/// `Config::flags`: intercept TCP that matches no rule (default on; off = allow-list mode).
pub const FLAG_DEFAULT_INTERCEPT: u32 = 1 << 2;
/// `Config::flags`: let intercepted TCP go straight to its destination and report its
/// opening, end and byte counts for the record (a gateway without a policy, which decides
/// nothing from a connection's bytes), while the gateway vouches that it records them.
pub const FLAG_DIRECT: u32 = 1 << 3;

/// Direct pass-through: what bounds it, so that every opening and end the kernel will report
/// has room in the ring buffer, also while the gateway does not read it.
pub mod direct {
    /// Index into [`crate::maps::DIRECT_STATE`]: direct pass-throughs opened (kernel, atomic).
    pub const OPENED: u32 = 0;
    /// Index: direct pass-throughs whose end was reported (kernel, atomic).
    pub const CLOSED: u32 = 1;
    /// Index: open entries the gateway took out because their end can no longer be seen
    /// (their cgroup was disabled); written by the gateway alone.
    pub const SWEPT: u32 = 2;
    /// Index: `CLOCK_MONOTONIC` ns until which the gateway vouches that it records what the
    /// kernel reports; after it (a gateway stopped, hung, or unable to record), connections
    /// are redirected to the gateway again, which refuses what it cannot record.
    pub const VOUCHED_UNTIL: u32 = 3;
    /// Slots in the state array (more than are named, so a new one keeps the pinned size).
    pub const STATE_SLOTS: u32 = 8;
    /// At most this many direct pass-throughs are open at once; more go through the gateway.
    pub const OPEN_MAX: u64 = 4096;
    /// Capacity of the open map: the bound plus room for connects admitted at the same time.
    pub const OPEN_ENTRIES: u32 = OPEN_MAX as u32 + 1024;
    /// Size of the events ring.
    pub const EVENTS_BYTES: u32 = 2 << 20;
    /// Room one event takes in the ring: the event and the ring's 8-byte header.
    pub const EVENT_ROOM: u64 = 136;
    /// A connection is admitted only while the ring holds less than this: the rest is room
    /// for the two events of every connection that can be open.
    pub const ADMIT_BELOW_BYTES: u64 =
        (EVENTS_BYTES as u64) - 2 * EVENT_ROOM * (OPEN_ENTRIES as u64);
    const _: () = assert!(size_of::<crate::DirectEvent>() as u64 + 8 <= EVENT_ROOM);
    const _: () = assert!(ADMIT_BELOW_BYTES >= EVENTS_BYTES as u64 / 4);
    /// [`crate::DirectEvent::kind`]: the SYN left.
    pub const OPENED_EVENT: u32 = 1;
    /// [`crate::DirectEvent::kind`]: the socket closed.
    pub const CLOSED_EVENT: u32 = 2;
    /// [`crate::DirectEvent::kind`], made by the gateway, never the kernel: its cgroup was
    /// disabled while it was open, so its end will not be reported.
    pub const SWEPT_EVENT: u32 = 3;
    /// `DirectEvent::old_state` of a connection that never got an answer to its SYN.
    pub const TCP_SYN_SENT: u32 = 2;
    /// [`crate::DirectConn::fins`]: the socket sent its FIN (it went to FIN_WAIT1 or LAST_ACK).
    pub const FIN_SENT: u32 = 1;
    /// [`crate::DirectConn::fins`]: the socket received the peer's FIN (CLOSE_WAIT, CLOSING).
    pub const FIN_RECEIVED: u32 = 2;
    /// [`crate::DirectConn::fins`]: after the socket sent its FIN, a segment carrying the
    /// peer's FIN arrived; [`crate::DirectConn::fin_end`] is the sequence number past it.
    pub const FIN_SEEN: u32 = 4;
}

/// A direct pass-through: where it went, who made it, and when (`CLOCK_MONOTONIC` ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectConn {
    pub redirect: Redirect,
    pub started_ns: u64,
    /// [`direct::FIN_SENT`], [`direct::FIN_RECEIVED`]: which FINs its state changes showed,
    /// to take them out of the kernel's byte counts (which count a FIN as a byte).
    pub fins: u32,
    /// With [`direct::FIN_SEEN`]: the sequence number right after the peer's FIN. The FIN
    /// was taken in (and counted by the kernel as a byte received) when the socket's
    /// `rcv_nxt` reached it; a socket closed in FIN_WAIT2 before it came never did.
    pub fin_end: u32,
}

/// Reported on [`maps::DIRECT_EVENTS`] when a direct pass-through's SYN leaves and when its
/// socket closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectEvent {
    pub cookie: u64,
    /// When it happened (`CLOCK_MONOTONIC` ns).
    pub at_ns: u64,
    /// At close: payload bytes the destination acknowledged (sent up) and payload bytes
    /// received from it (the kernel's counts without the SYN and the FINs).
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// [`direct::OPENED_EVENT`] or [`direct::CLOSED_EVENT`].
    pub kind: u32,
    /// At close: the TCP state the socket left for `TCP_CLOSE`.
    pub old_state: u32,
    pub conn: DirectConn,
}

/// Index 0 of the config array: where the gateway listens and who it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Gateway listener for IPv4 (and IPv4-mapped) clients, network byte order.
    pub listen_v4: u32,
    /// Gateway listener for IPv6 clients, network byte order.
    pub listen_v6: [u32; 4],
    /// Listener port, host byte order.
    pub listen_port: u32,
    /// The gateway's tgid: its own sockets are never redirected, even inside an enabled cgroup.
    pub gateway_tgid: u32,
    pub flags: u32,
    /// Number of valid entries in the rules array.
    pub rule_count: u32,
}

/// `Rule::action`.
pub const RULE_INTERCEPT: u32 = 1;
pub const RULE_BYPASS: u32 = 2;

/// One entry of the intercept set: a CIDR and a port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Network address in IPv6 form, network byte order, already masked.
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    /// Inclusive port range, host byte order.
    pub port_lo: u32,
    pub port_hi: u32,
    pub action: u32,
    pub _pad: u32,
}

impl Rule {
    /// Whether `addr`/`port` (IPv6 form, network order; host-order port) fall in this rule.
    #[inline(always)]
    pub fn matches(&self, addr: &[u32; 4], port: u32) -> bool {
        port >= self.port_lo
            && port <= self.port_hi
            && addr[0] & self.mask[0] == self.addr[0]
            && addr[1] & self.mask[1] == self.addr[1]
            && addr[2] & self.mask[2] == self.addr[2]
            && addr[3] & self.mask[3] == self.addr[3]
    }
}

/// A socket's endpoint: the key by which the gateway finds a redirected connection from the
/// peer address `accept()` returns, in the network namespace of the listener that accepted
/// it (every namespace has its own 127.0.0.1, so the address alone is ambiguous).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// Network namespace cookie (`bpf_get_netns_cookie`, `SO_NETNS_COOKIE`).
    pub netns: u64,
    pub addr: [u32; 4],
    pub port: u32,
    /// Always zero: the kernel hashes every byte of a key.
    pub _pad: u32,
}

/// Reported by the kernel when a socket of an enabled cgroup is created, or connects, in a
/// network namespace where the gateway has no listener: userspace opens listeners there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsEvent {
    pub netns: u64,
    /// The thread that saw it (host pid namespace): `/proc/<pid>/ns/net` is that namespace
    /// while the thread lives and stays in it.
    pub pid: u32,
    pub tgid: u32,
}

/// Who made the connection, read from the current task at connect time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Network namespace cookie of the socket.
    pub netns: u64,
    pub comm: [u8; COMM_LEN],
}

/// What the workload asked for and who it was: stored at connect, consumed at accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    /// Original destination, IPv6 form, network byte order.
    pub dst_addr: [u32; 4],
    /// Original destination port, host byte order.
    pub dst_port: u32,
    /// Address family of the workload's socket (`AF_INET` or `AF_INET6`).
    pub family: u32,
    pub workload: Workload,
}

/// Indices into the per-CPU counters array.
pub mod counter {
    pub const REDIRECTED: u32 = 0;
    pub const SKIPPED_GATEWAY: u32 = 1;
    pub const BYPASSED: u32 = 2;
    pub const UDP_DNS: u32 = 3;
    pub const UDP_REFUSED: u32 = 4;
    pub const MAP_ERRORS: u32 = 5;
    pub const KEYED: u32 = 6;
    pub const PEERNAME_REWRITTEN: u32 = 7;
    pub const REFUSED_OTHER: u32 = 8;
    /// UDP to port 53 of an address that is not a configured resolver.
    pub const DNS_REFUSED: u32 = 9;
    /// A bind of the listener port by anyone but the gateway.
    pub const BIND_REFUSED: u32 = 10;
    /// A socket an enabled cgroup may not create (raw, ICMP, UDP-Lite, SCTP, ...).
    pub const SOCKET_REFUSED: u32 = 11;
    /// A UDP datagram to port 53 that is not one DNS query (dropped by `cgroup_skb/egress`).
    pub const DNS_MALFORMED: u32 = 12;
    /// An IPv6 packet with a routing header (it would go to an address no hook checked).
    pub const ROUTED_REFUSED: u32 = 13;
    /// A socket created or connected in a network namespace without listeners (reported).
    pub const NETNS_PENDING: u32 = 14;
    /// A SYN to the listener held back (dropped; TCP sends it again) because the listeners
    /// of its namespace were not open yet.
    pub const SYN_HELD: u32 = 15;
    /// A connection let go straight to its destination, its end reported for the record.
    pub const DIRECT: u32 = 16;
    /// A direct pass-through whose opening or end could not be reported (should not happen:
    /// admission keeps room for both); its record is missing.
    pub const DIRECT_UNREPORTED: u32 = 17;
    /// A packet carrying an injected credential ([`super::CREDENTIAL_DSCP`]) dropped at a
    /// socket of an enabled cgroup.
    pub const CREDENTIAL_REFUSED: u32 = 18;
    /// Slots in the counters map: more than are named, so that a new counter does not change
    /// the pinned map's size (which would make an upgrade refuse the previous run's maps).
    pub const COUNT: u32 = 32;
    /// Names in index order, for status and metrics.
    pub const NAMES: [&str; 19] = [
        "redirected",
        "skipped_gateway",
        "bypassed",
        "udp_dns",
        "udp_refused",
        "map_errors",
        "keyed",
        "peername_rewritten",
        "refused_other",
        "dns_refused",
        "bind_refused",
        "socket_refused",
        "dns_malformed",
        "routed_refused",
        "netns_pending",
        "syn_held",
        "direct",
        "direct_unreported",
        "credential_refused",
    ];
}

/// `::ffff:a.b.c.d` for an IPv4 address in network byte order.
#[inline(always)]
pub const fn v4_mapped(addr_be: u32) -> [u32; 4] {
    [0, 0, u32::from_be(0x0000_ffff), addr_be]
}

/// Whether an IPv6-form address (network byte order) is IPv4-mapped.
#[inline(always)]
pub const fn is_v4_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == u32::from_be(0x0000_ffff)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, and have no padding or invalid bit patterns.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::Redirect {}
    unsafe impl aya::Pod for super::NetnsEvent {}
    unsafe impl aya::Pod for super::SplicePeer {}
    unsafe impl aya::Pod for super::DirectConn {}
    unsafe impl aya::Pod for super::DirectEvent {}
}
