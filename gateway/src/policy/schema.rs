//! The policy repository's file formats, as written by people. Every struct rejects unknown
//! keys so that a typo is an error, not a rule that silently never applies.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::call::Protocol;
use crate::identity::spec::Identity;
use crate::obligations::inject::{HeaderEdits, Inject, SecretRef};
use crate::obligations::limit::{LimitDef, QuotaDef};
use crate::obligations::mask::{MaskSpec, UnmaskableAnswer};

/// `callgate.yaml`: repository-wide defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepoFile {
    /// What happens to a call that no rule matches.
    #[serde(default = "deny")]
    pub default_action: DefaultAction,
    #[serde(default)]
    pub mode: Mode,
    /// What happens to a connection whose destination no service claims.
    #[serde(default = "deny")]
    pub unknown_destination: DefaultAction,
    #[serde(default)]
    pub identity: Identity,
    /// Named credentials that services inject; values say where the secret lives, never
    /// the secret itself.
    #[serde(default)]
    pub credentials: BTreeMap<String, SecretRef>,
    /// Masks applied to every service's responses in addition to its own.
    #[serde(default)]
    pub masking: Masking,
}

fn deny() -> DefaultAction {
    DefaultAction::Deny
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    Allow,
    #[default]
    Deny,
}

impl From<DefaultAction> for Action {
    fn from(d: DefaultAction) -> Self {
        match d {
            DefaultAction::Allow => Action::Allow,
            DefaultAction::Deny => Action::Deny,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decisions are enforced.
    #[default]
    Enforce,
    /// Decisions are computed and recorded ("would deny"), but every call proceeds.
    DryRun,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Masking {
    #[serde(default)]
    pub default: Vec<MaskSpec>,
    /// What a service that masks does with an answer it cannot mask, unless it says.
    #[serde(default)]
    pub unmaskable: UnmaskableAnswer,
}

/// `services/<name>.yaml`: one service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub service: String,
    #[serde(rename = "match")]
    pub matcher: ServiceMatch,
    #[serde(default)]
    pub protocol: Protocol,
    /// Non-HTTP TCP to this service's destinations.
    #[serde(default)]
    pub tcp: TcpMode,
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionDef>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    #[serde(default)]
    pub response: Response,
    #[serde(default)]
    pub credentials: Option<Credentials>,
    #[serde(default)]
    pub record: Option<RecordLevel>,
    /// Path spellings the gateway refuses unless the service's server needs them.
    #[serde(default)]
    pub paths: PathOptions,
    /// MCP safeguards: tool pinning.
    #[serde(default)]
    pub mcp: super::mcp::McpOptions,
    /// JSON-RPC and MCP: the paths the protocol is spoken on (`/mcp`, `/rpc`). A request to
    /// another path of the service's hosts is not read as a message: it is decided as the
    /// undeclared function `METHOD /path`. Empty: every path is the endpoint.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

/// `paths:` in a service file: what its server needs that is refused by default, because
/// servers disagree about how to route it (see `extract::path`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathOptions {
    /// Keep `%2F` / `%5C` (encoded, as sent) instead of refusing the request.
    #[serde(default)]
    pub encoded_slashes: bool,
    /// Keep `;` (path parameters) instead of refusing the request. Always kept for JSON-RPC,
    /// MCP and gRPC services, whose paths name no function.
    #[serde(default)]
    pub semicolons: bool,
    /// Keep `.` and ` ` in query and form parameter names (`Filter.1.Name`) instead of
    /// refusing the request: PHP reads them as `_`. For a server that is not PHP.
    #[serde(default)]
    pub dotted_names: bool,
    /// The server routes by no `_method` field (it is not Rails, Laravel, Symfony, Slim or
    /// gorilla's override handler): multipart uploads and an `http` service's `POST` bodies
    /// stream to it unread, at any size, instead of being read (up to `http.max_body_kb`)
    /// for one.
    #[serde(default)]
    pub no_method_override: bool,
    /// The server reads no format suffix (it is not Rails, nor Spring before 5.3, which route
    /// `/items/7.json` as `/items/7`): a path whose last segment has a `.` is decided as it is
    /// spelled only, instead of also as such a server would route it.
    #[serde(default)]
    pub no_format_suffix: bool,
    /// The server routes route literals in any case (Express, ASP.NET): `/Reports/LATEST` is
    /// decided only as `GET /reports/latest`, instead of also as a server that matches them in
    /// their own case (Rails, Flask, Go, Spring) routes it.
    #[serde(default)]
    pub any_case: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMatch {
    /// `host:port`, `ip:port`, `CIDR` or `CIDR:port` of the original destination.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TLS server names (exact, or `*.example.com`).
    #[serde(default)]
    pub sni: Vec<String>,
    #[serde(default)]
    pub tls: TlsMode,
    /// Extra PEM CA bundle trusted for this service's upstream when TLS is intercepted
    /// (relative to the policy repository), besides the system roots.
    #[serde(default)]
    pub upstream_ca: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Decide on SNI and destination only; bytes are spliced.
    #[default]
    Passthrough,
    /// Terminate with a leaf from the local CA, re-originate upstream.
    Intercept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TcpMode {
    #[default]
    Deny,
    Allow,
}

/// How a function is recognised in traffic. REST functions have a route; JSON-RPC, MCP and
/// gRPC ones are named by their method/tool (the function's own name unless given).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    /// `METHOD /path/{param}/...` (REST).
    pub route: Option<String>,
    /// JSON-RPC method, MCP tool or gRPC `/pkg.Service/Method`.
    pub method: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub name: String,
    /// A function name, a list of them, or `*`.
    #[serde(default = "any_function")]
    pub function: OneOrMany,
    #[serde(default)]
    pub caller: Option<CallerMatch>,
    /// Argument name or JSON path → conditions, all of which must hold.
    #[serde(default)]
    pub args: BTreeMap<String, ArgCondition>,
    /// A CEL expression over `call`, `caller`, `args` and `workload`.
    #[serde(default)]
    pub when: Option<String>,
    pub action: Action,
    /// Told to the caller on deny.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub approval: Option<Approval>,
    /// A token bucket per key: `{ per: [caller.subject, function], rate: 10/m, burst: 20 }`.
    #[serde(default)]
    pub limit: Option<LimitDef>,
    /// Calls per fixed window (UTC-aligned) per key: `{ per: [workload.unit], calls: 1000/d }`.
    #[serde(default)]
    pub quota: Option<QuotaDef>,
    #[serde(default)]
    pub mask: Vec<MaskSpec>,
    #[serde(default)]
    pub record: Option<RecordLevel>,
    /// Inject the service's credential (default true when the service has one).
    #[serde(default)]
    pub inject: Option<bool>,
    #[serde(default)]
    pub headers: Option<HeaderEdits>,
}

fn any_function() -> OneOrMany {
    OneOrMany::One("*".into())
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Approve,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Approve => "approve",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallerMatch {
    /// The provider (its `name` in `identity.providers`) whose token the subjects, groups and
    /// claims below come from; default `identity.default_provider`. Groups of another
    /// provider never match, whatever they are called.
    #[serde(default)]
    pub provider: Option<String>,
    /// OIDC subject(s).
    #[serde(default)]
    pub subject: Option<OneOrMany>,
    /// The caller is in at least one of these groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The caller is in every one of these groups.
    #[serde(default)]
    pub groups_all: Vec<String>,
    /// Claim (JSON path into the token's claims) → required value.
    #[serde(default)]
    pub claims: BTreeMap<String, Json>,
    /// Require (true) or forbid (false) a verified token.
    #[serde(default)]
    pub authenticated: Option<bool>,
    #[serde(default)]
    pub workload: Option<WorkloadMatch>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadMatch {
    #[serde(default)]
    pub uid: Option<UidList>,
    #[serde(default)]
    pub user: Option<OneOrMany>,
    /// systemd unit(s): the unit that owns the cgroup, as systemd derives it (a process in
    /// `user.slice/user-1000.slice/user@1000.service/app.slice/x.service` is in unit
    /// `user@1000.service`).
    #[serde(default)]
    pub unit: Option<OneOrMany>,
    /// A user manager's unit(s) (`x.service` above). The user names these: match them
    /// together with `unit: user@UID.service` or `uid`.
    #[serde(default)]
    pub user_unit: Option<OneOrMany>,
    /// cgroup path prefix, compared by whole path components (relative to the cgroup mount,
    /// e.g. `system.slice/`: `rt2/trusted` matches `rt2/trusted/x`, never `rt2/trustedX`).
    #[serde(default)]
    pub cgroup: Option<String>,
    #[serde(default)]
    pub comm: Option<OneOrMany>,
    /// Container(s): the full id or a prefix of at least 12 hex digits, as `docker ps`
    /// and `podman ps` show them (read from the runtime's scope in the cgroup path), or the
    /// container's name where its runtime records one (read from the runtime's state).
    #[serde(default)]
    pub container: Option<OneOrMany>,
    /// Kubernetes pod(s): the UID (`kubectl get pod -o jsonpath='{.metadata.uid}'`), or,
    /// where the runtime records them, the pod's name or `namespace/name`.
    #[serde(default)]
    pub pod: Option<OneOrMany>,
    /// Network namespace inode(s) (`readlink /proc/PID/ns/net` → `net:[INODE]`). Matches
    /// only a namespace the gateway holds open because the policy names it, so that a later
    /// namespace given the same number does not inherit the rule
    /// ([`crate::intercept::netns_pins`]).
    #[serde(default)]
    pub netns: Option<NetnsList>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum NetnsList {
    One(u64),
    Many(Vec<u64>),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum UidList {
    One(u32),
    Many(Vec<u32>),
}

/// Conditions on one argument; all given ones must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArgCondition {
    pub eq: Option<Json>,
    pub ne: Option<Json>,
    #[serde(rename = "in")]
    pub in_: Option<Vec<Json>>,
    pub not_in: Option<Vec<Json>>,
    pub gt: Option<f64>,
    pub ge: Option<f64>,
    pub lt: Option<f64>,
    pub le: Option<f64>,
    /// Same as `le`.
    pub max: Option<f64>,
    /// Same as `ge`.
    pub min: Option<f64>,
    pub regex: Option<String>,
    pub prefix: Option<String>,
    pub present: Option<bool>,
    pub absent: Option<bool>,
    /// Maximum length of a string (characters) or array (elements).
    pub max_len: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default)]
    pub approvers: Approvers,
    /// How long the call is held, e.g. `10m`.
    #[serde(default = "ten_minutes")]
    pub timeout: String,
    /// The longest window an approver may grant, in which the same caller's calls of the
    /// function pass without asking again, e.g. `30m`. Without it, approvals are once-only.
    #[serde(default)]
    pub grant: Option<String>,
    /// Grants cover only calls with the same arguments as the approved one.
    #[serde(default)]
    pub grant_same_args: bool,
}

fn ten_minutes() -> String {
    "10m".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordLevel {
    /// Arguments and response (masked).
    #[default]
    Full,
    /// Who called what and the decision, no arguments or body.
    Metadata,
    None,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    #[serde(default)]
    pub mask: Vec<MaskSpec>,
    /// Overrides `masking.unmaskable` for this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmaskable: Option<UnmaskableAnswer>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub inject: Inject,
}

/// `tests/<name>.yaml`: test cases for `callgate policy test`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub tests: Vec<TestCase>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// An already extracted call…
    #[serde(default)]
    pub call: Option<TestCall>,
    /// …or a REST request that the service's routes turn into one.
    #[serde(default)]
    pub request: Option<TestRequest>,
    #[serde(default)]
    pub caller: Option<TestCaller>,
    #[serde(default)]
    pub workload: Option<TestWorkload>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestCall {
    pub service: Option<String>,
    /// `host:port` of the original destination, when the service is to be found from it.
    pub destination: Option<String>,
    pub function: String,
    #[serde(default)]
    pub args: Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    pub destination: String,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub body: Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestCaller {
    /// The provider that issued the token; default the repository's default provider.
    pub provider: Option<String>,
    pub subject: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub claims: Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestWorkload {
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub unit: Option<String>,
    pub user_unit: Option<String>,
    pub cgroup: Option<String>,
    pub comm: Option<String>,
    pub pid: Option<u32>,
    /// The container id (and `pod`) the test's workload runs in.
    pub container: Option<String>,
    pub pod: Option<String>,
    pub netns: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub action: Action,
    /// The deciding rule; `default` for the default action.
    pub rule: Option<String>,
    pub function: Option<String>,
    #[serde(default)]
    pub mask: Option<Vec<MaskSpec>>,
    #[serde(default)]
    pub record: Option<RecordLevel>,
    #[serde(default)]
    pub inject: Option<bool>,
    /// The call is made this many times and once more at one moment: all but the last pass,
    /// the last is refused by the rule's `limit:` or `quota:`.
    #[serde(default)]
    pub limited_after: Option<u64>,
}
