//! OIDC bearer tokens: the providers the policy repository trusts, their signing keys, and
//! verification of a token into an [`Identity`].
//!
//! Keys come from each provider's discovery document and JWKS; `openidconnect` fetches and
//! parses them and checks signatures. They are fetched when a provider is configured,
//! refreshed on a timer and, rate-limited, when a token names a key not seen yet (rotation).
//! A provider that cannot be reached keeps its last keys for `jwks_max_age_s`; after that
//! its tokens are not accepted, so rules that need an OIDC identity fail closed.
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crate::util::sync::LockExt;
use arc_swap::{ArcSwap, ArcSwapOption};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::HeaderName;
use openidconnect::{
    AsyncHttpClient, HttpRequest, HttpResponse, IssuerUrl, JsonWebKey, JsonWebKeySet,
    JsonWebKeySetUrl,
    core::{CoreJsonWebKey, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm, CoreProviderMetadata},
};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tracing::{debug, info, warn};

use crate::{
    identity::spec,
    util::jsonpath::JsonPath,
    util::outbound::{Outbound, OutboundError, chain},
};

/// Longest token looked at; real ones are a few KiB.
const MAX_TOKEN: usize = 16 * 1024;

/// Algorithms a provider's tokens may be signed with unless the policy narrows them: every
/// asymmetric one. HMAC is never among them (its "key" would be the provider's public key).
const ASYMMETRIC: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// `identity:` of `callgate.yaml`, checked.
#[derive(Debug)]
pub struct IdentityConfig {
    pub providers: Vec<Arc<ProviderConfig>>,
    /// The provider a rule's groups, subjects and claims belong to when it names none:
    /// `default_provider`, or the only provider. `None` with several providers and no
    /// default: such rules do not compile.
    pub default_provider: Option<String>,
    pub token_headers: Vec<HeaderName>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            default_provider: None,
            token_headers: vec![http::header::AUTHORIZATION],
        }
    }
}

/// One trusted provider.
#[derive(Debug)]
pub struct ProviderConfig {
    /// As written, to tell on reload whether the provider changed (and its keys must go).
    pub source: spec::Provider,
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub groups: JsonPath,
    pub algorithms: Vec<CoreJwsSigningAlgorithm>,
    pub skew_s: f64,
    pub refresh: Duration,
    pub max_age: Duration,
    pub unknown_key_refresh: Duration,
}

impl IdentityConfig {
    /// Checks `identity:`; problems go to `err` with the path of the key at fault.
    pub fn compile(id: &spec::Identity, err: &mut dyn FnMut(&[&str], String)) -> Self {
        let mut token_headers = Vec::new();
        for h in &id.token_headers {
            match HeaderName::try_from(h.as_str()) {
                Ok(n) => token_headers.push(n),
                Err(_) => err(
                    &["identity", "token_headers"],
                    format!("{h:?} is not a header name"),
                ),
            }
        }
        if id.token_headers.is_empty() && !id.providers.is_empty() {
            err(
                &["identity", "token_headers"],
                "name at least one header a token is read from".into(),
            );
        }
        let mut providers: Vec<Arc<ProviderConfig>> = Vec::new();
        for (i, p) in id.providers.iter().enumerate() {
            let at = i.to_string();
            let mut perr = |key: &str, msg: String| err(&["identity", "providers", &at, key], msg);
            if providers
                .iter()
                .any(|q| q.name == p.name || q.issuer == p.issuer)
            {
                perr("name", "another provider has this name or issuer".into());
                continue;
            }
            if let Some(c) = ProviderConfig::compile(p, &mut perr) {
                providers.push(Arc::new(c));
            }
        }
        let default_provider = match &id.default_provider {
            Some(name) if id.providers.iter().any(|p| p.name == *name) => Some(name.clone()),
            Some(name) => {
                err(
                    &["identity", "default_provider"],
                    format!("{name:?} is not one of identity.providers"),
                );
                None
            }
            None => match providers.as_slice() {
                [only] => Some(only.name.clone()),
                _ => None,
            },
        };
        Self {
            providers,
            default_provider,
            token_headers,
        }
    }

    /// Whether `name` is a configured provider.
    pub fn has_provider(&self, name: &str) -> bool {
        self.providers.iter().any(|p| p.name == name)
    }
}

