//! No bypass through the fields that say how a request is read: its body's type (given twice,
//! or in bytes that are not text), gRPC metadata given twice, content codings, upgrades and
//! CONNECT, over HTTP/1.1 and h2c to an HTTP/1.1 upstream. Found by an attacker's pass: before
//! the fix, Flask ran a refund of 5000 that the gateway had decided as a JSON refund of 5 (the
//! body `{"amount":5,…,"x":"&amount=5000&y="}` read as a form by werkzeug), and grpcio ran a
//! delete for the team the policy denies. Each test asserts what the real upstream ran.
use std::{fs, path::Path};

use callgate_e2e::*;
use serde_json::{Value, json};

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

fn payments(port: u16) -> String {
    format!(
        r#"
service: payments
match:
  hosts: ["127.0.0.1:{port}"]
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
rules:
  - name: big-refunds
    function: refund
    args: {{ amount: {{ gt: 100 }} }}
    action: deny
  - name: customer-refunds
    function: refund
    args: {{ to: {{ eq: customer }} }}
    action: allow
  - {{ name: other-refunds, function: refund, action: deny }}
  - {{ name: everything-else, function: "*", action: allow }}
"#
    )
}

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    _dir: TestDir,
}

fn setup(test: &str, services: &[(&str, &str)]) -> Setup {
    let dir = TestDir::new(test);
    let policies = policy_repo(&dir, REPO, services);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    Setup { gw, cg, _dir: dir }
}

fn refunds_upstream(dir: &Path) -> Party {
    let port = free_port();
    let log = dir.join(format!("refunds-{port}.jsonl"));
    let (py, script) = (party_python(), party_script("refunds_forms.py"));
    Party::start(
        &[
            &py.display().to_string(),
            &script.display().to_string(),
            "--port",
            &port.to_string(),
            "--log",
            &log.display().to_string(),
        ],
        port,
        log,
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the test venv's Python (it has `h2`, `grpc`) inside `cg`: stdout and stderr.
fn venv_in(cg: &TestCgroup, code: &str) -> String {
    let py = party_python().display().to_string();
    let out = cg.run(&[&py, "-c", code]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends `raw` bytes over one TCP connection from `cg`; what came back.
fn raw_in(cg: &TestCgroup, port: u16, raw: &[u8]) -> String {
    let code = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), 5)\n\
         s.settimeout(3)\ns.sendall(bytes.fromhex('{}'))\nout = b''\n\
         try:\n    while len(out) < 1 << 20:\n        c = s.recv(65536)\n        if not c: break\n        out += c\n\
         except Exception:\n    pass\nprint(out.decode('latin-1'))",
        hex(raw)
    );
    venv_in(cg, &code)
}

/// One h2c (prior knowledge) request from `cg`, headers sent as given (no client-side
/// validation or normalisation): the `:status` and body, as JSON text.
fn h2_in(cg: &TestCgroup, port: u16, headers: &[(&[u8], &[u8])], body: &[u8]) -> String {
    let hdrs: Vec<Value> = headers
        .iter()
        .map(|(k, v)| json!([hex(k), hex(v)]))
        .collect();
    let code = format!(
        r#"
import socket, json, h2.connection, h2.config, h2.events
hdrs = [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in json.loads('{hdrs}')]
body = bytes.fromhex('{body}')
cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
    normalize_outbound_headers=False, validate_inbound_headers=False)
c = h2.connection.H2Connection(config=cfg)
s = socket.create_connection(('127.0.0.1', {port}), 5); s.settimeout(5)
c.initiate_connection(); s.sendall(c.data_to_send())
sid = c.get_next_available_stream_id()
c.send_headers(sid, hdrs, end_stream=not body)
if body: c.send_data(sid, body, end_stream=True)
s.sendall(c.data_to_send())
status = None; data = b''; done = False; why = None
while not done:
    try: d = s.recv(65536)
    except socket.timeout: why = 'timeout'; break
    if not d: why = 'closed'; break
    for e in c.receive_data(d):
        if isinstance(e, h2.events.ResponseReceived): status = dict(e.headers).get(b':status')
        elif isinstance(e, h2.events.DataReceived):
            data += e.data; c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)):
            done = True; why = type(e).__name__
    s.sendall(c.data_to_send())
print(json.dumps({{"status": status.decode() if status else None, "why": why, "body": data[:300].decode(errors='replace')}}))
"#,
        hdrs = serde_json::to_string(&hdrs).unwrap(),
        body = hex(body),
    );
    venv_in(cg, &code)
}

fn h1_request(head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = head.to_vec();
    r.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    r.extend_from_slice(body);
    r
}

/// Fails the test if the upstream ran a refund the policy denies; shows what it ran and what
/// the gateway recorded.
fn no_denied_refund_ran(up: &Party, gw: &Gateway) {
    let ran = big_refunds(up);
    println!("upstream ran: {:#?}", up.requests());
    for r in records(gw) {
        println!("record: {} {} {}", r["function"], r["decision"], r["args"]);
    }
    assert!(ran.is_empty(), "denied refunds ran: {ran:#?}");
}

/// A header field as sent, name and value.
type Field = (&'static [u8], &'static [u8]);

/// The refunds the upstream ran for more than 100.
fn big_refunds(up: &Party) -> Vec<Value> {
    up.requests()
        .into_iter()
        .filter(|r| {
            r["ran"] == "refund"
                && r["amount"]
                    .as_str()
                    .map(|s| s.trim().parse::<f64>().unwrap_or(0.0))
                    .or_else(|| r["amount"].as_f64())
                    .is_some_and(|a| a > 100.0)
        })
        .collect()
}

