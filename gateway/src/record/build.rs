//! A record made from what the gateway decided, in one place: the decision as the log keeps it,
//! and what it says of the caller beyond its workload.
use serde_json::Value as Json;

use super::{Record, RecordedDecision, SharedJson};
use crate::{approve, call::Caller, policy::Decision};

impl RecordedDecision {
    /// The policy's decision, as decided.
    pub fn of(d: &Decision) -> Self {
        RecordedDecision {
            // Not `to_string`: that goes through the formatter, for every call.
            action: d.action.as_str().into(),
            enforced: d.enforced == d.action,
            rule: d.rule.as_deref().map(str::to_string),
            reason: d.reason.as_deref().map(str::to_string),
            policy_commit: d.policy.commit.clone(),
            policy_dirty: d.policy.dirty,
            mode: Some(d.mode.as_str().into()),
            limit: None,
        }
    }
}

/// What a record says about the caller beyond its workload: the verified identity, or why a
/// presented token was not accepted. Claims stay out: they are the provider's, often personal.
pub fn caller_summary(c: &Caller) -> Option<Json> {
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

impl Record {
    /// A call's record as the data path begins it: who called what; the call, its decision
    /// and its outcome are filled in as the call goes.
    pub fn of_call(
        session: String,
        destination: String,
        workload: SharedJson,
        caller: &Caller,
        protocol: &str,
        service: Option<&str>,
    ) -> Self {
        let mut rec = Record::new(session, destination);
        rec.workload = Some(workload);
        rec.caller = caller_summary(caller);
        rec.protocol = protocol.into();
        rec.service = service.map(str::to_string);
        rec
    }

    /// The record of a call that was held for approval when the gateway stopped: its
    /// client's connection is gone with the old process, so it ends here.
    pub fn interrupted(r: &approve::Request) -> Self {
        let mut rec = Record::new(r.session.clone(), r.destination.clone());
        rec.time_ms = r.requested_at_ms;
        rec.protocol = "http".into();
        rec.service = Some(r.service.clone());
        rec.function = Some(r.function.clone());
        rec.args = Some(r.args.clone());
        rec.caller = serde_json::to_value(&r.caller).ok();
        rec.decision = RecordedDecision {
            action: "approve".into(),
            enforced: true,
            rule: Some(r.rule.clone()),
            reason: Some("interrupted by restart while awaiting approval".into()),
            policy_commit: r.policy_commit.clone(),
            ..RecordedDecision::default()
        };
        rec.approval = Some(serde_json::json!({ "request": r.id, "state": r.state }));
        rec
    }
}
