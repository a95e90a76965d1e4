//! The daemon's configuration: an immutable snapshot built once at start-up from the YAML file
//! and the command line, shared as `Arc<Config>`.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::util::net::{NetPorts, parse_net_ports, words};

/// Where things live unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/callgate/callgate.yaml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/callgate";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/callgate/admin.sock";
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/callgate";
pub const DEFAULT_PORT: u16 = 15001;
/// How long a stop lets connections in flight finish, unless told otherwise; the unit file
/// `callgate install` writes gives the whole stop 15 s more than the grace.
pub const DEFAULT_STOP_GRACE_S: u64 = 5;
/// The longest grace a stop may give.
pub const MAX_STOP_GRACE_S: u64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    #[error("{path}: intercept rule {index}: {reason}")]
    Rule {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{path}: approvals.{key}: {reason}")]
    Approvals {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("{path}: fleet.{key}: {reason}")]
    Fleet {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("{path}: telemetry.otlp_endpoint: {reason}")]
    Telemetry { path: PathBuf, reason: String },
    #[error("{path}: records.witnesses: {reason}")]
    Witness { path: PathBuf, reason: String },
    #[error("{path}: admin_http.{key}: {reason}")]
    AdminHttp {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error(
        "{path}: direct_pass_through: true needs a gateway without a policy (a policy decides calls from their bytes, which a connection that goes straight to its destination never shows the gateway); remove `policies` or direct_pass_through"
    )]
    DirectWithPolicy { path: PathBuf },
    #[error(
        "{path}: stop_grace_s: {found} is more than {max}: a stop that long outlasts any service manager's stop timeout"
    )]
    StopGrace { path: PathBuf, found: u64, max: u64 },
    #[error("{path}: at most {max} intercept rules are supported, found {found}")]
    TooManyRules {
        path: PathBuf,
        max: u32,
        found: usize,
    },
}

/// The daemon's settings. Every field has a default, so an empty file is a valid config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Port of the redirect listeners on 127.0.0.1 and [::1].
    pub listen_port: u16,
    /// Persistent state: which cgroups are enabled.
    pub state_dir: PathBuf,
    /// Root-only unix socket the CLI talks to.
    pub control_socket: PathBuf,
    /// bpffs directory where maps and links are pinned so they outlive the process.
    pub bpffs_dir: PathBuf,
    /// The policy repository (used by the decide stage).
    pub policies: Option<PathBuf>,
    /// Or the policy fetched from a git remote, taken only when signed by an allowed signer.
    pub policies_git: Option<PolicyGit>,
    /// Which destinations are intercepted.
    pub intercept: Intercept,
    /// Let UDP other than DNS leave enabled cgroups (default: refuse, so QUIC cannot bypass L7).
    pub udp_allow: bool,
    /// Resolvers UDP port 53 may reach from enabled cgroups, besides the host's
    /// (`/etc/resolv.conf` at start); any other address on port 53 is refused.
    pub dns_resolvers: Vec<IpAddr>,
    /// Give up connecting upstream after this long.
    pub connect_timeout: Duration,
    /// Close a pass-through connection that moved no byte in either direction for this long.
    pub idle_timeout: Duration,
    /// Splice pass-through connections in the kernel (`sk_skb` redirect) instead of copying
    /// them through a buffer (`kernel_splice: true`; default off: on the l7 bench's
    /// keep-alive pass-through case it measured slower than the copy, see
    /// `intercept::splice`).
    pub kernel_splice: bool,
    /// Without a policy, let intercepted connections go straight to their destination and
    /// record them from the kernel's report of their opening, end and bytes
    /// (`direct_pass_through: true`; default off). See `intercept::direct`.
    pub direct_pass_through: bool,
    /// Data-path threads, each running its own connections start to end (default: one per CPU).
    pub workers: usize,
    /// At a stop, how long connections in flight get to finish (`stop_grace_s`, default 5)
    /// before what is still open is cut (see [`crate::proxy::drain`]).
    pub stop_grace: Duration,
    /// The call log.
    pub records: RecordsConfig,
    /// Limits of the L7 data path.
    pub http: HttpConfig,
    /// Held calls: limits and where new requests are announced.
    pub approvals: ApprovalsConfig,
    /// The optional HTTP admin listener (approvals page, health).
    pub admin_http: Option<AdminHttpConfig>,
    /// OpenTelemetry trace export (off unless an endpoint is set).
    pub telemetry: Option<TelemetryConfig>,
    /// Fleet mode: state shared with other hosts in PostgreSQL (off without `fleet:`).
    pub fleet: Option<FleetConfig>,
}

