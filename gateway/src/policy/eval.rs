//! Deciding a call: the rules for its function, in order, first match wins; none → the
//! default. The same matching code serves the hot path (`decide`, which allocates nothing
//! unless a rule has a CEL `when:`) and `explain`, which also says why each rule did not match.
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value as Json;

use crate::call::number::{Reading, number_readings};

use crate::call::{Call, Caller, Workload};

use super::{
    schema::{Action, Mode},
    snapshot::{
        ArgCond, CallerCond, Obligations, Op, PolicyVersion, Rule, Service, Snapshot, WorkloadCond,
    },
};

/// The outcome, with everything later stages and the record need.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// What the policy says.
    pub action: Action,
    /// What happens: the same in enforce mode; `allow` in dry-run ("would deny").
    pub enforced: Action,
    /// The deciding rule; None when the default decided.
    pub rule: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub mode: Mode,
    pub reason: Option<Arc<str>>,
    pub obligations: Arc<Obligations>,
    pub policy: Arc<PolicyVersion>,
}

/// Why a rule did not match, without allocating.
#[derive(Debug, Clone, Copy)]
enum Miss<'r> {
    Provider(&'r str),
    Subject,
    Groups,
    GroupsAll(&'r str),
    Claim(&'r str),
    Authenticated(bool),
    NoWorkload,
    Workload(&'static str),
    Arg {
        path: &'r ArgCond,
        op: &'r Op,
        missing: bool,
    },
    /// An allow rule's condition that cannot be evaluated on the value the server will see.
    Unknown {
        path: &'r ArgCond,
        op: &'r Op,
        why: Unknown,
    },
    WhenFalse,
}

/// One line of an explanation.
#[derive(Debug, Clone, Serialize)]
pub struct TraceLine {
    pub rule: String,
    pub matched: bool,
    pub why: String,
}

impl Snapshot {
    /// Decides a call to `service`.
    pub fn decide(&self, service: &Service, call: &Call, caller: &Caller) -> Decision {
        self.evaluate(service, call, caller, None)
    }

    /// Decides and explains: every rule considered, and why it did or did not match.
    pub fn explain(
        &self,
        service: &Service,
        call: &Call,
        caller: &Caller,
    ) -> (Decision, Vec<TraceLine>) {
        let mut trace = Vec::new();
        let d = self.evaluate(service, call, caller, Some(&mut trace));
        (d, trace)
    }

    /// Whether `caller` could be allowed some call to `function` (arguments unknown): what an
    /// MCP `tools/list` shows. A rule whose caller part matches decides it, unless it is a
    /// deny that depends on the arguments, which some other call might not meet.
    pub fn may_call(&self, service: &Service, function: &str, caller: &Caller) -> bool {
        if self.mode == Mode::DryRun {
            return true;
        }
        for &i in service.candidates(function) {
            let rule = &service.rules[i as usize];
            if rule
                .caller
                .as_ref()
                .is_some_and(|c| caller_matches(c, caller).is_err())
            {
                continue;
            }
            match rule.action {
                Action::Deny if rule.args.is_empty() && rule.when.is_none() => return false,
                Action::Deny => {}
                _ => return true,
            }
        }
        self.default_action != Action::Deny
    }

    /// The decision for a destination no service claims.
    pub fn decide_unknown_destination(&self) -> Decision {
        self.decision(
            self.unknown_destination,
            None,
            None,
            Some("no service in the policy claims this destination".into()),
            self.default_obligations.clone(),
        )
    }

    fn evaluate(
        &self,
        service: &Service,
        call: &Call,
        caller: &Caller,
        mut trace: Option<&mut Vec<TraceLine>>,
    ) -> Decision {
        for &i in service.candidates(&call.function) {
            let rule = &service.rules[i as usize];
            match rule_matches(rule, service, call, caller) {
                Ok(()) => {
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(TraceLine {
                            rule: rule.name.to_string(),
                            matched: true,
                            why: format!("matched → {}", rule.action),
                        });
                    }
                    return self.decision(
                        rule.action,
                        Some(rule.name.clone()),
                        Some(service),
                        rule.reason.clone(),
                        rule.obligations.clone(),
                    );
                }
                Err(Verdict::Miss(miss)) => {
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(TraceLine {
                            rule: rule.name.to_string(),
                            matched: false,
                            why: describe(miss, call, caller),
                        });
                    }
                }
                Err(Verdict::Error(e)) => {
                    // A rule that cannot be evaluated decides nothing in the caller's favour.
                    let why = format!("rule {}: `when` failed: {e}", rule.name);
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(TraceLine {
                            rule: rule.name.to_string(),
                            matched: false,
                            why: why.clone(),
                        });
                    }
                    return self.decision(
                        Action::Deny,
                        Some(rule.name.clone()),
                        Some(service),
                        Some(why.into()),
                        rule.obligations.clone(),
                    );
                }
            }
        }
        if let Some(t) = trace {
            t.push(TraceLine {
                rule: "default".into(),
                matched: true,
                why: format!("no rule matched → default {}", self.default_action),
            });
        }
        self.decision(
            self.default_action,
            None,
            Some(service),
            default_reason(self.default_action),
            service.base.clone(),
        )
    }

    fn decision(
        &self,
        action: Action,
        rule: Option<Arc<str>>,
        service: Option<&Service>,
        reason: Option<Arc<str>>,
        obligations: Arc<Obligations>,
    ) -> Decision {
        Decision {
            action,
            enforced: if self.mode == Mode::DryRun {
                Action::Allow
            } else {
                action
            },
            rule,
            service: service.map(|s| s.name.clone()),
            mode: self.mode,
            reason,
            obligations,
            policy: self.version.clone(),
        }
    }
}

