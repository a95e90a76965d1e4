//! Request smuggling, against upstreams that would run a smuggled request: messages whose
//! length can be read two ways, each with a request hidden behind it that the policy denies.
//! The upstreams log every request they parse: nginx (strict), and a deliberately lenient
//! one that, reached directly, runs the hidden request for nearly every attempt. Through the
//! gateway neither ever runs it, and every request they run is one the gateway decided.
use std::path::Path;

use callgate_e2e::*;
use serde_json::Value;

const VISIBLE: &str = "/v1/payments/p_1/notes";
const HIDDEN: &str = "/v1/payments/p_9/refund";

/// Runs `tests/parties/smuggle.py` against 127.0.0.1:`port` (inside `cg`, or directly);
/// the status lines each attempt got.
fn attempts(cg: Option<&TestCgroup>, port: u16) -> serde_json::Map<String, Value> {
    let script = party_script("smuggle.py").display().to_string();
    let port = port.to_string();
    let argv = ["python3", &script, &port, VISIBLE, HIDDEN];
    let out = match cg {
        Some(cg) => cg.run(&argv),
        None => std::process::Command::new("timeout")
            .arg("30")
            .args(argv)
            .output()
            .expect("python3"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "smuggle.py: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_str(text.trim()) {
        Ok(Value::Object(m)) => m,
        _ => panic!("smuggle.py printed {text}"),
    }
}

/// The paths an upstream ran, in order.
fn ran(p: &Party) -> Vec<String> {
    p.requests()
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect()
}

fn lenient(dir: &Path) -> Party {
    let port = free_port();
    let log = dir.join(format!("lenient-{port}.jsonl"));
    let script = party_script("lenient_upstream.py").display().to_string();
    Party::start(
        &[
            "python3",
            &script,
            "--port",
            &port.to_string(),
            "--log",
            &log.display().to_string(),
        ],
        port,
        log,
    )
}

#[test]
fn smuggled_requests_never_reach_an_upstream_that_would_run_them() {
    const TEST: &str = "smuggled_requests_never_reach_an_upstream_that_would_run_them";
    if !ebpf_available(TEST) || !nginx_available(TEST) {
        return;
    }
    let dir = TestDir::new("callgate-smuggling");
    let loose = lenient(&dir);
    let nginx = Nginx::start(
        &dir,
        r#"location / { return 200 "ran $request_method $request_uri\n"; }"#,
    );

    // The detector works: reached directly, the lenient upstream runs the hidden refund (the
    // two controls included, where it is a pipelined request of its own).
    let direct = attempts(None, loose.port);
    let smuggled_directly = ran(&loose).iter().filter(|p| *p == HIDDEN).count();
    assert!(
        smuggled_directly >= 12,
        "the lenient upstream ran the hidden request only {smuggled_directly} times: {direct:?}"
    );
    let already = ran(&loose).len();

    let payments = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}", "127.0.0.1:{}"] }}
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  notes: {{ route: "POST /v1/payments/{{payment_id}}/notes" }}
rules:
  - {{ name: no-refunds, function: refund, action: deny }}
  - {{ name: notes, function: notes, action: allow }}
"#,
        loose.port,
        nginx.port()
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &payments)],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("smuggling");
    gw.enable(&cg);

    for (name, up, skip) in [("lenient", &loose, already), ("nginx", &nginx.party, 0)] {
        let answers = attempts(Some(&cg), up.port);
        println!("through the gateway to {name}: {answers:?}");
        let paths: Vec<String> = ran(up).split_off(skip);
        assert!(
            !paths.iter().any(|p| p == HIDDEN),
            "{name} ran a smuggled refund: {paths:?}\n{answers:?}"
        );
        // Each ambiguous attempt is refused whole (400, and the connection closed); in the
        // controls, the visible request runs and the hidden one, a request of its own there,
        // is decided as such and denied.
        assert_eq!(answers.len(), 18, "{answers:?}");
        let mut answered_ok = 0;
        for (attempt, statuses) in &answers {
            let statuses: Vec<&str> = statuses
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let expected: &[&str] = if attempt.starts_with("clean_") {
                answered_ok += 1;
                &["HTTP/1.1 200", "HTTP/1.1 403"]
            } else {
                &["HTTP/1.1 400"]
            };
            assert_eq!(statuses, expected, "{name}: {attempt}");
        }
        // What the upstream ran is exactly what the gateway allowed and answered.
        assert!(paths.iter().all(|p| p == VISIBLE), "{name}: {paths:?}");
        assert_eq!(paths.len(), answered_ok, "{name}: {paths:?}\n{answers:?}");
        let denied = record_where(&gw, "a denied hidden refund", |r| {
            r["function"] == "refund" && r["decision"]["rule"] == "no-refunds"
        });
        assert_eq!(denied["status"], 403, "{denied}");
    }
}

/// An answer that says both `Content-Length` and `Transfer-Encoding: chunked` is framed by
/// the chunks (RFC 9112 §6.3), and its `Content-Length` is not passed on: the client would
/// frame the answer by it, take the first bytes as the whole answer, and read the rest as the
/// start of the next one. Before, the gateway kept the length and cut the answer there.
#[test]
fn an_answer_framed_two_ways_reaches_the_client_framed_one_way() {
    const TEST: &str = "an_answer_framed_two_ways_reaches_the_client_framed_one_way";
    if !ebpf_available(TEST) {
        return;
    }
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in listener.incoming().take(8) {
            let Ok(mut s) = s else { break };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
                  Transfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
            );
        }
    });
    let dir = TestDir::new("callgate-smuggling-answer");
    let service = format!(
        "service: notes\nmatch: {{ hosts: [\"127.0.0.1:{port}\"] }}\nprotocol: rest\n\
         functions:\n  read: {{ route: \"GET /notes\" }}\n\
         rules:\n  - {{ name: reads, function: read, action: allow }}\n"
    );
    let policies = policy_repo(&dir, "default_action: deny\n", &[("notes", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("smuggling-answer");
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{port}/notes");
    let (code, out) = curl_in(&cg, &["-i", &url]);
    assert_eq!(code, 0, "{out}\n{}", gw.log());
    let (head, body) = out.split_once("\r\n\r\n").expect("head and body");
    assert!(
        !head.to_ascii_lowercase().contains("content-length: 5"),
        "the upstream's length was passed on: {head}"
    );
    assert_eq!(body, "hello world", "{out}");
}
