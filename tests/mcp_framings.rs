//! MCP answers framed as clients read them, and answers routed by request id, against a
//! malicious server (raw Starlette, `tests/parties/mcp_framings_server.py`) and the official
//! SDK clients, and an honest FastMCP server (`mcp_slow_server.py`). A `tools/list` answer's
//! message split over several `data` lines, with CR-only or CRLF line endings and no space
//! after `data:`, a batch array as a POST's answer, or an event stream's type in upper case
//! is read by the Python or the TypeScript client: the gateway reads it the same way, so the
//! listing is filtered and a tool result's field paths apply. A second request reusing the
//! id of one under way in its session (which the SDK server answers with the first's result)
//! is refused.
use callgate_e2e::*;
use serde_json::Value;

fn world(test: &str, script: &str, extra: &[&str], svc: &str) -> McpWorld {
    McpWorld::start(test, script, extra, svc)
}

fn client(w: &McpWorld, args: &[&str]) -> Value {
    w.client("mcp_framings_client.py", args)
}

const LISTING: &str = r#"
service: crm
match: { hosts: ["127.0.0.1:PORT"] }
protocol: mcp
mcp: { refuse_flagged: true }
functions:
  search_docs: {}
  delete_table: {}
  poisoned: {}
  profile: {}
rules:
  - { name: search, function: [search_docs, poisoned], action: allow }
  - { name: no-drop, function: delete_table, action: deny, reason: destructive }
  - name: profile-masked
    function: profile
    action: allow
    mask: [{ field: "$.ssn" }]
"#;

/// Each framing of the listing, to the Python SDK client: neither the denied tool nor the
/// poisoned one is shown, and the denied one never runs.
#[test]
fn a_listing_is_filtered_however_it_is_framed() {
    let test = "a_listing_is_filtered_however_it_is_framed";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    for v in [
        "plain",
        "ct_case",
        "multiline",
        "nospace_crlf_multi",
        "cr",
        "bom",
        "get_multiline",
    ] {
        let w = world(
            &format!("{test}-{v}"),
            "mcp_framings_server.py",
            &[v],
            LISTING,
        );
        let url = format!("http://127.0.0.1:{}/mcp", w.port);
        let out = client(&w, &["sdk", &url, "delete_table"]);
        let tools = out["tools"].to_string();
        assert!(
            !tools.contains("delete_table") && !tools.contains("poisoned"),
            "{v}: a denied or poisoned tool is shown: {out}"
        );
        assert!(
            !w.ran().iter().any(|r| r == "delete_table"),
            "{v}: the denied tool ran"
        );
    }
}

/// The same to the TypeScript SDK client, which also takes a batch array as a POST's answer,
/// an event stream's type in any case, and a `GET` stream as events whatever its type.
#[test]
fn a_listing_is_filtered_for_the_typescript_client_too() {
    let test = "a_listing_is_filtered_for_the_typescript_client_too";
    if !ebpf_available(test) || !parties_available(test) || !node_parties_available(test) {
        return;
    }
    for v in [
        "plain",
        "array_json",
        "multiline",
        "ct_case",
        "get_multiline",
        "get_untyped",
    ] {
        let w = world(
            &format!("{test}-{v}"),
            "mcp_framings_server.py",
            &[v],
            LISTING,
        );
        let url = format!("http://127.0.0.1:{}/mcp", w.port);
        let script = node_script("mcp_ts_client.mjs").display().to_string();
        let out =
            w.cg.run(&["timeout", "20", "node", &script, &url, "delete_table"]);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            stdout.contains("search_docs"),
            "{v}: the client read the listing: {stdout}"
        );
        assert!(
            !stdout.contains("\"delete_table\":") && !stdout.contains("\"poisoned\":"),
            "{v}: a denied or poisoned tool is shown: {stdout}"
        );
    }
}

/// A tool's result split over several `data` lines, or with CR line endings: its field
/// paths apply.
#[test]
fn a_result_is_masked_however_it_is_framed() {
    let test = "a_result_is_masked_however_it_is_framed";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    for v in ["call_plain", "call_multiline", "call_cr"] {
        let w = world(
            &format!("{test}-{v}"),
            "mcp_framings_server.py",
            &[v],
            LISTING,
        );
        let url = format!("http://127.0.0.1:{}/mcp", w.port);
        let out = client(&w, &["sdk", &url, "profile"]);
        let calls = out["calls"].to_string();
        assert!(
            !calls.contains("078-05-1120"),
            "{v}: the ssn leaked: {calls}"
        );
    }
}

/// `profile` (its rule masks card, e-mail and SSN) with id 1, then, while it waits on its
/// backend, `search_docs` (no masks) with id 1 or "1" on another connection of the session:
/// the SDK server would send `profile`'s answer on the second call's stream. The second is
/// refused; nothing masked reaches the client.
#[test]
fn a_request_id_under_way_is_not_taken_twice() {
    let test = "a_request_id_under_way_is_not_taken_twice";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let svc = r#"
service: crm
match: { hosts: ["127.0.0.1:PORT"] }
protocol: mcp
functions:
  profile: {}
  search_docs: {}
rules:
  - name: profile-masked
    function: profile
    action: allow
    mask: [card_number, email, ssn]
  - { name: search, function: search_docs, action: allow }
"#;
    let w = world(test, "mcp_slow_server.py", &[], svc);
    let url = format!("http://127.0.0.1:{}/mcp", w.port);
    for (a, b) in [("1", "1"), ("1", "\"1\"")] {
        let out = client(&w, &["dupid", &url, "profile", "search_docs", "0.3", a, b]);
        let all = out.to_string();
        for secret in ["4111 1111 1111 1111", "jane.doe@example.com", "078-05-1120"] {
            assert!(
                !all.contains(secret),
                "ids {a}/{b}: {secret} reached the client: {out:#}"
            );
        }
        assert!(
            out["fast_body"].as_str().is_some_and(
                |b| b.contains("duplicate_request_id") || b.contains("already under way")
            ),
            "ids {a}/{b}: the second request is refused: {out:#}"
        );
    }
    // The second over h2c with its Mcp-Session-Id spelled with the spaces or tab around it
    // that an h2 server takes and the upstream's HTTP/1.1 parser strips.
    let py = party_python().display().to_string();
    let script = party_script("mcp_sid_h2c_client.py").display().to_string();
    let port = w.port.to_string();
    for v in ["plain", "lead", "trail", "tab"] {
        let out = w.cg.run(&[
            &py,
            &script,
            "127.0.0.1",
            &port,
            "profile",
            "search_docs",
            "0.3",
            v,
        ]);
        let all = String::from_utf8_lossy(&out.stdout).to_string();
        for secret in ["4111 1111 1111 1111", "jane.doe@example.com", "078-05-1120"] {
            assert!(
                !all.contains(secret),
                "h2c {v}: {secret} reached the client: {all}"
            );
        }
    }
}
