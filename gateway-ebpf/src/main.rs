//! callgate's kernel side: redirects the TCP connections of enabled cgroups into the gateway.
//!
//! - `connect4/6` rewrite an intercepted destination to the gateway listener and remember the
//!   original destination and the workload, keyed by socket cookie;
//! - `sock_ops` re-keys that entry by the client's local address and port as soon as the port is
//!   bound (before the SYN leaves), which is what the gateway sees as the peer of `accept()`;
//! - `getpeername4/6` hand the workload its original destination back;
//! - `connect4/6` and `sendmsg4/6` let DNS to the configured resolvers through and refuse other
//!   UDP (QUIC would bypass L7; port 53 elsewhere is a tunnel);
//! - `cgroup_skb/egress` reads every UDP datagram to port 53 and drops what is not one
//!   plausible DNS query (the sock_addr hooks see the address, never the payload), and drops
//!   IPv6 packets with a routing header (they go to an address no hook saw);
//! - `cgroup_skb/ingress` drops every packet marked as carrying a credential the gateway
//!   injected (`CREDENTIAL_DSCP`) before a socket of an enabled cgroup receives it;
//! - `sock_create` lets an enabled cgroup create only the sockets the hooks above govern: TCP
//!   and MPTCP streams and UDP (ICMP echo, UDP-Lite and raw IP would carry data past them);
//! - `post_bind4/6`, attached at the cgroup root, keep the listener port for the gateway alone,
//!   also while it is down, so that no process can receive the connections redirected to it.
//!
//! - every redirect is keyed by the socket's network namespace as well (each namespace has its
//!   own 127.0.0.1): the gateway opens its listeners inside every namespace an enabled
//!   workload uses. A socket created or connected in a namespace without listeners is
//!   reported on a ring buffer, and its SYN to the listener is held back (dropped; `sock_ops`
//!   gave it a short first retransmission timeout, so TCP sends it again within tens of
//!   milliseconds) until they are open: never let through, never refused for want of a
//!   listener that is on its way.
//!
//! - `splice` (`sk_skb/stream_verdict` on a sock hash the gateway fills) sends what one
//!   socket of a pass-through connection receives out of the other (found in a second sock
//!   hash, without programs, which both sockets join first), inside the kernel, and counts
//!   the bytes.
//!
//! - direct pass-through (a gateway without a policy, which decides nothing from bytes):
//!   `connect4/6` let an intercepted connection go straight to its destination while the
//!   gateway vouches that it records, and `sock_ops` reports its opening and its end, with the
//!   bytes each way, on a ring buffer for the gateway's connection record. Admission keeps
//!   room in the ring for both reports of every open one; without room, or without the
//!   gateway's word, the connection is redirected to the gateway as above.
//!
//! Every entry point is a thin wrapper; the logic returns plain verdicts. A program that cannot
//! record where a connection was going refuses it: nothing reaches the network ungoverned.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add`; the intrinsic lowers to BPF's atomic add.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TIMEOUT_INIT, BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT,
        BPF_TCP_CLOSING, BPF_TCP_FIN_WAIT1, BPF_TCP_LAST_ACK, BPF_TCP_SYN_SENT, bpf_sock_addr,
        bpf_sock_ops,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
            bpf_ktime_get_ns, bpf_skc_to_mptcp_sock,
        },
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map, sock_ops, stream_verdict},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use gateway_common::{
    COMM_LEN, CREDENTIAL_DSCP, Config, DirectConn, DirectEvent, FLAG_CONFIGURED,
    FLAG_DEFAULT_INTERCEPT, FLAG_DIRECT, FLAG_UDP_ALLOW, MAX_NETNS, MAX_RESOLVERS, MAX_RULES,
    NETNS_EVENTS_BYTES, NetnsEvent, REDIRECT_MAP_ENTRIES, RULE_INTERCEPT, Redirect, Rule,
    SPLICE_ENTRIES, SockKey, SplicePeer, Workload, counter, direct, is_v4_mapped, v4_mapped,
};

/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_ICMPV6: u32 = 58;
const IPPROTO_MPTCP: u32 = 262;
const DNS_PORT: u32 = 53;

#[map]
static CALLGATE_CONFIG: Array<Config> = Array::pinned(1, 0);
#[map]
static CALLGATE_RULES: Array<Rule> = Array::pinned(MAX_RULES, 0);
#[map]
static CALLGATE_BY_COOKIE: LruHashMap<u64, Redirect> = LruHashMap::pinned(REDIRECT_MAP_ENTRIES, 0);
#[map]
static CALLGATE_BY_ADDR: LruHashMap<SockKey, Redirect> =
    LruHashMap::pinned(REDIRECT_MAP_ENTRIES, 0);
#[map]
static CALLGATE_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);
#[map]
static CALLGATE_RESOLVERS: HashMap<[u32; 4], u32> = HashMap::pinned(MAX_RESOLVERS, 0);
#[map]
static CALLGATE_NETNS: HashMap<u64, u32> = HashMap::pinned(MAX_NETNS, 0);
#[map]
static CALLGATE_NETNS_EVENTS: RingBuf = RingBuf::with_byte_size(NETNS_EVENTS_BYTES, 0);
#[map]
static CALLGATE_DIRECT_PENDING: HashMap<u64, DirectConn> = HashMap::pinned(direct::OPEN_ENTRIES, 0);
#[map]
static CALLGATE_DIRECT_OPEN: HashMap<u64, DirectConn> = HashMap::pinned(direct::OPEN_ENTRIES, 0);
#[map]
static CALLGATE_DIRECT_EVENTS: RingBuf = RingBuf::pinned(direct::EVENTS_BYTES, 0);
#[map]
static CALLGATE_DIRECT_STATE: Array<u64> = Array::pinned(direct::STATE_SLOTS, 0);
#[map]
static CALLGATE_SPLICE: SockHash<u64> = SockHash::with_max_entries(SPLICE_ENTRIES, 0);
#[map]
static CALLGATE_SPLICE_TO: SockHash<u64> = SockHash::with_max_entries(SPLICE_ENTRIES, 0);
#[map]
static CALLGATE_SPLICE_PEERS: HashMap<u64, SplicePeer> =
    HashMap::with_max_entries(SPLICE_ENTRIES, 0);

