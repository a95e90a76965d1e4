//! Request obligations of an allowed call, applied just before it is forwarded: header edits
//! and the credential the gateway holds for a service, which the caller never sees.
//!
//! Secrets are read where the policy says they live and kept for a short while, so that a
//! rotated file or systemd credential takes effect without a restart but a call does not
//! cost a file read. An `oauth2` secret is an access token the gateway gets for itself with
//! the client credentials grant, kept until shortly before it expires. A `token_exchange`
//! secret is one issued for the caller (see [`super::exchange`]). Each comes with the
//! [`Secrets`] scrubber for the answer to its call.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use tracing::debug;

use serde::{Deserialize, Serialize};

use oauth2::{ClientId, ClientSecret, Scope, TokenResponse, TokenUrl, basic::BasicClient};

use crate::{
    obligations::{
        exchange::{ExchangeError, Exchanges, TokenExchangeSource},
        mask::scrub::Secrets,
    },
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
    /// Tokens exchanged for callers (`token_exchange`).
    exchanges: Exchanges,
}

/// Why a call's credential cannot be had: the call must not go out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CredentialError {
    /// A secret that cannot be read or fetched, or does not make a header.
    #[error("{0}")]
    Unavailable(String),
    /// A per-caller token that could not be had.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

impl From<String> for CredentialError {
    fn from(e: String) -> Self {
        Self::Unavailable(e)
    }
}

impl From<&str> for CredentialError {
    fn from(e: &str) -> Self {
        Self::Unavailable(e.into())
    }
}

