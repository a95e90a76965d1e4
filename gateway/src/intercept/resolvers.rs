//! DNS: the resolvers a workload's UDP port 53 may reach, kept in a pinned map.
use std::{fs, net::IpAddr};

use aya::maps::{HashMap, MapData};
use gateway_common::{self as common, maps};
use tracing::warn;

use super::InterceptError;
use crate::config::Config;

/// The resolvers UDP port 53 may reach: the configured ones and the host's (`/etc/resolv.conf`).
pub(super) fn dns_resolvers(cfg: &Config) -> Vec<IpAddr> {
    let mut list = cfg.dns_resolvers.clone();
    match fs::read_to_string(RESOLV_CONF) {
        Ok(text) => list.extend(parse_resolv_conf(&text)),
        Err(e) => warn!(path = RESOLV_CONF, error = %e, "cannot read the host's resolvers"),
    }
    list.sort();
    list.dedup();
    if list.len() > common::MAX_RESOLVERS as usize {
        warn!(
            kept = common::MAX_RESOLVERS,
            found = list.len(),
            "too many DNS resolvers; the rest are unreachable"
        );
        list.truncate(common::MAX_RESOLVERS as usize);
    }
    list
}

const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The `nameserver` addresses of resolv.conf text (an IPv6 zone suffix is dropped).
pub fn parse_resolv_conf(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let addr = words.next()?;
            addr.split('%').next()?.parse().ok()
        })
        .collect()
}

/// Makes the pinned resolver set exactly `allowed`: new entries first, stale ones after, so a
/// restart does not refuse DNS to a resolver that stays.
pub(super) fn set_resolvers(
    map: &mut HashMap<MapData, [u32; 4], u32>,
    allowed: &[IpAddr],
) -> Result<(), InterceptError> {
    let map_err = |source| InterceptError::Map {
        name: maps::RESOLVERS,
        source,
    };
    let keys: Vec<[u32; 4]> = allowed.iter().map(|ip| ip_key(*ip)).collect();
    for key in &keys {
        map.insert(key, 1, 0).map_err(map_err)?;
    }
    let stale: Vec<[u32; 4]> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keys.contains(k))
        .collect();
    for key in stale {
        let _ = map.remove(&key);
    }
    Ok(())
}

/// An address in the kernel's form: IPv6, IPv4 as v4-mapped, network byte order.
pub(super) fn ip_key(ip: IpAddr) -> [u32; 4] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    crate::util::net::words(u128::from(v6))
}
