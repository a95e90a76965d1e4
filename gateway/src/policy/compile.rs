//! Turning loaded files into an immutable, indexed [`Snapshot`]: services by destination and
//! name, rules by function (in order), regexes and CEL compiled once. Every problem found is a
//! located [`Finding`]; a snapshot exists only if there are none.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use regex::Regex;
use serde::Serialize;
use serde_json::Value as Json;

use super::{
    git::GitState,
    load::{Finding, Loaded, Source},
    schema::{
        self, Action, ArgCondition, CallerMatch, Mode, RecordLevel, TcpMode, TlsMode, UidList,
        WorkloadMatch,
    },
};
use crate::approve::ApprovalSpec;
use crate::call::Protocol;
use crate::obligations::inject::{HeaderEdits, Inject};
use crate::obligations::mask::MaskSpec;
use crate::util::net::{in_cidr, strip_port};
use crate::util::time::parse_duration;
use crate::{
    extract::{path::PathRules, surface::Surface},
    identity::IdentityConfig,
    obligations::mask::MaskRules,
    util::jsonpath::JsonPath,
};

use crate::util::NameIndex as Index;

/// The policy as the data path uses it. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct Snapshot {
    pub version: Arc<PolicyVersion>,
    pub default_action: Action,
    pub mode: Mode,
    pub unknown_destination: Action,
    pub services: Vec<Service>,
    by_name: Index<usize>,
    /// Host, then its ports: looked up with the borrowed host text, no key built per call.
    by_host_port: Index<Vec<(u16, usize)>>,
    by_host: Index<usize>,
    cidrs: Vec<(IpAddr, u8, Option<u16>, usize)>,
    by_sni: Index<usize>,
    sni_suffixes: Vec<(String, usize)>,
    pub rule_count: usize,
    /// Named secrets from `callgate.yaml` that `credential:` references resolve through.
    pub credentials: BTreeMap<String, crate::obligations::inject::SecretRef>,
    /// The OIDC providers callers' tokens are verified against.
    pub identity: Arc<IdentityConfig>,
    pub(super) default_obligations: Arc<Obligations>,
}

/// Which policy made a decision.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyVersion {
    pub commit: Option<String>,
    pub dirty: bool,
    /// `git`, or why there is no commit (`not a git repository`).
    pub source: String,
}

#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    /// What the extract stage reads: protocol, path options, functions by method, routes.
    pub surface: Surface,
    pub tls: TlsMode,
    pub tcp: TcpMode,
    /// Extra CA bundle for the upstream (absolute path), when TLS is intercepted.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// The host names the service is known by (from `hosts` and `sni`; `*.x` kept as `.x`):
    /// a Host header or SNI naming something else is a mismatch. Empty: IPs only, no names.
    pub names: Vec<String>,
    pub functions: Vec<Function>,
    fn_by_name: Index<usize>,
    pub rules: Vec<Rule>,
    /// For function i, the indices of the rules that apply to it, in order.
    rules_for: Vec<Box<[u32]>>,
    /// Rules for a function the service does not define (`*` rules only).
    rules_wildcard: Box<[u32]>,
    pub(super) base: Arc<Obligations>,
}

#[derive(Debug)]
pub struct Function {
    pub name: Arc<str>,
    pub method: Option<String>,
    pub route: Option<String>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: Arc<str>,
    /// None: every function.
    pub functions: Option<Vec<String>>,
    pub(super) caller: Option<CallerCond>,
    pub(super) args: Vec<ArgCond>,
    pub(super) when: Option<When>,
    pub action: Action,
    pub reason: Option<Arc<str>>,
    pub obligations: Arc<Obligations>,
    /// Where it is written, for explain and lint.
    pub at: (usize, usize),
}

impl Rule {
    /// True when the rule matches every call to its functions (no caller, args or when).
    pub fn unconditional(&self) -> bool {
        self.caller.is_none() && self.args.is_empty() && self.when.is_none()
    }
}

pub(super) struct When {
    pub text: String,
    pub program: cel::Program,
}

