//! What an upstream sends back on a masked service never reaches the client (or the record) in
//! clear, however its head frames or labels it: a raw HTTP/1 upstream
//! (`tests/parties/raw_answers.py`) sends each answer byte for byte, a raw h2c one
//! (`tests/parties/raw_h2_answers.py`) gRPC answers without h2's own checks. Found by an
//! attacker's pass: `Content-Length: 0` before a chunked body, a 204 or 304 with DATA, card
//! numbers and addresses in `Content-Type` parameters, `Date`, gRPC status fields, trailers
//! named like framing fields and a header's name all reached the client in clear.
use std::fs;

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";
const CARD: &str = "4111 1111 1111 1111";
const CARD_C: &str = "4111111111111111";
const MAIL: &str = "alice@example.com";

fn service(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
service: {name}
match:
  hosts: ["127.0.0.1:{port}"]
protocol: rest
rules:
  - name: everything
    action: allow
response:
  mask: [card_number, email, jwt, aws_access_key, iban]
  {extra}
"#
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn chunk(b: &str) -> String {
    format!("{:x}\r\n{b}\r\n", b.len())
}

const JSON_BODY: &str = r#"{"card":"4111 1111 1111 1111","email":"alice@example.com"}"#;

/// name -> raw answer.
fn answers() -> Vec<(&'static str, String)> {
    let j = JSON_BODY;
    let n = j.len();
    vec![
        // Values upper case where they are themselves, in names (which arrive lower case).
        (
            "hdr-name-upper",
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-AKIAIOSFODNN7EXAMPLE: 1\r\nX-GB82WEST12345698765432: 1\r\nContent-Length: 2\r\n\r\nok".to_string(),
        ),
        // Content-Length: 0 read as "no body" by the masker, while the framing follows the
        // Transfer-Encoding.
        (
            "cl0-chunked",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
                chunk(j)
            ),
        ),
        (
            "chunked-cl0",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 0\r\n\r\n{}0\r\n\r\n",
                chunk(j)
            ),
        ),
        (
            "cl0-te-identity",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\
                 Transfer-Encoding: identity\r\n\r\n{j}"
            ),
        ),
        // Framing fields the header masker skips.
        (
            "ct-param",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; note=\"{CARD} {MAIL}\"\r\n\
                 Content-Length: 2\r\n\r\nok"
            ),
        ),
        (
            "date",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: {CARD} {MAIL}\r\nContent-Length: 2\r\n\r\nok"
            ),
        ),
        (
            "trailer-field",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: {CARD_C}\r\nContent-Length: 2\r\n\r\nok"
            ),
        ),
        (
            "grpc-status-hdr",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ngrpc-status: {CARD} {MAIL}\r\ngrpc-encoding: {MAIL}\r\nContent-Length: 2\r\n\r\nok"
            ),
        ),
        (
            "hdr-name",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-{CARD_C}: 1\r\nContent-Length: 2\r\n\r\nok"
            ),
        ),
        (
            "trailers-framing-names",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
                 Trailer: Date, Content-Type, X-Card\r\n\r\n{}0\r\nDate: {CARD} {MAIL}\r\n\
                 Content-Type: text/plain; x=\"{MAIL}\"\r\nX-Card: {CARD}\r\n\r\n",
                chunk("ok")
            ),
        ),
        // Expected to be handled.
        (
            "early-hints",
            format!(
                "HTTP/1.1 103 Early Hints\r\nLink: </u/{MAIL}>; rel=preload\r\nX-Card: {CARD}\r\n\r\n\
                 HTTP/1.1 100 Continue\r\nX-Mail: {MAIL}\r\n\r\n\
                 HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n{j}"
            ),
        ),
        (
            "http10",
            format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{j}"),
        ),
        (
            "close-no-length",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{j}"
            ),
        ),
        (
            "no-ct",
            format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n{j}"),
        ),
        (
            "x-gzip-upper",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: X-GZIP\r\nContent-Length: {n}\r\n\r\n{j}"
            ),
        ),
        (
            "te-gzip-upper",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: GZIP, chunked\r\n\r\n{}0\r\n\r\n",
                chunk(j)
            ),
        ),
        (
            "te-two-fields",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
                chunk(j)
            ),
        ),
        (
            "ct-png-json",
            format!("HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {n}\r\n\r\n{j}"),
        ),
        (
            "ct-empty",
            format!("HTTP/1.1 200 OK\r\nContent-Type: \r\nContent-Length: {n}\r\n\r\n{j}"),
        ),
        (
            "ct-semicolon-first",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: ;application/octet-stream\r\nContent-Length: {n}\r\n\r\n{j}"
            ),
        ),
        (
            "ct-json-list-after-param",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8, application/octet-stream\r\nContent-Length: {n}\r\n\r\n{j}"
            ),
        ),
        (
            "304-body",
            format!(
                "HTTP/1.1 304 Not Modified\r\nContent-Type: application/json\r\nContent-Length: {n}\r\nX-Card: {CARD}\r\n\r\n{j}"
            ),
        ),
        (
            "multipart-byteranges-200",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: multipart/byteranges; boundary=B\r\nContent-Length: {}\r\n\r\n--B\r\nContent-Type: application/json\r\n\r\n{j}\r\n--B--\r\n",
                n + 48
            ),
        ),
        (
            "sse-split",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{}{}{}0\r\n\r\n",
                chunk("data: 4111 1111\n\n"),
                chunk("data: 1111 1111\n\n"),
                chunk(&format!("data: {MAIL}\n\n"))
            ),
        ),
    ]
}