impl ProviderConfig {
    fn compile(p: &spec::Provider, err: &mut dyn FnMut(&str, String)) -> Option<Self> {
        let mut ok = true;
        let mut fail = |key: &str, msg: String| {
            ok = false;
            err(key, msg)
        };
        if p.name.is_empty() {
            fail("name", "a provider needs a name".into());
        }
        if let Err(e) = crate::util::outbound::check_url(&p.issuer) {
            fail("issuer", format!("the issuer {e}"));
        }
        if p.audiences.is_empty() {
            fail(
                "audiences",
                "name the audiences accepted: a token meant for another service must not be replayed here"
                    .into(),
            );
        }
        let groups = match claim_path(&p.groups_claim) {
            Ok(g) => Some(g),
            Err(e) => {
                fail("groups_claim", e.to_string());
                None
            }
        };
        let names: Vec<&str> = if p.algorithms.is_empty() {
            ASYMMETRIC.to_vec()
        } else {
            p.algorithms.iter().map(String::as_str).collect()
        };
        let mut algorithms = Vec::new();
        for a in names {
            if a.eq_ignore_ascii_case("none") {
                fail(
                    "algorithms",
                    "`none` is never accepted: a token must be signed".into(),
                );
            } else if a.to_ascii_uppercase().starts_with("HS") {
                fail(
                    "algorithms",
                    format!("{a}: HMAC is not accepted, a provider's published key is public"),
                );
            } else if !ASYMMETRIC.contains(&a) {
                fail(
                    "algorithms",
                    format!("unknown algorithm {a:?} (known: {})", ASYMMETRIC.join(", ")),
                );
            } else if let Ok(alg) = serde_json::from_value(Json::String(a.into())) {
                algorithms.push(alg);
            }
        }
        let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
        let refresh = secs(p.jwks_refresh_s, 300);
        let max_age = secs(p.jwks_max_age_s, 86_400);
        if refresh.is_zero() || max_age.is_zero() {
            fail(
                "jwks_refresh_s",
                "key refresh and key age must be at least 1 s".into(),
            );
        }
        Some(Self {
            source: p.clone(),
            name: p.name.clone(),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            groups: groups?,
            algorithms,
            skew_s: p.clock_skew_s.unwrap_or(60) as f64,
            refresh,
            max_age,
            unknown_key_refresh: secs(p.unknown_key_refresh_s, 30),
        })
        .filter(|_| ok)
    }
}

/// Why a presented token identifies nobody. The text is what policy and records see after
/// `invalid_token: `.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("alg none: an unsigned token is never accepted")]
    AlgNone,
    #[error("algorithm {0} is not accepted from this provider")]
    Algorithm(String),
    #[error("unknown issuer {0:?}")]
    UnknownIssuer(String),
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    #[error("bad signature")]
    BadSignature,
    #[error("expired {0:.0} s ago")]
    Expired(f64),
    #[error("not yet valid")]
    NotYetValid,
    #[error("issued in the future")]
    IssuedInFuture,
    #[error("wrong audience (token for {0}, accepted: {1})")]
    WrongAudience(String, String),
    #[error("keys expired: provider {0} has not answered for {1} s")]
    KeysExpired(String, u64),
    #[error("keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// A verified token's caller.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    /// The provider's name in `callgate.yaml`.
    pub provider: String,
    /// `sub`, or `client_id` for a client-credentials token that has none.
    pub subject: Option<String>,
    pub groups: Vec<String>,
    pub claims: Json,
    /// Seconds until `exp`.
    pub expires_in: Duration,
}

/// What `status` shows for a provider.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderStatus {
    pub name: String,
    pub issuer: String,
    pub keys: usize,
    /// Seconds since the keys in use were fetched.
    pub keys_age_s: Option<u64>,
    /// Tokens from this provider can be verified now.
    pub usable: bool,
    pub fetches: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

/// Verifies tokens against the providers of the policy in force.
pub struct Verifier {
    http: Outbound,
    runtime: tokio::runtime::Handle,
    active: ArcSwap<Active>,
    configuring: Mutex<()>,
}

struct Active {
    config: Arc<IdentityConfig>,
    issuers: Vec<Arc<Issuer>>,
}

struct Issuer {
    cfg: Arc<ProviderConfig>,
    keys: ArcSwapOption<Keys>,
    /// One fetch at a time; what it learnt.
    fetch: tokio::sync::Mutex<FetchState>,
    health: Mutex<Health>,
}

struct Keys {
    set: Vec<CoreJsonWebKey>,
    fetched_at: Instant,
}

