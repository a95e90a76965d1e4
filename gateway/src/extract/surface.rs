//! What extraction knows of a service: the surface its calls arrive on. The policy compiler
//! builds one per service (protocol, path options, functions by method, REST routes); the
//! extract stage reads it and never the rest of the policy.
use std::{collections::HashSet, sync::Arc};

use super::path::PathRules;
use crate::{call::Protocol, util::NameIndex};

/// A REST route's parameters as the path gave them: `{id}` → `("id", "42")`, borrowed from
/// the route and the path (most routes have a parameter or two: no allocation).
pub type PathParams<'a> = smallvec::SmallVec<[(&'a str, &'a str); 4]>;

/// How a route's literals are matched: in any case (Express, ASP.NET), or only in their own
/// (Rails, Flask, Go's `ServeMux`, Spring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Any,
    Exact,
}

/// A REST route of a [`Surface`], as a request took it ([`super::Extracted::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(usize);

/// A service's functions as requests name them.
#[derive(Debug)]
pub struct Surface {
    pub protocol: Protocol,
    /// Which path spellings the service lets through (see [`super::path`]).
    pub paths: PathRules,
    /// The header the service's credential injection sets, if it injects one: never an
    /// argument.
    pub credential_header: Option<String>,
    /// JSON-RPC and MCP: the paths the protocol is spoken on; empty, every path.
    pub endpoint: Vec<String>,
    functions: Vec<Arc<str>>,
    by_method: NameIndex<usize>,
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    method: String,
    segs: Vec<RouteSeg>,
    function: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum RouteSeg {
    Lit(String),
    Param(String),
}

/// Why a function's route was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("{0}")]
    Invalid(String),
    /// Another function already has this route.
    #[error("route is also function {0}'s")]
    Taken(Arc<str>),
    /// Another function is already called by this method (or tool, or gRPC path): a call
    /// could be decided as only one of them.
    #[error("method is also function {0}'s")]
    MethodTaken(Arc<str>),
}

impl Surface {
    pub(crate) fn new(
        protocol: Protocol,
        paths: PathRules,
        credential_header: Option<String>,
    ) -> Self {
        Self {
            protocol,
            paths,
            credential_header,
            endpoint: Vec::new(),
            functions: Vec::new(),
            by_method: NameIndex::default(),
            routes: Vec::new(),
        }
    }

    /// Is `path` where the service speaks its protocol (JSON-RPC, MCP)? In any case and with
    /// or without one trailing `/`: Express (and so the MCP TypeScript SDK's Express app)
    /// routes `/MCP` and `/mcp/` to `app.post('/mcp')`, and such a request decided as the
    /// undeclared `POST /MCP` ran a denied tool under a rule that allows the rest.
    pub fn is_endpoint(&self, path: &str) -> bool {
        fn trim(p: &str) -> &str {
            p.strip_suffix('/').filter(|t| !t.is_empty()).unwrap_or(p)
        }
        self.endpoint.is_empty()
            || self
                .endpoint
                .iter()
                .any(|e| e == path || trim(e).eq_ignore_ascii_case(trim(path)))
    }

    /// Adds a function named by `method` (a JSON-RPC method, MCP tool or gRPC path) and,
    /// for REST, by `route` (`METHOD /a/{b}/c`).
    pub(crate) fn add(
        &mut self,
        name: &str,
        method: &str,
        route: Option<&str>,
    ) -> Result<(), RouteError> {
        if let Some(&other) = self.by_method.get(method) {
            return Err(RouteError::MethodTaken(self.functions[other].clone()));
        }
        let function = self.functions.len();
        self.functions.push(name.into());
        self.by_method.insert(method.to_string(), function);
        let Some(route) = route else { return Ok(()) };
        let (method, segs) = parse_route(route).map_err(RouteError::Invalid)?;
        if let Some(other) = self
            .routes
            .iter()
            .find(|r| r.method == method && r.segs == segs)
        {
            return Err(RouteError::Taken(self.functions[other.function].clone()));
        }
        // More specific routes first: literal segments beat parameters; among equals, the
        // order they were written in. Inserted in place, so the list is never re-sorted.
        let literals = |segs: &[RouteSeg]| {
            segs.iter()
                .filter(|s| matches!(s, RouteSeg::Lit(_)))
                .count()
        };
        let own = literals(&segs);
        let at = self.routes.partition_point(|r| literals(&r.segs) >= own);
        self.routes.insert(
            at,
            Route {
                method,
                segs,
                function,
            },
        );
        Ok(())
    }

