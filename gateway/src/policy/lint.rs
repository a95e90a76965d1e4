//! `callgate policy lint`: schema and compile errors, plus findings about rules that cannot
//! do what their author meant: shadowed rules, functions no rule mentions, overlapping
//! services, allow rules open to any caller, rules that know the workload only by names the
//! workload chooses itself, rules that name a network namespace by its (reusable) inode.
use super::{
    compile::{HostSpec, parse_host},
    load::{Finding, Loaded, Severity},
    schema::Action,
    snapshot::Snapshot,
};
use crate::util::net::in_cidr;

/// Findings for a repository that compiled; sorted by file and line.
pub fn lint(loaded: &Loaded, snap: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut claims: Vec<(HostSpec, &str)> = Vec::new();
    for (src, file) in &loaded.services {
        let Some(service) = snap.service(&file.service) else {
            continue;
        };
        let warn = |path: &[&str], msg: String| src.finding(Severity::Warning, path, msg);

        for (j, later) in service.rules.iter().enumerate() {
            let shadow = service.rules[..j].iter().find(|earlier| {
                earlier.unconditional()
                    && match (&earlier.functions, &later.functions) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(e), Some(l)) => l.iter().all(|f| e.contains(f)),
                    }
            });
            if let Some(earlier) = shadow {
                out.push(warn(
                    &["rules", &j.to_string(), "name"],
                    format!("rule {:?} can never match: rule {:?} above it matches every such call first", later.name, earlier.name),
                ));
            }
            if later.action == Action::Allow && later.caller.is_none() && later.when.is_none() {
                out.push(warn(
                    &["rules", &j.to_string(), "name"],
                    format!("rule {:?} allows any caller: add a `caller:` constraint (or a `when:`) if that is not intended", later.name),
                ));
            }
            if later
                .caller
                .as_ref()
                .and_then(|c| c.workload.as_ref())
                .is_some_and(|w| !w.netns.is_empty())
            {
                out.push(warn(
                    &["rules", &j.to_string(), "caller", "workload", "netns"],
                    format!("rule {:?} names a network namespace by inode, which names it only while it lives: the gateway holds the namespaces a policy names open while it runs, but one that ended while the gateway was down may have passed its number to a new namespace, and an inode no namespace has when the policy loads matches nothing; name the container or pod where there is one", later.name),
                ));
            }
            if let Some(chosen) = later
                .caller
                .as_ref()
                .and_then(|c| c.workload.as_ref())
                .and_then(|w| w.only_chosen_by_process())
            {
                out.push(warn(
                    &["rules", &j.to_string(), "caller", "workload"],
                    format!("rule {:?} knows the workload only by names it chooses itself: {}; add uid, user, unit or a cgroup at or above a systemd unit", later.name, chosen.join(", ")),
                ));
            }
        }
        if matches!(
            file.protocol,
            crate::call::Protocol::Jsonrpc | crate::call::Protocol::Mcp
        ) && file.endpoint.is_empty()
        {
            out.push(warn(
                &["protocol"],
                format!(
                    "service {:?} has no `endpoint`: every path of its hosts is read as {}, so a \
                     request to another path (a REST route of the same server) whose body \
                     passes as protocol housekeeping, or an MCP GET or DELETE, reaches it \
                     undecided; list the paths it is spoken on, e.g. `endpoint: [/mcp]`",
                    file.service,
                    if file.protocol == crate::call::Protocol::Mcp {
                        "MCP"
                    } else {
                        "JSON-RPC"
                    }
                ),
            ));
        }
        for f in &service.functions {
            let referenced = service.rules.iter().any(|r| {
                r.functions
                    .as_ref()
                    .is_none_or(|fs| fs.iter().any(|n| **n == *f.name))
            });
            if !referenced {
                out.push(warn(
                    &["functions", &f.name],
                    format!("function {:?} is not mentioned by any rule: every call to it gets the default ({})", f.name, snap.default_action),
                ));
            }
        }
        let injects = service.rules.iter().any(|r| r.obligations.inject.is_some());
        for (i, host) in file.matcher.hosts.iter().enumerate() {
            let Ok(spec) = parse_host(host) else { continue };
            if injects && let Some(why) = any_local_port(&spec) {
                out.push(warn(
                    &["match", "hosts", &i.to_string()],
                    format!("{host} {why}, and a rule injects a credential: any local process that opens a listener there (a free port needs no privilege) is taken for this service; the gateway withholds the credential from workloads it governs, not from the host's other processes; name the upstream's port ({host}:PORT)"),
                ));
            }
            for (other_spec, other) in &claims {
                if *other != &*service.name
                    && let Some(why) = overlap(&spec, other_spec)
                {
                    out.push(warn(
                        &["match", "hosts", &i.to_string()],
                        format!("{host} overlaps service {other}'s match: {why}"),
                    ));
                }
            }
            claims.push((spec, &service.name));
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    out
}

