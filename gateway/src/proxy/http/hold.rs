//! Hold: a call its rule says needs approval waits here, the upstream untouched, until an
//! approver's verdict, a grant that covers it, or the rule's timeout. A client that goes away
//! meanwhile has its call recorded as cancelled; a stop of the gateway answers it, and records
//! it, as interrupted.
use serde_json::Value as Json;

use super::{Conn, decide::Decided, streaming::Recording};
use crate::{approve, extract::Kind, policy::Service, proxy::reply::Refusal};

/// Writes the record of a call held for approval if the call's future is dropped before the
/// hold ends: cancelled (its client went away) or, once the gateway stops, interrupted.
/// Disarmed once the hold has ended.
struct OnCancel<'a> {
    armed: bool,
    conn: &'a Conn,
    one: &'a Decided,
    recording: Option<&'a Recording>,
    id: &'a str,
}

impl Drop for OnCancel<'_> {
    fn drop(&mut self) {
        let Some(recording) = self.recording.filter(|_| self.armed) else {
            return;
        };
        // The flag the hold's own end reads, so that the record and the request agree.
        let stopping = self
            .conn
            .inputs
            .approvals
            .as_ref()
            .is_some_and(|a| a.stopping());
        let (error, state, reason) = match stopping {
            true => (
                "approval_interrupted",
                "interrupted",
                "the gateway stopped while the call was held for approval",
            ),
            false => (
                "approval_cancelled",
                "cancelled",
                "the client went away while the call was held for approval",
            ),
        };
        let refused = Refusal {
            error,
            reason: reason.into(),
            ..self.one.refusal()
        };
        if let Some(mut r) = self.one.recording(Some(recording.clone()), Some(&refused)) {
            r.rec.approval = Some(serde_json::json!({ "request": self.id, "state": state }));
            let _ = r.submit(None, None, false, 0);
        }
    }
}

impl Conn {
    /// Holds a call its rule says needs approval, unless a grant covers it. Ok to go ahead;
    /// either way, what the record says about the approval.
    pub(super) async fn hold(
        &self,
        service: Option<&Service>,
        kind: Kind,
        one: &Decided,
        recording: Option<&Recording>,
    ) -> (Result<(), Refusal>, Option<Json>) {
        let ob = &one.decision.obligations;
        let (Some(approvals), Some(spec), Some(service)) =
            (&self.inputs.approvals, &ob.approval, service)
        else {
            return (Err(one.refusal()), None);
        };
        let key = &self.inputs.mask_key;
        let digest = key.fingerprint("args", one.call.args.to_string().as_bytes());
        let function = &one.call.function;
        let metrics = &self.inputs.metrics;
        let rule = one.decision.rule.as_deref().unwrap_or("");
        let granted = approvals.granted(approve::GrantedCall {
            caller: &one.caller,
            service: &service.name,
            function,
            rule,
            policy_commit: one.decision.policy.commit.as_deref(),
            // A call whose arguments do not say all it sends (a body of a type the gateway
            // does not parse; a gRPC message, of which only the metadata is read) is not
            // "the same arguments" as any other: a same-arguments grant let a second refund
            // through whose body (unread) said 999999, and a gRPC delete of every row after
            // one of a single row.
            args_digest: (!one.call.partial && kind != Kind::Grpc).then_some(digest.as_str()),
        });
        if let Some(g) = granted {
            metrics.approval("granted");
            let info = serde_json::json!({
                "grant": g.id, "approved_by": g.approved_by, "request": g.request,
            });
            return (Ok(()), Some(info));
        }
        // Shown to approvers, sent to the webhook and kept in the approvals state: masked as
        // the service masks its answers and as a record is, credentials dropped by name.
        let mut args = one.call.args.clone();
        crate::obligations::mask::drop_credentials(&mut args);
        ob.masks.0.mask_value(key, &mut args);
        self.inputs.at_rest.mask_value(key, &mut args);
        let refusal = |error: &'static str, reason: String| Refusal {
            error,
            reason,
            ..one.refusal()
        };
        let hold = match approvals
            .hold(approve::NewRequest {
                service: &service.name,
                function,
                args,
                args_digest: digest,
                caller: &one.caller,
                rule,
                policy_commit: one.decision.policy.commit.as_deref().map(str::to_string),
                spec,
                session: &self.session,
                destination: self.dst_text.to_string(),
            })
            .await
        {
            Ok(h) => h,
            Err(approve::Refused::Full(why)) => {
                metrics.approval("unavailable");
                return (Err(refusal("approval_unavailable", why)), None);
            }
            // Fleet mode without its database: nobody could see or answer the call.
            Err(approve::Refused::Unavailable(why)) => {
                metrics.approval("unavailable");
                let r = Refusal {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    ..refusal("approval_unavailable", why)
                };
                return (Err(r), None);
            }
        };
        let id = hold.id.clone();
        // Should the client go away or the gateway stop meanwhile, this future is dropped
        // where it waits: the call's record is then written by the guard.
        let mut on_cancel = OnCancel {
            armed: true,
            conn: self,
            one,
            recording,
            id: &id,
        };
        let outcome = hold.outcome().await;
        on_cancel.armed = false;
        drop(on_cancel);
        let info = |r: &approve::Request| serde_json::json!({ "request": id, "state": r.state, "verdict": r.verdict });
        match outcome {
            approve::Outcome::Approved(r) => {
                metrics.approval("approved");
                (Ok(()), Some(info(&r)))
            }
            approve::Outcome::Denied(r) => {
                metrics.approval("denied");
                let why = r.verdict.as_ref().map_or_else(
                    || "denied by an approver".to_string(),
                    |v| match &v.comment {
                        Some(c) => format!("denied by {}: {c}", v.by),
                        None => format!("denied by {}", v.by),
                    },
                );
                (Err(refusal("approval_denied", why)), Some(info(&r)))
            }
            // The gateway's stop ended it: the client is told, and the connection closes
            // after this answer (the stop's drain).
            approve::Outcome::Interrupted(r) if approvals.stopping() => {
                metrics.approval("unavailable");
                let why = "the gateway stopped while the call was held for approval; \
                           send it again once the gateway is back"
                    .to_string();
                let refused = Refusal {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    ..refusal("approval_interrupted", why)
                };
                (Err(refused), Some(info(&r)))
            }
            approve::Outcome::Interrupted(r) => {
                metrics.approval("unavailable");
                let why = "the fleet ended the held call without a verdict \
                           (it lost touch with this host)"
                    .to_string();
                let refused = Refusal {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    ..refusal("approval_unavailable", why)
                };
                (Err(refused), Some(info(&r)))
            }
            approve::Outcome::TimedOut(r) => {
                metrics.approval("timed_out");
                let why = format!(
                    "approval timed out after {}",
                    humantime::format_duration(spec.timeout)
                );
                (Err(refusal("approval_timeout", why)), Some(info(&r)))
            }
        }
    }
}
