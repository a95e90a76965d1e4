//! Turning loaded files into an immutable, indexed [`Snapshot`]: services by destination and
//! name, rules by function (in order), regexes and CEL compiled once. Every problem found is a
//! located [`Finding`]; a snapshot exists only if there are none.
//!
//! One function per part of the file: the repository's own settings ([`compile`]), a service
//! ([`compile_service`]: its functions, its base obligations, its rules), a rule's caller,
//! workload and argument conditions.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use super::snapshot::{
    CompiledMasks, Function, Obligations, PolicyVersion, Rule, Service, Snapshot, When,
};
use super::{
    git::GitState,
    load::{Finding, Loaded, Source},
    schema::{self, Action},
};
use crate::approve::ApprovalSpec;
use crate::call::Protocol;
use crate::obligations::inject::HeaderEdits;
use crate::util::time::parse_duration;
use crate::{
    extract::{
        path::PathRules,
        surface::{RouteError, Surface},
    },
    identity::IdentityConfig,
};

use crate::util::NameIndex as Index;

mod checks;
mod conditions;
mod hosts;

use checks::{check_masks, check_secret};
use conditions::{compile_arg, compile_caller};
use hosts::service_names;
pub use hosts::split_destination;
pub(crate) use hosts::{HostSpec, parse_host};

pub fn compile(loaded: &Loaded, git: &GitState) -> Result<Snapshot, Vec<Finding>> {
    let mut errors = Vec::new();
    let repo = &loaded.repo;
    for (name, source) in &repo.credentials {
        if source.credential.is_some() {
            errors.push(loaded.repo_source.error(
                &["credentials", name],
                "a named credential cannot refer to another one",
            ));
        }
        check_secret(
            &loaded.repo_source,
            &["credentials", name],
            source,
            &mut errors,
        );
    }
    let identity = IdentityConfig::compile(&repo.identity, &mut |path, msg| {
        errors.push(loaded.repo_source.error(path, msg))
    });
    check_masks(
        &loaded.repo_source,
        &["masking", "default"],
        &repo.masking.default,
        &mut errors,
    );

    // Each compiled service stays beside the file it came from, for the index pass below.
    let mut compiled: Vec<(&Source, &schema::ServiceFile, Service)> = Vec::new();
    let mut defined_in: HashMap<&str, &std::path::Path> = HashMap::new();
    let mut rule_count = 0;
    for (src, file) in &loaded.services {
        if let Some(first) = defined_in.insert(&file.service, &src.path) {
            errors.push(src.error(
                &["service"],
                format!(
                    "service {:?} is already defined in {}",
                    file.service,
                    first.display()
                ),
            ));
            defined_in.insert(&file.service, first);
            continue;
        }
        match compile_service(src, file, loaded, &identity) {
            Ok(s) => {
                rule_count += s.rules.len();
                compiled.push((src, file, s));
            }
            Err(mut e) => errors.append(&mut e),
        }
    }

    let mut snap = Snapshot {
        version: Arc::new(PolicyVersion {
            commit: git.commit.as_deref().map(Arc::from),
            dirty: git.dirty,
            source: git.source.clone(),
        }),
        default_action: repo.default_action.into(),
        mode: repo.mode,
        unknown_destination: repo.unknown_destination.into(),
        by_name: Index::default(),
        by_host_port: Index::default(),
        by_host: Index::default(),
        cidrs: Vec::new(),
        by_sni: Index::default(),
        sni_suffixes: Vec::new(),
        rule_count,
        credentials: repo.credentials.clone(),
        identity: Arc::new(identity),
        default_obligations: Arc::new(Obligations {
            mask: repo.masking.default.clone(),
            masks: CompiledMasks::of(&repo.masking.default),
            unmaskable: repo.masking.unmaskable,
            ..Default::default()
        }),
        services: Vec::new(),
    };
    for (idx, (src, file, service)) in compiled.iter().enumerate() {
        snap.by_name.insert(service.name.to_string(), idx);
        for (i, host) in file.matcher.hosts.iter().enumerate() {
            let at = ["match", "hosts", &i.to_string()];
            let claimed = match parse_host(host) {
                Ok(HostSpec::HostPort(h, p)) => {
                    let ports = snap.by_host_port.entry(h).or_default();
                    match ports.iter().find(|(q, _)| *q == p) {
                        Some(&(_, other)) => Some(other),
                        None => {
                            ports.push((p, idx));
                            None
                        }
                    }
                }
                Ok(HostSpec::Host(h)) => snap.by_host.insert(h, idx),
                Ok(HostSpec::Cidr(ip, prefix, port)) => {
                    snap.cidrs.push((ip, prefix, port, idx));
                    None
                }
                Err(reason) => {
                    errors.push(src.error(&at, format!("host {host:?}: {reason}")));
                    None
                }
            };
            if let Some(other) = claimed {
                errors.push(src.error(
                    &at,
                    format!(
                        "{host} is already claimed by service {}",
                        compiled[other].2.name
                    ),
                ));
            }
        }
        for (i, sni) in file.matcher.sni.iter().enumerate() {
            let sni = sni.to_ascii_lowercase();
            let other = match sni.strip_prefix("*.") {
                Some(suffix) => {
                    snap.sni_suffixes.push((format!(".{suffix}"), idx));
                    None
                }
                None => snap.by_sni.insert(sni.clone(), idx),
            };
            if let Some(other) = other {
                errors.push(src.error(
                    &["match", "sni", &i.to_string()],
                    format!(
                        "SNI {sni} is already claimed by service {}",
                        compiled[other].2.name
                    ),
                ));
            }
        }
    }
    snap.services = compiled.into_iter().map(|(_, _, s)| s).collect();
    if errors.is_empty() {
        Ok(snap)
    } else {
        Err(errors)
    }
}

