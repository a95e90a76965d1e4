//! The extract stage: adapters that turn an HTTP request into the calls policy decides —
//! REST (route templates from the policy), JSON-RPC 2.0 (single and batch), MCP over streamable
//! HTTP (`tools/call`, `resources/read`, `prompts/get`), gRPC (`/pkg.Service/Method`), and any
//! other HTTP request as `METHOD /path`.
use http::{HeaderMap, Method, Uri, request::Parts};
use serde_json::{Map, Value as Json};

use crate::policy::Service;

/// How a call is recognised, and how a denial must be worded to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rest,
    JsonRpc,
    Mcp,
    Grpc,
    Http,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rest => "rest",
            Kind::JsonRpc => "jsonrpc",
            Kind::Mcp => "mcp",
            Kind::Grpc => "grpc",
            Kind::Http => "http",
        }
    }

    /// Whether the request body must be read before deciding.
    pub fn needs_body(self, parts: &Parts) -> bool {
        match self {
            Kind::JsonRpc | Kind::Mcp => parts.method == Method::POST,
            Kind::Rest => is_json(&parts.headers),
            Kind::Grpc | Kind::Http => false,
        }
    }
}

/// The kind of a request to `service`: its declared protocol, except that gRPC is recognised
/// by content type wherever it appears.
pub fn kind_of(service: &Service, headers: &HeaderMap) -> Kind {
    if headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
    {
        return Kind::Grpc;
    }
    use crate::policy::schema::Protocol as P;
    match service.protocol {
        P::Rest => Kind::Rest,
        P::Jsonrpc => Kind::JsonRpc,
        P::Mcp => Kind::Mcp,
        P::Grpc => Kind::Grpc,
        P::Http => Kind::Http,
    }
}

/// What one call needs for its decision and its reply.
#[derive(Debug, Clone)]
pub struct OneCall {
    pub function: String,
    pub args: Json,
    /// How policy treats it.
    pub role: Role,
    /// The JSON-RPC id (None for a notification, or for non-RPC calls).
    pub rpc_id: Option<Json>,
    /// The JSON-RPC message as sent, to forward the allowed part of a batch.
    pub message: Option<Json>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Decided by policy.
    Governed,
    /// Protocol housekeeping (MCP `initialize`, `ping`, notifications, responses, lists):
    /// allowed, recorded.
    Session,
    /// MCP `tools/list`: allowed, and the answer is filtered to the tools the caller may call.
    ListTools,
}

/// The calls in one request.
#[derive(Debug)]
pub struct Extracted {
    pub kind: Kind,
    pub calls: Vec<OneCall>,
    /// A JSON-RPC batch (the reply must be an array).
    pub batch: bool,
}

/// Why a request cannot be turned into calls; answered without contacting the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON-RPC 2.0 request: {0}")]
    NotRpc(&'static str),
}

pub fn extract(
    kind: Kind,
    service: &Service,
    parts: &Parts,
    body: Option<&[u8]>,
) -> Result<Extracted, ExtractError> {
    let one = |call| Extracted {
        kind,
        calls: vec![call],
        batch: false,
    };
    match kind {
        Kind::Grpc => Ok(one(grpc(service, parts))),
        Kind::Rest => rest(service, parts, body).map(one),
        Kind::Http => Ok(one(raw(parts))),
        Kind::JsonRpc | Kind::Mcp => match body {
            Some(body) if parts.method == Method::POST => rpc(kind, service, body),
            // MCP's GET (server-sent events) and DELETE (end of session) carry no call.
            _ if kind == Kind::Mcp => Ok(one(OneCall {
                role: Role::Session,
                ..raw(parts)
            })),
            _ => Ok(one(raw(parts))),
        },
    }
}

fn governed(function: String, args: Json) -> OneCall {
    OneCall {
        function,
        args,
        role: Role::Governed,
        rpc_id: None,
        message: None,
    }
}

/// `METHOD /path`, args = the query.
pub fn raw(parts: &Parts) -> OneCall {
    governed(
        format!("{} {}", parts.method, parts.uri.path()),
        Json::Object(query(&parts.uri)),
    )
}

fn grpc(service: &Service, parts: &Parts) -> OneCall {
    let path = parts.uri.path();
    let function = service
        .function_by_method(path)
        .map_or_else(|| path.to_string(), |f| f.name.to_string());
    // Caller metadata is what policy can see of a gRPC call: the message is protobuf.
    // Credentials are not arguments: they would be recorded with the call.
    let injected = service.credential_header();
    let mut metadata = Map::new();
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if n.ends_with("-bin")
            || n.starts_with("grpc-")
            || crate::mask::is_credential_name(n)
            || injected.is_some_and(|h| h.eq_ignore_ascii_case(n))
        {
            continue;
        }
        if let Ok(v) = value.to_str() {
            metadata.insert(n.to_string(), Json::String(v.to_string()));
        }
    }
    let mut args = Map::new();
    args.insert("metadata".into(), Json::Object(metadata));
    governed(function, Json::Object(args))
}