fn default_reason(action: Action) -> Option<Arc<str>> {
    (action == Action::Deny).then(|| Arc::from("no policy rule allows this call"))
}

enum Verdict<'r> {
    Miss(Miss<'r>),
    Error(String),
}

impl<'r> From<Miss<'r>> for Verdict<'r> {
    fn from(m: Miss<'r>) -> Self {
        Verdict::Miss(m)
    }
}

fn rule_matches<'r>(
    rule: &'r Rule,
    service: &Service,
    call: &Call,
    caller: &Caller,
) -> Result<(), Verdict<'r>> {
    if let Some(c) = &rule.caller {
        caller_matches(c, caller)?;
    }
    // Conditions on arguments fail closed: one that cannot be evaluated (absent, not a
    // number, unreadable) matches a deny or approve rule and never an allow rule.
    let mut unknown = None;
    for arg in &rule.args {
        match arg_matches(arg, call, rule.action != Action::Allow) {
            Ok(Tri::Holds) => {}
            Ok(Tri::Unknown(why, op)) => {
                unknown.get_or_insert((arg, op, why));
            }
            Err(miss) => return Err(miss.into()),
        }
    }
    if let Some((path, op, why)) = unknown {
        if rule.action == Action::Allow {
            return Err(Miss::Unknown { path, op, why }.into());
        }
    }
    if let Some(when) = &rule.when {
        match eval_when(&when.program, service, call, caller) {
            Ok(true) => {}
            Ok(false) => return Err(Miss::WhenFalse.into()),
            Err(e) => return Err(Verdict::Error(e)),
        }
    }
    Ok(())
}

fn caller_matches<'r>(c: &'r CallerCond, caller: &Caller) -> Result<(), Miss<'r>> {
    if let Some(want) = c.authenticated {
        if caller.authenticated != want {
            return Err(Miss::Authenticated(want));
        }
    }
    if let Some(want) = &c.provider {
        if !(caller.authenticated && caller.provider.as_deref() == Some(want.as_str())) {
            return Err(Miss::Provider(want));
        }
    }
    if !c.subjects.is_empty() {
        // Only a verified token has a subject worth trusting.
        let ok = caller.authenticated
            && caller
                .subject
                .as_ref()
                .is_some_and(|s| c.subjects.iter().any(|w| w == s));
        if !ok {
            return Err(Miss::Subject);
        }
    }
    let in_a_group = caller.authenticated && c.groups_any.iter().any(|g| caller.groups.contains(g));
    if !(c.groups_any.is_empty() || in_a_group) {
        return Err(Miss::Groups);
    }
    for g in &c.groups_all {
        if !(caller.authenticated && caller.groups.contains(g)) {
            return Err(Miss::GroupsAll(g));
        }
    }
    for (path, want) in &c.claims {
        let mut found = false;
        path.visit(&caller.claims, &mut |v| {
            found = json_eq(v, want) == Some(true)
                || v.as_array()
                    .is_some_and(|a| a.iter().any(|x| json_eq(x, want) == Some(true)));
            !found
        });
        if !(caller.authenticated && found) {
            return Err(Miss::Claim(path_text(path)));
        }
    }
    if let Some(w) = &c.workload {
        let Some(actual) = &caller.workload else {
            return Err(Miss::NoWorkload);
        };
        workload_matches(w, actual)?;
    }
    Ok(())
}

