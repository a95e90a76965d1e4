//! The decide stage through its public API: policy repositories written to temp directories,
//! loaded, compiled and asked for decisions.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use callgate::call::{Call, Caller, Workload};
use callgate::policy::{self, Action, Finding, PolicyStore, Snapshot, lint};
use serde_json::{Value, json};

static N: AtomicU32 = AtomicU32::new(0);

/// A policy repository in a fresh temp directory, removed on drop.
struct Repo(PathBuf);

impl Repo {
    fn new(repo_yaml: &str, services: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "callgate-policy-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("services")).unwrap();
        std::fs::write(dir.join("callgate.yaml"), repo_yaml).unwrap();
        for (name, text) in services {
            std::fs::write(dir.join("services").join(name), text).unwrap();
        }
        Repo(dir)
    }

    fn service(text: &str) -> Self {
        Self::new("default_action: deny\n", &[("svc.yaml", text)])
    }

    fn compile(&self) -> Result<Snapshot, Vec<Finding>> {
        policy::load_snapshot(&self.0).map(|(_, s)| s)
    }

    fn snap(&self) -> Snapshot {
        self.compile().unwrap_or_else(|e| {
            panic!(
                "{}",
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }

    fn errors(&self) -> Vec<String> {
        match self.compile() {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn user(groups: &[&str]) -> Caller {
    Caller {
        subject: Some("u".into()),
        groups: groups.iter().map(|s| s.to_string()).collect(),
        authenticated: true,
        ..Default::default()
    }
}

fn decide(snap: &Snapshot, function: &str, args: Value, caller: &Caller) -> (Action, String) {
    let svc = snap.service("svc").expect("service svc");
    let d = snap.decide(
        svc,
        &Call {
            function: function.into(),
            args,
            ..Default::default()
        },
        caller,
    );
    (d.action, d.rule.as_deref().unwrap_or("default").to_string())
}

const HEAD: &str = "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: jsonrpc\nfunctions: { f: {}, g: {} }\nrules:\n";

fn one_rule(cond: &str) -> Repo {
    Repo::service(&format!(
        "{HEAD}  - {{ name: r, function: f, action: allow, {cond} }}\n"
    ))
}

#[test]
fn every_argument_operator() {
    let cases: &[(&str, Value, bool)] = &[
        ("args: { a: { eq: 5 } }", json!({"a": 5}), true),
        ("args: { a: { eq: 5 } }", json!({"a": 5.0}), true),
        ("args: { a: { eq: 5 } }", json!({"a": "5"}), false),
        ("args: { a: { ne: x } }", json!({"a": "y"}), true),
        ("args: { a: { ne: x } }", json!({"a": "x"}), false),
        ("args: { a: { in: [x, y] } }", json!({"a": "y"}), true),
        ("args: { a: { in: [x, y] } }", json!({"a": "z"}), false),
        ("args: { a: { not_in: [x] } }", json!({"a": "z"}), true),
        ("args: { a: { not_in: [x] } }", json!({"a": "x"}), false),
        ("args: { a: { gt: 1 } }", json!({"a": 2}), true),
        ("args: { a: { gt: 1 } }", json!({"a": 1}), false),
        ("args: { a: { ge: 1 } }", json!({"a": 1}), true),
        ("args: { a: { lt: 1 } }", json!({"a": 0.5}), true),
        ("args: { a: { lt: 1 } }", json!({"a": 1}), false),
        ("args: { a: { le: 1 } }", json!({"a": 1}), true),
        ("args: { a: { max: 100 } }", json!({"a": 100}), true),
        ("args: { a: { max: 100 } }", json!({"a": 100.5}), false),
        ("args: { a: { min: 10 } }", json!({"a": 9}), false),
        // A number sent as text is the number servers coerce it to.
        ("args: { a: { gt: 1 } }", json!({"a": "2"}), true),
        // ... but text with an exponent is read as different numbers (Ruby's `to_i` and
        // `parseInt` stop at the `e`: 100000 where Python's `float` reads 1), and a
        // condition holds only when it holds for each.
        ("args: { a: { gt: 100 } }", json!({"a": " 2e3 "}), false),
        ("args: { a: { gt: 1 } }", json!({"a": " 2e3 "}), true),
        (
            "args: { a: { max: 100 } }",
            json!({"a": "100000e-5"}),
            false,
        ),
        ("args: { a: { max: 100 } }", json!({"a": "1E3"}), false),
        ("args: { a: { max: 100 } }", json!({"a": "1E1"}), true),
        ("args: { a: { max: 100 } }", json!({"a": 1e1}), true),
        // Text some server reads as the number is neither equal nor unequal to it: unknown
        // (a deny rule's `eq` matches it); text no server reads as it is unequal.
        ("args: { a: { eq: 5 } }", json!({"a": "5e0"}), false),
        ("args: { a: { ne: 5 } }", json!({"a": "5e0"}), false),
        ("args: { a: { ne: 5 } }", json!({"a": "5abc"}), false),
        ("args: { a: { ne: 5 } }", json!({"a": "0x5"}), false),
        ("args: { a: { ne: 5 } }", json!({"a": "1e3"}), true),
        ("args: { a: { not_in: [5] } }", json!({"a": "5.9"}), false),
        ("args: { a: { not_in: [5] } }", json!({"a": "1e3"}), true),
        ("args: { a: { gt: 1 } }", json!({"a": "0.5"}), false),
        ("args: { a: { gt: 1 } }", json!({"a": "two"}), false),
        ("args: { a: { gt: 1 } }", json!({"a": "NaN"}), false),
        ("args: { a: { gt: 1 } }", json!({"a": true}), false),
        (
            "args: { a: { regex: \"[a-z]+\" } }",
            json!({"a": "abc"}),
            true,
        ),
        (
            "args: { a: { regex: \"[a-z]+\" } }",
            json!({"a": "abc1"}),
            false,
        ),
        (
            "args: { a: { prefix: acct_ } }",
            json!({"a": "acct_1"}),
            true,
        ),
        (
            "args: { a: { prefix: acct_ } }",
            json!({"a": "x_acct_1"}),
            false,
        ),
        ("args: { a: { present: true } }", json!({"a": null}), true),
        ("args: { a: { present: true } }", json!({}), false),
        ("args: { a: { absent: true } }", json!({}), true),
        ("args: { a: { absent: true } }", json!({"a": 1}), false),
        ("args: { a: { max_len: 3 } }", json!({"a": "abc"}), true),
        (
            "args: { a: { max_len: 3 } }",
            json!({"a": [1, 2, 3, 4]}),
            false,
        ),
        (
            "args: { \"$.o.items[*].n\": { max: 5 } }",
            json!({"o": {"items": [{"n": 1}, {"n": 5}]}}),
            true,
        ),
        (
            "args: { \"$.o.items[*].n\": { max: 5 } }",
            json!({"o": {"items": [{"n": 1}, {"n": 6}]}}),
            false,
        ),
        (
            "args: { \"$..card\": { absent: true } }",
            json!({"x": {"y": {"card": 1}}}),
            false,
        ),
        // A condition on a missing argument does not hold.
        ("args: { a: { lt: 10 } }", json!({}), false),
        // Another case of the name is a value a case-blind server (Go) may run: it must hold
        // too; but only the exact name makes the argument present (Flask does not read
        // `AMOUNT` as `amount`, and would use its default).
        ("args: { amount: { le: 100 } }", json!({"AMOUNT": 5}), false),
        (
            "args: { amount: { le: 100 } }",
            json!({"amount": 5, "Amount": 5000}),
            false,
        ),
        (
            "args: { amount: { le: 100 } }",
            json!({"amount": 5, "AMOUNT": 7}),
            true,
        ),
        ("args: { a: { present: true } }", json!({"A": 1}), false),
        ("args: { a: { absent: true } }", json!({"A": 1}), false),
        // Integers are exact: one f64 is several accounts to Python, Go or Java.
        (
            "args: { a: { eq: 1234567890123456789 } }",
            json!({"a": 1234567890123456789u64}),
            true,
        ),
        (
            "args: { a: { eq: 1234567890123456789 } }",
            json!({"a": 1234567890123456790u64}),
            false,
        ),
        (
            "args: { a: { in: [1234567890123456789] } }",
            json!({"a": 1.2345678901234568e18}),
            false,
        ),
        ("args: { a: { eq: 5 } }", json!({"a": 5.0}), true),
        ("args: { a: { eq: -5 } }", json!({"a": -5}), true),
        // Text that spells a boolean is neither it nor another value.
        ("args: { a: { ne: false } }", json!({"a": "false"}), false),
        ("args: { a: { ne: false } }", json!({"a": "no"}), false),
        ("args: { a: { ne: true } }", json!({"a": 1}), false),
        ("args: { a: { ne: true } }", json!({"a": "On"}), false),
        // Any text but `""` is true to JavaScript's and Python's `if`, every value but `nil`
        // to Ruby's: `"maybe"` and `"false"` may be true; `null` is false to all.
        ("args: { a: { ne: true } }", json!({"a": "maybe"}), false),
        ("args: { a: { ne: true } }", json!({"a": "false"}), false),
        ("args: { a: { ne: true } }", json!({"a": [false]}), false),
        ("args: { a: { ne: true } }", json!({"a": null}), true),
        ("args: { a: { eq: false } }", json!({"a": "x"}), false),
        // A list of one text is that text to JavaScript's `String()` and property keys.
        (
            "args: { a: { ne: mallory } }",
            json!({"a": ["mallory"]}),
            false,
        ),
        (
            "args: { a: { not_in: [mallory] } }",
            json!({"a": [["mallory"]]}),
            false,
        ),
        ("args: { a: { ne: mallory } }", json!({"a": ["bob"]}), true),
        ("when: \"args.a + 1 == 3\"", json!({"a": 2}), true),
        ("when: \"args.a + 1 == 3\"", json!({"a": 5}), false),
        (
            "when: \"call.function == 'f' && caller.groups.exists(g, g == 'x')\"",
            json!({}),
            true,
        ),
    ];
    for (cond, args, want) in cases {
        let repo = one_rule(cond);
        let (action, _) = decide(&repo.snap(), "f", args.clone(), &user(&["x"]));
        assert_eq!(action == Action::Allow, *want, "{cond} with {args}");
    }
}

/// A condition that cannot be evaluated on the value the server will see (missing, not a
/// number, unreadable body) matches a deny or approve rule and never an allow rule.
#[test]
fn conditions_that_cannot_be_evaluated_fail_closed() {
    let repo = Repo::service(&format!(
        "{HEAD}  - {{ name: big, function: f, action: deny, args: {{ amount: {{ gt: 1000 }} }} }}\n  \
         - {{ name: odd, function: f, action: approve, approval: {{ approvers: {{ groups: [x] }} }}, args: {{ to: {{ prefix: ext_ }} }} }}\n  \
         - {{ name: small, function: f, action: allow, args: {{ amount: {{ max: 100 }} }} }}\n"
    ));
    let snap = repo.snap();
    let u = user(&["x"]);
    for (args, want, rule) in [
        (
            json!({"amount": 50, "to": "acct_1"}),
            Action::Allow,
            "small",
        ),
        (
            json!({"amount": "50", "to": "acct_1"}),
            Action::Allow,
            "small",
        ),
        (json!({"amount": 5000, "to": "acct_1"}), Action::Deny, "big"),
        (
            json!({"amount": "5000", "to": "acct_1"}),
            Action::Deny,
            "big",
        ),
        (
            json!({"amount": "5e3", "to": "acct_1"}),
            Action::Deny,
            "big",
        ),
        (
            json!({"amount": "lots", "to": "acct_1"}),
            Action::Deny,
            "big",
        ),
        (
            json!({"amount": [5000], "to": "acct_1"}),
            Action::Deny,
            "big",
        ),
        (json!({"to": "acct_1"}), Action::Deny, "big"),
        (json!({"amount": 50, "to": 7}), Action::Approve, "odd"),
        (json!({"amount": 50}), Action::Approve, "odd"),
        (json!({"amount": 50, "to": "x"}), Action::Allow, "small"),
    ] {
        assert_eq!(
            decide(&snap, "f", args.clone(), &u),
            (want, rule.to_string()),
            "{args}"
        );
    }
    // Nothing but the default allows a call whose arguments could not all be read.
    let svc = snap.service("svc").expect("service svc");
    let d = snap.decide(
        svc,
        &Call {
            function: "f".into(),
            args: json!({"amount": 50, "to": "x"}),
            partial: true,
            ..Call::default()
        },
        &u,
    );
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.rule.as_deref(), Some("big"));
}

/// A deny on the items of a list matches when one item meets it, whatever the others (an
/// allow, only when every item does): a small first item does not carry a large second one.
#[test]
fn a_deny_on_a_list_matches_any_item() {
    let repo = Repo::service(&format!(
        "{HEAD}  - {{ name: big, function: f, action: deny, args: {{ \"$.items[*].n\": {{ gt: 1000 }} }} }}\n  \
         - {{ name: small, function: f, action: allow, args: {{ \"$.items[*].n\": {{ max: 100 }} }} }}\n"
    ));
    let snap = repo.snap();
    let u = user(&["x"]);
    for (items, want, rule) in [
        (json!([{"n": 5}, {"n": 5000}]), Action::Deny, "big"),
        (json!([{"n": 5000}, {"n": 5}]), Action::Deny, "big"),
        (json!([{"n": 5}, {"n": "lots"}]), Action::Deny, "big"),
        (json!([{"n": 5}, {"n": 6}]), Action::Allow, "small"),
    ] {
        let args = json!({ "items": items });
        assert_eq!(
            decide(&snap, "f", args.clone(), &u),
            (want, rule.to_string()),
            "{args}"
        );
    }
}

#[test]
fn caller_matchers() {
    let w = |unit: &str, uid: u32| Caller {
        workload: Some(std::sync::Arc::new(Workload {
            unit: Some(unit.into()),
            uid: Some(uid),
            user: Some("svc".into()),
            cgroup: Some("system.slice/a.service".into()),
            comm: Some("python3".into()),
            pid: Some(1),
            ..Workload::default()
        })),
        ..user(&["eng", "ops"])
    };
    let cases: &[(&str, Caller, bool)] = &[
        ("caller: { subject: u }", user(&[]), true),
        ("caller: { subject: [v, w] }", user(&[]), false),
        ("caller: { groups: [ops, x] }", user(&["ops"]), true),
        ("caller: { groups: [x] }", user(&["ops"]), false),
        (
            "caller: { groups_all: [ops, eng] }",
            user(&["ops", "eng"]),
            true,
        ),
        ("caller: { groups_all: [ops, eng] }", user(&["ops"]), false),
        // Groups claimed without a verified token count for nothing.
        (
            "caller: { groups: [ops] }",
            Caller {
                groups: vec!["ops".into()],
                ..Default::default()
            },
            false,
        ),
        ("caller: { authenticated: true }", Caller::default(), false),
        ("caller: { authenticated: false }", Caller::default(), true),
        (
            "caller: { claims: { tenant: acme } }",
            Caller {
                claims: json!({"tenant": "acme"}),
                ..user(&[])
            },
            true,
        ),
        (
            "caller: { claims: { \"$.realm.roles\": admin } }",
            Caller {
                claims: json!({"realm": {"roles": ["x", "admin"]}}),
                ..user(&[])
            },
            true,
        ),
        (
            "caller: { claims: { tenant: acme } }",
            Caller {
                claims: json!({"tenant": "evil"}),
                ..user(&[])
            },
            false,
        ),
        (
            "caller: { workload: { unit: a.service } }",
            w("a.service", 1),
            true,
        ),
        (
            "caller: { workload: { unit: a.service } }",
            w("b.service", 1),
            false,
        ),
        (
            "caller: { workload: { unit: a.service } }",
            user(&[]),
            false,
        ),
        (
            "caller: { workload: { uid: [1, 2] } }",
            w("a.service", 2),
            true,
        ),
        ("caller: { workload: { uid: 7 } }", w("a.service", 2), false),
        (
            "caller: { workload: { user: svc, comm: python3, cgroup: system.slice/ } }",
            w("a.service", 2),
            true,
        ),
        (
            "caller: { workload: { cgroup: user.slice/ } }",
            w("a.service", 2),
            false,
        ),
    ];
    for (cond, caller, want) in cases {
        let repo = one_rule(cond);
        let (action, _) = decide(&repo.snap(), "f", json!({}), caller);
        assert_eq!(action == Action::Allow, *want, "{cond} with {caller:?}");
    }
}

/// Containers, pods and network namespaces, as the gateway reads them from a workload's
/// cgroup path and its connection.
#[test]
fn container_pod_and_namespace_matchers() {
    const ID: &str = "4f1c3a0b2d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const POD: &str = "0f9e8d7c-6b5a-4321-8fed-cba987654321";
    let cgroup = format!(
        "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
        POD.replace('-', "_")
    );
    let in_pod = Caller {
        workload: Some(std::sync::Arc::new(Workload {
            // Names as the runtime's state gives them (identity::containers).
            container: callgate::call::container::Container::of_cgroup(Some(&cgroup)).map(|c| {
                callgate::call::container::Container {
                    name: Some("app".into()),
                    pod_name: Some("web-7d9f".into()),
                    pod_namespace: Some("shop".into()),
                    ..c
                }
            }),
            netns: Some(4026532247),
            // The gateway holds the namespace the policy names (intercept::netns_pins).
            netns_held: true,
            cgroup: Some(cgroup.clone()),
            ..Workload::default()
        })),
        ..Caller::default()
    };
    // The same inode, in a namespace made after the named one ended: not held.
    let next_owner = Caller {
        workload: in_pod.workload.as_ref().map(|w| {
            std::sync::Arc::new(Workload {
                netns_held: false,
                ..(**w).clone()
            })
        }),
        ..in_pod.clone()
    };
    let on_host = in_cgroup("system.slice/a.service", 0);
    let cases: &[(String, &Caller, bool)] = &[
        (format!("container: {ID}"), &in_pod, true),
        (format!("container: [{}]", &ID[..12]), &in_pod, true),
        ("container: 000000000000".into(), &in_pod, false),
        ("container: app".into(), &in_pod, true),
        ("container: [db, app]".into(), &in_pod, true),
        ("container: ap".into(), &in_pod, false),
        ("container: app".into(), &on_host, false),
        ("pod: web-7d9f".into(), &in_pod, true),
        ("pod: shop/web-7d9f".into(), &in_pod, true),
        ("pod: other/web-7d9f".into(), &in_pod, false),
        (format!("container: {ID}"), &on_host, false),
        (format!("pod: {POD}"), &in_pod, true),
        (
            "pod: 00000000-0000-0000-0000-000000000000".into(),
            &in_pod,
            false,
        ),
        (format!("pod: {POD}"), &on_host, false),
        ("netns: 4026532247".into(), &in_pod, true),
        ("netns: [1, 2]".into(), &in_pod, false),
        ("netns: 4026532247".into(), &on_host, false),
        ("netns: 4026532247".into(), &next_owner, false),
    ];
    for (cond, caller, want) in cases {
        let repo = one_rule(&format!("caller: {{ workload: {{ {cond} }} }}"));
        let (action, _) = decide(&repo.snap(), "f", json!({}), caller);
        assert_eq!(action == Action::Allow, *want, "{cond}");
    }
    // Neither an id nor a name a runtime would give.
    for bad in ["\"a b\"", "\"../x\"", "\"-x\""] {
        let errors = one_rule(&format!("caller: {{ workload: {{ container: {bad} }} }}")).errors();
        assert!(
            errors.iter().any(|e| e.contains("a container is named by")),
            "{bad}: {errors:?}"
        );
    }
}

#[test]
fn first_match_wins_and_the_default_decides_the_rest() {
    let repo = Repo::service(&format!(
        "{HEAD}  - {{ name: deny-big, function: f, args: {{ n: {{ gt: 10 }} }}, action: deny, reason: too big }}\n  - {{ name: allow-f, function: f, caller: {{ groups: [x] }}, action: allow }}\n  - {{ name: any, function: \"*\", caller: {{ groups: [y] }}, action: allow }}\n"
    ));
    let snap = repo.snap();
    assert_eq!(
        decide(&snap, "f", json!({"n": 11}), &user(&["x"])),
        (Action::Deny, "deny-big".into())
    );
    assert_eq!(
        decide(&snap, "f", json!({"n": 1}), &user(&["x"])),
        (Action::Allow, "allow-f".into())
    );
    assert_eq!(
        decide(&snap, "g", json!({}), &user(&["x"])),
        (Action::Deny, "default".into())
    );
    assert_eq!(
        decide(&snap, "g", json!({}), &user(&["y"])),
        (Action::Allow, "any".into())
    );
    // A function the service does not define is only decided by `*` rules.
    assert_eq!(
        decide(&snap, "undefined", json!({}), &user(&["y"])),
        (Action::Allow, "any".into())
    );
    let svc = snap.service("svc").unwrap();
    let d = snap.decide(
        svc,
        &Call {
            function: "f".into(),
            args: json!({"n": 11}),
            ..Default::default()
        },
        &user(&[]),
    );
    assert_eq!(d.reason.as_deref(), Some("too big"));
    assert!(
        d.policy.commit.is_none(),
        "a temp dir is not a git repository"
    );
    assert_eq!(d.policy.source, "not a git repository");
}

#[test]
fn explain_says_why_each_rule_missed() {
    let repo = Repo::service(&format!(
        "{HEAD}  - {{ name: small, function: f, args: {{ amount: {{ max: 100 }} }}, action: allow }}\n  - {{ name: ops-only, function: f, caller: {{ groups: [ops] }}, action: allow }}\n"
    ));
    let snap = repo.snap();
    let svc = snap.service("svc").unwrap();
    let (d, trace) = snap.explain(
        svc,
        &Call {
            function: "f".into(),
            args: json!({"amount": 250}),
            ..Default::default()
        },
        &user(&["eng"]),
    );
    assert_eq!(d.action, Action::Deny);
    let lines: Vec<String> = trace
        .iter()
        .map(|t| format!("{}: {}", t.rule, t.why))
        .collect();
    assert_eq!(
        lines,
        [
            "small: argument amount = 250 fails le 100",
            "ops-only: caller groups [\"eng\"] include none the rule needs",
            "default: no rule matched → default deny",
        ]
    );
}

#[test]
fn dry_run_enforces_allow_but_records_the_real_decision() {
    let repo = Repo::new(
        "mode: dry-run\n",
        &[(
            "svc.yaml",
            &format!("{HEAD}  - {{ name: r, function: f, action: deny }}\n"),
        )],
    );
    let snap = repo.snap();
    let d = snap.decide(
        snap.service("svc").unwrap(),
        &Call {
            function: "f".into(),
            args: json!({}),
            ..Default::default()
        },
        &Caller::default(),
    );
    assert_eq!((d.action, d.enforced), (Action::Deny, Action::Allow));
}

#[test]
fn a_failing_cel_condition_denies() {
    let repo = one_rule("when: \"args.missing.deeper == 1\"");
    let snap = repo.snap();
    let d = snap.decide(
        snap.service("svc").unwrap(),
        &Call {
            function: "f".into(),
            args: json!({}),
            ..Default::default()
        },
        &Caller::default(),
    );
    assert_eq!(d.action, Action::Deny);
    assert!(
        d.reason.as_deref().unwrap_or("").contains("`when` failed"),
        "{:?}",
        d.reason
    );
}

#[test]
fn services_are_found_by_destination_and_sni() {
    let repo = Repo::new(
        "",
        &[
            (
                "a.yaml",
                "service: a\nmatch: { hosts: [\"api.internal:443\", \"10.1.0.0/16\"] }\n",
            ),
            (
                "b.yaml",
                "service: b\nmatch: { hosts: [\"[2001:db8::1]:8080\"], sni: [\"*.b.example\"] }\n",
            ),
            ("c.yaml", "service: c\nmatch: { hosts: [\"c.internal\"] }\n"),
        ],
    );
    let snap = repo.snap();
    let name = |h: &str, p: u16, sni: Option<&str>| {
        snap.service_for(h, p, sni).map(|s| s.name.to_string())
    };
    assert_eq!(name("API.internal", 443, None).as_deref(), Some("a"));
    assert_eq!(name("api.internal", 80, None), None);
    assert_eq!(name("10.1.200.3", 5432, None).as_deref(), Some("a"));
    assert_eq!(name("2001:db8::1", 8080, None).as_deref(), Some("b"));
    assert_eq!(
        name("192.0.2.1", 443, Some("x.b.example")).as_deref(),
        Some("b")
    );
    assert_eq!(name("c.internal", 1234, None).as_deref(), Some("c"));
    assert_eq!(name("10.2.0.1", 443, None), None);
    assert_eq!(snap.decide_unknown_destination().action, Action::Deny);
}

#[test]
fn rest_routes_prefer_literals_and_extract_parameters() {
    let repo = Repo::service(
        "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: rest\nfunctions:\n  get: { route: \"GET /v1/items/{id}\" }\n  mine: { route: \"GET /v1/items/mine\" }\n  sub: { route: \"POST /v1/items/{id}/subs/{sub}\" }\n",
    );
    let snap = repo.snap();
    let svc = snap.service("svc").unwrap();
    let route = |m: &str, p: &str| {
        svc.surface.route(m, p).map(|(f, params)| {
            let params: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (f.to_string(), params)
        })
    };
    assert_eq!(
        route("GET", "/v1/items/mine"),
        Some(("mine".into(), vec![]))
    );
    assert_eq!(
        route("GET", "/v1/items/42?x=1"),
        Some(("get".into(), vec![("id".into(), "42".into())]))
    );
    assert_eq!(
        route("post", "/v1/items/1/subs/2").map(|r| r.1.len()),
        Some(2)
    );
    assert_eq!(
        route("GET", "/v1/items/"),
        None,
        "an empty parameter is no match"
    );
    assert_eq!(route("GET", "/v1/items/1/extra"), None);
    assert_eq!(route("DELETE", "/v1/items/1"), None);
}

#[test]
fn semantic_errors_name_file_line_and_column() {
    let repo = Repo::service(
        "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: rest\nfunctions:\n  f: { route: \"POST /x\" }\nrules:\n  - name: a\n    function: nope\n    action: allow\n  - name: b\n    function: f\n    args: { x: { regex: \"(\" } }\n    action: allow\n  - name: b\n    function: f\n    when: \"1 +\"\n    action: approve\nresponse:\n  mask: [cardnumber]\n",
    );
    let errors = repo.errors();
    let text = errors.join("\n");
    let has = |needle: &str, at: &str| {
        assert!(
            errors.iter().any(|e| e.contains(needle) && e.contains(at)),
            "{needle:?} at {at:?} in:\n{text}"
        );
    };
    has("function \"nope\" is not defined", "svc.yaml:8:5");
    has("invalid regex", "svc.yaml:12:13");
    has("rule name \"b\" is used twice", "svc.yaml:14:");
    has("invalid CEL", "svc.yaml:16:5");
    has("`approve` needs an `approval:` block", "svc.yaml:17:5");
    has("unknown detector \"cardnumber\"", "svc.yaml:19:");
}

/// A method two functions answer to was decided as the one compiled last: a deny on
/// `refund` could pass a `refund` call as an allowed `lookup` that also says `method: refund`.
#[test]
fn a_method_two_functions_claim_is_an_error() {
    let repo = Repo::service(
        "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: jsonrpc\nfunctions:\n  refund: {}\n  lookup: { method: refund }\n  tools: { method: x.y }\n  other: { method: x.y }\n",
    );
    let errors = repo.errors();
    let text = errors.join("\n");
    for method in ["refund", "x.y"] {
        let says = format!("method {method:?} also calls function");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("svc.yaml:") && e.contains(&says)),
            "{says} in:\n{text}"
        );
    }
}

#[test]
fn a_route_two_functions_claim_names_the_first() {
    let repo = Repo::service(
        "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: rest\nfunctions:\n  a: { route: \"GET /x/{id}\" }\n  b: { route: \"get /x/{id}\" }\n  c: { route: \"GET x\" }\n",
    );
    let errors = repo.errors().join("\n");
    assert!(
        errors.contains("route \"get /x/{id}\" is also function a's"),
        "{errors}"
    );
    assert!(
        errors.contains("route \"GET x\": the path must start with /"),
        "{errors}"
    );
}

#[test]
fn malformed_yaml_gets_clear_errors() {
    let cases: &[(&str, &str)] = &[
        (
            "service: svc\nmatch: { hosts: \"svc:80\" }\n",
            "invalid type",
        ),
        ("service: [svc]\nmatch: {}\n", "invalid type"),
        (
            "service: svc\nservice: again\nmatch: { hosts: [a] }\n",
            "duplicate",
        ),
        (
            "service: svc\nmatch: { hosts: [a] }\nfunctions: { f: {}, f: {} }\n",
            "duplicate",
        ),
        (
            "service: svc\nmatch: { hosts: [a] }\nrules: [ { name: r, action: maybe } ]\n",
            "unknown variant",
        ),
        ("service: svc\nmatch: {\n", "did not find expected"),
        ("service: svc\n\tmatch: {}\n", ""),
        ("match: { hosts: [a] }\n", "missing field `service`"),
        ("", "missing field `service`"),
    ];
    for (text, expect) in cases {
        let repo = Repo::service(text);
        let errors = repo.errors();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("svc.yaml:") && e.contains(expect)),
            "{text:?}: {errors:?}"
        );
    }
}

#[test]
fn alias_bombs_and_huge_files_are_refused() {
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12u8 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        bomb.push_str(&format!("{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let start = std::time::Instant::now();
    let repo = Repo::service(&format!(
        "service: svc\nmatch: {{ hosts: [a] }}\nfunctions: {{}}\n{bomb}"
    ));
    assert!(!repo.errors().is_empty());
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "an alias bomb must not be expanded"
    );

    let huge = format!(
        "service: svc\nmatch: {{ hosts: [a] }}\n# {}\n",
        "x".repeat(2 * 1024 * 1024)
    );
    let errors = Repo::service(&huge).errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("policy files are limited to")),
        "{errors:?}"
    );

