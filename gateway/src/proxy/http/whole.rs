//! Answers that must be held whole before they go back: a JSON-RPC batch (denied elements are
//! answered by the gateway and merged with the upstream's answers to the allowed ones) and an
//! MCP `tools/list` (filtered to the tools the caller may call). Both are bounded by
//! `http.max_held_response_kb`, and hold the inspection budget while they are read.
use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::{Response, StatusCode, header, request::Parts};
use serde_json::Value as Json;

use super::{
    Conn, budget,
    decide::Decided,
    forward::{Outgoing, injected, strip_hop_by_hop},
    respond::json_bytes,
    streaming::{OnCut, Recording, response_value},
};
use crate::{
    call::Caller,
    call::Role,
    extract::Kind,
    obligations::mask::{HeaderMasker, mcp::ToolFilter, scrub::Secrets},
    policy::{Action, Service, Snapshot},
    proxy::body::ProxyBody,
    proxy::reply::{self, Refusal},
    proxy::upstream::pool::UpstreamBody,
    record::{Durable, RawJson, RecordError},
};

/// A JSON-RPC batch: the allowed elements go upstream as one batch; the answer is the
/// upstream's responses and the gateway's errors, in the order of the request.
pub(super) async fn batch(
    conn: &Conn,
    service: Option<&Service>,
    snap: &Snapshot,
    parts: Parts,
    decided: Vec<Decided>,
    recording: Option<Recording>,
) -> Response<ProxyBody> {
    let allowed: Vec<&Json> = decided
        .iter()
        .filter(|d| d.decision.enforced == Action::Allow)
        .filter_map(|d| d.call.message.as_ref())
        .collect();
    let version = parts.version;
    let mut answers: HashMap<String, Json> = HashMap::new();
    let mut failure: Option<Refusal> = None;
    let mut status = StatusCode::OK;
    // One request goes up with one set of obligations (credential, headers): the allowed
    // calls must share theirs, or none of them goes.
    let mut obligations = decided
        .iter()
        .filter(|d| d.decision.enforced == Action::Allow)
        .map(|d| &d.decision.obligations);
    let first = obligations.next().cloned();
    if obligations.any(|o| {
        first
            .as_ref()
            .is_some_and(|f| !Arc::ptr_eq(f, o) && **f != **o)
    }) {
        failure = Some(Refusal::new(
            StatusCode::BAD_REQUEST,
            "batch_mixed_obligations",
            "the calls of this batch are allowed by rules with different obligations \
             (credentials, headers, masks); send them separately",
        ));
    }
    // Cut before the records below: the allowed calls may have been carried out.
    let cut = OnCut::new(|| {
        for d in &decided {
            if let Some(rec) = d.recording(recording.clone(), None) {
                if d.decision.enforced == Action::Allow {
                    rec.cut();
                } else {
                    let _ = rec.submit(None, None, false, 0);
                }
            }
        }
    });
    if let (Some(base), None) = (first.filter(|_| !allowed.is_empty()), &failure) {
        let body = serde_json::to_vec(&allowed).unwrap_or_default();
        match conn
            .forward(
                snap,
                service,
                Outgoing {
                    kind: Kind::JsonRpc,
                    parts,
                    body: crate::proxy::body::full(Bytes::from(body)),
                    ob: &base,
                    span: None,
                },
            )
            .await
        {
            Ok(resp) => {
                status = resp.status();
                let scrub = injected(&resp);
                match read_held(conn, resp.into_body(), scrub).await {
                    Ok(b) => match serde_json::from_slice::<Json>(&b) {
                        Ok(Json::Array(items)) => {
                            for item in items {
                                let id = item.get("id").map(Json::to_string).unwrap_or_default();
                                answers.insert(id, item);
                            }
                        }
                        Ok(other) => {
                            // One object for a batch: an error about the whole batch.
                            let id = other.get("id").map(Json::to_string).unwrap_or_default();
                            answers.insert(id, other);
                        }
                        Err(e) => {
                            failure = Some(Refusal::new(
                                StatusCode::BAD_GATEWAY,
                                "upstream_invalid",
                                format!("the upstream's batch answer is not JSON: {e}"),
                            ))
                        }
                    },
                    Err(r) => failure = Some(r),
                }
            }
            Err(r) => failure = Some(r),
        }
    }
    cut.disarm();
    let mut out = Vec::new();
    let mut owed = Owed::new(conn);
    for d in &decided {
        let id = d.call.rpc_id.as_ref();
        let answer = if d.decision.enforced != Action::Allow {
            let r = d.refusal();
            id.map(|id| r.rpc_error(Some(id)))
        } else if let Some(r) = &failure {
            id.map(|id| r.rpc_error(Some(id)))
        } else {
            let key = id.map(Json::to_string).unwrap_or_default();
            id.and_then(|_| answers.remove(&key)).map(|mut a| {
                if let (Role::ListTools, Some(s)) = (d.call.role, service) {
                    let hidden = std::cell::RefCell::new(Vec::new());
                    filter_value(&mut a, &|t| {
                        tool_name(t).is_some_and(|name| may_call(snap, s, &d.caller, name))
                            && super::mcp_check::shown(&conn.inputs.pins, s, t, &hidden)
                    });
                }
                d.decision
                    .obligations
                    .masks
                    .0
                    .mask_value(&conn.inputs.mask_key, &mut a);
                a
            })
        };
        if let Some(rec) = d.recording(recording.clone(), None) {
            owed.add(rec.submit(
                Some(status.as_u16()),
                answer.as_ref().map(RawJson::of),
                false,
                0,
            ));
        }
        if let Some(a) = answer {
            out.push(a);
        }
    }
    if let Err(r) = owed.on_disk().await {
        // Each call with an id gets the error, as the batch's answer.
        out = decided
            .iter()
            .filter_map(|d| d.call.rpc_id.as_ref())
            .map(|id| r.rpc_error(Some(id)))
            .collect();
    }
    if out.is_empty() {
        // Only notifications: nothing to answer.
        return reply::empty(StatusCode::ACCEPTED);
    }
    json_bytes(
        StatusCode::OK,
        version,
        serde_json::to_vec(&out).unwrap_or_default(),
    )
}