fn path_text(p: &crate::util::jsonpath::JsonPath) -> &str {
    // JsonPath keeps its source text; Display would allocate.
    p.as_str()
}

fn workload_matches<'r>(w: &'r WorkloadCond, a: &Workload) -> Result<(), Miss<'r>> {
    fn one_of(list: &[String], v: &Option<String>) -> bool {
        list.is_empty() || v.as_ref().is_some_and(|v| list.iter().any(|x| x == v))
    }
    if !w.uids.is_empty() && !a.uid.is_some_and(|u| w.uids.contains(&u)) {
        return Err(Miss::Workload("uid"));
    }
    if !one_of(&w.users, &a.user) {
        return Err(Miss::Workload("user"));
    }
    if !one_of(&w.units, &a.unit) {
        return Err(Miss::Workload("unit"));
    }
    if !one_of(&w.comms, &a.comm) {
        return Err(Miss::Workload("comm"));
    }
    if !one_of(&w.user_units, &a.user_unit) {
        return Err(Miss::Workload("user_unit"));
    }
    if let Some(prefix) = &w.cgroup_prefix {
        if !a.cgroup.as_deref().is_some_and(|c| under(c, prefix)) {
            return Err(Miss::Workload("cgroup"));
        }
    }
    let container = a.container.as_ref();
    if !w.containers.is_empty()
        && !container.is_some_and(|c| w.containers.iter().any(|want| c.matches(want)))
    {
        return Err(Miss::Workload("container"));
    }
    if !w.pods.is_empty()
        && !container.is_some_and(|c| w.pods.iter().any(|want| c.pod_matches(want)))
    {
        return Err(Miss::Workload("pod"));
    }
    // Only a namespace the gateway holds open for the policy has the inode the rule's author
    // saw: another with the same number came after that one ended.
    let named_and_held = a.netns_held && a.netns.is_some_and(|n| w.netns.contains(&n));
    if !w.netns.is_empty() && !named_and_held {
        return Err(Miss::Workload("netns"));
    }
    Ok(())
}

/// Whether cgroup path `path` is `prefix` or below it, by whole components.
fn under(path: &str, prefix: &[String]) -> bool {
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    prefix
        .iter()
        .all(|want| parts.next() == Some(want.as_str()))
}

/// A condition on the arguments: it holds, or it cannot be evaluated (and why), or it fails.
#[derive(Debug, Clone, Copy)]
enum Tri<'r> {
    Holds,
    Unknown(Unknown, &'r Op),
}

/// Why a condition on an argument cannot be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unknown {
    /// The argument is not in the call; the server may default it.
    Missing,
    /// The value is not of the type the operator tests (a number for `gt`, text for `regex`)
    /// and does not read as one.
    Type,
    /// Part of the request could not be read for arguments.
    Partial,
    /// The path goes on below text that holds JSON, which a server may parse
    /// ([`crate::util::jsonpath::JsonPath::passes_json_text`]).
    JsonText,
}

