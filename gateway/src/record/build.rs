//! A record made from what the gateway decided, in one place: the decision as the log keeps it,
//! and what it says of the caller beyond its workload.
use std::{borrow::Cow, sync::Arc};

use serde_json::Value as Json;

use super::{Record, RecordedDecision, SharedJson};
use crate::{
    approve,
    call::Caller,
    obligations::limit::Hit,
    policy::{Action, Decision},
};

impl RecordedDecision {
    /// The record's decision for a call the gateway answered itself (`error`: `reason`): the
    /// policy's, or (for a refusal no rule made: a limit, a mismatch, a failed upstream) a deny
    /// saying why.
    pub fn answered(d: Option<&Decision>, error: &str, reason: &str, limit: Option<&Hit>) -> Self {
        match d {
            Some(d) if limit.is_some() => Self {
                enforced: true,
                reason: Some(format!("{error}: {reason}")),
                limit: serde_json::to_value(limit).ok(),
                ..Self::of(d)
            },
            // The approval's outcome is the reason: denied by whom, timed out, ….
            Some(d) if d.enforced == Action::Approve => Self {
                reason: Some(format!("{error}: {reason}")),
                ..Self::of(d)
            },
            Some(d) if d.enforced != Action::Allow => Self::of(d),
            Some(d) => Self {
                reason: Some(format!("allowed, then {error}: {reason}")),
                ..Self::of(d)
            },
            None => Self::denied(format!("{error}: {reason}")),
        }
    }

    /// A deny no rule made: the gateway refused a connection or a call, saying why.
    pub fn denied(reason: String) -> Self {
        Self {
            action: "deny".into(),
            enforced: true,
            reason: Some(reason),
            ..Self::default()
        }
    }

    /// A connection carried as bytes (TCP allowed, or no policy loaded), saying why.
    pub fn passed(reason: String) -> Self {
        Self {
            action: "allow".into(),
            enforced: true,
            reason: Some(reason),
            ..Self::default()
        }
    }

    /// The policy's decision, as decided.
    pub fn of(d: &Decision) -> Self {
        RecordedDecision {
            // Borrowed: the same few words for every call.
            action: Cow::Borrowed(d.action.as_str()),
            enforced: d.enforced == d.action,
            rule: d.rule.clone(),
            reason: d.reason.as_deref().map(str::to_string),
            policy_commit: d.policy.commit.clone(),
            policy_dirty: d.policy.dirty,
            mode: Some(Cow::Borrowed(d.mode.as_str())),
            limit: None,
        }
    }
}

/// What a record says about the caller beyond its workload: the verified identity, or why a
/// presented token was not accepted. Claims stay out: they are the provider's, often personal.
fn caller_summary(c: &Caller) -> Option<Json> {
    if !c.authenticated && c.token_error.is_none() {
        return None;
    }
    Some(serde_json::json!({
        "authenticated": c.authenticated,
        "provider": c.provider,
        "subject": c.subject,
        "groups": c.groups,
        "token_error": c.token_error,
    }))
}