/// Route template match: args = path parameters, then query, then the JSON body's fields.
fn rest(service: &Service, parts: &Parts, body: Option<&[u8]>) -> Result<OneCall, ExtractError> {
    let method = parts.method.as_str();
    let path = parts.uri.path();
    let Some((f, params)) = service.route(method, path) else {
        let mut call = raw(parts);
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            merge_body(&mut call.args, parse(b)?);
        }
        return Ok(call);
    };
    let mut args = Map::new();
    for (k, v) in params {
        let v = percent_encoding::percent_decode_str(&v).decode_utf8_lossy();
        args.insert(k, Json::String(v.into_owned()));
    }
    for (k, v) in query(&parts.uri) {
        args.entry(k).or_insert(v);
    }
    let mut args = Json::Object(args);
    if let Some(b) = body.filter(|b| !b.is_empty()) {
        merge_body(&mut args, parse(b)?);
    }
    Ok(governed(f.name.to_string(), args))
}

/// Body fields join the arguments without overriding path parameters (which name the
/// resource); a body that is not an object is `args.body`.
fn merge_body(args: &mut Json, body: Json) {
    let Json::Object(args) = args else { return };
    match body {
        Json::Object(fields) => {
            for (k, v) in fields {
                args.entry(k).or_insert(v);
            }
        }
        other => {
            args.insert("body".into(), other);
        }
    }
}

fn query(uri: &Uri) -> Map<String, Json> {
    let mut m = Map::new();
    if let Some(q) = uri.query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            m.entry(k.into_owned())
                .or_insert(Json::String(v.into_owned()));
        }
    }
    m
}

fn parse(body: &[u8]) -> Result<Json, ExtractError> {
    serde_json::from_slice(body).map_err(|e| ExtractError::NotJson(e.to_string()))
}

fn rpc(kind: Kind, service: &Service, body: &[u8]) -> Result<Extracted, ExtractError> {
    let (messages, batch) = match parse(body)? {
        Json::Array(a) if a.is_empty() => return Err(ExtractError::NotRpc("empty batch")),
        Json::Array(a) => (a, true),
        m @ Json::Object(_) => (vec![m], false),
        _ => return Err(ExtractError::NotRpc("not an object or an array")),
    };
    let calls = messages
        .into_iter()
        .map(|m| rpc_call(kind, service, m))
        .collect::<Result<_, _>>()?;
    Ok(Extracted { kind, calls, batch })
}

fn rpc_call(kind: Kind, service: &Service, message: Json) -> Result<OneCall, ExtractError> {
    let Json::Object(obj) = &message else {
        return Err(ExtractError::NotRpc("a batch element is not an object"));
    };
    let id = obj.get("id").cloned();
    let Some(method) = obj.get("method").and_then(Json::as_str) else {
        // A response the client sends back (MCP sampling, elicitation): not a call.
        if obj.contains_key("result") || obj.contains_key("error") {
            return Ok(OneCall {
                function: "response".into(),
                args: Json::Null,
                role: Role::Session,
                rpc_id: id,
                message: Some(message),
            });
        }
        return Err(ExtractError::NotRpc("no method"));
    };
    let params = obj.get("params").cloned().unwrap_or(Json::Null);
    let lookup = |name: &str| {
        service
            .function_by_method(name)
            .map_or_else(|| name.to_string(), |f| f.name.to_string())
    };
    let (function, args, role) = if kind == Kind::Mcp {
        match method {
            "tools/call" => {
                let name = params.get("name").and_then(Json::as_str).unwrap_or("");
                let args = params
                    .get("arguments")
                    .cloned()
                    .unwrap_or(Json::Object(Map::new()));
                (lookup(name), args, Role::Governed)
            }
            "resources/read" | "prompts/get" => (lookup(method), params, Role::Governed),
            "tools/list" => (method.to_string(), params, Role::ListTools),
            _ => (method.to_string(), Json::Null, Role::Session),
        }
    } else {
        let args = match params {
            Json::Array(items) => Json::Object(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect(),
            ),
            Json::Null => Json::Object(Map::new()),
            other => other,
        };
        (lookup(method), args, Role::Governed)
    };
    Ok(OneCall {
        function,
        args,
        role,
        rpc_id: id,
        message: Some(message),
    })
}

pub fn is_json(headers: &HeaderMap) -> bool {
    crate::mask::BodyKind::from_content_type(
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    ) == crate::mask::BodyKind::Json
}