    let deep = format!(
        "service: svc\nmatch: {{ hosts: [a] }}\nrules: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(
        !Repo::service(&deep).errors().is_empty(),
        "deep nesting is an error, not a stack overflow"
    );
}

/// `callgate policy lint`'s findings for `repo`, as it prints them.
fn lint_of(repo: &Repo) -> Vec<String> {
    let (loaded, snap) = policy::load_snapshot(&repo.0).unwrap();
    lint::lint(&loaded, &snap)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn lint_finds_shadowed_unreferenced_and_open_rules() {
    let repo = Repo::service(&format!(
        "{HEAD}  - {{ name: all-f, function: f, caller: {{ groups: [x] }}, action: deny }}\n  - {{ name: open, function: \"*\", action: allow }}\n  - {{ name: late, function: f, caller: {{ groups: [y] }}, action: allow }}\n"
    ));
    let findings = lint_of(&repo);
    let text = findings.join("\n");
    assert!(
        text.contains("rule \"late\" can never match: rule \"open\" above it"),
        "{text}"
    );
    assert!(text.contains("rule \"open\" allows any caller"), "{text}");
    assert!(findings.iter().all(|f| f.contains("warning")), "{text}");

    let unref = Repo::service(&format!(
        "{HEAD}  - {{ name: r, function: f, caller: {{ groups: [x] }}, action: allow }}\n"
    ));
    let findings = lint_of(&unref);
    assert!(
        findings.iter().any(
            |f| f.contains("function \"g\" is not mentioned by any rule")
                && f.contains("svc.yaml:4:")
        ),
        "{findings:?}"
    );

    let by_inode = one_rule("caller: { workload: { netns: 4026532247 } }");
    let findings = lint_of(&by_inode);
    assert!(
        findings
            .iter()
            .any(|f| f.contains("names a network namespace by inode")
                && f.contains("name the container or pod")
                && f.contains("warning")),
        "{findings:?}"
    );
}

#[test]
fn reload_swaps_atomically_and_keeps_the_last_good_policy() {
    let repo = one_rule("caller: { groups: [x] }");
    let store = PolicyStore::open(&repo.0).unwrap();
    let before = store.snapshot();
    let write = |text: &str| std::fs::write(repo.0.join("services/svc.yaml"), text).unwrap();

    write(&format!(
        "{HEAD}  - {{ name: r2, function: f, caller: {{ groups: [x] }}, action: deny }}\n"
    ));
    store.reload().unwrap();
    assert_eq!(
        decide(&store.snapshot(), "f", json!({}), &user(&["x"])),
        (Action::Deny, "r2".into())
    );
    // A decision that started on the old snapshot finishes on it.
    assert_eq!(
        decide(&before, "f", json!({}), &user(&["x"])),
        (Action::Allow, "r".into())
    );

    write(
        "service: svc\nmatch: { hosts: [\"svc:80\"] }\nrules: [ { name: r3, function: f, action: nope } ]\n",
    );
    assert!(store.reload().is_err());
    assert_eq!(
        decide(&store.snapshot(), "f", json!({}), &user(&["x"])).1,
        "r2",
        "the broken policy never took effect"
    );
    let status = store.status();
    assert_eq!(status.failed_reloads, 1);
    assert!(status.last_error.unwrap()[0].contains("svc.yaml:3:"));
}

#[test]
fn git_commit_and_dirty_state_are_stamped() {
    let repo = one_rule("caller: { groups: [x] }");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.test",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&repo.0)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "policy"]);
    let head = git(&["rev-parse", "HEAD"]);
    let v = repo.snap().version.clone();
    assert_eq!((v.commit.as_deref(), v.dirty), (Some(head.as_str()), false));
    std::fs::write(
        repo.0.join("services/new.yaml"),
        "service: n\nmatch: { hosts: [n] }\n",
    )
    .unwrap();
    assert!(
        repo.snap().version.dirty,
        "an untracked policy file makes the tree dirty"
    );
}

/// A repository shipped in `policies/` loads, passes its own test cases (at least `min`) and
/// lints clean; its outcomes, for more checks.
fn passes_its_own_tests_and_lint(rel: &str, min: usize) -> Vec<policy::testing::Outcome> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let (loaded, snap) =
        policy::load_snapshot(&dir).unwrap_or_else(|f| panic!("{rel} does not load: {f:#?}"));
    let outcomes = policy::testing::run(&loaded, &snap);
    assert!(outcomes.len() >= min, "{rel}: {} cases", outcomes.len());
    let failures: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref().map(|f| format!("{}: {f}", o.name)))
        .collect();
    assert!(failures.is_empty(), "{rel}: {failures:#?}");
    assert!(lint::lint(&loaded, &snap).is_empty(), "{rel} lints clean");
    outcomes
}

