//! Ending connections a cgroup opened before it was enabled: `sock_diag` netlink lists the TCP
//! and UDP sockets of the gateway's network namespace with the cgroup each was created in
//! (`INET_DIAG_CGROUP_ID`), and `SOCK_DESTROY` (`CONFIG_INET_DIAG_DESTROY`) aborts the chosen
//! ones: the workload's next read or write fails and the peer gets a reset, so the workload
//! reconnects — through the gateway.
//!
//! Hand-written: the protocol is five fixed-layout structs, and what is needed beyond the dump
//! (the destroy request) is the part netlink crates do not model.
use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const INET_DIAG_CGROUP_ID: u16 = 21;

const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LISTEN: u32 = 10;

const NLMSG_HDR: usize = 16;
/// `struct inet_diag_sockid`: ports, two 16-byte addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// One TCP or UDP socket as the kernel listed it.
#[derive(Debug, Clone)]
pub struct DiagSocket {
    pub family: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub state: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The cgroup the socket was created in (0 if the kernel did not say).
    pub cgroup_id: u64,
    /// The socket's inode (what `/proc/PID/fd` links name as `socket:[INODE]`).
    pub inode: u32,
    /// The raw `inet_diag_sockid`, handed back as is to destroy exactly this socket.
    id: [u8; SOCKID_LEN],
}

/// A `NETLINK_SOCK_DIAG` socket.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// A `NETLINK_SOCK_DIAG` socket in this thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self::from_fd(new_fd()?))
    }

    /// Wraps a socket [`new_fd`] made (in whichever namespace it was made: what it lists).
    pub fn from_fd(fd: OwnedFd) -> Self {
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid pointer and length for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Self { fd, seq: 0 }
    }

    /// TCP sockets in the states that matter here (established, connecting, closing, listening)
    /// and connected UDP sockets, of both families.
    pub fn sockets(&mut self) -> io::Result<Vec<DiagSocket>> {
        let tcp_states = [TCP_ESTABLISHED, TCP_SYN_SENT, TCP_CLOSE_WAIT, TCP_LISTEN]
            .iter()
            .fold(0u32, |acc, s| acc | (1 << s));
        // A connected UDP socket is in TCP_ESTABLISHED; an unconnected one in TCP_CLOSE.
        let udp_states = 1 << TCP_ESTABLISHED;
        let mut out = Vec::new();
        for (family, protocol, states) in [
            (libc::AF_INET, libc::IPPROTO_TCP, tcp_states),
            (libc::AF_INET6, libc::IPPROTO_TCP, tcp_states),
            (libc::AF_INET, libc::IPPROTO_UDP, udp_states),
            (libc::AF_INET6, libc::IPPROTO_UDP, udp_states),
        ] {
            let (family, protocol) = (family as u8, protocol as u8);
            let req = request(family, protocol, states, &[0; SOCKID_LEN]);
            let seq = self.send(
                SOCK_DIAG_BY_FAMILY,
                libc::NLM_F_REQUEST | libc::NLM_F_DUMP,
                &req,
            )?;
            self.receive(seq, |ty, payload| {
                if ty == SOCK_DIAG_BY_FAMILY {
                    if let Some(s) = parse_msg(payload, protocol) {
                        out.push(s);
                    }
                }
            })?;
        }
        Ok(out)
    }

    /// The socket at the other end of this host's TCP connection from `local` to `remote`
    /// (the same four addresses seen from the peer), as the kernel's own lookup finds it: the
    /// accepted socket, with the cgroup its listener was made in; before the handshake's last
    /// step is processed, the pending request (no cgroup) or the listener. `None`: no socket of
    /// this namespace is the peer (the peer is on another host).
    pub fn peer_of(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<DiagSocket>> {
        let v4 = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&remote.port().to_be_bytes());
        id[2..4].copy_from_slice(&local.port().to_be_bytes());
        // Both ends in IPv4 (a mapped address included) are looked up as IPv4: the kernel
        // hashes a dual-stack socket's IPv4 connections under their IPv4 addresses.
        let family = match (v4(remote.ip()), v4(local.ip())) {
            (Some(src), Some(dst)) => {
                id[4..8].copy_from_slice(&src.octets());
                id[20..24].copy_from_slice(&dst.octets());
                libc::AF_INET as u8
            }
            _ => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                id[4..20].copy_from_slice(&v6(remote.ip()).octets());
                id[20..36].copy_from_slice(&v6(local.ip()).octets());
                libc::AF_INET6 as u8
            }
        };
        // No cookie: INET_DIAG_NOCOOKIE.
        id[40..48].copy_from_slice(&[0xff; 8]);
        let protocol = libc::IPPROTO_TCP as u8;
        let req = request(family, protocol, u32::MAX, &id);
        let seq = self.send(
            SOCK_DIAG_BY_FAMILY,
            libc::NLM_F_REQUEST | libc::NLM_F_ACK,
            &req,
        )?;
        let mut found = None;
        let answer = self.receive(seq, |ty, payload| {
            if ty == SOCK_DIAG_BY_FAMILY && found.is_none() {
                found = parse_msg(payload, protocol);
            }
        });
        match answer {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
            Ok(()) => Ok(found),
        }
    }

    /// The listener a connection to `dst` would be taken by in this namespace (as the kernel
    /// picks one for a SYN, from a client it does not know yet), if any.
    pub fn listener_for(&mut self, dst: SocketAddr) -> io::Result<Option<DiagSocket>> {
        let nobody = match dst.ip().to_canonical() {
            IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        Ok(self.peer_of(nobody, dst)?.filter(DiagSocket::is_listening))
    }

    /// Aborts `sock`. A socket that is gone already is not an error.
    pub fn destroy(&mut self, sock: &DiagSocket) -> io::Result<()> {
        let req = request(sock.family, sock.protocol, u32::MAX, &sock.id);
        let seq = self.send(SOCK_DESTROY, libc::NLM_F_REQUEST | libc::NLM_F_ACK, &req)?;
        match self.receive(seq, |_, _| {}) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    fn send(&mut self, ty: u16, flags: i32, payload: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDR + payload.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags as u16).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: an all-zero sockaddr_nl is valid; the kernel is pid 0.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: msg and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads replies to `seq` until `NLMSG_DONE` or an ack/error, handing each other message
    /// to `each`. An error message becomes the `Err`.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDR {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let msg_seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDR || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &rest[NLMSG_HDR..len];
                rest = &rest[align4(len).min(rest.len())..];
                if msg_seq != seq {
                    continue;
                }
                match ty {
                    t if t == libc::NLMSG_DONE as u16 => return Ok(()),
                    t if t == libc::NLMSG_ERROR as u16 => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        return if code == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-code))
                        };
                    }
                    _ => each(ty, payload),
                }
            }
        }
    }
}