// === splice ===

/// `sk_action` of an `sk_skb` program: leave the data to the socket's reader.
const SK_PASS: u32 = 1;
/// `sk_action` of an `sk_skb` program: consume the skb.
const SK_DROP: u32 = 0;

#[stream_verdict]
pub fn callgate_splice(ctx: SkBuffContext) -> u32 {
    splice(&ctx)
}

/// Sends what a spliced socket received out of its peer (flags 0: the peer's egress) and
/// counts it. A socket without an entry keeps its data for the gateway to read.
#[inline(always)]
fn splice(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(entry) = CALLGATE_SPLICE_PEERS.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    let len = u64::from(ctx.len());
    if len == 0 {
        // A bare FIN (`tcp_read_skb` hands it to the verdict too). Redirected, it reaches the
        // peer's backlog, which takes a send of 0 bytes for a hard error: it sets EPIPE on
        // the peer and stops its transmit, dropping whatever is redirected to it later (the
        // upstream's answer after a half-close). Dropped here, nothing is lost: the socket's
        // end of stream stays visible to the gateway's read and poll.
        return SK_DROP;
    }
    // SAFETY: a pointer into the map's value, valid for this run; the kernel runs a socket's
    // verdicts under its lock, so this socket's entry has one writer.
    let peer = unsafe {
        write_volatile(
            addr_of_mut!((*entry).bytes),
            read_volatile(addr_of!((*entry).bytes)) + len,
        );
        read_volatile(addr_of!((*entry).peer))
    };
    // SK_PASS when the peer was found and the skb queued to it, SK_DROP otherwise.
    CALLGATE_SPLICE_TO.redirect_skb(ctx, peer, 0) as u32
}

// === connect ===

#[cgroup_sock_addr(connect4)]
pub fn callgate_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn callgate_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, true)
}