/// `any`: the condition of a deny or approve rule holds when any value the path reaches
/// holds (`$.items[*].amount: {gt: 100}` denies a list with one such item, whatever the
/// others); an allow rule's, when every value holds.
fn arg_matches<'r>(cond: &'r ArgCond, call: &Call, any: bool) -> Result<Tri<'r>, Miss<'r>> {
    let mut unknown = None;
    // Every spelling of the name is read for its values (a server that ignores case, as Go's
    // encoding/json does, may run any of them), but whether the argument is there at all is
    // the exact name's: a case-sensitive server does not see `AMOUNT` as `amount`, and an
    // allow rule must not take it for one (`{"AMOUNT": 5}` passed `amount: {le: 100}` while
    // Flask refunded its default). That does not depend on the operator: read once.
    let mut seen = false;
    if !call.partial {
        cond.path.visit(&call.args, &mut |_| {
            seen = true;
            false
        });
    }
    // Read once: rare, and then every operator is unknown.
    let json_text = !call.partial && cond.path.passes_json_text(&call.args);
    for op in &cond.ops {
        if call.partial {
            unknown.get_or_insert((Unknown::Partial, op));
            continue;
        }
        if json_text {
            unknown.get_or_insert((Unknown::JsonText, op));
            continue;
        }
        let mut seen_any = false;
        let mut failed = false;
        let mut held = false;
        let mut untyped = false;
        cond.path.visit_folded(&call.args, &mut |v| {
            seen_any = true;
            match op_holds(op, v) {
                Some(true) if any => {
                    held = true;
                    false
                }
                Some(true) => true,
                Some(false) if any => {
                    failed = true;
                    true
                }
                // Every value must hold; the first that fails decides.
                Some(false) => {
                    failed = true;
                    false
                }
                None => {
                    untyped = true;
                    true
                }
            }
        });
        if held && seen && !matches!(op, Op::Present(_)) {
            continue;
        }
        // For `any`, a value that failed decides only when none was of another type.
        let failed = failed && !(any && untyped);
        match op {
            // Present or absent as the reading the rule can least rely on has it: a deny
            // rule's condition holds if it holds for either server, an allow rule's only if
            // it holds for both.
            Op::Present(want) if (if *want == any { seen_any } else { seen }) != *want => {
                return Err(Miss::Arg {
                    path: cond,
                    op,
                    missing: !seen,
                });
            }
            Op::Present(_) => {}
            // Missing under its exact name: unknown, whatever other spellings say.
            _ if !seen => {
                unknown.get_or_insert((Unknown::Missing, op));
            }
            _ if failed => {
                return Err(Miss::Arg {
                    path: cond,
                    op,
                    missing: false,
                });
            }
            _ if untyped => {
                unknown.get_or_insert((Unknown::Type, op));
            }
            _ => {}
        }
    }
    Ok(match unknown {
        Some((why, op)) => Tri::Unknown(why, op),
        None => Tri::Holds,
    })
}

/// Whether `op` holds for `v`; None when `v` is not of a type the operator can test, or when
/// it holds for one number a server may read `v` as and not for another (see [`Reading`]).
fn op_holds(op: &Op, v: &Json) -> Option<bool> {
    // Only text and numbers are numbers to a range: anything else is unknown to it.
    let reading = || match v {
        Json::String(_) | Json::Number(_) => Reading::of_value(v),
        _ => Reading::Any,
    };
    let num = |holds: &dyn Fn(f64) -> bool| match reading() {
        Reading::Numbers { xs, .. } => {
            let n = xs.iter().filter(|x| holds(**x)).count();
            match n {
                0 => Some(false),
                n if n == xs.len() => Some(true),
                _ => None,
            }
        }
        Reading::Text | Reading::Any => None,
    };
    Some(match op {
        Op::Eq(want) => json_eq(v, want)?,
        Op::Ne(want) => !json_eq(v, want)?,
        Op::In(list) => one_of(v, list)?,
        Op::NotIn(list) => !one_of(v, list)?,
        Op::Gt(n) => num(&|x| x > *n)?,
        Op::Ge(n) => num(&|x| x >= *n)?,
        Op::Lt(n) => num(&|x| x < *n)?,
        Op::Le(n) => num(&|x| x <= *n)?,
        Op::Regex(re) => re.is_match(v.as_str()?),
        Op::Prefix(p) => v.as_str()?.starts_with(p.as_str()),
        Op::MaxLen(n) => match v {
            Json::String(s) => s.chars().count() <= *n,
            Json::Array(a) => a.len() <= *n,
            _ => return None,
        },
        Op::Present(_) => true,
    })
}

