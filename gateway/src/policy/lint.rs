//! `callgate policy lint`: schema and compile errors, plus findings about rules that cannot
//! do what their author meant: shadowed rules, functions no rule mentions, overlapping
//! services, allow rules open to any caller.
use super::{
    compile::Snapshot,
    load::{Finding, Loaded, Severity},
    schema::Action,
};

/// Findings for a repository that compiled; sorted by file and line.
pub fn lint(loaded: &Loaded, snap: &Snapshot) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut claims: Vec<(String, bool, &str)> = Vec::new();
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
        // Exact host:port clashes are compile errors; a host without a port claims every
        // port, so it overlaps any host:port of the same host in another service.
        for (i, host) in file.matcher.hosts.iter().enumerate() {
            let host = host.to_ascii_lowercase();
            let (bare, has_port) = match host.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => {
                    (h.to_string(), true)
                }
                _ => (host.clone(), false),
            };
            for (other_bare, other_has_port, other) in &claims {
                if *other != &*service.name
                    && *other_bare == bare
                    && (!has_port || !*other_has_port)
                {
                    out.push(warn(
                        &["match", "hosts", &i.to_string()],
                        format!("host {bare} overlaps service {other}'s match: the host:port match wins, check that is intended"),
                    ));
                }
            }
            claims.push((bare, has_port, &service.name));
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    out
}
