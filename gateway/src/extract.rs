//! The extract stage: adapters that turn an HTTP request into the calls policy decides —
//! REST (route templates from the policy), JSON-RPC 2.0 (single and batch), MCP over streamable
//! HTTP (`tools/call`, `resources/read`, `prompts/get`), gRPC (`/pkg.Service/Method`), and any
//! other HTTP request as `METHOD /path`.
//!
//! A request is read the way its service declares (never reclassified by a header), in its
//! canonical form ([`path`]), and every argument the upstream could act on is seen once: a name
//! given twice with different values (query and body, or twice in the query) is refused, and
//! a parameter's name must be one name to every server ([`names`]).
pub mod mcp_headers;
pub mod multipart;
pub mod names;
pub mod path;
pub mod surface;

use http::{HeaderMap, Method, Uri, request::Parts};
use serde_json::{Map, Value as Json};

pub use surface::{Case, RouteId, Surface};

use self::path::PathRules;

use crate::call::{Call, Role};

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
    pub fn needs_body(self, parts: &Parts, service: &Surface) -> bool {
        let fields = !service.paths.no_method_override;
        match self {
            Kind::JsonRpc | Kind::Mcp => parts.method == Method::POST,
            // Whatever the server might read arguments from, whatever its label says (Flask's
            // `get_json(force=True)` reads JSON sent as text/plain); a multipart form sent
            // with POST, for a `_method` part (Rails and Laravel route by it).
            Kind::Rest => {
                body_type(&parts.headers) != BodyType::Opaque
                    || (fields && parts.method == Method::POST && is_multipart(&parts.headers))
            }
            // A plain HTTP service's POST, when its body may hold a form field a server reads
            // as `_method` ([`no_override_in`]).
            Kind::Http => fields && parts.method == Method::POST && may_hold_fields(&parts.headers),
            Kind::Grpc => false,
        }
    }
}

/// The kind of a request to `service`: the protocol the service declares. A header never
/// changes how a request is read (`Content-Type: application/grpc` on a REST service is a REST
/// call to that path).
pub fn kind_of(service: &Surface) -> Kind {
    use crate::call::Protocol as P;
    match service.protocol {
        P::Rest => Kind::Rest,
        P::Jsonrpc => Kind::JsonRpc,
        P::Mcp => Kind::Mcp,
        P::Grpc => Kind::Grpc,
        P::Http => Kind::Http,
    }
}

/// Puts a request to `service` into the one form that is both decided and forwarded: its
/// method as sent (upper case, as every registered method is: `post` is refused, since some
/// servers upper-case it and others do not), its path canonical.
pub fn canonicalise(service: &Surface, parts: &mut Parts) -> Result<(), ExtractError> {
    if parts
        .method
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        return Err(ExtractError::Method(parts.method.to_string()));
    }
    // A method the request asks the server to take instead of its own (Rails, Laravel,
    // Symfony and Express middleware honour these): the request would be decided as one
    // method and run as another.
    for name in METHOD_OVERRIDES {
        if parts.headers.contains_key(*name) {
            return Err(ExtractError::MethodOverride(format!("a {name} header")));
        }
    }
    content_type(&parts.headers)?;
    // `a=5;a=5000` is one parameter to most servers and two to Rack 2 (Rails up to 7.0),
    // whose `;` separates as `&` does: decided on one, run with the other.
    if !service.paths.semicolons && parts.uri.query().is_some_and(|q| q.contains(';')) {
        return Err(ExtractError::Path(path::PathError::QuerySemicolon));
    }
    let Some(canonical) = path::canonical(parts.uri.path(), service.paths)? else {
        return Ok(());
    };
    let target = match parts.uri.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(
        target
            .parse()
            .map_err(|_| ExtractError::Path(path::PathError::NotOrigin))?,
    );
    parts.uri = Uri::from_parts(uri).map_err(|_| ExtractError::Path(path::PathError::NotOrigin))?;
    Ok(())
}

/// A body the gateway reads for arguments (JSON, a form, text that may be JSON) is read as
/// UTF-8; a server that decodes it by its `charset` reads other characters from the same
/// bytes. Express's JSON parser decodes any `utf-*` label through iconv-lite, UTF-7 included:
/// `"query":"+ACIALAAi…-"` is harmless text to the gateway and closes the string to Express,
/// which then reads members the gateway never saw (`"name":"delete_table"`). Refused: JSON and
/// forms in anything but UTF-8 (or ASCII), other text in a set that does not keep ASCII's
/// bytes ([`crate::util::media::Charset`]). Types never read for arguments (images, octet
/// streams, gRPC, multipart, whose parts say their own) keep any label.
fn readable_charset(content_type: &str) -> Result<(), ExtractError> {
    use crate::util::media::{Charset, charset};
    let strict = match body_type_of(content_type) {
        BodyType::Json | BodyType::Form => true,
        BodyType::Other => false,
        BodyType::Opaque => return Ok(()),
    };
    match charset(content_type) {
        Charset::Utf8 => Ok(()),
        Charset::AsciiCompatible if !strict => Ok(()),
        _ => Err(ExtractError::ContentType(
            "the request's body is labelled with a character set other than UTF-8 (its Content-Type's charset); servers decode it by that label (Express reads UTF-7 and UTF-16) and would read other arguments than the gateway",
        )),
    }
}