/// JSON equality with numbers compared by value (1 == 1.0). Values that one server may read
/// as equal and another as different are neither (None): a number and text some server reads
/// as that number (a coercing server sees the number, a strict one text: `"7"`, `"7abc"` to
/// `parseInt`, `"0x7"` to `Number`, `"٧"` to Python), two texts one of which is a plain number
/// the other may be read as (`"08"` and `"8"`: one account to Flask's `int` converter, to
/// Rails' `find` `"8-x"` too), and a boolean and its spelling as text.
fn json_eq(a: &Json, b: &Json) -> Option<bool> {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => match same_number(x, y) {
            true => Some(true),
            // `7.5` and `7`: one to a server that truncates (`int(7.5)`), and so on.
            false => {
                let read_as = |a: &serde_json::Number, b: &serde_json::Number| {
                    b.as_f64().is_some_and(|b| number_readings(a).contains(&b))
                };
                (!(read_as(x, y) || read_as(y, x))).then_some(false)
            }
        },
        (Json::Number(n), Json::String(s)) | (Json::String(s), Json::Number(n)) => {
            let n = n.as_f64().filter(|x| !x.is_nan());
            match n {
                Some(n) if Reading::of(s).may_be(n) => None,
                _ => Some(false),
            }
        }
        // Two texts neither of which may be a plain number (`customer`, `supplier`): text.
        (Json::String(x), Json::String(y)) if x != y && !(may_be_plain(x) || may_be_plain(y)) => {
            Some(false)
        }
        (Json::String(x), Json::String(y)) if x != y => {
            let (rx, ry) = (Reading::of(x), Reading::of(y));
            let unsure = rx.plain().is_some_and(|n| ry.may_be(n))
                || ry.plain().is_some_and(|n| rx.may_be(n));
            (!unsure).then_some(false)
        }
        // `[7]` is 7 to JavaScript's `Number` and `==`, 1 to PHP's `(int)`; `null` and `[]`
        // are 0 to both.
        (Json::Number(n), other @ (Json::Array(_) | Json::Null))
        | (other @ (Json::Array(_) | Json::Null), Json::Number(n)) => match n.as_f64() {
            Some(x) if Reading::of_value(other).may_be(x) => None,
            _ => Some(false),
        },
        // `["mallory"]` is `"mallory"` to JavaScript's `String()`, a template or a property
        // key (`accounts[p.to]`); a list of one number is that number to `Number`.
        (Json::String(t), other @ (Json::Array(_) | Json::Null))
        | (other @ (Json::Array(_) | Json::Null), Json::String(t)) => {
            if matches!(other, Json::Array(_)) && js_string(other) == *t {
                return None;
            }
            match Reading::of(t).plain() {
                Some(x) if Reading::of_value(other).may_be(x) => None,
                _ => Some(false),
            }
        }
        // A boolean and any other value a server may read as it: a coercing one (pydantic's
        // `"no"`, `"off"`, `"0"`, `0`) or one that tests its truth (`if (p.force)`: JavaScript
        // and Python take `"false"` and `2` as true, Ruby everything but `nil`): one to that
        // server, another to a strict one.
        (Json::Bool(v), other) | (other, Json::Bool(v)) if !other.is_boolean() => {
            (!may_be_bool(other, *v)).then_some(false)
        }
        _ => Some(a == b),
    }
}

/// Whether `s` may read as a plain number ([`Reading::plain`]): after leading spaces, it
/// starts with a digit, a sign, a `.`, a non-ASCII character (another script's digits, a
/// space) or the start of `inf` or `nan`. A cheap test, so that comparing two words does not
/// read either as numbers.
fn may_be_plain(s: &str) -> bool {
    s.trim_start_matches(|c: char| c.is_ascii() && c <= ' ')
        .bytes()
        .next()
        .is_some_and(|b| {
            b.is_ascii_digit()
                || !b.is_ascii()
                || matches!(b, b'+' | b'-' | b'.' | b'i' | b'I' | b'n' | b'N')
        })
}

/// Whether some server reads `v` (not a boolean) as `want`: coerced by a lenient one
/// ([`as_bool`]), or tested for its truth by JavaScript, Python, PHP or Ruby.
fn may_be_bool(v: &Json, want: bool) -> bool {
    if as_bool(v) == Some(want) {
        return true;
    }
    let truths: &[bool] = match v {
        Json::Null => &[false],
        // Ruby: every number, string, list and object is true.
        Json::Number(n) => &[n.as_f64().is_some_and(|x| x != 0.0), true],
        Json::String(s) => &[!s.is_empty(), !(s.is_empty() || s == "0"), true],
        Json::Array(a) => &[!a.is_empty(), true],
        Json::Object(o) => &[!o.is_empty(), true],
        Json::Bool(b) => return *b == want,
    };
    truths.contains(&want)
}

/// `v` as JavaScript's `String()` writes it (a list's items joined by `,`, `null` as empty).
fn js_string(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        Json::Array(a) => a.iter().map(js_string).collect::<Vec<_>>().join(","),
        Json::Object(_) => "[object Object]".into(),
        other => other.to_string(),
    }
}

