//! MCP tool pinning on the data path ([`crate::mcp::pins`]): every tool of a `tools/list`
//! answer (every page) is checked against its pin and hidden unless it matches; before a
//! `tools/call` goes up, the upstream's tool list is fetched (all pages, through the same
//! session, with the call's credentials) and the called tool checked the same way, so that a
//! server that changed a tool since the client last listed it never runs the changed tool.
//! A batch cannot be checked so: its `tools/call` elements are refused.
use std::cell::RefCell;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header, request::Parts};
use serde_json::{Map, Value as Json, json};

use super::{
    Conn, Decided,
    forward::{Outgoing, injected},
    whole::read_held,
};
use crate::{
    extract::Kind,
    mcp::pins::{PinStore, Verdict},
    policy::{Action, Service, Snapshot},
    proxy::reply::Refusal,
};

/// Most pages of a tool list read for one check.
const MAX_PAGES: usize = 32;

/// The `Mcp-Method` / `Mcp-Name` headers of the header-carrying transport.
const MCP_METHOD: &str = "mcp-method";
const MCP_NAME: &str = "mcp-name";

/// Whether one tool of a `tools/list` answer to `service` may be shown: every tool seen is
/// checked for poisoning (and refused when the service says so), and checked against its pin
/// on a service that pins. A hidden tool is noted in `hidden` for the record.
pub(super) fn shown(
    pins: &PinStore,
    service: &Service,
    tool: &Json,
    hidden: &RefCell<Vec<Json>>,
) -> bool {
    let Some((name, findings)) = pins.observe(service, tool) else {
        // Not a tool: nothing a client could call by it.
        return !service.mcp.checks_tools();
    };
    if service.mcp.refuse_flagged && !findings.is_empty() {
        hidden
            .borrow_mut()
            .push(json!({ "tool": name, "flagged": findings }));
        return false;
    }
    if !service.mcp.pin_tools {
        return true;
    }
    let Some((name, verdict)) = pins.check(service, tool) else {
        return false;
    };
    if verdict.admits() {
        return true;
    }
    hidden
        .borrow_mut()
        .push(note(pins, service, &name, &verdict));
    false
}

/// The record's `mcp` for a list that hid tools.
pub(super) fn hidden_record(hidden: RefCell<Vec<Json>>) -> Option<Json> {
    let hidden = hidden.into_inner();
    (!hidden.is_empty()).then(|| json!({ "hidden": hidden }))
}

/// What a record says of a tool that did not pass its pin: for a change, both digests and
/// both definitions (the change to review).
fn note(pins: &PinStore, service: &Service, name: &str, verdict: &Verdict) -> Json {
    match verdict {
        Verdict::Changed { pinned, now } => {
            let change = pins.last_change(&service.name, name);
            json!({
                "tool": name,
                "pin": verdict.as_str(),
                "pinned_sha256": pinned,
                "sha256": now,
                "pinned_definition": change.as_ref().and_then(|c| c.pinned_definition.clone()),
                "definition": change.map(|c| c.definition),
            })
        }
        other => json!({ "tool": name, "pin": other.as_str() }),
    }
}

/// After a `tools/list` answer to `service` went by: when it was a listing's last page (no
/// `nextCursor`), the first listing is over.
pub(super) fn listed(conn: &Conn, service: &Service, body: &[u8]) {
    if !service.mcp.pin_tools {
        return;
    }
    let last = |v: &Json| {
        v.get("result").is_some_and(|r| {
            r.get("tools").is_some() && r.get("nextCursor").is_none_or(Json::is_null)
        })
    };
    if messages(body).iter().any(last) {
        conn.inputs.pins.listing_ended(&service.name);
    }
}