struct Up {
    party: Party,
}

fn raw_upstream(dir: &std::path::Path) -> Up {
    let port = free_port();
    let log = dir.join(format!("raw-{port}.jsonl"));
    let answers_file = dir.join(format!("answers-{port}.json"));
    let map: serde_json::Map<String, Value> = answers()
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(hex(v.as_bytes()))))
        .collect();
    fs::write(&answers_file, serde_json::to_vec(&map).unwrap()).unwrap();
    let (py, script) = (party_python(), party_script("raw_answers.py"));
    let party = Party::start(
        &[
            &py.display().to_string(),
            &script.display().to_string(),
            "--port",
            &port.to_string(),
            "--log",
            &log.display().to_string(),
            "--answers",
            &answers_file.display().to_string(),
        ],
        port,
        log,
    );
    Up { party }
}

fn leaked(out: &str) -> Vec<&'static str> {
    [
        CARD,
        CARD_C,
        MAIL,
        "4111-1111",
        "akiaiosfodnn7example",
        "gb82west12345698765432",
    ]
    .into_iter()
    .filter(|v| out.contains(v))
    .collect()
}

#[test]
fn raw_answers_never_carry_a_masked_value() {
    let test = "raw_answers_never_carry_a_masked_value";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new("callgate-atk-answers");
    let up = raw_upstream(&dir);
    let port = up.party.port;
    let policies = policy_repo(&dir, REPO, &[("raw", &service("raw", port, ""))]);
    let gw = gateway_with_config(&policies, "http:\n  header_timeout_s: 5\n", &dir);
    let cg = TestCgroup::new("atk-answers");
    gw.enable(&cg);
    let mut leaks = Vec::new();
    for (name, _) in answers() {
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let url = format!("http://127.0.0.1:{port}/{name}");
            let (code, out) = curl_in(
                &cg,
                &[
                    proto,
                    "-D",
                    "-",
                    "-H",
                    "TE: trailers",
                    "-w",
                    "\n[status %{http_code}]",
                    &url,
                ],
            );
            let l = leaked(&out);
            println!(
                "=== {name} {proto}: curl {code} leaked {l:?}\n{}\n",
                out.chars().take(700).collect::<String>()
            );
            if !l.is_empty() {
                leaks.push(format!("{name} {proto}: {l:?}"));
            }
        }
    }
    // The records: none holds a value in clear.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let recs = records(&gw);
    let text = serde_json::to_string(&recs).unwrap();
    for v in [CARD, CARD_C, MAIL] {
        if text.contains(v) {
            for r in &recs {
                let t = r.to_string();
                if t.contains(v) {
                    leaks.push(format!("record holds {v}: {}", &t[..t.len().min(600)]));
                }
            }
        }
    }
    println!("LEAKS:\n{}", leaks.join("\n"));
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
}

