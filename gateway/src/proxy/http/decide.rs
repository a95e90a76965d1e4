//! Decide: each call of a request against the policy snapshot, then against its rate limits
//! and quotas; a call over one is enforced as a deny. The trace span is named here, once the
//! function is known.
use std::sync::Arc;

use http::{HeaderMap, StatusCode, request::Parts};

use super::{Conn, streaming::Recording};
use crate::{
    call::{Call, Caller, Role},
    extract::{self, Kind},
    policy::{Action, Decision, Mode, Service, Snapshot},
    proxy::reply::Refusal,
    record::RecordedDecision,
    telemetry::trace::CallSpan,
};

/// What the decide step concluded for each call of a request.
pub(super) struct Decided {
    pub(super) call: Call,
    pub(super) decision: Decision,
    pub(super) caller: Arc<Caller>,
    /// The rate limit or quota the call is over; its decision is then enforced as a deny.
    pub(super) limited: Option<crate::obligations::limit::Hit>,
}

impl Decided {
    /// This call's record, begun from the request's: its decision as decided, or (`refusal`)
    /// as the gateway then answered it. None when recording is off or the policy says not to.
    pub(super) fn recording(
        &self,
        r: Option<Recording>,
        refusal: Option<&Refusal>,
    ) -> Option<Recording> {
        let r = r?;
        r.with_call(
            &self.call,
            self.recorded(refusal),
            Some(&self.decision.obligations),
        )
    }

    /// [`Self::recording`] for a call that is done with: its name and arguments move into the
    /// record instead of being copied.
    pub(super) fn into_recording(
        self,
        r: Option<Recording>,
        refusal: Option<&Refusal>,
    ) -> Option<Recording> {
        let r = r?;
        let decision = self.recorded(refusal);
        r.with_call_taken(self.call, decision, Some(&self.decision.obligations))
    }

    fn recorded(&self, refusal: Option<&Refusal>) -> RecordedDecision {
        match refusal {
            Some(refusal) => super::refuse::refused_decision(Some(&self.decision), refusal),
            None if self.limited.is_some() => {
                super::refuse::refused_decision(Some(&self.decision), &self.refusal())
            }
            None => RecordedDecision::of(&self.decision),
        }
    }
}

impl Conn {
    /// The call's trace span, when traces are exported: named for the function the policy
    /// declares (a bounded set of names), with the decision and who called.
    pub(super) fn span(
        &self,
        service: Option<&Service>,
        headers: &HeaderMap,
        one: &Decided,
    ) -> Option<CallSpan> {
        let tracer = self.inputs.tracer.as_ref()?;
        let d = &one.decision;
        let function = &one.call.function;
        let name = match service {
            Some(s) if s.function(function).is_some() => {
                format!("{}.{}", s.name, function)
            }
            Some(s) => format!("{}.other", s.name),
            None => "callgate.call".to_string(),
        };
        let span = tracer.start_call(headers, &name);
        if let Some(s) = service {
            span.set("callgate.service", s.name.to_string());
        }
        span.set("callgate.function", function.clone());
        span.set("callgate.decision", d.enforced.as_str());
        span.set("callgate.mode", d.mode.to_string());
        if let Some(r) = &d.rule {
            span.set("callgate.rule", r.to_string());
        }
        if let Some(c) = &d.policy.commit {
            span.set("callgate.policy.commit", c.clone());
        }
        span.set("server.address", self.dst_text.clone());
        span.caller(&one.caller);
        Some(span)
    }

    /// The rate limit or quota an allowed (or held) call is over, if any. Dry-run policies
    /// refuse nothing, limits included.
    pub(super) fn limit(
        &self,
        service: Option<&Service>,
        caller: &Caller,
        call: &Call,
        d: &Decision,
    ) -> Option<crate::obligations::limit::Hit> {
        let ob = &d.obligations;
        if (ob.limit.is_none() && ob.quota.is_none())
            || d.enforced == Action::Deny
            || d.enforced != d.action
        {
            return None;
        }
        let subject = crate::obligations::limit::Subject {
            caller,
            service: service.map_or("", |s| &s.name),
            function: &call.function,
            args: &call.args,
        };
        // A fleet-wide quota is counted in the database ([`Conn::fleet_quota`]), after.
        let quota = ob
            .quota
            .as_deref()
            .filter(|q| !(q.fleet && self.inputs.fleet.is_some()));
        // A fleet-wide rate limit: this host's bucket at its leased share of the rate; no
        // lease (the database not reached for too long): refused. Without a fleet the host is
        // a fleet of one and has the whole rate, as a fleet-wide quota counts on the host.
        let share = match ob.limit.as_deref().filter(|l| l.fleet) {
            None => 1.0,
            Some(l) => {
                let share = self
                    .inputs
                    .fleet
                    .as_ref()
                    .map_or(Ok(1.0), |f| f.rate_share());
                match share {
                    Ok(share) => share,
                    Err(why) => {
                        tracing::warn!(rule = %l.rule, reason = %why, "fleet-wide rate limit not applied: the call is refused");
                        return Some(crate::obligations::limit::Hit {
                            kind: "rate_unavailable",
                            rule: l.rule.to_string(),
                            limit: l.text.clone(),
                            retry_after_s: 5,
                            why: Some(why),
                        });
                    }
                }
            }
        };
        self.inputs
            .limiter
            .check_shared(ob.limit.as_deref(), share, quota, &subject)
            .err()
    }

