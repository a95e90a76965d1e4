//! The identify stage: who is calling. The workload comes from the kernel at connect time
//! and is resolved once per connection ([`workload`]); a bearer token on a request is
//! verified against the OIDC providers the policy repository trusts ([`oidc`]). A token that
//! does not verify leaves the caller unauthenticated with the reason, never half-identified.
pub mod containers;
pub mod oidc;
pub mod outage;
pub mod spec;
pub mod workload;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::HeaderMap;

pub use oidc::{Identity, IdentityConfig, ProviderConfig, TokenError, Verifier};

use crate::call::Caller;

/// The bearer token a request carries, from the configured headers. A value may be
/// `Bearer <token>` or, in a header of its own, the bare token. A header that carries
/// something else (`Authorization: Basic …` for the upstream) is passed over.
///
/// A request must carry one token: the gateway decides on the one it verifies and forwards
/// the request as sent, so a second one (another header, the same header twice, a value that
/// is not text, an `access_token` in the query, which RFC 6750 servers read) would let the
/// call be decided as one identity and run as another. That is [`TwoTokens`].
pub fn bearer<'h>(
    headers: &'h HeaderMap,
    uri: &http::Uri,
    cfg: &IdentityConfig,
) -> Result<Option<&'h str>, TwoTokens> {
    let mut found = None;
    for name in &cfg.token_headers {
        let mut values = headers.get_all(name).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Err(TwoTokens(format!("{name} is given more than once")));
        }
        let v = v
            .to_str()
            .map_err(|_| TwoTokens(format!("{name} is not text")))?
            .trim();
        let authorization = name == http::header::AUTHORIZATION;
        // The scheme ends at the first space or tab: servers split on any whitespace (Django
        // REST framework, Go's strings.Fields), and `Bearer<TAB><t>` read as no token here
        // was a token there.
        let token = match v.split_once([' ', '\t']) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                let rest = rest.trim_matches([' ', '\t']);
                if !is_b64token(rest) {
                    return Err(TwoTokens(format!("{name} is not one bearer token")));
                }
                rest
            }
            // In Authorization, another scheme is the upstream's (Basic, Digest, NTLM…),
            // unless a server could still find a bearer token in it: `Bearer` anywhere
            // (Laravel looks for it anywhere, Flask-JWT-Extended in a comma-separated list),
            // no scheme at all (golang-jwt's extractors take the whole value), or a JWT after
            // a scheme of its own (`JWT <t>` in SimpleJWT, `DPoP <t>` in Spring).
            Some((_, rest)) if authorization => {
                if contains_ignore_case(v, "bearer") || looks_like_jwt(rest.trim()) {
                    return Err(TwoTokens(format!(
                        "{name} carries a token the gateway does not read as a bearer token"
                    )));
                }
                continue;
            }
            None if authorization => {
                return Err(TwoTokens(format!(
                    "{name} has no scheme (`Bearer <token>`)"
                )));
            }
            // A header of the gateway's own carries a bearer token or nothing: `Token <t>`
            // would be one an upstream that strips any scheme reads, and the gateway not.
            Some(_) => {
                return Err(TwoTokens(format!(
                    "{name} carries something other than a bearer token"
                )));
            }
            None if !is_b64token(v) => {
                return Err(TwoTokens(format!("{name} is not one bearer token")));
            }
            None => v,
        };
        match found {
            Some(other) if other != token => {
                return Err(TwoTokens(
                    "two headers carry different bearer tokens".into(),
                ));
            }
            _ => found = Some(token),
        }
    }
    // The query, split as Rack splits it (on `;` too).
    if let Some(q) = uri.query() {
        for part in q.split(';') {
            if let Some((k, _)) =
                form_urlencoded::parse(part.as_bytes()).find(|(k, _)| is_token_name(k))
            {
                return Err(TwoTokens(format!(
                    "the query carries a token ({k}), which the gateway does not verify"
                )));
            }
        }
    }
    // A cookie of a token's name (split on `,` too, its name percent-decoded, as Rack reads
    // it), unless it is the token the gateway verifies.
    for cookie in headers.get_all(http::header::COOKIE) {
        let cookie = String::from_utf8_lossy(cookie.as_bytes());
        let tokens = cookie.split([';', ',']).filter_map(|c| {
            let (n, value) = c.split_once('=')?;
            let n = percent_encoding::percent_decode_str(n.trim()).decode_utf8_lossy();
            is_token_name(&n).then(|| (n.into_owned(), value.trim()))
        });
        for (n, value) in tokens {
            if found != Some(value) {
                return Err(TwoTokens(format!(
                    "a cookie carries a token ({n}), which the gateway does not verify"
                )));
            }
        }
    }
    Ok(found)
}