#[test]
fn the_example_repository_passes_its_own_tests_and_lint() {
    let outcomes = passes_its_own_tests_and_lint("../policies", 20);
    let xml = policy::testing::junit(&outcomes).unwrap();
    assert!(xml.contains("<testsuite") && xml.contains("support can refund a small amount"));
}

#[test]
fn the_demo_repository_passes_its_own_tests_and_lint() {
    passes_its_own_tests_and_lint("../policies/demo", 7);
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn hostile_services() -> &'static Snapshot {
        static SNAP: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
        SNAP.get_or_init(build_hostile_services)
    }

    fn build_hostile_services() -> Snapshot {
        let svc = |name: &str, port: u16, protocol: &str, functions: &str| {
            format!(
                "service: {name}\nmatch: {{ hosts: [\"{name}:{port}\"] }}\nprotocol: {protocol}\nfunctions:\n{functions}rules:\n  - {{ name: r, function: \"*\", action: allow }}\n"
            )
        };
        Repo::new(
            "default_action: deny\n",
            &[
                (
                    "rpc.yaml",
                    &svc("rpc", 1, "jsonrpc", "  f: { method: a.b }\n"),
                ),
                (
                    "mcp.yaml",
                    &svc("mcp", 2, "mcp", "  t: { description: a tool }\n"),
                ),
                (
                    "rest.yaml",
                    &svc("rest", 3, "rest", "  f: { route: \"POST /v1/{id}/x\" }\n"),
                ),
                (
                    "grpc.yaml",
                    &svc("grpc", 4, "grpc", "  m: { method: /p.S/M }\n"),
                ),
            ],
        )
        .snap()
    }

    /// A request's body type and gRPC metadata have one reading: two `Content-Type`s, one
    /// that is not text, or a metadata key given twice with different values are refused; a
    /// metadata value that is not text leaves the arguments partial (no condition holds).
    #[test]
    fn fields_read_two_ways_are_refused() {
        let snap = hostile_services();
        let request = |headers: &[(&str, &[u8])]| {
            let mut b = http::Request::builder().method("POST").uri("/p.S/M");
            for (k, v) in headers {
                b = b.header(*k, http::HeaderValue::from_bytes(v).expect("value"));
            }
            b.body(()).expect("request").into_parts().0
        };
        let rest = &snap.service("rest").expect("rest").surface;
        for (headers, refused) in [
            (&[("content-type", &b"application/json"[..])][..], false),
            (
                &[
                    ("content-type", &b"application/json"[..]),
                    ("content-type", b"application/x-www-form-urlencoded"),
                ],
                true,
            ),
            (
                &[(
                    "content-type",
                    &b"application/x-www-form-urlencoded; charset=\xe9"[..],
                )],
                true,
            ),
            (
                &[(
                    "content-type",
                    &b"application/json, application/x-www-form-urlencoded"[..],
                )],
                true,
            ),
            // A comma in a quoted parameter is no list of types…
            (
                &[("content-type", &b"application/json; profile=\"a,b\""[..])],
                false,
            ),
            // …but a charset no reader decodes as UTF-8 is refused (Express decodes by it).
            (
                &[("content-type", &b"application/json; charset=\"a,b\""[..])],
                true,
            ),
            (
                &[("content-type", &b"application/json; charset=utf-7"[..])],
                true,
            ),
            (
                &[("content-type", &b"application/json; charset=UTF-8"[..])],
                false,
            ),
        ] {
            let got = callgate::extract::canonicalise(rest, &mut request(headers));
            assert_eq!(
                got.as_ref().err().map(|e| e.code()),
                refused.then_some("bad_content_type"),
                "{headers:?}: {got:?}"
            );
        }
        let grpc = &snap.service("grpc").expect("grpc").surface;
        let kind = callgate::extract::Kind::Grpc;
        let twice = request(&[("x-team", b"prod"), ("x-team", b"sandbox")]);
        let got = callgate::extract::extract(kind, grpc, &twice, None, false);
        assert_eq!(got.err().map(|e| e.code()), Some("ambiguous_argument"));
        let same = request(&[("x-team", b"prod"), ("x-team", b"prod")]);
        let got = callgate::extract::extract(kind, grpc, &same, None, false).expect("one value");
        assert_eq!(got.calls[0].args["metadata"]["x-team"], "prod");
        assert!(!got.calls[0].partial);
        let bytes = request(&[("x-team", b"pr\xf6d")]);
        let got = callgate::extract::extract(kind, grpc, &bytes, None, false).expect("partial");
        assert!(got.calls[0].partial, "{:?}", got.calls[0]);
    }

    /// A `;` in a REST service's query is refused (Rack 2 separates parameters with it: one
    /// `amount` to the gateway, a second to Rails); kept on other protocols, and where the
    /// service says `paths: { semicolons: true }`.
    #[test]
    fn semicolons_in_a_rest_query_are_refused() {
        let snap = hostile_services();
        let get = |uri: &str| {
            http::Request::builder()
                .method("GET")
                .uri(uri)
                .body(())
                .expect("request")
                .into_parts()
                .0
        };
        let rest = &snap.service("rest").expect("rest").surface;
        let got =
            callgate::extract::canonicalise(rest, &mut get("/v1/a/x?amount=5&x=1;amount=5000"));
        assert_eq!(got.err().map(|e| e.code()), Some("bad_path"));
        assert!(callgate::extract::canonicalise(rest, &mut get("/v1/a/x?amount=5&x=%3B")).is_ok());
        let rpc = &snap.service("rpc").expect("rpc").surface;
        assert!(callgate::extract::canonicalise(rpc, &mut get("/rpc?a=1;b=2")).is_ok());
    }

    /// A JSON-RPC or MCP member spelled as another member only under case folding is
    /// refused: Go's encoding/json reads `Method` as `method` (its last match winning), and
    /// `NAME` in a `tools/call`'s params as the tool's name. Exact spellings pass.
    #[test]
    fn rpc_members_spelled_another_way_are_refused() {
        let snap = hostile_services();
        let post = http::Request::builder()
            .method("POST")
            .uri("/")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let code = |name: &str, kind, body: &str| {
            let svc = &snap.service(name).expect("service").surface;
            callgate::extract::extract(kind, svc, &post, Some(body.as_bytes()), false)
                .err()
                .map(|e| e.code())
        };
        use callgate::extract::Kind::{JsonRpc, Mcp};
        for (name, kind) in [("rpc", JsonRpc), ("mcp", Mcp)] {
            for body in [
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{}}"#,
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","param\u017f":{"a":1}}"#,
                r#"{"jsonrpc":"2.0","ID":1,"id":2,"method":"ping"}"#,
                r#"{"jsonrpc":"2.0","id":1,"result":null,"METHOD":"a.b"}"#,
                r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping","Params":[1]}]"#,
            ] {
                assert_eq!(
                    code(name, kind, body),
                    Some("ambiguous_argument"),
                    "{name}: {body}"
                );
            }
            let fine = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"Name":"x"}}"#;
            assert_eq!(code(name, kind, fine), None, "{name}: {fine}");
        }
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","NAME":"u"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","Arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\u0041me":"u","name":"t"}}"#,
        ] {
            assert_eq!(code("mcp", Mcp, body), Some("ambiguous_argument"), "{body}");
        }
        let fine = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"Name":1}}}"#;
        assert_eq!(code("mcp", Mcp, fine), None, "{fine}");
    }

    const VALID: &str = "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: rest\nfunctions:\n  f: { route: \"POST /v1/{id}\" }\nrules:\n  - name: r\n    function: f\n    caller: { groups: [a] }\n    args: { amount: { max: 5 }, \"$.x[*].y\": { regex: \"a+\" } }\n    when: \"args.amount > 1\"\n    action: allow\n";

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever a client sends as a call's body and path, extraction answers with calls
        /// or an error, for every protocol, and routes never panic.
        #[test]
        fn extraction_of_hostile_bodies(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            json_ish in "[\\[\\]{}:,\"0-9a-z.\\\\ ]{0,200}",
            path in "/[a-z0-9/{}%.?=&]{0,60}",
        ) {
            let snap = hostile_services();
            for (name, kind) in [
                ("rpc", callgate::extract::Kind::JsonRpc),
                ("mcp", callgate::extract::Kind::Mcp),
                ("rest", callgate::extract::Kind::Rest),
                ("grpc", callgate::extract::Kind::Grpc),
            ] {
                let svc = snap.service(name).expect("service");
                for method in ["POST", "GET"] {
                    let Ok(req) = http::Request::builder().method(method).uri(path.as_str()).body(()) else {
                        continue;
                    };
                    let (parts, ()) = req.into_parts();
                    for b in [&body[..], json_ish.as_bytes()] {
                        let _ = callgate::extract::extract(kind, &svc.surface, &parts, Some(b), false);
                    }
                    let _ = svc.surface.route(method, &path);
                }
            }
        }

        #[test]
        fn arbitrary_text(text in "\\PC{0,400}") {
            let _ = policy::load::parse_str::<policy::schema::ServiceFile>(Path::new("x.yaml"), &text);
        }

        #[test]
        fn mutated_valid_files(pos in 0usize..VALID.len(), len in 0usize..20, insert in "[\\[\\]{}:,\"'&*!|> a-z0-9\\n-]{0,12}") {
            let mut text = VALID.to_string();
            let end = (pos + len).min(text.len());
            if text.is_char_boundary(pos) && text.is_char_boundary(end) {
                text.replace_range(pos..end, &insert);
            }
            let repo = Repo::service(&text);
            if let Ok(snap) = repo.compile() {
                if let Some(svc) = snap.service("svc") {
                    let _ = snap.decide(svc, &Call { function: "f".into(), args: json!({"amount": 3, "x": [{"y": "aa"}]}), ..Call::default() }, &user(&["a"]));
                }
            }
        }
    }
}

