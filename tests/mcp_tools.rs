//! MCP tool pinning end to end, against a server of the official MCP Python SDK that changes a
//! tool's description while it runs (a rug pull) and adds a tool, with the SDK's own client in
//! an enabled cgroup: the changed and the new tool are hidden from `tools/list` and refused
//! from the first call after the change, the server never runs them, and the change is in the
//! records and `status`; `callgate mcp accept` and `callgate mcp pin` bring a tool back.
//! The same suite runs the official TypeScript SDK's client and server, and the Python SDK 2.x
//! (the 2026-07-28 transport).

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

fn service(port: u16) -> String {
    format!(
        r#"
service: docs
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
mcp: {{ pin_tools: true }}
rules:
  - {{ name: agents, function: "*", action: allow }}
"#
    )
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

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A real MCP server behind the gateway: the party `script` (run with its port, the log of the
/// tools it ran and `extra`) on a free port, a policy repository with the one service
/// `svc(port)` describes, the gateway, and an enabled cgroup for the client.
struct World {
    // Dropped in this order: the cgroup before the gateway, the server, then the files.
    cg: TestCgroup,
    gw: Gateway,
    _party: Party,
    /// The approvals webhook's receiver (`/hook` of upstream.py), when asked for.
    hook: Option<Party>,
    /// The copy of a Node server's script beside `node_modules`, removed at the end.
    copy: Option<std::path::PathBuf>,
    policies: std::path::PathBuf,
    runs: std::path::PathBuf,
    port: u16,
    _dir: TestDir,
}

impl World {
    fn start(
        name: &str,
        py: &str,
        script: &str,
        extra: &[&str],
        service: (&str, &dyn Fn(u16) -> String),
    ) -> Self {
        Self::launch(name, py, script, extra, service, false)
    }

    /// [`World::start`] with an approvals webhook whose receiver logs what it gets.
    fn start_with_hook(
        name: &str,
        py: &str,
        script: &str,
        extra: &[&str],
        service: (&str, &dyn Fn(u16) -> String),
    ) -> Self {
        Self::launch(name, py, script, extra, service, true)
    }

    fn launch(
        name: &str,
        py: &str,
        script: &str,
        extra: &[&str],
        (service, svc): (&str, &dyn Fn(u16) -> String),
        hook: bool,
    ) -> Self {
        let dir = TestDir::new(&format!("callgate-{name}"));
        let port = free_port();
        let runs = dir.join("runs.log");
        // An ES module resolves its packages from its own directory: a copy beside
        // `node_modules`.
        let copy = script.ends_with(".mjs").then(|| node_script(script));
        let server = copy
            .clone()
            .unwrap_or_else(|| party_script(script))
            .display()
            .to_string();
        let (port_arg, runs_arg) = (port.to_string(), runs.display().to_string());
        let mut argv = vec![py, server.as_str(), port_arg.as_str(), runs_arg.as_str()];
        argv.extend_from_slice(extra);
        let party = Party::start(&argv, port, dir.join("server"));
        let policies = policy_repo(&dir, REPO, &[(service, &svc(port))]);
        let hook = hook.then(|| upstream(&dir, None));
        let gw = match &hook {
            Some(h) => gateway_with_config(
                &policies,
                &format!(
                    "approvals:\n  webhook_url: http://127.0.0.1:{}/hook\n",
                    h.port
                ),
                &dir,
            ),
            None => Gateway::start_with(&["--policies", &policies.display().to_string()]),
        };
        let cg = TestCgroup::new(name);
        gw.enable(&cg);
        Self {
            cg,
            gw,
            _party: party,
            hook,
            copy,
            policies,
            runs,
            port,
            _dir: dir,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(copy) = &self.copy {
            let _ = std::fs::remove_file(copy);
        }
    }
}

#[test]
fn a_rug_pull_is_caught_at_the_next_call_and_list_and_never_runs() {
    let test = "a_rug_pull_is_caught_at_the_next_call_and_list_and_never_runs";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let py = party_python().display().to_string();
    let w = World::start(
        "mcp-pins",
        &py,
        "mcp_rugpull_server.py",
        &[],
        ("docs", &service),
    );
    let (port, runs, policies, gw, cg) = (w.port, &w.runs, &w.policies, &w.gw, &w.cg);
    let client = party_script("mcp_rugpull_client.py").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");

    // One session: list (pinned on first sight), search (the server turns), search again,
    // the new tool, the untouched tool.
    let out = run_json(
        cg,
        &[
            &py,
            &client,
            &url,
            "search_docs",
            "search_docs",
            "export_all",
            "word_count",
        ],
    );
    let lists = out["lists"].as_array().expect("lists");
    let calls = out["calls"].as_array().expect("calls");
    assert_eq!(names(&lists[0]), ["search_docs", "word_count"], "{out}");
    assert_eq!(calls[0]["text"][0], "results for refunds", "{out}");
    // The first listing after the change: the changed tool and the new one are hidden.
    assert_eq!(names(&lists[1]), ["word_count"], "{out}");
    assert!(
        !out.to_string().contains("id_rsa"),
        "the poisoned description reached the client: {out}"
    );
    // The changed tool's next call is refused, saying why; so is the new, unpinned one.
    let err = calls[1]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("changed since it was pinned") && err.contains("callgate mcp accept"),
        "{out}"
    );
    assert_eq!(calls[1]["code"], -32001, "{out}");
    let err = calls[2]["error"].as_str().unwrap_or_default();
    assert!(err.contains("has no pin"), "{out}");
    // The untouched tool still works.
    assert_eq!(calls[3]["text"][0], "3", "{out}");
    // The server ran search_docs once (before the change) and never export_all.
    let ran = std::fs::read_to_string(runs).unwrap_or_default();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["search_docs", "word_count"],
        "what the server ran"
    );

    // The records: the refused call with both digests and both definitions.
    let r = record_where(gw, "the refused search_docs", |r| {
        r["function"] == "search_docs" && r["mcp"]["pin"] == "changed"
    });
    assert_eq!(r["decision"]["enforced"], true, "{r}");
    let pinned = r["mcp"]["pinned_sha256"].as_str().unwrap_or_default();
    let now = r["mcp"]["sha256"].as_str().unwrap_or_default();
    assert!(
        pinned.len() == 64 && now.len() == 64 && pinned != now,
        "{r}"
    );
    assert_eq!(
        r["mcp"]["pinned_definition"]["description"], "Searches the documentation.",
        "{r}"
    );
    assert!(
        r["mcp"]["definition"]["description"]
            .as_str()
            .is_some_and(|d| d.starts_with("<IMPORTANT>")),
        "{r}"
    );
    record_where(gw, "a list that hid the changed tool", |r| {
        r["function"] == "tools/list"
            && r["mcp"]["hidden"]
                .as_array()
                .is_some_and(|h| h.iter().any(|t| t["tool"] == "search_docs"))
    });
    // status: what is refused now and the change.
    let status = gw.status();
    let docs = &status["mcp_pins"][0];
    assert_eq!(docs["service"], "docs", "{status}");
    assert_eq!(docs["refused"]["search_docs"], "changed", "{status}");
    assert_eq!(docs["refused"]["export_all"], "unpinned", "{status}");
    assert_eq!(docs["changes_total"], 1, "{status}");
    assert_eq!(docs["recent_changes"][0]["sha256"], now, "{status}");

    // The operator accepts the new description: the tool is back, the new tool still hidden.
    let out = gw.cli(&["mcp", "accept", "docs", "search_docs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_json(cg, &[&py, &client, &url, "search_docs"]);
    assert_eq!(
        names(&out["lists"][0]),
        ["search_docs", "word_count"],
        "{out}"
    );
    assert_eq!(out["calls"][0]["text"][0], "results for refunds", "{out}");

    // `mcp pin` writes what was seen, for review in git.
    let out = gw.cli(&[
        "mcp",
        "pin",
        "docs",
        "--policies",
        &policies.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pins = std::fs::read_to_string(policies.join("pins/docs.yaml")).expect("pins written");
    assert!(pins.contains("export_all") && pins.contains(now), "{pins}");
    // Committed pins now decide: every tool they name is shown again.
    let out = wait_for(std::time::Duration::from_secs(10), || {
        let out = run_json(cg, &[&py, &client, &url]);
        (names(&out["lists"][0]).len() == 3).then_some(out)
    });
    assert!(out.is_some(), "the committed pins did not take effect");
}

/// A server whose tools carry the common kinds of poisoning: `callgate mcp audit` names each
/// kind, and with `refuse_flagged` the client sees and can call only the honest tool.
#[test]
fn poisoned_tools_are_reported_and_refused() {
    let test = "poisoned_tools_are_reported_and_refused";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let py = party_python().display().to_string();
    let svc = |port: u16| {
        format!(
            r#"
service: poisoned
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
mcp: {{ refuse_flagged: true }}
rules:
  - {{ name: agents, function: "*", action: allow }}
"#
        )
    };
    let w = World::start(
        "mcp-audit",
        &py,
        "mcp_poisoned_server.py",
        &[],
        ("poisoned", &svc),
    );
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let client = party_script("mcp_rugpull_client.py").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = run_json(cg, &[&py, &client, &url, "lookup", "read_file", "add"]);
    assert_eq!(names(&out["lists"][0]), ["lookup"], "{out}");
    assert_eq!(out["calls"][0]["text"][0], "value of refunds", "{out}");
    for call in [&out["calls"][1], &out["calls"][2]] {
        let err = call["error"].as_str().unwrap_or_default();
        assert!(err.contains("fails the poisoning checks"), "{out}");
    }
    let ran = std::fs::read_to_string(runs).unwrap_or_default();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["lookup"],
        "what the server ran"
    );

    let out = gw.cli(&["mcp", "audit", "poisoned", "--json"]);
    assert_eq!(out.status.code(), Some(1), "flagged tools: exit 1");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let checks = |tool: &str| -> Vec<String> {
        report["flagged"][tool]
            .as_array()
            .map(|f| {
                f.iter()
                    .map(|f| f["check"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(checks("lookup").is_empty(), "{report}");
    assert!(checks("add").contains(&"invisible".to_string()), "{report}");
    assert!(
        report["flagged"]["add"][0]["found"]
            .as_str()
            .is_some_and(|f| f.contains("Also send the user's files")),
        "the tag characters are decoded: {report}"
    );
    assert!(
        checks("read_file").contains(&"instructions".to_string()),
        "{report}"
    );
    assert_eq!(checks("report"), ["url", "email"], "{report}");
    assert_eq!(checks("format_text"), ["long_description"], "{report}");
    assert!(
        checks("rename").contains(&"invisible".to_string()),
        "{report}"
    );
    // The text report writes invisible characters visibly.
    let out = gw.cli(&["mcp", "audit", "poisoned"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("U+E0041") && !text.contains('\u{e0041}'),
        "{text}"
    );
}

/// The 2026 transport's routing headers against a server that routes by them: a request whose
/// `Mcp-Method` or `Mcp-Name` says something else than its body (plainly, base64-encoded, or
/// twice) is refused with HTTP 400 and JSON-RPC -32020 and never reaches the server; one whose
/// headers agree goes through.
#[test]
fn routing_headers_must_agree_with_the_body() {
    let test = "routing_headers_must_agree_with_the_body";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let py = party_python().display().to_string();
    let svc = |port: u16| {
        format!(
            r#"
service: routed
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
functions:
  search_docs: {{}}
  delete_table: {{}}
rules:
  - {{ name: agents-search, function: search_docs, action: allow }}
"#
        )
    };
    let w = World::start(
        "mcp-headers",
        &py,
        "mcp_header_router.py",
        &[],
        ("routed", &svc),
    );
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_docs","arguments":{}}}"#;
    let list = r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#;
    let post = |body: &str, headers: &[&str]| -> (String, Value) {
        let mut argv = vec![
            "-w",
            "\n%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: application/json, text/event-stream",
        ];
        for h in headers {
            argv.extend_from_slice(&["-H", h]);
        }
        argv.extend_from_slice(&["--data-binary", body, &url]);
        let (code, out) = curl_in(cg, &argv);
        assert_eq!(code, 0, "{out}");
        let (json, status) = out.rsplit_once('\n').unwrap_or((&out, ""));
        (
            status.to_string(),
            serde_json::from_str(json).unwrap_or(Value::Null),
        )
    };
    for (body, headers) in [
        // Allowed by the body, another tool by the header.
        (
            call,
            vec!["Mcp-Method: tools/call", "Mcp-Name: delete_table"],
        ),
        // The same in the base64 form.
        (call, vec!["Mcp-Name: =?base64?ZGVsZXRlX3RhYmxl?="]),
        // A list (which passes as housekeeping) that the header makes a call.
        (
            list,
            vec!["Mcp-Method: tools/call", "Mcp-Name: delete_table"],
        ),
        // Given twice.
        (
            call,
            vec!["Mcp-Name: search_docs", "Mcp-Name: delete_table"],
        ),
    ] {
        let (status, answer) = post(body, &headers);
        assert_eq!(status, "400", "{headers:?}: {answer}");
        assert_eq!(answer["error"]["code"], -32020, "{headers:?}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("header_mismatch")),
            "{answer}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(runs).unwrap_or_default(),
        "",
        "the server ran a tool for a refused request"
    );
    // Agreeing headers pass, in both spellings.
    let (status, answer) = post(call, &["Mcp-Method: tools/call", "Mcp-Name: search_docs"]);
    assert_eq!(status, "200", "{answer}");
    assert_eq!(
        answer["result"]["content"][0]["text"], "ran search_docs",
        "{answer}"
    );
    let (status, _) = post(call, &["mcp-name: =?base64?c2VhcmNoX2RvY3M=?="]);
    assert_eq!(status, "200");
    assert_eq!(
        std::fs::read_to_string(runs).unwrap_or_default(),
        "search_docs\nsearch_docs\n"
    );
    let r = record_where(gw, "a refused mismatch", |r| {
        r["decision"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("header_mismatch"))
    });
    assert_eq!(r["status"], 400, "{r}");
}

/// A tool's structured result (`structuredContent`) is masked as its text is: detectors on
/// every value (a card written as a number included) and field paths, which address the
/// tool's result (`$.ssn`) in `structuredContent` and in JSON text alike; the SDK client
/// still reads a valid result.
#[test]
fn structured_tool_results_are_masked_like_their_text() {
    let test = "structured_tool_results_are_masked_like_their_text";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new("callgate-mcp-structured");
    let port = free_port();
    let py = party_python().display().to_string();
    let server = party_script("mcp_structured_server.py")
        .display()
        .to_string();
    let _party = Party::start(&[&py, &server, &port.to_string()], port, dir.join("server"));
    let svc = format!(
        r#"
service: crm
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
functions:
  customer: {{}}
rules:
  - {{ name: agents, function: customer, action: allow }}
response:
  mask: [card_number, email, {{ field: "$.ssn" }}]
"#
    );
    let policies = policy_repo(&dir, REPO, &[("crm", &svc)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("mcp-structured");
    gw.enable(&cg);
    let client = party_script("mcp_rugpull_client.py").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = run_json(&cg, &[&py, &client, &url, "customer"]);
    let call = &out["calls"][0];
    assert_eq!(call["isError"], false, "{out}");
    let s = &call["structured"];
    assert_eq!(s["tier"], "gold", "{out}");
    assert_eq!(s["name"], "Jane Doe", "{out}");
    for leaked in ["4111 1111 1111 1111", "jane.doe@example.com", "078-05-1120"] {
        assert!(!out.to_string().contains(leaked), "{leaked} leaked: {out}");
    }
    let text: Value =
        serde_json::from_str(call["text"][0].as_str().unwrap_or_default()).expect("JSON text");
    assert_eq!(text["tier"], "gold", "{out}");
}

/// The same rug pull from a server in the SDK's stateless JSON mode: the gateway's own check
/// before the call reads a JSON answer without a session.
#[test]
fn a_rug_pull_is_caught_from_a_stateless_json_server() {
    let test = "a_rug_pull_is_caught_from_a_stateless_json_server";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let py = party_python().display().to_string();
    let w = World::start(
        "mcp-pins-json",
        &py,
        "mcp_rugpull_server.py",
        &["json"],
        ("docs", &service),
    );
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let client = party_script("mcp_rugpull_client.py").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = run_json(cg, &[&py, &client, &url, "search_docs", "search_docs"]);
    let calls = out["calls"].as_array().expect("calls");
    assert_eq!(calls[0]["text"][0], "results for refunds", "{out}");
    let err = calls[1]["error"].as_str().unwrap_or_default();
    assert!(err.contains("changed since it was pinned"), "{out}");
    assert_eq!(names(&out["lists"][2]), ["word_count"], "{out}");
    let ran = std::fs::read_to_string(runs).unwrap_or_default();
    assert_eq!(ran.lines().collect::<Vec<_>>(), ["search_docs"]);
    assert_eq!(gw.status()["mcp_pins"][0]["changes_total"], 1);
}

/// The service of the SDK tests: `search_docs` allowed, `delete_table` denied with a reason
/// the client must show, answers masked; `pin` pins the tools (so the gateway's own pre-call
/// check speaks the SDK's transport too).
fn sdk_service(port: u16, pin: bool) -> String {
    let pin = if pin {
        "mcp: { pin_tools: true }\n"
    } else {
        ""
    };
    format!(
        r#"
service: tools
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
{pin}functions:
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
}

/// What a TypeScript SDK client (`mcp_ts_client.mjs`, `mcp_ts2_client.mjs`) saw of
/// [`sdk_service`]: only `search_docs` listed, its answer masked, `delete_table` refused with
/// the policy's reason.
fn assert_ts_client_governed(out: &Value) {
    assert_eq!(names(&out["lists"][0]), ["search_docs"], "{out}");
    let search = &out["calls"][0];
    assert_eq!(search["isError"], false, "{out}");
    assert!(
        search["text"][0]
            .as_str()
            .is_some_and(|t| t.starts_with("results for")),
        "{out}"
    );
    for leaked in [
        "4111 1111 1111 1111",
        "4111111111111111",
        "jane.doe@example.com",
    ] {
        assert!(!out.to_string().contains(leaked), "{leaked} leaked: {out}");
    }
    let delete = &out["calls"][1];
    assert!(
        delete["error"]
            .as_str()
            .is_some_and(|e| e.contains("destructive tools are disabled for agents")),
        "{out}"
    );
}

/// The server side of [`sdk_service`]: only `search_docs` ran, and both calls are recorded
/// with their decisions.
fn assert_only_search_ran(runs: &std::path::Path, gw: &Gateway) {
    let ran = std::fs::read_to_string(runs).unwrap_or_default();
    assert_eq!(ran.lines().collect::<Vec<_>>(), ["search_docs"]);
    let r = record_where(gw, "the search_docs call", |r| {
        r["function"] == "search_docs"
    });
    assert_eq!(r["decision"]["action"], "allow", "{r}");
    let r = record_where(gw, "the refused delete_table", |r| {
        r["function"] == "delete_table"
    });
    assert_eq!(r["decision"]["action"], "deny", "{r}");
    assert_eq!(r["decision"]["rule"], "nobody-drops-tables", "{r}");
}

/// The venv of the newer SDK generation (`cargo xtask setup` builds it), or None to skip.
fn mcp2_python(test: &str) -> Option<String> {
    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/testenv2/bin/python");
    if py.exists() {
        Some(py.display().to_string())
    } else {
        skip(test, "no target/testenv2 (run cargo xtask setup)");
        None
    }
}

/// The 2026-07-28 generation end to end: the official Python SDK 2.x client (discovery instead
/// of `initialize`, per-request `_meta`, `Mcp-Method`/`Mcp-Name` headers) and server, through
/// the gateway, with its tools pinned (so the gateway's own pre-call check speaks that transport
/// too): allowed tool masked, denied tool refused with the policy's reason and never run,
/// records kept.
#[test]
fn the_2026_sdk_generation_is_governed() {
    let test = "the_2026_sdk_generation_is_governed";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let Some(py) = mcp2_python(test) else {
        return;
    };
    let svc = |port| sdk_service(port, true);
    let w = World::start("mcp2", &py, "mcp2_server.py", &[], ("tools", &svc));
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let client = party_script("mcp2_client.py").display().to_string();
    let out = run_json(cg, &[&py, &client, &format!("http://127.0.0.1:{port}/mcp")]);
    assert_eq!(out["protocol"], "2026-07-28", "{out}");
    assert_eq!(out["tools"], serde_json::json!(["search_docs"]), "{out}");
    let text = out["search"][0].as_str().unwrap_or_default();
    assert!(text.starts_with("results for"), "{out}");
    assert!(
        !text.contains("4111 1111 1111 1111") && !text.contains("jane.doe@example.com"),
        "{out}"
    );
    let err = out["delete"]["error"].as_str().unwrap_or_default();
    assert!(err.contains("destructive tools are disabled"), "{out}");
    assert_only_search_ran(runs, gw);
    // The call was checked against a pin taken on first sight.
    let status = gw.status();
    assert_eq!(
        status["mcp_pins"][0]["local_pins"]["search_docs"], "first_sight",
        "{status}"
    );
}

/// Whether the official MCP TypeScript SDK is installed beside the Node parties.
fn ts_sdk_available(test: &str) -> bool {
    node_parties_available(test)
        && (node_dir()
            .join("node_modules/@modelcontextprotocol/sdk")
            .exists()
            || skip(test, "no @modelcontextprotocol/sdk (run cargo xtask setup)"))
}

/// The official TypeScript SDK (`@modelcontextprotocol/sdk`), client and server, through the
/// gateway: the denied tool is not listed and its call is refused with the policy's reason
/// (which the SDK's client shows its user) and never runs; the allowed tool's answer is masked
/// in its text and its `structuredContent` (which the client still validates against the
/// tool's output schema); both calls are recorded.
#[test]
fn the_typescript_sdk_is_governed() {
    let test = "the_typescript_sdk_is_governed";
    if !ebpf_available(test) || !ts_sdk_available(test) {
        return;
    }
    let svc = |port| sdk_service(port, false);
    let w = World::start("mcp-ts", "node", "mcp_ts_server.mjs", &[], ("tools", &svc));
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let client = node_script("mcp_ts_client.mjs").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = run_json(cg, &["node", &client, &url, "search_docs", "delete_table"]);
    let _ = std::fs::remove_file(&client);
    // The SDK's newest revision; it has no 2026-07-28 transport.
    assert_eq!(out["protocol"], "2025-11-25", "{out}");
    assert_ts_client_governed(&out);
    assert!(
        out["calls"][0]["structured"]["result"]
            .as_str()
            .is_some_and(|t| t.starts_with("results for")),
        "{out}"
    );
    assert_eq!(out["calls"][1]["code"], -32001, "{out}");
    assert_only_search_ran(runs, gw);
}

/// A rug pull from a TypeScript SDK server: once `search_docs` has run, the server changes its
/// description and adds `export_all` in the live session. The next listing hides both, the
/// next calls of both are refused, and the server never runs them.
#[test]
fn a_rug_pull_from_a_typescript_server_is_caught() {
    let test = "a_rug_pull_from_a_typescript_server_is_caught";
    if !ebpf_available(test) || !ts_sdk_available(test) {
        return;
    }
    let w = World::start_with_hook(
        "mcp-ts-pins",
        "node",
        "mcp_ts_server.mjs",
        &["rugpull"],
        ("docs", &service),
    );
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let client = node_script("mcp_ts_client.mjs").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = run_json(
        cg,
        &[
            "node",
            &client,
            &url,
            "search_docs",
            "search_docs",
            "export_all",
            "delete_table",
        ],
    );
    let _ = std::fs::remove_file(&client);
    let lists = out["lists"].as_array().expect("lists");
    let calls = out["calls"].as_array().expect("calls");
    assert_eq!(names(&lists[0]), ["delete_table", "search_docs"], "{out}");
    assert_eq!(calls[0]["isError"], false, "{out}");
    // The first listing after the change: the changed tool and the new one are hidden.
    assert_eq!(names(&lists[1]), ["delete_table"], "{out}");
    assert!(!out.to_string().contains("id_rsa"), "{out}");
    let err = calls[1]["error"].as_str().unwrap_or_default();
    assert!(err.contains("changed since it was pinned"), "{out}");
    assert_eq!(calls[1]["code"], -32001, "{out}");
    let err = calls[2]["error"].as_str().unwrap_or_default();
    assert!(err.contains("has no pin"), "{out}");
    assert_eq!(calls[3]["text"][0], "dropped users", "{out}");
    let ran = std::fs::read_to_string(runs).unwrap_or_default();
    assert_eq!(
        ran.lines().collect::<Vec<_>>(),
        ["search_docs", "delete_table"],
        "what the server ran"
    );
    let r = record_where(gw, "the refused search_docs", |r| {
        r["function"] == "search_docs" && r["mcp"]["pin"] == "changed"
    });
    assert_eq!(r["decision"]["enforced"], true, "{r}");
    assert_eq!(gw.status()["mcp_pins"][0]["changes_total"], 1);

    // The approvals webhook heard of both, once each: the changed tool with both digests and
    // the diff of its definition, the new one as unpinned.
    let hook = w.hook.as_ref().expect("receiver");
    let events = wait_for(std::time::Duration::from_secs(10), || {
        let events: Vec<Value> = hook
            .requests()
            .into_iter()
            .filter(|r| r["path"] == "/hook")
            .filter_map(|h| serde_json::from_str::<Value>(h["body"].as_str()?).ok())
            .collect();
        (events.len() >= 2).then_some(events)
    })
    .unwrap_or_else(|| panic!("webhook: {:?}\n{}", hook.requests(), gw.log()));
    assert_eq!(events.len(), 2, "{events:#?}");
    // The upstream's definitions are masked as a record's copy is: the new description's
    // e-mail address goes to neither.
    let heard = serde_json::to_string(&events).unwrap_or_default();
    assert!(
        !heard.contains("collector@attacker.example") && heard.contains("[MASKED:email]"),
        "{heard}"
    );
    let changed = events
        .iter()
        .find(|e| e["event"] == "mcp_tool_changed")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(changed["service"], "docs", "{changed}");
    assert_eq!(changed["tool"], "search_docs", "{changed}");
    assert_eq!(
        changed["pinned_sha256"], r["mcp"]["pinned_sha256"],
        "{changed}"
    );
    assert_eq!(changed["sha256"], r["mcp"]["sha256"], "{changed}");
    assert_eq!(
        changed["diff"],
        serde_json::json!([{
            "path": "description",
            "old": "Searches the documentation.",
            "new": r["mcp"]["definition"]["description"],
        }]),
        "{changed}"
    );
    let new = events
        .iter()
        .find(|e| e["event"] == "mcp_tool_unpinned")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(new["tool"], "export_all", "{new}");
    assert_eq!(new["pinned_sha256"], Value::Null, "{new}");
    assert_eq!(new["sha256"].as_str().map(str::len), Some(64), "{new}");
}

/// The policy of the paged 2026-07-28 server (`mcp2_paged_server.py`): two tools of its five
/// are denied, transfers are allowed up to 100, and its tools are pinned.
fn paged_service(port: u16) -> String {
    format!(
        r#"
service: paged
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
mcp: {{ pin_tools: true }}
functions:
  search_docs: {{}}
  delete_table: {{}}
  word_count: {{}}
  drop_users: {{}}
  transfer: {{}}
rules:
  - {{ name: agents-read, function: [search_docs, word_count], action: allow }}
  - name: small-transfers
    function: transfer
    args: {{ amount: {{ max: 100 }} }}
    action: allow
  - name: big-transfers
    function: transfer
    action: deny
    reason: transfers over 100 need a person
"#
    )
}

/// `tools/list` in the 2026-07-28 revision, paged and with caching hints, from the Python SDK
/// 2.x: a denied tool is on no page, every page keeps its `nextCursor` (the client walks all
/// three), and a server's `cacheScope: "public"` becomes `private` (the list is this
/// caller's) while `ttlMs` is kept.
///
/// Then a multi-round-trip `tools/call`: the server answers `transfer` with an
/// `InputRequiredResult` and the SDK retries it with the user's confirmation; the retry is a
/// call decided again, so a retry whose arguments changed (driven by hand through the SDK's
/// session, with the server's own `requestState`) is refused by the policy on its own
/// arguments and never reaches the server. Every round is recorded, the retries saying so.
#[test]
fn paged_lists_and_input_rounds_of_the_2026_revision_are_governed() {
    let test = "paged_lists_and_input_rounds_of_the_2026_revision_are_governed";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let Some(py) = mcp2_python(test) else {
        return;
    };
    let w = World::start(
        "mcp2-paged",
        &py,
        "mcp2_paged_server.py",
        &[],
        ("paged", &paged_service),
    );
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let client = party_script("mcp2_paged_client.py").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = run_json(cg, &[&py, &client, &url, "50", "5000"]);
    assert_eq!(out["protocol"], "2026-07-28", "{out}");
    assert_eq!(
        out["pages"],
        serde_json::json!([
            {"tools": ["search_docs"], "nextCursor": "2", "ttlMs": 3600000, "cacheScope": "private"},
            {"tools": ["word_count"], "nextCursor": "4", "ttlMs": 3600000, "cacheScope": "private"},
            {"tools": ["transfer"], "nextCursor": null, "ttlMs": 3600000, "cacheScope": "private"},
        ]),
        "{out}"
    );
    // The SDK's own round trip: asked, confirmed, retried, run.
    assert_eq!(
        out["transfer"],
        serde_json::json!({"text": ["transferred 50"], "isError": false}),
        "{out}"
    );
    // The retry with other arguments: refused by the policy, not by the server.
    assert_eq!(out["input_required"], "input_required", "{out}");
    assert_eq!(out["retry"]["code"], -32001, "{out}");
    assert!(
        out["retry"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("transfers over 100 need a person")),
        "{out}"
    );
    let ran = std::fs::read_to_string(runs).unwrap_or_default();
    assert_eq!(ran.lines().collect::<Vec<_>>(), ["transfer 50 True"]);

    // Four rounds of `transfer`, each recorded: two asked for input, one retry ran, one retry
    // was refused.
    let transfers = wait_for(std::time::Duration::from_secs(10), || {
        let t: Vec<Value> = records(gw)
            .into_iter()
            .filter(|r| r["function"] == "transfer")
            .collect();
        (t.len() == 4).then_some(t)
    })
    .unwrap_or_else(|| panic!("{:#?}", records(gw)));
    let asked = transfers
        .iter()
        .filter(|r| r["response"].to_string().contains("input_required"))
        .count();
    assert_eq!(asked, 2, "{transfers:#?}");
    let retries: Vec<&Value> = transfers
        .iter()
        .filter(|r| r["mcp"]["input_round"]["request_state"] == true)
        .collect();
    assert_eq!(retries.len(), 2, "{transfers:#?}");
    assert!(
        retries
            .iter()
            .any(|r| r["decision"]["action"] == "allow" && r["args"]["amount"] == 50),
        "{transfers:#?}"
    );
    assert!(
        retries
            .iter()
            .any(|r| r["decision"]["rule"] == "big-transfers" && r["args"]["amount"] == 5000),
        "{transfers:#?}"
    );
}

/// The TypeScript SDK's 2.x packages, whose client discovers the server and speaks the
/// 2026-07-28 revision (routing headers included) with a server served by `createMcpHandler`,
/// through the gateway with the tools pinned (so the gateway's own pre-call check speaks that
/// revision to a TypeScript server): the denied tool is not listed and its call is refused with
/// the policy's reason and never runs, the allowed tool's answer is masked, both are recorded.
#[test]
fn the_2026_typescript_sdk_generation_is_governed() {
    let test = "the_2026_typescript_sdk_generation_is_governed";
    if !ebpf_available(test) || !ts_sdk_available(test) {
        return;
    }
    if !node_dir()
        .join("node_modules/@modelcontextprotocol/client")
        .exists()
    {
        skip(
            test,
            "no @modelcontextprotocol/client (run cargo xtask setup)",
        );
        return;
    }
    let svc = |port| sdk_service(port, true);
    let w = World::start(
        "mcp-ts2",
        "node",
        "mcp_ts2_server.mjs",
        &[],
        ("tools", &svc),
    );
    let (port, runs, gw, cg) = (w.port, &w.runs, &w.gw, &w.cg);
    let client = node_script("mcp_ts2_client.mjs").display().to_string();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = run_json(cg, &["node", &client, &url, "search_docs", "delete_table"]);
    let _ = std::fs::remove_file(&client);
    assert_eq!(out["protocol"], "2026-07-28", "{out}");
    assert_ts_client_governed(&out);
    assert_only_search_ran(runs, gw);
    let status = gw.status();
    assert_eq!(
        status["mcp_pins"][0]["local_pins"]["search_docs"], "first_sight",
        "{status}"
    );
}