/// JSON to the gateway, a form to the server: the body is JSON whose string value carries
/// `&amount=5000`, the Content-Type the gateway reads is not the form type werkzeug reads.
const SPLIT_BODY: &[u8] = br#"{"amount":5,"to":"customer","x":"&amount=5000&y="}"#;

#[test]
fn content_type_read_two_ways_over_http1() {
    let test = "content_type_read_two_ways_over_http1";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let up = refunds_upstream(&work);
    let s = setup(test, &[("payments", &payments(up.port))]);
    let port = up.port;
    let line = b"POST /v1/payments/p1/refund HTTP/1.1\r\nHost: 127.0.0.1\r\n";

    // Controls: a big refund as JSON and as a form is denied.
    let mut h = line.to_vec();
    h.extend_from_slice(b"Content-Type: application/json\r\n");
    let out = raw_in(
        &s.cg,
        port,
        &h1_request(&h, br#"{"amount":5000,"to":"customer"}"#),
    );
    println!("control json: {}", out.lines().next().unwrap_or(""));
    let mut h = line.to_vec();
    h.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded\r\n");
    let out = raw_in(&s.cg, port, &h1_request(&h, b"amount=5000&to=customer"));
    println!("control form: {}", out.lines().next().unwrap_or(""));
    assert!(
        big_refunds(&up).is_empty(),
        "controls ran: {:?}",
        up.requests()
    );

    // A: a Content-Type with a byte that is not visible ASCII (obs-text, which httparse and
    // werkzeug accept): the gateway cannot read it as text and reads the body as JSON;
    // werkzeug reads the form type before the `;`.
    let mut h = line.to_vec();
    h.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded; charset=\xe9\r\n");
    let out = raw_in(&s.cg, port, &h1_request(&h, SPLIT_BODY));
    println!(
        "A obs-text content-type: {}",
        out.lines().next().unwrap_or("")
    );
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("bad_content_type"),
        "{out}"
    );

    // B: two Content-Types: the gateway reads the first (JSON), werkzeug's environ keeps the
    // last (the form).
    let mut h = line.to_vec();
    h.extend_from_slice(
        b"Content-Type: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\n",
    );
    let out = raw_in(&s.cg, port, &h1_request(&h, SPLIT_BODY));
    println!("B two content-types: {}", out.lines().next().unwrap_or(""));
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("bad_content_type"),
        "{out}"
    );

    no_denied_refund_ran(&up, &s.gw);
}

#[test]
fn h2c_requests_read_as_the_http1_upstream_reads_them() {
    let test = "h2c_requests_read_as_the_http1_upstream_reads_them";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let up = refunds_upstream(&work);
    let s = setup(test, &[("payments", &payments(up.port))]);
    let port = up.port;
    let auth = format!("127.0.0.1:{port}");
    let base = |extra: &[(&'static [u8], &'static [u8])]| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (b":authority".to_vec(), auth.as_bytes().to_vec()),
            (b":path".to_vec(), b"/v1/payments/p1/refund".to_vec()),
        ];
        v.extend(extra.iter().map(|(k, v)| (k.to_vec(), v.to_vec())));
        v
    };
    let send = |name: &str, hs: Vec<(Vec<u8>, Vec<u8>)>, body: &[u8]| {
        let hs: Vec<(&[u8], &[u8])> = hs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        let out = h2_in(&s.cg, port, &hs, body);
        println!("{name}: {out}");
        out
    };

    send(
        "control json",
        base(&[(b"content-type", b"application/json")]),
        br#"{"amount":5000,"to":"customer"}"#,
    );
    send(
        "control allowed",
        base(&[(b"content-type", b"application/json")]),
        br#"{"amount":5,"to":"customer"}"#,
    );
    // The same two content-type readings, over h2 to the HTTP/1.1 upstream.
    for (name, fields) in [
        (
            "h2 obs-text content-type",
            &[(
                &b"content-type"[..],
                &b"application/x-www-form-urlencoded; charset=\xe9"[..],
            )][..],
        ),
        (
            "h2 two content-types",
            &[
                (&b"content-type"[..], &b"application/json"[..]),
                (b"content-type", b"application/x-www-form-urlencoded"),
            ],
        ),
    ] {
        let out = send(name, base(fields), SPLIT_BODY);
        assert!(
            out.contains(r#""status": "400""#) && out.contains("bad_content_type"),
            "{name}: {out}"
        );
    }
    // Downgrade: connection-specific fields and CR/LF in values smuggled through h2.
    let smuggled = b"0\r\n\r\nPOST /v1/payments/p2/refund HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n{\"amount\":9000,\"to\":\"customer\"}";
    let json = (&b"content-type"[..], &b"application/json"[..]);
    let form = &b"application/x-www-form-urlencoded"[..];
    let cases: [(&str, Vec<Field>, &[u8]); 5] = [
        (
            "h2 transfer-encoding",
            vec![
                (b"content-type", b"text/plain"),
                (b"transfer-encoding", b"chunked"),
            ],
            smuggled,
        ),
        (
            "h2 CRLF in a value",
            vec![
                json,
                (
                    b"x-a",
                    b"1\r\nContent-Type: application/x-www-form-urlencoded",
                ),
            ],
            SPLIT_BODY,
        ),
        (
            "h2 colon in a name",
            vec![json, (b"x:content-type", form)],
            SPLIT_BODY,
        ),
        (
            "h2 upper-case content-type name",
            vec![json, (b"Content-Type", form)],
            SPLIT_BODY,
        ),
        (
            "h2 authority/host disagree",
            vec![json, (b"host", b"payments.other:80")],
            br#"{"amount":5000,"to":"customer"}"#,
        ),
    ];
    for (name, fields, body) in cases {
        send(name, base(&fields), body);
    }
    send(
        "h2 CONNECT",
        vec![
            (b":method".to_vec(), b"CONNECT".to_vec()),
            (b":authority".to_vec(), auth.as_bytes().to_vec()),
        ],
        b"",
    );
    send(
        "h2 extended CONNECT",
        base(&[(b":protocol", b"websocket")])
            .into_iter()
            .map(|(k, v)| {
                if k == b":method" {
                    (k, b"CONNECT".to_vec())
                } else {
                    (k, v)
                }
            })
            .collect(),
        b"",
    );
    no_denied_refund_ran(&up, &s.gw);
}