/// The body's type must have one reading: how a body is read for arguments (JSON, a form, not
/// at all) follows it, and so does the server's. Two `Content-Type` fields are refused, since
/// servers differ on which one they take (werkzeug the last, most readers the first), and so
/// is one that is not text: werkzeug decodes bytes above 0x7f as Latin-1 and takes a form's
/// type from `application/x-www-form-urlencoded; charset=\xe9`, which the gateway could not
/// read, so the body was decided as JSON and run as a form. A list of media types in one field
/// is refused too.
fn content_type(headers: &HeaderMap) -> Result<(), ExtractError> {
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (_, Some(_)) => Err(ExtractError::ContentType(
            "the request gives its body's type (Content-Type) more than once; servers differ on which one they read",
        )),
        (Some(v), None) => match v.to_str() {
            Err(_) => Err(ExtractError::ContentType(
                "the request's Content-Type is not plain text (visible ASCII); servers differ on how they read it",
            )),
            // One media type: a list (`application/json, application/x-www-form-urlencoded`)
            // is two claims, as it is in an answer (`mask::response_body`).
            Ok(t) if t.split(';').next().unwrap_or("").contains(',') => {
                Err(ExtractError::ContentType(
                    "the request's Content-Type names more than one media type; servers differ on which one they read",
                ))
            }
            Ok(t) => readable_charset(t),
        },
        (None, _) => Ok(()),
    }
}

/// The calls in one request.
#[derive(Debug)]
pub struct Extracted {
    pub kind: Kind,
    pub calls: Vec<Call>,
    /// A JSON-RPC batch (the reply must be an array).
    pub batch: bool,
    /// The REST route the request took (`rest` and `http` services), for
    /// [`other_readings`].
    pub route: Option<RouteId>,
}

/// Why a request cannot be turned into calls; answered without contacting the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("request body is not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON-RPC 2.0 request: {0}")]
    NotRpc(&'static str),
    #[error("{0}")]
    Path(#[from] path::PathError),
    #[error("method {0:?} is not upper case; methods are case-sensitive")]
    Method(String),
    #[error("argument {0:?} is given twice with different values; the server may read either")]
    Ambiguous(String),
    #[error("parameter name {0:?} is another name to some servers: {1}")]
    ParamName(String, &'static str),
    #[error(
        "more than {0} parameters in the query or the form; PHP reads only the first {0} and \
         drops the rest"
    )]
    TooManyParams(usize),
    #[error("the form has bytes that are not UTF-8, which servers read differently")]
    NotText,
    #[error("the multipart body's part headers are read differently by different servers: {0}")]
    Multipart(multipart::Unread),
    #[error("an MCP endpoint takes POST, GET and DELETE, not {0}")]
    McpMethod(String),
    #[error("{0} asks the server for another method than the request's")]
    MethodOverride(String),
    #[error("{0}")]
    ContentType(&'static str),
    #[error(
        "member {0:?} is {1:?} spelled another way; a server that reads members without case \
         (Go's encoding/json) reads it as {1:?}"
    )]
    Spelling(String, &'static str),
    #[error(
        "a JSON-RPC message on a path that is not the service's endpoint; send it to the \
         endpoint, where it is decided as the call it is"
    )]
    OffEndpoint,
}

/// Headers that frameworks read as the request's real method.
const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The calls in a request to `service`. `body` is the body when it was read for the decision;
/// `unread_body` says a body went by unread (a type no argument is taken from).
impl ExtractError {
    /// The `error` a refusal for it names.
    pub fn code(&self) -> &'static str {
        match self {
            ExtractError::Path(_) => "bad_path",
            ExtractError::Method(_)
            | ExtractError::McpMethod(_)
            | ExtractError::MethodOverride(_) => "bad_method",
            ExtractError::Ambiguous(_)
            | ExtractError::Spelling(..)
            | ExtractError::ParamName(..)
            | ExtractError::TooManyParams(_)
            | ExtractError::NotText => "ambiguous_argument",
            ExtractError::NotJson(_)
            | ExtractError::NotRpc(_)
            | ExtractError::OffEndpoint
            | ExtractError::Multipart(_) => "bad_request",
            ExtractError::ContentType(_) => "bad_content_type",
        }
    }
}

pub fn extract(
    kind: Kind,
    service: &Surface,
    parts: &Parts,
    body: Option<&[u8]>,
    unread_body: bool,
) -> Result<Extracted, ExtractError> {
    extract_in(kind, service, parts, body, unread_body, Case::Any)
}

