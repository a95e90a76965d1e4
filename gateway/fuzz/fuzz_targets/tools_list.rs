//! An MCP `tools/list` answer from an upstream, as JSON or as an event stream, filtered to
//! the tools a workload may call. Never a panic; and against an oracle that reads the input
//! itself: wherever the input carries a `result.tools` list (the whole body, or one `data:`
//! line of an event stream), the output carries exactly the tools that may be called, in
//! order, none other; everything else comes back byte for byte. That includes an answer the
//! filter hands back unchanged: it is checked like any other.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn may(name: &str) -> bool {
    !name.contains("delete")
}

/// The names of the tools in `json`'s `result.tools`, if it has such a list; a tool without
/// a string name is `None`.
fn tools(json: &[u8]) -> Option<Vec<Option<String>>> {
    let v: Value = serde_json::from_slice(json).ok()?;
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

/// One JSON document: filtered if it carries a tools list, else unchanged.
fn check_json(input: &[u8], output: &[u8]) {
    match tools(input) {
        Some(before) => {
            let after = tools(output).expect("a filtered tools list is still one");
            assert_eq!(after, allowed(before), "tools kept");
        }
        None => assert_eq!(output, input, "not a tools list: unchanged"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let sse = mode & 1 == 1;
    let out = callgate::proxy::http::filter_tools(body, sse, &may);
    if !sse {
        check_json(body, &out);
        return;
    }
    // An event stream: line for line, each `data:` line's JSON judged as above, every other
    // line unchanged.
    let lines_in: Vec<&[u8]> = body.split_inclusive(|&b| b == b'\n').collect();
    let lines_out: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines_in.len(), lines_out.len(), "one line out per line in");
    for (i, o) in lines_in.into_iter().zip(lines_out) {
        let Some(data) = i.strip_prefix(b"data:") else {
            assert_eq!(o, i, "not a data line: unchanged");
            continue;
        };
        let payload = data.trim_ascii();
        if tools(payload).is_none() {
            assert_eq!(o, i, "a data line without a tools list: unchanged");
            continue;
        }
        let filtered = o.strip_prefix(b"data:").expect("still a data line");
        check_json(payload, filtered.trim_ascii());
        // The line's end (CRLF or LF, and the spaces before it) is kept.
        let tail = |l: &[u8]| l.len() - l.trim_ascii_end().len();
        assert_eq!(&o[o.len() - tail(o)..], &i[i.len() - tail(i)..], "line end kept");
    }
});