    /// The function a JSON-RPC method, MCP tool or gRPC path names.
    pub fn function_by_method(&self, method: &str) -> Option<&Arc<str>> {
        self.by_method.get(method).map(|&i| &self.functions[i])
    }

    /// What a call to `method` is decided as: the function that answers to it, else the
    /// method itself, undeclared. An undeclared method spelled as a declared function's name
    /// (`lookup`, where `lookup: { method: payments.get }`) is not that function: it is marked
    /// as undeclared, so that no rule of `lookup` decides another method of the server.
    pub fn function_for(&self, method: &str) -> String {
        match self.function_by_method(method) {
            Some(f) => f.to_string(),
            None if self.functions.iter().any(|f| **f == *method) => {
                format!("{method} (undeclared method)")
            }
            None => method.to_string(),
        }
    }

    /// Whether `path` is one a route names to its last character, in the route's own case:
    /// the route it takes ends in a literal (`GET /echo.txt`), not a parameter. Its spelling
    /// is then the operator's declaration of that function, format suffix and all.
    pub fn routes_literally(&self, method: &str, path: &str) -> bool {
        self.route_index(method, path, Case::Exact)
            .is_some_and(|(r, _)| matches!(self.routes[r].segs.last(), Some(RouteSeg::Lit(_))))
    }

    /// Whether `path`, which took `route` with literals matched in any case, takes another
    /// route, or none, when they are matched in their own case only: `/reports/LATEST` is `GET /reports/latest` to Express and ASP.NET, and
    /// `GET /reports/{id}` to Rails, Flask and Go.
    pub fn folds_case(&self, route: RouteId, path: &str) -> bool {
        // A route that matches in its own case matches in any: the exact match is the any-case
        // one exactly when that one's literals are spelled as the path spells them. One pass
        // over the route the request took, not a second search.
        let path = memchr::memchr2(b'?', b'#', path.as_bytes()).map_or(path, |end| &path[..end]);
        !self.routes[route.0]
            .segs
            .iter()
            .zip(segments(path).skip(1))
            .all(|(want, got)| match want {
                RouteSeg::Lit(l) => l == got,
                RouteSeg::Param(_) => true,
            })
    }

    /// Whether a `HEAD` of `path` takes a `HEAD` route while a more specific `GET` route
    /// names another function: Rails takes the `HEAD` route, werkzeug and Spring the more
    /// specific path, whose `GET` handler then runs.
    pub fn head_shadows_get(&self, path: &str) -> bool {
        let route = |method| {
            self.route_index_of(method, path, Case::Any)
                .map(|(r, _)| &self.routes[r])
        };
        let literals = |r: &Route| {
            r.segs
                .iter()
                .filter(|s| matches!(s, RouteSeg::Lit(_)))
                .count()
        };
        // Only a more specific `GET` route is taken over the `HEAD` one: for the same path
        // (`HEAD /items/{id}` beside `GET /items/{id}`) every server runs the `HEAD` handler.
        matches!(
            (route("HEAD"), route("GET")),
            (Some(h), Some(g)) if h.function != g.function && literals(g) > literals(h)
        )
    }