/// Whether `spec` matches any port of a loopback address (where any local process, a
/// governed workload included, may listen): why, or None.
fn any_local_port(spec: &HostSpec) -> Option<&'static str> {
    use HostSpec::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let loopback = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        v4 => v4.is_loopback(),
    };
    match spec {
        Host(h) if h.trim_end_matches('.') == "localhost" || h.parse().is_ok_and(loopback) => {
            Some("matches every port of a loopback address")
        }
        Cidr(net, prefix, None)
            if in_cidr(IpAddr::V4(Ipv4Addr::LOCALHOST), *net, *prefix)
                || in_cidr(IpAddr::V6(Ipv6Addr::LOCALHOST), *net, *prefix) =>
        {
            Some("matches every port of loopback addresses")
        }
        _ => None,
    }
}

/// Why two `match.hosts` entries of different services can claim the same destination, and
/// which one wins, or `None` when they cannot. Exact host:port clashes are compile errors and
/// never reach here.
fn overlap(a: &HostSpec, b: &HostSpec) -> Option<String> {
    use HostSpec::*;
    let ports_meet = |x: &Option<u16>, y: &Option<u16>| x.is_none() || y.is_none() || x == y;
    let ip_in = |host: &str, port: Option<u16>, net, prefix, net_port: &Option<u16>| {
        host.parse()
            .is_ok_and(|ip| in_cidr(ip, net, prefix) && ports_meet(&port, net_port))
    };
    match (a, b) {
        (HostPort(h, _), Host(o)) | (Host(h), HostPort(o, _)) if h == o => {
            Some("the host:port entry wins over the bare host for that port".into())
        }
        (HostPort(h, p), Cidr(net, prefix, np)) | (Cidr(net, prefix, np), HostPort(h, p))
            if ip_in(h, Some(*p), *net, *prefix, np) =>
        {
            Some("the host entry wins over the CIDR".into())
        }
        (Host(h), Cidr(net, prefix, np)) | (Cidr(net, prefix, np), Host(h))
            if ip_in(h, None, *net, *prefix, np) =>
        {
            Some("the host entry wins over the CIDR".into())
        }
        (Cidr(n1, p1, port1), Cidr(n2, p2, port2))
            if ports_meet(port1, port2)
                && (in_cidr(*n1, *n2, *p2) || in_cidr(*n2, *n1, *p1)) =>
        {
            Some("overlapping CIDRs: whichever service file sorts first wins, so the outcome depends on file names".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> HostSpec {
        parse_host(s).expect("valid host")
    }

    #[test]
    fn overlaps() {
        let yes = [
            ("api.internal", "api.internal:443"),
            ("10.0.0.0/8", "10.1.0.0/16"),
            ("10.0.0.0/8:443", "10.0.0.0/24"),
            ("10.0.0.5:80", "10.0.0.0/24"),
            ("10.0.0.5", "10.0.0.0/24:80"),
            ("fd00::/8", "[fd00::1]:443"),
        ];
        for (a, b) in yes {
            assert!(overlap(&spec(a), &spec(b)).is_some(), "{a} vs {b}");
            assert!(overlap(&spec(b), &spec(a)).is_some(), "{b} vs {a}");
        }
        let no = [
            ("api.internal", "web.internal:443"),
            ("10.0.0.0/8", "192.168.0.0/16"),
            ("10.0.0.0/8:443", "10.0.0.0/8:80"),
            ("10.0.0.5:80", "10.0.0.0/24:443"),
            ("192.168.1.1", "10.0.0.0/8"),
        ];
        for (a, b) in no {
            assert!(overlap(&spec(a), &spec(b)).is_none(), "{a} vs {b}");
        }
    }
}