/// The boolean a lenient server (pydantic's lax mode, most form binders) reads `v` as.
fn as_bool(v: &Json) -> Option<bool> {
    match v {
        Json::Number(n) => match n.as_f64()? {
            0.0 => Some(false),
            1.0 => Some(true),
            _ => None,
        },
        Json::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
            "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Two JSON numbers as a server reading them exactly sees them: integers compared as
/// integers (`1234567890123456789` and `1234567890123456790` are one `f64` but two accounts
/// to Python, Go or Java), an integer and a fraction equal only when the fraction is that
/// integer exactly, fractions as `f64`.
fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    fn int(n: &serde_json::Number) -> Option<i128> {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    }
    match (int(x), int(y)) {
        (Some(a), Some(b)) => a == b,
        (Some(i), None) | (None, Some(i)) => {
            let f = if int(x).is_some() { y } else { x }.as_f64();
            // Exact: i128 → f64 → i128 round trip only for an integer f64 represents.
            f.is_some_and(|f| {
                f.fract() == 0.0 && f.abs() < 1.7e38 && f as i128 == i && i as f64 == f
            })
        }
        (None, None) => x.as_f64() == y.as_f64(),
    }
}

/// Whether `v` is one of `list`, or None when that depends on a coercion.
fn one_of(v: &Json, list: &[Json]) -> Option<bool> {
    let mut unsure = false;
    for w in list {
        match json_eq(v, w) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => unsure = true,
        }
    }
    (!unsure).then_some(false)
}

fn eval_when(
    program: &cel::Program,
    service: &Service,
    call: &Call,
    caller: &Caller,
) -> Result<bool, String> {
    let mut ctx = cel::Context::default();
    let call_json = serde_json::json!({ "service": &*service.name, "function": call.function });
    let caller_json = serde_json::json!({
        "subject": caller.subject, "groups": caller.groups, "claims": caller.claims,
        "authenticated": caller.authenticated, "token_error": caller.token_error,
        "provider": caller.provider,
    });
    let workload_json = serde_json::to_value(caller.workload.clone().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    for (name, value) in [
        ("call", &call_json),
        ("caller", &caller_json),
        ("args", &call.args),
        ("workload", &workload_json),
    ] {
        ctx.add_variable_from_value(name, to_cel(value, 0));
    }
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("evaluated to {other:?}, not a boolean")),
        Err(e) => Err(e.to_string()),
    }
}

