//! What an MCP answer carries, on whichever stream it arrives, against servers of the official
//! Python SDK (FastMCP, `tests/parties/mcp_streams_server.py`). A session's `GET` stream may
//! carry any call's answer: the SDK's resumability replays a call's answer to a `GET` with
//! `Last-Event-ID`, and the older HTTP+SSE transport sends every answer on its `GET /sse`
//! stream. Such answers get every rule's masks and have their tool lists filtered as a
//! listing's. A tool's result is masked by field paths however the SDK wraps it, and an
//! answer too long to parse is withheld rather than masked by detectors alone.
use callgate_e2e::*;
use serde_json::Value;

/// What the client must never see of the server's answers.
const SECRETS: [&str; 3] = ["4111 1111 1111 1111", "jane.doe@example.com", "078-05-1120"];

/// A FastMCP server in `mode` (`http`: streamable HTTP with resumability, `sse`: HTTP+SSE)
/// behind a gateway with service `svc`.
fn world(test: &str, mode: &str, svc: &str) -> McpWorld {
    McpWorld::start(test, "mcp_streams_server.py", &[mode], svc)
}

fn client(w: &McpWorld, args: &[&str]) -> Value {
    w.client("mcp_streams_client.py", args)
}

fn leaked(text: &str) -> Vec<&'static str> {
    SECRETS.into_iter().filter(|s| text.contains(s)).collect()
}

const MASKED_BY_A_RULE: &str = r#"
service: crm
match: { hosts: ["127.0.0.1:PORT"] }
protocol: mcp
functions:
  profile: {}
  search_docs: {}
  delete_table: {}
rules:
  - name: profile-masked
    function: profile
    action: allow
    mask: [card_number, email, ssn]
  - { name: search, function: search_docs, action: allow }
  - { name: no-drop, function: delete_table, action: deny, reason: destructive }
"#;

/// A call's answer masked by its rule's own masks, then replayed by the server to a `GET`
/// with `Last-Event-ID` (the first event of the call's answer): the replay is masked too. A
/// tool listing replayed so is filtered as the listing was.
#[test]
fn a_replayed_answer_is_masked_and_filtered_as_it_was() {
    let test = "a_replayed_answer_is_masked_and_filtered_as_it_was";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let w = world(test, "http", MASKED_BY_A_RULE);
    let url = format!("http://127.0.0.1:{}/mcp", w.port);
    let out = client(&w, &["resume", &url, "profile"]);
    let call = out["call_body"].as_str().unwrap_or_default();
    assert!(call.contains("Jane Doe"), "the call was answered: {out}");
    assert!(leaked(call).is_empty(), "the call's answer leaked: {call}");
    let replay = out["replay_body"].as_str().unwrap_or_default();
    assert!(
        replay.contains("Jane Doe"),
        "the server replayed the answer: {out}"
    );
    assert!(
        leaked(replay).is_empty(),
        "the replay leaked {:?}: {replay}",
        leaked(replay)
    );
    let out = client(&w, &["resume", &url, "tools/list"]);
    let list = out["call_body"].as_str().unwrap_or_default();
    assert!(
        list.contains("search_docs") && !list.contains("delete_table"),
        "the listing is filtered: {out}"
    );
    let replay = out["replay_body"].as_str().unwrap_or_default();
    assert!(
        replay.contains("search_docs"),
        "the server replayed the listing: {out}"
    );
    assert!(
        !replay.contains("delete_table"),
        "the replayed listing shows a denied tool: {replay}"
    );
}