/// One gRPC call (h2c, prior knowledge) from `cg` to `path`: every event, as text.
fn grpc_h2(cg: &TestCgroup, port: u16, path: &str) -> String {
    let code = format!(
        r#"
import socket, h2.connection, h2.config, h2.events
cfg = h2.config.H2Configuration(client_side=True, validate_inbound_headers=False)
c = h2.connection.H2Connection(config=cfg)
s = socket.create_connection(('127.0.0.1', {port}), 5); s.settimeout(5)
c.initiate_connection(); s.sendall(c.data_to_send())
sid = c.get_next_available_stream_id()
c.send_headers(sid, [(':method','POST'),(':path','{path}'),(':scheme','http'),(':authority','127.0.0.1:{port}'),('te','trailers'),('content-type','application/grpc')])
c.send_data(sid, b'\x00\x00\x00\x00\x01x', end_stream=True)
s.sendall(c.data_to_send())
out = []; done = False
while not done:
    try: d = s.recv(65536)
    except socket.timeout: out.append('timeout'); break
    if not d: out.append('closed'); break
    try: evs = c.receive_data(d)
    except Exception as ex: out.append('h2 error ' + repr(ex)); break
    for e in evs:
        if isinstance(e, h2.events.DataReceived):
            out.append('DATA ' + e.data.decode('latin-1')); c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif hasattr(e, 'headers') and e.headers:
            out.append(type(e).__name__ + ' ' + repr(e.headers))
        else:
            out.append(type(e).__name__)
        if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)): done = True
    s.sendall(c.data_to_send())
print('\n'.join(out))
"#
    );
    let py = party_python().display().to_string();
    let o = cg.run(&[&py, "-c", &code]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// gRPC goes h2c to an h2c upstream: a bodiless status (204, 304) that still carries the
/// message, `content-length: 0` with a message, and framing-named trailers.
#[test]
fn grpc_answers_never_carry_a_masked_value() {
    let test = "grpc_answers_never_carry_a_masked_value";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new("callgate-atk-grpc");
    // Two raw h2c upstreams: one behind a service that refuses what it cannot mask, one
    // behind a service that lets it pass.
    let raw_h2 = || {
        let port = free_port();
        let log = dir.join(format!("h2-{port}.jsonl"));
        Party::start(
            &[
                &party_python().display().to_string(),
                &party_script("raw_h2_answers.py").display().to_string(),
                "--port",
                &port.to_string(),
                "--log",
                &log.display().to_string(),
            ],
            port,
            log,
        )
    };
    let (up, up2) = (raw_h2(), raw_h2());
    let (port, port2) = (up.port, up2.port);
    let svc = |name: &str, port: u16, unmaskable: &str| {
        format!(
            r#"
service: {name}
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: grpc
functions:
  g204: {{ method: /demo.Greeter/g204 }}
  g304: {{ method: /demo.Greeter/g304 }}
  g200: {{ method: /demo.Greeter/g200 }}
  gcl0: {{ method: /demo.Greeter/gcl0 }}
rules:
  - {{ name: calls, function: "*", action: allow }}
response:
  mask: [card_number, email]
  unmaskable: {unmaskable}
"#
        )
    };
    let policies = policy_repo(
        &dir,
        REPO,
        &[
            ("refusing", &svc("refusing", port, "refuse")),
            ("passing", &svc("passing", port2, "pass")),
        ],
    );
    let gw = gateway_with_config(&policies, "http:\n  header_timeout_s: 5\n", &dir);
    let cg = TestCgroup::new("atk-grpc");
    gw.enable(&cg);
    let mut leaks = Vec::new();
    for (p, label) in [(port, "refuse"), (port2, "pass")] {
        for m in ["g204", "g304", "gcl0", "g200"] {
            let out = grpc_h2(&cg, p, &format!("/demo.Greeter/{m}"));
            // A service that lets what cannot be masked pass gets the message (binary) as
            // sent: its choice. Its heads and trailers are masked all the same.
            let seen: String = out
                .lines()
                .filter(|l| label == "refuse" || !l.starts_with("DATA "))
                .collect::<Vec<_>>()
                .join("\n");
            let l = leaked(&seen);
            println!("=== grpc {label} {m}: leaked {l:?}\n{out}\n");
            if !l.is_empty() {
                leaks.push(format!("grpc {label} {m}: {l:?}"));
            }
        }
    }
    println!("LEAKS:\n{}", leaks.join("\n"));
    assert!(leaks.is_empty(), "leaks:\n{}", leaks.join("\n"));
}