#[derive(Default)]
struct FetchState {
    jwks_uri: Option<JsonWebKeySetUrl>,
    last_on_demand: Option<Instant>,
}

#[derive(Default)]
struct Health {
    fetches: u64,
    failures: u64,
    last_error: Option<String>,
}

impl Verifier {
    /// Must be called inside the runtime that will refresh keys.
    pub fn new(http: Outbound) -> Self {
        Self {
            http,
            runtime: tokio::runtime::Handle::current(),
            active: ArcSwap::from_pointee(Active {
                config: Arc::new(IdentityConfig::default()),
                issuers: Vec::new(),
            }),
            configuring: Mutex::new(()),
        }
    }

    /// Puts `cfg` in force. Providers that did not change keep their keys; new ones start
    /// fetching at once. Cheap when `cfg` is the one already in force.
    pub fn configure(&self, cfg: &Arc<IdentityConfig>) {
        if Arc::ptr_eq(&self.active.load().config, cfg) {
            return;
        }
        let _one = self.configuring.locked();
        let old = self.active.load_full();
        if Arc::ptr_eq(&old.config, cfg) {
            return;
        }
        let issuers = cfg
            .providers
            .iter()
            .map(|p| {
                old.issuers
                    .iter()
                    .find(|i| i.cfg.source == p.source)
                    .cloned()
                    .unwrap_or_else(|| self.start(p.clone()))
            })
            .collect();
        self.active.store(Arc::new(Active {
            config: cfg.clone(),
            issuers,
        }));
    }

    fn start(&self, cfg: Arc<ProviderConfig>) -> Arc<Issuer> {
        let issuer = Arc::new(Issuer {
            cfg,
            keys: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            health: Mutex::new(Health::default()),
        });
        self.runtime
            .spawn(refresh_loop(Arc::downgrade(&issuer), self.http.clone()));
        issuer
    }

    /// Waits (bounded) until every provider has had its first fetch; for start-up logs.
    pub async fn ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for issuer in &self.active.load().issuers {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, async {
                while issuer.health().fetches == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
    }

    pub fn status(&self) -> Vec<ProviderStatus> {
        self.active
            .load()
            .issuers
            .iter()
            .map(|i| {
                let keys = i.keys.load_full();
                let h = i.health();
                ProviderStatus {
                    name: i.cfg.name.clone(),
                    issuer: i.cfg.issuer.clone(),
                    keys: keys.as_ref().map_or(0, |k| k.set.len()),
                    keys_age_s: keys.as_ref().map(|k| k.fetched_at.elapsed().as_secs()),
                    usable: keys
                        .as_ref()
                        .is_some_and(|k| k.fetched_at.elapsed() < i.cfg.max_age),
                    fetches: h.fetches,
                    failures: h.failures,
                    last_error: h.last_error,
                }
            })
            .collect()
    }

    /// Verifies `token`: signature by a current key of the provider named in `iss`, the
    /// algorithm, `exp`, `nbf`, `iat` and `aud`.
    pub async fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let jwt = Jwt::parse(token)?;
        let active = self.active.load_full();
        let iss = jwt
            .claims
            .get("iss")
            .and_then(Json::as_str)
            .ok_or_else(|| TokenError::Malformed("no iss claim".into()))?;
        let issuer = active
            .issuers
            .iter()
            .find(|i| i.cfg.issuer == iss)
            .ok_or_else(|| TokenError::UnknownIssuer(iss.into()))?;
        let cfg = &issuer.cfg;
        let alg = jwt.alg()?;
        if !cfg.algorithms.contains(&alg) {
            return Err(TokenError::Algorithm(jwt.alg_name().into()));
        }
        let kid = jwt.header.get("kid").and_then(Json::as_str);
        let keys = self.keys_for(issuer, kid).await?;
        let good = keys.matching(kid).any(|k| {
            k.verify_signature(&alg, jwt.signing_input.as_bytes(), &jwt.signature)
                .is_ok()
        });
        if !good {
            return Err(TokenError::BadSignature);
        }
        let expires_in = check_claims(&jwt.claims, cfg, unix_now())?;
        Ok(identity(cfg, jwt.claims, expires_in))
    }

