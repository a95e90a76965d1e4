//! A service's `match.hosts` entries and the destinations a test case or an explain request
//! names, parsed into one normal form (lower case, canonical IP text).
use std::net::IpAddr;

use crate::policy::schema;

/// One `match.hosts` entry, normalised (lower case, canonical IP text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostSpec {
    HostPort(String, u16),
    Host(String),
    Cidr(IpAddr, u8, Option<u16>),
}

pub(crate) fn parse_host(s: &str) -> Result<HostSpec, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.contains('/') {
        let rule = crate::util::net::parse_net_ports(&s)?;
        let port = (rule.ports.0 == rule.ports.1).then_some(rule.ports.0);
        if rule.ports != (0, u16::MAX) && port.is_none() {
            return Err("port ranges are not supported here; list the ports".into());
        }
        return Ok(HostSpec::Cidr(rule.net, rule.prefix, port));
    }
    // [v6]:port, v4:port, name:port, or a bare name/address (any port).
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, port) = rest.split_once("]:").ok_or("expected [ipv6]:port")?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        return Ok(HostSpec::HostPort(
            ip.to_string(),
            port.parse().map_err(|_| "bad port")?,
        ));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            if h.is_empty() {
                return Err("missing host".into());
            }
            Ok(HostSpec::HostPort(
                h.to_string(),
                p.parse().map_err(|_| format!("bad port {p:?}"))?,
            ))
        }
        _ if s.is_empty() => Err("empty".into()),
        _ => Ok(HostSpec::Host(
            s.parse::<IpAddr>().map(|ip| ip.to_string()).unwrap_or(s),
        )),
    }
}

/// `host:port` or `[v6]:port` as written in a test case or an explain request.
pub fn split_destination(s: &str) -> Result<(String, u16), String> {
    match parse_host(s)? {
        HostSpec::HostPort(h, p) => Ok((h, p)),
        _ => Err(format!("destination {s:?} must be host:port")),
    }
}

/// The names in `hosts` (not IPs or CIDRs) and `sni`, lower-cased; wildcards as `.suffix`.
pub(super) fn service_names(m: &schema::ServiceMatch) -> Vec<String> {
    let mut names: Vec<String> = m
        .hosts
        .iter()
        .filter_map(|h| match parse_host(h) {
            Ok(HostSpec::HostPort(h, _) | HostSpec::Host(h)) if h.parse::<IpAddr>().is_err() => {
                Some(h)
            }
            _ => None,
        })
        .chain(m.sni.iter().map(|s| {
            let s = s.to_ascii_lowercase();
            s.strip_prefix('*').map(str::to_string).unwrap_or(s)
        }))
        .collect();
    names.sort();
    names.dedup();
    names
}