/// MCP `tools/list`: the server's list without the tools this caller may not call, masked.
pub(super) async fn list_tools(
    conn: &Conn,
    service: &Service,
    snap: &Arc<Snapshot>,
    version: http::Version,
    resp: Response<UpstreamBody>,
    one: Decided,
    recording: Option<Recording>,
) -> Response<ProxyBody> {
    let scrub = injected(&resp);
    let (mut head, body) = resp.into_parts();
    head.version = version;
    // The list is filtered (and masked) as text: one that is compressed or whose head says two
    // things cannot be, and would reach the caller whole; nor, on a service that masks, one
    // of a type that is not text, unless the service lets such answers pass.
    let ob = &one.decision.obligations;
    let verdict = crate::obligations::mask::response_body(&head.headers).and_then(|kind| {
        if ob.masks.0.is_empty() {
            Ok(kind)
        } else {
            crate::obligations::mask::answer_kind(
                head.status.as_u16(),
                &head.headers,
                ob.unmaskable,
                false,
            )
        }
    });
    if let Err(why) = verdict {
        let r = Refusal::new(StatusCode::BAD_GATEWAY, "unmaskable_response", why.reason());
        if let Some(rec) = one.recording(recording.clone(), Some(&r)) {
            let _ = rec.submit(Some(r.status.as_u16()), None, false, 0);
        }
        return r.respond(Kind::Mcp, one.call.rpc_id.as_ref());
    }
    strip_hop_by_hop(&mut head.headers);
    head.headers.remove(header::CONTENT_LENGTH);
    let masks = one.decision.obligations.masks.0.clone();
    if let Some(m) = HeaderMasker::new(masks, conn.inputs.mask_key.clone()) {
        m.mask(&mut head.headers);
    }
    let mut owed = Owed::new(conn);
    let mut record = |recording: Option<Recording>, status: u16, response: Option<RawJson>| {
        if let Some(rec) = one.recording(recording, None) {
            owed.add(rec.submit(Some(status), response, false, 0));
        }
    };
    let cut = OnCut::new(|| {
        if let Some(r) = one.recording(recording.clone(), None) {
            r.cut();
        }
    });
    let bytes = match read_held(conn, body, scrub).await {
        Ok(b) => b,
        Err(r) => {
            cut.disarm();
            record(recording, r.status.as_u16(), None);
            return r.respond(Kind::Mcp, one.call.rpc_id.as_ref());
        }
    };
    cut.disarm();
    // Read as text, as every MCP answer is: UTF-16 would carry its tools past the filter.
    if crate::obligations::mask::not_text(&bytes) {
        let why = crate::obligations::mask::Unmaskable::NotText.reason();
        let r = Refusal::new(StatusCode::BAD_GATEWAY, "unmaskable_response", why);
        record(recording, r.status.as_u16(), None);
        return r.respond(Kind::Mcp, one.call.rpc_id.as_ref());
    }
    // Filtered and masked message by message, read as clients read it (an event stream
    // whatever the case of its type, a message over several `data` lines, a batch).
    let hidden = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut masker = crate::obligations::mask::mcp::McpMasker::new(
        one.decision.obligations.masks.0.clone(),
        conn.inputs.mask_key.clone(),
        !crate::obligations::mask::mcp::is_json_only(&head.headers),
        conn.inputs.cfg.http.max_held_response_bytes,
    );
    masker.set_tools(tool_filter(
        conn,
        snap.clone(),
        service,
        one.caller.clone(),
        Some(hidden.clone()),
    ));
    masker.rpc_id = one.call.rpc_id.clone();
    let mut masked = Vec::with_capacity(bytes.len());
    masker.push(&bytes, &mut masked);
    masker.finish(&mut masked);
    super::mcp_check::listed(conn, service, &bytes);
    // The answer as read holds its share of the inspection budget: not while the record is
    // written.
    drop(bytes);
    let hidden = std::mem::take(&mut *hidden.lock().unwrap_or_else(|p| p.into_inner()));
    let mut recording = recording;
    if let (Some(r), Some(v)) = (
        recording.as_mut(),
        super::mcp_check::hidden_record(std::cell::RefCell::new(hidden)),
    ) {
        r.rec.mcp = Some(v);
    }
    record(
        recording,
        head.status.as_u16(),
        Some(response_value(&masked)),
    );
    if let Err(r) = owed.on_disk().await {
        return r.respond(Kind::Mcp, one.call.rpc_id.as_ref());
    }
    Response::from_parts(head, crate::proxy::body::full(Bytes::from(masked)))
}

