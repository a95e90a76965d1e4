//! Request obligations of an allowed call, applied just before it is forwarded: header edits
//! and the credential the gateway holds for a service, which the caller never sees.
//!
//! Secrets are read where the policy says they live and kept for a short while, so that a
//! rotated file or systemd credential takes effect without a restart but a call does not
//! cost a file read. An `oauth2` secret is an access token the gateway gets for itself with
//! the client credentials grant, kept until shortly before it expires. Each comes with the
//! [`Secrets`] scrubber for the answer to its call.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue};

use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl, basic::BasicClient};

use crate::{
    obligations::mask::scrub::Secrets,
    policy::Obligations,
    policy::schema::{OAuth2Source, SecretRef},
    util::outbound::{Outbound, chain},
};

/// How long a secret read from its source is used before it is read again.
const REREAD: Duration = Duration::from_secs(30);
/// An access token is replaced this long before its expiry, so none goes out about to lapse.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed for a token whose endpoint does not say.
const TOKEN_DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// The credentials the gateway holds, as last read.
#[derive(Default)]
pub struct Credentials {
    cache: Mutex<HashMap<SecretRef, Read>>,
    /// For `oauth2` secrets; without it they cannot be had.
    http: Option<Outbound>,
    /// One token request at a time: callers arriving meanwhile wait and share its answer.
    fetching: tokio::sync::Mutex<()>,
}

struct Read {
    value: Arc<str>,
    scrub: Arc<Secrets>,
    until: Instant,
}

impl Credentials {
    pub fn new(http: Option<Outbound>) -> Self {
        Self {
            http,
            ..Self::default()
        }
    }

    /// Applies `ob` to outgoing request headers; returns the scrubber for the injected secret,
    /// which the answer must pass through. An error means the call must not go out (a
    /// credential that cannot be read is not silently left off).
    pub async fn apply(
        &self,
        headers: &mut HeaderMap,
        ob: &Obligations,
        named: &BTreeMap<String, SecretRef>,
    ) -> Result<Option<Arc<Secrets>>, String> {
        for name in &ob.headers.remove {
            headers.remove(name.as_str());
        }
        for (name, value) in &ob.headers.set {
            let (n, v) = header(name, value)?;
            headers.insert(n, v);
        }
        let Some(inject) = &ob.inject else {
            return Ok(None);
        };
        let (secret, scrub) = self.get(&inject.from, named).await?;
        let (n, mut v) =
            header(&inject.header, &inject.format.replace("{}", &secret)).map_err(|_| {
                format!(
                    "credential for {} is not a valid header value",
                    inject.header
                )
            })?;
        v.set_sensitive(true);
        if inject.strip_caller_value {
            headers.remove(&n);
        }
        headers.append(n, v);
        Ok(Some(scrub))
    }

    async fn get(
        &self,
        r: &SecretRef,
        named: &BTreeMap<String, SecretRef>,
    ) -> Result<(Arc<str>, Arc<Secrets>), String> {
        if let Some(hit) = self.cached(r) {
            return Ok(hit);
        }
        let source = resolve(r, named)?;
        let (value, lifetime) = match &source.oauth2 {
            None => (secret(source, named)?, REREAD),
            Some(o) => {
                let _one = self.fetching.lock().await;
                if let Some(hit) = self.cached(r) {
                    return Ok(hit);
                }
                let http = self
                    .http
                    .as_ref()
                    .ok_or("this gateway has no outbound HTTP client for OAuth2 tokens")?;
                let (token, expires_in) = token(o, named, http).await?;
                let lifetime = expires_in
                    .unwrap_or(TOKEN_DEFAULT_LIFETIME)
                    .saturating_sub(TOKEN_MARGIN)
                    .max(Duration::from_secs(1));
                (token, lifetime)
            }
        };
        let value: Arc<str> = value.into();
        let scrub = Secrets::new(&[&value]).ok_or("the credential is empty")?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(
                r.clone(),
                Read {
                    value: value.clone(),
                    scrub: scrub.clone(),
                    until: Instant::now() + lifetime,
                },
            );
        }
        Ok((value, scrub))
    }

    fn cached(&self, r: &SecretRef) -> Option<(Arc<str>, Arc<Secrets>)> {
        let now = Instant::now();
        self.cache.lock().ok().and_then(|c| {
            c.get(r)
                .filter(|e| e.until > now)
                .map(|e| (e.value.clone(), e.scrub.clone()))
        })
    }
}

/// A named credential's definition, or `r` itself.
fn resolve<'r>(
    r: &'r SecretRef,
    named: &'r BTreeMap<String, SecretRef>,
) -> Result<&'r SecretRef, String> {
    let Some(name) = &r.credential else {
        return Ok(r);
    };
    let inner = named
        .get(name)
        .ok_or_else(|| format!("credential {name:?} is not defined"))?;
    if inner.credential.is_some() {
        return Err(format!("credential {name:?} refers to another credential"));
    }
    Ok(inner)
}

/// An access token from `o`'s token endpoint (client credentials grant), and how long it
/// lives if the endpoint says.
async fn token(
    o: &OAuth2Source,
    named: &BTreeMap<String, SecretRef>,
    http: &Outbound,
) -> Result<(String, Option<Duration>), String> {
    let fail = |e: String| format!("OAuth2 token from {}: {e}", o.token_url);
    let secret =
        secret(&o.client_secret, named).map_err(|e| fail(format!("client secret: {e}")))?;
    let url = TokenUrl::new(o.token_url.clone()).map_err(|e| fail(e.to_string()))?;
    let client = BasicClient::new(ClientId::new(o.client_id.clone()))
        .set_client_secret(ClientSecret::new(secret))
        .set_token_uri(url);
    let mut req = client.exchange_client_credentials();
    for s in &o.scopes {
        req = req.add_scope(Scope::new(s.clone()));
    }
    if let Some(r) = &o.resource {
        req = req.add_extra_param("resource", r.clone());
    }
    if let Some(a) = &o.audience {
        req = req.add_extra_param("audience", a.clone());
    }
    let resp = req.request_async(http).await.map_err(|e| fail(chain(&e)))?;
    Ok((resp.access_token().secret().clone(), resp.expires_in()))
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::try_from(name).map_err(|_| format!("bad header name {name:?}"))?;
    let v = HeaderValue::try_from(value).map_err(|_| format!("bad value for header {name}"))?;
    Ok((n, v))
}

/// Reads a secret from where the policy says it is; trailing newlines of files are dropped.
/// (`oauth2` secrets are tokens to be fetched, see [`Credentials`].)
pub fn secret(r: &SecretRef, named: &BTreeMap<String, SecretRef>) -> Result<String, String> {
    let r = resolve(r, named)?;
    if r.oauth2.is_some() {
        return Err("an OAuth2 token is fetched, not read".into());
    }
    if let Some(var) = &r.env {
        return std::env::var(var).map_err(|_| format!("environment variable {var} is not set"));
    }
    let file = match (&r.file, &r.systemd) {
        (Some(f), _) => std::path::PathBuf::from(f),
        (None, Some(name)) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                .ok_or("no systemd credentials (CREDENTIALS_DIRECTORY is not set)")?;
            std::path::Path::new(&dir).join(name)
        }
        (None, None) => return Err("no secret source".into()),
    };
    std::fs::read_to_string(&file)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|e| format!("reading {}: {e}", file.display()))
}