/// The MCP requests under way, by service, session and id. The SDK servers key an answer's
/// stream by the request's id (`1`, `1.0` and `"1"` are one): a second request with the id
/// of one under way takes over its stream, and the first call's answer goes out on the
/// second's, masked with the second call's obligations (a call whose rule masks a card got it
/// out through a call whose rule masks nothing). Such a second request is refused. A request
/// whose client went away before its answer ended keeps its id for [`LINGER`]: the server may
/// still be working on it.
#[derive(Debug, Default, Clone)]
pub struct InFlight(
    std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<InFlightKey, Option<std::time::Instant>>>,
    >,
);

type InFlightKey = (std::sync::Arc<str>, String, String);

/// How long the id of a request whose answer was cut off stays taken.
const LINGER: std::time::Duration = std::time::Duration::from_secs(300);

/// Past this many entries, those whose lingering is over are swept.
const SWEEP_PAST: usize = 4096;

/// A request's place in [`InFlight`], given back when its answer is done.
#[derive(Debug)]
pub struct InFlightGuard {
    set: InFlight,
    key: InFlightKey,
    /// Dropped now, the answer was cut off (see [`InFlightGuard::streaming`]).
    cut_off: bool,
}

impl InFlightGuard {
    /// The answer streams to the client: until [`InFlightGuard::answered`], a drop means it
    /// was cut off and the id lingers.
    pub fn streaming(&mut self) {
        self.cut_off = true;
    }

    /// The answer ended.
    pub fn answered(&mut self) {
        self.cut_off = false;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = crate::util::sync::LockExt::locked(&*self.set.0);
        if self.cut_off {
            map.insert(self.key.clone(), Some(std::time::Instant::now() + LINGER));
        } else {
            map.remove(&self.key);
        }
    }
}