#[inline(always)]
fn connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if is_gateway(cfg) {
        count(counter::SKIPPED_GATEWAY);
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    let (addr, port) = destination(sa, v6);
    let (ty, proto) = unsafe {
        (
            read_volatile(addr_of!((*sa).type_)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    match (ty, proto) {
        (SOCK_STREAM, IPPROTO_TCP) => {
            let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
            redirect_tcp(ctx, cfg, addr, port, v6, netns)
        }
        (SOCK_DGRAM, IPPROTO_UDP) => udp_verdict(cfg, &addr, port),
        (SOCK_DGRAM, IPPROTO_ICMP | IPPROTO_ICMPV6) => ALLOW,
        // MPTCP, SCTP and friends would carry calls around the gateway.
        _ => {
            count(counter::REFUSED_OTHER);
            REFUSE
        }
    }
}

#[inline(always)]
fn redirect_tcp(
    ctx: &SockAddrContext,
    cfg: &Config,
    addr: [u32; 4],
    port: u32,
    v6: bool,
    netns: u64,
) -> i32 {
    // A v4-mapped destination on a v6 socket still travels over IPv4: send it to the v4 listener.
    let target = if v6 && !is_v4_mapped(&addr) {
        cfg.listen_v6
    } else {
        v4_mapped(cfg.listen_v4)
    };
    if port == cfg.listen_port && addr == target {
        // Straight to the listener: left alone, and the gateway refuses it for want of an entry.
        return ALLOW;
    }
    if !intercepted(cfg, &addr, port) {
        count(counter::BYPASSED);
        return ALLOW;
    }
    let redirect = Redirect {
        dst_addr: addr,
        dst_port: port,
        family: if v6 { AF_INET6 } else { AF_INET },
        workload: workload(netns),
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if cfg.flags & FLAG_DIRECT != 0 && !mptcp_subflow(ctx) && admit_direct() {
        let conn = DirectConn {
            redirect,
            started_ns: unsafe { bpf_ktime_get_ns() },
            fins: 0,
            fin_end: 0,
        };
        // Without an entry it cannot be reported: redirected instead (also when the pending
        // map is full of connects that failed before their SYN, until the gateway clears them).
        if CALLGATE_DIRECT_PENDING.insert(cookie, conn, 0).is_ok() {
            count(counter::DIRECT);
            return ALLOW;
        }
        count(counter::MAP_ERRORS);
    }
    // Redirected all the same: the SYN waits in `egress` until the listeners are open.
    if !netns_ready(netns) {
        report_netns(netns, redirect.workload.pid, redirect.workload.tgid);
    }
    if CALLGATE_BY_COOKIE.insert(cookie, redirect, 0).is_err() {
        count(counter::MAP_ERRORS);
        return REFUSE;
    }
    let sa = ctx.sock_addr;
    unsafe {
        if v6 {
            write_ip6(sa, &target);
        } else {
            write_volatile(addr_of_mut!((*sa).user_ip4), cfg.listen_v4);
        }
        write_volatile(addr_of_mut!((*sa).user_port), port_be(cfg.listen_port));
    }
    count(counter::REDIRECTED);
    ALLOW
}

/// A subflow of an MPTCP socket (the first one too: the kernel opens it for the socket). It
/// never goes direct: the path manager would open more subflows from a kernel worker, whose
/// reports would name the worker and the root cgroup rather than the workload. Redirected, the
/// gateway's listener answers as plain TCP, MPTCP falls back to it, and no other subflow is
/// opened.
#[inline(always)]
fn mptcp_subflow(ctx: &SockAddrContext) -> bool {
    let sk = unsafe { read_volatile(addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk)) };
    !sk.is_null() && !unsafe { bpf_skc_to_mptcp_sock(sk.cast()) }.is_null()
}

/// First matching rule wins; no match falls back to the configured default.
#[inline(always)]
fn intercepted(cfg: &Config, addr: &[u32; 4], port: u32) -> bool {
    for i in 0..MAX_RULES {
        if i >= cfg.rule_count {
            break;
        }
        if let Some(rule) = CALLGATE_RULES.get(i) {
            if rule.matches(addr, port) {
                return rule.action == RULE_INTERCEPT;
            }
        }
    }
    cfg.flags & FLAG_DEFAULT_INTERCEPT != 0
}

#[inline(always)]
fn workload(netns: u64) -> Workload {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Workload {
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}

// === udp ===

#[cgroup_sock_addr(sendmsg4)]
pub fn callgate_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn callgate_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, true)
}

#[inline(always)]
fn sendmsg(ctx: &SockAddrContext, v6: bool) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if is_gateway(cfg) {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    let proto = unsafe { read_volatile(addr_of!((*sa).protocol)) };
    if proto != IPPROTO_UDP {
        return ALLOW;
    }
    let (addr, port) = destination(sa, v6);
    udp_verdict(cfg, &addr, port)
}

/// `udp: allow` lets every datagram out; otherwise only DNS, and only to a configured resolver
/// (port 53 anywhere else would carry whatever a workload wants to send). The payload is not
/// visible to these hooks: `callgate_egress` checks that it is a DNS query.
#[inline(always)]
fn udp_verdict(cfg: &Config, addr: &[u32; 4], port: u32) -> i32 {
    if cfg.flags & FLAG_UDP_ALLOW != 0 {
        ALLOW
    } else if port != DNS_PORT {
        count(counter::UDP_REFUSED);
        REFUSE
    } else if unsafe { CALLGATE_RESOLVERS.get(addr) }.is_some() {
        count(counter::UDP_DNS);
        ALLOW
    } else {
        count(counter::DNS_REFUSED);
        REFUSE
    }
}

// === DNS payload ===

/// Return values of cgroup_skb programs.
const PASS: i32 = 1;
const DROP: i32 = 0;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before the transport header: more than any real packet has.
const MAX_EXT_HEADERS: usize = 8;

const DNS_HEADER: usize = 12;
/// A name on the wire, length octets and the final zero included (RFC 1035 2.3.4).
const MAX_NAME: usize = 255;
/// A 255-octet name has at most 127 labels of one octet.
const MAX_LABELS: usize = 128;
const MAX_LABEL: u8 = 63;
/// Header flags a query may carry: RD, AD and CD. QR (a response), any opcode but QUERY, AA,
/// TC, RA, Z and a non-zero RCODE are not a stub resolver's query.
const QUERY_FLAGS: u16 = 0x0100 | 0x0020 | 0x0010;
const TYPE_OPT: u16 = 41;
/// The fixed part of the OPT record: root name, type, class, TTL, RDLENGTH.
const OPT_FIXED: usize = 11;
/// EDNS options (cookie, client subnet, padding, ...) fit in this; nothing real sends more.
const MAX_OPT_DATA: usize = 512;
const MAX_OPTIONS: usize = 8;

#[cgroup_skb(egress)]
pub fn callgate_egress(ctx: SkBuffContext) -> i32 {
    egress(&ctx)
}

#[cgroup_skb(ingress)]
pub fn callgate_ingress(ctx: SkBuffContext) -> i32 {
    ingress(&ctx)
}

/// Every packet a socket of an enabled cgroup receives. The gateway sends each upstream
/// connection that carries a credential it injected with `CREDENTIAL_DSCP`, from its SYN on:
/// such a packet is dropped here (counted as `credential_refused`), so that no governed
/// workload completes a handshake with the gateway's credential-bearing connection, wherever
/// its listener is (another network namespace, behind a veth, a bridge or NAT, a socket handed
/// over from another process) and whatever address the gateway dialled. The gateway's connect
/// then times out: the credential is never sent.
#[inline(always)]
fn ingress(ctx: &SkBuffContext) -> i32 {
    let Ok(first) = ctx.load::<u8>(0) else {
        return PASS;
    };
    let Ok(second) = ctx.load::<u8>(1) else {
        return PASS;
    };
    let dscp = match first >> 4 {
        // IPv4: the TOS byte's upper six bits.
        4 => second >> 2,
        // IPv6: the traffic class spans the two bytes after the version.
        6 => ((first & 0x0f) << 2) | (second >> 6),
        _ => return PASS,
    };
    if dscp == CREDENTIAL_DSCP {
        count(counter::CREDENTIAL_REFUSED);
        return DROP;
    }
    PASS
}

/// What a packet leaving an enabled cgroup is, as far as this program goes.
enum Egress {
    /// Not UDP to port 53: the sock_addr hooks already decided it.
    Other,
    /// UDP to port 53: where its payload starts, and the destination in its IP header
    /// (IPv6 form, network order).
    Dns { start: usize, dst: [u32; 4] },
    /// IPv6 with a routing header: it goes first to an address of the header, which no
    /// connect or sendmsg hook saw.
    Routed,
    /// Headers a socket of the workload does not produce (an IPv6 header chain longer than
    /// the walk, a fragment before fragmentation): the port cannot be known, so not passed.
    Unreadable,
}

/// Every packet an enabled cgroup sends.
///
/// - An IPv6 routing header (an unprivileged socket may set a type 4, SRv6, one with
///   `IPV6_RTHDR`) makes the kernel send the packet to the header's next segment, not to
///   the address `connect`/`sendmsg` were given and checked: dropped, counted as
///   `routed_refused`, whatever `udp:` says.
/// - The IP header's destination of a UDP datagram to port 53 must be a resolver (counted as
///   `dns_refused` otherwise), whatever the socket call named.
/// - `sendmsg4/6` let port 53 reach the resolvers only; this is what reaches them: exactly
///   one question (a name of labels, type, class) and at most an EDNS OPT record, nothing
///   after. Anything else on port 53 (a tunnel's bytes, a response, two questions, trailing
///   data) is dropped, which `sendmsg()` reports as `EPERM`, and counted as `dns_malformed`.
#[inline(always)]
fn egress(ctx: &SkBuffContext) -> i32 {
    let Some(cfg) = config() else {
        return PASS;
    };
    if is_held_syn(ctx) {
        count(counter::SYN_HELD);
        return DROP;
    }
    let class = classify(ctx);
    if let Egress::Routed = class {
        count(counter::ROUTED_REFUSED);
        return DROP;
    }
    if cfg.flags & FLAG_UDP_ALLOW != 0 {
        return PASS;
    }
    let ok = match class {
        Egress::Other => return PASS,
        Egress::Dns { start, dst } => {
            // Where the packet really goes: the sendmsg hooks judged the address the socket
            // call named; anything that makes the two differ must still end at a resolver.
            if unsafe { CALLGATE_RESOLVERS.get(dst) }.is_none() {
                count(counter::DNS_REFUSED);
                return DROP;
            }
            is_dns_query(ctx, start)
        }
        Egress::Routed | Egress::Unreadable => false,
    };
    if ok {
        PASS
    } else {
        count(counter::DNS_MALFORMED);
        DROP
    }
}

/// A SYN of a redirected connection whose namespace has no listeners yet. Dropping it fails
/// nothing: `connect()` ignores the error and TCP sends the SYN again after its retransmission
/// timeout (see `HELD_SYN_RTO`, doubling each time), by when the gateway has opened them. Before the connection is
/// established its socket sends nothing but SYNs, so the flag is all there is to check.
#[inline(always)]
fn is_held_syn(ctx: &SkBuffContext) -> bool {
    let Ok(first) = ctx.load::<u8>(0) else {
        return false;
    };
    let (proto, l4) = match first >> 4 {
        4 => (ctx.load::<u8>(9), (first & 0x0f) as usize * 4),
        6 => (ctx.load::<u8>(6), 40),
        _ => return false,
    };
    if proto != Ok(IPPROTO_TCP as u8) {
        return false;
    }
    match ctx.load::<u8>(l4 + 13) {
        Ok(flags) if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 => {}
        _ => return false,
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(redirect) = CALLGATE_BY_COOKIE.get_ptr(cookie) else {
        return false;
    };
    let w = unsafe { (*redirect).workload };
    if netns_ready(w.netns) {
        return false;
    }
    // Reported again: the first report may have been lost (a full ring) or failed.
    report_netns(w.netns, w.pid, w.tgid);
    true
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The packet starts at its IP header. Locally sent packets are not fragmented yet here (that
/// happens after the cgroup egress programs), so a UDP datagram is whole.
#[inline(always)]
fn classify(ctx: &SkBuffContext) -> Egress {
    let Ok(first) = ctx.load::<u8>(0) else {
        return Egress::Other;
    };
    let v6 = first >> 4 == 6;
    let (proto, l4) = match first >> 4 {
        4 => {
            let ihl = (first & 0x0f) as usize * 4;
            let (Ok(proto), Ok(frag)) = (ctx.load::<u8>(9), ctx.load::<u16>(6)) else {
                return Egress::Unreadable;
            };
            if proto == IPPROTO_UDP as u8 && u16::from_be(frag) & 0x3fff != 0 {
                return Egress::Unreadable;
            }
            (proto, ihl)
        }
        6 => {
            let Ok(mut next) = ctx.load::<u8>(6) else {
                return Egress::Unreadable;
            };
            let mut off = 40usize;
            for _ in 0..MAX_EXT_HEADERS {
                match next {
                    IPPROTO_ROUTING => return Egress::Routed,
                    IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => {
                        let (Ok(n), Ok(len)) = (ctx.load::<u8>(off), ctx.load::<u8>(off + 1))
                        else {
                            return Egress::Unreadable;
                        };
                        next = n;
                        off += (len as usize + 1) * 8;
                    }
                    IPPROTO_FRAGMENT => return Egress::Unreadable,
                    _ => break,
                }
            }
            if matches!(
                next,
                IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
            ) {
                return Egress::Unreadable;
            }
            (next, off)
        }
        _ => return Egress::Other,
    };
    if proto != IPPROTO_UDP as u8 {
        return Egress::Other;
    }
    match ctx.load::<u16>(l4 + 2) {
        Ok(port) if u16::from_be(port) as u32 == DNS_PORT => {}
        Ok(_) => return Egress::Other,
        Err(_) => return Egress::Unreadable,
    }
    let dst = if v6 {
        ctx.load::<[u32; 4]>(24)
    } else {
        ctx.load::<u32>(16).map(v4_mapped)
    };
    match dst {
        Ok(dst) => Egress::Dns { start: l4 + 8, dst },
        Err(_) => Egress::Unreadable,
    }
}

/// Whether the UDP payload at `start` is one DNS query and nothing else. Every read is
/// bounds-checked by the helper (a read past the end fails, and so does the query).
#[inline(always)]
fn is_dns_query(ctx: &SkBuffContext, start: usize) -> bool {
    let end = ctx.len() as usize;
    let Ok(header) = ctx.load::<[u16; 6]>(start) else {
        return false;
    };
    let [_id, flags, qd, an, ns, ar] = header.map(u16::from_be);
    if flags & !QUERY_FLAGS != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return false;
    }
    // The question name: labels of 1..=63 octets up to the root label; a compression pointer
    // (or any length with a high bit) has no place in a query.
    let name = start + DNS_HEADER;
    let mut off = name;
    let mut ended = false;
    for _ in 0..MAX_LABELS {
        let Ok(len) = ctx.load::<u8>(off) else {
            return false;
        };
        off += 1;
        if len == 0 {
            ended = true;
            break;
        }
        if len > MAX_LABEL {
            return false;
        }
        off += len as usize;
        // Room must be left for the root label.
        if off - name >= MAX_NAME {
            return false;
        }
    }
    if !ended {
        return false;
    }
    // QTYPE and QCLASS.
    off += 4;
    if ar == 0 {
        return off == end;
    }
    is_opt_record(ctx, off, end)
}

/// The EDNS OPT pseudo-record (RFC 6891) at `off`, ending exactly at `end`, its options
/// tiling its data.
#[inline(always)]
fn is_opt_record(ctx: &SkBuffContext, off: usize, end: usize) -> bool {
    let (Ok(root), Ok(ty), Ok(rdlen)) = (
        ctx.load::<u8>(off),
        ctx.load::<u16>(off + 1),
        ctx.load::<u16>(off + 9),
    ) else {
        return false;
    };
    let rdlen = u16::from_be(rdlen) as usize;
    if root != 0 || u16::from_be(ty) != TYPE_OPT || rdlen > MAX_OPT_DATA {
        return false;
    }
    let mut off = off + OPT_FIXED;
    if off + rdlen != end {
        return false;
    }
    for _ in 0..MAX_OPTIONS {
        if off >= end {
            break;
        }
        let Ok(len) = ctx.load::<u16>(off + 2) else {
            return false;
        };
        off += 4 + u16::from_be(len) as usize;
    }
    off == end
}

// === socket creation ===

#[cgroup_sock(sock_create)]
pub fn callgate_sock_create(ctx: SockContext) -> i32 {
    sock_create(&ctx)
}

/// The connect and sendmsg hooks run for TCP, MPTCP (its subflows are TCP) and UDP only: a
/// ping socket's echo payload, a UDP-Lite datagram, an SCTP association or a raw IP packet
/// would leave without either. ICMP and UDP-Lite follow `udp: allow`; raw sockets never pass
/// (they take `CAP_NET_RAW`, which a workload should not have; this holds if it does).
#[inline(always)]
fn sock_create(ctx: &SockContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    if is_gateway(cfg) {
        return ALLOW;
    }
    let sk = ctx.sock;
    let (family, ty, proto) = unsafe {
        (
            read_volatile(addr_of!((*sk).family)),
            read_volatile(addr_of!((*sk).type_)),
            read_volatile(addr_of!((*sk).protocol)),
        )
    };
    if family != AF_INET && family != AF_INET6 {
        return ALLOW;
    }
    let allowed = match (ty, proto) {
        (SOCK_STREAM, IPPROTO_TCP | IPPROTO_MPTCP) => true,
        (SOCK_DGRAM, IPPROTO_UDP) => true,
        (SOCK_DGRAM, _) => cfg.flags & FLAG_UDP_ALLOW != 0,
        _ => false,
    };
    if allowed {
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        if !netns_ready(netns) {
            let pid_tgid = bpf_get_current_pid_tgid();
            report_netns(netns, pid_tgid as u32, (pid_tgid >> 32) as u32);
        }
        ALLOW
    } else {
        count(counter::SOCKET_REFUSED);
        REFUSE
    }
}

// === bind guard ===

#[cgroup_sock(post_bind4)]
pub fn callgate_bind4(ctx: SockContext) -> i32 {
    bind_guard(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn callgate_bind6(ctx: SockContext) -> i32 {
    bind_guard(&ctx)
}

/// After the kernel chose the port (so `bind(0)` landing on it is caught too): a stream socket
/// on the listener port, on any address, belongs to the gateway or to nobody. Whoever held it
/// would receive every redirected connection. The gateway is its tgid as written in the config
/// and real uid 0: after a crash the tgid left in the map may be reused by some other process,
/// which an unprivileged one still cannot pass for.
#[inline(always)]
fn bind_guard(ctx: &SockContext) -> i32 {
    let Some(cfg) = config() else {
        return ALLOW;
    };
    let sk = ctx.sock;
    let (ty, port) = unsafe {
        (
            read_volatile(addr_of!((*sk).type_)),
            read_volatile(addr_of!((*sk).src_port)),
        )
    };
    if ty != SOCK_STREAM || port != cfg.listen_port {
        return ALLOW;
    }
    let root = bpf_get_current_uid_gid() as u32 == 0;
    if cfg.gateway_tgid != 0 && is_gateway(cfg) && root {
        return ALLOW;
    }
    count(counter::BIND_REFUSED);
    REFUSE
}

// === getpeername ===

#[cgroup_sock_addr(getpeername4)]
pub fn callgate_getpeername4(ctx: SockAddrContext) -> i32 {
    peername(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn callgate_getpeername6(ctx: SockAddrContext) -> i32 {
    peername(&ctx, true);
    ALLOW
}

#[inline(always)]
fn peername(ctx: &SockAddrContext, v6: bool) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(redirect) = CALLGATE_BY_COOKIE.get_ptr(cookie) else {
        return;
    };
    let (addr, port) = unsafe { ((*redirect).dst_addr, (*redirect).dst_port) };
    let sa = ctx.sock_addr;
    unsafe {
        if v6 {
            write_ip6(sa, &addr);
        } else {
            write_volatile(addr_of_mut!((*sa).user_ip4), addr[3]);
        }
        write_volatile(addr_of_mut!((*sa).user_port), port_be(port));
    }
    count(counter::PEERNAME_REWRITTEN);
}

// === sock_ops ===

#[sock_ops]
pub fn callgate_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TIMEOUT_INIT => return held_syn_timeout(&ctx),
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            key_by_local_address(&ctx, cookie);
            direct_opened(&ctx, cookie);
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            forget(&ctx, cookie);
            if let Some(conn) = CALLGATE_DIRECT_OPEN.get_ptr(cookie) {
                direct_closed(&ctx, cookie, unsafe { *conn });
            }
        }
        BPF_SOCK_OPS_STATE_CB => direct_state(&ctx, ctx.arg(1)),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => direct_segment(&ctx),
        _ => {}
    }
    0
}

/// The first retransmission timeout of a SYN that `egress` will hold back, in jiffies (40 ms at
/// HZ=250, 10 ms at HZ=1000): the gateway opens a namespace's listeners within a few
/// milliseconds of its report, and TCP's default of 1 s would be the first connection's
/// delay. Doubling from there over the default 6 retries, a namespace that cannot be opened
/// fails its connections after 1.3 s (HZ=1000) to 5 s (HZ=250).
const HELD_SYN_RTO: u32 = 10;

/// `BPF_SOCK_OPS_TIMEOUT_INIT`, asked for right before the SYN of a connection leaves (after
/// `connect4/6` stored its entry): a short timeout when its namespace has no listeners yet.
/// The reply counts only when the program returns 1.
#[inline(always)]
fn held_syn_timeout(ctx: &SockOpsContext) -> u32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(redirect) = CALLGATE_BY_COOKIE.get_ptr(cookie) else {
        return 0;
    };
    if netns_ready(unsafe { (*redirect).workload.netns }) {
        return 0;
    }
    ctx.set_reply(HELD_SYN_RTO);
    1
}

/// The local port is bound by now and the SYN has not left, so the entry exists before the
/// gateway can possibly `accept()` this connection. Only a socket going to the listener is
/// keyed: a cookie entry left by an earlier `connect()` of the same socket that failed
/// before its SYN does not key a later one that went elsewhere.
#[inline(always)]
fn key_by_local_address(ctx: &SockOpsContext, cookie: u64) {
    let Some(redirect) = CALLGATE_BY_COOKIE.get_ptr(cookie) else {
        return;
    };
    if !to_listener(ctx) {
        let _ = CALLGATE_BY_COOKIE.remove(cookie);
        return;
    }
    let redirect = unsafe { *redirect };
    let key = local_key(ctx, redirect.workload.netns);
    if CALLGATE_BY_ADDR.insert(key, redirect, 0).is_err() {
        count(counter::MAP_ERRORS);
        return;
    }
    // Ask for state changes so both entries go when the socket closes, not when LRU gets to
    // them. An entry whose end would not be seen is not left: the connection fails closed.
    if ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32).is_err() {
        let _ = CALLGATE_BY_ADDR.remove(key);
        count(counter::MAP_ERRORS);
        return;
    }
    count(counter::KEYED);
}

/// A socket that asked for its state changes closed: its entries go. The address-keyed one
/// is found from the socket itself (its local address and port and its namespace), never
/// through the cookie entry: that one sits in an LRU map that connects failing before their
/// SYN fill, and once it was evicted, an address entry left behind would name this workload
/// and destination for whoever next dialled the listener from the same address and port.
/// Deleting by address is safe for a socket connected to the listener: the kernel keeps its
/// address, port and destination from any other socket until it is unhashed, after this
/// callback, so the entry under its address is its own. Any other socket (a direct
/// pass-through, one whose flags another program set) may share its address and port with
/// a redirected connection going to the listener: it deletes nothing by address.
#[inline(always)]
fn forget(ctx: &SockOpsContext, cookie: u64) {
    let _ = CALLGATE_BY_COOKIE.remove(cookie);
    if to_listener(ctx) {
        // SAFETY: the helper takes the program's own context (sock_ops since Linux 5.15).
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        let _ = CALLGATE_BY_ADDR.remove(local_key(ctx, netns));
    }
}

/// Whether the socket's peer is the gateway's listener (either family's, on its port).
#[inline(always)]
fn to_listener(ctx: &SockOpsContext) -> bool {
    let Some(cfg) = config() else {
        return false;
    };
    let ops = ctx.ops;
    // Read unconditionally, as in `local_key`. `remote_port` holds the port as the wire has
    // it (network order) in its upper 16 bits.
    let (family, remote4, remote6, port) = unsafe {
        (
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).remote_ip4)),
            remote_ip6(ops),
            read_volatile(addr_of!((*ops).remote_port)),
        )
    };
    let port = u32::from(u16::from_be((port >> 16) as u16));
    let addr = if family == AF_INET {
        v4_mapped(remote4)
    } else {
        remote6
    };
    port == cfg.listen_port && (addr == v4_mapped(cfg.listen_v4) || addr == cfg.listen_v6)
}