/// JSON to CEL. Integers become signed (`args.n + 1` must work: CEL will not add an unsigned
/// and a signed number), nesting is capped like everywhere else untrusted JSON is walked.
fn to_cel(v: &Json, depth: usize) -> cel::Value {
    use std::collections::HashMap;
    if depth > 64 {
        return cel::Value::Null;
    }
    match v {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => cel::Value::Int(i),
            None => n
                .as_u64()
                .map(cel::Value::UInt)
                .unwrap_or_else(|| cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        },
        Json::String(s) => cel::Value::String(Arc::new(s.clone())),
        Json::Array(a) => {
            cel::Value::List(Arc::new(a.iter().map(|x| to_cel(x, depth + 1)).collect()))
        }
        Json::Object(o) => {
            let map: HashMap<cel::objects::Key, cel::Value> = o
                .iter()
                .map(|(k, x)| {
                    (
                        cel::objects::Key::String(Arc::new(k.clone())),
                        to_cel(x, depth + 1),
                    )
                })
                .collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

fn describe(miss: Miss<'_>, call: &Call, caller: &Caller) -> String {
    match miss {
        Miss::Provider(p) => format!(
            "the rule is for tokens of provider {p:?}; the caller's is {:?}{}",
            caller.provider,
            unauth(caller)
        ),
        Miss::Subject => format!(
            "caller subject {:?} is not one the rule names{}",
            caller.subject,
            unauth(caller)
        ),
        Miss::Groups => format!(
            "caller groups {:?} include none the rule needs{}",
            caller.groups,
            unauth(caller)
        ),
        Miss::GroupsAll(g) => format!("caller is not in group {g:?}{}", unauth(caller)),
        Miss::Claim(c) => format!(
            "claim {c} does not have the required value{}",
            unauth(caller)
        ),
        Miss::Authenticated(true) => format!(
            "caller is not authenticated{}",
            caller
                .token_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
        Miss::Authenticated(false) => {
            "caller is authenticated; the rule is for unauthenticated callers".into()
        }
        Miss::NoWorkload => "no workload identity for this call".into(),
        Miss::Workload(field) => {
            let w = caller.workload.clone().unwrap_or_default();
            let actual = match field {
                "uid" => format!("{:?}", w.uid),
                "user" => format!("{:?}", w.user),
                "unit" => format!("{:?}", w.unit),
                "user_unit" => format!("{:?}", w.user_unit),
                "comm" => format!("{:?}", w.comm),
                "container" => format!("{:?}", w.container.as_ref().and_then(|c| c.id.as_ref())),
                "pod" => format!("{:?}", w.container.as_ref().and_then(|c| c.pod.as_ref())),
                "netns" => format!("{:?}", w.netns),
                _ => format!("{:?}", w.cgroup),
            };
            format!("workload {field} {actual} does not match")
        }
        Miss::Arg {
            path,
            op,
            missing: true,
        } => format!(
            "argument {} is missing ({} needs it)",
            path.path.as_str(),
            op.name()
        ),
        Miss::Arg {
            path,
            op,
            missing: false,
        } => {
            let mut actual = Vec::new();
            path.path.visit_folded(&call.args, &mut |v| {
                actual.push(v.to_string());
                true
            });
            format!(
                "argument {} = {} fails {}",
                path.path.as_str(),
                actual.join(", "),
                describe_op(op)
            )
        }
        Miss::Unknown { path, op, why } => format!(
            "argument {} cannot be evaluated ({}): {} fails closed and does not allow",
            path.path.as_str(),
            match why {
                Unknown::Missing => "it is missing",
                Unknown::Type => "its value is not of the type the operator tests",
                Unknown::Partial => "part of the request could not be read for arguments",
                Unknown::JsonText => {
                    "it is inside text that holds JSON, which a server may parse (FastMCP does)"
                }
            },
            op.name()
        ),
        Miss::WhenFalse => "`when` evaluated to false".into(),
    }
}

fn unauth(caller: &Caller) -> String {
    match (&caller.token_error, caller.authenticated) {
        (_, true) => String::new(),
        (Some(e), false) => format!(" (caller is not authenticated: {e})"),
        (None, false) => " (caller is not authenticated)".into(),
    }
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Eq(v) => format!("eq {v}"),
        Op::Ne(v) => format!("ne {v}"),
        Op::In(v) => format!("in {}", Json::Array(v.clone())),
        Op::NotIn(v) => format!("not_in {}", Json::Array(v.clone())),
        Op::Gt(n) => format!("gt {n}"),
        Op::Ge(n) => format!("ge {n}"),
        Op::Lt(n) => format!("lt {n}"),
        Op::Le(n) => format!("le {n}"),
        Op::Regex(r) => format!("regex {}", r.as_str()),
        Op::Prefix(p) => format!("prefix {p:?}"),
        Op::MaxLen(n) => format!("max_len {n}"),
        Op::Present(true) => "present".into(),
        Op::Present(false) => "absent".into(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn spellings_of_one_number_are_neither_equal_nor_different() {
        let eq = |a: Json, b: Json| json_eq(&a, &b);
        // One number to Flask's `int` converter, Python's `int`, Java's `parseInt`; to
        // JavaScript's `parseInt` and Ruby's `to_i` (`"7abc"`, `"7.5"`, `"7e2"`); to `Number`
        // (`"0x7"`, `"0b111"`).
        for text in [
            "07", "٧", "７", " 7", "𝟕", "7.0", "+7", "7abc", "7.5", "7e2", "0x7", "0b111", "7-x",
        ] {
            assert_eq!(eq(json!(text), json!(7)), None, "{text} and 7");
            assert_eq!(eq(json!(text), json!("7")), None, "{text:?} and \"7\"");
        }
        assert_eq!(eq(json!(7.5), json!(7)), None, "int(7.5)");
        assert_eq!(eq(json!("1_000"), json!(1000)), None, "Python's int");
        assert_eq!(eq(json!("1_000"), json!(1)), None, "parseInt");
        // What the gateway cannot read as one number is not said to differ from one.
        for unsure in ["½", "⑦", "0x1234567890abcdef1234567890abcdef12"] {
            assert_eq!(eq(json!(unsure), json!(7)), None, "{unsure}");
        }
        // Different numbers, and text that is no number, still differ.
        assert_eq!(eq(json!("7"), json!("8")), Some(false));
        assert_eq!(eq(json!("٨"), json!(7)), Some(false));
        assert_eq!(eq(json!("seven"), json!("7")), Some(false));
        assert_eq!(eq(json!("عدد"), json!("7")), Some(false));
        assert_eq!(eq(json!("x7"), json!(7)), Some(false));
        assert_eq!(eq(json!(8.5), json!(7)), Some(false));
        // Two texts neither of which is a plain number: a date is not its year.
        assert_eq!(eq(json!("2024-01-01"), json!("2024-01-02")), Some(false));
        assert_eq!(eq(json!("7"), json!("7")), Some(true));
    }

    /// What an attacker's pass found read as another number by Ruby, Node, Go, Java and PHP.
    #[test]
    fn other_servers_readings_are_readings_too() {
        let eq = |a: Json, b: Json| json_eq(&a, &b);
        for (text, n) in [
            ("1_0x", 10),       // Ruby's `to_i`, ActiveModel
            ("1_000abc", 1000), // the same
            ("abc", 0),         // `to_i`, `(int)`
            ("0xAz", 10),       // `parseInt`
            ("012", 10),        // Go's `ParseInt(s, 0)`, Ruby's `Integer`, Java's `decode`
            ("0_12", 10),       // Go
            ("#A", 10),         // Java's `decode`
            ("#10", 16),
            ("\u{FEFF}10", 10), // JavaScript trims U+FEFF
            ("\u{1F}10", 10),   // Java's `trim`
            ("0x1p10", 1024),   // Go's `ParseFloat`, Java, Ruby's `Float`
        ] {
            assert_eq!(eq(json!(text), json!(n)), None, "{text:?} and {n}");
        }
        assert_eq!(eq(json!(7e-7), json!(7)), None, "parseInt(7e-7)");
        assert_eq!(
            eq(json!(18446744073709551616.0), json!(0)),
            None,
            "PHP's (int)"
        );
        assert_eq!(eq(json!(18446744073709555712.0), json!(4096)), None);
        assert_eq!(eq(json!("abc"), json!("0")), None);
        // A second attacker's pass: `[7]` is 7 to JavaScript, 1 to PHP; `null` and `[]` 0.
        assert_eq!(eq(json!([7]), json!(7)), None);
        assert_eq!(eq(json!(["7"]), json!(7)), None);
        assert_eq!(eq(json!([99]), json!(1)), None);
        assert_eq!(eq(json!(null), json!(0)), None);
        assert_eq!(eq(json!([]), json!("0")), None);
        assert_eq!(eq(json!([8]), json!(7)), Some(false));
        assert_eq!(eq(json!("0d7"), json!(7)), None, "Ruby's 0d");
        assert_eq!(eq(json!("abc"), json!(1)), Some(false));
        let le = |v: Json, n: f64| op_holds(&Op::Le(n), &v);
        for v in [
            json!("0x3e8z"),
            json!("0x1p10"),
            json!("1 000"),
            json!("100.000000000000001"),
            json!("1_000x"),
        ] {
            assert_eq!(le(v.clone(), 100.0), None, "{v}");
        }
        assert_eq!(le(json!("100"), 100.0), Some(true));
        assert_eq!(le(json!("99.5"), 100.0), Some(true));
    }

    #[test]
    fn a_range_holds_when_every_reading_is_in_it() {
        let gt = |v: Json, n: f64| op_holds(&Op::Gt(n), &v);
        assert_eq!(gt(json!("٧٥"), 70.0), Some(true));
        assert_eq!(gt(json!("5000abc"), 100.0), Some(true), "parseInt: 5000");
        assert_eq!(gt(json!("7abc"), 100.0), Some(false));
        // 1 to `parseInt`, 1000 to Python: one in the range, one out.
        assert_eq!(gt(json!("1e3"), 100.0), None);
        assert_eq!(gt(json!("1_000"), 100.0), None);
        assert_eq!(gt(json!(7.5), 7.0), None, "int(7.5) is 7");
        assert_eq!(gt(json!("lots"), 100.0), None);
        assert_eq!(gt(json!("½"), 100.0), None);
    }
}