    /// Fleet mode: counts an allowed (or held) call against its rule's fleet-wide quota —
    /// against this host's block of it when it holds one (`fleet::reserve`), else in the
    /// fleet's database; over it, or without the database and no count reserved, the call is
    /// refused.
    pub(super) async fn fleet_quota(&self, service: Option<&Service>, d: &mut Decided) {
        let Some(fleet) = &self.inputs.fleet else {
            return;
        };
        let dec = &d.decision;
        let Some(q) = dec.obligations.quota.as_deref().filter(|q| q.fleet) else {
            return;
        };
        if d.limited.is_some() || dec.enforced == Action::Deny || dec.enforced != dec.action {
            return;
        }
        let subject = crate::obligations::limit::Subject {
            caller: &d.caller,
            service: service.map_or("", |s| &s.name),
            function: &d.call.function,
            args: &d.call.args,
        };
        let unix = crate::util::time::now_ms() / 1000;
        let hit = |kind| crate::obligations::limit::Hit {
            kind,
            rule: q.rule.to_string(),
            limit: q.text.clone(),
            retry_after_s: q.retry_after_s(unix),
            why: None,
        };
        let key = match q.key(&subject) {
            Ok(key) => key,
            Err(why) => {
                let refused = crate::obligations::limit::Hit {
                    why: Some(why),
                    ..hit("quota")
                };
                d.decision.enforced = Action::Deny;
                d.limited = Some(refused);
                return;
            }
        };
        let hit = match fleet.count_quota(&key, q.window.as_secs(), q.calls).await {
            Ok(true) => return,
            Ok(false) => hit("quota"),
            Err(e) => {
                tracing::warn!(rule = %q.rule, error = %e, "fleet-wide quota not counted: the call is refused");
                crate::obligations::limit::Hit {
                    retry_after_s: 5,
                    ..hit("quota_unavailable")
                }
            }
        };
        d.decision.enforced = Action::Deny;
        d.limited = Some(hit);
    }

    /// A request decided as other servers would run it too ([`extract::other_readings`]:
    /// `/items/7.json` is `/items/7` to Rails, `/reports/LATEST` is `GET /reports/{id}` to
    /// Flask). When a reading is decided otherwise (another action or rule), the server, not
    /// the policy, would choose what runs: refused with 400 `ambiguous_path`, naming both
    /// decisions. In dry-run nothing is enforced and nothing is refused.
    pub(super) fn other_readings_refusal(
        &self,
        snap: &Snapshot,
        service: &Service,
        spelled: &Decided,
        (kind, parts, route): (Kind, &Parts, Option<extract::RouteId>),
        (body, unread_body): (Option<&[u8]>, bool),
    ) -> Result<Vec<Call>, Box<Refusal>> {
        if spelled.decision.mode == Mode::DryRun {
            return Ok(Vec::new());
        }
        let readings =
            extract::other_readings(kind, &service.surface, (parts, route), body, unread_body);
        crate::policy::readings::decided_alike(
            (parts.uri.path(), &spelled.call.function),
            &spelled.decision,
            readings,
            |call| self.decide(snap, Some(service), &spelled.caller, call),
        )
        .map_err(|reason| {
            Box::new(Refusal {
                service: Some(service.name.to_string()),
                ..Refusal::new(StatusCode::BAD_REQUEST, "ambiguous_path", reason)
            })
        })
    }

    /// A call's other readings that were decided alike ([`Conn::other_readings_refusal`])
    /// count against its rule's limit and quota too, under each key of theirs that differs
    /// from its own: `/admin/users.json` is `admin_users` to Rails, and a limit per function
    /// must count it there, not only under `GET /admin/users.json`.
    pub(super) fn limit_readings(
        &self,
        service: Option<&Service>,
        d: &mut Decided,
        others: &[Call],
    ) {
        let ob = &d.decision.obligations;
        if others.is_empty() || d.limited.is_some() || (ob.limit.is_none() && ob.quota.is_none()) {
            return;
        }
        let service_name = service.map_or("", |s| &*s.name);
        let keys = |call: &Call| {
            let s = crate::obligations::limit::Subject {
                caller: &d.caller,
                service: service_name,
                function: &call.function,
                args: &call.args,
            };
            (
                ob.limit.as_deref().map(|l| l.key(&s)),
                ob.quota.as_deref().map(|q| q.key(&s)),
            )
        };
        let own = keys(&d.call);
        for other in others {
            if keys(other) == own {
                continue;
            }
            if let Some(hit) = self.limit(service, &d.caller, other, &d.decision) {
                d.decision.enforced = Action::Deny;
                d.limited = Some(hit);
                return;
            }
        }
    }

    pub(super) fn decide(
        &self,
        snap: &Snapshot,
        service: Option<&Service>,
        caller: &Caller,
        call: &mut Call,
    ) -> Decision {
        let Some(service) = service else {
            return snap.decide_unknown_destination();
        };
        if call.role != Role::Governed {
            return Decision {
                action: Action::Allow,
                enforced: Action::Allow,
                rule: None,
                service: Some(service.name.clone()),
                mode: snap.mode,
                reason: Some("protocol session message".into()),
                obligations: service.session_obligations().clone(),
                policy: snap.version.clone(),
            };
        }
        snap.decide(service, call, caller)
    }
}