/// A workload in a cgroup: its unit fields derived from the path as the gateway derives them.
fn in_cgroup(cgroup: &str, uid: u32) -> Caller {
    let units = callgate::identity::workload::SystemdUnits::of(cgroup);
    Caller {
        workload: Some(std::sync::Arc::new(Workload {
            uid: Some(uid),
            cgroup: Some(cgroup.into()),
            unit: units.unit,
            user_unit: units.user_unit,
            user_unit_uid: units.user_unit_uid,
            comm: Some("curl".into()),
            ..Workload::default()
        })),
        ..Caller::default()
    }
}

#[test]
fn workload_names_below_a_delegation_boundary_do_not_rename_the_unit() {
    let fake = "/user.slice/user-1000.slice/user@1000.service/app.slice/billing-agent.service";
    let real = "/system.slice/billing-agent.service";
    let cases: &[(&str, &str, bool)] = &[
        ("unit: billing-agent.service", real, true),
        // The user made a cgroup called billing-agent.service below its own manager: it is
        // in unit user@1000.service, and only a user unit of that name.
        ("unit: billing-agent.service", fake, false),
        ("unit: user@1000.service", fake, true),
        ("user_unit: billing-agent.service", fake, true),
        ("user_unit: billing-agent.service", real, false),
        (
            "{ unit: user@1000.service, user_unit: billing-agent.service }",
            fake,
            true,
        ),
        (
            "{ unit: user@1001.service, user_unit: billing-agent.service }",
            fake,
            false,
        ),
        // Below a system service's (possibly delegated) subtree, likewise.
        (
            "unit: billing-agent.service",
            "/system.slice/ci-runner.service/billing-agent.service",
            false,
        ),
        // cgroup prefixes are whole components.
        ("cgroup: rt2/trusted", "/rt2/trusted", true),
        ("cgroup: rt2/trusted", "/rt2/trusted/job-1", true),
        ("cgroup: /rt2/trusted/", "/rt2/trusted", true),
        ("cgroup: rt2/trusted", "/rt2/trustedX", false),
        ("cgroup: rt2/trusted", "/rt2/trustedX/job-1", false),
        ("cgroup: rt2/trusted", "/rt2", false),
        ("cgroup: system.slice/", real, true),
    ];
    for (cond, cgroup, want) in cases {
        let cond = if cond.starts_with('{') {
            cond.to_string()
        } else {
            format!("{{ {cond} }}")
        };
        let repo = one_rule(&format!("caller: {{ workload: {cond} }}"));
        let (action, _) = decide(&repo.snap(), "f", json!({}), &in_cgroup(cgroup, 1000));
        assert_eq!(action == Action::Allow, *want, "{cond} for {cgroup}");
    }
    let errors = one_rule("caller: { workload: { cgroup: rt2/../x } }").errors();
    assert!(
        errors.iter().any(|e| e.contains("no `.` or `..`")),
        "{errors:?}"
    );
}