    /// Keys of `issuer` that include `kid`, fetched now if need be and allowed.
    async fn keys_for(&self, issuer: &Issuer, kid: Option<&str>) -> Result<Arc<Keys>, TokenError> {
        let current = issuer.keys.load_full();
        let usable = |k: &Arc<Keys>| k.fetched_at.elapsed() < issuer.cfg.max_age;
        if let Some(k) = current.as_ref().filter(|k| usable(k)) {
            if k.matching(kid).next().is_some() {
                return Ok(k.clone());
            }
        }
        if issuer.fetch_on_demand(&self.http, current.as_ref()).await {
            if let Some(k) = issuer.keys.load_full().filter(|k| usable(k)) {
                if k.matching(kid).next().is_some() {
                    return Ok(k);
                }
            }
        }
        match issuer.keys.load_full() {
            None => Err(TokenError::KeysUnavailable(
                issuer
                    .health()
                    .last_error
                    .unwrap_or_else(|| "not fetched yet".into()),
            )),
            Some(k) if !usable(&k) => Err(TokenError::KeysExpired(
                issuer.cfg.name.clone(),
                k.fetched_at.elapsed().as_secs(),
            )),
            Some(_) => Err(TokenError::UnknownKey(kid.unwrap_or("(none)").into())),
        }
    }
}

impl Keys {
    /// Signing keys a token with header `kid` may be checked with.
    fn matching<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a CoreJsonWebKey> {
        self.set.iter().filter(move |k| {
            !matches!(k.key_use(), Some(u) if *u != CoreJsonWebKeyUse::Signature)
                && match kid {
                    Some(kid) => k.key_id().is_some_and(|id| id.as_str() == kid),
                    None => true,
                }
        })
    }
}

impl Issuer {
    fn health(&self) -> Health {
        let h = self.health.locked();
        Health {
            fetches: h.fetches,
            failures: h.failures,
            last_error: h.last_error.clone(),
        }
    }

    /// A fetch a token asked for (its key is unknown, or there are no usable keys): true
    /// when new keys are in place. At most one per `unknown_key_refresh`.
    async fn fetch_on_demand(&self, http: &Outbound, seen: Option<&Arc<Keys>>) -> bool {
        let mut st = self.fetch.lock().await;
        // Someone fetched while this waited for the lock.
        let now = self.keys.load_full();
        if let Some(now) = &now {
            if seen.is_none_or(|s| !Arc::ptr_eq(s, now)) {
                return true;
            }
        }
        if st
            .last_on_demand
            .is_some_and(|t| t.elapsed() < self.cfg.unknown_key_refresh)
        {
            return false;
        }
        st.last_on_demand = Some(Instant::now());
        self.fetch_locked(&mut st, http).await.is_ok()
    }

    async fn fetch(&self, http: &Outbound) -> Result<usize, String> {
        let mut st = self.fetch.lock().await;
        self.fetch_locked(&mut st, http).await
    }