/// The records an answer held whole owes before it goes. In strict durability it goes once
/// they are on disk, and not at all when one could not be queued or written: the caller gets
/// `recording_unavailable` instead. Buffered, there is nothing to wait for.
struct Owed {
    strict: bool,
    waits: Vec<Durable>,
    /// Why a record was not queued, in strict durability.
    unqueued: Option<RecordError>,
}

impl Owed {
    fn new(conn: &Conn) -> Self {
        Self {
            strict: conn.inputs.recorder.as_ref().is_some_and(|r| r.strict()),
            waits: Vec::new(),
            unqueued: None,
        }
    }

    /// What submitting a record returned.
    fn add(&mut self, submitted: Result<Option<Durable>, RecordError>) {
        match submitted {
            Ok(Some(d)) => self.waits.push(d),
            Ok(None) => {}
            Err(e) if self.strict => self.unqueued = Some(e),
            // Buffered: the answer goes; the failure is counted and logged.
            Err(_) => {}
        }
    }

    async fn on_disk(self) -> Result<(), Refusal> {
        let refusal = |why: String| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "recording_unavailable",
                why,
            )
        };
        if let Some(e) = self.unqueued {
            return Err(refusal(format!(
                "the call's record could not be queued: {e}"
            )));
        }
        for d in self.waits {
            if let Err(e) = d.wait().await {
                return Err(refusal(format!(
                    "the call's record did not reach the disk: {e}"
                )));
            }
        }
        Ok(())
    }
}

/// A response body read whole (bounded in size and by the inspection budget), with any
/// injected credential scrubbed from it.
pub(super) async fn read_held(
    conn: &Conn,
    body: UpstreamBody,
    scrub: Option<Arc<Secrets>>,
) -> Result<Bytes, Refusal> {
    let limits = &conn.inputs.cfg.http;
    let max = limits.max_held_response_bytes;
    match budget::collect(body, max, conn.inputs.inspection.hold(None)).await {
        Ok(b) => Ok(match scrub.as_ref().map(|s| s.scrub(&b)) {
            Some(std::borrow::Cow::Owned(clean)) => Bytes::from(clean),
            _ => b,
        }),
        Err(budget::Collect::TooLarge) => Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            "response_too_large",
            format!("an answer that must be inspected whole is larger than {max} bytes"),
        )),
        Err(budget::Collect::Busy) => Err(budget::Collect::busy()),
        Err(budget::Collect::Failed(e)) => Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            "upstream_failed",
            e.to_string(),
        )),
    }
}

/// A `tools/list` answer (JSON, or an event stream when `sse`) read as the answer path reads
/// it ([`McpMasker`](crate::obligations::mask::mcp::McpMasker), no masks), keeping the tools
/// `may` allows by name. For the fuzzer.
pub fn filter_tools(body: &[u8], sse: bool, may: fn(&str) -> bool) -> Vec<u8> {
    let rules = crate::obligations::mask::MaskRules::default();
    let mut masker = crate::obligations::mask::mcp::McpMasker::new(
        Arc::new(rules),
        crate::obligations::mask::MaskKey::from_bytes([0; 32]),
        sse,
        usize::MAX,
    );
    masker.set_tools(ToolFilter(Box::new(move |v: &mut Json| {
        filter_value(v, &|t| tool_name(t).is_some_and(may));
    })));
    let mut out = Vec::with_capacity(body.len());
    masker.push(body, &mut out);
    masker.finish(&mut out);
    out
}

fn tool_name(tool: &Json) -> Option<&str> {
    tool.get("name").and_then(Json::as_str)
}