fn compile_service(
    src: &Source,
    file: &schema::ServiceFile,
    loaded: &Loaded,
    identity: &IdentityConfig,
) -> Result<Service, Vec<Finding>> {
    let mut errors = Vec::new();
    if file.service.trim().is_empty() {
        errors.push(src.error(&["service"], "service name must not be empty"));
    }
    if file.matcher.hosts.is_empty() && file.matcher.sni.is_empty() {
        errors.push(src.error(&["match"], "a service must match at least one host or SNI"));
    }
    let (functions, fn_by_name, surface) = compile_functions(src, file, &mut errors);
    let base = compile_base(src, file, loaded, &mut errors);
    let mut names = HashSet::new();
    let rules: Vec<Rule> = file
        .rules
        .iter()
        .enumerate()
        .map(|(i, def)| {
            compile_rule(
                RuleInput {
                    src,
                    file,
                    identity,
                    base: &base,
                    fn_by_name: &fn_by_name,
                },
                i,
                def,
                &mut names,
                &mut errors,
            )
        })
        .collect();
    let (rules_for, rules_wildcard) = rules_by_function(&functions, &rules);
    let session = session_obligations(&base, &rules);
    let pins = match super::mcp::load_committed(&loaded.root, &file.service) {
        Ok(p) => p,
        Err(e) => {
            errors.push(src.error(&["mcp"], e));
            None
        }
    };
    if file.mcp != Default::default() && file.protocol != Protocol::Mcp {
        errors.push(src.error(&["mcp"], "`mcp:` options need `protocol: mcp`"));
    }
    if errors.is_empty() {
        Ok(Service {
            name: file.service.as_str().into(),
            surface,
            tls: file.matcher.tls,
            tcp: file.tcp,
            upstream_ca: file
                .matcher
                .upstream_ca
                .as_ref()
                .map(|p| loaded.root.join(p)),
            names: service_names(&file.matcher),
            functions,
            fn_by_name,
            rules,
            rules_for,
            rules_wildcard,
            base,
            session,
            mcp: file.mcp,
            pins,
        })
    } else {
        Err(errors)
    }
}