/// A bare `NETLINK_SOCK_DIAG` socket of this thread's network namespace.
pub fn new_fd() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn request(family: u8, protocol: u8, states: u32, id: &[u8; SOCKID_LEN]) -> [u8; REQ_LEN] {
    let mut req = [0u8; REQ_LEN];
    req[0] = family;
    req[1] = protocol;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    req[8..].copy_from_slice(id);
    req
}

/// An `inet_diag_msg` and its attributes.
fn parse_msg(payload: &[u8], protocol: u8) -> Option<DiagSocket> {
    if payload.len() < MSG_LEN {
        return None;
    }
    let family = payload[0];
    let state = payload[1];
    let id: [u8; SOCKID_LEN] = payload[4..4 + SOCKID_LEN].try_into().ok()?;
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let addr = |bytes: &[u8]| -> Option<IpAddr> {
        if family == libc::AF_INET as u8 {
            Some(IpAddr::V4(Ipv4Addr::new(
                bytes[0], bytes[1], bytes[2], bytes[3],
            )))
        } else {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
    };
    let local = SocketAddr::new(addr(&id[4..20])?, sport);
    let remote = SocketAddr::new(addr(&id[20..36])?, dport);
    let inode = u32::from_ne_bytes(payload[MSG_LEN - 4..MSG_LEN].try_into().ok()?);
    let mut cgroup_id = 0;
    let mut attrs = &payload[MSG_LEN..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        if ty == INET_DIAG_CGROUP_ID && len >= 12 {
            cgroup_id = u64::from_ne_bytes(attrs[4..12].try_into().ok()?);
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(DiagSocket {
        family,
        protocol,
        state,
        local,
        remote,
        cgroup_id,
        inode,
        id,
    })
}

/// The inodes of this process's own sockets.
pub fn own_socket_inodes() -> std::collections::HashSet<u32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| {
                    let target = std::fs::read_link(fd.path()).ok()?;
                    let target = target.to_str()?;
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

impl DiagSocket {
    pub fn is_listening(&self) -> bool {
        self.is_tcp() && u32::from(self.state) == TCP_LISTEN
    }

    pub fn is_tcp(&self) -> bool {
        i32::from(self.protocol) == libc::IPPROTO_TCP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cgroup v2 directory this process is in, and its id.
    fn own_cgroup() -> Option<(std::path::PathBuf, u64)> {
        use std::os::unix::fs::MetadataExt;
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mount = crate::intercept::cgroup::cgroup2_mount().ok()?;
        let path = mount.join(rel.trim_start_matches('/'));
        let id = std::fs::metadata(&path).ok()?.ino();
        Some((path, id))
    }

    #[test]
    fn finds_the_peer_of_a_connection_on_this_host() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let there = listener.local_addr().expect("address");
        let client = std::net::TcpStream::connect(there).expect("connect");
        let here = client.local_addr().expect("address");
        let _accepted = listener.accept().expect("accept");
        let mut diag = SockDiag::open().expect("sock_diag");
        let peer = diag.peer_of(here, there).expect("lookup").expect("a peer");
        assert_eq!((peer.local, peer.remote), (there, here));
        if let Some((_, id)) = own_cgroup() {
            assert_eq!(
                peer.cgroup_id, id,
                "the accepted socket's cgroup is its listener's"
            );
        }
        // The same from an IPv4-mapped destination.
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
            there.port(),
        );
        assert!(diag.peer_of(here, mapped).expect("lookup").is_some());
        // Before any client: the listener a SYN to it would reach.
        let found = diag
            .listener_for(there)
            .expect("lookup")
            .expect("the listener");
        assert!(found.is_listening() && found.local == there, "{found:?}");
        let nobody_there = SocketAddr::new(there.ip(), 1);
        assert!(diag.listener_for(nobody_there).expect("lookup").is_none());
        // A peer on another host has no socket here.
        let away: SocketAddr = "192.0.2.1:80".parse().expect("address");
        assert!(diag.peer_of(here, away).expect("lookup").is_none());
    }

    #[test]
    fn a_cgroup_id_names_its_directory() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let Some((path, id)) = own_cgroup() else {
            return;
        };
        let mount = crate::intercept::cgroup::cgroup2_mount().expect("mount");
        assert_eq!(
            crate::intercept::cgroup::path_of_id(&mount, id).expect("path"),
            path
        );
        assert!(crate::intercept::cgroup::path_of_id(&mount, u64::MAX).is_err());
    }

    #[test]
    fn parses_a_message_with_its_cgroup() {
        let mut msg = vec![0u8; MSG_LEN];
        msg[0] = libc::AF_INET as u8;
        msg[1] = TCP_ESTABLISHED as u8;
        msg[4..6].copy_from_slice(&40000u16.to_be_bytes());
        msg[6..8].copy_from_slice(&8080u16.to_be_bytes());
        msg[8..12].copy_from_slice(&[127, 0, 0, 1]);
        msg[24..28].copy_from_slice(&[10, 0, 0, 2]);
        msg[MSG_LEN - 4..MSG_LEN].copy_from_slice(&99u32.to_ne_bytes());
        // An attribute before the one wanted, then INET_DIAG_CGROUP_ID.
        msg.extend_from_slice(&5u16.to_ne_bytes());
        msg.extend_from_slice(&5u16.to_ne_bytes());
        msg.extend_from_slice(&[7, 0, 0, 0]);
        msg.extend_from_slice(&12u16.to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        msg.extend_from_slice(&1234u64.to_ne_bytes());
        let s = parse_msg(&msg, libc::IPPROTO_TCP as u8).expect("parsed");
        assert_eq!(s.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(s.remote, "10.0.0.2:8080".parse().unwrap());
        assert_eq!(s.cgroup_id, 1234);
        assert_eq!(s.inode, 99);
        assert!(!s.is_listening());
        assert!(s.is_tcp());
        assert!(parse_msg(&msg[..MSG_LEN - 1], libc::IPPROTO_TCP as u8).is_none());
    }
}
