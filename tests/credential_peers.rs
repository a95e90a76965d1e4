//! A credential the gateway injects never reaches a workload it governs. A governed workload
//! that listens on an address and port a credential-injecting service matches (any port of a
//! loopback address named without one; the service's own port while its server is down) and
//! then calls itself through the gateway would be handed the secret: the gateway finds who
//! answers each upstream connection before it carries a credential, and withholds it from a
//! listener in an enabled cgroup, over HTTP/1.1 (its own upstream connections) and h2 (the
//! pooled clients) alike.
use std::{fs, time::Duration};

use callgate_e2e::*;

const SECRET: &str = "gw-key-5b1e0c7d9a";

/// An HTTP/1.1 server on address argv[2], port argv[3] (0: a free one), that writes each
/// request's headers, one JSON line each, to the file in argv[1] and answers 200 with them;
/// prints its port.
const LISTENER: &str = r#"
import http.server, json, sys
seen = open(sys.argv[1], "a")
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        heads = {k.lower(): v for k, v in self.headers.items()}
        seen.write(json.dumps(heads) + "\n"); seen.flush()
        body = json.dumps(heads).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn a_credential_never_reaches_a_governed_listener() {
    let test = "a_credential_never_reaches_a_governed_listener";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let secret = dir.join("k.secret");
    fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    let up = upstream(&dir, None);
    // The real server, outside the governed cgroup; and a port whose server is down.
    let down_port = free_port();
    let service = |name: &str, hosts: &str| {
        format!(
            r#"
service: {name}
match: {{ hosts: [{hosts}] }}
protocol: rest
functions:
  echo: {{ route: "GET /echo" }}
rules:
  - {{ name: echo, function: echo, action: allow }}
credentials:
  inject: {{ header: X-Api-Key, from: {{ file: "{file}" }} }}
"#,
            file = secret.display()
        )
    };
    // Any port of 127.0.0.1 (what `policy lint` warns about), and one host:port.
    let any_port = service("internal", r#""127.0.0.1""#);
    let one_port = service("billing", &format!(r#""127.0.0.2:{down_port}""#));
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("internal", &any_port), ("billing", &one_port)],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);

    // The real server gets the credential.
    let (code, _) = curl_in(
        &cg,
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{}/echo", up.port),
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(
        up.requests()
            .last()
            .map(|r| r["headers"]["x-api-key"].clone()),
        Some(serde_json::Value::String(SECRET.into())),
        "the real server got the credential"
    );

    // A governed workload's own listeners: a free port of 127.0.0.1, and the port of the
    // service whose server is down.
    let script = dir.join("listener.py");
    fs::write(&script, LISTENER).expect("script");
    let python = party_python();
    for (host, port) in [("127.0.0.1", 0u16), ("127.0.0.2", down_port)] {
        let seen = dir.join(format!("seen-{port}.jsonl"));
        let log = dir.join(format!("listener-{port}.log"));
        let bind_port = port.to_string();
        let mut listener = cg.spawn(
            &[
                python.to_str().expect("python path"),
                script.to_str().expect("script path"),
                seen.to_str().expect("seen path"),
                host,
                &bind_port,
            ],
            &log,
        );
        let port: u16 = wait_for(Duration::from_secs(10), || {
            fs::read_to_string(&log).ok()?.trim().parse().ok()
        })
        .expect("the listener's port");
        for proto in ["--http1.1", "--http2-prior-knowledge"] {
            let (code, out) = curl_in(
                &cg,
                &[
                    "-sS",
                    proto,
                    "-w",
                    "\n%{http_code}",
                    &format!("http://{host}:{port}/echo"),
                ],
            );
            assert_eq!(code, 0, "curl {proto} to {host}:{port}: {out}");
            assert!(
                out.ends_with("\n403") && out.contains("credential_withheld"),
                "a call to the workload's own listener at {host}:{port} ({proto}) is refused: {out}"
            );
            assert!(
                !out.contains(SECRET),
                "the answer holds the credential: {out}"
            );
        }
        let heard = fs::read_to_string(&seen).unwrap_or_default();
        assert!(
            !heard.contains(SECRET),
            "the governed listener at {host}:{port} received the credential: {heard}"
        );
        let _ = listener.kill();
        let _ = listener.wait();
    }
    let recs = wait_for(Duration::from_secs(10), || {
        let r = records(&gw);
        (r.iter()
            .filter(|r| {
                r["decision"]["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("governs"))
            })
            .count()
            >= 4)
            .then_some(r)
    })
    .unwrap_or_else(|| panic!("four withheld calls recorded: {:?}", records(&gw)));
    let all = serde_json::to_string(&recs).expect("records");
    assert!(!all.contains(SECRET), "a record holds the credential");
}
