//! Masking an MCP answer message by message. A tool's result reaches the model twice: as
//! `structuredContent` (JSON) and as text in `content[]` (for structured output, the same JSON
//! as a string). Both are masked alike: detectors on every value (a card written as a number
//! becomes a string, so the message stays valid JSON), and field paths addressed to the tool's
//! result (`$.ssn`) applied to `structuredContent` and to JSON text in `content[].text`, as well
//! as to the message itself.
//!
//! A tool's result that is a list has the paths applied to each of its elements, and one the
//! SDKs wrap (FastMCP puts a result that is not an object in `structuredContent` as
//! `{"result": …}`, its text holding the bare value) to what is wrapped too.
//!
//! An event stream is read event by event as clients read it ([`crate::util::sse`]: CR, LF or
//! CRLF line endings, a message split over several `data` lines): each event's message is
//! masked as JSON and written back on one `data` line; its comments and `id`, `event` and
//! `retry` fields are masked as text. An event whose data is not a JSON message, or longer
//! than the limit, is withheld (`[MASKED:unparsed]`, or an error to the request the answer is
//! for): a client would read what the masks and the tool-list filter could not. A JSON answer
//! is read whole, up to the limit; past it, or not JSON, it is withheld as well when there
//! are field paths to apply or tool lists to filter, and masked as text otherwise.
//!
//! Any MCP stream may carry any call's answer, a `tools/list` one included (a session's `GET`
//! stream resumed with `Last-Event-ID` replays answers; a server may answer one request on
//! another's stream): the masker is given the filter a listing passes through
//! ([`ToolFilter`]) and applies it to every message with a tool list in its result.
use std::sync::Arc;

use serde_json::Value as Json;

use super::{BodyKind, BodyMasker, MaskKey, MaskRules, MaskStats, TextMasker};
use crate::util::sse::{Event, Events};

/// The masker for an MCP answer of `kind` with head `headers`: message by message when it is
/// an event stream or JSON, else as any other body. `max`: the most held of one message.
/// `tools`: what every `tools/list` result passes through. With it, the answer is read
/// message by message whatever its type says, as clients read it: JSON when the type says
/// JSON, else an event stream (the TypeScript client reads a `GET` stream as one whatever its
/// type, and takes a POST's answer for one when the type only contains the word).
pub fn masker(
    rules: Arc<MaskRules>,
    key: MaskKey,
    kind: BodyKind,
    headers: &http::HeaderMap,
    max: usize,
    tools: Option<ToolFilter>,
) -> BodyMasker {
    if tools.is_some() {
        let mut m = McpMasker::new(rules, key, !is_json_only(headers), max);
        m.tools = tools;
        return BodyMasker::Mcp(Box::new(m));
    }
    let events = kind != BodyKind::Binary && is_event_stream(headers);
    if events || kind == BodyKind::Json {
        BodyMasker::Mcp(Box::new(McpMasker::new(rules, key, events, max)))
    } else {
        BodyMasker::new(rules, key, kind)
    }
}

/// Whether an answer's type says JSON and not an event stream (as the clients test it: the
/// words anywhere in the value, any case).
pub fn is_json_only(h: &http::HeaderMap) -> bool {
    let ct = h
        .get(http::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .unwrap_or_default();
    ct.contains("json") && !ct.contains("event-stream")
}

/// Keeps, of a `tools/list` result's `tools`, those the caller may see (the proxy's own
/// listing filter, pins and poisoning checks included).
pub struct ToolFilter(pub Box<dyn FnMut(&mut Json) + Send>);

impl std::fmt::Debug for ToolFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ToolFilter")
    }
}

