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

/// The bearer token a request carries, from the first configured header present. A value
/// may be `Bearer <token>` or, in a header of its own, the bare token.
pub fn bearer<'h>(headers: &'h HeaderMap, cfg: &IdentityConfig) -> Option<&'h str> {
    cfg.token_headers.iter().find_map(|name| {
        let v = headers.get(name)?.to_str().ok()?.trim();
        let token = match v.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            Some(_) => return None,
            None if name == http::header::AUTHORIZATION => return None,
            None => v,
        };
        (!token.is_empty()).then_some(token)
    })
}

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
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&h, &cfg(&["authorization"])), Some("abc.def.ghi"));
        h.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        assert_eq!(bearer(&h, &cfg(&["authorization"])), None);
        h.insert("x-mcp-token", "tok".parse().unwrap());
        assert_eq!(
            bearer(&h, &cfg(&["authorization", "x-mcp-token"])),
            Some("tok")
        );
        h.insert("authorization", "bearer  spaced ".parse().unwrap());
        assert_eq!(
            bearer(&h, &cfg(&["authorization", "x-mcp-token"])),
            Some("spaced")
        );
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