/// The filter every `tools/list` result of an MCP answer passes through (see
/// [`crate::obligations::mask::mcp`]), for `caller`, against the snapshot the call was decided
/// on: the tools the caller may call, that pass their pins and poisoning checks. The tools it
/// hides go to `hidden` (a listing's record), or to the log.
pub(super) fn tool_filter(
    conn: &Conn,
    snap: Arc<Snapshot>,
    service: &Service,
    caller: Arc<Caller>,
    hidden: Option<Arc<std::sync::Mutex<Vec<Json>>>>,
) -> ToolFilter {
    let pins = conn.inputs.pins.clone();
    let name = service.name.clone();
    ToolFilter(Box::new(move |v: &mut Json| {
        let found = std::cell::RefCell::new(Vec::new());
        match snap.service(&name) {
            Some(service) => {
                filter_value(v, &|t| {
                    tool_name(t).is_some_and(|n| may_call(&snap, service, &caller, n))
                        && super::mcp_check::shown(&pins, service, t, &found)
                });
            }
            None => {
                filter_value(v, &|_| false);
            }
        }
        let found = found.into_inner();
        match &hidden {
            Some(sink) => sink.lock().unwrap_or_else(|p| p.into_inner()).extend(found),
            None if !found.is_empty() => {
                tracing::info!(service = %name, hidden = ?found, "tools hidden from a tools/list result in an MCP answer");
            }
            None => {}
        }
    }))
}

/// Whether `caller` may call the tool `name` of `service` with some arguments.
fn may_call(snap: &Snapshot, service: &Service, caller: &Caller, name: &str) -> bool {
    let function = service.surface.function_for(name);
    snap.may_call(service, &function, caller)
}

/// Drops disallowed tools from a parsed JSON-RPC result (an answer, one element of a batch's
/// answer); None if it is not such a result. The list that comes
/// out is this caller's, so a `cacheScope` other than `private` (the 2026-07-28 revision's
/// caching hint: `public` lets a client share the answer across authorization contexts)
/// becomes `private`; `ttlMs` and `nextCursor` are kept, each page being filtered on its own.
fn filter_value(v: &mut Json, may: &dyn Fn(&Json) -> bool) -> Option<()> {
    let result = v.get_mut("result")?;
    result.get_mut("tools")?.as_array_mut()?.retain(may);
    if let Some(scope) = result.get_mut("cacheScope")
        && scope.as_str() != Some("private")
    {
        *scope = Json::from("private");
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_delete(name: &str) -> bool {
        name != "delete_table"
    }

    #[test]
    fn tools_are_filtered_in_json_and_sse() {
        let json = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"search_docs"},{"name":"delete_table"}]}}"#;
        let out = String::from_utf8(filter_tools(json, false, no_delete)).expect("utf8");
        assert!(
            out.contains("search_docs") && !out.contains("delete_table"),
            "{out}"
        );
        // A batch, an event stream split over two `data` lines with CR line endings, and an
        // event stream whose data is not JSON.
        let batch = format!("[{}]", String::from_utf8_lossy(json));
        let out =
            String::from_utf8(filter_tools(batch.as_bytes(), false, no_delete)).expect("utf8");
        assert!(
            out.contains("search_docs") && !out.contains("delete_table"),
            "{out}"
        );
        let text = String::from_utf8_lossy(json);
        // Between two tokens: the LF that joins the lines is whitespace to JSON.
        let (a, b) = text.split_at(text.find("\"result\"").expect("result"));
        let sse = format!("event: message\rdata:{a}\rdata:{b}\r\r");
        let out = String::from_utf8(filter_tools(sse.as_bytes(), true, no_delete)).expect("utf8");
        assert!(out.starts_with("event: message\ndata: {"), "{out}");
        assert!(out.ends_with("}\n\n"), "{out:?}");
        assert!(
            out.contains("search_docs") && !out.contains("delete_table"),
            "{out}"
        );
        let out = filter_tools(
            b"data: {\"result\":{\"tools\":[{\"name\":\"delete_table\"}]},NaN\n\n",
            true,
            no_delete,
        );
        assert_eq!(out, b"data: \"[MASKED:unparsed]\"\n\n".to_vec());
    }

    #[test]
    fn a_filtered_list_is_private_to_its_caller_and_keeps_its_cursor() {
        let may = |t: &Json| tool_name(t) != Some("delete_table");
        let mut out: Json = serde_json::from_str(r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"delete_table"}],"nextCursor":"2","ttlMs":3600000,"cacheScope":"public","resultType":"complete"}}"#).expect("JSON");
        filter_value(&mut out, &may).expect("filtered");
        assert_eq!(
            out["result"],
            serde_json::json!({"tools": [], "nextCursor": "2", "ttlMs": 3600000,
                "cacheScope": "private", "resultType": "complete"})
        );
    }
}