#[test]
fn lint_warns_on_workload_names_the_workload_chooses() {
    let rules = [
        ("by-comm", "{ comm: billing-agent }"),
        ("by-user-unit", "{ user_unit: billing-agent.service }"),
        ("below-unit", "{ cgroup: system.slice/runner.service/jobs }"),
        ("comm-and-uid", "{ comm: billing-agent, uid: 1000 }"),
        ("by-unit", "{ unit: billing-agent.service }"),
        ("at-unit", "{ cgroup: system.slice/runner.service }"),
        ("plain-cgroup", "{ cgroup: rt2/trusted }"),
    ];
    let mut text = HEAD.to_string();
    for (name, w) in rules {
        text.push_str(&format!(
            "  - {{ name: {name}, function: f, caller: {{ workload: {w} }}, action: allow }}\n"
        ));
    }
    let findings = lint_of(&Repo::service(&text));
    let chosen: Vec<&String> = findings
        .iter()
        .filter(|f| f.contains("only by names it chooses itself"))
        .collect();
    for (line, name) in [(6, "by-comm"), (7, "by-user-unit"), (8, "below-unit")] {
        assert!(
            chosen
                .iter()
                .any(|f| f.contains(&format!("rule \"{name}\""))
                    && f.contains(&format!("svc.yaml:{line}:"))
                    && f.contains("warning")),
            "{name}: {findings:#?}"
        );
    }
    assert_eq!(chosen.len(), 3, "{chosen:#?}");
}