/// [`extract`], route literals matched as `case` says.
fn extract_in(
    kind: Kind,
    service: &Surface,
    parts: &Parts,
    body: Option<&[u8]>,
    unread_body: bool,
    case: Case,
) -> Result<Extracted, ExtractError> {
    let one = |call| Extracted {
        kind,
        calls: vec![call],
        batch: false,
        route: None,
    };
    let routed = |(call, route)| Extracted { route, ..one(call) };
    match kind {
        Kind::Grpc => grpc(service, parts).map(one),
        Kind::Rest => rest(service, parts, body, unread_body, case).map(routed),
        Kind::Http => plain(service, parts, body, unread_body, false, case).map(routed),
        // Another path of the service's host (see [`off_endpoint`]).
        Kind::JsonRpc | Kind::Mcp if off_endpoint(kind, service, parts) => {
            plain(service, parts, body, unread_body, true, case).map(routed)
        }
        Kind::JsonRpc | Kind::Mcp => match body {
            Some(body) if parts.method == Method::POST => rpc(kind, service, body),
            // A message in the body of another method: a server that reads bodies whatever
            // the method would run it, and the gateway does not read it. Refused.
            _ if unread_body || body.is_some_and(|b| !b.is_empty()) => Err(ExtractError::NotRpc(
                "a JSON-RPC message is sent with POST; this request carries a body with another method",
            )),
            // MCP's GET (server-sent events) and DELETE (end of session) carry no call; any
            // other method is not MCP.
            _ if kind == Kind::Mcp => {
                if parts.method != Method::GET && parts.method != Method::DELETE {
                    return Err(ExtractError::McpMethod(parts.method.to_string()));
                }
                Ok(one(Call {
                    role: Role::Session,
                    ..raw(parts)
                }))
            }
            // A bodiless request on the endpoint (a JSON-RPC `GET`): its query is read as a
            // plain request's is, with the same checks.
            _ => plain(service, parts, None, false, false, case).map(routed),
        },
    }
}

/// The request's calls as other servers would run them, when they could differ from the
/// reading [`extract`] gives: each reading named, and its calls (or why it is refused). The
/// caller decides every reading; calls they decide differently are ones whose upstream may run
/// what was not decided. For a `rest` or `http` request:
/// - route literals matched in their own case only (Rails, Flask, Go's `ServeMux`, Spring:
///   `/reports/LATEST` is `GET /reports/{id}` to them, `GET /reports/latest` to Express),
///   unless the service says its server routes in any case (`paths: { any_case: true }`);
/// - a `HEAD` as the `GET` of its path, where a `HEAD` route takes it while a more specific
///   `GET` route names another function (werkzeug and Spring route by the most specific path,
///   then run its `GET` handler);
/// - a last segment's format suffix taken off, as Rails routes `/items/7.json` (`/items/7`) and
///   Spring did before 5.3 ([`path::without_format_suffix`]), unless the service says its
///   server reads none (`paths: { no_format_suffix: true }`) or a route names the path as
///   spelled, in its own case, suffix and all (`GET /echo.txt`); in either case of literals.
///
/// `route` is the route the request's own extraction took ([`Extracted::route`]).
pub fn other_readings(
    kind: Kind,
    service: &Surface,
    (parts, route): (&Parts, Option<RouteId>),
    body: Option<&[u8]>,
    unread_body: bool,
) -> Vec<(Reading, Result<Extracted, ExtractError>)> {
    let mut out = Vec::new();
    if !matches!(kind, Kind::Rest | Kind::Http) {
        return out;
    }
    let method = parts.method.as_str();
    let exact_too = |route: Option<RouteId>, path: &str| {
        !service.paths.any_case && route.is_some_and(|r| service.folds_case(r, path))
    };
    let spelled = parts.uri.path();
    let like = |method: &Method, uri: Uri| {
        let (mut read, ()) = http::Request::new(()).into_parts();
        read.method = method.clone();
        read.uri = uri;
        read.version = parts.version;
        read.headers = parts.headers.clone();
        read
    };
    if parts.method == Method::HEAD && service.head_shadows_get(spelled) {
        let get = like(&Method::GET, parts.uri.clone());
        let read = extract_in(kind, service, &get, body, unread_body, Case::Any);
        out.push((Reading::HeadAsGet, read));
    }
    if exact_too(route, spelled) {
        let read = extract_in(kind, service, parts, body, unread_body, Case::Exact);
        out.push((Reading::ExactCase, read));
    }
    let Some(stripped) = path::without_format_suffix(spelled)
        .filter(|_| !service.paths.no_format_suffix && !service.routes_literally(method, spelled))
    else {
        return out;
    };
    let target = match parts.uri.query() {
        Some(q) => format!("{stripped}?{q}"),
        None => stripped.clone(),
    };
    // Bytes of a target that parsed already: a failure here is refused, never let through.
    let Ok(uri) = Uri::try_from(target) else {
        out.push((
            Reading::FormatSuffix,
            Err(ExtractError::Path(path::PathError::NotOrigin)),
        ));
        return out;
    };
    let read = like(&parts.method, uri);
    let any = extract_in(kind, service, &read, body, unread_body, Case::Any);
    let stripped_route = any.as_ref().ok().and_then(|e| e.route);
    out.push((Reading::FormatSuffix, any));
    if exact_too(stripped_route, &stripped) {
        let exact = extract_in(kind, service, &read, body, unread_body, Case::Exact);
        out.push((Reading::FormatSuffixExactCase, exact));
    }
    out
}

