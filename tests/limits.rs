//! Rate limits and quotas end to end: unmodified curl and a Python JSON-RPC client in enabled
//! cgroups run into a rule's `limit:` (HTTP 429 with Retry-After; a JSON-RPC error with the
//! retry hint), each workload with its own bucket; a daily `quota:` outlives a restart.
use std::fs;

use callgate_e2e::*;
use serde_json::Value;

struct Setup {
    gw: Gateway,
    a: TestCgroup,
    b: TestCgroup,
    rest: Party,
    rpc: Party,
    /// Removed with the setup.
    _dir: TestDir,
}

fn setup(test: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-limits");
    let rest = upstream(&dir, None);
    let rpc = upstream(&dir, None);
    let payments = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
rules:
  - name: reads-are-paced
    function: get_payment
    action: allow
    limit: {{ per: [workload.cgroup], rate: 3/m }}
  - name: two-refunds-a-day
    function: refund
    action: allow
    quota: {{ per: [workload.cgroup], calls: 2/d }}
"#,
        rest.port
    );
    let ledger = format!(
        r#"
service: ledger
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: jsonrpc
functions:
  balance: {{ method: ledger.balance }}
rules:
  - name: balance-per-account
    function: balance
    action: allow
    limit: {{ per: [args.account], rate: 1/h }}
"#,
        rpc.port
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &payments), ("ledger", &ledger)],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let a = TestCgroup::new("limits-a");
    let b = TestCgroup::new("limits-b");
    gw.enable(&a);
    gw.enable(&b);
    Some(Setup {
        gw,
        a,
        b,
        rest,
        rpc,
        _dir: dir,
    })
}

/// curl in `cg`: (status, response head, body).
fn curl(cg: &TestCgroup, extra: &[&str], url: &str) -> (u16, String, String) {
    let mut args = vec!["-i"];
    args.extend_from_slice(extra);
    args.push(url);
    let (code, out) = curl_in(cg, &args);
    assert_eq!(code, 0, "curl: {out}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn retry_after(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {head}"))
}

#[test]
fn over_the_limit_is_refused_with_when_to_retry() {
    let Some(s) = setup("over_the_limit_is_refused_with_when_to_retry") else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1", s.rest.port);
    for i in 1..=3 {
        let (status, _, body) = curl(&s.a, &[], &url);
        assert_eq!(status, 200, "call {i}: {body}\n{}", s.gw.log());
    }
    // The fourth within the minute: 429, and when a token is back (3/m: 20 s at most).
    let (status, head, body) = curl(&s.a, &[], &url);
    assert_eq!(status, 429, "{body}");
    let wait = retry_after(&head);
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    let v: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v["error"], "rate_limited", "{v}");
    assert_eq!(v["rule"], "reads-are-paced", "{v}");
    assert_eq!(v["retry_after_s"], wait, "{v}");
    assert_eq!(
        s.rest
            .requests()
            .iter()
            .filter(|r| r["path"] == "/v1/payments/p_1")
            .count(),
        3,
        "the refused call never left"
    );
    let r = record_where(&s.gw, "the limited call", |r| {
        r["decision"]["limit"]["kind"] == "limit"
    });
    assert_eq!(r["status"], 429, "{r}");
    assert_eq!(r["decision"]["limit"]["rule"], "reads-are-paced", "{r}");

    // Another workload has a bucket of its own.
    let (status, _, body) = curl(&s.b, &[], &url);
    assert_eq!(status, 200, "{body}");

    // JSON-RPC: a second balance of the same account within the hour is an error object
    // with the hint; another account is not limited.
    let rpc = format!("http://127.0.0.1:{}/rpc", s.rpc.port);
    let call = |account: &str| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"ledger.balance","params":{{"account":"{account}"}}}}"#
        );
        let (status, _, out) = curl(
            &s.a,
            &["-H", "Content-Type: application/json", "-d", &body],
            &rpc,
        );
        assert_eq!(status, 200, "{out}");
        serde_json::from_str::<Value>(&out).expect("JSON-RPC answer")
    };
    assert!(call("acc-1")["result"].is_object());
    let limited = call("acc-1");
    assert_eq!(limited["error"]["code"], -32003, "{limited}");
    assert_eq!(limited["id"], 7, "{limited}");
    let hint = limited["error"]["data"]["retry_after_s"]
        .as_u64()
        .unwrap_or(0);
    assert!(hint > 3000, "about an hour: {limited}");
    assert!(call("acc-2")["result"].is_object());
    let metrics = s.gw.status();
    assert!(metrics["counters"]["calls_denied"].as_u64().unwrap_or(0) >= 2);
}

#[test]
fn a_daily_quota_outlives_a_restart() {
    let Some(mut s) = setup("a_daily_quota_outlives_a_restart") else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1/refund", s.rest.port);
    let refund = |cg: &TestCgroup| curl(cg, &["-X", "POST"], &url);
    assert_eq!(refund(&s.a).0, 200);
    assert_eq!(refund(&s.a).0, 200);
    // The count reaches the state directory within seconds; then the gateway is killed.
    let quotas = s.gw.dir.join("state/quotas.json");
    let saved = wait_for(std::time::Duration::from_secs(10), || {
        fs::read_to_string(&quotas)
            .ok()
            .filter(|t| t.contains("\"count\":2"))
    });
    assert!(
        saved.is_some(),
        "quota state: {:?}",
        fs::read_to_string(&quotas)
    );
    s.gw.restart();
    let (status, head, body) = refund(&s.a);
    assert_eq!(status, 429, "the day's two refunds are used: {body}");
    assert!(body.contains("quota"), "{body}");
    let wait = retry_after(&head);
    assert!(wait <= 86_400, "until the next UTC day: {wait}");
    // Another workload's day is its own.
    assert_eq!(refund(&s.b).0, 200);
}