/// Whether an answer is an event stream (`text/event-stream`).
pub fn is_event_stream(h: &http::HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// Streams an MCP answer through the masks one message at a time.
#[derive(Debug)]
pub struct McpMasker {
    rules: Arc<MaskRules>,
    key: MaskKey,
    /// An event stream, read event by event ([`crate::util::sse`]); None: one JSON document.
    events: Option<Events>,
    /// The JSON document so far.
    held: Vec<u8>,
    /// The most held of one message (an event, or the document).
    max: usize,
    /// Masks a document that is not JSON, or past `max`, when nothing needs it parsed.
    text: TextMasker,
    /// The document went over `max`: it streams through `text` to its end, or is withheld.
    overlong: bool,
    /// The document was withheld: nothing more of it is written.
    withheld: bool,
    /// What every message with a `tools/list` result passes through first.
    tools: Option<ToolFilter>,
    /// The id of the request this answers, if one: what is withheld is then answered as an
    /// error to it, which a client reports at once instead of waiting for its answer.
    pub rpc_id: Option<Json>,
    pub stats: MaskStats,
    scanned: u64,
}

impl McpMasker {
    pub fn new(rules: Arc<MaskRules>, key: MaskKey, events: bool, max: usize) -> Self {
        Self {
            text: TextMasker::json(rules.clone(), key.clone()),
            rules,
            key,
            events: events.then(Events::default),
            held: Vec::new(),
            max,
            overlong: false,
            withheld: false,
            tools: None,
            rpc_id: None,
            stats: MaskStats::default(),
            scanned: 0,
        }
    }

    /// Gives every message with a `tools/list` result to `filter` first.
    pub fn set_tools(&mut self, filter: ToolFilter) {
        self.tools = Some(filter);
    }

    /// A message that cannot be read must not pass: field paths to apply, or tool lists to
    /// filter, need it parsed.
    fn strict(&self) -> bool {
        self.rules.has_fields() || self.tools.is_some()
    }

    /// What stands for a withheld message: an error to the request it answers, when there is
    /// one, else `"[MASKED:unparsed]"`.
    fn withheld_message(&mut self, why: &str) -> Vec<u8> {
        self.stats.masked += 1;
        self.stats.json_fallback = true;
        tracing::debug!(why, "an MCP message is withheld");
        // The request is answered once; anything further withheld is a plain marker.
        match self.rpc_id.take() {
            Some(id) => serde_json::to_vec(&serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {
                    "code": -32603,
                    "message": format!("callgate: the answer {why}, and is withheld ([MASKED:unparsed])"),
                },
            }))
            .unwrap_or_default(),
            None => b"\"[MASKED:unparsed]\"".to_vec(),
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if let Some(mut events) = self.events.take() {
            let mut done = Vec::new();
            events.push(chunk, |e| done.push(e));
            for e in done {
                self.event(e, out);
            }
            if events.held() > self.max {
                // The rest of this event is skipped; what stands for it ends it.
                events.skip_event();
                out.extend_from_slice(b"data: ");
                let w = self.withheld_message("is longer than the gateway holds to read it");
                out.extend_from_slice(&w);
                out.extend_from_slice(b"\n\n");
            }
            self.events = Some(events);
            return;
        }
        if self.withheld {
            return;
        }
        if self.overlong {
            return self.text.push(chunk, out);
        }
        self.held.extend_from_slice(chunk);
        if self.held.len() > self.max {
            self.stats.json_fallback = true;
            if self.strict() {
                self.withheld = true;
                self.held = Vec::new();
                let w = self.withheld_message("is longer than the gateway holds to read it");
                out.extend_from_slice(&w);
                return;
            }
            self.overlong = true;
            let held = std::mem::take(&mut self.held);
            self.text.push(&held, out);
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(mut events) = self.events.take() {
            let mut done = Vec::new();
            events.finish(|e| done.push(e));
            for e in done {
                self.event(e, out);
            }
            self.events = Some(events);
            return;
        }
        if self.withheld {
            return;
        }
        let held = std::mem::take(&mut self.held);
        if !held.is_empty() {
            match serde_json::from_slice::<Json>(&held) {
                Ok(mut v) => {
                    self.scanned += held.len() as u64;
                    self.message(&mut v);
                    out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                }
                Err(_) if self.strict() => {
                    let w = self.withheld_message("is not JSON the gateway can read");
                    out.extend_from_slice(&w);
                }
                Err(_) => {
                    self.stats.json_fallback = true;
                    self.text.push(&held, out);
                }
            }
        }
        self.text.finish(out);
        self.stats.masked += self.text.stats.masked;
    }

    pub fn scanned(&self) -> u64 {
        self.scanned + self.text.scanned()
    }

    /// `bytes` masked as text (detectors), on their own.
    fn masked_text(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut text = TextMasker::json(self.rules.clone(), self.key.clone());
        let mut out = Vec::with_capacity(bytes.len());
        text.push(bytes, &mut out);
        text.finish(&mut out);
        self.stats.masked += text.stats.masked;
        self.scanned += text.scanned();
        out
    }

    /// One event, written back with LF line endings: its comments and `id`, `event` and
    /// `retry` fields masked as text (fields no client reads are left out), its data as one
    /// `data` line holding the message, masked, or what stands for a message that is not one.
    fn event(&mut self, e: Event, out: &mut Vec<u8>) {
        for comment in &e.comments {
            out.push(b':');
            let masked = self.masked_text(comment);
            out.extend_from_slice(&masked);
            out.push(b'\n');
        }
        for (name, value) in &e.fields {
            if !matches!(name.as_slice(), b"id" | b"event" | b"retry") {
                continue;
            }
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            let masked = self.masked_text(value);
            out.extend_from_slice(&masked);
            out.push(b'\n');
        }
        if let Some(data) = &e.data {
            out.extend_from_slice(b"data: ");
            match serde_json::from_slice::<Json>(data) {
                // An event with empty data primes a client to resume (the 2025-11-25
                // revision): no message, nothing to read.
                _ if data.trim_ascii().is_empty() => {}
                // The HTTP+SSE transport's first event: where to post, which clients read
                // as a URL, never as a message (its last `event` field says so, and its data
                // does not look like a message a lenient parser might take).
                Err(_)
                    if !data.contains(&b'\n')
                        && !matches!(data.trim_ascii().first(), Some(b'{' | b'['))
                        && e.fields
                            .iter()
                            .rev()
                            .find(|(n, _)| n == b"event")
                            .is_some_and(|(_, v)| v == b"endpoint") =>
                {
                    let masked = self.masked_text(data);
                    out.extend_from_slice(&masked);
                }
                Ok(mut v) => {
                    self.scanned += data.len() as u64;
                    self.message(&mut v);
                    out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                }
                Err(_) => {
                    let w = self.withheld_message("is not a JSON message the gateway can read");
                    out.extend_from_slice(&w);
                }
            }
            out.push(b'\n');
        }
        out.push(b'\n');
    }

    /// One JSON-RPC message (or a batch of them).
    fn message(&mut self, v: &mut Json) {
        if let Json::Array(items) = v {
            for item in items {
                self.message(item);
            }
            return;
        }
        if let Some(f) = &mut self.tools
            && v.get("result").is_some_and(|r| r.get("tools").is_some())
        {
            (f.0)(v);
        }
        let mut n = 0;
        if let Some(result) = v.get_mut("result") {
            if let Some(s) = result.get_mut("structuredContent") {
                n += self.mask_result(s, 2);
            }
            if let Some(items) = result.get_mut("content").and_then(Json::as_array_mut) {
                for item in items {
                    let Some(Json::String(text)) = item.get_mut("text") else {
                        continue;
                    };
                    if let Ok(mut inner) = serde_json::from_str::<Json>(text) {
                        if inner.is_object() || inner.is_array() {
                            let m = self.mask_result(&mut inner, 2);
                            if m > 0 {
                                n += m;
                                *text = serde_json::to_string_pretty(&inner).unwrap_or_default();
                            }
                        }
                    }
                }
            }
        }
        n += self.rules.mask_value(&self.key, v);
        self.stats.masked += n as u64;
    }

    /// A tool's result: masked as a whole, then, with field paths to apply (addressed to the
    /// result), each element of a list and what a `{"result": …}` wrapper holds, `depth`
    /// levels down. A value two of these reach (`$..ssn`, or `$.ssn` from the list and from
    /// its element) is masked once: [`MaskRules::mask_value`] leaves its own masks as they are.
    fn mask_result(&self, v: &mut Json, depth: u8) -> usize {
        let mut n = self.rules.mask_value(&self.key, v);
        if depth == 0 || !self.rules.has_fields() {
            return n;
        }
        match v {
            Json::Array(items) => {
                for item in items {
                    n += self.mask_result(item, depth - 1);
                }
            }
            Json::Object(map) if map.len() == 1 => {
                if let Some(inner) = map.get_mut("result") {
                    n += self.mask_result(inner, depth - 1);
                }
            }
            _ => {}
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obligations::mask::MaskSpec;

    fn masker(events: bool) -> McpMasker {
        let specs: Vec<MaskSpec> =
            yaml_serde::from_str("[card_number, email, { field: \"$.ssn\" }]").expect("specs");
        let rules = Arc::new(MaskRules::compile(&specs).expect("rules"));
        McpMasker::new(rules, MaskKey::from_bytes([7; 32]), events, 1 << 20)
    }

    /// A message too long to hold, or not JSON, is masked as text: escapes still hide nothing
    /// (`\n` before a card, a card written with `\u` escapes), and no replacement cuts one.
    #[test]
    fn text_fallbacks_read_escapes_as_what_they_stand_for() {
        let specs: Vec<MaskSpec> = yaml_serde::from_str("[card_number, email]").expect("specs");
        let rules = Arc::new(MaskRules::compile(&specs).expect("rules"));
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"a\n4111111111111111 b\u00224012888888881881\u0022 \u0035555555555554444 x\njane@example.com"}]}}"#;
        for (events, max) in [(false, 16), (true, 16), (false, 1 << 20)] {
            let body = if events {
                format!("event: message\r\ndata: {text}\r\n\r\n")
            } else if max == 16 {
                text.to_string()
            } else {
                // Not JSON at all: masked as text at the end.
                format!("{text}]]")
            };
            let mut m = McpMasker::new(rules.clone(), MaskKey::from_bytes([7; 32]), events, max);
            let mut out = Vec::new();
            for piece in body.as_bytes().chunks(5) {
                m.push(piece, &mut out);
            }
            m.finish(&mut out);
            let out = String::from_utf8(out).expect("utf8");
            for value in [
                "4111111111111111",
                "4012888888881881",
                "5555555555554444",
                "jane@",
            ] {
                assert!(!out.contains(value), "{events} {max}: {value} in {out}");
            }
            assert!(!out.contains("\\["), "a replacement cut an escape: {out}");
        }
    }

    #[test]
    fn structured_content_and_its_text_are_masked_alike_and_stay_json() {
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": 3, "result": {
            "content": [{"type": "text", "text": "{\n  \"ssn\": \"078-05-1120\",\n  \"card\": 4111111111111111,\n  \"tier\": \"gold\"\n}"}],
            "structuredContent": {"ssn": "078-05-1120", "card": 4111111111111111_u64, "mail": "jane.doe@example.com", "tier": "gold"},
        }});
        let sse = format!("event: message\r\ndata: {msg}\r\n\r\n");
        let mut m = masker(true);
        let mut out = Vec::new();
        // In small pieces, as a stream comes.
        for piece in sse.as_bytes().chunks(7) {
            m.push(piece, &mut out);
        }
        m.finish(&mut out);
        let out = String::from_utf8(out).expect("utf8");
        // Written back with LF line endings, the message on one `data` line.
        assert!(out.starts_with("event: message\ndata: {"), "{out}");
        assert!(out.ends_with("}\n\n"), "{out}");
        let data = out
            .lines()
            .nth(1)
            .and_then(|l| l.strip_prefix("data: "))
            .expect("data");
        let v: Json = serde_json::from_str(data).expect("still JSON");
        let s = &v["result"]["structuredContent"];
        assert_eq!(s["tier"], "gold");
        for leaked in ["078-05-1120", "4111111111111111", "jane.doe@example.com"] {
            assert!(!out.contains(leaked), "{leaked}: {out}");
        }
        let text: Json =
            serde_json::from_str(v["result"]["content"][0]["text"].as_str().expect("text"))
                .expect("text still JSON");
        assert_eq!(text["tier"], "gold");
        // A JSON answer, whole.
        let mut m = masker(false);
        let out = {
            let mut out = Vec::new();
            m.push(msg.to_string().as_bytes(), &mut out);
            m.finish(&mut out);
            String::from_utf8(out).expect("utf8")
        };
        assert!(
            !out.contains("078-05-1120") && !out.contains("4111111111111111"),
            "{out}"
        );
        serde_json::from_str::<Json>(&out).expect("still JSON");
    }

    #[test]
    fn field_paths_reach_wrapped_results_and_list_elements() {
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": 4, "result": {
            "content": [{"type": "text", "text": "[{\"ssn\": \"078-05-1120\", \"tier\": \"gold\"}]"}],
            "structuredContent": {"result": [{"ssn": "078-05-1120", "tier": "gold"}]},
        }});
        let mut m = masker(false);
        let mut out = Vec::new();
        m.push(msg.to_string().as_bytes(), &mut out);
        m.finish(&mut out);
        let out = String::from_utf8(out).expect("utf8");
        assert!(!out.contains("078-05-1120"), "{out}");
        assert!(out.contains("gold"), "{out}");
        let one = serde_json::json!({"result": {"structuredContent": {"result": {"ssn": "078-05-1120"}}}});
        let mut m = masker(false);
        let mut out = Vec::new();
        m.push(one.to_string().as_bytes(), &mut out);
        m.finish(&mut out);
        assert!(!String::from_utf8_lossy(&out).contains("078-05-1120"));
    }

    /// An element of a list is masked once: a `hash` style gives it the hash a single result
    /// with the same value gets, not the hash of its mask.
    #[test]
    fn list_elements_are_masked_once() {
        let specs: Vec<MaskSpec> =
            yaml_serde::from_str("[{ field: \"$.ssn\", style: hash }]").expect("specs");
        let rules = Arc::new(MaskRules::compile(&specs).expect("rules"));
        let masked = |structured: Json| {
            let msg = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"structuredContent": structured}});
            let mut m = McpMasker::new(rules.clone(), MaskKey::from_bytes([7; 32]), false, 4096);
            let mut out = Vec::new();
            m.push(msg.to_string().as_bytes(), &mut out);
            m.finish(&mut out);
            let v: Json = serde_json::from_slice(&out).expect("JSON");
            v["result"]["structuredContent"].clone()
        };
        let one = masked(serde_json::json!({"ssn": "078-05-1120"}));
        let list = masked(serde_json::json!([{"ssn": "078-05-1120"}, [{"ssn": "078-05-1120"}]]));
        let wrapped = masked(serde_json::json!({"result": [{"ssn": "078-05-1120"}]}));
        assert!(
            one["ssn"]
                .as_str()
                .is_some_and(|s| s.starts_with("[MASKED:field:")),
            "{one}"
        );
        assert_eq!(list[0]["ssn"], one["ssn"], "{list}");
        assert_eq!(list[1][0]["ssn"], one["ssn"], "{list}");
        assert_eq!(wrapped["result"][0]["ssn"], one["ssn"], "{wrapped}");
        // A path that begins with a wildcard still reaches into each element.
        let specs: Vec<MaskSpec> =
            yaml_serde::from_str("[{ field: \"$.*.ssn\" }, { field: \"$..pin\", style: hash }]")
                .expect("specs");
        let rules = Arc::new(MaskRules::compile(&specs).expect("rules"));
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"structuredContent":
            [{"holder": {"ssn": "078-05-1120", "pin": "1234"}}]}});
        let mut m = McpMasker::new(rules, MaskKey::from_bytes([7; 32]), false, 4096);
        let mut out = Vec::new();
        m.push(msg.to_string().as_bytes(), &mut out);
        m.finish(&mut out);
        let v: Json = serde_json::from_slice(&out).expect("JSON");
        let holder = &v["result"]["structuredContent"][0]["holder"];
        assert_eq!(holder["ssn"], "[MASKED:field]", "{v}");
        let pin = holder["pin"].as_str().expect("masked pin");
        assert!(pin.starts_with("[MASKED:field:") && pin.len() == 31, "{v}");
    }

    #[test]
    fn too_long_with_field_paths_is_withheld_as_an_error_to_its_request() {
        let specs: Vec<MaskSpec> = yaml_serde::from_str("[{ field: \"$.ssn\" }]").expect("specs");
        let rules = Arc::new(MaskRules::compile(&specs).expect("rules"));
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":9,"result":{{"structuredContent":{{"ssn":"078-05-1120","pad":"{}"}}}}}}"#,
            "x".repeat(200)
        );
        for events in [false, true] {
            let body = if events {
                format!(
                    "event: message\ndata: {long}\n\nevent: message\ndata: {{\"id\":10,\"result\":{{}}}}\n\n"
                )
            } else {
                long.clone()
            };
            let mut m = McpMasker::new(rules.clone(), MaskKey::from_bytes([7; 32]), events, 64);
            m.rpc_id = Some(Json::from(9));
            let mut out = Vec::new();
            for piece in body.as_bytes().chunks(9) {
                m.push(piece, &mut out);
            }
            m.finish(&mut out);
            let out = String::from_utf8(out).expect("utf8");
            assert!(!out.contains("078-05-1120"), "{events}: {out}");
            assert!(
                out.contains("\"id\":9") && out.contains("withheld"),
                "{events}: {out}"
            );
            if events {
                // The next message comes through.
                assert!(out.contains("\"id\":10"), "{out}");
            }
        }
    }

    #[test]
    fn every_tool_list_passes_the_filter() {
        let mut m = masker(true);
        m.tools = Some(ToolFilter(Box::new(|v: &mut Json| {
            if let Some(tools) = v["result"]["tools"].as_array_mut() {
                tools.retain(|t| t["name"] != "delete_table");
            }
        })));
        let list = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"search"},{"name":"delete_table"}]}}"#;
        let mut out = Vec::new();
        m.push(format!("id: 1\ndata: {list}\n\n").as_bytes(), &mut out);
        m.finish(&mut out);
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            out.contains("search") && !out.contains("delete_table"),
            "{out}"
        );
    }

    #[test]
    fn events_without_a_message_pass_as_clients_read_them() {
        let mut m = masker(true);
        m.set_tools(ToolFilter(Box::new(|_| {})));
        m.rpc_id = Some(Json::from(5));
        let mut out = Vec::new();
        m.push(
            b"id: a1\r\ndata:\r\n\r\nevent: endpoint\ndata: /messages/?session_id=7\n\n: ping\n\ndata: not json\n\n",
            &mut out,
        );
        m.finish(&mut out);
        let out = String::from_utf8(out).expect("utf8");
        assert!(
            out.starts_with("id: a1\ndata: \n\n"),
            "the priming event: {out}"
        );
        assert!(
            out.contains("event: endpoint\ndata: /messages/?session_id=7\n\n"),
            "{out}"
        );
        assert!(out.contains(": ping\n\n"), "a comment: {out}");
        assert!(
            out.contains("data: {") && out.contains("\"id\":5") && out.contains("withheld"),
            "data that is not JSON is withheld as an error to the request: {out}"
        );
        assert!(!out.contains("not json"), "{out}");
        // Read as a message by its last `event` field, or looking like one: not an endpoint.
        let mut m = masker(true);
        m.set_tools(ToolFilter(Box::new(|_| {})));
        let mut out = Vec::new();
        m.push(
            b"event: endpoint\nevent: message\ndata: /x\n\nevent: endpoint\ndata: {\"result\":{\"tools\":[]},\"x\":\"\\ud800\"\n\n",
            &mut out,
        );
        m.finish(&mut out);
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(out.matches("[MASKED:unparsed]").count(), 2, "{out}");
    }
}
