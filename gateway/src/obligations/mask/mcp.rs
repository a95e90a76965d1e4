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
//! An event stream is read line by line: each `data:` line holding one JSON message is masked
//! as JSON and written back as one line; any other line, a `data:` line that is not JSON, or a
//! line longer than the limit is masked as text. A JSON answer is read whole, up to the limit.
//! With field paths to apply, a message longer than the limit is withheld instead
//! (`[MASKED:unparsed]`): detectors alone would let the fields through.
//!
//! Any MCP stream may carry any call's answer, a `tools/list` one included (a session's `GET`
//! stream resumed with `Last-Event-ID` replays answers; a server may answer one request on
//! another's stream): the masker is given the filter a listing passes through
//! ([`ToolFilter`]) and applies it to every message with a tool list in its result.
use std::sync::Arc;

use serde_json::Value as Json;

use super::{BodyKind, BodyMasker, MaskKey, MaskRules, MaskStats, TextMasker};

/// The masker for an MCP answer of `kind` with head `headers`: message by message when it is
/// an event stream or JSON, else as any other body. `max`: the most held of one message.
/// `tools`: what every `tools/list` result passes through.
pub fn masker(
    rules: Arc<MaskRules>,
    key: MaskKey,
    kind: BodyKind,
    headers: &http::HeaderMap,
    max: usize,
    tools: Option<ToolFilter>,
) -> BodyMasker {
    let events = kind != BodyKind::Binary && is_event_stream(headers);
    if events || kind == BodyKind::Json {
        let mut m = McpMasker::new(rules, key, events, max);
        m.tools = tools;
        BodyMasker::Mcp(Box::new(m))
    } else {
        BodyMasker::new(rules, key, kind)
    }
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
    /// An event stream (line by line) rather than one JSON document.
    events: bool,
    /// Bytes of the line (or document) not yet complete.
    held: Vec<u8>,
    /// The most held before falling back to text.
    max: usize,
    /// Masks what is not a JSON message, and an over-long line as it streams.
    text: TextMasker,
    /// The current line went over `max`: it streams through `text` to its end.
    overlong: bool,
    /// What went over `max` is withheld, not masked as text (there are field paths).
    withholding: bool,
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
            events,
            held: Vec::new(),
            max,
            overlong: false,
            withholding: false,
            tools: None,
            rpc_id: None,
            stats: MaskStats::default(),
            scanned: 0,
        }
    }

    /// Past `max` with field paths to apply: the rest of the message is withheld, said once
    /// (as a JSON string, `data:` line of one in an event stream).
    fn withhold(&mut self, data_line: bool, out: &mut Vec<u8>) {
        self.overlong = true;
        self.withholding = true;
        self.held.clear();
        self.stats.masked += 1;
        if data_line || !self.events {
            if self.events {
                out.extend_from_slice(b"data: ");
            }
            match &self.rpc_id {
                Some(id) => {
                    let error = serde_json::json!({
                        "jsonrpc": "2.0",
                        "id": id,
                        "error": {
                            "code": -32603,
                            "message": "callgate: the answer is longer than the gateway holds to apply the service's field masks, and is withheld ([MASKED:unparsed])",
                        },
                    });
                    out.extend_from_slice(&serde_json::to_vec(&error).unwrap_or_default());
                }
                None => out.extend_from_slice(b"\"[MASKED:unparsed]\""),
            }
        }
        tracing::debug!(
            "an MCP message longer than the limit is withheld: there are field paths to mask"
        );
    }

    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        if !self.events {
            if self.withholding {
                return;
            }
            if self.overlong {
                return self.text.push(chunk, out);
            }
            self.held.extend_from_slice(chunk);
            if self.held.len() > self.max {
                self.stats.json_fallback = true;
                if self.rules.has_fields() {
                    return self.withhold(false, out);
                }
                self.overlong = true;
                let held = std::mem::take(&mut self.held);
                self.text.push(&held, out);
            }
            return;
        }
        while !chunk.is_empty() {
            let (line, rest, complete) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..=i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            chunk = rest;
            if self.withholding {
                if complete {
                    out.push(b'\n');
                    self.withholding = false;
                    self.overlong = false;
                }
                continue;
            }
            if self.overlong {
                self.text.push(line, out);
                if complete {
                    self.end_text(out);
                }
                continue;
            }
            self.held.extend_from_slice(line);
            if complete {
                let line = std::mem::take(&mut self.held);
                self.line(&line, out);
            } else if self.held.len() > self.max {
                if self.rules.has_fields() {
                    let data = self.held.starts_with(b"data:");
                    self.withhold(data, out);
                    continue;
                }
                self.overlong = true;
                let held = std::mem::take(&mut self.held);
                self.text.push(&held, out);
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.withholding {
            return;
        }
        let held = std::mem::take(&mut self.held);
        if self.events {
            if !held.is_empty() {
                self.line(&held, out);
            }
        } else if !held.is_empty() {
            match serde_json::from_slice::<Json>(&held) {
                Ok(mut v) => {
                    self.message(&mut v);
                    out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                }
                Err(_) => {
                    self.stats.json_fallback = true;
                    self.text.push(&held, out);
                }
            }
        }
        self.end_text(out);
    }

    pub fn scanned(&self) -> u64 {
        self.scanned + self.text.scanned()
    }

    /// Releases what the text masker holds and starts it afresh (a line ended).
    fn end_text(&mut self, out: &mut Vec<u8>) {
        self.text.finish(out);
        self.stats.masked += self.text.stats.masked;
        self.scanned += self.text.scanned();
        self.text = TextMasker::json(self.rules.clone(), self.key.clone());
        self.overlong = false;
    }

    /// One whole line of an event stream.
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let body_end = line.len()
            - line
                .iter()
                .rev()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
        let (body, ending) = line.split_at(body_end);
        if let Some(data) = body.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if let Ok(mut v) = serde_json::from_slice::<Json>(data) {
                self.scanned += data.len() as u64;
                self.message(&mut v);
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&serde_json::to_vec(&v).unwrap_or_default());
                out.extend_from_slice(ending);
                return;
            }
        }
        self.text.push(line, out);
        self.end_text(out);
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
    /// levels down.
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
        assert!(out.starts_with("event: message\r\ndata: {"), "{out}");
        assert!(out.ends_with("}\r\n\r\n"), "{out}");
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
}