/// A service's functions: by name, and as requests name them (the extract stage's
/// [`Surface`]: methods, tools, gRPC paths, REST routes).
fn compile_functions(
    src: &Source,
    file: &schema::ServiceFile,
    errors: &mut Vec<Finding>,
) -> (Vec<Function>, Index<usize>, Surface) {
    let mut functions = Vec::new();
    let mut fn_by_name = Index::default();
    let mut surface = Surface::new(
        file.protocol,
        PathRules {
            encoded_slashes: file.paths.encoded_slashes,
            semicolons: file.paths.semicolons
                || !matches!(file.protocol, Protocol::Rest | Protocol::Http),
            dotted_names: file.paths.dotted_names,
            no_method_override: file.paths.no_method_override,
            no_format_suffix: file.paths.no_format_suffix,
            any_case: file.paths.any_case,
        },
        file.credentials.as_ref().map(|c| c.inject.header.clone()),
    );
    for (i, e) in file.endpoint.iter().enumerate() {
        let at = ["endpoint", &i.to_string()];
        if !matches!(file.protocol, Protocol::Jsonrpc | Protocol::Mcp) {
            errors.push(src.error(
                &at[..1],
                "`endpoint` is for JSON-RPC and MCP services, whose paths name no function",
            ));
            break;
        }
        let origin = e.parse::<http::uri::PathAndQuery>().ok();
        if !e.starts_with('/') || origin.is_none_or(|p| p.query().is_some() || p.path() != e) {
            errors.push(src.error(
                &at,
                format!("{e:?} is not a path: write it as requests send it, e.g. `/mcp`"),
            ));
        }
    }
    surface.endpoint = file.endpoint.clone();
    for (name, def) in &file.functions {
        let idx = functions.len();
        let at = ["functions", name.as_str()];
        fn_by_name.insert(name.clone(), idx);
        let route = match (file.protocol, &def.route) {
            (Protocol::Rest | Protocol::Http, Some(route)) => Some(route.as_str()),
            (Protocol::Rest, None) => {
                errors.push(src.error(
                    &at,
                    "a REST function needs a route, e.g. `route: \"POST /v1/items/{id}\"`",
                ));
                None
            }
            (Protocol::Jsonrpc | Protocol::Mcp | Protocol::Grpc, Some(_)) => {
                errors.push(src.error(
                    &[&at[..], &["route"]].concat(),
                    "routes are for REST; use `method:` (or nothing: the function's name)",
                ));
                None
            }
            _ => None,
        };
        let method = def.method.clone().unwrap_or_else(|| name.clone());
        if file.protocol == Protocol::Grpc
            && !(method.starts_with('/') && method[1..].contains('/'))
        {
            errors.push(src.error(
                &at,
                format!("gRPC method {method:?} must look like /package.Service/Method"),
            ));
        }
        if let Err(e) = surface.add(name, &method, route) {
            let route = route.unwrap_or_default();
            let (key, msg) = match e {
                RouteError::Taken(other) => (
                    "route",
                    format!("route {route:?} is also function {other}'s"),
                ),
                RouteError::Invalid(reason) => ("route", format!("route {route:?}: {reason}")),
                RouteError::MethodTaken(other) => (
                    "method",
                    format!(
                        "method {method:?} also calls function {other}: a call to it could be \
                         decided as only one of them (a function's method is its name unless \
                         `method:` says otherwise)"
                    ),
                ),
            };
            errors.push(src.error(&[&at[..], &[key]].concat(), msg));
        }
        functions.push(Function {
            name: name.as_str().into(),
            method: Some(method),
            route: def.route.clone(),
        });
    }
    (functions, fn_by_name, surface)
}

/// What every call to the service carries before a rule adds to it: the repository's and the
/// service's masks, its record level and its credential.
fn compile_base(
    src: &Source,
    file: &schema::ServiceFile,
    loaded: &Loaded,
    errors: &mut Vec<Finding>,
) -> Arc<Obligations> {
    check_masks(src, &["response", "mask"], &file.response.mask, errors);
    let inject = match &file.credentials {
        Some(c) => {
            check_secret(
                src,
                &["credentials", "inject", "from"],
                &c.inject.from,
                errors,
            );
            if let Some(name) = &c.inject.from.credential {
                if !loaded.repo.credentials.contains_key(name) {
                    errors.push(src.error(
                        &["credentials", "inject", "from"],
                        format!("credential {name:?} is not defined in callgate.yaml"),
                    ));
                }
            }
            let exchanged = c.inject.from.token_exchange.is_some()
                || c.inject
                    .from
                    .credential
                    .as_ref()
                    .and_then(|n| loaded.repo.credentials.get(n))
                    .is_some_and(|r| r.token_exchange.is_some());
            if exchanged && loaded.repo.identity.providers.is_empty() {
                errors.push(src.error(
                    &["credentials", "inject", "from"],
                    "token_exchange exchanges the caller's verified token: configure \
                     identity.providers in callgate.yaml",
                ));
            }
            if !c.inject.format.contains("{}") {
                errors.push(src.error(
                    &["credentials", "inject", "format"],
                    "format must contain {} where the secret goes",
                ));
            }
            Some(c.inject.clone())
        }
        None => None,
    };
    let mut base_mask = loaded.repo.masking.default.clone();
    for m in &file.response.mask {
        if !base_mask.contains(m) {
            base_mask.push(m.clone());
        }
    }
    let base_masks = CompiledMasks::of(&base_mask);
    Arc::new(Obligations {
        masks: base_masks,
        mask: base_mask,
        record: file.record.unwrap_or_default(),
        inject: inject.clone(),
        headers: HeaderEdits::default(),
        approval: None,
        limit: None,
        quota: None,
        unmaskable: file
            .response
            .unmaskable
            .unwrap_or(loaded.repo.masking.unmaskable),
    })
}

