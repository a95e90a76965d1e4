//! The 2026-07-28 transport's standard headers must say what the body says. Clients mirror the
//! JSON-RPC `method` into `Mcp-Method`, the tool or prompt name (`params.name`) or resource URI
//! (`params.uri`) into `Mcp-Name`, chosen tool arguments into `Mcp-Param-*`, and the protocol
//! version into `MCP-Protocol-Version`, so that servers and proxies can route without reading
//! the body. The gateway decides on the body; a server that routes by header must never run
//! something else, so a request whose headers disagree with its body is refused (HTTP 400 with
//! the spec's JSON-RPC error -32020, `HeaderMismatch`).
//!
//! Values that are not plain visible ASCII arrive as `=?base64?…?=` (standard alphabet, UTF-8)
//! and are decoded before comparing. A header given twice, a value that cannot be decoded, or
//! an `Mcp-Param-*` header that names no argument of the call with that value is a mismatch.
use base64::Engine;
use http::HeaderMap;
use serde_json::Value as Json;

use super::Call;

/// The spec's JSON-RPC error code for headers that disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;

const MCP_METHOD: &str = "mcp-method";
const MCP_NAME: &str = "mcp-name";
const MCP_PARAM: &str = "mcp-param-";
const PROTOCOL_VERSION: &str = "mcp-protocol-version";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// Why a request's headers disagree with its body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Mismatch(String);

/// Checks the standard headers of an MCP request against the messages of its body (each
/// message of a batch must agree with them).
pub fn agree(headers: &HeaderMap, calls: &[Call]) -> Result<(), Mismatch> {
    let method = one(headers, MCP_METHOD)?;
    let name = one(headers, MCP_NAME)?;
    let version = one(headers, PROTOCOL_VERSION)?;
    let mut params = Vec::new();
    for key in headers.keys() {
        if let Some(arg) = key.as_str().strip_prefix(MCP_PARAM) {
            params.push((
                arg.to_string(),
                one(headers, key.as_str())?.unwrap_or_default(),
            ));
        }
    }
    if method.is_none() && name.is_none() && version.is_none() && params.is_empty() {
        return Ok(());
    }
    for call in calls {
        let Some(message) = &call.message else {
            continue;
        };
        let body_method = message.get("method").and_then(Json::as_str);
        let p = message.get("params");
        if let Some(m) = &method {
            if body_method != Some(m.as_str()) {
                return Err(Mismatch(format!(
                    "Mcp-Method says {m:?}, the body's method is {}",
                    shown(body_method)
                )));
            }
        }
        if let Some(n) = &name {
            let key = match body_method {
                Some("tools/call" | "prompts/get") => "name",
                Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => "uri",
                _ => {
                    return Err(Mismatch(format!(
                        "Mcp-Name is given for {}, which names nothing",
                        shown(body_method)
                    )));
                }
            };
            let body_name = p.and_then(|p| p.get(key)).and_then(Json::as_str);
            if body_name != Some(n.as_str()) {
                return Err(Mismatch(format!(
                    "Mcp-Name says {n:?}, the body's params.{key} is {}",
                    shown(body_name)
                )));
            }
        }
        if let Some(v) = &version {
            let body_version = p
                .and_then(|p| p.get("_meta"))
                .and_then(|m| m.get(META_VERSION))
                .and_then(Json::as_str);
            if body_version.is_some_and(|b| b != v) {
                return Err(Mismatch(format!(
                    "MCP-Protocol-Version says {v:?}, the body's _meta says {}",
                    shown(body_version)
                )));
            }
        }
        for (arg, value) in &params {
            let args = p.and_then(|p| p.get("arguments")).and_then(Json::as_object);
            let found = args.and_then(|a| {
                a.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(arg))
                    .map(|(_, v)| v)
            });
            let same = match found {
                Some(Json::String(s)) => s == value,
                Some(Json::Number(n)) => *value == n.to_string(),
                Some(Json::Bool(b)) => value == if *b { "true" } else { "false" },
                _ => false,
            };
            if !same {
                return Err(Mismatch(format!(
                    "Mcp-Param-{arg} says {value:?}, which is not the call's argument {arg:?}"
                )));
            }
        }
    }
    Ok(())
}

fn shown(v: Option<&str>) -> String {
    v.map_or_else(|| "missing".into(), |v| format!("{v:?}"))
}

/// The decoded value of header `name`, if given; given twice, or not decodable, a mismatch.
fn one(headers: &HeaderMap, name: &str) -> Result<Option<String>, Mismatch> {
    let mut all = headers.get_all(name).iter();
    let (Some(v), None) = (all.next(), all.next()) else {
        return match headers.contains_key(name) {
            true => Err(Mismatch(format!("{name} is given more than once"))),
            false => Ok(None),
        };
    };
    let bad = || Mismatch(format!("{name} is not a valid header value"));
    let text = v.to_str().map_err(|_| bad())?;
    if !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(bad());
    }
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| bad())?;
            String::from_utf8(bytes).map(Some).map_err(|_| bad())
        }
        None => Ok(Some(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(message: Json) -> Call {
        Call {
            function: String::new(),
            args: Json::Null,
            role: super::super::Role::Governed,
            rpc_id: None,
            message: Some(message),
            partial: false,
        }
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().expect("value"));
        }
        m
    }

    #[test]
    fn headers_must_say_what_the_body_says() {
        let c = [call(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs", "arguments": {"q": "x", "n": 3}}}),
        )];
        assert_eq!(agree(&h(&[]), &c), Ok(()));
        let ok = [("mcp-method", "tools/call"), ("mcp-name", "search_docs")];
        assert_eq!(agree(&h(&ok), &c), Ok(()));
        assert_eq!(
            agree(
                &h(&[
                    ("mcp-name", "=?base64?c2VhcmNoX2RvY3M=?="),
                    ("mcp-param-n", "3")
                ]),
                &c
            ),
            Ok(())
        );
        for bad in [
            vec![("mcp-method", "tools/list")],
            vec![("mcp-name", "delete_table")],
            vec![("mcp-name", "=?base64?ZGVsZXRlX3RhYmxl?=")],
            vec![("mcp-name", "=?base64?!!?=")],
            vec![("mcp-name", "search_docs"), ("mcp-name", "search_docs")],
            vec![("mcp-param-q", "y")],
            vec![("mcp-param-table", "users")],
        ] {
            assert!(agree(&h(&bad), &c).is_err(), "{bad:?}");
        }
        // A name for a method that names nothing.
        let list = [call(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        )];
        assert!(agree(&h(&[("mcp-name", "x")]), &list).is_err());
        assert_eq!(agree(&h(&[("mcp-method", "tools/list")]), &list), Ok(()));
        // A batch: every element must agree.
        let batch = [c[0].clone(), list[0].clone()];
        assert!(agree(&h(&[("mcp-method", "tools/call")]), &batch).is_err());
    }
}