/// How a connection the gateway carried as bytes, not calls, ended: its connection record.
pub struct ConnectionEnd<'a> {
    pub session: &'a str,
    pub destination: String,
    pub started_ms: u64,
    pub workload: SharedJson,
    pub protocol: &'static str,
    pub service: Option<String>,
    pub function: Option<String>,
    pub decision: RecordedDecision,
    pub latency_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Record {
    /// A connection's record, written when it ends.
    pub fn of_connection(end: ConnectionEnd<'_>) -> Self {
        let mut rec = Record::new(end.session, end.destination);
        rec.time_ms = end.started_ms;
        rec.protocol = end.protocol.into();
        rec.service = end.service.map(Arc::from);
        rec.function = end.function;
        rec.workload = Some(end.workload);
        rec.decision = end.decision;
        rec.latency_ms = end.latency_ms;
        rec.bytes_in = end.bytes_in;
        rec.bytes_out = end.bytes_out;
        rec
    }

    /// A call's record as the data path begins it: who called what; the call, its decision
    /// and its outcome are filled in as the call goes.
    pub fn of_call(
        session: Arc<str>,
        destination: Arc<str>,
        workload: SharedJson,
        caller: &Caller,
        protocol: &'static str,
        service: Option<&Arc<str>>,
    ) -> Self {
        let mut rec = Record::new(session, destination);
        rec.workload = Some(workload);
        rec.caller = caller_summary(caller);
        rec.protocol = Cow::Borrowed(protocol);
        rec.service = service.cloned();
        rec
    }

    /// The record of a call that was held for approval when the gateway stopped: its
    /// client's connection is gone with the old process, so it ends here.
    pub fn interrupted(r: &approve::Request) -> Self {
        let mut rec = Record::new(r.session.clone(), r.destination.clone());
        rec.time_ms = r.requested_at_ms;
        rec.protocol = "http".into();
        rec.service = Some(r.service.as_str().into());
        rec.function = Some(r.function.clone());
        rec.args = Some(r.args.clone());
        rec.caller = serde_json::to_value(&r.caller).ok();
        rec.decision = RecordedDecision {
            action: "approve".into(),
            enforced: true,
            rule: Some(r.rule.as_str().into()),
            reason: Some("interrupted by restart while awaiting approval".into()),
            policy_commit: r.policy_commit.as_deref().map(Arc::from),
            ..RecordedDecision::default()
        };
        rec.approval = Some(serde_json::json!({ "request": r.id, "state": r.state }));
        rec
    }
}

impl Record {
    /// A system record (no call): the policy's git remote offered commit `r.commit` and it was
    /// refused (unsigned, unknown signer, rollback, not compiling …); `in_force` stays. The
    /// refused commit and why are in `args`, the decision is a deny naming them, and
    /// `policy_commit` is the commit that stays in force.
    pub fn policy_refused(
        r: &crate::policy::store::Refused,
        in_force: Option<&str>,
        url: &str,
    ) -> Self {
        let mut rec = Record::new("system", url);
        rec.protocol = "system".into();
        rec.service = Some("callgate.policy".into());
        rec.function = Some("refuse_commit".into());
        rec.args = Some(serde_json::json!({
            "commit": r.commit,
            "reason": r.reason,
            "errors": r.errors,
            "in_force": in_force,
            "url": url,
        }));
        rec.decision = RecordedDecision {
            action: "deny".into(),
            enforced: true,
            rule: None,
            reason: Some(format!(
                "policy commit {} refused ({}): {}",
                r.commit,
                r.reason,
                r.errors.first().map(String::as_str).unwrap_or("-")
            )),
            policy_commit: in_force.map(Arc::from),
            ..RecordedDecision::default()
        };
        rec
    }

    /// A system record: a verdict on a call held here, or a grant, read from the fleet's
    /// database and refused because no trusted host sealed it as the row says
    /// (`fleet.trusted_keys`). The call stays held; the decision is a deny saying why.
    pub fn fleet_refused(r: &crate::approve::FleetRefusal, database: &str) -> Self {
        let mut rec = Record::new("system", database);
        rec.protocol = "system".into();
        rec.service = Some("callgate.fleet".into());
        rec.function = Some(format!("refuse_{}", r.kind));
        rec.args = Some(serde_json::json!({
            "id": r.id,
            "state": r.state,
            "reason": r.reason,
        }));
        rec.decision = RecordedDecision {
            action: "deny".into(),
            enforced: true,
            rule: None,
            reason: Some(format!(
                "{} {} from the fleet database refused: {}",
                r.kind, r.id, r.reason
            )),
            ..RecordedDecision::default()
        };
        if r.kind == "verdict" {
            rec.approval = Some(serde_json::json!({ "request": r.id, "state": "pending" }));
        }
        rec
    }
}