/// `callgate.yaml` trusting two providers, corp and a partner, each with its own audience.
fn two_providers(extra: &str) -> String {
    format!(
        r#"default_action: deny
identity:
{extra}  providers:
    - {{ name: corp, issuer: "https://idp.corp.example", audiences: [payments] }}
    - {{ name: partner, issuer: "https://sso.partner.example", audiences: [partner-api] }}
"#
    )
}

fn token_of(provider: &str, groups: &[&str]) -> Caller {
    Caller {
        provider: Some(provider.into()),
        ..user(groups)
    }
}

#[test]
fn groups_subjects_and_claims_belong_to_one_provider() {
    let rule =
        |cond: &str| format!("{HEAD}  - {{ name: r, function: f, action: allow, {cond} }}\n");
    let allowed = |repo: &Repo, caller: &Caller| {
        decide(&repo.snap(), "f", json!({}), caller).0 == Action::Allow
    };

    // The rule names its provider: the partner's "finance" is not corp's.
    let named = Repo::new(
        &two_providers(""),
        &[(
            "svc.yaml",
            &rule("caller: { provider: corp, groups: [finance] }"),
        )],
    );
    assert!(allowed(&named, &token_of("corp", &["finance"])));
    assert!(!allowed(&named, &token_of("partner", &["finance"])));
    assert!(!allowed(&named, &user(&["finance"])), "no provider at all");
    let (_, trace) = named.snap().explain(
        named.snap().service("svc").unwrap(),
        &Call {
            function: "f".into(),
            ..Default::default()
        },
        &token_of("partner", &["finance"]),
    );
    assert!(
        trace.iter().any(|t| t.why.contains("provider \"corp\"")),
        "{trace:?}"
    );

    // The repository names a default: rules without `provider:` mean corp's.
    let by_default = Repo::new(
        &two_providers("  default_provider: corp\n"),
        &[("svc.yaml", &rule("caller: { groups: [finance] }"))],
    );
    assert!(allowed(&by_default, &token_of("corp", &["finance"])));
    assert!(!allowed(&by_default, &token_of("partner", &["finance"])));
    for cond in [
        "caller: { subject: u }",
        "caller: { groups_all: [finance] }",
        "caller: { claims: { tenant: acme } }",
    ] {
        let repo = Repo::new(
            &two_providers("  default_provider: corp\n"),
            &[("svc.yaml", &rule(cond))],
        );
        let partner = Caller {
            claims: json!({"tenant": "acme"}),
            ..token_of("partner", &["finance"])
        };
        assert!(!allowed(&repo, &partner), "{cond}");
        let corp = Caller {
            provider: Some("corp".into()),
            ..partner
        };
        assert!(allowed(&repo, &corp), "{cond}");
    }

    // Two providers, no default, a rule that does not say whose groups: it does not compile.
    for cond in [
        "caller: { groups: [finance] }",
        "caller: { subject: u }",
        "caller: { claims: { tenant: acme } }",
    ] {
        let errors = Repo::new(&two_providers(""), &[("svc.yaml", &rule(cond))]).errors();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("svc.yaml:6") && e.contains("add `provider:`")),
            "{cond}: {errors:?}"
        );
    }
    // A provider that is not configured, as a rule's or as the default.
    let errors = Repo::new(
        &two_providers(""),
        &[(
            "svc.yaml",
            &rule("caller: { provider: crop, groups: [finance] }"),
        )],
    )
    .errors();
    assert!(
        errors.iter().any(|e| e.contains("\"crop\" is not one of")),
        "{errors:?}"
    );
    let errors = Repo::new(
        &two_providers("  default_provider: crop\n"),
        &[("svc.yaml", &rule("caller: { authenticated: true }"))],
    )
    .errors();
    assert!(
        errors.iter().any(|e| e.contains("\"crop\" is not one of")),
        "{errors:?}"
    );

    // `authenticated: true` alone asks for a verified token from any provider.
    let any = Repo::new(
        &two_providers(""),
        &[("svc.yaml", &rule("caller: { authenticated: true }"))],
    );
    assert!(allowed(&any, &token_of("partner", &[])));

    // With one provider, it is the default.
    let one = Repo::new(
        "identity:\n  providers:\n    - { name: corp, issuer: \"https://idp.corp.example\", audiences: [payments] }\n",
        &[("svc.yaml", &rule("caller: { groups: [finance] }"))],
    );
    assert!(allowed(&one, &token_of("corp", &["finance"])));
    assert!(!allowed(&one, &token_of("partner", &["finance"])));
}

