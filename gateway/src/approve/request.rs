//! The approve stage's vocabulary: a held request and its state, who may answer it, the
//! verdict, the grant an approval may leave, and what the queue reports. Plain data and the
//! rules that read only it (who may approve, what a grant covers); the queue itself, with its
//! locks, files and fleet database, is [`super::Approvals`].
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::call::Caller;

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approval state {path}: {reason}")]
    State { path: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    TimedOut,
    /// The client gave up before a verdict.
    Cancelled,
    /// The gateway stopped while the call was held.
    Interrupted,
}

impl State {
    /// The name it has in JSON, the CLI and the page.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::TimedOut => "timed_out",
            State::Cancelled => "cancelled",
            State::Interrupted => "interrupted",
        }
    }
}

/// One held call, as approvers see it (arguments masked) and as it is kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub state: State,
    pub service: String,
    pub function: String,
    /// Masked with the service's masks.
    pub args: Json,
    pub caller: CallerSummary,
    pub rule: String,
    pub policy_commit: Option<String>,
    pub approvers: Approvers,
    /// The longest grant an approver may give (none: approve once only).
    pub max_grant_s: Option<u64>,
    pub requested_at_ms: u64,
    pub expires_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Where the call was going, for its record should the gateway stop meanwhile.
    pub session: String,
    pub destination: String,
    /// What grants from this request are scoped to.
    pub(super) scope: Scope,
    /// The host holding the call (fleet mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Approvers {
    pub groups: Vec<String>,
    pub subjects: Vec<String>,
}

/// Who is calling, in the terms approvers judge by.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallerSummary {
    pub subject: Option<String>,
    pub groups: Vec<String>,
    pub provider: Option<String>,
    pub unit: Option<String>,
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
}

impl CallerSummary {
    pub fn of(c: &Caller) -> Self {
        let w = c.workload.as_deref().cloned().unwrap_or_default();
        Self {
            subject: c.authenticated.then(|| c.subject.clone()).flatten(),
            groups: if c.authenticated {
                c.groups.clone()
            } else {
                Vec::new()
            },
            provider: c.provider.clone(),
            unit: w.unit,
            user: w.user,
            uid: w.uid,
            pid: w.pid,
            comm: w.comm,
            cgroup: w.cgroup,
        }
    }

    /// The caller a grant is for: its token's subject, else its workload (unit or cgroup,
    /// and uid).
    pub(super) fn key(&self) -> String {
        match (&self.provider, &self.subject) {
            (Some(p), Some(s)) => format!("oidc:{p}:{s}"),
            _ => format!(
                "workload:{}:uid={}",
                self.unit
                    .as_deref()
                    .or(self.cgroup.as_deref())
                    .unwrap_or("?"),
                self.uid.map_or("?".into(), |u| u.to_string())
            ),
        }
    }

    /// Whose share of the pending approvals a held call takes: its uid, which a process
    /// cannot multiply the way it can make sub-cgroups or choose a comm. Root's calls (on
    /// most hosts every service runs as root) are told apart by unit or cgroup as well.
    pub(super) fn slot(&self) -> String {
        match self.uid {
            Some(uid) if uid != 0 => format!("uid={uid}"),
            _ => self.key(),
        }
    }

    /// How a person would name this caller.
    pub fn describe(&self) -> String {
        let who = self.subject.clone().unwrap_or_else(|| "(no token)".into());
        let what = self
            .unit
            .clone()
            .or_else(|| self.comm.clone())
            .unwrap_or_else(|| "?".into());
        format!(
            "{who} via {what} (uid {})",
            self.uid.map_or("?".into(), |u| u.to_string())
        )
    }
}

/// What a grant covers: the caller's calls to one function that the same rule of the same
/// policy would hold. A grant from one rule never lets through a call another rule holds
/// (a grant for small refunds is no grant for large ones), nor survives a policy change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Scope {
    pub(super) caller: String,
    pub(super) service: String,
    pub(super) function: String,
    /// A keyed digest of the arguments, when the rule scopes grants to them.
    pub(super) args: Option<String>,
    #[serde(default)]
    pub(super) rule: String,
    #[serde(default)]
    pub(super) policy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub approved: bool,
    pub by: String,
    /// `cli` or `web`.
    pub via: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// The host it was given on (fleet mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A window in which a caller's repeats of an approved call pass without asking.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub caller: String,
    pub service: String,
    pub function: String,
    pub args_digest: Option<String>,
    /// The rule that held the call the grant answers; only that rule's calls are covered.
    /// (A grant saved before grants named their rule names none, and covers nothing.)
    #[serde(default)]
    pub rule: String,
    /// The policy commit that rule belongs to.
    #[serde(default)]
    pub policy_commit: Option<String>,
    pub expires_at_ms: u64,
    pub approved_by: String,
    pub request: String,
    #[serde(default)]
    pub uses: u64,
    /// The same end on the monotonic clock: a wall clock set back must not lengthen a grant
    /// (nor a jump forward be needed to end it). Not saved; rebuilt from what remains.
    #[serde(skip)]
    pub(super) deadline: Option<Instant>,
}