/// A JSON-RPC id as the SDK servers key it: text as itself, a whole number as an integer
/// (`1.0`, `1e0` and `-0` are `1`, `1` and `0` to JavaScript and to pydantic), any other
/// number as JavaScript prints it.
fn id_key(id: &Json) -> String {
    match id {
        Json::String(s) => s.clone(),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                (f as i64).to_string()
            }
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

impl InFlight {
    /// Marks the request with JSON-RPC `id` of `session` (its `Mcp-Session-Id`) to `service`
    /// under way until the guard is dropped; `Err` when one with that id already is.
    pub fn begin(
        &self,
        service: &std::sync::Arc<str>,
        session: &str,
        id: &Json,
    ) -> Result<InFlightGuard, String> {
        let key = (service.clone(), session.to_string(), id_key(id));
        let now = std::time::Instant::now();
        let mut map = crate::util::sync::LockExt::locked(&*self.0);
        if map.len() > SWEEP_PAST {
            map.retain(|_, until| until.is_none_or(|t| t > now));
        }
        match map.get(&key) {
            Some(None) => {
                return Err(format!(
                    "a request with id {} is already under way in this MCP session",
                    key.2
                ));
            }
            Some(Some(t)) if *t > now => {
                return Err(format!(
                    "a request with id {} was cut off in this MCP session and may still be running: use another id",
                    key.2
                ));
            }
            _ => {}
        }
        map.insert(key.clone(), None);
        Ok(InFlightGuard {
            set: self.clone(),
            key,
            cut_off: false,
        })
    }
}

/// Marks `decided`'s requests under way in their MCP session (see [`InFlight`]): the guards
/// to keep until their answers are done, or the refusal's code and why (an id taken, or a
/// session header given twice or not as text).
pub(super) fn in_flight(
    conn: &Conn,
    service: &Service,
    headers: &http::HeaderMap,
    decided: &[Decided],
) -> Result<Vec<InFlightGuard>, (&'static str, String)> {
    let bad = |why: &str| ("bad_session_header", why.to_string());
    let mut values = headers.get_all("mcp-session-id").iter();
    let session = match (values.next(), values.next()) {
        // Without a session each request is the server's own (a stateless server).
        (None, _) => return Ok(Vec::new()),
        (Some(_), Some(_)) => return Err(bad("Mcp-Session-Id is given twice")),
        // As the servers read it: the spaces and tabs HTTP allows around a value are not
        // the value's (an h2 request may carry them; the HTTP/1.1 upstream strips them).
        (Some(v), None) => v
            .to_str()
            .map_err(|_| bad("Mcp-Session-Id is not text"))?
            .trim_matches([' ', '\t']),
    };
    if session.is_empty() {
        return Ok(Vec::new());
    }
    // Requests only: a response the client sends (to a server's sampling or elicitation
    // request) carries the server's id, counted apart from the client's.
    decided
        .iter()
        .filter(|d| {
            d.call
                .message
                .as_ref()
                .is_some_and(|m| m.get("method").is_some())
        })
        .filter_map(|d| d.call.rpc_id.as_ref())
        .map(|id| {
            conn.inputs
                .mcp_in_flight
                .begin(&service.name, session, id)
                .map_err(|why| ("duplicate_request_id", why))
        })
        .collect()
}

/// What a record says of a retried multi-round-trip request (the 2026-07-28 revision: a
/// `tools/call`, `prompts/get` or `resources/read` sent again with `params.inputResponses`
/// and/or `params.requestState` after an `InputRequiredResult`): the keys of the answers it
/// carries and whether it echoes the server's state. Such a retry is a call like any other,
/// decided again (policy, pins, limits) on its own arguments; None for any other request.
pub(super) fn input_round(one: &Decided) -> Option<Json> {
    let params = one.call.message.as_ref()?.get("params")?;
    let responses = params.get("inputResponses").and_then(Json::as_object);
    let state = params.get("requestState").is_some_and(|s| !s.is_null());
    if responses.is_none() && !state {
        return None;
    }
    let keys: Vec<&String> = responses.map(|r| r.keys().collect()).unwrap_or_default();
    Some(json!({ "input_round": { "input_responses": keys, "request_state": state } }))
}

/// `note` added to what a record's `mcp` says already (an [`input_round`]).
pub(super) fn merge_note(mcp: &mut Option<Json>, note: Json) {
    match (mcp.as_mut().and_then(Json::as_object_mut), note) {
        (Some(have), Json::Object(add)) => have.extend(add),
        (_, note) => *mcp = Some(note),
    }
}

/// The tool a request's single call calls, if it is a `tools/call`.
fn called_tool(one: &Decided) -> Option<&str> {
    let m = one.call.message.as_ref()?;
    if m.get("method").and_then(Json::as_str) != Some("tools/call") {
        return None;
    }
    Some(
        m.get("params")
            .and_then(|p| p.get("name"))
            .and_then(Json::as_str)
            .unwrap_or(""),
    )
}

/// Refuses the `tools/call` elements of a batch to a service that pins its tools: they
/// cannot be checked against the live list one by one.
pub(super) fn guard_batch(service: Option<&Service>, decided: &mut [Decided]) {
    if !service.is_some_and(|s| s.mcp.checks_tools()) {
        return;
    }
    for d in decided {
        if d.decision.enforced == Action::Allow && called_tool(d).is_some() {
            d.decision.action = Action::Deny;
            d.decision.enforced = Action::Deny;
            d.decision.rule = None;
            d.decision.reason = Some(
                "this service pins its tools: a tools/call is checked against the upstream's \
                 tool list and must be sent on its own, not in a batch"
                    .into(),
            );
        }
    }
}

/// Before a `tools/call` to a service that pins its tools: the refusal, and the record's
/// `mcp` note, when the tool as the upstream lists it now does not match its pin.
pub(super) async fn before_call(
    conn: &Conn,
    snap: &Snapshot,
    service: &Service,
    parts: &Parts,
    one: &Decided,
) -> Result<(), (Refusal, Json)> {
    let Some(name) = called_tool(one) else {
        return Ok(());
    };
    let refusal = |error: &'static str, reason: String| Refusal {
        service: Some(service.name.to_string()),
        function: Some(one.call.function.clone()),
        policy_commit: snap.version.commit.as_deref().map(str::to_string),
        ..Refusal::new(StatusCode::FORBIDDEN, error, reason)
    };
    let tools = live_tools(conn, snap, service, parts, one)
        .await
        .map_err(|r| (r, json!({ "tool": name, "pin": "unchecked" })))?;
    let pins = &conn.inputs.pins;
    let mut verdict = None;
    for t in &tools {
        let Some((n, findings)) = pins.observe(service, t) else {
            continue;
        };
        let v = if service.mcp.pin_tools {
            pins.check(service, t).map(|(_, v)| v)
        } else {
            Some(Verdict::Pinned)
        };
        if n == name {
            if service.mcp.refuse_flagged && !findings.is_empty() {
                let checks: Vec<&str> = findings.iter().map(|f| f.check.as_str()).collect();
                return Err((
                    refusal(
                        "tool_flagged",
                        format!(
                            "tool {name:?} is refused: its definition fails the poisoning checks \
                             ({}); see `callgate mcp audit {}`",
                            checks.join(", "),
                            service.name
                        ),
                    ),
                    json!({ "tool": name, "flagged": findings }),
                ));
            }
            verdict = v;
        }
    }
    let svc = &service.name;
    match verdict {
        Some(v) if v.admits() => Ok(()),
        Some(v @ Verdict::Changed { .. }) => {
            let Verdict::Changed { pinned, now } = &v else {
                return Ok(());
            };
            let r = refusal(
                "tool_changed",
                format!(
                    "tool {name:?} changed since it was pinned (pinned sha256 {pinned}, now \
                     {now}); the call was not sent. Review the change, then run `callgate mcp \
                     accept {svc} {name}` or commit its new pin"
                ),
            );
            Err((r, note(&conn.inputs.pins, service, name, &v)))
        }
        Some(v) => Err((
            refusal(
                "tool_unpinned",
                format!(
                    "tool {name:?} has no pin; it is hidden and refused until pinned (`callgate \
                     mcp accept {svc} {name}`, or commit its pin)"
                ),
            ),
            note(&conn.inputs.pins, service, name, &v),
        )),
        None => Err((
            refusal(
                "tool_unlisted",
                format!(
                    "the upstream does not list a tool {name:?}: only listed, pinned tools of \
                     this service may be called"
                ),
            ),
            json!({ "tool": name, "pin": "unlisted" }),
        )),
    }
}

