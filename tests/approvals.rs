//! Calls held for a human, end to end: an unmodified curl in an enabled cgroup calls a
//! function whose rule says `approve`; its request stays open while the test answers through
//! `callgate approvals`, as an operator would, or on the approvals page in headless
//! Chromium after logging in at a real OpenID provider. Announcements go to a real local HTTP
//! receiver that is down for its first delivery.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use callgate_e2e::*;
use serde_json::Value;

const CARD: &str = "4111 1111 1111 1111";
/// In a held call's arguments beside the card: the service masks neither, yet neither may be
/// shown to approvers or kept in the approvals state.
const EMAIL: &str = "jane.doe@example.com";
const API_KEY: &str = "opaque-0b1c2d3e4f";

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    up: Party,
    idp: Oidc,
    /// The approvals page.
    web: String,
    dir: TestDir,
}

fn setup(test: &str) -> Option<Setup> {
    setup_with(test, "")
}

/// [`setup`] with more `approvals:` settings (indented lines).
fn setup_with(test: &str, approvals: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) || !node_parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-approvals");
    let web_port = free_port();
    let web = format!("http://127.0.0.1:{web_port}");
    let idp = Oidc::start_with(&dir, &[format!("{web}/callback")]);
    let client_secret = dir.join("approvals-client.secret");
    fs::write(&client_secret, "callgate-approvals-secret\n").expect("client secret");
    // The upstream doubles as the webhook receiver (`/hook`), failing its first delivery.
    let up = upstream_with(&dir, None, &["--fail-hooks", "1"]);
    let repo = format!(
        r#"default_action: deny
unknown_destination: deny
identity:
  providers:
    - {{ name: test-idp, issuer: "{}", audiences: [payments], groups_claim: groups }}
"#,
        idp.issuer()
    );
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  close_account: {{ route: "POST /v1/accounts/{{account}}/close" }}
rules:
  - name: huge-refunds-need-the-cfo
    function: refund
    args: {{ amount: {{ gt: 10000 }} }}
    action: approve
    approval: {{ approvers: {{ subjects: [cfo] }}, timeout: 60s }}
  - name: refunds-need-a-lead
    function: refund
    action: approve
    approval: {{ approvers: {{ groups: [finance-leads] }}, timeout: 60s, grant: 1h }}
  - name: closing-is-urgent
    function: close_account
    action: approve
    approval: {{ approvers: {{ subjects: [alice] }}, timeout: 2s }}
response:
  mask: [card_number]
"#,
        port = up.port
    );
    let policies = policy_repo(&dir, &repo, &[("payments", &service)]);
    let gw = gateway_with_config(
        &policies,
        &format!(
            r#"stop_grace_s: 30
approvals:
  webhook_url: http://127.0.0.1:{}/hook
  page_url: https://callgate.example/
  webhook_attempts: 4
{approvals}admin_http:
  listen: 127.0.0.1:{web_port}
  login:
    issuer: "{}"
    client_id: callgate-approvals
    client_secret_file: {}
    scopes: [profile, groups]
"#,
            up.port,
            idp.issuer(),
            client_secret.display()
        ),
        &dir,
    );
    let cg = TestCgroup::new("approvals");
    gw.enable(&cg);
    Some(Setup {
        gw,
        cg,
        up,
        idp,
        web,
        dir,
    })
}

/// A curl running in the cgroup, its request possibly held.
struct Call {
    child: Child,
    out: PathBuf,
}