/// Another server's reading of a request (see [`other_readings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// Route literals in their own case only.
    ExactCase,
    /// The last segment's `.ext` taken off.
    FormatSuffix,
    /// Both.
    FormatSuffixExactCase,
    /// A `HEAD` as the `GET` of its path, where a more specific `GET` route names another
    /// function than the `HEAD` route it takes.
    HeadAsGet,
}

impl Reading {
    /// Who reads a request so, for an error message.
    pub fn servers(self) -> &'static str {
        match self {
            Reading::ExactCase => {
                "a server that routes literals in their own case only (Rails, Flask, Go, Spring)"
            }
            Reading::FormatSuffix => {
                "a server that reads a format suffix (Rails; Spring before 5.3)"
            }
            Reading::FormatSuffixExactCase => {
                "Rails, reading a format suffix and routing literals in their own case"
            }
            Reading::HeadAsGet => {
                "a server that routes a HEAD by the most specific path and runs its GET handler (Flask, Spring)"
            }
        }
    }

    /// What to do when a reading is decided otherwise and the service's server does not
    /// read requests so.
    pub fn remedy(self) -> &'static str {
        match self {
            Reading::ExactCase => {
                "if this service's server routes literals in any case, say so in its file with \
                 `paths: { any_case: true }`"
            }
            Reading::FormatSuffix | Reading::FormatSuffixExactCase => {
                "if this service's server reads no format suffix, say so in its file with \
                 `paths: { no_format_suffix: true }`"
            }
            Reading::HeadAsGet => {
                "decide the HEAD route's function as its path's GET route's is decided"
            }
        }
    }
}

/// Is this a request to a path of a JSON-RPC or MCP service other than its `endpoint`? Such a
/// request is not read as a message (a server with REST routes beside its endpoint runs them
/// as such): it is a plain HTTP request ([`Kind::Http`]), decided as the undeclared
/// `METHOD /path` and answered as one.
pub fn off_endpoint(kind: Kind, service: &Surface, parts: &Parts) -> bool {
    matches!(kind, Kind::JsonRpc | Kind::Mcp) && !service.is_endpoint(parts.uri.path())
}

/// A plain HTTP request: `METHOD /path`, its query the arguments, partial when it has a body
/// (not read for arguments, but looked at for a `_method` field: [`no_override_in`]). Off an
/// endpoint (`off_endpoint`), a body that is a JSON-RPC message is refused: a server that takes
/// messages on that path too (a trailing `/`, another case, a mount's subpaths) would run a
/// call a rule that covers every function allows as `METHOD /path`, where a rule that names
/// the call would deny it. Its first value is looked at, as Go's decoder reads only that.
fn plain(
    service: &Surface,
    parts: &Parts,
    body: Option<&[u8]>,
    unread_body: bool,
    off_endpoint: bool,
    case: Case,
) -> Result<(Call, Option<RouteId>), ExtractError> {
    if off_endpoint && body.is_some_and(rpc_shaped) {
        return Err(ExtractError::OffEndpoint);
    }
    // An `http` service's routes name its functions as a `rest` service's do (path
    // parameters and the query their arguments); off an endpoint, no route is the service's.
    let path = parts.uri.path();
    let routed = match off_endpoint {
        false => service.route_in(parts.method.as_str(), path, case),
        true => None,
    };
    let (route, function, mut args) = match routed {
        Some((r, f, params)) => (Some(r), f.to_string(), path_args(params)),
        None => (None, format!("{} {}", parts.method, path), Map::new()),
    };
    let mut nested = Vec::new();
    for (k, v) in query(&parts.uri, service.paths, &mut nested)? {
        join(&mut args, k, v)?;
    }
    settle(&args, &nested)?;
    if let Some(b) = body {
        no_override_in(parts, service.paths, b)?;
    }
    let call = Call {
        partial: unread_body || body.is_some_and(|b| !b.is_empty()),
        ..governed(function, Json::Object(args))
    };
    Ok((call, route))
}

/// Whether `body` starts with a JSON-RPC message or batch: an object with a member that is
/// `jsonrpc` or `method` in any case.
fn rpc_shaped(body: &[u8]) -> bool {
    use crate::util::jsonpath::fold_eq;
    let message = |v: &Json| {
        v.as_object().is_some_and(|o| {
            o.keys()
                .any(|k| fold_eq(k, "jsonrpc") || fold_eq(k, "method"))
        })
    };
    match serde_json::Deserializer::from_slice(body)
        .into_iter::<Json>()
        .next()
    {
        Some(Ok(Json::Array(items))) => items.iter().any(message),
        Some(Ok(v)) => message(&v),
        _ => false,
    }
}

fn governed(function: String, args: Json) -> Call {
    Call {
        function,
        args,
        role: Role::Governed,
        rpc_id: None,
        message: None,
        partial: false,
    }
}