    /// The function a REST request calls, with its path parameters; literals matched in any
    /// case (Express, ASP.NET).
    pub fn route<'a>(
        &'a self,
        method: &str,
        path: &'a str,
    ) -> Option<(&'a Arc<str>, PathParams<'a>)> {
        self.route_in(method, path, Case::Any)
            .map(|(_, f, params)| (f, params))
    }

    /// [`Surface::route`], literals matched as `case` says.
    pub fn route_in<'a>(
        &'a self,
        method: &str,
        path: &'a str,
        case: Case,
    ) -> Option<(RouteId, &'a Arc<str>, PathParams<'a>)> {
        self.route_index(method, path, case)
            .map(|(r, params)| (RouteId(r), &self.functions[self.routes[r].function], params))
    }

    /// The index of the route a REST request takes, with its path parameters. A `HEAD` takes
    /// a `HEAD` route, else the `GET` route of its path: Flask, Rails, Express, Spring and
    /// Go's `ServeMux` answer `HEAD` by running the `GET` handler, side effects and all, and
    /// drop only the body.
    fn route_index<'a>(
        &'a self,
        method: &str,
        path: &'a str,
        case: Case,
    ) -> Option<(usize, PathParams<'a>)> {
        self.route_index_of(method, path, case).or_else(|| {
            method
                .eq_ignore_ascii_case("HEAD")
                .then(|| self.route_index_of("GET", path, case))?
        })
    }

    fn route_index_of<'a>(
        &'a self,
        method: &str,
        path: &'a str,
        case: Case,
    ) -> Option<(usize, PathParams<'a>)> {
        let path = memchr::memchr2(b'?', b'#', path.as_bytes()).map_or(path, |end| &path[..end]);
        'routes: for (i, r) in self.routes.iter().enumerate() {
            if !r.method.eq_ignore_ascii_case(method) {
                continue;
            }
            let mut params = PathParams::new();
            let mut segs = segments(path).skip(1);
            for want in &r.segs {
                let Some(got) = segs.next() else {
                    continue 'routes;
                };
                match want {
                    // Literals match in any case: Express and ASP.NET route that way.
                    RouteSeg::Lit(l) if case == Case::Any && l.eq_ignore_ascii_case(got) => {}
                    RouteSeg::Lit(l) if l == got => {}
                    RouteSeg::Lit(_) => continue 'routes,
                    RouteSeg::Param(_) if got.is_empty() => continue 'routes,
                    RouteSeg::Param(name) => params.push((name.as_str(), got)),
                }
            }
            // One trailing `/` is the same route: many servers redirect or route it there.
            let rest = segs.next();
            if rest.is_none() || (rest == Some("") && segs.next().is_none()) {
                return Some((i, params));
            }
        }
        None
    }
}

/// `METHOD /a/{b}/c` → method and segments.
fn parse_route(route: &str) -> Result<(String, Vec<RouteSeg>), String> {
    let (method, path) = route
        .trim()
        .split_once(' ')
        .ok_or("expected `METHOD /path`")?;
    let method = method.trim().to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("{method:?} is not an HTTP method"));
    }
    let path = path.trim();
    if !path.starts_with('/') {
        return Err("the path must start with /".into());
    }
    let mut seen = HashSet::new();
    let mut segs = Vec::new();
    for seg in path.split('/').skip(1) {
        if let Some(inner) = seg
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .filter(|s| !s.contains(['{', '}']))
        {
            if inner.is_empty() || !seen.insert(inner.to_string()) {
                return Err(format!("parameter {{{inner}}} is empty or repeated"));
            }
            segs.push(RouteSeg::Param(inner.to_string()));
        } else if seg.contains(['{', '}']) {
            return Err(format!(
                "segment {seg:?}: a parameter must be a whole segment"
            ));
        } else {
            segs.push(RouteSeg::Lit(canonical_literal(seg)));
        }
    }
    Ok((method, segs))
}

