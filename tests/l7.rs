//! The L7 data path end to end: unmodified clients (curl, Node's fetch, Python httpx) in an
//! enabled cgroup call a real upstream through the gateway, which decides each call from a
//! policy repository, masks the answers, injects a credential and records every call.
use std::{fs, path::Path};

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

fn payments(port: u16, secret: &Path) -> String {
    format!(
        r#"
service: payments
match:
  hosts: ["127.0.0.1:{port}", "payments.test:{port}"]
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
  text: {{ route: "GET /text" }}
rules:
  - name: small-refunds
    function: refund
    args: {{ amount: {{ max: 100 }}, currency: {{ in: [USD, EUR] }} }}
    action: allow
  - name: big-refunds
    function: refund
    args: {{ amount: {{ gt: 100 }} }}
    action: approve
    approval: {{ approvers: {{ groups: [finance] }}, timeout: 1s }}
  - name: reads
    function: get_payment
    action: allow
  - name: text
    function: text
    action: allow
response:
  mask: [card_number, email, {{ field: "$.customer.ssn" }}]
  # `/text` is text, which has no JSON fields: let through, masked by the detectors.
  unmaskable: pass
credentials:
  inject: {{ header: X-Api-Key, from: {{ file: "{}" }} }}
"#,
        secret.display()
    )
}

fn ledger(port: u16) -> String {
    format!(
        r#"
service: ledger
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: jsonrpc
functions:
  balance: {{ method: ledger.balance }}
  transfer: {{ method: ledger.transfer }}
rules:
  - {{ name: balances, function: balance, action: allow }}
  - name: no-transfers
    function: transfer
    action: deny
    reason: transfers need the treasury's approval
response:
  mask: [card_number]
"#
    )
}

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    up: Party,
    rpc: Party,
    /// Removed with the setup.
    _dir: TestDir,
}