/// `METHOD /path`, args = the query (a name given twice keeps its first value; [`extract`]
/// refuses such a request to a service before this is decided).
pub fn raw(parts: &Parts) -> Call {
    let mut args = Map::new();
    if let Some(q) = parts.uri.query() {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            args.entry(k.into_owned())
                .or_insert(Json::String(v.into_owned()));
        }
    }
    governed(
        format!("{} {}", parts.method, parts.uri.path()),
        Json::Object(args),
    )
}

fn grpc(service: &Surface, parts: &Parts) -> Result<Call, ExtractError> {
    let path = parts.uri.path();
    let function = service.function_for(path);
    // Caller metadata is what policy can see of a gRPC call: the message is protobuf.
    // Credentials are not arguments: they would be recorded with the call.
    let injected = service.credential_header.as_deref();
    let mut metadata = Map::new();
    let mut partial = false;
    for name in parts.headers.keys() {
        let n = name.as_str();
        if n.ends_with("-bin")
            || n.starts_with("grpc-")
            || crate::obligations::mask::is_credential_name(n)
            || injected.is_some_and(|h| h.eq_ignore_ascii_case(n))
        {
            continue;
        }
        // A key given twice with different values is refused, as a REST argument is: servers
        // read the first (grpc-go's `md.Get(k)[0]`) or all of them, and the policy must decide
        // on the value that runs. A value that is not text cannot be compared: no condition
        // on the metadata holds or fails.
        let mut values = parts.headers.get_all(name).iter();
        let Some(first) = values.next() else { continue };
        if values.any(|v| v != first) {
            return Err(ExtractError::Ambiguous(format!("metadata {n}")));
        }
        match first.to_str() {
            Ok(v) => {
                metadata.insert(n.to_string(), Json::String(v.to_string()));
            }
            Err(_) => partial = true,
        }
    }
    let mut args = Map::new();
    args.insert("metadata".into(), Json::Object(metadata));
    Ok(Call {
        partial,
        ..governed(function, Json::Object(args))
    })
}

/// Route template match: args = path parameters, then query, then the body's fields (JSON,
/// or a form). A name given in two places with different values is refused: which one the
/// server reads (Flask's `request.values` takes the query's, `get_json()` the body's) is the
/// server's choice, and the policy must decide on the value that runs.
fn rest(
    service: &Surface,
    parts: &Parts,
    body: Option<&[u8]>,
    unread_body: bool,
    case: Case,
) -> Result<(Call, Option<RouteId>), ExtractError> {
    let method = parts.method.as_str();
    let path = parts.uri.path();
    let (route, function, mut args) = match service.route_in(method, path, case) {
        Some((r, f, params)) => (Some(r), f.to_string(), path_args(params)),
        None => (None, format!("{} {}", parts.method, path), Map::new()),
    };
    // The bases of `name[...]` parameters (see [`names`]): rarely any.
    let mut nested = Vec::new();
    for (k, v) in query(&parts.uri, service.paths, &mut nested)? {
        join(&mut args, k, v)?;
    }
    let mut partial = unread_body;
    // A body with a content coding is read as sent; a server that inflates request bodies
    // (Jetty, ASP.NET) acts on something else: no condition on it holds or fails.
    let encoded = parts
        .headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    match body.filter(|b| !b.is_empty()) {
        // Read as sent all the same for a `_method` field: PHP and WEBrick do not inflate.
        Some(b) if encoded => {
            partial = true;
            no_override_in(parts, service.paths, b)?;
        }
        Some(b) => {
            match body_type(&parts.headers) {
                BodyType::Json => join_body(&mut args, parse(b)?)?,
                // A form that is also JSON is read both ways: a server that reads JSON whatever
                // the label (Flask's `get_json(force=True)`) sees the JSON, a form reader the
                // form, and a form spelled inside a JSON string must not say something else.
                // A form that starts like JSON but that serde cannot read (UTF-16 or 32, `NaN`,
                // `1e400`, a lone surrogate: Python's json reads them all) has no reading the
                // gateway can vouch for: no condition on its arguments holds or fails.
                BodyType::Form => {
                    match serde_json::from_slice::<Json>(b) {
                        Ok(v) => join_body(&mut args, v)?,
                        Err(_) if may_be_json(b) => partial = true,
                        Err(_) => {}
                    }
                    for (k, v) in form(b, service.paths, &mut nested)? {
                        join(&mut args, k, v)?;
                    }
                }
                // Unlabelled or text: read as JSON when it is JSON (some servers parse it
                // whatever its label), else not an argument source the gateway can read; but
                // Rack reads an unlabelled POST body as a form, `_method` and all.
                BodyType::Other | BodyType::Opaque => match serde_json::from_slice::<Json>(b) {
                    Ok(v) => join_body(&mut args, v)?,
                    Err(_) => {
                        partial = true;
                        no_override_in(parts, service.paths, b)?;
                    }
                },
            }
        }
        None => {}
    }
    settle(&args, &nested)?;
    let call = Call {
        partial,
        ..governed(function, Json::Object(args))
    };
    Ok((call, route))
}