/// The upstream's tools now: `tools/list`, every page, sent as the client's request was
/// (same endpoint, session and credentials).
async fn live_tools(
    conn: &Conn,
    snap: &Snapshot,
    service: &Service,
    parts: &Parts,
    one: &Decided,
) -> Result<Vec<Json>, Refusal> {
    let failed = |why: String| {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            "tool_check_failed",
            format!(
                "the called tool could not be checked against its pin: listing the upstream's \
                 tools failed: {why}"
            ),
        )
    };
    let mut tools = Vec::new();
    let mut cursor: Option<Json> = None;
    // An id of its own, no client's and no other check's: the servers route an answer to the
    // request with its id, and two checks (or a client's request) sharing one in a session
    // would take each other's.
    let check = uuid::Uuid::now_v7().simple();
    for page in 0..MAX_PAGES {
        let id = format!("callgate-pin-check-{check}-{page}");
        let mut params = Map::new();
        if let Some(c) = cursor.take() {
            params.insert("cursor".into(), c);
        }
        // The 2026-07-28 transport carries the protocol version and capabilities in every
        // request's `_meta`: the check's request says what the call says.
        let meta = one
            .call
            .message
            .as_ref()
            .and_then(|m| m.get("params")?.get("_meta"));
        if let Some(meta) = meta {
            params.insert("_meta".into(), meta.clone());
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params});
        let mut head = http::Request::builder()
            .method(Method::POST)
            .uri(parts.uri.clone())
            .version(parts.version)
            .body(())
            .map_err(|e| failed(e.to_string()))?
            .into_parts()
            .0;
        head.headers = parts.headers.clone();
        let h = &mut head.headers;
        for name in [
            header::CONTENT_LENGTH,
            header::EXPECT,
            header::TRANSFER_ENCODING,
        ] {
            h.remove(name);
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.remove(MCP_NAME);
        let mirrored: Vec<_> = h
            .keys()
            .filter(|k| k.as_str().starts_with("mcp-param-"))
            .cloned()
            .collect();
        for k in mirrored {
            h.remove(k);
        }
        if h.contains_key(MCP_METHOD) {
            h.insert(MCP_METHOD, HeaderValue::from_static("tools/list"));
        }
        let resp = conn
            .forward(
                snap,
                Some(service),
                Outgoing {
                    kind: Kind::Mcp,
                    parts: head,
                    body: crate::proxy::body::full(Bytes::from(body.to_string())),
                    ob: &one.decision.obligations,
                    span: None,
                },
            )
            .await?;
        let status = resp.status();
        let scrub = injected(&resp);
        let bytes = read_held(conn, resp.into_body(), scrub).await?;
        if !status.is_success() {
            return Err(failed(format!("HTTP {status}")));
        }
        let answer = answer(&bytes, &id).ok_or_else(|| failed("no answer to it".into()))?;
        let Some(result) = answer.get("result") else {
            return Err(failed(format!(
                "an error: {}",
                answer.get("error").unwrap_or(&Json::Null)
            )));
        };
        if let Some(list) = result.get("tools").and_then(Json::as_array) {
            tools.extend(list.iter().cloned());
        }
        match result.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => {
                conn.inputs.pins.listing_ended(&service.name);
                return Ok(tools);
            }
        }
    }
    Err(failed(format!("more than {MAX_PAGES} pages")))
}