fn setup(test: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-l7");
    let secret = dir.join("payments.secret");
    fs::write(&secret, "s3cr3t-from-gateway\n").expect("secret");
    let up = upstream(&dir, None);
    let rpc = upstream(&dir, None);
    let policies = policy_repo(
        &dir,
        REPO,
        &[
            ("payments", &payments(up.port, &secret)),
            ("ledger", &ledger(rpc.port)),
        ],
    );
    let gw = gateway_with_config(
        &policies,
        "http:\n  max_body_kb: 64\n  header_timeout_s: 2\n  max_header_kb: 16\n",
        &dir,
    );
    let cg = TestCgroup::new("l7");
    gw.enable(&cg);
    Some(Setup {
        gw,
        cg,
        up,
        rpc,
        _dir: dir,
    })
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn rest_calls_are_decided_masked_injected_and_recorded() {
    let Some(s) = setup("rest_calls_are_decided_masked_injected_and_recorded") else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", s.up.port);

    // Allowed: forwarded with the gateway's credential instead of the caller's, answer masked.
    let (code, body) = curl_in(
        &s.cg,
        &[
            "-H",
            "Content-Type: application/json",
            "-H",
            "X-Api-Key: caller-made-this-up",
            "-d",
            r#"{"amount": 50, "currency": "EUR"}"#,
            &format!("{base}/v1/payments/p_1/refund"),
        ],
    );
    assert_eq!(code, 0, "curl failed: {body}");
    let v = json(&body);
    let seen = s.up.requests();
    let last = seen.last().expect("the upstream got the call");
    assert_eq!(
        last["headers"]["x-api-key"], "s3cr3t-from-gateway",
        "{last}"
    );
    assert!(!body.contains("4111 1111 1111 1111"), "card leaked: {body}");
    assert!(
        !body.contains("jane.doe@example.com"),
        "e-mail leaked: {body}"
    );
    assert!(!body.contains("078-05-1120"), "SSN leaked: {body}");
    assert_eq!(
        v["card"], "************1111",
        "cards are masked partially: {body}"
    );

    // Denied by default (amount is fine but currency is not): 403 JSON, upstream untouched.
    let before = s.up.requests().len();
    let (_, body) = curl_in(
        &s.cg,
        &[
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"amount": 5, "currency": "XXX"}"#,
            &format!("{base}/v1/payments/p_2/refund"),
        ],
    );
    let (body, status) = body.rsplit_once('\n').expect("status line");
    assert_eq!(status, "403", "{body}");
    let v = json(body);
    assert_eq!(v["error"], "denied");
    assert_eq!(v["service"], "payments");
    assert_eq!(v["function"], "refund");
    // Approval is not built yet: held calls are refused, never let through.
    let (_, body) = curl_in(
        &s.cg,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"amount": 500, "currency": "USD"}"#,
            &format!("{base}/v1/payments/p_3/refund"),
        ],
    );
    // Held for the rule's second; nobody answers (tests/approvals.rs covers answering).
    let v = json(&body);
    assert_eq!(v["error"], "approval_timeout", "{body}");
    assert_eq!(v["rule"], "big-refunds");
    // A Host naming something else is refused.
    let (_, body) = curl_in(
        &s.cg,
        &["-H", "Host: evil.test", &format!("{base}/v1/payments/p_1")],
    );
    assert_eq!(json(&body)["error"], "host_mismatch", "{body}");
    assert_eq!(
        s.up.requests().len(),
        before,
        "a refused call reached the upstream"
    );

    // Node's fetch, HTTP/1.1 keep-alive; text bodies are masked too.
    let out = s.cg.run(&[
        "node",
        "-e",
        &format!(
            "(async () => {{ for (const p of ['/v1/payments/p_9', '/text']) {{ \
               const r = await fetch('{base}' + p); console.log(r.status, await r.text()); }} }})()"
        ),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("200 {"), "{text}");
    assert!(text.contains("card ************1111 end"), "{text}");
    assert!(!text.contains("4111"), "{text}");

    // Python httpx over h2 with prior knowledge: a second protocol version on the same path.
    let out = s.cg.run(&[
        &party_python().display().to_string(),
        "-c",
        &format!(
            "import httpx\n\
             with httpx.Client(http1=False, http2=True) as c:\n\
             \x20   r = c.get('{base}/v1/payments/p_h2')\n\
             \x20   print(r.http_version, r.status_code, r.json()['card'])\n"
        ),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "httpx: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(!text.contains("4111"), "{text}");

    // The record: function, masked arguments, decision, status.
    let r = record_where(&s.gw, "the allowed refund", |r| {
        r["function"] == "refund" && r["decision"]["action"] == "allow"
    });
    assert_eq!(r["service"], "payments");
    assert_eq!(r["protocol"], "rest");
    assert_eq!(r["args"]["amount"], 50);
    assert_eq!(r["args"]["payment_id"], "p_1");
    assert_eq!(r["status"], 200);
    assert!(
        r["decision"].get("reason").is_none(),
        "a completed call: {r}"
    );
    assert!(
        !r.to_string().contains("4111 1111"),
        "raw card in a record: {r}"
    );
    assert!(
        !r.to_string().contains("s3cr3t"),
        "the credential reached a record: {r}"
    );
    let r = record_where(&s.gw, "the approval refusal", |r| {
        r["decision"]["action"] == "approve"
    });
    assert_eq!(r["decision"]["rule"], "big-refunds");
    assert_eq!(r["status"], 403);
}

#[test]
fn upstream_connections_are_kept_replaced_and_escapes_masked() {
    let Some(s) = setup("upstream_connections_are_kept_replaced_and_escapes_masked") else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", s.up.port);
    let peer_of = |path: &str| {
        s.up.requests()
            .iter()
            .rev()
            .find(|r| r["path"] == path)
            .map(|r| r["peer_port"].clone())
    };

    // One client connection, three calls; the upstream hangs up after each answer without
    // saying so. Each call still goes through, over a new upstream connection.
    let urls: Vec<String> = (1..=3)
        .map(|i| format!("{base}/v1/payments/p_{i}?close=1"))
        .collect();
    let mut args = vec!["-w", "\n%{num_connects}\n"];
    args.extend(urls.iter().map(String::as_str));
    let (code, out) = curl_in(&s.cg, &args);
    assert_eq!(code, 0, "curl failed: {out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for (i, pair) in lines.chunks(2).enumerate() {
        let v = json(pair[0]);
        assert_eq!(
            v["path"],
            format!("/v1/payments/p_{}?close=1", i + 1),
            "{out}"
        );
        assert_eq!(v["card"], "************1111", "{out}");
        // The client kept its one connection to the gateway all along.
        assert_eq!(pair[1], if i == 0 { "1" } else { "0" }, "{out}");
    }
    let peers: Vec<Value> = (1..=3)
        .filter_map(|i| peer_of(&format!("/v1/payments/p_{i}?close=1")))
        .collect();
    assert_eq!(peers.len(), 3);
    assert!(
        peers[0] != peers[1] && peers[1] != peers[2],
        "a closed upstream connection was reused: {peers:?}"
    );

    // An upstream connection outlives the client connection it served: the next client
    // connection to that destination takes it over (once the gateway has seen the first go).
    assert_eq!(curl_in(&s.cg, &[&format!("{base}/v1/payments/p_4")]).0, 0);
    let first = peer_of("/v1/payments/p_4").expect("p_4 reached the upstream");
    let reused = wait_for(std::time::Duration::from_secs(5), || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(curl_in(&s.cg, &[&format!("{base}/v1/payments/p_5")]).0, 0);
        (peer_of("/v1/payments/p_5") == Some(first.clone())).then_some(())
    });
    assert!(
        reused.is_some(),
        "upstream connection not kept: {:?}",
        s.up.requests()
    );

    // Large answers one after another on one kept upstream connection: each is read to its
    // end and the next head found right after it, however the reads fall. (Once, a read into
    // a buffer grown by the last answer brought a head with much of its body, and the head
    // was refused as too large.)
    let large = format!("{base}/v1/payments/p_7?size=1048576");
    let mut args = vec!["-w", "\n%{http_code} %{num_connects}\n"];
    args.extend(std::iter::repeat_n(large.as_str(), 8));
    let (code, out) = curl_in(&s.cg, &args);
    assert_eq!(
        code,
        0,
        "curl failed: {}",
        &out[out.len().saturating_sub(500)..]
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 16, "{}", &out[out.len().saturating_sub(500)..]);
    for (i, pair) in lines.chunks(2).enumerate() {
        let v = json(pair[0]);
        assert_eq!(v["card"], "************1111", "answer {i}: {}", pair[1]);
        assert_eq!(
            v["pad"].as_str().map(str::len),
            Some(1_048_576),
            "answer {i}"
        );
        assert_eq!(
            pair[1],
            if i == 0 { "200 1" } else { "200 0" },
            "answer {i}"
        );
    }

    // A card spelled with JSON escapes is still a card.
    let (code, body) = curl_in(&s.cg, &[&format!("{base}/v1/payments/p_6?escaped=1")]);
    assert_eq!(code, 0, "{body}");
    assert_eq!(json(&body)["card"], "************1111", "{body}");
}

#[test]
fn jsonrpc_batch_answers_denied_elements_itself() {
    let Some(s) = setup("jsonrpc_batch_answers_denied_elements_itself") else {
        return;
    };
    let url = format!("http://127.0.0.1:{}/rpc", s.rpc.port);
    let batch = r#"[
        {"jsonrpc":"2.0","id":1,"method":"ledger.balance","params":{"account":"a1"}},
        {"jsonrpc":"2.0","id":2,"method":"ledger.transfer","params":["a1","a2",10]},
        {"jsonrpc":"2.0","method":"ledger.balance","params":{}}
    ]"#;
    let (code, body) = curl_in(
        &s.cg,
        &["-H", "Content-Type: application/json", "-d", batch, &url],
    );
    assert_eq!(code, 0, "{body}");
    let v = json(&body);
    let items = v.as_array().expect("a batch answer");
    assert_eq!(items.len(), 2, "one answer per call with an id: {body}");
    assert_eq!(items[0]["id"], 1);
    assert_eq!(items[0]["result"]["method"], "ledger.balance");
    assert!(!body.contains("4111 1111"), "{body}");
    assert_eq!(items[1]["id"], 2);
    assert_eq!(items[1]["error"]["code"], -32001);
    assert!(
        items[1]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("treasury")),
        "{body}"
    );
    // Only the allowed elements went upstream.
    let sent = s.rpc.requests();
    assert_eq!(sent.len(), 1);
    assert!(!sent[0]["body"].as_str().unwrap_or("").contains("transfer"));

    // A single denied call never reaches the upstream; a malformed body is a clear error.
    let (_, body) = curl_in(
        &s.cg,
        &[
            "-d",
            r#"{"jsonrpc":"2.0","id":"x","method":"ledger.transfer"}"#,
            &url,
        ],
    );
    assert_eq!(
        json(&body)["error"]["data"]["rule"],
        "no-transfers",
        "{body}"
    );
    let (_, body) = curl_in(&s.cg, &["-w", "\n%{http_code}", "-d", "{not json", &url]);
    assert!(body.ends_with("400"), "{body}");
    assert_eq!(s.rpc.requests().len(), 1);
    let r = record_where(&s.gw, "the denied transfer in the batch", |r| {
        r["function"] == "transfer" && r["decision"]["action"] == "deny"
    });
    assert_eq!(r["args"]["2"], 10, "positional params by index: {r}");
}