/// The checks on a request's arguments once all are in: each has one reading, and none asks
/// for another method. `nested` are the bases of the query's and form's `name[...]`
/// parameters, which PHP and Rack read as `name`: given beside `name` itself, they are that
/// name given twice.
fn settle(args: &Map<String, Json>, nested: &[String]) -> Result<(), ExtractError> {
    use crate::util::jsonpath::fold_char;
    // Rails and Laravel (Symfony, from the query too) route `_method` as the request's method.
    // Slim reads `_METHOD`.
    let is_override = |k: &str| k.eq_ignore_ascii_case("_method");
    if args.keys().any(|k| is_override(k)) || nested.iter().any(|b| is_override(b)) {
        return Err(ExtractError::MethodOverride("a `_method` argument".into()));
    }
    if !nested.is_empty() {
        // Each argument's name folded once, so that many nested names cost no more than
        // their number (a body of thousands of them must not cost their square).
        let fold = |k: &str| k.chars().map(fold_char).collect::<String>();
        let folded: std::collections::HashSet<String> = args.keys().map(|k| fold(k)).collect();
        if let Some(base) = nested.iter().find(|b| folded.contains(&fold(b))) {
            return Err(ExtractError::Ambiguous(base.clone()));
        }
    }
    one_spelling(args)
}

/// A route's path parameters as arguments, percent-decoded.
fn path_args(params: surface::PathParams<'_>) -> Map<String, Json> {
    let mut args = Map::new();
    for (k, v) in params {
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        args.insert(k.to_string(), Json::String(v.into_owned()));
    }
    args
}

/// Adds one argument, refusing a second, different value for a name already given.
fn join(args: &mut Map<String, Json>, name: String, value: Json) -> Result<(), ExtractError> {
    match args.get(&name) {
        None => {
            args.insert(name, value);
            Ok(())
        }
        Some(have) if same_value(have, &value) => Ok(()),
        Some(_) => Err(ExtractError::Ambiguous(name)),
    }
}

/// Names equal under case folding are one argument to a server that matches them without
/// case (Go's `encoding/json` puts `"Amount"` in the field tagged `amount`, the last of them
/// winning): given with different values, which one runs is the server's choice, so the
/// request is refused as a name given twice is. (Conditions on arguments read every spelling
/// too: [`crate::util::jsonpath::JsonPath::visit_folded`].)
fn one_spelling(args: &Map<String, Json>) -> Result<(), ExtractError> {
    use crate::util::jsonpath::fold_eq;
    let clash =
        |(a, va): (&String, &Json), (b, vb): (&String, &Json)| fold_eq(a, b) && !same_value(va, vb);
    // Pairs while there are few (no allocation on the data path); a map of folded names past
    // that, so that a body with many fields costs no more than its length.
    const PAIRWISE: usize = 16;
    let found = if args.len() <= PAIRWISE {
        args.iter().enumerate().find_map(|(i, a)| {
            args.iter()
                .skip(i + 1)
                .any(|b| clash(a, b))
                .then(|| a.0.clone())
        })
    } else {
        let mut seen: std::collections::HashMap<String, (&String, &Json)> =
            std::collections::HashMap::with_capacity(args.len());
        args.iter().find_map(|a| {
            let folded: String = a.0.chars().map(crate::util::jsonpath::fold_char).collect();
            match seen.get(&folded) {
                Some(&b) if !same_value(a.1, b.1) => Some(a.0.clone()),
                Some(_) => None,
                None => {
                    seen.insert(folded, a);
                    None
                }
            }
        })
    };
    match found {
        Some(name) => Err(ExtractError::Ambiguous(name)),
        None => Ok(()),
    }
}

/// The same value, as a server that reads text would see it (`5` in a query is `5` in JSON):
/// text equal to the number's own spelling, not merely to its `f64` (`5.0`, ` 5`, or
/// `1234567890123456790` for `1234567890123456789` are other values to a server that reads
/// the one the gateway did not keep).
fn same_value(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::String(s), Json::Number(n)) | (Json::Number(n), Json::String(s)) => {
            *s == n.to_string()
        }
        (Json::String(s), Json::Bool(v)) | (Json::Bool(v), Json::String(s)) => {
            s == if *v { "true" } else { "false" }
        }
        _ => a == b,
    }
}

/// A body's fields join the arguments; a body that is not an object is `args.body`.
fn join_body(args: &mut Map<String, Json>, body: Json) -> Result<(), ExtractError> {
    match body {
        Json::Object(fields) => {
            for (k, v) in fields {
                join(args, k, v)?;
            }
            Ok(())
        }
        other => join(args, "body".into(), other),
    }
}

/// Whether a lenient JSON reader (Python's `json.loads` on bytes) may read `body` as JSON:
/// a NUL in its first four bytes or a UTF-16/32 byte order mark (Python detects those
/// encodings so), or, after a UTF-8 BOM and whitespace, an object or an array.
fn may_be_json(body: &[u8]) -> bool {
    if body.iter().take(4).any(|&b| b == 0)
        || body.starts_with(&[0xff, 0xfe])
        || body.starts_with(&[0xfe, 0xff])
    {
        return true;
    }
    let body = body.strip_prefix(&[0xef, 0xbb, 0xbf]).unwrap_or(body);
    matches!(
        body.iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')),
        Some(b'{' | b'[')
    )
}