#[test]
fn token_exchange_credentials_are_checked() {
    let svc = "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: rest\nfunctions:\n  f: { route: \"GET /x\" }\nrules:\n  - { name: a, function: f, action: allow }\ncredentials:\n  inject: { header: Authorization, from: { credential: per-caller }, format: \"Bearer {}\" }\n";
    let good = "default_action: deny\ncredentials:\n  per-caller:\n    token_exchange:\n      token_url: https://sso.example/token\n      client_id: gw\n      client_secret: { env: GW_SECRET }\n      audience: ledger\n      scopes: [read]\n      client_auth: client_secret_post\n";
    let errors = Repo::new(good, &[("svc.yaml", svc)]).errors().join("\n");
    assert!(errors.contains("configure identity.providers"), "{errors}");
    let good = format!(
        "{good}identity:\n  providers:\n    - {{ name: idp, issuer: https://sso.example, audiences: [api] }}\n"
    );
    let snap = Repo::new(&good, &[("svc.yaml", svc)]).snap();
    let x = snap.credentials["per-caller"]
        .token_exchange
        .as_ref()
        .unwrap();
    assert_eq!(x.audience.as_deref(), Some("ledger"));

    let bad = "default_action: deny\ncredentials:\n  per-caller:\n    token_exchange:\n      token_url: http://sso.example/token\n      client_id: \"\"\n      client_secret: { credential: other }\n      timeout_s: 60\n";
    let errors = Repo::new(bad, &[("svc.yaml", svc)]).errors().join("\n");
    for needle in [
        "token_url must be an https URL",
        "client_id must not be empty",
        "client_secret: give exactly one of env, file or systemd",
        "audience or resource",
        "timeout_s must be from 1 to 10",
    ] {
        assert!(errors.contains(needle), "{needle:?} in:\n{errors}");
    }
    let both = "default_action: deny\ncredentials:\n  x:\n    env: A\n    token_exchange: { token_url: https://a/t, client_id: gw, audience: l }\n";
    let errors = Repo::new(both, &[]).errors().join("\n");
    assert!(errors.contains("exactly one of"), "{errors}");
}

