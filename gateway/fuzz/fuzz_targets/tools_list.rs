//! An MCP `tools/list` answer from an upstream, as JSON or as an event stream, through the
//! answer path's MCP reader with only the tool-list filter. Never a panic; and against an
//! oracle: wherever the input carries a `result.tools` list (the whole body or a batch's
//! element; an event's data, its `data` lines joined as clients join them), the output
//! carries exactly the tools that may be called, in order, none other; a message that is not
//! JSON is withheld (a client must not read what the filter could not); any other message
//! comes back as the same JSON value.
#![no_main]
use callgate::util::sse::{Event, Events};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn may(name: &str) -> bool {
    !name.contains("delete")
}

/// The names of the tools in `v`'s `result.tools`, if it has such a list; a tool without a
/// string name is `None`.
fn tools(v: &Value) -> Option<Vec<Option<String>>> {
    let tools = v.get("result")?.get("tools")?.as_array()?;
    Some(
        tools
            .iter()
            .map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
            .collect(),
    )
}

/// What the filter must leave of a tools list: the tools with a name that may be called.
fn allowed(tools: Vec<Option<String>>) -> Vec<Option<String>> {
    tools.into_iter().filter(|n| n.as_deref().is_some_and(may)).collect()
}

/// One message (or a batch of them) in, one out.
fn check_value(input: &Value, output: &Value) {
    match (input, output) {
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "a batch keeps its elements");
            for (i, o) in a.iter().zip(b) {
                check_value(i, o);
            }
        }
        _ => match tools(input) {
            Some(before) => {
                let after = tools(output).expect("a filtered tools list is still one");
                assert_eq!(after, allowed(before), "tools kept");
            }
            None if input.get("result").and_then(|r| r.get("tools")).is_some() => {
                // `tools` that is not a list: left as it is.
                assert_eq!(output, input);
            }
            None => assert_eq!(output, input, "not a tools list: the same value"),
        },
    }
}

/// A document or an event's data: filtered when JSON, withheld when not.
fn check(input: &[u8], output: &[u8]) {
    match serde_json::from_slice::<Value>(input) {
        Ok(v) => {
            let out: Value = serde_json::from_slice(output).expect("JSON in, JSON out");
            check_value(&v, &out);
        }
        Err(_) => assert_eq!(output, b"\"[MASKED:unparsed]\"", "not JSON: withheld"),
    }
}

fn events(body: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut e = Events::default();
    e.push(body, |ev| out.push(ev));
    e.finish(|ev| out.push(ev));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let sse = mode & 1 == 1;
    let out = callgate::proxy::http::filter_tools(body, sse, may);
    if !sse {
        if !body.is_empty() {
            check(body, &out);
        }
        return;
    }
    // Event for event: each one with data judged as above, but for empty data (a resumption
    // prime) and the HTTP+SSE transport's `endpoint` event, which are no messages.
    let with_data = |evs: Vec<Event>| -> Vec<Event> { evs.into_iter().filter(|e| e.data.is_some()).collect() };
    let (ins, outs) = (with_data(events(body)), with_data(events(&out)));
    assert_eq!(ins.len(), outs.len(), "one message out per message in");
    for (i, o) in ins.iter().zip(&outs) {
        let (id, od) = (i.data.as_deref().unwrap_or_default(), o.data.as_deref().unwrap_or_default());
        if id.trim_ascii().is_empty() {
            assert!(od.is_empty(), "no message in, none out");
            continue;
        }
        let endpoint = i.fields.iter().any(|(n, v)| n == b"event" && v == b"endpoint");
        if endpoint && !id.contains(&b'\n') && serde_json::from_slice::<Value>(id).is_err() {
            continue;
        }
        check(id, od);
    }
});