#[test]
fn grpc_metadata_given_twice() {
    let test = "grpc_metadata_given_twice";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let up = grpc_admin_party(&work);
    let port = up.port;
    let policy = format!(
        r#"
service: admin
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: grpc
functions:
  delete: {{ method: /demo.Admin/Delete }}
rules:
  - name: sandbox-deletes-only
    function: delete
    args: {{ "$.metadata['x-team']": {{ eq: sandbox }} }}
    action: allow
"#
    );
    let s = setup(test, &[("admin", &policy)]);
    let code = format!(
        r#"
import grpc
ch = grpc.insecure_channel('127.0.0.1:{port}')
call = ch.unary_unary('/demo.Admin/Delete')
for md in ([('x-team', 'prod')], [('x-team', 'sandbox')], [('x-team', 'prod'), ('x-team', 'sandbox')]):
    try:
        print(md, 'OK', call(b'x', metadata=md, timeout=5))
    except grpc.RpcError as e:
        print(md, e.code(), e.details())
"#
    );
    let out = venv_in(&s.cg, &code);
    println!("{out}");
    assert!(
        out.contains("('x-team', 'sandbox')] StatusCode.INVALID_ARGUMENT"),
        "metadata given twice with different values is refused: {out}"
    );
    let reqs = up.requests();
    println!("upstream ran: {reqs:#?}");
    for r in records(&s.gw) {
        println!("record: {} {} {}", r["function"], r["decision"], r["args"]);
    }
    let prod: Vec<_> = reqs.iter().filter(|r| r["team"] != "sandbox").collect();
    assert!(
        prod.is_empty(),
        "a delete for a team other than sandbox ran: {prod:#?}"
    );
}

#[test]
fn encodings_and_upgrades() {
    let test = "encodings_and_upgrades";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let up = refunds_upstream(&work);
    let s = setup(test, &[("payments", &payments(up.port))]);
    let port = up.port;
    let gz = |b: &[u8]| -> Vec<u8> {
        let code = format!(
            "import gzip,sys; sys.stdout.write(gzip.compress(bytes.fromhex('{}')).hex())",
            hex(b)
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &code])
            .output()
            .unwrap();
        let h = String::from_utf8(out.stdout).unwrap();
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    let big = br#"{"amount":5000,"to":"customer"}"#;
    let line = b"POST /v1/payments/p1/refund HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
    for (name, enc) in [
        ("gzip", &b"Content-Encoding: gzip\r\n"[..]),
        (
            "gzip named by Connection",
            b"Content-Encoding: gzip\r\nConnection: content-encoding\r\n",
        ),
        (
            "identity then gzip",
            b"Content-Encoding: identity\r\nContent-Encoding: gzip\r\n",
        ),
        ("Gzip capital", b"Content-Encoding: Gzip\r\n"),
    ] {
        let mut h = line.to_vec();
        h.extend_from_slice(enc);
        let out = raw_in(&s.cg, port, &h1_request(&h, &gz(big)));
        println!("{name}: {}", out.lines().next().unwrap_or(""));
    }
    // gzip over h2.
    let auth = format!("127.0.0.1:{port}");
    let body = gz(big);
    let out = h2_in(
        &s.cg,
        port,
        &[
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", auth.as_bytes()),
            (b":path", b"/v1/payments/p1/refund"),
            (b"content-type", b"application/json"),
            (b"content-encoding", b"gzip"),
        ],
        &body,
    );
    println!("h2 gzip: {out}");
    // Upgrades: websocket and h2c on the request line, then a denied call on the connection.
    let mut ws = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    ws.extend_from_slice(&h1_request(
        b"POST /v1/payments/p1/refund HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n",
        big,
    ));
    let out = raw_in(&s.cg, port, &ws);
    println!("websocket then refund: {}", out.replace("\r\n", " | "));
    let mut h2up = b"POST /v1/payments/p1/refund HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Type: application/json\r\n".to_vec();
    h2up = h1_request(&h2up, big);
    let out = raw_in(&s.cg, port, &h2up);
    println!("upgrade h2c: {}", out.lines().next().unwrap_or(""));
    let out = raw_in(
        &s.cg,
        port,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    );
    println!("CONNECT: {}", out.lines().next().unwrap_or(""));
    no_denied_refund_ran(&up, &s.gw);
    let _ = fs::metadata(&up.log);
}

