//! What the gateway answers itself when a part of the call's way fails, each shown with an
//! unmodified client in an enabled cgroup: an upstream that is down (502), a call log whose
//! disk is full (503, and the call never reaches the upstream), and a compressed answer on a
//! service whose answers are masked (refused, the value never reaches the client).
use std::{fs, process::Command, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

const CARD: &str = "4111 1111 1111 1111";

/// A REST service at `port` that allows everything and masks card numbers.
fn rest(name: &str, port: u16, mask: bool) -> String {
    let mask = if mask {
        "response:\n  mask: [card_number]\n"
    } else {
        ""
    };
    format!(
        r#"
service: {name}
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
rules:
  - {{ name: all, function: "*", action: allow }}
{mask}"#
    )
}

/// curl in `cg` with `args`: (HTTP status, body).
fn call(cg: &TestCgroup, args: &[&str]) -> (u16, String) {
    let mut argv = vec!["-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let (code, out) = curl_in(cg, &argv);
    assert_eq!(code, 0, "curl failed: {out}");
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn an_upstream_that_is_down_is_a_502_in_the_clients_protocol() {
    const TEST: &str = "an_upstream_that_is_down_is_a_502_in_the_clients_protocol";
    if !ebpf_available(TEST) {
        return;
    }
    let dir = TestDir::new("callgate-faults");
    // Ports nothing listens on: the connection is refused at once.
    let (rest_port, rpc_port) = (free_port(), free_port());
    let ledger = format!(
        r#"
service: ledger
match: {{ hosts: ["127.0.0.1:{rpc_port}"] }}
protocol: jsonrpc
functions:
  balance: {{ method: ledger.balance }}
rules:
  - {{ name: balances, function: balance, action: allow }}
"#
    );
    let policies = policy_repo(
        &dir,
        REPO,
        &[
            ("payments", &rest("payments", rest_port, true)),
            ("ledger", &ledger),
        ],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("faults-down");
    gw.enable(&cg);

    let (status, body) = call(
        &cg,
        &[&format!("http://127.0.0.1:{rest_port}/v1/payments/p_1")],
    );
    assert_eq!(status, 502, "{body}\n{}", gw.log());
    let v = json(&body);
    assert_eq!(v["error"], "upstream_unavailable", "{v}");
    // A JSON-RPC call gets a JSON-RPC error with its id, as its client expects.
    let (status, body) = call(
        &cg,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"jsonrpc":"2.0","id":41,"method":"ledger.balance","params":{}}"#,
            &format!("http://127.0.0.1:{rpc_port}/rpc"),
        ],
    );
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["id"], 41, "{v}");
    assert!(v["error"]["code"].is_i64(), "{v}");
    assert!(
        body.contains("upstream_unavailable"),
        "the error says why: {v}"
    );
    // Both are recorded as refused, with the reason.
    for function in ["get_payment", "balance"] {
        let r = record_where(&gw, function, |r| r["function"] == function);
        assert!(
            r["decision"]["reason"]
                .as_str()
                .is_some_and(|s| s.contains("upstream_unavailable")),
            "{r}"
        );
    }
}

/// Calls `/v1/payments/p_1` on 127.0.0.1:PORT over one kept-alive connection until one is not
/// answered 200 (at most 400); prints how many were, and the last status and body.
const KEPT: &str = r#"
import http.client, json
c = http.client.HTTPConnection('127.0.0.1', PORT, timeout=10)
ok, status, body = 0, 200, b''
for i in range(400):
    c.request('GET', '/v1/payments/p_1')
    r = c.getresponse()
    status, body = r.status, r.read()
    if status != 200:
        break
    ok += 1
print(json.dumps({'ok': ok, 'status': status, 'body': body.decode()}))
"#;

#[test]
fn a_full_call_log_refuses_http_calls_with_503_before_the_upstream() {
    const TEST: &str = "a_full_call_log_refuses_http_calls_with_503_before_the_upstream";
    if !ebpf_available(TEST) || !parties_available(TEST) {
        return;
    }
    let dir = TestDir::new("callgate-faults");
    let up = upstream(&dir, None);
    let policies = policy_repo(
        &dir,
        REPO,
        &[("payments", &rest("payments", up.port, true))],
    );
    let mnt = Tmpfs::mount("64k");
    let ballast = mnt.0.join("ballast");
    fs::write(&ballast, vec![0u8; 48 * 1024]).expect("ballast");
    let records = mnt.0.join("records");
    let gw = gateway_with_config(
        &policies,
        &format!(
            "records:\n  dir: {}\n  commit_window_ms: 1\n",
            records.display()
        ),
        &dir,
    );
    let cg = TestCgroup::new("faults-full");
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1", up.port);

    // One kept-alive connection calls until the disk is full: the first call after the writer
    // fails is refused with 503 on that connection, before the upstream.
    let out = python_in(&cg, &KEPT.replace("PORT", &up.port.to_string()));
    let v = json(&out);
    assert_eq!(
        v["status"],
        503,
        "the disk never filled, or: {v}\n{}",
        gw.log()
    );
    let ok = v["ok"].as_u64().unwrap_or(0) as usize;
    assert!(ok >= 1, "{v}");
    let refusal = json(v["body"].as_str().unwrap_or_default());
    assert_eq!(refusal["error"], "recording_unavailable", "{refusal}");
    assert!(
        refusal["reason"]
            .as_str()
            .is_some_and(|r| r.contains("space")),
        "the reason names the full disk: {refusal}"
    );
    assert_eq!(
        up.requests().len(),
        ok,
        "only the answered calls reached the upstream"
    );
    // A new connection is refused whole, at the listener (nothing to answer it with yet).
    let (code, out) = curl_in(&cg, &[&url]);
    assert_ne!(code, 0, "a new connection was served: {out}");
    assert_eq!(up.requests().len(), ok, "a refused call was forwarded");
    assert!(gw.counter("refused_recording") >= 2);
    let before = ok;

    // Space back: calls go through again, and the log verifies.
    fs::remove_file(&ballast).expect("free space");
    let back = wait_for(Duration::from_secs(10), || {
        (status_in(&cg, &[&url]) == "200").then_some(())
    });
    assert!(back.is_some(), "calls resume: {}", gw.status()["records"]);
    assert!(up.requests().len() > before);
    let out = Command::new(callgate_bin())
        .args(["records", "verify", "--dir"])
        .arg(&records)
        .output()
        .expect("records verify");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_compressed_answer_that_must_be_masked_is_refused() {
    const TEST: &str = "a_compressed_answer_that_must_be_masked_is_refused";
    if !ebpf_available(TEST) || !nginx_available(TEST) {
        return;
    }
    let dir = TestDir::new("callgate-faults");
    // nginx sends the precompressed file whatever the request accepts (`gzip_static always`):
    // the gateway's dropping of Accept-Encoding does not stop this upstream compressing.
    let server =
        "location /v1/payments/ { root {www}; gzip_static always; default_type application/json; }";
    let masked = Nginx::start(&dir, server);
    let plain = Nginx::start(&dir, server);
    for n in [&masked, &plain] {
        let at = n.www.join("v1/payments");
        fs::create_dir_all(&at).expect("www");
        let answer = format!(r#"{{"id":"p_1","card":"{CARD}"}}"#);
        let gz = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '%s' '{answer}' | gzip -c > '{}'",
                at.join("p_1.gz").display()
            ))
            .status()
            .expect("gzip");
        assert!(gz.success());
    }
    let policies = policy_repo(
        &dir,
        REPO,
        &[
            ("masked", &rest("masked", masked.port(), true)),
            ("plain", &rest("plain", plain.port(), false)),
        ],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("faults-gzip");
    gw.enable(&cg);

    // On the masked service: 502 with the reason; the upstream did answer (it ran the call),
    // and its card never reaches the client, compressed or not.
    for accept in [&["--compressed"][..], &[][..]] {
        let mut args = accept.to_vec();
        let url = format!("http://127.0.0.1:{}/v1/payments/p_1", masked.port());
        args.push(&url);
        let (status, body) = call(&cg, &args);
        assert_eq!(status, 502, "{body}\n{}", gw.log());
        assert_eq!(json(&body)["error"], "unmaskable_response", "{body}");
        assert!(!body.contains("4111"), "{body}");
    }
    // nginx writes its access log line once it is done with the request, which can be after
    // the gateway has answered the client.
    let mut served: Vec<Value> = Vec::new();
    let logged = wait_for(Duration::from_secs(5), || {
        served = masked.party.requests();
        (served.len() >= 2).then_some(())
    });
    assert!(logged.is_some() && served.len() == 2, "{served:?}");
    assert!(served.iter().all(|r| r["status"] == 200), "{served:?}");
    let r = record_where(&gw, "the refused answer", |r| {
        r["service"] == "masked" && r["status"] == 502
    });
    assert!(
        r["decision"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("unmaskable_response")),
        "{r}"
    );
    // Not counting what is random or the machine's (ids, hashes, times, ports, pids).
    let mut said = r.clone();
    if let Some(o) = said.as_object_mut() {
        for k in [
            "id",
            "hash",
            "time_ms",
            "latency_ms",
            "destination",
            "workload",
            "session",
        ] {
            o.remove(k);
        }
    }
    assert!(!said.to_string().contains("4111"), "{r}");

    // The same answer from a service that masks nothing passes, compressed as it came.
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1", plain.port());
    let (status, body) = call(&cg, &["--compressed", &url]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(CARD), "{body}");
}