impl Call {
    /// Waits (at most 30 s) for curl to end: (HTTP status, body); status 0 if it got none.
    fn finish(mut self) -> (u16, String) {
        let done = wait_for(Duration::from_secs(30), || self.child.try_wait().ok()?);
        assert!(done.is_some(), "curl did not finish");
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Setup {
    /// Starts `POST path` with `body` from the cgroup, as `client` (a service account of the
    /// provider) or without a token; `max_time` bounds curl itself.
    fn start(&self, path: &str, body: &str, client: Option<&str>, max_time: u32) -> Call {
        let out = self.dir.join(unique("curl"));
        let url = format!("http://127.0.0.1:{}{path}", self.up.port);
        let auth = client.map(|c| format!("Authorization: Bearer {}", self.idp.token(c, None)));
        let max_time = max_time.to_string();
        let mut argv = vec![
            "curl",
            "-sS",
            "--max-time",
            &max_time,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ];
        if let Some(a) = &auth {
            argv.extend(["-H", a]);
        }
        argv.push(&url);
        Call {
            child: self.cg.spawn(&argv, &out),
            out,
        }
    }

    fn refund(&self, client: Option<&str>) -> Call {
        let body = format!(
            r#"{{"amount": 250, "card": "{CARD}", "contact": "{EMAIL}", "api_key": "{API_KEY}"}}"#
        );
        self.start("/v1/payments/p_1/refund", &body, client, 60)
    }

    /// A GET on the admin listener, from outside any enabled cgroup: the body of a 200.
    fn admin_get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10"])
            .arg(format!("{}{path}", self.web))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "GET {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.gw.cli(args)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "callgate {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.gw.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `callgate <args> --json` parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.cli_ok(&args)).expect("JSON from the CLI")
    }

    fn list(&self, all: bool) -> Vec<Value> {
        let args: &[&str] = if all {
            &["approvals", "list", "--all"]
        } else {
            &["approvals", "list"]
        };
        self.json(args).as_array().cloned().unwrap_or_default()
    }

    /// The pending request for `function` (waits up to 20 s for it to appear).
    fn pending(&self, function: &str) -> Value {
        self.first_listed(function, false)
    }

    /// The request for `function` in whatever state (waits up to 20 s for it to appear): for a
    /// request that may end before a poll could see it pending.
    fn requested(&self, function: &str) -> Value {
        self.first_listed(function, true)
    }

    /// The first request for `function` that `approvals list` shows (`--all` when `all`).
    fn first_listed(&self, function: &str, all: bool) -> Value {
        wait_for(Duration::from_secs(20), || {
            self.list(all)
                .into_iter()
                .find(|r| r["function"] == function)
        })
        .unwrap_or_else(|| {
            let which = if all { "" } else { "pending " };
            panic!("no {which}request for {function}\n{}", self.gw.log())
        })
    }

    /// The state of request `id` once it is no longer pending (waits up to 10 s).
    fn ended(&self, id: &str) -> Value {
        wait_for(Duration::from_secs(10), || {
            self.list(true)
                .into_iter()
                .find(|r| r["id"] == id && r["state"] != "pending")
        })
        .unwrap_or_else(|| panic!("request {id} did not end\n{}", self.gw.log()))
    }

    /// Requests the upstream received on `path` so far.
    fn upstream_saw(&self, path: &str) -> usize {
        self.up
            .requests()
            .iter()
            .filter(|r| r["path"] == path)
            .count()
    }
}

impl Setup {
    /// A refund made by a Python process in `cg` that first names itself `comm` (a Python
    /// bytes literal, at most 15 bytes) with `prctl(PR_SET_NAME)`: the process and the file
    /// it prints its answer's status to.
    fn refund_as(&self, cg: &TestCgroup, comm: &str) -> (Child, PathBuf) {
        let token = self.idp.token("billing-agent", None);
        let code = format!(
            r#"
import ctypes, http.client, json
ctypes.CDLL(None).prctl(15, {comm}, 0, 0, 0)
c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=60)
c.request("POST", "/v1/payments/p_9/refund", body=json.dumps({{"amount": 250}}),
          headers={{"Content-Type": "application/json", "Authorization": "Bearer {token}"}})
r = c.getresponse()
print(r.status)
"#,
            port = self.up.port
        );
        let out = self.dir.join(unique("refund-as"));
        (cg.spawn(&["python3", "-c", &code], &out), out)
    }
}

/// Where the browser test leaves its screenshots.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// `tests/parties/approvals_browser.mjs` running as `person`.
struct Browser {
    child: Child,
    out: PathBuf,
    shot: PathBuf,
    script: PathBuf,
}

impl Setup {
    /// Starts the browser as `person`: looking at request `id` (`Some`), or waiting on the
    /// list for one to appear (`None`, after writing `ready`); and approving it, with
    /// `comment`, when given one. With `next`, it starts at `/login?next=<next>` (put in the
    /// URL as given) instead of at the list.
    fn browser(
        &self,
        person: &str,
        id: Option<&str>,
        approve: Option<&str>,
        next: Option<&str>,
        shot: &Path,
        ready: &Path,
    ) -> Browser {
        let script = node_script("approvals_browser.mjs");
        let out = self.dir.join(unique("browser"));
        let mut cmd = Command::new("timeout");
        cmd.args(["90", "node"])
            .arg(&script)
            .args(["--page", &self.web, "--person", person])
            .arg("--screenshot")
            .arg(shot);
        match id {
            Some(id) => cmd.args(["--id", id]),
            None => cmd.arg("--live").arg("--ready").arg(ready),
        };
        if let Some(c) = approve {
            cmd.args(["--approve", "--comment", c]);
        }
        if let Some(n) = next {
            cmd.arg(format!("--next={n}"));
        }
        let log = fs::File::create(&out).expect("browser output");
        let child = cmd
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("node");
        Browser {
            child,
            out,
            shot: shot.to_path_buf(),
            script,
        }
    }

    /// What the browser saw, once it is done (at most 100 s).
    fn seen(&self, mut b: Browser) -> Value {
        let status = wait_for(Duration::from_secs(100), || b.child.try_wait().ok()?)
            .expect("the browser did not finish");
        let _ = fs::remove_file(&b.script);
        let text = fs::read_to_string(&b.out).unwrap_or_default();
        let seen: Value = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("browser ({status}): {text}"));
        assert!(
            status.success(),
            "browser: {seen:#}\nscreenshot: {}\n{text}\n{}",
            b.shot.display(),
            self.gw.log()
        );
        seen
    }
}

/// `v` holds, at any depth, the refund's arguments: an `amount` key, the amount 250, or the
/// card number.
fn carries_arguments(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| k == "amount" || carries_arguments(v)),
        Value::Array(a) => a.iter().any(carries_arguments),
        Value::Number(n) => n.as_u64() == Some(250),
        Value::String(s) => s.contains(CARD),
        _ => false,
    }
}