// === direct pass-through ===

/// Whether a connection may go straight to its destination: the gateway vouches that it
/// records, fewer than [`direct::OPEN_MAX`] are open, and the ring has room for the reports
/// of every one that can be open.
#[inline(always)]
fn admit_direct() -> bool {
    let state = |i| CALLGATE_DIRECT_STATE.get(i).copied().unwrap_or(0);
    if unsafe { bpf_ktime_get_ns() } >= state(direct::VOUCHED_UNTIL) {
        return false;
    }
    let open = state(direct::OPENED)
        .wrapping_sub(state(direct::CLOSED))
        .wrapping_sub(state(direct::SWEPT));
    open < direct::OPEN_MAX
        && CALLGATE_DIRECT_EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) < direct::ADMIT_BELOW_BYTES
}

/// The SYN of a direct pass-through is about to leave: it is open, its end will be seen.
#[inline(always)]
fn direct_opened(ctx: &SockOpsContext, cookie: u64) {
    let Some(conn) = CALLGATE_DIRECT_PENDING.get_ptr(cookie) else {
        return;
    };
    let conn = unsafe { *conn };
    let _ = CALLGATE_DIRECT_PENDING.remove(cookie);
    if to_listener(ctx) {
        // Left by an earlier `connect()` of this socket that failed before its SYN: this one
        // was redirected.
        return;
    }
    if CALLGATE_DIRECT_OPEN
        .insert(cookie, conn, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count(counter::MAP_ERRORS);
        count(counter::DIRECT_UNREPORTED);
        return;
    }
    add_state(direct::OPENED);
    report_direct(cookie, direct::OPENED_EVENT, 0, (0, 0), &conn);
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// Notes the FINs a direct pass-through's state changes show. Once it sent its FIN, it asks
/// to see each segment that arrives (the peer's FIN is then told by no state change of its
/// own: FIN_WAIT2 goes to CLOSE whether it came or the socket was closed first).
#[inline(always)]
fn direct_state(ctx: &SockOpsContext, new_state: u32) {
    let fin = match new_state {
        BPF_TCP_FIN_WAIT1 | BPF_TCP_LAST_ACK => direct::FIN_SENT,
        BPF_TCP_CLOSE_WAIT | BPF_TCP_CLOSING => direct::FIN_RECEIVED,
        _ => return,
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(conn) = CALLGATE_DIRECT_OPEN.get_ptr_mut(cookie) {
        // SAFETY: a pointer into the map's value, valid for this run; the kernel runs a
        // socket's state changes under its lock, so this entry has one writer.
        unsafe {
            let fins = addr_of_mut!((*conn).fins);
            write_volatile(fins, read_volatile(fins) | fin);
        }
        if new_state == BPF_TCP_FIN_WAIT1 {
            let _ = ctx.set_cb_flags(
                (BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG) as i32,
            );
        }
    }
}

/// A segment arrived on a direct pass-through that sent its FIN (asked for in
/// [`direct_state`], so never on the established path): when it carries the peer's FIN,
/// note the sequence number past it, read from the TCP header (`skb_data` points at it,
/// `skb_len` spans it and the payload).
#[inline(always)]
fn direct_segment(ctx: &SockOpsContext) {
    const TCP_FIN: u32 = 0x01;
    let ops = ctx.ops;
    // SAFETY: fields of the context the kernel passed; the header is read only within the
    // bounds the kernel gave (`skb_data_end`), as the verifier checks.
    let (flags, len, data, end) = unsafe {
        (
            read_volatile(addr_of!((*ops).skb_tcp_flags)),
            read_volatile(addr_of!((*ops).skb_len)),
            (*ops).__bindgen_anon_3.skb_data as usize,
            (*ops).__bindgen_anon_4.skb_data_end as usize,
        )
    };
    if flags & TCP_FIN == 0 || data + 13 > end {
        return;
    }
    let th = data as *const u8;
    let (seq, doff) = unsafe {
        (
            u32::from_be_bytes([*th.add(4), *th.add(5), *th.add(6), *th.add(7)]),
            u32::from(*th.add(12) >> 4) * 4,
        )
    };
    let fin_end = seq.wrapping_add(len.saturating_sub(doff)).wrapping_add(1);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(conn) = CALLGATE_DIRECT_OPEN.get_ptr_mut(cookie) {
        // SAFETY: as in `direct_state`: one writer, under the socket's lock.
        unsafe {
            write_volatile(addr_of_mut!((*conn).fin_end), fin_end);
            let fins = addr_of_mut!((*conn).fins);
            write_volatile(fins, read_volatile(fins) | direct::FIN_SEEN);
        }
    }
}

/// A direct pass-through's socket closed: its end and byte counts go to the gateway.
#[inline(always)]
fn direct_closed(ctx: &SockOpsContext, cookie: u64, conn: DirectConn) {
    let old_state = ctx.arg(0);
    let ops = ctx.ops;
    let (acked, received, snd_una, snd_nxt, rcv_nxt) = unsafe {
        (
            read_volatile(addr_of!((*ops).bytes_acked)),
            read_volatile(addr_of!((*ops).bytes_received)),
            read_volatile(addr_of!((*ops).snd_una)),
            read_volatile(addr_of!((*ops).snd_nxt)),
            read_volatile(addr_of!((*ops).rcv_nxt)),
        )
    };
    // The kernel counts sequence numbers, and the SYN and each FIN take one. Up: what the
    // destination acknowledged, less the SYN (once it answered) and the FIN (when sent and
    // everything up to it acknowledged). Down: what arrived in order, less the peer's FIN
    // when it was taken in: a state that follows it (CLOSE_WAIT, CLOSING), or, after ours,
    // `rcv_nxt` past the FIN a segment carried (FIN_WAIT2 closes the same way whether the
    // peer's FIN came or the socket was closed before it).
    let syn = u64::from(old_state != BPF_TCP_SYN_SENT);
    let fin_acked = u64::from(conn.fins & direct::FIN_SENT != 0 && snd_una == snd_nxt);
    let fin_received = u64::from(
        conn.fins & direct::FIN_RECEIVED != 0
            || (conn.fins & direct::FIN_SEEN != 0 && rcv_nxt == conn.fin_end),
    );
    let bytes = (
        acked.saturating_sub(syn + fin_acked),
        received.saturating_sub(fin_received),
    );
    report_direct(cookie, direct::CLOSED_EVENT, old_state, bytes, &conn);
    let _ = CALLGATE_DIRECT_OPEN.remove(cookie);
    add_state(direct::CLOSED);
}

#[inline(always)]
fn report_direct(cookie: u64, kind: u32, old_state: u32, bytes: (u64, u64), conn: &DirectConn) {
    let event = DirectEvent {
        cookie,
        at_ns: unsafe { bpf_ktime_get_ns() },
        bytes_up: bytes.0,
        bytes_down: bytes.1,
        kind,
        old_state,
        conn: *conn,
    };
    if CALLGATE_DIRECT_EVENTS
        .output::<DirectEvent>(&event, 0)
        .is_err()
    {
        count(counter::DIRECT_UNREPORTED);
    }
}

/// Adds one to a count of the direct state array (atomically: any CPU may close one).
#[inline(always)]
fn add_state(index: u32) {
    if let Some(slot) = CALLGATE_DIRECT_STATE.get_ptr_mut(index) {
        // SAFETY: a pointer into the map's value, valid for this run and aligned for u64.
        #[cfg(target_arch = "bpf")]
        unsafe {
            use core::intrinsics::{AtomicOrdering, atomic_xadd};
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1);
        }
        // Host builds (clippy) only.
        #[cfg(not(target_arch = "bpf"))]
        unsafe { core::sync::atomic::AtomicU64::from_ptr(slot) }
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
}

/// The peer's address words, each read on its own (the verifier checks every context access).
///
/// # Safety
/// `ops` is the program's own context.
#[inline(always)]
unsafe fn remote_ip6(ops: *const bpf_sock_ops) -> [u32; 4] {
    unsafe {
        [
            read_volatile(addr_of!((*ops).remote_ip6[0])),
            read_volatile(addr_of!((*ops).remote_ip6[1])),
            read_volatile(addr_of!((*ops).remote_ip6[2])),
            read_volatile(addr_of!((*ops).remote_ip6[3])),
        ]
    }
}

#[inline(always)]
fn local_key(ctx: &SockOpsContext, netns: u64) -> SockKey {
    let ops = ctx.ops;
    // Every field is read unconditionally: choosing which one to read lets LLVM compute a ctx
    // pointer with a variable offset, which the verifier refuses.
    let (family, remote, local4, local6, port) = unsafe {
        (
            read_volatile(addr_of!((*ops).family)),
            remote_ip6(ops),
            read_volatile(addr_of!((*ops).local_ip4)),
            [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ],
            read_volatile(addr_of!((*ops).local_port)),
        )
    };
    // A v6 socket talking to a v4-mapped peer is an IPv4 connection: its v6 local address is
    // not filled in yet at connect time, the v4 one is.
    let addr = if family == AF_INET || is_v4_mapped(&remote) {
        v4_mapped(local4)
    } else {
        local6
    };
    SockKey {
        netns,
        addr,
        port,
        _pad: 0,
    }
}

// === helpers ===

#[inline(always)]
fn config() -> Option<&'static Config> {
    CALLGATE_CONFIG
        .get(0)
        .filter(|cfg| cfg.flags & FLAG_CONFIGURED != 0)
}

/// Whether the gateway's listeners are open in the namespace `netns`.
#[inline(always)]
fn netns_ready(netns: u64) -> bool {
    unsafe { CALLGATE_NETNS.get(netns) }.is_some()
}

/// Tells the gateway to open listeners in `netns` (a full ring drops the report: the next
/// socket, or the held SYN's next try, reports again).
#[inline(always)]
fn report_netns(netns: u64, pid: u32, tgid: u32) {
    count(counter::NETNS_PENDING);
    let _ = CALLGATE_NETNS_EVENTS.output::<NetnsEvent>(NetnsEvent { netns, pid, tgid }, 0);
}

#[inline(always)]
fn is_gateway(cfg: &Config) -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.gateway_tgid
}

/// The destination the caller passed, IPv6 form, with a host-order port.
/// Fields are read 32 bits at a time: the verifier rejects wider loads of most of them.
#[inline(always)]
fn destination(sa: *mut bpf_sock_addr, v6: bool) -> ([u32; 4], u32) {
    unsafe {
        let port = u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16) as u32;
        let addr = if v6 {
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ]
        } else {
            v4_mapped(read_volatile(addr_of!((*sa).user_ip4)))
        };
        (addr, port)
    }
}

#[inline(always)]
unsafe fn write_ip6(sa: *mut bpf_sock_addr, addr: &[u32; 4]) {
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), addr[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), addr[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), addr[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), addr[3]);
    }
}

#[inline(always)]
fn port_be(port: u32) -> u32 {
    (port as u16).to_be() as u32
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = CALLGATE_COUNTERS.get_ptr_mut(index) {
        unsafe { *slot += 1 };
    }
}

// Only for the BPF target: a workspace-wide clippy checks this crate for the host, where
// feature unification pulls in std (through aya) and its panic handler.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