/// A credential-injecting service matched on every port of a loopback address is warned
/// about: a governed workload can open a listener there and receive the credential (found by
/// an attacker's pass, which read the injected key on a socket of its own).
#[test]
fn lint_warns_on_credentials_sent_to_any_local_port() {
    for (hosts, warned) in [
        (r#"["127.0.0.41"]"#, true),
        (r#"["127.0.0.0/8"]"#, true),
        (r#"["localhost"]"#, true),
        (r#"["0.0.0.0/0"]"#, true),
        (r#"["::ffff:127.0.0.1"]"#, true),
        (r#"["127.0.0.41:8080"]"#, false),
        (r#"["payments.internal"]"#, false),
    ] {
        let text = format!(
            "service: svc\nmatch: {{ hosts: {hosts} }}\nprotocol: rest\nfunctions:\n  f: {{ route: \"GET /x\" }}\nrules:\n  - {{ name: r, function: f, caller: {{ workload: {{ uid: 1000 }} }}, action: allow }}\ncredentials:\n  inject: {{ header: X-Api-Key, from: {{ env: KEY }} }}\n"
        );
        let findings = lint_of(&Repo::service(&text));
        let got = findings
            .iter()
            .any(|f| f.contains("is taken for this service") && f.contains("svc.yaml:2:"));
        assert_eq!(got, warned, "{hosts}: {findings:#?}");
    }
}

/// A JSON-RPC or MCP service's `endpoint`: a request to another path of its host is not a
/// message whatever its body says (a REST route of the same server would run it as sent), but
/// the undeclared `METHOD /path`, decided by the default; on the endpoint, messages as before.
/// Without an endpoint, lint says what that leaves open; one on another protocol, or one that
/// is not a path, does not compile.
#[test]
fn rpc_services_are_spoken_on_their_endpoint_only() {
    use callgate::call::Role;
    use callgate::extract::{Kind, extract};
    let svc = |endpoint: &str| {
        format!(
            "service: tools\nmatch: {{ hosts: [\"tools:80\"] }}\nprotocol: mcp\n{endpoint}\
             functions:\n  search_docs: {{}}\n\
             rules:\n  - {{ name: search, function: search_docs, caller: {{ groups: [a] }}, action: allow }}\n"
        )
    };
    let repo = Repo::service(&svc("endpoint: [/mcp]\n"));
    let snap = repo.snap();
    let surface = &snap.service("tools").expect("tools").surface;
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let one = |method: &str, path: &str, body: Option<&[u8]>| {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request")
            .into_parts();
        let got = extract(Kind::Mcp, surface, &parts, body, false).expect("extracted");
        let c = &got.calls[0];
        (c.function.clone(), c.role, c.partial)
    };
    let refused = |method: &str, path: &str, body: &[u8]| {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request")
            .into_parts();
        extract(Kind::Mcp, surface, &parts, Some(body), false)
            .err()
            .map(|e| e.code())
    };
    // A message off the endpoint is refused, whatever a rule for every function would say
    // of `POST /mcp/x` (Starlette's mount serves it); the first value of a body is what a Go
    // decoder reads.
    let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
    for (path, body) in [
        ("/mcp/x", &call[..]),
        ("/mcpx", &call[..]),
        ("/mcp;x", &ping[..]),
        ("/v1/refund", br#"{"id":1,"result":null,"Method":"x"}"#),
        ("/v1/refund", br#"[{"method":"x"}]"#),
        ("/v1/refund", br#"{"method":"x"} trailing"#),
    ] {
        assert_eq!(refused("POST", path, body), Some("bad_request"), "{path}");
    }
    assert_eq!(
        one("POST", "/mcp", Some(ping)),
        ("ping".into(), Role::Session, false)
    );
    // The endpoint in another case or with a trailing `/` is the endpoint: Express routes
    // both there.
    for path in ["/mcp/", "/MCP", "/Mcp/"] {
        assert_eq!(one("POST", path, Some(ping)).1, Role::Session, "{path}");
        assert_eq!(one("POST", path, Some(call)).0, "x", "{path}");
    }
    assert_eq!(one("GET", "/mcp", None).1, Role::Session);
    assert_eq!(one("DELETE", "/mcp?x=1", None).1, Role::Session);
    let refund = br#"{"amount":5000}"#;
    for (method, path, body) in [
        ("POST", "/v1/refund", Some(&refund[..])),
        ("POST", "/mcp/x", Some(&refund[..])),
        ("POST", "/%6dcp", Some(&b"amount=5"[..])),
        ("GET", "/v1/customers", None),
        ("DELETE", "/v1/items/42", None),
    ] {
        let (function, role, partial) = one(method, path, body);
        assert_eq!(function, format!("{method} {path}"));
        assert_eq!(role, Role::Governed, "{method} {path}");
        assert_eq!(
            partial,
            body.is_some(),
            "{method} {path}: its body is not read"
        );
        let call = callgate::call::Call {
            function,
            ..Default::default()
        };
        let d = snap.decide(snap.service("tools").expect("tools"), &call, &user(&["a"]));
        assert_eq!(d.action, Action::Deny, "{method} {path}");
    }

    let open = lint_of(&Repo::service(&svc(""))).join("\n");
    assert!(open.contains("has no `endpoint`"), "{open}");
    assert!(!lint_of(&repo).join("\n").contains("endpoint"));
    let rest = "service: r\nmatch: { hosts: [\"r:80\"] }\nprotocol: rest\nendpoint: [/x]\nfunctions:\n  f: { route: \"GET /f\" }\nrules: []\n";
    let errs = Repo::service(rest).errors().join("\n");
    assert!(
        errs.contains("`endpoint` is for JSON-RPC and MCP"),
        "{errs}"
    );
    let errs = Repo::service(&svc("endpoint: [mcp, \"/a?b\"]\n"))
        .errors()
        .join("\n");
    assert!(
        errs.contains("\"mcp\" is not a path") && errs.contains("\"/a?b\" is not a path"),
        "{errs}"
    );
}

/// A multipart `POST` to a `rest` service is read for a `_method` part (Rails, Laravel, Slim
/// route by it), up to `http.max_body_kb`; a service whose server routes by no such field says
/// `paths: { no_method_override: true }`, and its uploads stream unread, at any size.
#[test]
fn uploads_are_read_for_a_method_field_unless_the_server_takes_none() {
    use callgate::extract::{Kind, extract};
    let service = |paths: &str| {
        Repo::service(&format!(
            "service: svc\nmatch: {{ hosts: [\"svc:80\"] }}\nprotocol: rest\n{paths}\
             functions:\n  upload: {{ route: \"POST /v1/files\" }}\n"
        ))
    };
    let post = http::Request::builder()
        .method("POST")
        .uri("/v1/files")
        .header("content-type", "multipart/form-data; boundary=XB")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    let body =
        b"--XB\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XB--\r\n";
    let (strict, streaming) = (
        service(""),
        service("paths: { no_method_override: true }\n"),
    );
    let (strict, streaming) = (strict.snap(), streaming.snap());
    let strict = &strict.service("svc").expect("svc").surface;
    let streaming = &streaming.service("svc").expect("svc").surface;
    assert!(Kind::Rest.needs_body(&post, strict));
    assert!(!Kind::Rest.needs_body(&post, streaming));
    let refused = extract(Kind::Rest, strict, &post, Some(body), false);
    assert_eq!(refused.err().map(|e| e.code()), Some("bad_method"));
    let call = extract(Kind::Rest, streaming, &post, None, true).expect("read");
    assert!(
        call.calls[0].partial,
        "an unread upload: no condition holds on it"
    );
}

/// A `rest` or `http` path ending in a format suffix (`/items/7.json`) has a second reading,
/// the one Rails routes (`/items/7`), with the same query and body; a service whose server
/// reads no suffix says `paths: { no_format_suffix: true }` and has only the one. A path
/// whose literals match a route only in another case (`/Items/latest`) has the reading of a
/// server that matches them in their own case (Rails, Flask), unless `paths: { any_case: true }`.
#[test]
fn other_servers_readings_of_a_path_are_decided_too() {
    use callgate::extract::{Kind, Reading, other_readings};
    let service = |paths: &str| {
        Repo::service(&format!(
            "service: svc\nmatch: {{ hosts: [\"svc:80\"] }}\nprotocol: rest\n{paths}\
             functions:\n  get_item: {{ route: \"GET /items/{{id}}\" }}\n\
             \x20 latest: {{ route: \"GET /items/latest\" }}\n\
             \x20 export: {{ route: \"GET /items/{{id}}/export.csv\" }}\n"
        ))
    };
    let get = |uri: &str| {
        http::Request::builder()
            .uri(uri)
            .body(())
            .expect("request")
            .into_parts()
            .0
    };
    let (all, plain) = (
        service(""),
        service("paths: { no_format_suffix: true, any_case: true }\n"),
    );
    let (all, plain) = (all.snap(), plain.snap());
    let all = &all.service("svc").expect("svc").surface;
    let plain = &plain.service("svc").expect("svc").surface;
    let readings = |surface, kind, uri: &str| -> Vec<(Reading, String, serde_json::Value)> {
        let parts = get(uri);
        // As the gateway asks: with the route its own reading took.
        let route = callgate::extract::extract(kind, surface, &parts, None, false)
            .ok()
            .and_then(|e| e.route);
        other_readings(kind, surface, (&parts, route), None, false)
            .into_iter()
            .map(|(r, e)| {
                let call = e.expect("extracted").calls.remove(0);
                (r, call.function, call.args)
            })
            .collect()
    };
    assert_eq!(
        readings(all, Kind::Rest, "/items/7.json?x=1"),
        [(
            Reading::FormatSuffix,
            "get_item".into(),
            serde_json::json!({"id": "7", "x": "1"})
        )]
    );
    assert_eq!(
        readings(all, Kind::Rest, "/Items/latest"),
        [(
            Reading::ExactCase,
            "GET /Items/latest".into(),
            serde_json::json!({})
        )]
    );
    assert_eq!(
        readings(all, Kind::Rest, "/items/LATEST.json"),
        [
            (
                Reading::FormatSuffix,
                "latest".into(),
                serde_json::json!({})
            ),
            (
                Reading::FormatSuffixExactCase,
                "get_item".into(),
                serde_json::json!({"id": "LATEST"})
            ),
        ]
    );
    for none in ["/items/7", "/items/latest", "/items/7/export.csv"] {
        assert!(readings(all, Kind::Rest, none).is_empty(), "{none}");
    }
    // A route's literal in another case is no declaration of that spelling.
    assert_eq!(readings(all, Kind::Rest, "/items/7/EXPORT.csv").len(), 2);
    for uri in ["/items/7.json", "/Items/latest", "/items/LATEST.json"] {
        assert!(readings(plain, Kind::Rest, uri).is_empty(), "{uri}");
        assert!(readings(all, Kind::Grpc, uri).is_empty(), "{uri}");
    }
}

/// A test case's `request` is read as the gateway reads it: its path canonical, its call
/// extracted by the service's protocol, a format suffix read as Rails reads it, and a request
/// the gateway refuses before deciding (400) is a deny no rule made.
#[test]
fn request_cases_are_read_as_the_gateway_reads_requests() {
    let repo = Repo::new(
        "default_action: deny\n",
        &[(
            "items.yaml",
            "service: items\nmatch: { hosts: [\"items:80\"] }\nprotocol: rest\n\
             functions:\n  get_item: { route: \"GET /items/{id}\" }\n\
             \x20 put_item: { route: \"PUT /items/{id}\" }\n\
             rules:\n\
             \x20 - { name: not-secret, function: get_item, args: { id: { eq: secret } }, action: deny }\n\
             \x20 - { name: small-puts, function: put_item, args: { n: { max: 10 } }, action: allow }\n\
             \x20 - { name: reads, function: get_item, action: allow }\n",
        )],
    );
    std::fs::create_dir_all(repo.0.join("tests")).unwrap();
    let case = |name: &str, method: &str, path: &str, body: &str, expect: &str| {
        format!(
            "  - name: {name}\n    request: {{ destination: \"items:80\", method: {method}, \
             path: \"{path}\"{body} }}\n    expect: {expect}\n"
        )
    };
    let cases = [
        case(
            "decoded",
            "GET",
            "/items/%73ecret",
            "",
            "{ action: deny, rule: not-secret }",
        ),
        case(
            "merged",
            "GET",
            "//items//secret",
            "",
            "{ action: deny, rule: not-secret }",
        ),
        case(
            "suffixed",
            "GET",
            "/items/secret.json",
            "",
            "{ action: deny }",
        ),
        case(
            "suffixed allow",
            "GET",
            "/items/secret.json",
            "",
            "{ action: allow }",
        ),
        case(
            "plain suffix",
            "GET",
            "/items/7.json",
            "",
            "{ action: allow, rule: reads }",
        ),
        case("semicolon", "GET", "/items/x;y", "", "{ action: deny }"),
        case(
            "body",
            "PUT",
            "/items/1",
            ", body: { n: 5 }",
            "{ action: allow, rule: small-puts }",
        ),
        case(
            "twice",
            "PUT",
            "/items/1?n=5",
            ", body: { n: 50 }",
            "{ action: deny }",
        ),
    ];
    std::fs::write(
        repo.0.join("tests/items.yaml"),
        format!("tests:\n{}", cases.concat()),
    )
    .unwrap();
    let (loaded, snap) = policy::load_snapshot(&repo.0).expect("loads");
    let outcomes = policy::testing::run(&loaded, &snap);
    let failed: Vec<(&str, &str)> = outcomes
        .iter()
        .filter_map(|o| Some((o.name.as_str(), o.failure.as_deref()?)))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0].0, "suffixed allow");
    assert!(
        failed[0].1.contains("400 ambiguous_path"),
        "{}",
        failed[0].1
    );
    assert_eq!(outcomes.len(), cases.len());
}

/// A `HEAD` is the `GET` route of its path, unless a `HEAD` route names it: servers run the
/// `GET` handler for it.
#[test]
fn a_head_takes_the_get_route_unless_one_of_its_own_names_it() {
    let repo = Repo::service(
        "service: svc\nmatch: { hosts: [\"svc:80\"] }\nprotocol: rest\n\
         functions:\n  get_item: { route: \"GET /items/{id}\" }\n\
         \x20 probe: { route: \"HEAD /items/probe\" }\n",
    );
    let snap = repo.snap();
    let surface = &snap.service("svc").expect("svc").surface;
    let route = |m: &str, p: &str| surface.route(m, p).map(|(f, _)| f.to_string());
    assert_eq!(route("HEAD", "/items/7").as_deref(), Some("get_item"));
    assert_eq!(route("HEAD", "/items/probe").as_deref(), Some("probe"));
    assert_eq!(route("GET", "/items/probe").as_deref(), Some("get_item"));
    assert_eq!(route("POST", "/items/7"), None);
}