/// A session message's obligations: `base` with every rule's masks added.
fn session_obligations(base: &Arc<Obligations>, rules: &[Rule]) -> Arc<Obligations> {
    let mut mask = base.mask.clone();
    for m in rules.iter().flat_map(|r| &r.obligations.mask) {
        if !mask.contains(m) {
            mask.push(m.clone());
        }
    }
    if mask == base.mask {
        return base.clone();
    }
    Arc::new(Obligations {
        masks: CompiledMasks::of(&mask),
        mask,
        ..(**base).clone()
    })
}

/// What one rule needs of its service.
struct RuleInput<'a> {
    src: &'a Source,
    file: &'a schema::ServiceFile,
    identity: &'a IdentityConfig,
    base: &'a Arc<Obligations>,
    fn_by_name: &'a Index<usize>,
}

/// One rule, compiled: its functions, caller, argument and CEL conditions, approval, limits
/// and obligations. Problems go to `errors`; the rule comes back either way.
fn compile_rule(
    input: RuleInput<'_>,
    i: usize,
    def: &schema::RuleDef,
    names: &mut HashSet<String>,
    errors: &mut Vec<Finding>,
) -> Rule {
    let RuleInput {
        src,
        file,
        identity,
        base,
        fn_by_name,
    } = input;
    let idx = i.to_string();
    let at = |rest: &[&str]| -> Vec<String> {
        ["rules", idx.as_str()]
            .iter()
            .chain(rest)
            .map(|s| s.to_string())
            .collect()
    };
    let err = |rest: &[&str], msg: String| {
        let path = at(rest);
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        src.error(&refs, msg)
    };
    if !names.insert(def.name.clone()) {
        errors.push(err(
            &["name"],
            format!("rule name {:?} is used twice in this service", def.name),
        ));
    }
    let fnames = def.function.items();
    let functions_of_rule = if fnames.iter().any(|f| f == "*") {
        if fnames.len() > 1 {
            errors.push(err(
                &["function"],
                "`*` cannot be combined with function names".into(),
            ));
        }
        None
    } else {
        for f in fnames {
            if !fn_by_name.contains_key(f) && !file.functions.is_empty() {
                errors.push(err(
                    &["function"],
                    format!(
                        "function {f:?} is not defined in this service (defined: {})",
                        file.functions
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Some(fnames.to_vec())
    };
    let caller = def
        .caller
        .as_ref()
        .map(|c| compile_caller(c, identity, &mut |path, msg| errors.push(err(path, msg))));
    let mut args = Vec::new();
    for (name, cond) in &def.args {
        match compile_arg(name, cond) {
            Ok(a) => args.push(a),
            Err(msg) => errors.push(err(&["args", name], msg)),
        }
    }
    let when = match &def.when {
        Some(text) => match cel::Program::compile(text) {
            Ok(program) => Some(When {
                text: text.clone(),
                program,
            }),
            Err(e) => {
                errors.push(err(&["when"], format!("invalid CEL: {e}")));
                None
            }
        },
        None => None,
    };
    let approval = compile_approval(def, &err, errors);
    let limited = def.limit.is_some() || def.quota.is_some();
    if limited && def.action == Action::Deny {
        errors.push(err(
            &["action"],
            "`limit:` and `quota:` apply to calls a rule lets through, not to `deny`".into(),
        ));
    }
    let limit = def.limit.as_ref().and_then(|l| {
        crate::obligations::limit::LimitSpec::compile(&def.name, l)
            .map_err(|e| errors.push(err(&["limit"], e)))
            .ok()
            .map(Arc::new)
    });
    let quota = def.quota.as_ref().and_then(|q| {
        crate::obligations::limit::QuotaSpec::compile(&def.name, q)
            .map_err(|e| errors.push(err(&["quota"], e)))
            .ok()
            .map(Arc::new)
    });
    check_masks(
        src,
        &[&["rules", idx.as_str()][..], &["mask"]].concat(),
        &def.mask,
        errors,
    );
    let mut mask = base.mask.clone();
    for m in &def.mask {
        if !mask.contains(m) {
            mask.push(m.clone());
        }
    }
    let masks = if mask == base.mask {
        base.masks.clone()
    } else {
        CompiledMasks::of(&mask)
    };
    let obligations = Arc::new(Obligations {
        mask,
        masks,
        record: def.record.unwrap_or(base.record),
        inject: if def.inject == Some(false) {
            None
        } else {
            base.inject.clone()
        },
        headers: def.headers.clone().unwrap_or_default(),
        approval,
        limit,
        quota,
        unmaskable: base.unmaskable,
    });
    if def.inject == Some(true) && base.inject.is_none() {
        errors.push(err(
            &["inject"],
            "the service has no `credentials:` to inject".into(),
        ));
    }
    Rule {
        name: def.name.as_str().into(),
        functions: functions_of_rule,
        caller,
        args,
        when,
        action: def.action,
        reason: def.reason.as_deref().map(Into::into),
        obligations,
        at: src.locator.find(&["rules", &idx]),
    }
}

/// `approval:` of an `approve` rule; an `approve` without one, or one on another action, is an
/// error.
fn compile_approval(
    def: &schema::RuleDef,
    err: &dyn Fn(&[&str], String) -> Finding,
    errors: &mut Vec<Finding>,
) -> Option<ApprovalSpec> {
    match (def.action, &def.approval) {
        (Action::Approve, Some(a)) => {
            let timeout = parse_duration(&a.timeout);
            let grant = a.grant.as_deref().map(parse_duration);
            if timeout.is_none() {
                errors.push(err(
                    &["approval", "timeout"],
                    format!("{:?} is not a duration like 10m", a.timeout),
                ));
            }
            if matches!(grant, Some(None)) {
                errors.push(err(
                    &["approval", "grant"],
                    "not a duration like 30m".into(),
                ));
            }
            if a.approvers.groups.is_empty() && a.approvers.subjects.is_empty() {
                errors.push(err(
                    &["approval", "approvers"],
                    "name at least one approver group or subject".into(),
                ));
            }
            Some(ApprovalSpec {
                groups: a.approvers.groups.clone(),
                subjects: a.approvers.subjects.clone(),
                timeout: timeout.unwrap_or(Duration::from_secs(600)),
                grant: grant.flatten(),
                grant_same_args: a.grant_same_args,
            })
        }
        (Action::Approve, None) => {
            errors.push(err(
                &["action"],
                "`approve` needs an `approval:` block with approvers".into(),
            ));
            None
        }
        (_, Some(_)) => {
            errors.push(err(
                &["approval"],
                "`approval:` only applies to `action: approve`".into(),
            ));
            None
        }
        _ => None,
    }
}

/// For each function, the indices of the rules that may decide it, in order; and the rules
/// for a function the service does not define (`*` rules only).
fn rules_by_function(functions: &[Function], rules: &[Rule]) -> (Vec<Box<[u32]>>, Box<[u32]>) {
    let rules_for = functions
        .iter()
        .map(|f| {
            rules
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    r.functions
                        .as_ref()
                        .is_none_or(|fs| fs.iter().any(|n| **n == *f.name))
                })
                .map(|(i, _)| i as u32)
                .collect()
        })
        .collect();
    let rules_wildcard = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.functions.is_none())
        .map(|(i, _)| i as u32)
        .collect();
    (rules_for, rules_wildcard)
}
