//! An MCP `tools/list` answer from an upstream, as JSON or as an event stream, filtered to
//! the tools a workload may call: never a panic, and a tool that may not be called never
//! survives in a JSON answer.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let may = |name: &str| !name.contains("delete");
    let out = callgate::http::filter_tools(body, mode & 1 == 1, &may);
    if mode & 1 == 0
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out)
        && let Some(tools) = v.pointer("/result/tools").and_then(|t| t.as_array())
        && out != body
    {
        assert!(tools.iter().all(|t| t["name"].as_str().is_some_and(may)));
    }
});