impl std::fmt::Debug for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "When({:?})", self.text)
    }
}

#[derive(Debug, Default)]
pub(super) struct CallerCond {
    /// The provider whose token the caller must hold: the rule's `provider:`, or (when the
    /// rule asks for subjects, groups or claims) the repository's default provider.
    pub provider: Option<String>,
    pub subjects: Vec<String>,
    pub groups_any: Vec<String>,
    pub groups_all: Vec<String>,
    pub claims: Vec<(JsonPath, Json)>,
    pub authenticated: Option<bool>,
    pub workload: Option<WorkloadCond>,
}

#[derive(Debug, Default)]
pub(super) struct WorkloadCond {
    pub uids: Vec<u32>,
    pub users: Vec<String>,
    pub units: Vec<String>,
    pub user_units: Vec<String>,
    /// The `cgroup:` prefix as path components (no empty ones): compared component by
    /// component, so that `rt2/trusted` never matches `rt2/trustedX`.
    pub cgroup_prefix: Option<Vec<String>>,
    pub comms: Vec<String>,
    /// Container ids or prefixes (12+ lowercase hex digits).
    pub containers: Vec<String>,
    pub pods: Vec<String>,
    /// Network namespace inodes.
    pub netns: Vec<u64>,
}

impl WorkloadCond {
    /// When every condition given names something the process (or whoever a cgroup subtree
    /// is delegated to) chooses itself, what they are; `None` when at least one condition is
    /// a fact the workload cannot choose (uid, user, the owning unit, a cgroup at or above
    /// a unit).
    pub(super) fn only_chosen_by_process(&self) -> Option<Vec<&'static str>> {
        use crate::identity::workload::systemd_owned_depth;
        // Container, pod and namespace are the runtime's (see call::container), not
        // the process's.
        if !self.uids.is_empty()
            || !self.users.is_empty()
            || !self.units.is_empty()
            || !self.containers.is_empty()
            || !self.pods.is_empty()
            || !self.netns.is_empty()
        {
            return None;
        }
        let mut chosen = Vec::new();
        if !self.comms.is_empty() {
            chosen.push("comm (any process sets its own)");
        }
        if !self.user_units.is_empty() {
            chosen.push("user_unit (the user names units of its own manager)");
        }
        if let Some(prefix) = &self.cgroup_prefix {
            let below = systemd_owned_depth(&prefix.join("/")).is_some_and(|d| prefix.len() > d);
            if !below {
                return None;
            }
            chosen.push("a cgroup below a unit (the unit may delegate its subtree)");
        }
        (!chosen.is_empty()).then_some(chosen)
    }
}

#[derive(Debug)]
pub(super) struct ArgCond {
    pub path: JsonPath,
    pub ops: Vec<Op>,
}

#[derive(Debug)]
pub(super) enum Op {
    Eq(Json),
    Ne(Json),
    In(Vec<Json>),
    NotIn(Vec<Json>),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    Regex(Regex),
    Prefix(String),
    Present(bool),
    MaxLen(usize),
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Eq(_) => "eq",
            Op::Ne(_) => "ne",
            Op::In(_) => "in",
            Op::NotIn(_) => "not_in",
            Op::Gt(_) => "gt",
            Op::Ge(_) => "ge",
            Op::Lt(_) => "lt",
            Op::Le(_) => "le",
            Op::Regex(_) => "regex",
            Op::Prefix(_) => "prefix",
            Op::Present(true) => "present",
            Op::Present(false) => "absent",
            Op::MaxLen(_) => "max_len",
        }
    }
}

/// A compiled mask list. Equality is the source list's (`Obligations::mask`).
#[derive(Debug, Clone, Default)]
pub struct CompiledMasks(pub Arc<MaskRules>);

impl CompiledMasks {
    /// Compiles a list already checked by `check_masks`; a list with errors never reaches a
    /// snapshot, so an empty one stands in for it.
    fn of(specs: &[MaskSpec]) -> Self {
        Self(Arc::new(MaskRules::compile(specs).unwrap_or_default()))
    }
}