/// A route's literal segment in the form a request's path has once canonical
/// ([`super::path::canonical`]): `café` is `caf%C3%A9`, `%7Eme` is `~me`, escapes in upper-case
/// hex. Written otherwise, a literal would never match the path it names, and a deny on it
/// would be lost to a parameter route beside it.
fn canonical_literal(seg: &str) -> String {
    let canonical = super::path::canonical(
        &format!("/{seg}"),
        super::path::PathRules {
            encoded_slashes: true,
            semicolons: true,
            ..Default::default()
        },
    );
    let seg = match &canonical {
        Ok(Some(c)) => c.strip_prefix('/').unwrap_or(c),
        _ => seg,
    };
    let mut out = String::with_capacity(seg.len());
    for b in seg.bytes() {
        if b.is_ascii() && b > b' ' && b != 0x7f {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path.split('/')`, by `memchr`: a route is matched for every call, and the generic char
/// searcher was most of that.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'/', r.as_bytes()) {
            Some(at) => {
                rest = Some(&r[at + 1..]);
                Some(&r[..at])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(parse_route("POST /v1/p/{id}/refund").is_ok());
        assert!(parse_route("POST v1").is_err());
        assert!(parse_route("POST /a/{x}{y}").is_err());
        assert!(parse_route("POST /a/{x}/{x}").is_err());
        assert!(parse_route("/a").is_err());
    }

    /// `lookup` answers to `payments.get`: a call to a method `lookup` is not `lookup`.
    #[test]
    fn an_undeclared_method_is_never_a_function_by_its_name() {
        let mut s = Surface::new(Protocol::Jsonrpc, PathRules::default(), None);
        assert_eq!(s.add("lookup", "payments.get", None), Ok(()));
        assert_eq!(s.add("refund", "refund", None), Ok(()));
        assert_eq!(s.function_for("payments.get"), "lookup");
        assert_eq!(s.function_for("refund"), "refund");
        assert_eq!(s.function_for("lookup"), "lookup (undeclared method)");
        assert_eq!(s.function_for("other"), "other");
        assert_eq!(
            s.add("again", "refund", None),
            Err(RouteError::MethodTaken("refund".into()))
        );
    }

    #[test]
    fn a_route_belongs_to_one_function() {
        let mut s = Surface::new(Protocol::Rest, PathRules::default(), None);
        assert_eq!(s.add("a", "a", Some("GET /x/{id}")), Ok(()));
        assert_eq!(
            s.add("b", "b", Some("get /x/{id}")),
            Err(RouteError::Taken("a".into()))
        );
        assert_eq!(s.route("GET", "/X/7/").map(|(f, _)| &**f), Some("a"));
    }

    #[test]
    fn segments_split_as_str_split_does() {
        for path in [
            "",
            "/",
            "//",
            "/v1/items/42",
            "v1/x/",
            "/a//b/",
            "/é/ü",
            "*",
        ] {
            let ours: Vec<&str> = segments(path).collect();
            let std: Vec<&str> = path.split('/').collect();
            assert_eq!(ours, std, "{path:?}");
        }
    }
}

#[cfg(test)]
mod literal_tests {
    use super::*;

    #[test]
    fn a_literal_is_in_the_canonical_form_of_the_paths_it_names() {
        assert_eq!(canonical_literal("café"), "caf%C3%A9");
        assert_eq!(canonical_literal("caf%c3%a9"), "caf%C3%A9");
        assert_eq!(canonical_literal("%7Eme"), "~me");
        assert_eq!(canonical_literal("export.csv"), "export.csv");
        let mut s = Surface::new(
            Protocol::Rest,
            super::super::path::PathRules::default(),
            None,
        );
        s.add("cafe", "cafe", Some("GET /café")).expect("route");
        s.add("page", "page", Some("GET /{page}")).expect("route");
        let canonical = super::super::path::canonical("/caf%c3%a9", Default::default())
            .expect("canonical")
            .expect("changed");
        assert_eq!(
            s.route("GET", &canonical)
                .map(|(f, _)| f.to_string())
                .as_deref(),
            Some("cafe")
        );
    }
}