/// A Go net/http upstream (encoding/json into a struct, as most Go services read a body):
/// Go matches object keys to struct fields without case and the last match wins, so
/// `{"amount":5,…,"Amount":5000}` was a refund of 5000 to Go and `{"AMOUNT":5000,…}` one the
/// gateway decided without seeing an amount. Names equal under case folding are now one
/// argument: refused with two values, and read by every condition on the name.
#[test]
fn go_reads_json_keys_case_insensitively() {
    let test = "go_reads_json_keys_case_insensitively";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let Some(up) = go_party(test, &dir) else {
        return;
    };
    let port = up.port;
    let policies = policy_repo(&dir, REPO, &[("payments", &payments(port))]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{port}/v1/payments/p1/refund");
    let post = |body: &str| {
        curl_in(
            &cg,
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        )
        .1
    };
    let mut ran_denied = Vec::new();
    for body in [
        r#"{"amount": 5000, "to": "customer"}"#,
        r#"{"amount": 5, "to": "customer"}"#,
        r#"{"amount": 5, "to": "customer", "Amount": 5000}"#,
        r#"{"amount": 5, "to": "customer", "AMOUNT": 5000}"#,
        r#"{"amount": 5, "to": "customer", "\u0041mount": 5000}"#,
        r#"{"amount": 5, "to": "customer", "TO": "attacker"}"#,
        r#"{"Amount": 5000, "amount": 5, "to": "customer"}"#,
        // Alone, in another case: Go reads it as the amount; so does every condition on it.
        r#"{"AMOUNT": 5000, "to": "customer"}"#,
        r#"{"amount": 5, "To": "attacker"}"#,
    ] {
        let before = up.requests().len();
        let out = post(body);
        let after = up.requests();
        let ran: Vec<&Value> = after[before..].iter().collect();
        println!(
            "=== {body}\n  client: {}\n  go ran: {ran:?}",
            out.replace('\n', " | ")
        );
        for r in ran {
            if r["view"] == "refund"
                && (r["amount"].as_f64().unwrap_or(0.0) > 100.0 || r["to"] != "customer")
            {
                ran_denied.push(format!("{body} -> go ran {r}"));
            }
        }
    }
    println!("DENIED CALLS THAT RAN:\n{}", ran_denied.join("\n"));
    assert!(ran_denied.is_empty(), "{}", ran_denied.join("\n"));
}

/// The same Go upstream as an MCP server (`POST /mcp`, each message read with encoding/json
/// into a struct): a member spelled as `method`, `params`, `name` or `arguments` only under
/// case folding is that member to Go, and the last one wins, so `{"method":"ping",
/// "Method":"tools/call",…}` was a `ping` to the gateway (allowed without a rule) and a
/// `tools/call` of a denied tool to Go; so was a `tools/call` of `search_docs` with
/// `"NAME":"delete_table"`. Such members are now refused; what Go ran is asserted.
#[test]
fn go_reads_rpc_members_case_insensitively() {
    let test = "go_reads_rpc_members_case_insensitively";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let Some(up) = go_party(test, &dir) else {
        return;
    };
    let port = up.port;
    let tools = format!(
        r#"
service: tools
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
functions:
  search_docs: {{}}
  send_payment: {{}}
  delete_table: {{}}
rules:
  - {{ name: search, function: search_docs, action: allow }}
  - name: pay-alice
    function: send_payment
    args: {{ recipient: {{ eq: alice }} }}
    action: allow
"#
    );
    let s = setup(test, &[("tools", &tools)]);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let ran_allowed = |r: &Value| match r["tool"].as_str().unwrap_or("") {
        _ if r["rpc_method"] != "tools/call" => true,
        "search_docs" => true,
        "send_payment" => r["recipient"] == "alice",
        _ => false,
    };
    let call = |body: &str| {
        let before = up.requests().len();
        let (_, out) = curl_in(
            &s.cg,
            &[
                "-H",
                "Content-Type: application/json",
                "-H",
                "Accept: application/json, text/event-stream",
                "--data-binary",
                body,
                "-w",
                "
%{http_code}",
                &url,
            ],
        );
        let ran: Vec<Value> = up.requests()[before..].to_vec();
        println!(
            "=== {body}\n  client: {}\n  go ran: {ran:?}",
            out.replace('\n', " | ")
        );
        ran
    };
    // Spelled as the gateway reads them: decided, and run as decided.
    let ran = call(
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{}}}"#,
    );
    assert!(
        ran.iter().any(|r| r["tool"] == "search_docs"),
        "the allowed call ran: {ran:?}"
    );
    let mut ran_denied = Vec::new();
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_table","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"delete_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","NAME":"delete_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"},"Params":{"name":"delete_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"result":null,"Method":"tools/call","params":{"name":"delete_table"}}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_payment","arguments":{"recipient":"alice","Recipient":"mallory"}}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","Name":"delete_table"}}]"#,
    ] {
        for r in call(body) {
            if !ran_allowed(&r) {
                ran_denied.push(format!("{body} -> go ran {r}"));
            }
        }
    }
    assert!(
        ran_denied.is_empty(),
        "{}\n{}",
        ran_denied.join("\n"),
        s.gw.log()
    );
}