impl Grant {
    /// In force at wall time `now_ms`: before its end on both clocks.
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms && self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

/// Who gives a verdict.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    pub groups: Vec<String>,
    /// The host's operator over the root-only control socket: may answer any request (the
    /// break-glass path); web approvers only those whose rule names them.
    pub operator: bool,
}

/// A call a grant may cover: who, what, and the rule (of which policy) that would hold it.
pub struct GrantedCall<'a> {
    pub caller: &'a Caller,
    pub service: &'a str,
    pub function: &'a str,
    pub rule: &'a str,
    pub policy_commit: Option<&'a str>,
    /// The digest of its arguments; None when they were not all read (a body the gateway
    /// does not parse): only a grant for any arguments covers such a call.
    pub args_digest: Option<&'a str>,
}

/// A call about to be held.
pub struct NewRequest<'a> {
    pub service: &'a str,
    pub function: &'a str,
    pub args: Json,
    pub args_digest: String,
    pub caller: &'a Caller,
    pub rule: &'a str,
    pub policy_commit: Option<String>,
    pub spec: &'a ApprovalSpec,
    pub session: &'a str,
    pub destination: String,
}

/// What `callgate status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalsStatus {
    pub pending: usize,
    pub grants: usize,
    pub webhook: Option<super::notify::WebhookStatus>,
    /// Announcements not sent because more than 30 a minute came.
    #[serde(default)]
    pub announcements_suppressed: u64,
    /// Fleet mode: the shared database, and whether it is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStatus>,
    /// Fleet mode: whether what the database says is checked against hosts' seals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_trust: Option<super::seal::TrustStatus>,
}

/// Why a call is not held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Too many calls are held already (on this host, or of this caller).
    Full(String),
    /// The fleet's database, where every held call must be, is unreachable.
    Unavailable(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Full(why) | Refused::Unavailable(why) => f.write_str(why),
        }
    }
}

/// How a held call ended.
#[derive(Debug)]
pub enum Outcome {
    Approved(Request),
    Denied(Request),
    TimedOut(Request),
    /// The fleet ended it without a verdict (it took this host for dead).
    Interrupted(Request),
}

/// The grant an approval of `r` with a window gives.
pub(super) fn grant_for(r: &Request, verdict: &Verdict, window: Option<Duration>) -> Option<Grant> {
    match (verdict.approved, &verdict.grant, window) {
        (true, Some(gid), Some(w)) => Some(Grant {
            id: gid.clone(),
            caller: r.scope.caller.clone(),
            service: r.scope.service.clone(),
            function: r.scope.function.clone(),
            args_digest: r.scope.args.clone(),
            rule: r.scope.rule.clone(),
            policy_commit: r.scope.policy.clone(),
            expires_at_ms: verdict.at_ms + w.as_millis() as u64,
            approved_by: verdict.by.clone(),
            request: r.id.clone(),
            uses: 0,
            deadline: Some(Instant::now() + w),
        }),
        _ => None,
    }
}

impl Request {
    /// Whether the rule names `a` among its approvers (by subject or group); says nothing
    /// about the caller approving itself.
    pub fn names(&self, a: &Approver) -> bool {
        self.approvers.subjects.contains(&a.name)
            || a.groups.iter().any(|g| self.approvers.groups.contains(g))
    }

    /// Whether `a` may approve this request, and if not, why.
    pub fn approvable_by(&self, a: &Approver) -> Result<(), String> {
        may_approve(self, a)
    }
}

pub(super) fn may_approve(r: &Request, a: &Approver) -> Result<(), String> {
    // The caller's token subject, or the account its workload runs as (root excepted: on
    // most hosts every service and every operator's sudo is root).
    let own = r.caller.subject.as_deref() == Some(a.name.as_str())
        || (r.caller.user.as_deref() == Some(a.name.as_str()) && a.name != "root");
    if own {
        return Err(format!(
            "{} cannot approve their own call: another approver must",
            a.name
        ));
    }
    if a.operator || r.names(a) {
        return Ok(());
    }
    Err(format!(
        "{} may not approve calls of rule {} (approvers: groups {:?}, subjects {:?})",
        a.name, r.rule, r.approvers.groups, r.approvers.subjects
    ))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApprovalSpec {
    pub groups: Vec<String>,
    pub subjects: Vec<String>,
    pub timeout: Duration,
    /// The longest window an approver may grant (none: approve once only).
    pub grant: Option<Duration>,
    /// Grants cover only calls with the same arguments.
    pub grant_same_args: bool,
}