    async fn fetch_locked(&self, st: &mut FetchState, http: &Outbound) -> Result<usize, String> {
        let result = self.fetch_keys(st, http).await;
        let mut h = self.health.locked();
        h.fetches += 1;
        match result {
            Ok(set) => {
                let n = set.len();
                self.keys.store(Some(Arc::new(Keys {
                    set,
                    fetched_at: Instant::now(),
                })));
                h.last_error = None;
                Ok(n)
            }
            Err(e) => {
                h.failures += 1;
                h.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn fetch_keys(
        &self,
        st: &mut FetchState,
        http: &Outbound,
    ) -> Result<Vec<CoreJsonWebKey>, String> {
        if let Some(uri) = &st.jwks_uri {
            match JsonWebKeySet::<CoreJsonWebKey>::fetch_async(uri, http).await {
                Ok(set) => return Ok(set.keys().clone()),
                // The provider may have moved its keys: discover again.
                Err(e) => {
                    debug!(provider = %self.cfg.name, error = %chain(&e), "key set fetch failed")
                }
            }
        }
        let url = IssuerUrl::new(self.cfg.issuer.clone()).map_err(|e| e.to_string())?;
        let meta = CoreProviderMetadata::discover_async(url, http)
            .await
            .map_err(|e| format!("discovery at {}: {}", self.cfg.issuer, chain(&e)))?;
        st.jwks_uri = Some(meta.jwks_uri().clone());
        let keys = meta.jwks().keys().clone();
        if keys.is_empty() {
            return Err(format!("{} publishes no signing keys", self.cfg.issuer));
        }
        Ok(keys)
    }
}

/// Keeps an issuer's keys fresh until the issuer is dropped (its provider left the policy).
async fn refresh_loop(issuer: Weak<Issuer>, http: Outbound) {
    let mut failures: u32 = 0;
    loop {
        let Some(i) = issuer.upgrade() else { return };
        let wait = match i.fetch(&http).await {
            Ok(n) => {
                if failures > 0 || i.health().fetches == 1 {
                    info!(provider = %i.cfg.name, issuer = %i.cfg.issuer, keys = n, "OIDC signing keys fetched");
                }
                failures = 0;
                i.cfg.refresh
            }
            Err(e) => {
                failures += 1;
                warn!(
                    provider = %i.cfg.name, error = %e,
                    "cannot fetch OIDC signing keys; the last ones stay in use until {} s old",
                    i.cfg.max_age.as_secs()
                );
                Duration::from_secs(1 << failures.min(6)).min(i.cfg.refresh)
            }
        };
        drop(i);
        tokio::time::sleep(wait).await;
    }
}

/// A compact JWS, decoded but not yet trusted.
struct Jwt<'t> {
    header: Json,
    claims: Json,
    signing_input: &'t str,
    signature: Vec<u8>,
}

impl<'t> Jwt<'t> {
    fn parse(token: &'t str) -> Result<Self, TokenError> {
        let bad = |m: &str| TokenError::Malformed(m.into());
        if token.len() > MAX_TOKEN {
            return Err(bad("longer than 16 KiB"));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts[..] else {
            return Err(if parts.len() == 5 {
                bad("encrypted tokens (JWE) are not accepted")
            } else {
                bad("not a JWT")
            });
        };
        let json = |part: &str, what: &str| -> Result<Json, TokenError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| bad(&format!("{what} is not base64url")))?;
            match serde_json::from_slice(&bytes) {
                Ok(v @ Json::Object(_)) => Ok(v),
                _ => Err(bad(&format!("{what} is not a JSON object"))),
            }
        };
        let header = json(h, "header")?;
        if header.get("crit").is_some() {
            return Err(bad("critical header extensions are not supported"));
        }
        Ok(Self {
            header,
            claims: json(p, "payload")?,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature: URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| bad("signature is not base64url"))?,
        })
    }

    fn alg_name(&self) -> &str {
        self.header.get("alg").and_then(Json::as_str).unwrap_or("")
    }

    fn alg(&self) -> Result<CoreJwsSigningAlgorithm, TokenError> {
        let name = self.alg_name();
        if name.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgNone);
        }
        serde_json::from_value(Json::String(name.into()))
            .map_err(|_| TokenError::Algorithm(name.into()))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The time claims and the audience; how long the token has left.
fn check_claims(c: &Json, cfg: &ProviderConfig, now: f64) -> Result<Duration, TokenError> {
    let num = |name: &str| -> Result<Option<f64>, TokenError> {
        match c.get(name) {
            None | Some(Json::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| TokenError::Malformed(format!("{name} is not a number"))),
        }
    };
    let skew = cfg.skew_s;
    let exp = num("exp")?.ok_or_else(|| TokenError::Malformed("no exp claim".into()))?;
    if now > exp + skew {
        return Err(TokenError::Expired(now - exp));
    }
    if num("nbf")?.is_some_and(|nbf| nbf > now + skew) {
        return Err(TokenError::NotYetValid);
    }
    if num("iat")?.is_some_and(|iat| iat > now + skew) {
        return Err(TokenError::IssuedInFuture);
    }
    let aud: Vec<&str> = match c.get("aud") {
        Some(Json::String(a)) => vec![a.as_str()],
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    };
    if !aud
        .iter()
        .any(|a| cfg.audiences.iter().any(|want| want == a))
    {
        return Err(TokenError::WrongAudience(
            if aud.is_empty() {
                "nobody".into()
            } else {
                aud.join(", ")
            },
            cfg.audiences.join(", "),
        ));
    }
    Ok(Duration::from_secs_f64((exp - now).max(0.0)))
}

/// A claim name (`groups`) or path (`realm_access.roles`, `$.a.b`) as a JSON path.
pub fn claim_path(claim: &str) -> Result<JsonPath, crate::util::jsonpath::PathError> {
    if claim.starts_with('$') || !claim.contains('.') {
        JsonPath::parse(claim)
    } else {
        JsonPath::parse(&format!("$.{claim}"))
    }
}