/// The `n`th request for `function` waiting for an answer, once there is one (20 s at most).
fn pending(gw: &Gateway, function: &str, n: usize) -> Option<Value> {
    wait_for(Duration::from_secs(20), || {
        let out = gw.cli(&["approvals", "list", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let waiting: Vec<&Value> = v
            .as_array()?
            .iter()
            .filter(|r| r["function"] == function && r["state"] == "pending")
            .collect();
        waiting.get(n.checked_sub(1)?).map(|r| (*r).clone())
    })
}

fn id_of(r: &Value) -> String {
    r["id"].as_str().expect("request id").to_string()
}

#[test]
fn a_held_call_waits_for_an_approver() {
    let Some(s) = setup("a_held_call_waits_for_an_approver") else {
        return;
    };
    let refund_path = "/v1/payments/p_1/refund";

    // Held: the request is listed with the caller and masked arguments, and the upstream has
    // not been contacted.
    let call = s.refund(Some("billing-agent"));
    let r = s.pending("refund");
    let id = id_of(&r);
    assert_eq!(r["caller"]["subject"], "billing-agent", "{r}");
    assert_eq!(r["caller"]["groups"], serde_json::json!(["finance"]), "{r}");
    assert!(
        r["caller"]["cgroup"]
            .as_str()
            .is_some_and(|c| s.cg.path.ends_with(c.trim_start_matches('/'))),
        "{r}"
    );
    assert_eq!(r["rule"], "refunds-need-a-lead", "{r}");
    assert_eq!(r["args"]["amount"], 250, "{r}");
    assert!(!r.to_string().contains(CARD), "arguments are masked: {r}");
    assert_eq!(r["args"]["card"], "************1111", "{r}");
    assert_eq!(r["args"]["contact"], "[MASKED:email]", "{r}");
    assert_eq!(r["args"]["api_key"], "[MASKED:credential]", "{r}");
    let state = fs::read_to_string(s.gw.dir.join("state/approvals.json")).unwrap_or_default();
    assert!(
        state.contains("[MASKED:email]") && !state.contains(EMAIL) && !state.contains(API_KEY),
        "approvals.json keeps the arguments masked: {state}"
    );
    let held_for = r["expires_at_ms"].as_u64().unwrap() - r["requested_at_ms"].as_u64().unwrap();
    assert_eq!(held_for, 60_000, "{r}");
    assert_eq!(
        s.upstream_saw(refund_path),
        0,
        "held calls do not reach the upstream"
    );
    let shown = s.cli_ok(&["approvals", "show", &id]);
    assert!(shown.contains("refunds-need-a-lead") && shown.contains("arguments (masked)"));
    assert!(!shown.contains(CARD), "{shown}");
    let status = s.gw.status();
    assert_eq!(status["approvals"]["pending"], 1, "{status}");

    // The caller cannot approve its own call; a grant longer than the rule's is refused.
    let out = s.cli(&["approvals", "approve", &id, "--as", "billing-agent"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot approve their own call"), "{err}");
    let out = s.cli(&[
        "approvals",
        "approve",
        &id,
        "--grant",
        "2h",
        "--as",
        "alice",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("at most 1h"), "{err}");

    // Approved with a 30-minute grant: curl completes with the upstream's (masked) answer.
    s.cli_ok(&[
        "approvals",
        "approve",
        &id,
        "--grant",
        "30m",
        "--comment",
        "ticket 4711",
        "--as",
        "alice",
    ]);
    let (code, body) = call.finish();
    assert_eq!(code, 200, "{body}\n{}", s.gw.log());
    assert!(body.contains(refund_path) && !body.contains(CARD), "{body}");
    let rec = record_where(&s.gw, "the approved refund", |r| {
        r["function"] == "refund" && r["approval"]["request"] == id.as_str()
    });
    assert_eq!(rec["decision"]["action"], "approve", "{rec}");
    assert_eq!(rec["approval"]["verdict"]["by"], "alice", "{rec}");
    assert_eq!(
        rec["approval"]["verdict"]["comment"], "ticket 4711",
        "{rec}"
    );
    assert_eq!(rec["status"], 200, "{rec}");

    // Within the grant, the same caller's refund passes at once, without a new request.
    let (code, body) = s.refund(Some("billing-agent")).finish();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        s.list(true).len(),
        1,
        "no new request while the grant lasts"
    );
    let grants = s.json(&["approvals", "grants", "list"]);
    let grant = &grants[0];
    assert_eq!(grant["approved_by"], "alice", "{grants}");
    assert_eq!(grant["uses"], 1, "{grants}");
    assert_eq!(grant["caller"], "oidc:test-idp:billing-agent", "{grants}");
    let grant_id = grant["id"].as_str().unwrap();
    record_where(&s.gw, "the granted refund", |r| {
        r["approval"]["grant"] == grant_id
    });
    // The grant is the rule's that gave it: a refund another rule holds (the CFO's) is held,
    // never let through on it; the CFO denies it.
    let huge = s.start(
        refund_path,
        r#"{"amount": 2000000}"#,
        Some("billing-agent"),
        30,
    );
    let held = wait_for(Duration::from_secs(20), || {
        s.list(false)
            .into_iter()
            .find(|r| r["rule"] == "huge-refunds-need-the-cfo")
    })
    .unwrap_or_else(|| panic!("the huge refund was not held\n{}", s.gw.log()));
    s.cli_ok(&["approvals", "deny", &id_of(&held), "--as", "cfo"]);
    let (code, body) = huge.finish();
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("approval_denied") && body.contains("huge-refunds-need-the-cfo"),
        "{body}"
    );
    let rec = record_where(&s.gw, "the huge refund", |r| r["args"]["amount"] == 2000000);
    assert!(rec["approval"]["grant"].is_null(), "{rec}");
    assert_eq!(
        s.upstream_saw(refund_path),
        2,
        "only the approved and the granted refund ran"
    );

    // Revoked: the next refund is held again; denied, curl gets 403 saying by whom and why.
    s.cli_ok(&["approvals", "grants", "revoke", grant_id]);
    assert_eq!(
        s.json(&["approvals", "grants", "list"]),
        serde_json::json!([])
    );
    let call = s.refund(Some("billing-agent"));
    let id2 = id_of(&s.pending("refund"));
    s.cli_ok(&[
        "approvals",
        "deny",
        &id2,
        "--comment",
        "not twice",
        "--as",
        "alice",
    ]);
    let (code, body) = call.finish();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("denied by alice: not twice"), "{body}");
    assert_eq!(s.upstream_saw(refund_path), 2, "the denied call never left");
    assert_eq!(s.ended(&id2)["state"], "denied");

    // The three requests were announced; the receiver's first failure was retried. Announcements
    // link to the page and never carry the arguments.
    let hooks = wait_for(Duration::from_secs(15), || {
        let hooks: Vec<Value> =
            s.up.requests()
                .into_iter()
                .filter(|r| r["path"] == "/hook")
                .collect();
        (hooks.len() >= 4).then_some(hooks)
    })
    .unwrap_or_else(|| panic!("announcements: {:?}\n{}", s.up.requests(), s.gw.log()));
    for h in &hooks {
        let body: Value = serde_json::from_str(h["body"].as_str().unwrap()).expect("JSON");
        assert_eq!(body["event"], "approval_requested", "{body}");
        // Not a substring search for "250": request ids and timestamps may contain it.
        assert!(
            body.get("args").is_none() && !carries_arguments(&body),
            "{body}"
        );
    }
    let links: Vec<String> = hooks
        .iter()
        .filter_map(|h| serde_json::from_str::<Value>(h["body"].as_str()?).ok())
        .filter_map(|b| b["url"].as_str().map(str::to_owned))
        .collect();
    assert!(
        links.contains(&format!("https://callgate.example/approvals/{id}")),
        "{links:?}"
    );
    let webhook = &s.gw.status()["approvals"]["webhook"];
    assert_eq!(webhook["delivered"], 3, "{webhook}");
    assert!(webhook["retries"].as_u64().unwrap_or(0) >= 1, "{webhook}");

    // The same story in Prometheus terms, on the admin listener.
    let metrics = s.admin_get("/metrics");
    for line in [
        "callgate_calls_total{service=\"payments\",function=\"refund\",decision=\"approve\"} 4",
        "callgate_approvals_ended_total{outcome=\"approved\"} 1",
        "callgate_approvals_ended_total{outcome=\"granted\"} 1",
        "callgate_approvals_ended_total{outcome=\"denied\"} 2",
        "callgate_approvals_pending 0",
        "callgate_approval_webhook_delivered_total 3",
        "callgate_identity_keys_usable{name=\"test-idp\"} 1",
        "callgate_cgroups_enabled 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    for name in [
        "callgate_decision_duration_seconds_bucket",
        "callgate_upstream_duration_seconds_count",
        "callgate_connections_accepted_total",
        "callgate_records_written_total",
        "callgate_kernel_events_total{name=",
    ] {
        assert!(metrics.contains(name), "no {name} in\n{metrics}");
    }
    assert_eq!(s.admin_get("/readyz"), "ready\n");
    assert_eq!(s.admin_get("/healthz"), "ok\n");
}

#[test]
fn timeouts_and_clients_that_give_up_end_the_request() {
    let Some(s) = setup("timeouts_and_clients_that_give_up_end_the_request") else {
        return;
    };
    // Nobody answers within the rule's 2 s: 403 with the timeout in words.
    let started = Instant::now();
    let (code, body) = s.start("/v1/accounts/a_9/close", "{}", None, 30).finish();
    assert_eq!(code, 403, "{body}\n{}", s.gw.log());
    assert!(body.contains("approval timed out after 2s"), "{body}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let rec = record_where(&s.gw, "the timed-out call", |r| {
        r["function"] == "close_account"
    });
    assert_eq!(rec["approval"]["state"], "timed_out", "{rec}");
    assert!(
        rec["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("approval_timeout")),
        "{rec}"
    );
    assert_eq!(s.upstream_saw("/v1/accounts/a_9/close"), 0);

    // curl gives up after 2 s of a 60 s hold: the request is cancelled, not left pending.
    let body = format!(r#"{{"amount": 250, "card": "{CARD}"}}"#);
    let call = s.start("/v1/payments/p_2/refund", &body, None, 2);
    // On a slow machine curl may give up before a poll sees the request pending.
    let id = id_of(&s.requested("refund"));
    let (code, _) = call.finish();
    assert_eq!(code, 0, "curl timed out without an answer");
    assert_eq!(s.ended(&id)["state"], "cancelled");
    // Every held call ends in the log, whatever ends it.
    let rec = record_where(&s.gw, "the cancelled call", |r| {
        r["approval"]["request"] == id.as_str()
    });
    assert_eq!(rec["approval"]["state"], "cancelled", "{rec}");
    assert!(
        rec["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("approval_cancelled")),
        "{rec}"
    );
    // A body the gateway does not read for arguments is read before the call is held, so a
    // client that leaves is noticed then too.
    let out = s.dir.join(unique("curl"));
    let url = format!("http://127.0.0.1:{}/v1/payments/p_3/refund", s.up.port);
    let call = Call {
        child: s.cg.spawn(
            &[
                "curl",
                "-sS",
                "--max-time",
                "2",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                "opaque",
                &url,
            ],
            &out,
        ),
        out,
    };
    let id = wait_for(Duration::from_secs(20), || {
        s.list(true)
            .into_iter()
            .find(|r| r["function"] == "refund" && r["id"] != id.as_str())
    })
    .map(|r| id_of(&r))
    .expect("the opaque refund was held");
    let (code, _) = call.finish();
    assert_eq!(code, 0);
    assert_eq!(s.ended(&id)["state"], "cancelled");
    record_where(&s.gw, "the cancelled opaque call", |r| {
        r["approval"]["request"] == id.as_str() && r["approval"]["state"] == "cancelled"
    });
    assert_eq!(s.upstream_saw("/v1/payments/p_3/refund"), 0);
    // What an approver is shown is what would run: a query naming an argument the body names
    // differently (Flask would refund the body's 50,000, the page would have shown 5) is
    // refused before anything is held.
    let held = s.list(true).len();
    let (code, body) = s
        .start(
            "/v1/payments/p_4/refund?amount=5&to=customer",
            r#"{"amount": 50000, "to": "attacker"}"#,
            None,
            10,
        )
        .finish();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("ambiguous_argument"), "{body}");
    assert_eq!(s.list(true).len(), held, "nothing was held");
    let out = s.cli(&["approvals", "approve", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already cancelled"),
        "{err}"
    );
}

#[test]
fn requests_and_grants_survive_a_restart() {
    let Some(mut s) = setup("requests_and_grants_survive_a_restart") else {
        return;
    };
    // A grant for the finance agent; then the support bot's refund is held.
    let call = s.refund(Some("billing-agent"));
    let id = id_of(&s.pending("refund"));
    s.cli_ok(&[
        "approvals",
        "approve",
        &id,
        "--grant",
        "30m",
        "--as",
        "alice",
    ]);
    assert_eq!(call.finish().0, 200);
    let held = s.refund(Some("support-bot"));
    let held_id = id_of(&s.pending("refund"));

    // The gateway stops (SIGKILL) and comes back: the held client lost its connection, the
    // request is marked interrupted and its call recorded; the grant is still in force.
    s.gw.restart();
    let (code, _) = held.finish();
    assert_eq!(code, 0, "the held connection did not survive");
    let r = s.ended(&held_id);
    assert_eq!(r["state"], "interrupted", "{r}");
    let rec = record_where(&s.gw, "the interrupted call", |r| {
        r["approval"]["request"] == held_id.as_str()
    });
    assert_eq!(
        rec["decision"]["reason"], "interrupted by restart while awaiting approval",
        "{rec}"
    );
    assert_eq!(rec["caller"]["subject"], "support-bot", "{rec}");
    let grants = s.json(&["approvals", "grants", "list"]);
    assert_eq!(grants.as_array().map(Vec::len), Some(1), "{grants}");
    let (code, body) = s.refund(Some("billing-agent")).finish();
    assert_eq!(code, 200, "the grant still lets the agent through: {body}");
    let text = s.cli_ok(&["status"]);
    assert!(
        text.contains("approvals:     0 pending, 1 grants in force"),
        "{text}"
    );

    // A graceful stop (SIGTERM) with a call held: the request is interrupted, not cancelled
    // as if its client had gone away, its client is told so at once (not cut at the end of
    // the stop's grace, 30 s here), and the call's record says the stop ended it.
    let held = s.refund(Some("support-bot"));
    let held_id = id_of(&s.pending("refund"));
    let stopped = std::time::Instant::now();
    assert!(s.gw.terminate(Duration::from_secs(20)), "{}", s.gw.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "the stop waited for the held call: {:?}\n{}",
        stopped.elapsed(),
        s.gw.log()
    );
    let (code, body) = held.finish();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("approval_interrupted"), "{body}");
    s.gw.restart();
    let r = s.ended(&held_id);
    assert_eq!(r["state"], "interrupted", "{r}");
    let rec = record_where(&s.gw, "the call the stop interrupted", |r| {
        r["approval"]["request"] == held_id.as_str()
    });
    assert_eq!(rec["approval"]["state"], "interrupted", "{rec}");
    assert!(
        rec["decision"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("approval_interrupted")),
        "{rec}"
    );
}

#[test]
fn approvers_answer_on_the_web_page() {
    let Some(s) = setup("approvers_answer_on_the_web_page") else {
        return;
    };
    let shots = artifacts();
    let ready = s.dir.join("browser-ready");

    // Alice (finance-leads) logs in and keeps the list open; a call is held meanwhile and
    // shows up on its own (server-sent events). She sees masked arguments; a form without the
    // page's CSRF token is refused; her approval through the page lets the call through.
    let shot = shots.join("approvals-page.png");
    let alice = s.browser(
        "alice",
        None,
        Some("looked at it in the browser"),
        None,
        &shot,
        &ready,
    );
    let logged_in = wait_for(Duration::from_secs(60), || fs::metadata(&ready).ok());
    assert!(logged_in.is_some(), "alice did not get to the list");
    let call = s.refund(Some("billing-agent"));
    let id = id_of(&s.pending("refund"));
    let alice = s.seen(alice);
    println!("screenshot of the approvals page: {}", shot.display());
    assert_eq!(alice["live"], true, "{alice}");
    assert_eq!(alice["id"], id.as_str(), "{alice}");
    assert!(
        alice["header"].as_str().unwrap_or("").contains("alice"),
        "{alice}"
    );
    assert_eq!(alice["forged_status"], 403, "{alice}");
    // A log-out without the page's token is refused, and she stays logged in (she goes on to
    // approve through the page below).
    assert_eq!(alice["forged_logout_status"], 403, "{alice}");
    let args = alice["args"].as_str().unwrap_or("");
    assert!(
        args.contains("************1111") && !args.contains(CARD),
        "{alice}"
    );
    assert!(
        alice["flash"].as_str().unwrap_or("").contains("Approved"),
        "{alice}"
    );
    assert_eq!(alice["state"], "approved", "{alice}");
    assert!(
        fs::metadata(&shot).is_ok_and(|m| m.len() > 1000),
        "a screenshot was taken"
    );

    let (code, body) = call.finish();
    assert_eq!(code, 200, "{body}\n{}", s.gw.log());
    let rec = record_where(&s.gw, "the call approved on the page", |r| {
        r["approval"]["request"] == id.as_str()
    });
    let verdict = &rec["approval"]["verdict"];
    assert_eq!(verdict["by"], "alice", "{rec}");
    assert_eq!(verdict["via"], "web", "{rec}");
    assert_eq!(verdict["comment"], "looked at it in the browser", "{rec}");

    // Bob logs in too, but the rule names finance-leads: he neither sees nor can open the
    // next held call. He arrives through a log-in link whose `next` a browser would read as
    // `//evil.example/` (it drops the tab): after the real log-in he is still on the gateway.
    let call = s.refund(Some("support-bot"));
    let id = id_of(&s.pending("refund"));
    let shot = shots.join("approvals-bob.png");
    let hostile = "/%09/evil.example/approvals";
    let bob = s.seen(s.browser("bob", Some(&id), None, Some(hostile), &shot, &ready));
    assert_eq!(bob["landed_origin"], s.web.as_str(), "{bob}");
    assert!(
        !bob["landed"].as_str().unwrap_or("").contains("evil"),
        "{bob}"
    );
    assert_eq!(bob["listed"], false, "{bob}");
    assert_eq!(bob["detail_status"], 404, "{bob}");
    s.cli_ok(&["approvals", "deny", &id, "--as", "alice"]);
    assert_eq!(call.finish().0, 403);
}

/// A character that must never reach a person's terminal raw: controls (other than the line
/// breaks the output is made of), C1 and the bidi embeddings, overrides and isolates.
fn raw_control(c: char) -> bool {
    (c.is_control() && c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[test]
fn workload_names_are_shown_not_obeyed() {
    let Some(s) = setup("workload_names_are_shown_not_obeyed") else {
        return;
    };
    // A cgroup below the enabled one whose name moves the cursor up, clears the line, returns
    // the carriage and overrides the text direction; a process in it names itself (comm) with
    // a clear-screen, a BEL and a bidi override, then makes a call that is held.
    let name = "cg\x1b[1A\x1b[2K\rrefunds-ok pid 1\x08\x07\t\u{9b}2J\u{202e}evil\u{2066}";
    let hostile = s.cg.child(name);
    let comm = r#"b"\x1b[2J\x1b[H\r\x07\xe2\x80\xaeok""#;
    let (mut child, out) = s.refund_as(&hostile, comm);
    let pid = child.id();
    let r = s.pending("refund");
    let id = id_of(&r);
    assert!(
        r["caller"]["comm"].as_str().unwrap_or("").contains('\x1b'),
        "the comm was set: {r}"
    );
    assert!(
        r["caller"]["cgroup"].as_str().unwrap_or("").contains(name),
        "{r}"
    );

    for args in [
        &["approvals", "list"][..],
        &["approvals", "list", "--all"],
        &["approvals", "show", &id],
        &["approvals", "grants", "list"],
        &["status"],
    ] {
        let out = s.cli(args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8 output");
        assert!(
            !text.chars().any(raw_control),
            "callgate {args:?} prints raw control characters:\n{text:?}"
        );
        if args.get(1) == Some(&"list") {
            // The real call, on one line: its id, call and rule.
            let line = text
                .lines()
                .find(|l| l.starts_with(&id))
                .unwrap_or_else(|| panic!("{id} not listed:\n{text}"));
            assert!(
                line.contains("payments.refund") && line.ends_with("refunds-need-a-lead"),
                "{line}"
            );
        }
    }
    let shown = String::from_utf8(s.cli(&["approvals", "show", &id]).stdout).unwrap();
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} line:\n{shown}"))
            .to_string()
    };
    assert_eq!(line("id:"), format!("id:           {id}"));
    assert_eq!(line("call:"), "call:         payments.refund");
    assert!(line("rule:").starts_with("rule:         refunds-need-a-lead "));
    let workload = line("workload:");
    assert!(
        workload.starts_with(&format!(
            "workload:     pid {pid} \\x1b[2J\\x1b[H\\x0d\\x07\\u{{202e}}ok cgroup "
        )),
        "{workload}"
    );
    assert!(
        workload.contains(
            "cg\\x1b[1A\\x1b[2K\\x0drefunds-ok pid 1\\x08\\x07\\x09\\u{9b}2J\\u{202e}evil\\u{2066}"
        ),
        "{workload}"
    );
    assert_eq!(
        shown.lines().filter(|l| l.starts_with("workload:")).count(),
        1
    );

    s.cli_ok(&["approvals", "deny", &id, "--as", "alice"]);
    let done = wait_for(Duration::from_secs(30), || child.try_wait().ok()?);
    assert!(done.is_some(), "the held call did not end");
    assert_eq!(fs::read_to_string(&out).unwrap_or_default().trim(), "403");

    // The daemon's log names the process too (`call held for approval`, with its comm):
    // escaped, one line per event. (A connection that ended well is logged at debug only.)
    let log = wait_for(Duration::from_secs(10), || {
        let log = String::from_utf8(fs::read(s.gw.dir.join("gateway.log")).ok()?).ok()?;
        log.contains("call held for approval").then_some(log)
    })
    .unwrap_or_else(|| panic!("the held call was not logged\n{}", s.gw.log()));
    assert!(
        !log.chars().any(raw_control),
        "the log carries raw control characters:\n{log:?}"
    );
    assert!(log.contains("\\x1b[2J"), "{log}");

    // And so does the record, and `records list` shows it escaped.
    let out = Command::new(callgate_bin())
        .args(["records", "list", "--dir"])
        .arg(s.gw.dir.join("state/records"))
        .output()
        .expect("records list");
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(
        out.status.success() && text.contains("payments/refund"),
        "{text}"
    );
    assert!(!text.chars().any(raw_control), "{text:?}");
}

#[test]
fn slack_announcements_carry_workload_names_as_text() {
    let Some(s) = setup_with(
        "slack_announcements_carry_workload_names_as_text",
        "  webhook_format: slack\n",
    ) else {
        return;
    };
    // Processes whose names would ping the channel, make a link, and format the message.
    let comms = [
        (
            r#"b"<!channel>""#,
            "`billing-agent via &lt;!channel&gt; (uid 0)`",
        ),
        (
            r#"b"<http://e.vl|R>""#,
            "`billing-agent via &lt;http://e.vl|R&gt; (uid 0)`",
        ),
        (
            r#"b"*b*_i_~s~`x`&""#,
            "`billing-agent via *b*_i_~s~\u{02cb}x\u{02cb}&amp; (uid 0)`",
        ),
    ];
    let mut calls = Vec::new();
    for (comm, _) in &comms {
        calls.push(s.refund_as(&s.cg, comm));
        // One at a time, so that each is held before the next starts.
        let n = calls.len();
        wait_for(Duration::from_secs(20), || {
            (s.list(false).len() == n).then_some(())
        })
        .unwrap_or_else(|| panic!("call {n} was not held\n{}", s.gw.log()));
    }
    let texts = wait_for(Duration::from_secs(20), || {
        let texts: Vec<String> =
            s.up.requests()
                .into_iter()
                .filter(|r| r["path"] == "/hook")
                .filter_map(|h| serde_json::from_str::<Value>(h["body"].as_str()?).ok())
                .filter_map(|b| b["text"].as_str().map(str::to_owned))
                .collect();
        // The receiver refuses the first delivery: that text comes twice.
        let distinct: std::collections::BTreeSet<&String> = texts.iter().collect();
        (distinct.len() == comms.len()).then_some(texts)
    })
    .unwrap_or_else(|| panic!("announcements: {:?}\n{}", s.up.requests(), s.gw.log()));
    for (_, shown) in &comms {
        let text = texts
            .iter()
            .find(|t| t.contains(shown))
            .unwrap_or_else(|| panic!("no announcement shows {shown}: {texts:#?}"));
        // The one link is ours; nothing else is in angle brackets.
        let (before, after) = text
            .split_once(" <https://callgate.example/approvals/")
            .unwrap_or_else(|| panic!("no review link: {text}"));
        assert!(after.ends_with("|Review it>."), "{text}");
        assert!(!before.contains(['<', '>']), "{text}");
        assert!(
            !text.contains("<!channel>") && !text.contains("<http://e.vl"),
            "{text}"
        );
        assert!(
            text.starts_with("callgate: approval needed for `payments.refund` by "),
            "{text}"
        );
    }
    for r in s.list(false) {
        s.cli_ok(&["approvals", "deny", &id_of(&r), "--as", "alice"]);
    }
    for (mut child, _) in calls {
        let done = wait_for(Duration::from_secs(30), || child.try_wait().ok()?);
        assert!(done.is_some(), "a held call did not end");
    }
}

/// A grant for the same arguments covers only calls whose arguments were all read: a body of
/// a type the gateway does not parse (the call is partial) says nothing the grant could be
/// the same as. Found by an attacker's pass: after an approved refund with an
/// `application/octet-stream` body `{"amount": 1}`, one with `{"amount": 999999}` went
/// through on the grant unasked (a server that parses JSON whatever its label ran it).
#[test]
fn a_same_arguments_grant_does_not_cover_an_unread_body() {
    let test = "a_same_arguments_grant_does_not_cover_an_unread_body";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let up = upstream(&dir, None);
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
rules:
  - name: refunds-need-approval
    function: refund
    action: approve
    approval: {{ approvers: {{ subjects: [alice] }}, timeout: 60s, grant: 1h, grant_same_args: true }}
"#,
        port = up.port
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &service)],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1/refund", up.port);
    let spawn = |body: &str| -> (Child, PathBuf) {
        let out = dir.join(unique("curl"));
        let child = cg.spawn(
            &[
                "curl",
                "-sS",
                "--max-time",
                "30",
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/octet-stream",
                "--data-binary",
                body,
                &url,
            ],
            &out,
        );
        (child, out)
    };
    let held = |n: usize| pending(&gw, "refund", n);
    let (mut first, first_out) = spawn(r#"{"amount": 1}"#);
    let r = held(1).unwrap_or_else(|| panic!("not held\n{}", gw.log()));
    let out = gw.cli(&[
        "approvals",
        "approve",
        &id_of(&r),
        "--grant",
        "30m",
        "--as",
        "alice",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = wait_for(Duration::from_secs(35), || first.try_wait().ok()?);
    let text = fs::read_to_string(first_out).unwrap_or_default();
    assert!(text.ends_with("\n200"), "the approved call: {text}");
    // Another unread body: held again, not let through on the grant.
    let (mut second, _) = spawn(r#"{"amount": 999999}"#);
    let again = held(1);
    let _ = second.kill();
    let _ = second.wait();
    assert!(
        again.is_some(),
        "the second refund was held for approval again"
    );
    assert!(
        !up.requests()
            .iter()
            .any(|r| r["body"].as_str().is_some_and(|b| b.contains("999999"))),
        "the unread body ran on the grant: {:?}",
        up.requests()
    );
}

/// Nor does it cover another gRPC message: a gRPC call's arguments are its metadata, its
/// message is never read, so the same metadata says nothing about what runs (an attacker's
/// pass deleted EVERY-ROW on the grant of an approved delete of row-1).
#[test]
fn a_same_arguments_grant_does_not_cover_another_grpc_message() {
    let test = "a_same_arguments_grant_does_not_cover_another_grpc_message";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let _up = grpc_admin_party(&dir);
    let port = _up.port;
    let service = format!(
        r#"
service: admin
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: grpc
functions:
  delete: {{ method: /demo.Admin/Delete }}
rules:
  - name: deletes-need-approval
    function: delete
    action: approve
    approval: {{ approvers: {{ subjects: [alice] }}, timeout: 60s, grant: 1h, grant_same_args: true }}
"#
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("admin", &service)],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    let spawn = |payload: &str| -> (Child, std::path::PathBuf) {
        let out = dir.join(unique("py"));
        let code = format!(
            "import grpc\nch = grpc.insecure_channel('127.0.0.1:{port}')\ncall = ch.unary_unary('/demo.Admin/Delete')\ntry:\n    print('OK', call(b'{payload}', metadata=[('x-team','sandbox')], timeout=30))\nexcept grpc.RpcError as e:\n    print('ERR', e.code(), e.details())\n"
        );
        let py = party_python().display().to_string();
        (cg.spawn(&[&py, "-c", &code], &out), out)
    };
    let held = |n: usize| pending(&gw, "delete", n);
    let (mut first, first_out) = spawn("row-1");
    let r = held(1).unwrap_or_else(|| panic!("not held\n{}", gw.log()));
    let id = r["id"].as_str().unwrap().to_string();
    let out = gw.cli(&[
        "approvals",
        "approve",
        &id,
        "--grant",
        "30m",
        "--as",
        "alice",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = wait_for(Duration::from_secs(35), || first.try_wait().ok()?);
    eprintln!(
        "first: {}",
        fs::read_to_string(&first_out).unwrap_or_default()
    );
    let (mut second, second_out) = spawn("EVERY-ROW");
    let again = held(1);
    let _ = second.kill();
    let _ = second.wait();
    let text = fs::read_to_string(&second_out).unwrap_or_default();
    assert!(
        again.is_some(),
        "the second delete was held for approval again"
    );
    assert!(
        !text.contains("deleted EVERY-ROW"),
        "a different gRPC message ran on a same-arguments grant: {text}"
    );
}