impl PartialEq for CompiledMasks {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What must happen besides the action itself.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Obligations {
    pub mask: Vec<MaskSpec>,
    /// `mask`, compiled; shared by every rule whose list is the same.
    #[serde(skip)]
    pub masks: CompiledMasks,
    pub record: RecordLevel,
    pub inject: Option<Inject>,
    pub headers: HeaderEdits,
    pub approval: Option<ApprovalSpec>,
    pub limit: Option<Arc<crate::obligations::limit::LimitSpec>>,
    pub quota: Option<Arc<crate::obligations::limit::QuotaSpec>>,
    /// What to do with an answer `masks` cannot be applied to.
    pub unmaskable: crate::obligations::mask::UnmaskableAnswer,
}

/// A secret source: exactly one place; an `oauth2` one with a usable token endpoint and a
/// client secret that is itself read from one plain place.
fn check_secret(
    src: &super::load::Source,
    path: &[&str],
    r: &crate::obligations::inject::SecretRef,
    errors: &mut Vec<Finding>,
) {
    if r.count() != 1 {
        errors.push(src.error(
            path,
            "give exactly one of env, file, systemd, credential or oauth2",
        ));
    }
    let Some(o) = &r.oauth2 else { return };
    let mut at = path.to_vec();
    at.push("oauth2");
    if let Err(e) = crate::util::outbound::check_url(&o.token_url) {
        errors.push(src.error(&at, format!("token_url {e}")));
    }
    if o.client_id.is_empty() {
        errors.push(src.error(&at, "client_id must not be empty"));
    }
    let s = &o.client_secret;
    if s.count() != 1 || s.credential.is_some() || s.oauth2.is_some() {
        errors.push(src.error(
            &at,
            "client_secret: give exactly one of env, file or systemd",
        ));
    }
}

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
            commit: git.commit.clone(),
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
    let mut functions = Vec::new();
    let mut fn_by_name = Index::default();
    let mut surface = Surface::new(
        file.protocol,
        PathRules {
            encoded_slashes: file.paths.encoded_slashes,
            semicolons: file.paths.semicolons
                || !matches!(file.protocol, Protocol::Rest | Protocol::Http),
        },
        file.credentials.as_ref().map(|c| c.inject.header.clone()),
    );
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
            errors.push(src.error(
                &[&at[..], &["route"]].concat(),
                format!("route {:?}: {e}", route.unwrap_or_default()),
            ));
        }
        functions.push(Function {
            name: name.as_str().into(),
            method: Some(method),
            route: def.route.clone(),
        });
    }

    check_masks(src, &["response", "mask"], &file.response.mask, &mut errors);
    let inject = match &file.credentials {
        Some(c) => {
            check_secret(
                src,
                &["credentials", "inject", "from"],
                &c.inject.from,
                &mut errors,
            );
            if let Some(name) = &c.inject.from.credential {
                if !loaded.repo.credentials.contains_key(name) {
                    errors.push(src.error(
                        &["credentials", "inject", "from"],
                        format!("credential {name:?} is not defined in callgate.yaml"),
                    ));
                }
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
    let base = Arc::new(Obligations {
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
    });

    let mut rules = Vec::new();
    let mut names = HashSet::new();
    for (i, def) in file.rules.iter().enumerate() {
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
        let approval = match (def.action, &def.approval) {
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
        };
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
            &mut errors,
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
                inject.clone()
            },
            headers: def.headers.clone().unwrap_or_default(),
            approval,
            limit,
            quota,
            unmaskable: base.unmaskable,
        });
        if def.inject == Some(true) && inject.is_none() {
            errors.push(err(
                &["inject"],
                "the service has no `credentials:` to inject".into(),
            ));
        }
        rules.push(Rule {
            name: def.name.as_str().into(),
            functions: functions_of_rule,
            caller,
            args,
            when,
            action: def.action,
            reason: def.reason.as_deref().map(Into::into),
            obligations,
            at: src.locator.find(&["rules", &idx]),
        });
    }

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
        })
    } else {
        Err(errors)
    }
}