/// RFC 6750's `b64token`: what a bearer token is made of (Spring's own check).
fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// A JSON Web Token's shape: `eyJ…` with two dots.
fn looks_like_jwt(t: &str) -> bool {
    t.starts_with("eyJ") && t.bytes().filter(|&b| b == b'.').count() == 2
}

fn contains_ignore_case(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// A parameter, field or cookie name that servers read a bearer token from (RFC 6750's
/// `access_token`, Doorkeeper's `bearer_token`, Flask-JWT-Extended's `access_token_cookie`),
/// in any case, as servers normalise names ([`crate::util::param_name`]): brackets around or
/// after it (Rack reads `[access_token]` and `access_token]`, PHP and `qs` `access_token[]x`),
/// `.` and spaces for `_`, leading spaces dropped and a NUL ending it (PHP).
pub fn is_token_name(name: &str) -> bool {
    crate::util::param_name::reads_as(
        name,
        &["access_token", "bearer_token", "access_token_cookie"],
    )
}

/// The name of a REST call's argument that carries a bearer token a server may take (RFC
/// 6750's form parameter `access_token`, which servers read from JSON bodies too, and
/// Doorkeeper's `bearer_token`), in any case; None when there is none.
pub fn token_argument(args: &serde_json::Value) -> Option<&str> {
    let serde_json::Value::Object(args) = args else {
        return None;
    };
    args.keys().map(String::as_str).find(|k| is_token_name(k))
}

/// Why a request's bearer token is not one token (see [`bearer`]).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TwoTokens(pub String);

/// How long a verified (or rejected) token's outcome is reused on one connection. Bounded so
/// that a key withdrawn by the provider stops being honoured soon.
const REUSE: Duration = Duration::from_secs(60);

/// The last token seen on a connection and what it came to: clients send the same token on
/// every request of a keep-alive connection, and a signature check is the dearest step of
/// identifying one.
#[derive(Default)]
pub struct LastToken(Mutex<Option<Seen>>);

struct Seen {
    token: Box<str>,
    caller: Arc<Caller>,
    until: Instant,
}

impl LastToken {
    pub fn get(&self, token: &str) -> Option<Arc<Caller>> {
        let last = self.0.lock().ok()?;
        let seen = last.as_ref()?;
        (&*seen.token == token && Instant::now() < seen.until).then(|| seen.caller.clone())
    }

    pub fn put(&self, token: &str, caller: Arc<Caller>, expires_in: Option<Duration>) {
        let until = Instant::now() + expires_in.map_or(REUSE, |e| e.min(REUSE));
        if let Ok(mut last) = self.0.lock() {
            *last = Some(Seen {
                token: token.into(),
                caller,
                until,
            });
        }
    }
}

/// `base` (the connection's workload) with the outcome of verifying a token.
pub fn caller_with(base: &Caller, outcome: &Result<Identity, TokenError>) -> Caller {
    match outcome {
        Ok(id) => Caller {
            subject: id.subject.clone(),
            groups: id.groups.clone(),
            claims: id.claims.clone(),
            authenticated: true,
            token_error: None,
            provider: Some(id.provider.clone()),
            workload: base.workload.clone(),
        },
        Err(e) => Caller {
            token_error: Some(format!("invalid_token: {e}")),
            workload: base.workload.clone(),
            ..Caller::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(headers: &[&str]) -> IdentityConfig {
        IdentityConfig {
            providers: Vec::new(),
            default_provider: None,
            token_headers: headers.iter().map(|h| h.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn bearer_from_headers() {
        let uri: http::Uri = "/x".parse().unwrap();
        let both = cfg(&["authorization", "x-mcp-token"]);
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(
            bearer(&h, &uri, &cfg(&["authorization"])).ok(),
            Some(Some("abc.def.ghi"))
        );
        h.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(bearer(&h, &uri, &cfg(&["authorization"])).ok(), Some(None));
        // Basic credentials for the upstream beside the token of a header of its own.
        h.insert("x-mcp-token", "tok".parse().unwrap());
        assert_eq!(bearer(&h, &uri, &both).ok(), Some(Some("tok")));
        h.insert("authorization", "bearer  spaced ".parse().unwrap());
        assert!(bearer(&h, &uri, &both).is_err(), "two different tokens");
        h.insert("authorization", "Bearer tok".parse().unwrap());
        assert_eq!(
            bearer(&h, &uri, &both).ok(),
            Some(Some("tok")),
            "the same token"
        );
        h.append("authorization", "Bearer tok".parse().unwrap());
        assert!(bearer(&h, &uri, &both).is_err(), "a token header twice");
        let mut h = HeaderMap::new();
        h.insert(
            "x-mcp-token",
            http::HeaderValue::from_bytes(b"tok\xff").unwrap(),
        );
        assert!(bearer(&h, &uri, &both).is_err(), "not text");
        let query: http::Uri = "/x?a=1&%61ccess_token=t".parse().unwrap();
        assert!(
            bearer(&HeaderMap::new(), &query, &both).is_err(),
            "a query token"
        );
        let query: http::Uri = "/x?Access_Token%5B%5D=t".parse().unwrap();
        assert!(
            bearer(&HeaderMap::new(), &query, &both).is_err(),
            "access_token[]"
        );
        // A tab after the scheme is read as servers read it; anything else run into it, or
        // more than one word after it, is refused.
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer\ttok"),
        );
        assert_eq!(bearer(&h, &uri, &both).ok(), Some(Some("tok")));
        for v in ["Bearer,tok", "Bearer", "Bearer a b", "bearer:tok"] {
            let mut h = HeaderMap::new();
            h.insert("authorization", http::HeaderValue::from_str(v).unwrap());
            assert!(bearer(&h, &uri, &both).is_err(), "{v:?}");
        }
        // Forms of a token some server reads and the gateway would not have.
        for v in [
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "Basic Zm9vOmJhcg==, Bearer tok",
            "Token abc Bearer tok",
            "JWT eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "Bearer tok;",
        ] {
            let mut h = HeaderMap::new();
            h.insert("authorization", http::HeaderValue::from_str(v).unwrap());
            assert!(bearer(&h, &uri, &both).is_err(), "{v:?}");
        }
        for q in [
            "/x?a=1;access_token=t",
            "/x?%5Baccess_token%5D=t",
            "/x?access_token%5D=t",
            "/x?access_token%5B%5Dx=t",
            "/x?access.token=t",
            "/x?access+token=t",
        ] {
            let query: http::Uri = q.parse().unwrap();
            assert!(bearer(&HeaderMap::new(), &query, &both).is_err(), "{q}");
        }
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer tok".parse().unwrap());
        h.insert("cookie", "access_token=tok".parse().unwrap());
        assert_eq!(
            bearer(&h, &uri, &both).ok(),
            Some(Some("tok")),
            "a cookie holding the verified token"
        );
        h.insert(
            "cookie",
            "theme=dark, access%5Ftoken=other".parse().unwrap(),
        );
        assert!(bearer(&h, &uri, &both).is_err(), "a cookie after a comma");
        let mut h = HeaderMap::new();
        h.insert("cookie", "theme=dark; ACCESS_TOKEN=t".parse().unwrap());
        assert!(bearer(&h, &uri, &both).is_err(), "a token cookie");
        h.insert("cookie", "theme=dark; session=s".parse().unwrap());
        assert_eq!(bearer(&h, &uri, &both).ok(), Some(None), "other cookies");
    }

    #[test]
    fn last_token_is_reused_only_for_the_same_token() {
        let last = LastToken::default();
        let c = Arc::new(Caller::default());
        last.put("a", c.clone(), None);
        assert!(last.get("a").is_some());
        assert!(last.get("b").is_none());
        last.put("b", c, Some(Duration::ZERO));
        assert!(last.get("b").is_none());
    }
}