/// How a request body can be read for arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyType {
    /// `application/json`, `*+json`: must parse.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Unlabelled, text, or another type worth trying as JSON.
    Other,
    /// Multipart, binary, media, gRPC: not read for the decision.
    Opaque,
}

/// A body not read for arguments (a multipart form, a form with a content coding, one sent
/// without a type or with one PHP cuts short, a plain HTTP request's) must not carry a field
/// a server reads as `_method`: Rails and Laravel route by it, and the request would run as
/// another method than the one decided. Every reading is looked at: as a form, and as
/// multipart parts when the body says it is one.
fn no_override_in(parts: &Parts, rules: PathRules, body: &[u8]) -> Result<(), ExtractError> {
    if rules.no_method_override {
        return Ok(());
    }
    let refuse = |name: &str| {
        Err(ExtractError::MethodOverride(format!(
            "a body field {name:?}, which Rails, Laravel or Slim read as `_method`,"
        )))
    };
    if is_multipart(&parts.headers) {
        let ct = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let fields = multipart::part_names(ct, body).map_err(ExtractError::Multipart)?;
        if let Some(name) = fields.iter().find(|n| names::overrides_method(n)) {
            return refuse(name);
        }
    }
    // Every pair: Rack reads 4,096 of them, Go all.
    for (i, (name, _)) in form_urlencoded::parse(body).enumerate() {
        if i == MAX_PARAMS {
            return Err(ExtractError::TooManyParams(MAX_PARAMS));
        }
        if names::overrides_method(&name) {
            return refuse(&name);
        }
    }
    // Laravel and Slim read a JSON body's members too; one serde cannot read (nested past its
    // limit, a number out of range: PHP's json_decode reads both) that may name one is refused.
    if body.trim_ascii_start().starts_with(b"{") {
        match serde_json::from_slice::<Json>(body) {
            Ok(Json::Object(m)) => {
                if let Some(name) = m.keys().find(|k| names::overrides_method(k)) {
                    return refuse(name);
                }
            }
            Ok(_) => {}
            Err(_) => {
                let lower = body.to_ascii_lowercase();
                if memchr::memmem::find(&lower, b"method").is_some()
                    || memchr::memmem::find(&lower, b"\\u").is_some()
                {
                    return refuse("(in JSON the gateway cannot read)");
                }
            }
        }
    }
    Ok(())
}

/// Whether a server may read the body as fields that could hold `_method`: no type (Rack),
/// a form or a multipart form as PHP reads a type (the media type cut at `;`, `,` or a space),
/// or JSON as Laravel reads one (`/json` or `+json` anywhere in it).
fn may_hold_fields(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE) else {
        return true;
    };
    let ct = ct.as_bytes().to_ascii_lowercase();
    let media = ct
        .trim_ascii_start()
        .split(|&b| matches!(b, b';' | b',' | b' ' | b'\t'))
        .next()
        .unwrap_or_default();
    media == b"application/x-www-form-urlencoded"
        || media.starts_with(b"multipart/")
        || memchr::memmem::find(&ct, b"/json").is_some()
        || memchr::memmem::find(&ct, b"+json").is_some()
}

/// Whether the body is a multipart form (`multipart/form-data`, or any `multipart/*`, which
/// PHP and Rack parse alike).
fn is_multipart(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().trim_ascii_start().len() >= 10
            && v.as_bytes().trim_ascii_start()[..10].eq_ignore_ascii_case(b"multipart/")
    })
}

fn body_type(headers: &HeaderMap) -> BodyType {
    match headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(ct) => body_type_of(ct),
        None => BodyType::Other,
    }
}

/// [`body_type`] of one `Content-Type` value.
fn body_type_of(ct: &str) -> BodyType {
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        BodyType::Json
    } else if mime == "application/x-www-form-urlencoded" {
        BodyType::Form
    } else if mime.starts_with("multipart/")
        || mime.starts_with("image/")
        || mime.starts_with("audio/")
        || mime.starts_with("video/")
        || mime.starts_with("application/grpc")
        || mime == "application/octet-stream"
    {
        BodyType::Opaque
    } else {
        BodyType::Other
    }
}

/// Parameters in a query, or in a form: PHP reads the first 1,000 (`max_input_vars`) and
/// drops the rest, Express's body parser refuses more and `qs` ignores them, so a condition
/// on a parameter past them would hold for a value the server never reads.
const MAX_PARAMS: usize = 1000;

/// A query's arguments, each once: a name given twice with different values is refused
/// (Flask reads the first, Starlette the last, PHP and Express an array). Names PHP or Rack
/// read as another name are refused, and the bases of `name[...]` are added to `nested`
/// ([`names`]).
fn query(
    uri: &Uri,
    rules: PathRules,
    nested: &mut Vec<String>,
) -> Result<Map<String, Json>, ExtractError> {
    match uri.query() {
        Some(q) => form(q.as_bytes(), rules, nested),
        None => Ok(Map::new()),
    }
}