/// The Go upstream, built and started for `test` in `dir`; None (the test skipped) without
/// Go.
fn go_party(test: &str, dir: &Path) -> Option<Party> {
    let Some(bin) = go_upstream(dir) else {
        skip(test, "go (Debian's golang-go) is not installed");
        return None;
    };
    let port = free_port();
    let log = dir.join("go.jsonl");
    Some(Party::start(
        &[
            &bin.display().to_string(),
            &port.to_string(),
            &log.display().to_string(),
        ],
        port,
        log,
    ))
}

/// The Go refunds upstream (`tests/parties/gorefunds`), built with Debian's golang-go (its
/// build cache kept under `target/testenv`), or None without Go.
fn go_upstream(dir: &Path) -> Option<std::path::PathBuf> {
    std::process::Command::new("go")
        .arg("version")
        .output()
        .ok()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = dir.join("gorefunds");
    let out = std::process::Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(root.join("parties/gorefunds/main.go"))
        .env("GOCACHE", root.join("../target/testenv/gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

/// A JSON-RPC and an MCP service on servers that also have REST routes (`upstream.py`:
/// `/rpc` beside `/v1/payments/…`), each with its `endpoint`: a request to a REST route
/// whose body passes for protocol housekeeping (a client's response, an MCP `ping` with a
/// refund's fields beside it) or an MCP GET without a body is decided as the undeclared
/// `METHOD /path` (denied) instead of passing undecided, while messages on the endpoint go
/// on as before. Found by an attacker's read of extraction: every path of an MCP or
/// JSON-RPC service's host was read as its protocol, and such requests reached the REST
/// routes with no rule consulted. What the upstream received is asserted.
#[test]
fn rpc_services_are_spoken_on_their_endpoint_only() {
    let test = "rpc_services_are_spoken_on_their_endpoint_only";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let (rpc, mcp) = (upstream(&dir, None), upstream(&dir, None));
    let ledger = format!(
        "service: ledger\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: jsonrpc\nendpoint: [/rpc]\n\
         functions:\n  balance: {{ method: ledger.balance }}\n\
         rules:\n  - {{ name: balances, function: balance, action: allow }}\n",
        rpc.port
    );
    let tools = format!(
        "service: tools\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: mcp\nendpoint: [/mcp]\n\
         functions:\n  search_docs: {{}}\n\
         rules:\n  - {{ name: search, function: search_docs, action: allow }}\n",
        mcp.port
    );
    let s = setup(test, &[("ledger", &ledger), ("tools", &tools)]);
    let send = |port: u16, method: &str, path: &str, body: Option<&str>| {
        let url = format!("http://127.0.0.1:{port}{path}");
        let mut argv = vec!["-X", method, "-w", "\n%{http_code}", url.as_str()];
        if let Some(b) = body {
            argv.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let (_, out) = curl_in(&s.cg, &argv);
        println!(
            "=== {method} {path} {body:?}\n  client: {}",
            out.replace('\n', " | ")
        );
        out
    };
    let reached = |p: &Party, path: &str| p.requests().iter().any(|r| r["path"] == path);
    // On the endpoints: as before.
    let out = send(
        rpc.port,
        "POST",
        "/rpc",
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"ledger.balance","params":{}}"#),
    );
    assert!(out.ends_with("200") && reached(&rpc, "/rpc"), "{out}");
    let out = send(
        mcp.port,
        "POST",
        "/mcp",
        Some(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
    );
    assert!(
        reached(&mcp, "/mcp"),
        "a ping on the endpoint is forwarded: {out}"
    );
    // Elsewhere: a message refused (400), the rest denied (403), never forwarded.
    for (p, method, path, body) in [
        (
            &rpc,
            "POST",
            "/v1/payments/p1/refund",
            Some(r#"{"jsonrpc":"2.0","id":1,"result":null,"amount":5000}"#),
        ),
        (
            &mcp,
            "POST",
            "/v1/payments/p2/refund",
            Some(r#"{"jsonrpc":"2.0","id":1,"method":"ping","amount":5000}"#),
        ),
        (&mcp, "GET", "/v1/payments/p3", None),
        (&mcp, "DELETE", "/v1/payments/p4", None),
        (
            &mcp,
            "POST",
            "/mcp/x",
            Some(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
        ),
        // The endpoint in another case (Express routes it there): a call, decided.
        (
            &mcp,
            "POST",
            "/MCP",
            Some(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_table"}}"#,
            ),
        ),
        (
            &mcp,
            "POST",
            "/v1/payments/p5/refund",
            Some(r#"{"amount":5000}"#),
        ),
    ] {
        let out = send(p.port, method, path, body);
        // Refused, denied, or (a call on the endpoint) denied as MCP answers it.
        assert!(
            out.ends_with("400") || out.ends_with("403") || out.contains("\"code\":-32001"),
            "{method} {path}: {out}"
        );
        assert!(
            !reached(p, path),
            "{method} {path} reached the upstream: {out}\n{}",
            s.gw.log()
        );
    }
}

/// Field names with `_` are dropped on the way upstream, as nginx drops them by default: a
/// server that reads fields as CGI variables (Puma, PHP) folds `-` and `_`, so
/// `X_HTTP_Method_Override: DELETE` is the override the gateway refuses when spelled with
/// dashes (Rails routes a POST as a DELETE by it), and `X_Api_Key` stands beside a credential
/// injected as `X-Api-Key`. What the upstream received is asserted.
#[test]
fn field_names_with_underscores_do_not_reach_the_upstream() {
    let test = "field_names_with_underscores_do_not_reach_the_upstream";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let up = upstream(&dir, None);
    let service = format!(
        "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  refund: {{ route: \"POST /v1/payments/{{payment_id}}/refund\" }}\n\
         rules:\n  - {{ name: refunds, function: refund, action: allow }}\n",
        up.port
    );
    let s = setup(test, &[("payments", &service)]);
    let url = format!("http://127.0.0.1:{}/v1/payments/p1/refund", up.port);
    // Spelled with dashes, the override is refused.
    let (_, out) = curl_in(
        &s.cg,
        &[
            "-H",
            "X-HTTP-Method-Override: DELETE",
            "-d",
            "{}",
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    assert!(out.ends_with("400"), "{out}");
    let (_, out) = curl_in(
        &s.cg,
        &[
            "-H",
            "X_HTTP_Method_Override: DELETE",
            "-H",
            "X_Api_Key: attacker",
            "-H",
            "X-Kept: yes",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{}",
            "-w",
            "\n%{http_code}",
            &url,
        ],
    );
    assert!(out.ends_with("200"), "{out}");
    let got = up.requests();
    let last = got.last().expect("the refund reached the upstream");
    let names: Vec<&String> = last["headers"]
        .as_object()
        .expect("headers")
        .keys()
        .collect();
    assert!(names.iter().any(|n| *n == "x-kept"), "{names:?}");
    assert!(names.iter().all(|n| !n.contains('_')), "{names:?}");
}

/// PHP and Rack (Rails, Sinatra) rewrite parameter names before an application reads them:
/// PHP drops leading spaces, cuts a name at a NUL and reads `.` and ` ` as `_`; Rack drops
/// the brackets around a name; both read `name[]` as a list under `name`. The old binary read
/// names as sent, so against the real servers (`tests/parties/params.php` on PHP's built-in
/// server, `params.rb` on Rack + WEBrick) denied calls ran: on PHP, refunds of 5000
/// (`?amount=5&%20amount=5000`) or of an amount PHP read as a list
/// (`?amount=5&amount%5B%5D=5000`), refunds to the attacker (`to.account=attacker` or
/// `to%20account=attacker` beside `to_account=customer`) where the policy allows at most 100
/// to the customer, and deletes sent as `POST` with a form's `.method=DELETE` or
/// `%20_method=DELETE`; on Rack, deletes with `[_method]=DELETE` or `_method]=DELETE`.
///
/// An attacker's pass then found `_method` where the gateway did not read a body for
/// arguments (a multipart part; a form with a content coding, which neither PHP nor WEBrick
/// inflates; a form type PHP cuts at a space; no type at all, which Rack reads as a form; any
/// POST body of a plain `http` service), Slim's `_METHOD`, a form of more than 1,000
/// parameters (PHP reads the first 1,000: the amount decided on was dropped) and a form byte
/// that is not UTF-8 (werkzeug then reads no form at all). A second pass found multipart part
/// headers that PHP, Rack or Go read as naming `_method` where the gateway's first reading of
/// them did not (a folded line, two `name`s, single quotes, a `;` in a quoted value, Rack's
/// `Content-ID`). All are refused now; what each server ran is asserted. `name[...]` alone,
/// and a plain multipart upload, are still served.
#[test]
fn servers_that_rewrite_parameter_names_read_what_was_decided() {
    let test = "servers_that_rewrite_parameter_names_read_what_was_decided";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let Some((php, rack)) = name_rewriting_parties(test, &dir) else {
        return;
    };
    // A second PHP server behind a plain `http` service, whose bodies are not read for
    // arguments.
    let Some((php_http, _)) = name_rewriting_parties(test, &dir) else {
        return;
    };
    let service = |name: &str, port: u16, protocol: &str| {
        format!(
            r#"
service: {name}
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: {protocol}
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  delete: {{ route: "DELETE /v1/payments/{{payment_id}}" }}
rules:
  - {{ name: big-refunds, function: refund, args: {{ amount: {{ gt: 100 }} }}, action: deny }}
  - name: customer-refunds
    function: refund
    args: {{ to_account: {{ eq: customer }} }}
    action: allow
  - {{ name: other-refunds, function: refund, action: deny }}
  - {{ name: no-deletes, function: delete, action: deny }}
  - {{ name: everything-else, function: "*", action: allow }}
"#
        )
    };
    let s = setup(
        test,
        &[
            ("php", &service("php", php.port, "rest")),
            ("rack", &service("rack", rack.port, "rest")),
            ("php-http", &service("php-http", php_http.port, "http")),
        ],
    );
    // What a server ran that the policy denies: a delete, or a refund that is not of at most
    // 100 to the customer (as the server read its parameters).
    let denied = |r: &Value| {
        let p = &r["params"];
        let small = p["amount"]
            .as_str()
            .and_then(|a| a.parse::<f64>().ok())
            .is_some_and(|a| a <= 100.0);
        r["method"] == "DELETE"
            || (r["path"].as_str().unwrap_or("").ends_with("/refund")
                && !(small && p["to_account"] == "customer"))
    };
    const FORM: &str = "Content-Type: application/x-www-form-urlencoded";
    const MULTIPART: &str = "Content-Type: multipart/form-data; boundary=XX";
    let bodies = dir.join("bodies");
    fs::create_dir_all(&bodies).expect("bodies");
    let (mut ran_denied, mut not_refused) = (Vec::new(), Vec::new());
    let mut n = 0;
    // The `http` service reads no body for arguments: its refunds are denied whatever they
    // say, and only what it does read (the query, a `_method` field) is tried there.
    for (up, reads_bodies) in [(&php, true), (&rack, true), (&php_http, false)] {
        let base = format!("http://127.0.0.1:{}/v1/payments", up.port);
        // `headers` replace the form's type when one is a `Content-Type` (empty: none).
        let mut send = |path_query: &str, headers: &[&str], body: &[u8]| {
            let before = up.requests().len();
            let url = format!("{base}{path_query}");
            n += 1;
            let file = bodies.join(n.to_string());
            fs::write(&file, body).expect("body");
            let data = format!("@{}", file.display());
            let mut argv = vec!["--data-binary", data.as_str(), "-w", "\n%{http_code}"];
            if !headers.iter().any(|h| h.starts_with("Content-Type:")) {
                argv.extend(["-H", FORM]);
            }
            for h in headers {
                argv.extend(["-H", h]);
            }
            argv.push(&url);
            let (_, out) = curl_in(&s.cg, &argv);
            let ran: Vec<Value> = up.requests()[before..].to_vec();
            let shown = String::from_utf8_lossy(&body[..body.len().min(120)]);
            println!("=== {url} {headers:?} {shown}\n  client: {out:?}\n  ran: {ran:?}");
            (out, ran, format!("{path_query} {headers:?} {shown}"))
        };
        // As the gateway reads them: decided, and run as decided.
        let (out, ran, _) = send("/p1/refund", &[], b"amount=5&to_account=customer");
        match reads_bodies {
            true => assert!(out.ends_with("200") && ran.len() == 1, "{out} {ran:?}"),
            false => assert!(out.ends_with("403") && ran.is_empty(), "{out} {ran:?}"),
        }
        let (out, _, _) = send("/p1/refund", &[], b"amount=5000&to_account=customer");
        assert!(out.ends_with("403"), "{out}");
        // A delete is denied (on the `http` service too: its routes name its functions).
        let url = format!("{base}/p1");
        let (_, out) = curl_in(&s.cg, &["-X", "DELETE", "-w", "\n%{http_code}", &url]);
        assert!(out.ends_with("403"), "a delete is denied: {out}");
        // Nested names alone are served.
        let (out, ran, _) = send("/search?filter%5Bstatus%5D=open&ids%5B%5D=1", &[], b"");
        assert!(out.ends_with("200") && ran.len() == 1, "{out} {ran:?}");
        // So is a multipart upload without a `_method` part.
        let upload = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhello\r\n--XX--\r\n";
        let (out, ran, _) = send("/p1/attachments", &[MULTIPART], upload);
        assert!(out.ends_with("200") && ran.len() == 1, "{out} {ran:?}");

        let many: String = (0..1100).map(|i| format!("x{i}=1&")).collect();
        let many_then_amount = format!("to_account=customer&{many}amount=5");
        let filler_then_method = format!("{many}_method=DELETE");
        let attacks: Vec<(&str, Vec<&str>, Vec<u8>)> = vec![
            ("/p1/refund?amount=5&%20amount=5000", vec![], b"to_account=customer".to_vec()),
            ("/p1/refund?%5Bamount%5D=5000", vec![], b"to_account=customer".to_vec()),
            ("/p1/refund?amount%5D=5000", vec![], b"to_account=customer".to_vec()),
            ("/p1/refund?amount=5&amount%00x=5000", vec![], b"to_account=customer".to_vec()),
            ("/p1/refund?amount=5&amount%5B%5D=5000", vec![], b"to_account=customer".to_vec()),
            ("/p1/refund", vec![], b"amount=5&to_account=customer&to.account=attacker".to_vec()),
            ("/p1/refund", vec![], b"amount=5&to_account=customer&to%20account=attacker".to_vec()),
            // PHP reads only the first 1,000 parameters: the amount decided on is dropped.
            ("/p1/refund", vec![], many_then_amount.into_bytes()),
            // werkzeug drops a form with a byte that is not UTF-8.
            ("/p1/refund", vec![], b"to_account=customer&amount=5&x=\xff".to_vec()),
            ("/p1", vec![], b".method=DELETE".to_vec()),
            ("/p1", vec![], b"%20_method=DELETE".to_vec()),
            ("/p1", vec![], b"%5B_method%5D=DELETE".to_vec()),
            ("/p1", vec![], b"_method%5D=DELETE".to_vec()),
            ("/p1", vec![], b"_METHOD=DELETE".to_vec()),
            ("/p1?_method=DELETE", vec![], b"".to_vec()),
            // `_method` in bodies the gateway does not read for arguments.
            (
                "/p1",
                vec![MULTIPART],
                b"--XX\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            // Part headers PHP, Rack or Go read as `_method` where a first reading did not.
            (
                "/p1",
                vec![MULTIPART],
                b"--XX\r\nContent-Disposition: form-data;\r\n name=\"_method\"\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            (
                "/p1",
                vec![MULTIPART],
                b"--XX\r\nContent-Disposition: form-data; name=\"x\"; name=\"_method\"\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            (
                "/p1",
                vec![MULTIPART],
                b"--XX\r\nContent-Disposition: form-data; name='_method'\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            (
                "/p1",
                vec![MULTIPART],
                b"--XX\r\nContent-Disposition: form-data; foo=\"a;name=x\"; name=\"_method\"\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            (
                "/p1",
                vec![MULTIPART],
                b"--XX\r\nContent-ID: _method\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            // Framing PHP, Rack or Go read where a first reading did not: a delimiter not at
            // the start of a line.
            (
                "/p1",
                vec![MULTIPART],
                b"x--XX\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--XX\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            // A space after `boundary=`: PHP and Rack keep it, a first reading trimmed it.
            (
                "/p1",
                vec!["Content-Type: multipart/form-data; boundary= XX"],
                b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n-- XX\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n-- XX--\r\n\r\n--XX--\r\n".to_vec(),
            ),
            // A type only Go reads as multipart (it trims Unicode spaces and lowers `İ`).
            (
                "/p1",
                vec!["Content-Type: \u{a0}multipart/form-data; boundary=XX"],
                b"--XX\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XX--\r\n".to_vec(),
            ),
            // Past the first 1,000 pairs of an untyped body (Rack reads 4,096); in JSON serde
            // cannot read (PHP's json_decode reads 1e400).
            ("/p1", vec!["Content-Type:"], filler_then_method.into_bytes()),
            (
                "/p1",
                vec!["Content-Type: application/json"],
                br#"{"_method":"DELETE","x":1e400}"#.to_vec(),
            ),
            ("/p1", vec!["Content-Encoding: gzip"], b"_method=DELETE".to_vec()),
            ("/p1", vec!["Content-Type: application/x-www-form-urlencoded x"], b"_method=DELETE".to_vec()),
            ("/p1", vec!["Content-Type:"], b"_method=DELETE".to_vec()),
            ("/p1", vec!["Content-Type: application/json"], br#"{"_method":"DELETE"}"#.to_vec()),
        ];
        for (path_query, headers, body) in &attacks {
            // A body's arguments: unread on the `http` service (denied there as unknown).
            let body_args = *path_query == "/p1/refund";
            if body_args && !reads_bodies {
                continue;
            }
            let (out, ran, what) = send(path_query, headers, body);
            for r in ran.iter().filter(|r| denied(r)) {
                ran_denied.push(format!("{what} -> {} ran {r}", r["server"]));
            }
            if !out.ends_with("\n400") {
                not_refused.push(format!("{what} -> {out}"));
            }
        }
    }
    assert!(
        ran_denied.is_empty(),
        "DENIED CALLS THAT RAN:\n{}\n{}",
        ran_denied.join("\n"),
        s.gw.log()
    );
    assert!(not_refused.is_empty(), "{}", not_refused.join("\n"));
}

/// PHP's built-in server with `tests/parties/params.php`, and Rack on WEBrick with
/// `params.rb`, started for `test`; None (the test skipped) without PHP or Ruby.
fn name_rewriting_parties(test: &str, dir: &Path) -> Option<(Party, Party)> {
    let have = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("php", &["--version"]) || !have("ruby", &["-rrack", "-rwebrick", "-e", "1"]) {
        skip(
            test,
            "php-cli, or ruby with ruby-rack and ruby-webrick, is not installed",
        );
        return None;
    }
    let port = free_port();
    let log = dir.join(format!("php-{port}.jsonl"));
    let php = Party::start(
        &[
            "env",
            &format!("CALLGATE_PARTY_LOG={}", log.display()),
            "php",
            "-S",
            &format!("127.0.0.1:{port}"),
            &party_script("params.php").display().to_string(),
        ],
        port,
        log,
    );
    let port = free_port();
    let log = dir.join(format!("rack-{port}.jsonl"));
    let rack = Party::start(
        &[
            "ruby",
            &party_script("params.rb").display().to_string(),
            &port.to_string(),
            &log.display().to_string(),
        ],
        port,
        log,
    );
    Some((php, rack))
}

/// A quota per argument counts the argument as Go reads it: `{"To":"c9"}` is the field `to`
/// to `encoding/json`, as it is to every condition. The count once read the name exactly, so
/// `To` and `TO` each started a bucket of their own (an attacker's pass ran four refunds to
/// one account under a quota of two).
#[test]
fn a_quota_per_argument_counts_its_name_in_any_case() {
    let test = "a_quota_per_argument_counts_its_name_in_any_case";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let Some(up) = go_party(test, &dir) else {
        return;
    };
    let policy = format!(
        "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  refund: {{ route: \"POST /v1/payments/{{payment_id}}/refund\" }}\n\
         rules:\n  - name: two-refunds-per-account\n    function: refund\n    action: allow\n\
         \x20   quota: {{ per: [args.to], calls: 2/d }}\n",
        up.port
    );
    let policies = policy_repo(&dir, REPO, &[("payments", &policy)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{}/v1/payments/p1/refund", up.port);
    let post = |body: &str| {
        let h = "Content-Type: application/json";
        status_in(&cg, &["-H", h, "--data-binary", body, &url])
    };
    assert_eq!(post(r#"{"amount": 5, "to": "c9"}"#), "200");
    assert_eq!(post(r#"{"amount": 5, "to": "c9"}"#), "200");
    for body in [
        r#"{"amount": 5, "To": "c9"}"#,
        r#"{"amount": 5, "TO": "c9"}"#,
        r#"{"amount": 5, "to": "c9"}"#,
    ] {
        assert_eq!(post(body), "429", "{body}");
    }
    let to_c9 = up
        .requests()
        .iter()
        .filter(|r| r["view"] == "refund" && r["to"] == "c9")
        .count();
    assert_eq!(to_c9, 2, "{:?}", up.requests());
}