/// The HTTP+SSE transport (MCP 2024-11-05) with the SDK's own client: every answer arrives on
/// the `GET /sse` stream. Lists are filtered there (a denied tool, or a tool the server adds
/// after a rug pull, is not shown; pinned, the changed tool is hidden too), a rule's masks
/// apply, and nothing denied runs.
#[test]
fn the_http_sse_transport_is_governed_on_its_stream() {
    let test = "the_http_sse_transport_is_governed_on_its_stream";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    for pin in [false, true] {
        let svc = if pin {
            MASKED_BY_A_RULE.replace(
                "protocol: mcp\n",
                "protocol: mcp\nmcp: { pin_tools: true }\n",
            )
        } else {
            MASKED_BY_A_RULE.to_string()
        };
        let w = world(&format!("{test}-{pin}"), "sse", &svc);
        let url = format!("http://127.0.0.1:{}/sse", w.port);
        let out = client(
            &w,
            &[
                "sse",
                &url,
                "profile",
                "search_docs",
                "search_docs",
                "delete_table",
            ],
        );
        let lists = out["lists"].to_string();
        let calls = out["calls"].to_string();
        assert!(
            lists.contains("search_docs"),
            "pin {pin}: the lists came: {out}"
        );
        assert!(
            !lists.contains("delete_table") && !lists.contains("export_all"),
            "pin {pin}: a tool the caller may not call is listed: {lists}"
        );
        if pin {
            assert!(
                !lists.contains("<IMPORTANT>"),
                "the changed tool is listed: {lists}"
            );
        }
        assert!(
            leaked(&calls).is_empty(),
            "pin {pin}: the tool's result leaked {:?}: {calls}",
            leaked(&calls)
        );
        let runs = w.ran();
        assert!(
            !runs
                .iter()
                .any(|r| r == "delete_table" || r == "export_all"),
            "pin {pin}: a denied tool ran: {runs:?}"
        );
    }
}

/// Field paths address a tool's result: FastMCP puts a result that is not an object in
/// `structuredContent` as `{"result": …}` (and a list's elements as text items of their own);
/// the path reaches the fields under the wrapper and in each element of a list.
#[test]
fn field_paths_reach_a_wrapped_or_listed_result() {
    let test = "field_paths_reach_a_wrapped_or_listed_result";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let svc = r#"
service: crm
match: { hosts: ["127.0.0.1:PORT"] }
protocol: mcp
functions:
  customer: {}
  customers: {}
rules:
  - { name: agents, function: [customer, customers], action: allow }
response:
  mask: [card_number, email, { field: "$.ssn" }]
"#;
    let w = world(test, "http", svc);
    let url = format!("http://127.0.0.1:{}/mcp", w.port);
    let out = client(&w, &["sdk", &url, "customer", "customers"]);
    let calls = out["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2, "{out}");
    for call in calls {
        assert!(call["error"].is_null(), "{out}");
        assert!(call.to_string().contains("Jane Doe"), "answered: {call}");
        assert!(
            !call.to_string().contains("078-05-1120"),
            "the ssn leaked: {call}"
        );
    }
}

/// A caller may choose an answer's size (a row count): one longer than the gateway holds to
/// parse (`http.max_held_response_kb`, here 64 KiB) cannot have field paths applied, and is
/// withheld rather than passed masked by detectors alone.
#[test]
fn an_answer_too_long_for_field_paths_is_withheld() {
    let test = "an_answer_too_long_for_field_paths_is_withheld";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let svc = r#"
service: crm
match: { hosts: ["127.0.0.1:PORT"] }
protocol: mcp
functions:
  report: {}
rules:
  - { name: reports, function: report, action: allow }
response:
  mask: [card_number, email, { field: "$.ssn" }]
"#;
    let w = McpWorld::start_with_config(
        test,
        "mcp_streams_server.py",
        &["http"],
        svc,
        "http:\n  max_held_response_kb: 64\n",
    );
    let url = format!("http://127.0.0.1:{}/mcp", w.port);
    let out = client(&w, &["sdk", &url, "report:10", "report:5000"]);
    let calls = out["calls"].as_array().expect("calls");
    assert!(
        calls[0].to_string().contains("[MASKED:field]")
            && !calls[0].to_string().contains("078-05-1120"),
        "the short answer is masked: {out}"
    );
    assert!(
        calls[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("withheld")),
        "the long answer is an error at once, not a wait: {}",
        calls[1]
    );
    assert!(
        !calls[1].to_string().contains("078-05-1120"),
        "the long answer leaked the ssn: {}",
        calls[1]
    );
}