/// The JSON-RPC answer with `id` in a JSON or event-stream body.
fn answer(body: &[u8], id: &str) -> Option<Json> {
    messages(body)
        .into_iter()
        .find(|v| v.get("id").and_then(Json::as_str) == Some(id))
}

/// The JSON-RPC messages of a JSON or event-stream body.
fn messages(body: &[u8]) -> Vec<Json> {
    if let Ok(v) = serde_json::from_slice::<Json>(body) {
        return match v {
            Json::Array(items) => items,
            v => vec![v],
        };
    }
    // An event stream, read as clients read it: a message may span several `data` lines of
    // one event, lines may end in CR.
    crate::util::sse::data_of(body)
        .iter()
        .filter_map(|d| serde_json::from_slice::<Json>(d).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_keyed_as_the_servers_key_them() {
        for (a, b) in [
            (json!(1), json!("1")),
            (json!(1.0), json!(1)),
            (json!(-0.0), json!(0)),
        ] {
            assert_eq!(id_key(&a), id_key(&b), "{a} {b}");
        }
        assert_ne!(id_key(&json!(1.5)), id_key(&json!(1)));
        let set = InFlight::default();
        let svc: std::sync::Arc<str> = "crm".into();
        let mut g = set.begin(&svc, "s", &json!(7)).expect("first");
        assert!(set.begin(&svc, "s", &json!("7")).is_err(), "under way");
        assert!(set.begin(&svc, "t", &json!(7)).is_ok(), "another session");
        g.streaming();
        drop(g);
        assert!(
            set.begin(&svc, "s", &json!(7)).is_err(),
            "cut off: it lingers"
        );
        let mut g = set.begin(&svc, "s", &json!(8)).expect("another id");
        g.streaming();
        g.answered();
        drop(g);
        assert!(
            set.begin(&svc, "s", &json!(8)).is_ok(),
            "answered: free again"
        );
    }

    #[test]
    fn the_answer_is_found_in_json_and_in_an_event_stream() {
        let json = br#"{"jsonrpc":"2.0","id":"x","result":{"tools":[]}}"#;
        assert!(answer(json, "x").is_some());
        assert!(answer(json, "y").is_none());
        let sse = b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\r\n\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"id\":\"x\",\"result\":{}}\r\n\r\n";
        assert_eq!(
            answer(sse, "x").and_then(|v| v.get("result").cloned()),
            Some(json!({}))
        );
    }
}
