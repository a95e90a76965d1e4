//! `callgate policy test`: runs the repository's own test cases (a call, a caller and a
//! workload → the expected decision) and reports each, JUnit XML included for CI systems.
use std::{path::PathBuf, time::Instant};

use serde_json::{Map, Value as Json};

use crate::call::{Call, Caller, Workload};

use super::{
    eval::Decision,
    load::Loaded,
    schema::{Action, Expect, TestCase},
    snapshot::Snapshot,
};

#[derive(Debug, Clone)]
pub struct Outcome {
    pub file: PathBuf,
    pub name: String,
    /// None when the test passed; else what differed.
    pub failure: Option<String>,
    pub seconds: f64,
}

pub fn run(loaded: &Loaded, snap: &Snapshot) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (src, file) in &loaded.tests {
        for case in &file.tests {
            let start = Instant::now();
            let failure = run_one(snap, case).err();
            out.push(Outcome {
                file: src.path.clone(),
                name: case.name.clone(),
                failure,
                seconds: start.elapsed().as_secs_f64(),
            });
        }
    }
    out
}

fn run_one(snap: &Snapshot, case: &TestCase) -> Result<(), String> {
    let caller = case
        .caller
        .as_ref()
        .map_or_else(Caller::default, |c| Caller {
            subject: c.subject.clone(),
            groups: c.groups.clone(),
            claims: if c.claims.is_null() {
                Json::Object(Map::new())
            } else {
                c.claims.clone()
            },
            authenticated: c.subject.is_some(),
            provider: c
                .provider
                .clone()
                .or_else(|| snap.identity.default_provider.clone()),
            ..Caller::default()
        });
    let caller = Caller {
        workload: case.workload.as_ref().map(|w| {
            std::sync::Arc::new(Workload {
                pid: w.pid,
                uid: w.uid,
                user: w.user.clone(),
                unit: w.unit.clone(),
                user_unit: w.user_unit.clone(),
                user_unit_uid: w
                    .unit
                    .as_deref()
                    .and_then(crate::identity::workload::user_manager_uid)
                    .filter(|_| w.user_unit.is_some()),
                cgroup: w.cgroup.clone(),
                comm: w.comm.clone(),
                container: (w.container.is_some() || w.pod.is_some()).then(|| {
                    crate::call::container::Container {
                        runtime: None,
                        id: w.container.clone(),
                        pod: w.pod.clone(),
                        ..Default::default()
                    }
                }),
                netns: w.netns,
                // A test case's namespace is the one its rules name.
                netns_held: w.netns.is_some(),
                ..Workload::default()
            })
        }),
        ..caller
    };
    let (decision, function, args, service) = match (&case.call, &case.request) {
        (Some(call), None) => {
            let service = match (&call.service, &call.destination) {
                (Some(name), _) => Some(
                    snap.service(name)
                        .ok_or_else(|| format!("no service named {name:?}"))?,
                ),
                (None, Some(dst)) => {
                    let (host, port) = super::compile::split_destination(dst)?;
                    snap.service_for(&host, port, None)
                }
                (None, None) => return Err("`call` needs `service` or `destination`".into()),
            };
            let args = if call.args.is_null() {
                Json::Object(Map::new())
            } else {
                call.args.clone()
            };
            let c = Call {
                function: call.function.clone(),
                args,
                ..Call::default()
            };
            match service {
                Some(s) => {
                    let d = snap.decide(s, &c, &caller);
                    (d, c.function, c.args, s.name.to_string())
                }
                None => (
                    snap.decide_unknown_destination(),
                    c.function,
                    c.args,
                    String::new(),
                ),
            }
        }
        (None, Some(req)) => {
            let (host, port) = super::compile::split_destination(&req.destination)?;
            let Some(service) = snap.service_for(&host, port, None) else {
                return check(&case.expect, &snap.decide_unknown_destination(), "");
            };
            match as_the_gateway_reads(snap, service, req, &caller) {
                Ok((d, call)) => (d, call.function, call.args, service.name.to_string()),
                // Refused before any rule is asked: a deny no rule made.
                Err(_) if case.expect.action == Action::Deny && case.expect.rule.is_none() => {
                    return Ok(());
                }
                Err(refused) => {
                    return Err(format!(
                        "expected {}, but the gateway refuses this request before deciding it: \
                         {refused}",
                        case.expect.action
                    ));
                }
            }
        }
        _ => return Err("give exactly one of `call` and `request`".into()),
    };
    check(&case.expect, &decision, &function)?;
    match case.expect.limited_after {
        Some(n) => check_limit(n, &decision, &caller, &service, &function, &args),
        None => Ok(()),
    }
}