/// A form's (or a query's) parameters, as [`query`] reads them.
fn form(
    body: &[u8],
    rules: PathRules,
    nested: &mut Vec<String>,
) -> Result<Map<String, Json>, ExtractError> {
    // werkzeug reads a form with a byte that is not UTF-8 as no form at all (and Flask then
    // runs with every argument missing), where a lossy reading would have decided on it.
    if std::str::from_utf8(body).is_err() {
        return Err(ExtractError::NotText);
    }
    let mut m = Map::new();
    for (i, (k, v)) in form_urlencoded::parse(body).enumerate() {
        if i == MAX_PARAMS {
            return Err(ExtractError::TooManyParams(MAX_PARAMS));
        }
        if let names::Reading::Nested(base) = names::read(&k, rules)? {
            nested.push(base.to_string());
        }
        join(&mut m, k.into_owned(), Json::String(v.into_owned()))?;
    }
    Ok(m)
}

fn parse(body: &[u8]) -> Result<Json, ExtractError> {
    serde_json::from_slice(body).map_err(|e| ExtractError::NotJson(e.to_string()))
}

fn rpc(kind: Kind, service: &Surface, body: &[u8]) -> Result<Extracted, ExtractError> {
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
    Ok(Extracted {
        kind,
        calls,
        batch,
        route: None,
    })
}

/// The MCP messages that pass as protocol housekeeping, allowed and recorded without a rule:
/// a closed list, compared exactly (JSON-RPC method names are case-sensitive). `tools/list`
/// passes too, its answer filtered to the tools the caller may call. Everything else is a
/// call that policy decides.
pub const SESSION_METHODS: &[&str] = &[
    "initialize",
    // The 2026-07-28 transport's `initialize`: the server's versions and capabilities.
    "server/discover",
    "ping",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
];

/// The members of a JSON-RPC message the gateway reads, and of an MCP `tools/call`'s params.
const ENVELOPE: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];
const TOOL_CALL: &[&str] = &["name", "arguments"];

/// Refuses a member of `obj` that is one of `names` only under case folding (`Method`,
/// `paramſ`, `NAME`). The gateway reads each of those members as spelled; a server that
/// matches members to fields without case (Go's encoding/json, whose last match wins) reads
/// `{"method":"ping","Method":"tools/call"}` as a `tools/call`, and a `tools/call` of
/// `search_docs` with `"NAME":"delete_table"` as a call of `delete_table`.
fn spelled_once(obj: &Map<String, Json>, names: &[&'static str]) -> Result<(), ExtractError> {
    use crate::util::jsonpath::fold_eq;
    for key in obj.keys() {
        if names.contains(&key.as_str()) {
            continue;
        }
        if let Some(&name) = names.iter().find(|&&n| fold_eq(key, n)) {
            return Err(ExtractError::Spelling(key.clone(), name));
        }
    }
    Ok(())
}

fn rpc_call(kind: Kind, service: &Surface, message: Json) -> Result<Call, ExtractError> {
    let Json::Object(obj) = &message else {
        return Err(ExtractError::NotRpc("a batch element is not an object"));
    };
    spelled_once(obj, ENVELOPE)?;
    let id = obj.get("id").cloned();
    let Some(method) = obj.get("method").and_then(Json::as_str) else {
        // A response the client sends back (MCP sampling, elicitation): not a call.
        if obj.contains_key("result") || obj.contains_key("error") {
            return Ok(Call {
                function: "response".into(),
                args: Json::Null,
                role: Role::Session,
                rpc_id: id,
                message: Some(message),
                partial: false,
            });
        }
        return Err(ExtractError::NotRpc("no method"));
    };
    let params = obj.get("params").cloned().unwrap_or(Json::Null);
    let lookup = |name: &str| service.function_for(name);
    let (function, args, role) = if kind == Kind::Mcp {
        match method {
            "tools/call" => {
                if let Json::Object(p) = &params {
                    spelled_once(p, TOOL_CALL)?;
                }
                let name = params.get("name").and_then(Json::as_str).unwrap_or("");
                let args = params
                    .get("arguments")
                    .cloned()
                    .unwrap_or(Json::Object(Map::new()));
                (lookup(name), args, Role::Governed)
            }
            "tools/list" => (method.to_string(), params, Role::ListTools),
            m if SESSION_METHODS.contains(&m) => (method.to_string(), Json::Null, Role::Session),
            // Anything else (`resources/read`, `prompts/get`, `completion/complete`,
            // `logging/setLevel`, a method of a later spec or of no spec) is a call, decided by
            // policy under its method name; with no rule for it, the default (deny).
            _ => (lookup(method), params, Role::Governed),
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
    if role == Role::Governed
        && let Json::Object(a) = &args
    {
        one_spelling(a)?;
    }
    Ok(Call {
        function,
        args,
        role,
        rpc_id: id,
        message: Some(message),
        partial: false,
    })
}

pub fn is_json(headers: &HeaderMap) -> bool {
    crate::obligations::mask::BodyKind::from_content_type(
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    ) == crate::obligations::mask::BodyKind::Json
}
