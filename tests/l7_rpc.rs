//! MCP and gRPC end to end: the official MCP Python SDK's client and server, and grpcio's, all
//! unmodified, with the client in an enabled cgroup.

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    /// Removed with the setup.
    _dir: TestDir,
    _parties: Vec<Party>,
}

fn start(test: &str, script: &str, service: impl Fn(u16) -> String) -> Option<(Setup, u16)> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-rpc");
    let port = free_port();
    let py = party_python().display().to_string();
    let script = party_script(script).display().to_string();
    let party = Party::start(&[&py, &script, &port.to_string()], port, dir.join("server"));
    let policies = policy_repo(&dir, REPO, &[("svc", &service(port))]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("rpc");
    gw.enable(&cg);
    Some((
        Setup {
            gw,
            cg,
            _dir: dir,
            _parties: vec![party],
        },
        port,
    ))
}

fn run_json(cg: &TestCgroup, argv: &[&str]) -> Value {
    let out = cg.run(argv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{argv:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn mcp_tools_are_governed_filtered_masked_and_recorded() {
    let Some((s, port)) = start(
        "mcp_tools_are_governed_filtered_masked_and_recorded",
        "mcp_server.py",
        |port| {
            format!(
                r#"
service: tools
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
functions:
  search_docs: {{}}
  delete_table: {{}}
rules:
  - {{ name: agents-search, function: search_docs, action: allow }}
  - name: nobody-drops-tables
    function: delete_table
    action: deny
    reason: destructive tools are disabled for agents
response:
  mask: [card_number, email]
"#
            )
        },
    ) else {
        return;
    };
    let py = party_python().display().to_string();
    let client = party_script("mcp_client.py").display().to_string();
    let out = run_json(
        &s.cg,
        &[&py, &client, &format!("http://127.0.0.1:{port}/mcp")],
    );
    // tools/list shows only what the caller may call.
    assert_eq!(out["tools"], serde_json::json!(["search_docs"]), "{out}");
    // The allowed tool works; its result arrives masked.
    let text = out["search"][0].as_str().unwrap_or_default();
    assert!(text.starts_with("results for"), "{out}");
    assert!(!text.contains("4111 1111 1111 1111"), "card leaked: {out}");
    assert!(
        !text.contains("jane.doe@example.com"),
        "e-mail leaked: {out}"
    );
    // The denied tool: a JSON-RPC error the client shows, with the policy's reason.
    let err = out["delete"]["error"].as_str().unwrap_or_default();
    assert!(err.contains("destructive tools are disabled"), "{out}");
    assert_eq!(out["delete"]["code"], -32001);
    // Each call recorded with its tool name and masked arguments.
    let r = record_where(&s.gw, "the search_docs call", |r| {
        r["function"] == "search_docs"
    });
    assert_eq!(r["protocol"], "mcp");
    assert_eq!(r["decision"]["action"], "allow");
    let q = r["args"]["query"].as_str().unwrap_or_default();
    assert!(
        q.starts_with("refund of") && !q.contains("4111111111111111"),
        "{r}"
    );
    assert!(!r.to_string().contains("4111 1111 1111 1111"), "{r}");
    let r = record_where(&s.gw, "the delete_table call", |r| {
        r["function"] == "delete_table"
    });
    assert_eq!(r["decision"]["action"], "deny");
    assert_eq!(r["decision"]["rule"], "nobody-drops-tables");
    assert_eq!(r["args"]["name"], "users");
}

#[test]
fn grpc_methods_are_allowed_or_get_permission_denied() {
    let Some((s, port)) = start(
        "grpc_methods_are_allowed_or_get_permission_denied",
        "grpc_server.py",
        |port| {
            format!(
                r#"
service: greeter
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: grpc
functions:
  hello: {{ method: /demo.Greeter/SayHello }}
  delete: {{ method: /demo.Greeter/Delete }}
rules:
  - name: support-says-hello
    function: hello
    args: {{ "$.metadata['x-team']": {{ eq: support }} }}
    action: allow
    limit: {{ per: [workload.cgroup], rate: 1/h }}
"#
            )
        },
    ) else {
        return;
    };
    let py = party_python().display().to_string();
    let client = party_script("grpc_client.py").display().to_string();
    let out = run_json(&s.cg, &[&py, &client, &port.to_string()]);
    assert_eq!(out["SayHello"]["ok"], "hello world", "{out}");
    assert_eq!(out["Delete"]["code"], "PERMISSION_DENIED", "{out}");
    assert!(
        out["Delete"]["details"]
            .as_str()
            .is_some_and(|d| d.contains("no policy rule allows this call")),
        "{out}"
    );
    let r = record_where(&s.gw, "the SayHello call", |r| r["function"] == "hello");
    assert_eq!(r["protocol"], "grpc");
    assert_eq!(r["args"]["metadata"]["x-team"], "support");
    assert_eq!(r["status"], 200);
    assert!(
        r["decision"].get("reason").is_none(),
        "a completed call: {r}"
    );
    record_where(&s.gw, "the denied Delete", |r| {
        r["function"] == "delete" && r["decision"]["action"] == "deny"
    });
    // Over the rule's limit (one an hour): RESOURCE_EXHAUSTED, with when to retry.
    let again = run_json(&s.cg, &[&py, &client, &port.to_string()]);
    assert_eq!(again["SayHello"]["code"], "RESOURCE_EXHAUSTED", "{again}");
    assert!(
        again["SayHello"]["details"]
            .as_str()
            .is_some_and(|d| d.contains("rate_limited") && d.contains("try again in")),
        "{again}"
    );
}