/// A test case's request as the gateway reads it: put in its canonical form, its call
/// extracted as the service's protocol reads it (JSON body, query, path parameters), and
/// decided; and decided as other servers read it too ([`crate::extract::other_readings`]). Err: why the gateway refuses the request (400)
/// before any rule decides it.
fn as_the_gateway_reads(
    snap: &Snapshot,
    service: &super::Service,
    req: &super::schema::TestRequest,
    caller: &Caller,
) -> Result<(Decision, Call), String> {
    use crate::extract::{self, Kind};
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(req.path.as_str());
    let body = match &req.body {
        Json::Null => None,
        b => {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
            Some(serde_json::to_vec(b).map_err(|e| e.to_string())?)
        }
    };
    let (mut parts, ()) = builder
        .body(())
        .map_err(|e| format!("the request is not HTTP: {e}"))?
        .into_parts();
    let surface = &service.surface;
    let refused = |e: extract::ExtractError| format!("400 {}: {e}", e.code());
    extract::canonicalise(surface, &mut parts).map_err(refused)?;
    let protocol = extract::kind_of(surface);
    let kind = match protocol {
        k if extract::off_endpoint(k, surface, &parts) => Kind::Http,
        k => k,
    };
    let body = body.as_deref();
    // In the service's protocol, as the gateway asks: off the endpoint a message is refused.
    let extracted = extract::extract(protocol, surface, &parts, body, false).map_err(refused)?;
    let (route, mut calls) = (extracted.route, extracted.calls);
    let [call] = <[Call; 1]>::try_from(std::mem::take(&mut calls)).map_err(|c| {
        format!(
            "a request case must hold one call; this one holds {}",
            c.len()
        )
    })?;
    let d = snap.decide(service, &call, caller);
    let readings = extract::other_readings(kind, surface, (&parts, route), body, false);
    super::readings::decided_alike((parts.uri.path(), &call.function), &d, readings, |alt| {
        snap.decide(service, alt, caller)
    })
    .map_err(|e| format!("400 ambiguous_path: {e}"))?;
    Ok((d, call))
}

/// `limited_after: n`: n calls at one moment pass the rule's limit and quota, the next not.
fn check_limit(
    n: u64,
    d: &Decision,
    caller: &Caller,
    service: &str,
    function: &str,
    args: &Json,
) -> Result<(), String> {
    let ob = &d.obligations;
    if ob.limit.is_none() && ob.quota.is_none() {
        return Err("expected a limit, but the deciding rule has no `limit:` or `quota:`".into());
    }
    let limiter = crate::obligations::limit::Limiter::open(None);
    let subject = crate::obligations::limit::Subject {
        caller,
        service,
        function,
        args,
    };
    let (now, unix) = (Instant::now(), crate::util::time::now_ms() / 1000);
    for i in 0..=n {
        let r = limiter.check_at(
            ob.limit.as_deref(),
            ob.quota.as_deref(),
            &subject,
            now,
            unix,
        );
        match (i < n, r) {
            (true, Err(hit)) => {
                return Err(format!(
                    "expected {n} calls to pass, call {} was refused by the {} {}",
                    i + 1,
                    hit.kind,
                    hit.limit
                ));
            }
            (false, Ok(())) => {
                return Err(format!("expected call {} to be refused, it passed", n + 1));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check(expect: &Expect, d: &Decision, function: &str) -> Result<(), String> {
    let got_rule = d.rule.as_deref().unwrap_or("default");
    let mut diffs = Vec::new();
    if expect.action != d.action {
        diffs.push(format!(
            "expected {}, got {} (by {got_rule})",
            expect.action, d.action
        ));
    }
    if let Some(rule) = &expect.rule {
        if rule != got_rule {
            diffs.push(format!("expected rule {rule:?}, got {got_rule:?}"));
        }
    }
    if let Some(f) = &expect.function {
        if f != function {
            diffs.push(format!("expected function {f:?}, got {function:?}"));
        }
    }
    if let Some(mask) = &expect.mask {
        let same = mask.len() == d.obligations.mask.len()
            && mask.iter().all(|m| d.obligations.mask.contains(m));
        if !same {
            diffs.push(format!(
                "expected masks {mask:?}, got {:?}",
                d.obligations.mask
            ));
        }
    }
    if let Some(record) = expect.record {
        if record != d.obligations.record {
            diffs.push(format!(
                "expected record {record:?}, got {:?}",
                d.obligations.record
            ));
        }
    }
    if let Some(inject) = expect.inject {
        if inject != d.obligations.inject.is_some() {
            diffs.push(format!(
                "expected inject {inject}, got {}",
                d.obligations.inject.is_some()
            ));
        }
    }
    if expect.action == Action::Approve
        && d.obligations.approval.is_none()
        && d.action == Action::Approve
    {
        diffs.push("approve decision without approval settings".into());
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

/// JUnit XML for CI systems.
pub fn junit(outcomes: &[Outcome]) -> Result<String, String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("callgate policy test");
    let mut files: Vec<&PathBuf> = outcomes.iter().map(|o| &o.file).collect();
    files.dedup();
    for file in files {
        let mut suite = TestSuite::new(file.display().to_string());
        for o in outcomes.iter().filter(|o| &o.file == file) {
            let status = match &o.failure {
                None => TestCaseStatus::success(),
                Some(msg) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(msg.clone());
                    s
                }
            };
            let mut tc = TestCase::new(o.name.clone(), status);
            tc.set_time(std::time::Duration::from_secs_f64(o.seconds));
            suite.add_test_case(tc);
        }
        report.add_test_suite(suite);
    }
    report.to_string().map_err(|e| e.to_string())
}