#[test]
fn hostile_input_is_bounded_and_the_gateway_keeps_serving() {
    let Some(s) = setup("hostile_input_is_bounded_and_the_gateway_keeps_serving") else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", s.up.port);
    let py = party_python().display().to_string();
    // Not HTTP, on a service without `tcp: allow`: closed, recorded as a refusal.
    let out = s.cg.run(&[
        &py,
        "-c",
        &format!(
            "import socket\n\
             s = socket.create_connection(('127.0.0.1', {}), timeout=5)\n\
             s.sendall(b'SSH-2.0-OpenSSH_9.2\\r\\n')\n\
             print(repr(s.recv(100)))\n",
            s.up.port
        ),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "b''");
    record_where(&s.gw, "the refused SSH connection", |r| {
        r["protocol"] == "tcp"
            && r["decision"]["action"] == "deny"
            && r["decision"]["reason"]
                .as_str()
                .is_some_and(|x| x.contains("tcp: deny"))
    });
    // Oversized headers: 431; an oversized inspected body: 413 before the upstream sees it.
    let big = format!("X-Big: {}", "a".repeat(32 * 1024));
    let status = status_in(&s.cg, &["-H", &big, &format!("{base}/text")]);
    assert_eq!(status, "431");
    let before = s.up.requests().len();
    let body = format!(
        r#"{{"amount": 1, "currency": "EUR", "pad": "{}"}}"#,
        "x".repeat(100_000)
    );
    let status = status_in(
        &s.cg,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &format!("{base}/v1/payments/p/refund"),
        ],
    );
    assert_eq!(status, "413");
    assert_eq!(s.up.requests().len(), before);
    // Slowloris: a client that never finishes its headers is cut off after header_timeout_s
    // (2 s here), while another client is served meanwhile.
    let out = s.cg.run(&[
        &py,
        "-c",
        &format!(
            "import socket, time, urllib.request\n\
             s = socket.create_connection(('127.0.0.1', {port}), timeout=10)\n\
             s.sendall(b'GET /text HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nX-Slow: ')\n\
             t = time.time()\n\
             print(urllib.request.urlopen('{base}/text', timeout=5).status)\n\
             try:\n\
             \x20   data = s.recv(100)\n\
             except Exception as e:\n\
             \x20   data = repr(e).encode()\n\
             print(round(time.time() - t), data[:12])\n",
            port = s.up.port
        ),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("200"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = lines.next().unwrap_or_default();
    let secs: u64 = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(99);
    assert!(secs <= 4, "slow client held for {secs}s: {last}");
    // Request smuggling: `smuggling.rs`, against upstreams that would run a smuggled request.
    // Bodies that are not JSON: 100,000 levels of nesting, invalid UTF-8. A clear 400 or
    // JSON-RPC error each, nothing upstream.
    let before = s.up.requests().len();
    let rpc = format!("http://127.0.0.1:{}/rpc", s.rpc.port);
    for what in ["deep", "utf8"] {
        let out = s.cg.run(&[
            &py,
            "-c",
            &format!(
                "import sys, urllib.request, urllib.error\n\
                 body = b'[' * 100000 if sys.argv[1] == 'deep' else b'{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ledger.balance\",\"params\":{{\"a\":\"\\xff\\xfe\"}}}}'\n\
                 req = urllib.request.Request('{rpc}', data=body, headers={{'Content-Type': 'application/json'}})\n\
                 try:\n\
                 \x20   r = urllib.request.urlopen(req, timeout=5); print(r.status, r.read()[:300].decode('utf-8', 'replace'))\n\
                 except urllib.error.HTTPError as e:\n\
                 \x20   print(e.code, e.read()[:300].decode('utf-8', 'replace'))\n"
            ),
            what,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("400") || text.contains("\"error\""),
            "{what}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(s.rpc.requests().len(), 0, "no hostile body went upstream");
    assert_eq!(s.up.requests().len(), before);
    // Still serving.
    let (code, body) = curl_in(&s.cg, &[&format!("{base}/text")]);
    assert_eq!(code, 0, "{body}");
}

/// 10,000 HTTP/2 streams opened at once on one connection, the server's limit of 256
/// ignored: the excess is refused (reset, then the connection closed with GOAWAY after at most
/// 256 streams taken), memory stays bounded, and other clients are served meanwhile and after
/// — among them 256 streams at once on one connection, every one answered.
#[test]
fn ten_thousand_h2_streams_are_bounded() {
    let Some(s) = setup("ten_thousand_h2_streams_are_bounded") else {
        return;
    };
    let py = party_python().display().to_string();
    let flood = party_script("h2_flood.py").display().to_string();
    let port = s.up.port.to_string();
    let rss_before = s.gw.rss_kib().expect("the gateway's RSS is readable");
    let before = s.up.requests().len();
    let h2 = |n: &str, log: &str| {
        let log = s._dir.join(log);
        let child =
            s.cg.spawn(&["timeout", "60", &py, &flood, &port, "/text", n], &log);
        (child, log)
    };
    let (mut child, log) = h2("10000", "h2-flood.log");
    // While the flood is in flight, another workload's call is answered.
    let status = status_in(&s.cg, &[&format!("http://127.0.0.1:{port}/text")]);
    assert_eq!(status, "200", "a second client during the flood");
    let status = child.wait().expect("flood client");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "h2 flood: {text}");
    let v = json(text.trim().lines().last().unwrap_or_default());
    println!("10,000 h2 streams: {v}");
    // The server's limit is 256 streams: the rest is reset, and a client that keeps opening
    // streams after resets is told to calm down (GOAWAY ENHANCE_YOUR_CALM) and cut off, the
    // streams it had taken going with the connection. Client streams are odd: 256 taken at
    // most means a last stream id of 511 at most.
    let answered: u64 = v["statuses"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    let resets = v["resets"].as_u64().unwrap_or(0);
    assert!(answered <= 256, "more streams served than the limit: {v}");
    assert!(resets > 0, "the excess streams were not refused: {v}");
    assert_eq!(
        v["goaway"], true,
        "the flooding connection was not cut off: {v}"
    );
    let last = v["last_stream"]
        .as_u64()
        .expect("the GOAWAY's last stream id");
    assert!(last <= 511, "more than 256 streams taken: {v}");
    // Nothing reached the upstream beyond the streams the gateway took in (and decided),
    // and the call made meanwhile.
    let upstream = s.up.requests().len() - before;
    assert!(upstream <= 257, "{upstream} upstream requests: {v}");
    let rss = s.gw.rss_kib().expect("the gateway's RSS is readable");
    println!("RSS {rss_before} KiB before the flood, {rss} KiB after");
    assert!(rss < 300 * 1024, "gateway RSS {rss} KiB after the flood");

    // Within the limit, every stream is answered: 256 at once on a new connection.
    let (mut child, log) = h2("256", "h2-256.log");
    let status = child.wait().expect("h2 client");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "h2 client: {text}");
    let v = json(text.trim().lines().last().unwrap_or_default());
    assert_eq!(v["statuses"]["200"], 256, "streams within the limit: {v}");
    assert_eq!(
        (v["resets"].as_u64(), v["goaway"].as_bool()),
        (Some(0), Some(false)),
        "{v}"
    );
    let status = status_in(&s.cg, &[&format!("http://127.0.0.1:{port}/text")]);
    assert_eq!(status, "200", "served after the flood");
    let rss = s.gw.rss_kib().expect("the gateway's RSS is readable");
    assert!(rss < 300 * 1024, "gateway RSS {rss} KiB at the end");
}
