//! The policy as the data path uses it: an immutable [`Snapshot`] of services, indexed by
//! destination and name, with each function's rules in order and everything compiled once
//! ([`super::compile`] builds it). The lookups the data path makes on every call are here too.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use regex::Regex;
use serde::Serialize;
use serde_json::Value as Json;

use super::schema::{Action, Mode, RecordLevel, TcpMode, TlsMode};
use crate::{
    approve::ApprovalSpec,
    extract::surface::Surface,
    identity::IdentityConfig,
    obligations::{
        inject::{HeaderEdits, Inject},
        mask::{MaskRules, MaskSpec},
    },
    util::{
        NameIndex as Index,
        jsonpath::JsonPath,
        net::{in_cidr, strip_port},
    },
};

/// The policy as the data path uses it. Immutable; a reload builds a new one.
#[derive(Debug)]
pub struct Snapshot {
    pub version: Arc<PolicyVersion>,
    pub default_action: Action,
    pub mode: Mode,
    pub unknown_destination: Action,
    pub services: Vec<Service>,
    pub(super) by_name: Index<usize>,
    /// Host, then its ports: looked up with the borrowed host text, no key built per call.
    pub(super) by_host_port: Index<Vec<(u16, usize)>>,
    pub(super) by_host: Index<usize>,
    pub(super) cidrs: Vec<(IpAddr, u8, Option<u16>, usize)>,
    pub(super) by_sni: Index<usize>,
    pub(super) sni_suffixes: Vec<(String, usize)>,
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
    /// Shared with every record of a call it decided.
    pub commit: Option<Arc<str>>,
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
    pub(super) fn_by_name: Index<usize>,
    pub rules: Vec<Rule>,
    /// For function i, the indices of the rules that apply to it, in order.
    pub(super) rules_for: Vec<Box<[u32]>>,
    /// Rules for a function the service does not define (`*` rules only).
    pub(super) rules_wildcard: Box<[u32]>,
    pub(super) base: Arc<Obligations>,
    /// What a session message carries: the base, masked with every rule's masks too (see
    /// [`Service::session_obligations`]).
    pub(super) session: Arc<Obligations>,
    /// MCP safeguards (`mcp:`).
    pub mcp: super::mcp::McpOptions,
    /// The tool pins committed in the repository (`pins/<service>.yaml`), if any.
    pub pins: Option<Arc<super::mcp::PinFile>>,
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
    /// Container ids, id prefixes (12+ lowercase hex digits) or names.
    pub containers: Vec<String>,
    /// Pod UIDs, names or `namespace/name`.
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
        // Container, pod and namespace are the runtime's (see call::container), not the
        // process's.
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
    pub(super) fn of(specs: &[MaskSpec]) -> Self {
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

impl Snapshot {
    /// The network namespace inodes rules name (`caller.workload.netns`): what the gateway
    /// holds open while this policy is in force ([`crate::intercept::netns_pins`]).
    pub fn named_netns(&self) -> BTreeSet<u64> {
        self.services
            .iter()
            .flat_map(|s| &s.rules)
            .filter_map(|r| r.caller.as_ref()?.workload.as_ref())
            .flat_map(|w| w.netns.iter().copied())
            .collect()
    }

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

    /// What a call to this service carries when no rule decides it.
    pub fn base_obligations(&self) -> &Arc<Obligations> {
        &self.base
    }

    /// What a session message to this service (an MCP `GET` stream, `initialize`, a
    /// notification) carries: the base obligations with the masks of every rule as well.
    /// Such a stream may carry any call's answer (a stream resumed with `Last-Event-ID`
    /// replays it; a server may send a response on it), and which call's it is cannot be
    /// told from where it arrives.
    pub fn session_obligations(&self) -> &Arc<Obligations> {
        &self.session
    }

    /// The rules that may decide a call to `function`, in order.
    pub(super) fn candidates(&self, function: &str) -> &[u32] {
        match self.fn_by_name.get(function) {
            Some(&i) => &self.rules_for[i],
            None => &self.rules_wildcard,
        }
    }
}
