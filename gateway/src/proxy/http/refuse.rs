//! Refuse: the one place a refusal (a denied call, a limit, a failed hold, a request that is
//! not one call, an upstream that failed) becomes the answer in the client's own protocol and
//! the call's record.
use http::{Response, StatusCode};
use tracing::warn;

use super::{Conn, decide::Decided, streaming::Recording};
use crate::{
    call::Call,
    extract::Kind,
    policy::{Action, Decision},
    proxy::{body::ProxyBody, reply::Refusal},
    record::RecordedDecision,
    telemetry::trace::CallSpan,
};

impl Conn {
    /// Answers in the client's protocol and records the refused call.
    pub(super) async fn refuse(
        &self,
        recording: Option<Recording>,
        kind: Kind,
        mut call: Call,
        decision: Option<&Decision>,
        r: Refusal,
    ) -> Response<ProxyBody> {
        let id = call.rpc_id.take();
        let notification = id.is_none() && matches!(kind, Kind::JsonRpc | Kind::Mcp);
        let recording = recording.and_then(|rec| {
            rec.with_call_taken(
                call,
                refused_decision(decision, &r),
                decision.map(|d| &*d.obligations),
            )
        });
        if let Some(rec) = recording {
            if let Ok(Some(d)) = rec.submit(Some(r.status.as_u16()), None, false, 0) {
                if let Err(e) = d.wait().await {
                    warn!(error = %e, "a refused call's record did not reach the disk");
                }
            }
        }
        let mut resp = r.respond(kind, id.as_ref());
        if notification {
            *resp.status_mut() = r.status;
        }
        resp
    }
}

impl Decided {
    /// How the gateway answers this call when policy did not allow it. A caller whose token
    /// was not accepted is told so: that is about its own credentials, and usually the fix.
    pub(super) fn refusal(&self) -> Refusal {
        let d = &self.decision;
        if let Some(hit) = &self.limited {
            // The fleet's database counts this quota, and cannot be reached: fail closed.
            let (status, error, reason) = if hit.kind == "quota_unavailable" {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "quota_unavailable",
                    format!(
                        "the fleet database that counts the quota {} is unreachable; try again in {}s",
                        hit.limit, hit.retry_after_s
                    ),
                )
            } else if hit.kind == "rate_unavailable" {
                // A fleet-wide rate limit without this host's lease on its share: fail closed.
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_unavailable",
                    format!(
                        "the fleet-wide rate limit {} cannot be applied: {}; try again in {}s",
                        hit.limit,
                        hit.why.as_deref().unwrap_or("no lease on the fleet's rate"),
                        hit.retry_after_s
                    ),
                )
            } else {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "over the {} {}; try again in {}s",
                        hit.kind, hit.limit, hit.retry_after_s
                    ),
                )
            };
            return Refusal {
                rule: Some(hit.rule.clone()),
                service: d.service.as_deref().map(str::to_string),
                function: Some(self.call.function.clone()),
                policy_commit: d.policy.commit.as_deref().map(str::to_string),
                limit: Some(hit.clone()),
                ..Refusal::new(status, error, reason)
            };
        }
        let approve = d.enforced == Action::Approve;
        let mut reason = d.reason.as_deref().map_or_else(
            || {
                if approve {
                    "this call needs a human approval; send it on its own, not in a batch, to have it held"
                        .into()
                } else {
                    "no policy rule allows this call".to_string()
                }
            },
            str::to_string,
        );
        if let Some(e) = &self.caller.token_error {
            reason = format!("{reason} (the bearer token was not accepted: {e})");
        }
        Refusal {
            rule: d.rule.as_deref().map(str::to_string),
            service: d.service.as_deref().map(str::to_string),
            function: Some(self.call.function.clone()),
            policy_commit: d.policy.commit.as_deref().map(str::to_string),
            ..Refusal::new(
                StatusCode::FORBIDDEN,
                if approve {
                    "approval_required"
                } else {
                    "denied"
                },
                reason,
            )
        }
    }
}

pub(super) fn end_span(span: Option<CallSpan>, r: &Refusal) {
    if let Some(s) = span {
        s.end(r.status.as_u16(), Some(r.error));
    }
}

/// The record's decision for a call the gateway answered itself with `r`.
pub(super) fn refused_decision(d: Option<&Decision>, r: &Refusal) -> RecordedDecision {
    RecordedDecision::answered(d, r.error, &r.reason, r.limit.as_ref())
}