/// `fleet:` in the config file: the PostgreSQL database the hosts of a fleet share, and the
/// name this host has there.
#[derive(Clone)]
pub struct FleetConfig {
    /// A libpq-style URL (`postgresql://user:pass@host:port/db`) or `key=value` string.
    pub database: String,
    /// This host's name in the fleet, unique among its hosts (default: the hostname).
    pub host: String,
    /// How often this host says it is alive.
    pub heartbeat: Duration,
    /// A host not heard from for this long is dead: its held calls are marked interrupted.
    pub dead_after: Duration,
    /// Connections the statements share (the session that listens comes on top).
    pub pool_size: usize,
    /// CA certificates (PEM) the database's certificate is checked against
    /// (`sslmode=verify-ca|verify-full`, or `require`); the system's roots without it.
    pub ca: Option<std::path::PathBuf>,
    /// `fleet.trusted_keys`: the verifier keys of the hosts whose seals on held calls,
    /// verdicts and grants this host trusts. None: the database is trusted as it is.
    pub trusted_keys: Option<Vec<crate::util::note::Verifier>>,
}

impl std::fmt::Debug for FleetConfig {
    /// Without the database URL, which may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("host", &self.host)
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .field("pool_size", &self.pool_size)
            .field("trusted_keys", &self.trusted_keys.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFleet {
    database: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    heartbeat_s: Option<u64>,
    #[serde(default)]
    dead_after_s: Option<u64>,
    #[serde(default)]
    pool_size: Option<usize>,
    #[serde(default)]
    ca: Option<std::path::PathBuf>,
    /// A file of verifier keys (`<name>+<id>+<key>`), one a line, `#` comments.
    #[serde(default)]
    trusted_keys: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTelemetry {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    otlp_endpoint: String,
    #[serde(default)]
    service_name: Option<String>,
}

/// `admin_http:` in the config file.
#[derive(Debug, Clone)]
pub struct AdminHttpConfig {
    pub listen: std::net::SocketAddr,
    /// Where browsers reach the listener (behind a proxy, its public address); links and
    /// the OIDC redirect are built from it.
    pub public_url: String,
    /// How approvers log in; without it the page only says so.
    pub login: Option<LoginConfig>,
}

/// `admin_http.login:` the OpenID provider approvers log in at (authorization code + PKCE).
#[derive(Debug, Clone)]
pub struct LoginConfig {
    pub issuer: String,
    pub client_id: String,
    /// Read at start-up; a public client (PKCE only) has none.
    pub client_secret_file: Option<PathBuf>,
    /// Claim (or `a.b` path) holding the approver's groups.
    pub groups_claim: String,
    /// Asked for besides `openid`.
    pub scopes: Vec<String>,
    pub session: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdminHttp {
    listen: String,
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default)]
    login: Option<FileLogin>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLogin {
    issuer: String,
    client_id: String,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    session_hours: Option<u64>,
}

/// `approvals:` in the config file.
#[derive(Debug, Clone, Default)]
pub struct ApprovalsConfig {
    pub limits: ApprovalLimits,
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileApprovals {
    max_pending: Option<usize>,
    max_pending_per_caller: Option<usize>,
    /// POSTed a JSON announcement of each new request.
    webhook_url: Option<String>,
    /// `json` (default) or `slack`.
    webhook_format: Option<WebhookFormat>,
    webhook_attempts: Option<u32>,
    /// Base URL of the approvals page, for the links in announcements.
    page_url: Option<String>,
}

/// `http:` in the config file: the limits that keep a hostile or broken client bounded.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// How long the first bytes may take before a connection counts as not TLS/HTTP.
    pub sniff_timeout: Duration,
    /// Request line and headers, in all.
    pub max_header_bytes: usize,
    /// Request bodies read for inspection (JSON-RPC, MCP, REST with JSON); larger ones get
    /// 413 without reaching the upstream.
    pub max_body_bytes: usize,
    /// The whole request head must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// An inspected body must arrive within this.
    pub body_timeout: Duration,
    /// Answers that must be held in full (MCP `tools/list`, JSON-RPC batches) up to this.
    pub max_held_response_bytes: usize,
    /// What inspected bodies and held answers may take in all (`max_inspected_mb`), and one
    /// h2 connection's streams together (`max_inspected_per_connection_mb`); beyond it a
    /// call gets 503 `inspection_busy`. The proxy makes one budget of these for all calls.
    pub max_inspected_bytes: usize,
    /// One h2 connection's streams together, within `max_inspected_bytes`.
    pub max_inspected_per_connection_bytes: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileHttp {
    sniff_timeout_ms: Option<u64>,
    max_header_kb: Option<usize>,
    max_body_kb: Option<usize>,
    header_timeout_s: Option<u64>,
    body_timeout_s: Option<u64>,
    max_held_response_kb: Option<usize>,
    max_inspected_mb: Option<usize>,
    max_inspected_per_connection_mb: Option<usize>,
}

/// When a record counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync'd within `commit_window` of being submitted (group commit).
    #[default]
    Buffered,
    /// The submitter waits until its record is fsync'd.
    Strict,
}

/// Bounds on what is waiting at once; beyond them new requests are refused at once.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalLimits {
    pub max_pending: usize,
    pub max_pending_per_caller: usize,
}

impl Default for ApprovalLimits {
    fn default() -> Self {
        Self {
            max_pending: 256,
            max_pending_per_caller: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    /// `{"text": ...}`, what Slack (and Mattermost, Rocket.Chat…) incoming webhooks take.
    Slack,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub format: WebhookFormat,
    /// Base URL of the approvals page, for links (`<page_url>/approvals/<id>`).
    pub page_url: Option<String>,
    /// Deliveries tried per announcement.
    pub attempts: u32,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
}

/// `records:` in the config file.
#[derive(Debug, Clone)]
pub struct RecordsConfig {
    /// Record calls at all (default true). Off, nothing is written and nothing is refused.
    pub enabled: bool,
    pub dir: PathBuf,
    pub durability: Durability,
    pub commit_window: Duration,
    pub segment_bytes: u64,
    pub segment_age: Duration,
    pub retain_bytes: u64,
    pub retain_age: Duration,
    pub response_cap: usize,
    pub backlog_bytes: usize,
    /// Signed checkpoints at most this often (`checkpoint_interval_s`, default 10).
    pub checkpoint_interval: Duration,
    /// The log's name in its checkpoints (`origin`; default `<hostname>/callgate/records`).
    pub origin: Option<String>,
    /// C2SP tlog-witnesses (`callgate witness`) each new checkpoint is sent to: their URL
    /// prefixes, `POST <url>/add-checkpoint`, each with its cosignature verifier key if given.
    pub witnesses: Vec<WitnessConfig>,
    /// `witness_quorum`: how many keyed witnesses must cosign a checkpoint for it to count as
    /// witnessed (`status` shows the largest such size; 0, the default: no quorum).
    pub witness_quorum: usize,
}

/// One entry of `records.witnesses`: a URL, or `{ url: URL, key: VERIFIER_KEY }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    pub url: String,
    /// The witness's cosignature verifier key (`<name>+<id hex>+<base64>`, tlog-cosignature
    /// v1): each cosignature it returns is checked against it, and a bad one is not kept.
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileWitness {
    Url(String),
    Keyed(FileWitnessKeyed),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWitnessKeyed {
    url: String,
    #[serde(default)]
    key: Option<String>,
}

/// `<hostname>/callgate/records`: the name of this host's log in its checkpoints.
pub(crate) fn default_origin() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control() && *c != '+')
        .collect();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{host}/callgate/records")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileRecords {
    enabled: Option<bool>,
    /// Default: `<state_dir>/records`.
    dir: Option<PathBuf>,
    /// `buffered` (default) or `strict`.
    durability: Option<Durability>,
    commit_window_ms: Option<u64>,
    segment_mb: Option<u64>,
    segment_age_s: Option<u64>,
    /// Keep at most this much (0 = no limit).
    retain_mb: Option<u64>,
    retain_days: Option<u64>,
    response_cap_kb: Option<usize>,
    /// Records queued for the writer before new calls are refused.
    backlog_mb: Option<usize>,
    checkpoint_interval_s: Option<u64>,
    origin: Option<String>,
    witnesses: Option<Vec<FileWitness>>,
    witness_quorum: Option<usize>,
}

/// The intercept set: ordered rules, first match wins, then the default.
#[derive(Debug, Clone, Default)]
pub struct Intercept {
    pub rules: Vec<InterceptRule>,
    /// Intercept TCP that matches no rule.
    pub default_intercept: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptRule {
    pub net: IpAddr,
    pub prefix: u8,
    pub ports: (u16, u16),
    pub intercept: bool,
}

/// The file's shape. Unknown keys are errors so that a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    listen_port: Option<u16>,
    state_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    bpffs_dir: Option<PathBuf>,
    policies: Option<FilePolicies>,
    intercept: Option<FileIntercept>,
    udp: Option<UdpMode>,
    dns_resolvers: Option<Vec<IpAddr>>,
    connect_timeout_ms: Option<u64>,
    idle_timeout_s: Option<u64>,
    kernel_splice: Option<bool>,
    direct_pass_through: Option<bool>,
    workers: Option<usize>,
    stop_grace_s: Option<u64>,
    records: Option<FileRecords>,
    http: Option<FileHttp>,
    approvals: Option<FileApprovals>,
    admin_http: Option<FileAdminHttp>,
    telemetry: Option<FileTelemetry>,
    fleet: Option<FileFleet>,
}

/// `policies:` is a directory, or a git remote to fetch signed commits from.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FilePolicies {
    Dir(PathBuf),
    Git(FilePolicyGit),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicyGit {
    git: String,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    poll_s: Option<u64>,
    allowed_signers: PathBuf,
    ca_file: Option<PathBuf>,
    ssh_key: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    timeout_s: Option<u64>,
}

/// A policy repository fetched from git (`policies: { git: URL, ref, poll_s, allowed_signers,
/// ca_file, ssh_key, known_hosts, timeout_s }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyGit {
    /// A local path or `file://` URL (read with libgit2), or `https://`, `http://`, `ssh://`,
    /// `user@host:path` or `git://` (fetched by the system's `git` in a fixed environment).
    pub url: String,
    /// A branch name (`main`), or a full ref (`refs/tags/prod`).
    pub git_ref: String,
    /// How often to fetch.
    pub poll: Duration,
    /// Keys allowed to sign policy commits, as git's `gpg.ssh.allowedSignersFile`.
    pub allowed_signers: PathBuf,
    /// `https://`: the CA certificates (PEM) to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// `ssh://`: the private key to authenticate with (default: ssh's own defaults for root).
    pub ssh_key: Option<PathBuf>,
    /// `ssh://`: the known_hosts file the server's key must be in (required for ssh).
    pub known_hosts: Option<PathBuf>,
    /// A fetch that takes longer is stopped and counts as failed.
    pub timeout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileIntercept {
    /// `all` (default) or `none`: what happens to TCP that no rule matches.
    default: Option<DefaultMode>,
    /// CIDR and optional ports, e.g. `10.0.0.0/8`, `0.0.0.0/0:443`, `[::]/0:8000-8100`.
    include: Vec<String>,
    exclude: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DefaultMode {
    All,
    None,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum UdpMode {
    Deny,
    Allow,
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen_port: Option<u16>,
    pub state_dir: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    pub bpffs_dir: Option<PathBuf>,
    pub policies: Option<PathBuf>,
}

impl Config {
    /// Loads `path`. A missing file is fine when it is the default path (all defaults apply),
    /// an error when the user named it.
    pub fn load(path: &Path, explicit: bool, over: Overrides) -> Result<Self, ConfigError> {
        let file = match std::fs::read_to_string(path) {
            Ok(text) => parse(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => File::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        Self::build(path, file, over)?.checked(path)
    }

    /// Parses YAML text as a config file (for tests and `callgate run --config`).
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::build(path, parse(path, text)?, Overrides::default())?.checked(path)
    }

    /// Settings that contradict each other.
    fn checked(self, path: &Path) -> Result<Self, ConfigError> {
        if self.direct_pass_through && (self.policies.is_some() || self.policies_git.is_some()) {
            return Err(ConfigError::DirectWithPolicy { path: path.into() });
        }
        Ok(self)
    }

    fn build(path: &Path, file: File, over: Overrides) -> Result<Self, ConfigError> {
        let intercept = file.intercept.unwrap_or_default();
        let mut rules = Vec::new();
        // Excludes first: an operator who excludes something means it, whatever else includes it.
        for (spec, intercept_it) in intercept
            .exclude
            .iter()
            .map(|s| (s, false))
            .chain(intercept.include.iter().map(|s| (s, true)))
        {
            let mut rule = parse_rule(spec).map_err(|reason| ConfigError::Rule {
                path: path.into(),
                index: rules.len(),
                reason: format!("{spec:?}: {reason}"),
            })?;
            rule.intercept = intercept_it;
            rules.push(rule);
        }
        if rules.len() > gateway_common::MAX_RULES as usize {
            return Err(ConfigError::TooManyRules {
                path: path.into(),
                max: gateway_common::MAX_RULES,
                found: rules.len(),
            });
        }
        let state_dir: PathBuf = over
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let rec = file.records.unwrap_or_default();
        let witnesses: Vec<WitnessConfig> = rec
            .witnesses
            .unwrap_or_default()
            .into_iter()
            .map(|w| match w {
                FileWitness::Url(url) => WitnessConfig { url, key: None },
                FileWitness::Keyed(k) => WitnessConfig {
                    url: k.url,
                    key: k.key,
                },
            })
            .collect();
        let witness_err = |reason: String| ConfigError::Witness {
            path: path.into(),
            reason,
        };
        for w in &witnesses {
            check_http_url(&w.url).map_err(witness_err)?;
            if let Some(k) = &w.key
                && (k.split('+').count() < 3 || k.contains(char::is_whitespace))
            {
                return Err(witness_err(format!(
                    "{:?}: the key {k:?} is not a verifier key (<name>+<key id>+<key>)",
                    w.url
                )));
            }
        }
        let witness_quorum = rec.witness_quorum.unwrap_or(0);
        let keyed = witnesses.iter().filter(|w| w.key.is_some()).count();
        if witness_quorum > keyed {
            return Err(witness_err(format!(
                "witness_quorum is {witness_quorum} but only {keyed} witness(es) have a key"
            )));
        }
        let records = RecordsConfig {
            enabled: rec.enabled.unwrap_or(true),
            dir: rec.dir.unwrap_or_else(|| state_dir.join("records")),
            durability: rec.durability.unwrap_or_default(),
            commit_window: Duration::from_millis(rec.commit_window_ms.unwrap_or(10)),
            segment_bytes: rec.segment_mb.unwrap_or(64) << 20,
            segment_age: Duration::from_secs(rec.segment_age_s.unwrap_or(3600)),
            retain_bytes: rec.retain_mb.unwrap_or(0) << 20,
            retain_age: Duration::from_secs(rec.retain_days.unwrap_or(0) * 86_400),
            response_cap: rec.response_cap_kb.unwrap_or(64) * 1024,
            backlog_bytes: rec.backlog_mb.unwrap_or(128).max(1) << 20,
            checkpoint_interval: Duration::from_secs(rec.checkpoint_interval_s.unwrap_or(10)),
            origin: rec.origin,
            witnesses,
            witness_quorum,
        };
        let h = file.http.unwrap_or_default();
        let max_body_bytes = h.max_body_kb.unwrap_or(1024) * 1024;
        let max_held_response_bytes = h.max_held_response_kb.unwrap_or(4096) * 1024;
        // Never less than one body or answer, which would refuse every call that needs one.
        let inspected = h
            .max_inspected_mb
            .unwrap_or(128)
            .saturating_mul(1 << 20)
            .max(max_body_bytes)
            .max(max_held_response_bytes);
        let per_connection = h
            .max_inspected_per_connection_mb
            .unwrap_or(16)
            .saturating_mul(1 << 20)
            .max(max_body_bytes)
            .max(max_held_response_bytes);
        let http = HttpConfig {
            sniff_timeout: Duration::from_millis(h.sniff_timeout_ms.unwrap_or(1000)),
            max_header_bytes: h.max_header_kb.unwrap_or(64).max(8) * 1024,
            max_body_bytes,
            header_timeout: Duration::from_secs(h.header_timeout_s.unwrap_or(10)),
            body_timeout: Duration::from_secs(h.body_timeout_s.unwrap_or(30)),
            max_held_response_bytes,
            max_inspected_bytes: inspected,
            max_inspected_per_connection_bytes: per_connection,
        };
        let a = file.approvals.unwrap_or_default();
        for (key, url) in [("webhook_url", &a.webhook_url), ("page_url", &a.page_url)] {
            if let Some(url) = url {
                check_http_url(url).map_err(|reason| ConfigError::Approvals {
                    path: path.into(),
                    key,
                    reason,
                })?;
            }
        }
        let admin_http = file.admin_http.map(|h| admin_http(path, h)).transpose()?;
        let telemetry = match file.telemetry {
            None => None,
            Some(t) => {
                check_http_url(&t.otlp_endpoint).map_err(|reason| ConfigError::Telemetry {
                    path: path.into(),
                    reason,
                })?;
                Some(TelemetryConfig {
                    endpoint: t.otlp_endpoint,
                    service_name: t.service_name.unwrap_or_else(|| "callgate".into()),
                })
            }
        };
        let fleet = file.fleet.map(|f| fleet(path, f)).transpose()?;
        let stop_grace = match file.stop_grace_s.unwrap_or(DEFAULT_STOP_GRACE_S) {
            found if found > MAX_STOP_GRACE_S => {
                return Err(ConfigError::StopGrace {
                    path: path.into(),
                    found,
                    max: MAX_STOP_GRACE_S,
                });
            }
            s => Duration::from_secs(s),
        };
        let defaults = ApprovalLimits::default();
        let approvals = ApprovalsConfig {
            limits: ApprovalLimits {
                max_pending: a.max_pending.unwrap_or(defaults.max_pending),
                max_pending_per_caller: a
                    .max_pending_per_caller
                    .unwrap_or(defaults.max_pending_per_caller),
            },
            webhook: a.webhook_url.map(|url| WebhookConfig {
                url,
                format: a.webhook_format.unwrap_or_default(),
                // Links point at the approvals page when there is one.
                page_url: a
                    .page_url
                    .or_else(|| admin_http.as_ref().map(|h| h.public_url.clone())),
                attempts: a.webhook_attempts.unwrap_or(6),
            }),
        };
        Ok(Self {
            records,
            http,
            approvals,
            admin_http,
            telemetry,
            fleet,
            listen_port: over
                .listen_port
                .or(file.listen_port)
                .unwrap_or(DEFAULT_PORT),
            state_dir,
            control_socket: over
                .control_socket
                .or(file.control_socket)
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            bpffs_dir: over
                .bpffs_dir
                .or(file.bpffs_dir)
                .unwrap_or_else(|| DEFAULT_BPFFS_DIR.into()),
            policies_git: match (&over.policies, &file.policies) {
                (None, Some(FilePolicies::Git(g))) => Some(PolicyGit {
                    url: g.git.clone(),
                    git_ref: g.git_ref.clone().unwrap_or_else(|| "main".into()),
                    poll: Duration::from_secs(g.poll_s.unwrap_or(30).max(1)),
                    allowed_signers: g.allowed_signers.clone(),
                    ca_file: g.ca_file.clone(),
                    ssh_key: g.ssh_key.clone(),
                    known_hosts: g.known_hosts.clone(),
                    timeout: Duration::from_secs(g.timeout_s.unwrap_or(60).max(1)),
                }),
                _ => None,
            },
            policies: over.policies.clone().or(match &file.policies {
                Some(FilePolicies::Dir(d)) => Some(d.clone()),
                _ => None,
            }),
            intercept: Intercept {
                rules,
                default_intercept: !matches!(intercept.default, Some(DefaultMode::None)),
            },
            udp_allow: matches!(file.udp, Some(UdpMode::Allow)),
            dns_resolvers: file.dns_resolvers.unwrap_or_default(),
            connect_timeout: Duration::from_millis(file.connect_timeout_ms.unwrap_or(10_000)),
            idle_timeout: Duration::from_secs(file.idle_timeout_s.unwrap_or(600)),
            kernel_splice: file.kernel_splice.unwrap_or(false),
            direct_pass_through: file.direct_pass_through.unwrap_or(false),
            workers: match file.workers {
                Some(n) if n > 0 => n,
                _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            stop_grace,
        })
    }
}

/// `fleet:` checked: a database, a host name that fits a fleet's listings, and a host
/// declared dead only after several missed heartbeats.
fn fleet(path: &Path, f: FileFleet) -> Result<FleetConfig, ConfigError> {
    let fail = |key, reason: &str| ConfigError::Fleet {
        path: path.into(),
        key,
        reason: reason.into(),
    };
    if f.database.trim().is_empty() {
        return Err(fail("database", "a PostgreSQL URL is needed"));
    }
    let host = match f.host {
        Some(h) => h,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
    };
    let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if host.is_empty() || host.len() > 64 || !host.chars().all(name_ok) {
        return Err(fail(
            "host",
            "1 to 64 letters, digits, '-', '_' or '.' (default: the hostname)",
        ));
    }
    let heartbeat = Duration::from_secs(f.heartbeat_s.unwrap_or(2).max(1));
    let dead_after = Duration::from_secs(f.dead_after_s.unwrap_or(10));
    if dead_after < heartbeat * 3 {
        return Err(fail(
            "dead_after_s",
            "at least three heartbeats (heartbeat_s), or a slow host would be declared dead",
        ));
    }
    let pool_size = f.pool_size.unwrap_or(4);
    if !(1..=64).contains(&pool_size) {
        return Err(fail("pool_size", "1 to 64 connections (default 4)"));
    }
    let trusted_keys = match &f.trusted_keys {
        Some(file) => {
            Some(crate::util::note::read_verifiers(file).map_err(|e| fail("trusted_keys", &e))?)
        }
        None => None,
    };
    Ok(FleetConfig {
        database: f.database,
        host,
        heartbeat,
        dead_after,
        pool_size,
        ca: f.ca,
        trusted_keys,
    })
}

fn parse(path: &Path, text: &str) -> Result<File, ConfigError> {
    if text.trim().is_empty() {
        return Ok(File::default());
    }
    yaml_serde::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

/// `CIDR[:PORT[-PORT]]` as an intercept rule (see [`parse_net_ports`]).
pub fn parse_rule(spec: &str) -> Result<InterceptRule, String> {
    let NetPorts { net, prefix, ports } = parse_net_ports(spec)?;
    Ok(InterceptRule {
        net,
        prefix,
        ports,
        intercept: true,
    })
}

impl InterceptRule {
    /// The kernel form: address and mask in IPv6 form, network byte order.
    pub fn to_kernel(&self) -> gateway_common::Rule {
        let (addr, prefix) = match self.net {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 96 + u32::from(self.prefix)),
            IpAddr::V6(v6) => (v6, u32::from(self.prefix)),
        };
        let mask = if prefix == 0 {
            0u128
        } else {
            u128::MAX << (128 - prefix)
        };
        let net = u128::from(addr) & mask;
        gateway_common::Rule {
            addr: words(net),
            mask: words(mask),
            port_lo: u32::from(self.ports.0),
            port_hi: u32::from(self.ports.1),
            action: if self.intercept {
                gateway_common::RULE_INTERCEPT
            } else {
                gateway_common::RULE_BYPASS
            },
            _pad: 0,
        }
    }
}

/// The listener addresses.
pub const LISTEN_V4: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const LISTEN_V6: Ipv6Addr = Ipv6Addr::LOCALHOST;

fn admin_http(path: &Path, h: FileAdminHttp) -> Result<AdminHttpConfig, ConfigError> {
    let err = |key: &'static str, reason: String| ConfigError::AdminHttp {
        path: path.into(),
        key,
        reason,
    };
    let listen: std::net::SocketAddr = h.listen.parse().map_err(|_| {
        err(
            "listen",
            format!("{:?} is not an address like 127.0.0.1:15080", h.listen),
        )
    })?;
    let public_url = match h.public_url {
        Some(u) => {
            check_http_url(&u).map_err(|r| err("public_url", r))?;
            u.trim_end_matches('/').to_string()
        }
        None => format!("http://{listen}"),
    };
    let login = match h.login {
        None => None,
        Some(l) => {
            check_http_url(&l.issuer).map_err(|r| err("login.issuer", r))?;
            if l.client_id.is_empty() {
                return Err(err("login.client_id", "must not be empty".into()));
            }
            Some(LoginConfig {
                issuer: l.issuer,
                client_id: l.client_id,
                client_secret_file: l.client_secret_file,
                groups_claim: l.groups_claim.unwrap_or_else(|| "groups".into()),
                scopes: l
                    .scopes
                    .unwrap_or_else(|| vec!["profile".into(), "groups".into()]),
                session: Duration::from_secs(3600 * l.session_hours.unwrap_or(8).max(1)),
            })
        }
    };
    Ok(AdminHttpConfig {
        listen,
        public_url,
        login,
    })
}

/// An absolute http(s) URL, as the gateway's own client and a browser need it.
fn check_http_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(format!(
            "{url:?} is not an absolute http:// or https:// URL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_trusted_keys_are_read_and_a_bad_line_is_named() {
        let dir = std::env::temp_dir().join(format!("callgate-fleet-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = crate::util::note::Signer::generate("a.example/callgate/records").unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("# host a\n{}\n", key.verifier().encode())).unwrap();
        let bad = dir.join("bad");
        std::fs::write(
            &bad,
            format!("{}\nsomething else\n", key.verifier().encode()),
        )
        .unwrap();
        let yaml = |file: &Path| {
            format!(
                "fleet:\n  database: postgresql://x@127.0.0.1/db\n  host: a\n  trusted_keys: {}\n",
                file.display()
            )
        };
        let c = Config::from_yaml(Path::new("c.yaml"), &yaml(&good)).unwrap();
        let keys = c.fleet.unwrap().trusted_keys.unwrap();
        assert_eq!(keys, vec![key.verifier()]);
        let e = Config::from_yaml(Path::new("c.yaml"), &yaml(&bad))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fleet.trusted_keys") && e.contains("bad:2: malformed key"),
            "{e}"
        );
        let c = Config::from_yaml(
            Path::new("c.yaml"),
            "fleet:\n  database: postgresql://x@h/d\n  host: a\n",
        )
        .unwrap();
        assert!(c.fleet.unwrap().trusted_keys.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn defaults_from_empty_file() {
        let c = Config::from_yaml(Path::new("c.yaml"), "").unwrap();
        assert_eq!(c.listen_port, DEFAULT_PORT);
        assert!(c.intercept.default_intercept);
        assert!(!c.udp_allow);
        assert!(c.dns_resolvers.is_empty());
        assert!(c.workers >= 1);
        let c = Config::from_yaml(Path::new("c.yaml"), "workers: 3\n").unwrap();
        assert_eq!(c.workers, 3);
    }

    #[test]
    fn a_stop_grace_has_a_default_and_a_bound() {
        let c = Config::from_yaml(Path::new("c.yaml"), "").unwrap();
        assert_eq!(c.stop_grace, Duration::from_secs(DEFAULT_STOP_GRACE_S));
        let c = Config::from_yaml(Path::new("c.yaml"), "stop_grace_s: 0\n").unwrap();
        assert_eq!(c.stop_grace, Duration::ZERO);
        let e = Config::from_yaml(Path::new("c.yaml"), "stop_grace_s: 3600\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.yaml: stop_grace_s: 3600 is more than 600"),
            "{e}"
        );
    }

    #[test]
    fn direct_pass_through_refuses_a_policy_from_the_file_or_the_command_line() {
        let c = Config::from_yaml(Path::new("c.yaml"), "direct_pass_through: true\n").unwrap();
        assert!(c.direct_pass_through);
        let e = Config::from_yaml(
            Path::new("c.yaml"),
            "direct_pass_through: true\npolicies: /etc/callgate/policies\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.yaml: direct_pass_through"), "{e}");
        let dir = std::env::temp_dir().join(format!("callgate-direct-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("callgate.yaml");
        std::fs::write(&path, "direct_pass_through: true\n").unwrap();
        let over = Overrides {
            policies: Some(dir.join("policies")),
            ..Overrides::default()
        };
        let e = Config::load(&path, true, over).unwrap_err().to_string();
        assert!(e.contains("needs a gateway without a policy"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_are_errors_with_location() {
        let err =
            Config::from_yaml(Path::new("c.yaml"), "listen_port: 1\nlisten_prot: 2\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("c.yaml") && msg.contains("listen_prot") && msg.contains("line 2"),
            "{msg}"
        );
    }

    #[test]
    fn approvals_section() {
        let c = Config::from_yaml(
            Path::new("c.yaml"),
            "approvals:\n  max_pending: 3\n  webhook_url: https://hooks.example/x\n  webhook_format: slack\n",
        )
        .unwrap();
        assert_eq!(c.approvals.limits.max_pending, 3);
        assert_eq!(c.approvals.limits.max_pending_per_caller, 8);
        let w = c.approvals.webhook.unwrap();
        assert_eq!(w.format, WebhookFormat::Slack);
        assert_eq!(w.attempts, 6);
        let err = Config::from_yaml(Path::new("c.yaml"), "approvals:\n  webhook_url: hooks\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("approvals.webhook_url") && err.contains("http"),
            "{err}"
        );
    }

    #[test]
    fn policies_directory_or_git() {
        let c = Config::from_yaml(Path::new("c.yaml"), "policies: /etc/p\n").unwrap();
        assert_eq!(c.policies.as_deref(), Some(Path::new("/etc/p")));
        assert!(c.policies_git.is_none());
        let c = Config::from_yaml(
            Path::new("c.yaml"),
            "policies: { git: file:///srv/p.git, poll_s: 5, allowed_signers: /etc/s }\n",
        )
        .unwrap();
        assert!(c.policies.is_none());
        let g = c.policies_git.unwrap();
        assert_eq!(g.url, "file:///srv/p.git");
        assert_eq!(g.git_ref, "main");
        assert_eq!(g.poll, Duration::from_secs(5));
        assert_eq!(g.allowed_signers, Path::new("/etc/s"));
        // allowed_signers is required, and a misspelt key is an error.
        assert!(Config::from_yaml(Path::new("c.yaml"), "policies: { git: /srv/p.git }\n").is_err());
        assert!(
            Config::from_yaml(
                Path::new("c.yaml"),
                "policies: { git: /p, allowed_signers: /s, pol_s: 1 }\n"
            )
            .is_err()
        );
    }

    #[test]
    fn rules_parse() {
        assert_eq!(parse_rule("10.0.0.0/8").unwrap().ports, (0, 65535));
        assert_eq!(parse_rule("0.0.0.0/0:443").unwrap().ports, (443, 443));
        let r = parse_rule("[2001:db8::]/32:8000-8100").unwrap();
        assert_eq!((r.prefix, r.ports), (32, (8000, 8100)));
        assert_eq!(parse_rule("::1").unwrap().prefix, 128);
        assert!(parse_rule("10.0.0.0/33").is_err());
        assert!(parse_rule("nope").is_err());
        assert!(parse_rule("1.2.3.4:9-1").is_err());
    }

    #[test]
    fn kernel_rules_match_like_the_kernel() {
        let rule = parse_rule("10.1.0.0/16:80").unwrap().to_kernel();
        let inside = words(u128::from(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()));
        let outside = words(u128::from(Ipv4Addr::new(10, 2, 0, 1).to_ipv6_mapped()));
        assert!(rule.matches(&inside, 80));
        assert!(!rule.matches(&inside, 81));
        assert!(!rule.matches(&outside, 80));
        assert_eq!(
            inside,
            gateway_common::v4_mapped(u32::from_ne_bytes([10, 1, 2, 3]))
        );
        let all = parse_rule("::/0").unwrap().to_kernel();
        assert!(all.matches(&inside, 1));
        assert_eq!(
            crate::util::net::from_words(&inside),
            Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()
        );
    }

    #[test]
    fn records_witnesses_are_urls() {
        let c = Config::from_yaml(
            Path::new("c.yaml"),
            "records:\n  witnesses: [\"http://127.0.0.1:7380\", \"https://w.example/prefix\"]\n",
        )
        .unwrap();
        assert_eq!(
            c.records
                .witnesses
                .iter()
                .map(|w| w.url.as_str())
                .collect::<Vec<_>>(),
            ["http://127.0.0.1:7380", "https://w.example/prefix"]
        );
        // With keys, mixed with plain URLs, and a quorum.
        let key = "w.example/w+0102abcd+BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let c = Config::from_yaml(
            Path::new("c.yaml"),
            &format!("records:\n  witness_quorum: 1\n  witnesses:\n    - http://127.0.0.1:1\n    - {{ url: \"http://127.0.0.1:2\", key: \"{key}\" }}\n"),
        )
        .unwrap();
        assert_eq!(c.records.witness_quorum, 1);
        assert_eq!(c.records.witnesses[0].key, None);
        assert_eq!(c.records.witnesses[1].key.as_deref(), Some(key));
        // A quorum larger than the keyed witnesses.
        let e = Config::from_yaml(
            Path::new("c.yaml"),
            "records:\n  witness_quorum: 2\n  witnesses: [http://127.0.0.1:1]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("witness_quorum"), "{e}");
        assert!(
            Config::from_yaml(Path::new("c.yaml"), "")
                .unwrap()
                .records
                .witnesses
                .is_empty()
        );
        let e = Config::from_yaml(Path::new("c.yaml"), "records:\n  witnesses: [w.example]\n")
            .unwrap_err();
        assert!(e.to_string().contains("records.witnesses"), "{e}");
    }
}
