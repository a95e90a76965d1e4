//! A rule's `caller`, `workload` and argument conditions, compiled into what the evaluator
//! checks without parsing: provider-scoped claims, cgroup prefixes, regexes and numbers.
use regex::Regex;

use crate::identity::IdentityConfig;
use crate::policy::schema::{self, ArgCondition, CallerMatch, UidList, WorkloadMatch};
use crate::policy::snapshot::{ArgCond, CallerCond, Op, WorkloadCond};
use crate::util::jsonpath::JsonPath;

pub(super) fn compile_caller(
    c: &CallerMatch,
    identity: &IdentityConfig,
    err: &mut dyn FnMut(&[&str], String),
) -> CallerCond {
    // Groups, subjects and claims mean something only within one provider: `finance` in a
    // partner's token is not corp's finance group.
    let names_token_values = c.subject.is_some()
        || !c.groups.is_empty()
        || !c.groups_all.is_empty()
        || !c.claims.is_empty();
    let provider = match &c.provider {
        Some(p) if identity.has_provider(p) => Some(p.clone()),
        Some(p) => {
            err(
                &["caller", "provider"],
                format!("{p:?} is not one of identity.providers in callgate.yaml"),
            );
            None
        }
        None if !names_token_values => None,
        None if identity.providers.len() > 1 && identity.default_provider.is_none() => {
            err(
                &["caller"],
                "with more than one identity provider, say whose subjects, groups or claims these are: add `provider:` to the rule or `identity.default_provider` to callgate.yaml".into(),
            );
            None
        }
        None => identity.default_provider.clone(),
    };
    let mut claims = Vec::new();
    for (path, value) in &c.claims {
        match JsonPath::parse(path) {
            Ok(p) => claims.push((p, value.clone())),
            Err(e) => err(&["caller", "claims", path], e.to_string()),
        }
    }
    CallerCond {
        provider,
        subjects: c
            .subject
            .as_ref()
            .map(|s| s.items().to_vec())
            .unwrap_or_default(),
        groups_any: c.groups.clone(),
        groups_all: c.groups_all.clone(),
        claims,
        authenticated: c.authenticated,
        workload: c.workload.as_ref().map(|w| compile_workload(w, err)),
    }
}

pub(super) fn compile_workload(
    w: &WorkloadMatch,
    err: &mut dyn FnMut(&[&str], String),
) -> WorkloadCond {
    let list =
        |o: &Option<schema::OneOrMany>| o.as_ref().map(|v| v.items().to_vec()).unwrap_or_default();
    WorkloadCond {
        uids: match &w.uid {
            Some(UidList::One(u)) => vec![*u],
            Some(UidList::Many(v)) => v.clone(),
            None => Vec::new(),
        },
        users: list(&w.user),
        units: list(&w.unit),
        user_units: list(&w.user_unit),
        cgroup_prefix: w.cgroup.as_ref().map(|c| {
            let parts: Vec<String> = c
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            if parts.iter().any(|p| p == "." || p == "..") {
                err(
                    &["caller", "workload", "cgroup"],
                    format!("{c:?}: a cgroup path has no `.` or `..` components"),
                );
            }
            parts
        }),
        comms: list(&w.comm),
        containers: list(&w.container)
            .into_iter()
            .inspect(|c| {
                // A name as Docker and Podman allow them (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`,
                // which Kubernetes' container names are a subset of), or an id: any name of
                // 12 to 64 lowercase hex digits also matches as an id prefix.
                let name = c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                    && c.len() <= 253
                    && c
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
                if !name {
                    err(
                        &["caller", "workload", "container"],
                        format!(
                            "{c:?}: a container is named by its id (12 to 64 lowercase hex digits) or its name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
                        ),
                    );
                }
            })
            .collect(),
        pods: list(&w.pod),
        netns: match &w.netns {
            Some(schema::NetnsList::One(n)) => vec![*n],
            Some(schema::NetnsList::Many(v)) => v.clone(),
            None => Vec::new(),
        },
    }
}

pub(super) fn compile_arg(name: &str, c: &ArgCondition) -> Result<ArgCond, String> {
    let path = JsonPath::parse(name).map_err(|e| e.to_string())?;
    let mut ops = Vec::new();
    let push = |ops: &mut Vec<Op>, v: Option<Op>| ops.extend(v);
    push(&mut ops, c.eq.clone().map(Op::Eq));
    push(&mut ops, c.ne.clone().map(Op::Ne));
    push(&mut ops, c.in_.clone().map(Op::In));
    push(&mut ops, c.not_in.clone().map(Op::NotIn));
    push(&mut ops, c.gt.map(Op::Gt));
    push(&mut ops, c.ge.map(Op::Ge));
    push(&mut ops, c.min.map(Op::Ge));
    push(&mut ops, c.lt.map(Op::Lt));
    push(&mut ops, c.le.map(Op::Le));
    push(&mut ops, c.max.map(Op::Le));
    if let Some(re) = &c.regex {
        // Anchored: `regex: "[a-z]+"` means the whole value, as a reader expects.
        let re = Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("invalid regex: {e}"))?;
        ops.push(Op::Regex(re));
    }
    push(&mut ops, c.prefix.clone().map(Op::Prefix));
    push(&mut ops, c.max_len.map(Op::MaxLen));
    match (c.present, c.absent) {
        (Some(p), Some(a)) if p == a => {
            return Err("`present` and `absent` contradict each other".into());
        }
        (Some(p), _) => ops.push(Op::Present(p)),
        (None, Some(a)) => ops.push(Op::Present(!a)),
        (None, None) => {}
    }
    if ops.is_empty() {
        return Err("no condition given (eq, ne, in, not_in, gt, ge, lt, le, max, min, regex, prefix, present, absent, max_len)".into());
    }
    Ok(ArgCond { path, ops })
}
