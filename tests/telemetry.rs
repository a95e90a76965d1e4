//! OpenTelemetry end to end: curl in an enabled cgroup sends a W3C `traceparent`; the gateway
//! exports a span per call over OTLP/HTTP to a real receiver (the official protobufs decode
//! it), as a child of the caller's span and the parent of the one the upstream is handed.
use std::time::Duration;

use callgate_e2e::*;
use serde_json::Value;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    up: Party,
    otlp: Party,
    /// Removed with the setup.
    _dir: TestDir,
}

fn setup(test: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-otel");
    let up = upstream(&dir, None);
    let port = free_port();
    let log = dir.join("spans.jsonl");
    let py = party_python().display().to_string();
    let script = party_script("otlp_receiver.py").display().to_string();
    let otlp = Party::start(
        &[
            &py,
            &script,
            "--port",
            &port.to_string(),
            "--log",
            &log.display().to_string(),
        ],
        port,
        log,
    );
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
rules:
  - {{ name: reads, function: get_payment, action: allow }}
  - {{ name: no-refunds, function: refund, action: deny, reason: not here }}
"#,
        up.port
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &service)],
    );
    let gw = gateway_with_config(
        &policies,
        &format!(
            "telemetry:\n  otlp_endpoint: http://127.0.0.1:{port}/v1/traces\n  service_name: callgate-test\n"
        ),
        &dir,
    );
    let cg = TestCgroup::new("otel");
    gw.enable(&cg);
    Some(Setup {
        gw,
        cg,
        up,
        otlp,
        _dir: dir,
    })
}

impl Setup {
    /// The exported span matching `pred` (the receiver gets batches every half second).
    fn span(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(Duration::from_secs(15), || {
            self.otlp.requests().into_iter().find(|s| pred(s))
        })
        .unwrap_or_else(|| {
            panic!(
                "no span of {what}: {:#?}\n{}",
                self.otlp.requests(),
                self.gw.log()
            )
        })
    }
}

#[test]
fn each_call_is_a_span_between_the_callers_and_the_upstreams() {
    let Some(s) = setup("each_call_is_a_span_between_the_callers_and_the_upstreams") else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1", s.up.port);
    let traceparent = format!("traceparent: 00-{TRACE}-{CLIENT_SPAN}-01");
    let (code, body) = curl_in(&s.cg, &["-H", &traceparent, &url]);
    assert_eq!(code, 0, "{body}");

    // The upstream was handed the same trace, with the gateway's span as its parent.
    let seen = s.up.requests();
    let sent = seen.last().expect("the call went upstream")["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[1], TRACE, "{sent}");
    assert_ne!(parts[2], CLIENT_SPAN, "the gateway's own span: {sent}");

    let span = s.span("the allowed call", |sp| sp["trace_id"] == TRACE);
    assert_eq!(span["span_id"], parts[2], "{span}");
    assert_eq!(span["parent_span_id"], CLIENT_SPAN, "{span}");
    assert_eq!(span["name"], "payments.get_payment", "{span}");
    assert_eq!(span["service"], "callgate-test", "{span}");
    assert_eq!(span["path"], "/v1/traces", "{span}");
    let a = &span["attributes"];
    assert_eq!(a["callgate.decision"], "allow", "{span}");
    assert_eq!(a["callgate.rule"], "reads", "{span}");
    assert_eq!(a["callgate.function"], "get_payment", "{span}");
    assert_eq!(a["http.response.status_code"], 200, "{span}");
    assert_eq!(a["process.executable.name"], "curl", "{span}");
    assert_eq!(a["callgate.workload.uid"], 0, "{span}");
    assert!(
        a["callgate.upstream.duration_ms"].as_f64().is_some(),
        "{span}"
    );

    // A refused call is a span too, in a trace of its own, marked as an error.
    let refund = format!("{url}/refund");
    let before = s.up.requests().len();
    let (code, body) = curl_in(&s.cg, &["-X", "POST", &refund]);
    assert_eq!(code, 0, "{body}");
    assert_eq!(s.up.requests().len(), before, "the denied call never left");
    let span = s.span("the denied call", |sp| sp["name"] == "payments.refund");
    assert_ne!(span["trace_id"], TRACE, "{span}");
    assert_eq!(span["parent_span_id"], "", "a root span: {span}");
    assert_eq!(span["status_code"], 2, "ERROR: {span}");
    assert_eq!(span["attributes"]["callgate.decision"], "deny", "{span}");
    assert_eq!(
        span["attributes"]["http.response.status_code"], 403,
        "{span}"
    );
}

/// With `CALLGATE_STAGE_TIMINGS=1` the gateway times each call's masking and recording on
/// `/metrics` (the l7 bench's breakdown by stage reads them), and the answer is still masked.
#[test]
fn stage_timings_count_each_masked_and_recorded_call() {
    const TEST: &str = "stage_timings_count_each_masked_and_recorded_call";
    if !ebpf_available(TEST) || !parties_available(TEST) {
        return;
    }
    let dir = TestDir::new("callgate-stages");
    let up = upstream(&dir, None);
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
rules:
  - {{ name: reads, function: get_payment, action: allow }}
response:
  mask: [card_number, email]
"#,
        up.port
    );
    let policies = policy_repo(&dir, "default_action: deny\n", &[("payments", &service)]);
    let web = free_port();
    let gw = gateway_with_config_env(
        &policies,
        &format!("admin_http:\n  listen: 127.0.0.1:{web}\n"),
        &dir,
        &[("CALLGATE_STAGE_TIMINGS", "1")],
    );
    let cg = TestCgroup::new("stages");
    gw.enable(&cg);
    for id in ["1", "2"] {
        let (code, body) = curl_in(
            &cg,
            &[&format!("http://127.0.0.1:{}/v1/payments/{id}", up.port)],
        );
        assert_eq!(code, 0, "{body}\n{}", gw.log());
        assert!(
            !body.contains("jane.doe@example.com") && body.contains("customer"),
            "{body}"
        );
    }
    let metrics = || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{web}/metrics"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The record is queued as the answer ends, maybe after curl has it all.
    let text = wait_for(Duration::from_secs(5), || {
        let m = metrics();
        m.lines()
            .any(|l| l == "callgate_record_duration_seconds_count 2")
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("no record timings for 2 calls in\n{}", metrics()));
    for line in [
        "callgate_mask_duration_seconds_count 2",
        "callgate_decision_duration_seconds_count 2",
        "callgate_upstream_duration_seconds_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}