/// The caller's side of a `token_exchange` credential: its verified bearer token (`Err`: why
/// there is none) and the headers such tokens come in, which do not go upstream with it.
pub struct CallerToken<'h> {
    pub token: Result<String, String>,
    pub carried_in: &'h [HeaderName],
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

    /// Whether `inject`'s credential is exchanged for the caller (and so needs its token).
    pub fn per_caller(inject: Option<&Inject>, named: &BTreeMap<String, SecretRef>) -> bool {
        inject
            .and_then(|i| resolve(&i.from, named).ok())
            .is_some_and(|r| r.token_exchange.is_some())
    }

    /// Applies a decision's header edits and credential to outgoing request headers; returns
    /// the scrubber for the injected secret, which the answer must pass through. An error
    /// means the call must not go out (a credential that cannot be read is not silently left
    /// off). `caller` is needed for a `token_exchange` credential; the caller's own token
    /// then does not go upstream.
    pub async fn apply(
        &self,
        headers: &mut HeaderMap,
        edits: &HeaderEdits,
        inject: Option<&Inject>,
        named: &BTreeMap<String, SecretRef>,
        caller: Option<CallerToken<'_>>,
    ) -> Result<Option<Arc<Secrets>>, CredentialError> {
        for name in &edits.remove {
            headers.remove(name.as_str());
        }
        for (name, value) in &edits.set {
            let (n, v) = header(name, value)?;
            headers.insert(n, v);
        }
        let Some(inject) = inject else {
            return Ok(None);
        };
        let (secret, scrub) = match resolve(&inject.from, named)?.token_exchange.as_deref() {
            None => self.get(&inject.from, named).await?,
            Some(x) => {
                let caller = caller.ok_or_else(|| {
                    ExchangeError::NoCallerToken("the call carries no caller".into())
                })?;
                for h in caller.carried_in {
                    headers.remove(h);
                }
                let subject = caller.token.map_err(ExchangeError::NoCallerToken)?;
                self.exchanged(x, &subject, named).await?
            }
        };
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

    async fn exchanged(
        &self,
        x: &TokenExchangeSource,
        subject: &str,
        named: &BTreeMap<String, SecretRef>,
    ) -> Result<(Arc<str>, Arc<Secrets>), CredentialError> {
        let http = self
            .http
            .as_ref()
            .ok_or("this gateway has no outbound HTTP client for token exchange")?;
        let got = self.exchanges.token(x, subject, named, http).await;
        if let Err(e) = &got {
            debug!(error = %e, "no exchanged token for the caller");
        }
        Ok(got?)
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
        // An OAuth2 access token is scrubbed by its tail, as an exchanged one is; a secret of
        // the operator's whole.
        let scrubbed = match source.oauth2 {
            Some(_) => crate::obligations::mask::scrub::token_tail(&value),
            None => &value,
        };
        // The scrubber's pattern takes milliseconds to build, on this data-path thread: a
        // value re-read unchanged (every 30 s for a file) keeps the one it had.
        let unchanged = self.cache.lock().ok().and_then(|c| {
            c.get(r)
                .filter(|e| e.value == value)
                .map(|e| e.scrub.clone())
        });
        let scrub = match unchanged {
            Some(s) => s,
            None => Secrets::new(&[scrubbed]).map_err(|e| e.to_string())?,
        };
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
    if r.token_exchange.is_some() {
        return Err("a token_exchange token is exchanged per caller, not read".into());
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

/// Where a secret is read from: exactly one of the keys. The secret itself never appears in
/// the policy repository.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A systemd credential (`$CREDENTIALS_DIRECTORY/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systemd: Option<String>,
    /// A name from `callgate.yaml`'s `credentials` (services only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// An access token the gateway gets for itself from an OAuth2 token endpoint (client
    /// credentials grant), kept until shortly before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<Box<OAuth2Source>>,
    /// A token issued for the caller: its verified bearer token exchanged at an OAuth2
    /// token endpoint (RFC 8693), kept per caller until shortly before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<Box<TokenExchangeSource>>,
}

impl SecretRef {
    pub fn count(&self) -> usize {
        [&self.env, &self.file, &self.systemd, &self.credential]
            .iter()
            .filter(|v| v.is_some())
            .count()
            + usize::from(self.oauth2.is_some())
            + usize::from(self.token_exchange.is_some())
    }
}

/// `oauth2:` — where and as whom the gateway gets an upstream's access token.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Source {
    /// The token endpoint (https; http only on loopback).
    pub token_url: String,
    pub client_id: String,
    /// Where the client secret lives: env, file or systemd.
    pub client_secret: SecretRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// RFC 8707 resource indicator, for providers that pick the audience from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `audience` parameter, as some providers (Auth0, Okta) want it instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    pub header: String,
    pub from: SecretRef,
    /// `{}` is replaced by the secret.
    #[serde(default = "plain_format")]
    pub format: String,
    /// Remove a caller-supplied value of the header first (default true).
    #[serde(default = "yes")]
    pub strip_caller_value: bool,
}

fn plain_format() -> String {
    "{}".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_per_caller_credential_without_a_caller_token_fails_closed() {
        let inject: Inject = yaml_serde::from_str(
            "{header: x-upstream-token, from: {token_exchange: \
             {token_url: 'https://idp/token', client_id: gw, audience: ledger}}}",
        )
        .unwrap();
        let named = BTreeMap::new();
        assert!(Credentials::per_caller(Some(&inject), &named));
        let creds = Credentials::default();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer callers-own".parse().unwrap());
        let carried_in = [http::header::AUTHORIZATION];
        let caller = CallerToken {
            token: Err("the request carries no bearer token".into()),
            carried_in: &carried_in,
        };
        let e = creds
            .apply(
                &mut headers,
                &HeaderEdits::default(),
                Some(&inject),
                &named,
                Some(caller),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, CredentialError::Exchange(ExchangeError::NoCallerToken(m)) if m.contains("no bearer")),
            "{e}"
        );
        assert!(headers.get("authorization").is_none(), "never forwarded");
        assert!(headers.get("x-upstream-token").is_none());
        // A plain secret never asks for the caller.
        let plain: Inject =
            yaml_serde::from_str("{header: x-api-key, from: {env: SOME_VAR}}").unwrap();
        assert!(!Credentials::per_caller(Some(&plain), &named));
        assert!(secret(&inject.from, &named).is_err());
    }

    #[tokio::test]
    async fn a_secret_reread_unchanged_keeps_its_scrubber() {
        let dir = std::env::temp_dir().join(format!("callgate-inject-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("k.secret");
        std::fs::write(&file, "first-secret-value\n").unwrap();
        let r: SecretRef = yaml_serde::from_str(&format!("{{file: {:?}}}", file)).unwrap();
        let named = BTreeMap::new();
        let creds = Credentials::default();
        let expire = |creds: &Credentials| {
            for e in creds.cache.lock().unwrap().values_mut() {
                e.until = Instant::now();
            }
        };
        let (v1, s1) = creds.get(&r, &named).await.unwrap();
        expire(&creds);
        let (v2, s2) = creds.get(&r, &named).await.unwrap();
        assert_eq!(v1, v2);
        assert!(
            Arc::ptr_eq(&s1, &s2),
            "re-read unchanged: the same scrubber"
        );
        std::fs::write(&file, "second-secret-value\n").unwrap();
        expire(&creds);
        let (v3, s3) = creds.get(&r, &named).await.unwrap();
        assert_eq!(&*v3, "second-secret-value");
        assert!(
            !Arc::ptr_eq(&s2, &s3),
            "rotated: a scrubber for the new value"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