/// The groups at `path` in a token's claims: a string or an array of strings.
pub fn groups_at(path: &JsonPath, claims: &Json) -> Vec<String> {
    let mut groups = Vec::new();
    path.visit(claims, &mut |v| {
        match v {
            Json::String(s) => groups.push(s.clone()),
            Json::Array(a) => groups.extend(a.iter().filter_map(Json::as_str).map(str::to_string)),
            _ => {}
        }
        true
    });
    groups
}

fn identity(cfg: &ProviderConfig, claims: Json, expires_in: Duration) -> Identity {
    let subject = ["sub", "client_id"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Json::as_str))
        .map(str::to_string);
    Identity {
        provider: cfg.name.clone(),
        subject,
        groups: groups_at(&cfg.groups, &claims),
        claims,
        expires_in,
    }
}

// A named future type keeps `Send` provable for the spawned refresh task (a closure client
// trips the compiler's higher-ranked lifetime inference).
impl<'c> AsyncHttpClient<'c> for Outbound {
    type Error = OutboundError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, OutboundError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(yaml: &str) -> (Option<ProviderConfig>, Vec<String>) {
        let p: spec::Provider = yaml_serde::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        let c = ProviderConfig::compile(&p, &mut |k, m| errors.push(format!("{k}: {m}")));
        (c, errors)
    }

    #[test]
    fn provider_config_refuses_unsafe_settings() {
        let (_, e) = provider("{name: a, issuer: 'http://idp.example', audiences: [x]}");
        assert!(e[0].contains("https"), "{e:?}");
        let (_, e) = provider("{name: a, issuer: 'https://idp.example'}");
        assert!(e[0].starts_with("audiences"), "{e:?}");
        let (_, e) = provider(
            "{name: a, issuer: 'https://idp.example', audiences: [x], algorithms: [none, HS256, XS1]}",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        let (c, e) = provider(
            "{name: a, issuer: 'http://127.0.0.1:9/', audiences: [x], groups_claim: realm_access.roles}",
        );
        assert!(e.is_empty(), "{e:?}");
        let c = c.unwrap();
        assert_eq!(c.algorithms.len(), ASYMMETRIC.len());
        let claims = serde_json::json!({"sub": "s", "realm_access": {"roles": ["r1", "r2"]}});
        let id = identity(&c, claims, Duration::ZERO);
        assert_eq!(id.groups, ["r1", "r2"]);
    }

    fn b64(v: &Json) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn jwt_parsing_rejects_what_is_not_a_signed_jwt() {
        let h = b64(&serde_json::json!({"alg": "none"}));
        let p = b64(&serde_json::json!({"iss": "x"}));
        let t = format!("{h}.{p}.");
        assert_eq!(Jwt::parse(&t).unwrap().alg(), Err(TokenError::AlgNone));
        assert!(matches!(Jwt::parse("a.b"), Err(TokenError::Malformed(_))));
        assert!(matches!(
            Jwt::parse("a.b.c.d.e"),
            Err(TokenError::Malformed(m)) if m.contains("JWE")
        ));
        let crit = b64(&serde_json::json!({"alg": "RS256", "crit": ["x"]}));
        assert!(Jwt::parse(&format!("{crit}.{p}.c2ln")).is_err());
    }

    #[test]
    fn claims_are_checked_with_skew() {
        let (c, _) = provider(
            "{name: a, issuer: 'https://idp.example', audiences: [api], clock_skew_s: 10}",
        );
        let c = c.unwrap();
        let now = 1_000_000.0;
        let ok = serde_json::json!({"exp": now + 60.0, "iat": now, "aud": ["other", "api"]});
        assert!(check_claims(&ok, &c, now).is_ok());
        let late = serde_json::json!({"exp": now - 5.0, "aud": "api"});
        assert!(check_claims(&late, &c, now).is_ok(), "within skew");
        let expired = serde_json::json!({"exp": now - 30.0, "aud": "api"});
        assert!(matches!(
            check_claims(&expired, &c, now),
            Err(TokenError::Expired(_))
        ));
        let early = serde_json::json!({"exp": now + 60.0, "nbf": now + 30.0, "aud": "api"});
        assert_eq!(check_claims(&early, &c, now), Err(TokenError::NotYetValid));
        let aud = serde_json::json!({"exp": now + 60.0, "aud": "else"});
        assert!(matches!(
            check_claims(&aud, &c, now),
            Err(TokenError::WrongAudience(..))
        ));
        let no_exp = serde_json::json!({"aud": "api"});
        assert!(matches!(
            check_claims(&no_exp, &c, now),
            Err(TokenError::Malformed(_))
        ));
    }
}