/// The names in `hosts` (not IPs or CIDRs) and `sni`, lower-cased; wildcards as `.suffix`.
fn service_names(m: &schema::ServiceMatch) -> Vec<String> {
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

fn check_masks(src: &Source, at: &[&str], masks: &[MaskSpec], errors: &mut Vec<Finding>) {
    for (i, m) in masks.iter().enumerate() {
        if let Err(e) = MaskRules::compile(std::slice::from_ref(m)) {
            let idx = i.to_string();
            let path: Vec<&str> = at.iter().copied().chain([idx.as_str()]).collect();
            errors.push(src.error(&path, e.to_string()));
        }
    }
}

fn compile_caller(
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

fn compile_workload(w: &WorkloadMatch, err: &mut dyn FnMut(&[&str], String)) -> WorkloadCond {
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
                let hex = c
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !hex || c.len() < 12 || c.len() > 64 {
                    err(
                        &["caller", "workload", "container"],
                        format!("{c:?}: a container id is 12 to 64 lowercase hex digits"),
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

fn compile_arg(name: &str, c: &ArgCondition) -> Result<ArgCond, String> {
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

// === lookups used by the data path ===

impl Snapshot {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.by_name.get(name).map(|&i| &self.services[i])
    }

    /// The service that claims an original destination (host or IP, and port), or an SNI.
    pub fn service_for(&self, host: &str, port: u16, sni: Option<&str>) -> Option<&Service> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let idx = self
            .by_host_port
            .get(host)
            .and_then(|ports| ports.iter().find(|(p, _)| *p == port))
            .map(|(_, i)| i)
            .or_else(|| self.by_host.get(host))
            .copied()
            .or_else(|| {
                let ip: IpAddr = host.parse().ok()?;
                self.cidrs
                    .iter()
                    .find(|(net, prefix, p, _)| {
                        p.is_none_or(|p| p == port) && in_cidr(ip, *net, *prefix)
                    })
                    .map(|c| c.3)
            })
            .or_else(|| {
                let sni = sni?.to_ascii_lowercase();
                self.by_sni.get(&sni).copied().or_else(|| {
                    self.sni_suffixes
                        .iter()
                        .find(|(s, _)| sni.ends_with(s.as_str()))
                        .map(|x| x.1)
                })
            })?;
        Some(&self.services[idx])
    }

    pub fn services_by_name(&self) -> BTreeMap<&str, &Service> {
        self.services.iter().map(|s| (&*s.name, s)).collect()
    }
}

impl Service {
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.fn_by_name.get(name).map(|&i| &self.functions[i])
    }

    /// Whether `host` (a Host header, `:authority` or SNI, port allowed) may name this service
    /// reached at `dst`: one of its names, or the destination's own IP. A service with no
    /// names accepts any.
    pub fn accepts_host(&self, host: &str, dst: IpAddr) -> bool {
        let host = strip_port(host);
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return ip == dst || ip.to_canonical() == dst.to_canonical();
        }
        if self.names.is_empty() {
            return true;
        }
        let host = host.trim_end_matches('.');
        self.names.iter().any(|n| match n.strip_prefix('.') {
            Some(_) => {
                host.len() > n.len()
                    && host.as_bytes()[host.len() - n.len()..].eq_ignore_ascii_case(n.as_bytes())
            }
            None => n.eq_ignore_ascii_case(host),
        })
    }

    /// What a call to this service carries when no rule decides it (responses to session
    /// messages are masked with it).
    pub fn base_obligations(&self) -> &Arc<Obligations> {
        &self.base
    }

    /// The rules that may decide a call to `function`, in order.
    pub(super) fn candidates(&self, function: &str) -> &[u32] {
        match self.fn_by_name.get(function) {
            Some(&i) => &self.rules_for[i],
            None => &self.rules_wildcard,
        }
    }
}
