//! Addresses as people write them (`10.0.0.0/8:443`, `host:port`) and as the kernel keeps
//! them (four network-order words), and the mark on the gateway's own connections.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Marks what `socket` will send as the gateway's own (DSCP `CREDENTIAL_DSCP`): a connection
/// that carries a credential the gateway injects, or the gateway's own call to an identity
/// provider, a token endpoint or a webhook. The eBPF ingress program drops such packets at
/// every socket of an enabled cgroup, so no governed workload completes a handshake with one,
/// wherever it listens (see `intercept::peers`). Once connected, [`unmark`] takes the mark
/// off: the SYN decided who answers (an accepted socket is its listener's cgroup's for life),
/// and the rest of the connection's packets leave as any others, not marked on the wire.
pub fn mark_gateways_own(socket: &tokio::net::TcpSocket, v6: bool) -> std::io::Result<()> {
    set_class(
        socket2::SockRef::from(socket),
        u32::from(gateway_common::CREDENTIAL_DSCP) << 2,
        v6,
    )
}

/// Takes [`mark_gateways_own`]'s mark off a connected socket.
pub fn unmark(stream: &tokio::net::TcpStream, v6: bool) -> std::io::Result<()> {
    set_class(socket2::SockRef::from(stream), 0, v6)
}

fn set_class(s: socket2::SockRef<'_>, class: u32, v6: bool) -> std::io::Result<()> {
    if v6 {
        // And IPv4's, for an IPv4-mapped peer of a dual-stack socket.
        let _ = s.set_tos_v4(class);
        s.set_tclass_v6(class)
    } else {
        s.set_tos_v4(class)
    }
}

/// A network and a port range: `CIDR[:PORT[-PORT]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetPorts {
    pub net: IpAddr,
    pub prefix: u8,
    /// Inclusive; `(0, 65535)` when no port is given.
    pub ports: (u16, u16),
}

/// `CIDR[:PORT[-PORT]]`; IPv6 CIDRs with a port are bracketed: `[2001:db8::]/32:443`.
pub(crate) fn parse_net_ports(spec: &str) -> Result<NetPorts, String> {
    let (cidr, ports) = if let Some(rest) = spec.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or("missing ']'")?;
        let (prefix, ports) = match after.strip_prefix('/') {
            Some(p) => match p.split_once(':') {
                Some((pre, ports)) => (Some(pre), Some(ports)),
                None => (Some(p), None),
            },
            None => (None, after.strip_prefix(':')),
        };
        (format!("{addr}/{}", prefix.unwrap_or("128")), ports)
    } else if spec.matches(':').count() > 1 {
        (spec.to_string(), None) // bare IPv6 CIDR, no port
    } else {
        match spec.split_once(':') {
            Some((c, p)) => (c.to_string(), Some(p)),
            None => (spec.to_string(), None),
        }
    };
    let (addr, prefix) = match cidr.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (cidr.as_str(), None),
    };
    let net: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match prefix {
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or(format!("prefix must be 0..={max}"))?,
        None => max,
    };
    let ports = match ports {
        None | Some("") | Some("*") => (0, u16::MAX),
        Some(p) => {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let lo: u16 = lo.parse().map_err(|_| format!("bad port {lo:?}"))?;
            let hi: u16 = hi.parse().map_err(|_| format!("bad port {hi:?}"))?;
            if lo > hi {
                return Err(format!("port range {lo}-{hi} is empty"));
            }
            (lo, hi)
        }
    };
    Ok(NetPorts { net, prefix, ports })
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; a bare IPv6 address is left alone.
pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether `ip` is in `net/prefix`; an IPv4-mapped IPv6 address counts as its IPv4 one.
pub(crate) fn in_cidr(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    let (ip, net, prefix) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (
            u128::from(a.to_ipv6_mapped()),
            u128::from(n.to_ipv6_mapped()),
            prefix as u32 + 96,
        ),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), prefix as u32),
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (
                u128::from(a.to_ipv6_mapped()),
                u128::from(n.to_ipv6_mapped()),
                prefix as u32 + 96,
            ),
            None => return false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    ip & mask == net & mask
}

/// A 128-bit address as four network-order words, the layout of `struct in6_addr`.
pub(crate) fn words(v: u128) -> [u32; 4] {
    let b = v.to_be_bytes();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
    })
}

/// The inverse of [`words`].
pub(crate) fn from_words(w: &[u32; 4]) -> Ipv6Addr {
    let mut b = [0u8; 16];
    for (i, word) in w.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Ipv6Addr::from(b)
}

/// `ip` as `Display` writes it. An IPv4 address is written without the formatter (`itoa`
/// for its numbers): `Display` pads and measures through `fmt`, about 2k instructions an
/// address, and a new connection writes its destination twice (its host, to find the
/// service; host and port, for its records).
pub(crate) fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let mut s = String::with_capacity(15);
            push_ipv4(&mut s, v4);
            s
        }
        IpAddr::V6(_) => ip.to_string(),
    }
}

/// `addr` as `Display` writes it: `a.b.c.d:port`, `[v6]:port`.
pub(crate) fn socket_text(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => {
            let mut s = String::with_capacity(21);
            push_ipv4(&mut s, *a.ip());
            s.push(':');
            push_decimal(&mut s, a.port());
            s
        }
        SocketAddr::V6(_) => addr.to_string(),
    }
}

fn push_ipv4(s: &mut String, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        push_decimal(s, u16::from(octet));
    }
}

fn push_decimal(s: &mut String, n: u16) {
    s.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_text_is_what_display_writes() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:18080",
            "10.9.0.2:443",
            "255.255.255.255:65535",
            "192.168.100.20:8",
            "[::1]:15001",
            "[2001:db8::7]:80",
            "[::ffff:10.0.0.1]:1",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(socket_text(addr), addr.to_string());
            assert_eq!(ip_text(addr.ip()), addr.ip().to_string());
        }
    }

    #[test]
    fn cidrs() {
        assert!(in_cidr(
            "10.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(!in_cidr(
            "11.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(in_cidr(
            "::ffff:10.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(in_cidr(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::".parse().unwrap(),
            32
        ));
    }
}
