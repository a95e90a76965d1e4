//! Per-caller upstream tokens: OAuth 2.0 Token Exchange (RFC 8693). The caller's verified
//! bearer token is the subject token, exchanged at the provider's token endpoint for a token
//! issued to the upstream (its `audience` / `resource`, `scopes`), so that the upstream sees
//! the real caller and not a shared service account.
//!
//! Issued tokens are kept per (caller token, source) until shortly before they expire, in a
//! bounded cache; concurrent calls of one caller share one exchange. A refused exchange is
//! remembered briefly, so that a caller retrying in a loop does not hammer the provider. The
//! exchange is one bounded async HTTP call on the gateway's own client: it never blocks a
//! thread, and a provider that does not answer fails the call closed within `timeout_s`.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use http::header;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::{
    obligations::{
        inject::{SecretRef, secret},
        mask::scrub::Secrets,
    },
    util::outbound::Outbound,
};

/// RFC 8693 §2.1 `grant_type`.
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Issued tokens kept at most; past it, expired ones go first, then those expiring soonest.
/// Each carries its own scrubber (about 120 KiB), which is what bounds this.
const MAX_CACHED: usize = 512;
/// An issued token is replaced this long before its expiry (less for very short lifetimes).
const MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed for an issued token whose provider does not say.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// How long a refused exchange is answered from memory.
const REFUSED_FOR: Duration = Duration::from_secs(5);
/// Default bound on one exchange (connect, send, answer).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `token_exchange:` — where and as whom the gateway exchanges the caller's token.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeSource {
    /// The token endpoint (https; http only on loopback).
    pub token_url: String,
    /// The gateway's client at the provider.
    pub client_id: String,
    /// Where the client secret lives: env, file or systemd. Without one, the gateway is a
    /// public client and sends only its `client_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SecretRef>,
    /// How the client authenticates: `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// `audience` parameter: the logical name of the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// `resource` parameter: the upstream's URI (RFC 8707).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// What the caller's token is: `access_token` (default) or `jwt`.
    #[serde(default)]
    pub subject_token_type: SubjectTokenType,
    /// `requested_token_type`, if the provider needs one (a token type URN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_token_type: Option<String>,
    /// Bound on one exchange, seconds (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum SubjectTokenType {
    #[default]
    AccessToken,
    Jwt,
}

impl SubjectTokenType {
    fn urn(self) -> &'static str {
        match self {
            Self::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
            Self::Jwt => "urn:ietf:params:oauth:token-type:jwt",
        }
    }
}

impl TokenExchangeSource {
    fn timeout(&self) -> Duration {
        self.timeout_s
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
            .clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

/// Why no exchanged token could be had; each says what the call's refusal and record say.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExchangeError {
    /// The call carries no verified bearer token to exchange.
    #[error("no verified caller token to exchange: {0}")]
    NoCallerToken(String),
    /// The provider answered, and said no (a 4xx).
    #[error("token exchange at {url} refused: {reason}")]
    Refused { url: String, reason: String },
    /// The provider could not be asked, did not answer in time, failed, or answered nonsense.
    #[error("token exchange at {url} failed: {reason}")]
    Unavailable { url: String, reason: String },
}

type Outcome = Result<(Arc<str>, Arc<Secrets>), ExchangeError>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    /// SHA-256 of the caller's token: the cache does not keep tokens it was not given to keep.
    subject: [u8; 32],
    source: TokenExchangeSource,
}

struct Entry {
    outcome: Outcome,
    until: Instant,
}

/// The exchanged tokens the gateway holds, and the exchanges under way.
#[derive(Default)]
pub struct Exchanges {
    cache: Mutex<HashMap<Key, Entry>>,
    flights: Mutex<HashMap<Key, Arc<tokio::sync::OnceCell<Outcome>>>>,
}

impl Exchanges {
    /// The token issued to the upstream for the caller whose token is `subject`, and its
    /// scrubber: from the cache, or from one exchange shared with concurrent calls of the
    /// same caller.
    pub async fn token(
        &self,
        src: &TokenExchangeSource,
        subject: &str,
        named: &BTreeMap<String, SecretRef>,
        http: &Outbound,
    ) -> Outcome {
        let key = Key {
            subject: Sha256::digest(subject.as_bytes()).into(),
            source: src.clone(),
        };
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        let flight = match self.flights.lock() {
            Ok(mut f) => f.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let outcome = flight
            .get_or_init(|| async {
                // A flight that ended between the look above and joining this one filled it.
                if let Some(hit) = self.cached(&key) {
                    return hit;
                }
                let (outcome, lifetime) = match exchange(src, subject, named, http).await {
                    // A scrubber is a compiled pattern: built off the data path's threads.
                    Ok((token, expires_in)) => (
                        tokio::task::spawn_blocking(move || issued(token))
                            .await
                            .unwrap_or_else(|e| {
                                Err(ExchangeError::Unavailable {
                                    url: src.token_url.clone(),
                                    reason: format!("scrubber: {e}"),
                                })
                            }),
                        lifetime(expires_in),
                    ),
                    Err(e) => (Err(e), REFUSED_FOR),
                };
                // Only refusals are remembered: a provider that was down is asked again.
                if !matches!(outcome, Err(ExchangeError::Unavailable { .. })) {
                    self.store(key.clone(), &outcome, lifetime);
                }
                outcome
            })
            .await
            .clone();
        if let Ok(mut f) = self.flights.lock() {
            if f.get(&key).is_some_and(|c| Arc::ptr_eq(c, &flight)) {
                f.remove(&key);
            }
        }
        outcome
    }

    fn cached(&self, key: &Key) -> Option<Outcome> {
        let now = Instant::now();
        let c = self.cache.lock().ok()?;
        c.get(key)
            .filter(|e| e.until > now)
            .map(|e| e.outcome.clone())
    }

    fn store(&self, key: Key, outcome: &Outcome, lifetime: Duration) {
        let Ok(mut c) = self.cache.lock() else { return };
        let now = Instant::now();
        if c.len() >= MAX_CACHED {
            c.retain(|_, e| e.until > now);
        }
        while c.len() >= MAX_CACHED {
            let Some(soonest) = c
                .iter()
                .min_by_key(|(_, e)| e.until)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            c.remove(&soonest);
        }
        c.insert(
            key,
            Entry {
                outcome: outcome.clone(),
                until: now + lifetime,
            },
        );
    }

    /// Tokens held now (for tests and status).
    pub fn cached_len(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }
}

fn issued(token: String) -> Outcome {
    let token: Arc<str> = token.into();
    let scrub =
        Secrets::new(&[crate::obligations::mask::scrub::token_tail(&token)]).map_err(|e| {
            ExchangeError::Unavailable {
                url: String::new(),
                reason: format!("the issued token: {e}"),
            }
        })?;
    Ok((token, scrub))
}

/// How long an issued token is used: until `MARGIN` before it expires, or half its life if
/// that is shorter; at least a second.
fn lifetime(expires_in: Option<Duration>) -> Duration {
    let life = expires_in.unwrap_or(DEFAULT_LIFETIME);
    life.saturating_sub(MARGIN.min(life / 2))
        .max(Duration::from_secs(1))
}

/// One exchange (RFC 8693 §2.1): the issued token and its lifetime if the provider says.
async fn exchange(
    src: &TokenExchangeSource,
    subject: &str,
    named: &BTreeMap<String, SecretRef>,
    http: &Outbound,
) -> Result<(String, Option<Duration>), ExchangeError> {
    let unavailable = |reason: String| ExchangeError::Unavailable {
        url: src.token_url.clone(),
        reason,
    };
    let req = request(src, subject, named)?;
    let timeout = src.timeout();
    let resp = tokio::time::timeout(timeout, http.send(req))
        .await
        .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
        .map_err(|e| unavailable(e.to_string()))?;
    let status = resp.status();
    let answer: Option<Json> = serde_json::from_slice(resp.body()).ok();
    let field = |name: &str| {
        answer
            .as_ref()
            .and_then(|a| a.get(name))
            .and_then(Json::as_str)
    };
    if status.is_client_error() {
        let reason = match (field("error"), field("error_description")) {
            (Some(e), Some(d)) => format!("{e}: {}", clip(d)),
            (Some(e), None) => e.to_string(),
            _ => format!("HTTP {status}"),
        };
        return Err(ExchangeError::Refused {
            url: src.token_url.clone(),
            reason,
        });
    }
    if !status.is_success() {
        return Err(unavailable(format!("HTTP {status}")));
    }
    let token = field("access_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unavailable("the answer has no access_token".into()))?;
    let expires_in = answer
        .as_ref()
        .and_then(|a| a.get("expires_in"))
        .and_then(Json::as_u64)
        .map(Duration::from_secs);
    Ok((token.to_string(), expires_in))
}

/// The exchange request (RFC 8693 §2.1), with the client's authentication.
fn request(
    src: &TokenExchangeSource,
    subject: &str,
    named: &BTreeMap<String, SecretRef>,
) -> Result<http::Request<Vec<u8>>, ExchangeError> {
    let unavailable = |reason: String| ExchangeError::Unavailable {
        url: src.token_url.clone(),
        reason,
    };
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", GRANT)
        .append_pair("subject_token", subject)
        .append_pair("subject_token_type", src.subject_token_type.urn());
    if let Some(a) = &src.audience {
        form.append_pair("audience", a);
    }
    if let Some(r) = &src.resource {
        form.append_pair("resource", r);
    }
    if !src.scopes.is_empty() {
        form.append_pair("scope", &src.scopes.join(" "));
    }
    if let Some(t) = &src.requested_token_type {
        form.append_pair("requested_token_type", t);
    }
    let mut req = http::Request::post(src.token_url.as_str())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    match &src.client_secret {
        None => {
            form.append_pair("client_id", &src.client_id);
        }
        Some(s) => {
            let secret =
                secret(s, named).map_err(|e| unavailable(format!("client secret: {e}")))?;
            match src.client_auth {
                ClientAuth::ClientSecretPost => {
                    form.append_pair("client_id", &src.client_id)
                        .append_pair("client_secret", &secret);
                }
                ClientAuth::ClientSecretBasic => {
                    // RFC 6749 §2.3.1: each part form-encoded before the base64.
                    let enc =
                        |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
                    let pair: String = [enc(&src.client_id), enc(&secret)].join(":");
                    let mut v =
                        http::HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair)))
                            .map_err(|_| unavailable("client credentials unusable".into()))?;
                    v.set_sensitive(true);
                    req = req.header(header::AUTHORIZATION, v);
                }
            }
        }
    }
    req.body(form.finish().into_bytes())
        .map_err(|e| unavailable(format!("request: {e}")))
}

/// A provider's words, cut to a length a refusal can carry.
fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_are_replaced_before_they_expire() {
        assert_eq!(
            lifetime(Some(Duration::from_secs(600))),
            Duration::from_secs(570)
        );
        assert_eq!(
            lifetime(Some(Duration::from_secs(10))),
            Duration::from_secs(5)
        );
        assert_eq!(lifetime(Some(Duration::ZERO)), Duration::from_secs(1));
        assert_eq!(lifetime(None), Duration::from_secs(270));
    }

    #[test]
    fn the_end_of_an_issued_token_is_scrubbed() {
        let b64: Vec<char> = ('A'..='Z').chain('a'..='z').chain('0'..='9').collect();
        let part = |n: usize, seed: usize| -> String {
            (0..n)
                .map(|i| b64[(i * 7 + seed * 13 + i * i) % 62])
                .collect()
        };
        let jwt = format!("{}.{}.{}", part(30, 1), part(200, 2), part(300, 3));
        let (_, scrub) = issued(jwt.clone()).unwrap();
        let out = scrub.scrub(format!("got {jwt} ok").as_bytes()).into_owned();
        let out = String::from_utf8(out).unwrap();
        assert!(
            !out.contains(crate::obligations::mask::scrub::token_tail(&jwt)),
            "{out}"
        );
        assert!(out.ends_with("[MASKED:credential] ok"), "{out}");
        let short = "opaque-token";
        let (_, scrub) = issued(short.into()).unwrap();
        assert_eq!(
            &*scrub.scrub(b"x opaque-token y"),
            b"x [MASKED:credential] y"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let x = Exchanges::default();
        let ok = issued("t".into());
        for i in 0..MAX_CACHED + 10 {
            let mut subject = [0u8; 32];
            subject[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let key = Key {
                subject,
                source: TokenExchangeSource::default(),
            };
            x.store(key, &ok, Duration::from_secs(60 + i as u64));
        }
        assert_eq!(x.cached_len(), MAX_CACHED);
        // The ones expiring soonest went.
        let first = Key {
            subject: [0; 32],
            source: TokenExchangeSource::default(),
        };
        assert!(x.cached(&first).is_none());
    }

    fn outbound() -> Outbound {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        Outbound::new(cfg)
    }

    /// A token endpoint on loopback that answers every request after `delay` with `status`
    /// and `body` (`{n}`: the request's number), or never when `delay` is None; it counts the
    /// requests and keeps the last one.
    async fn endpoint(
        delay: Option<Duration>,
        status: u16,
        body: &'static str,
    ) -> (
        String,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<Mutex<String>>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(String::new()));
        let (c, l) = (count.clone(), last.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let n = c.fetch_add(1, SeqCst) + 1;
                let l = l.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut got = 0;
                    // Head and a small form body arrive together from hyper's client.
                    while got < buf.len() {
                        match tokio::time::timeout(
                            Duration::from_millis(100),
                            sock.read(&mut buf[got..]),
                        )
                        .await
                        {
                            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                            Ok(Ok(k)) => got += k,
                        }
                    }
                    *l.lock().unwrap() = String::from_utf8_lossy(&buf[..got]).into_owned();
                    let Some(delay) = delay else {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    };
                    tokio::time::sleep(delay).await;
                    let body = body.replace("{n}", &n.to_string());
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        (url, count, last)
    }

    fn source(url: &str) -> TokenExchangeSource {
        yaml_serde::from_str(&format!(
            "{{token_url: '{url}', client_id: 'gw id', client_secret: {{env: TX_TEST_UNSET_SECRET}}, \
             audience: ledger, scopes: [a, b]}}"
        ))
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_of_one_caller_share_one_exchange() {
        let (url, count, last) = endpoint(
            Some(Duration::from_millis(300)),
            200,
            r#"{"access_token":"issued-{n}","token_type":"Bearer","expires_in":600}"#,
        )
        .await;
        let mut src = source(&url);
        src.client_secret = None;
        let x = Arc::new(Exchanges::default());
        let http = outbound();
        let named = BTreeMap::new();
        let calls = (0..8).map(|_| {
            let (x, src, http, named) = (x.clone(), src.clone(), http.clone(), named.clone());
            tokio::spawn(async move { x.token(&src, "caller-a", &named, &http).await })
        });
        for c in calls.collect::<Vec<_>>() {
            let (token, _) = c.await.unwrap().unwrap();
            assert_eq!(&*token, "issued-1");
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
        let req = last.lock().unwrap().clone();
        assert!(req.starts_with("POST /token"), "{req}");
        for part in [
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange",
            "subject_token=caller-a",
            "subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token",
            "audience=ledger",
            "scope=a+b",
            "client_id=gw+id",
        ] {
            assert!(req.contains(part), "{part} in {req}");
        }
        // Another caller: its own exchange; the first is still cached.
        let (b, _) = x.token(&src, "caller-b", &named, &http).await.unwrap();
        assert_eq!(&*b, "issued-2");
        let (a, _) = x.token(&src, "caller-a", &named, &http).await.unwrap();
        assert_eq!(&*a, "issued-1");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refusals_and_silence_fail_closed() {
        let named = BTreeMap::new();
        let http = outbound();
        let x = Exchanges::default();

        // Refused: the provider's words; remembered briefly.
        let (url, count, last) = endpoint(
            Some(Duration::ZERO),
            400,
            r#"{"error":"invalid_grant","error_description":"not for you"}"#,
        )
        .await;
        let mut src = source(&url);
        src.client_secret = Some(SecretRef {
            env: Some("PATH".into()),
            ..SecretRef::default()
        });
        let e = x.token(&src, "s", &named, &http).await.unwrap_err();
        assert!(
            matches!(&e, ExchangeError::Refused { reason, .. } if reason == "invalid_grant: not for you"),
            "{e}"
        );
        assert!(
            last.lock()
                .unwrap()
                .to_ascii_lowercase()
                .contains("authorization: basic "),
            "client_secret_basic"
        );
        assert_eq!(x.token(&src, "s", &named, &http).await.unwrap_err(), e);
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Silent: fails within timeout_s.
        let (url, _, _) = endpoint(None, 200, "").await;
        let mut src = source(&url);
        src.client_secret = None;
        src.timeout_s = Some(1);
        let started = Instant::now();
        let e = x.token(&src, "s", &named, &http).await.unwrap_err();
        assert!(matches!(e, ExchangeError::Unavailable { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));

        // Down, and a client secret that cannot be read: unavailable, never a token.
        let src = source("http://127.0.0.1:9/token");
        let e = x.token(&src, "s", &named, &http).await.unwrap_err();
        assert!(
            matches!(&e, ExchangeError::Unavailable { reason, .. } if reason.contains("client secret")),
            "{e}"
        );
        let mut src = source("http://127.0.0.1:9/token");
        src.client_secret = None;
        let e = x.token(&src, "s", &named, &http).await.unwrap_err();
        assert!(matches!(e, ExchangeError::Unavailable { .. }), "{e}");
        assert_eq!(x.cached_len(), 1, "only the refusal is remembered");
    }

    #[test]
    fn the_spelling_parses() {
        let s: TokenExchangeSource = yaml_serde::from_str(
            "{token_url: 'https://idp/token', client_id: gw, client_secret: {env: S}, \
             audience: ledger, scopes: [read], client_auth: client_secret_post, \
             subject_token_type: jwt}",
        )
        .unwrap();
        assert_eq!(s.client_auth, ClientAuth::ClientSecretPost);
        assert_eq!(
            s.subject_token_type.urn(),
            "urn:ietf:params:oauth:token-type:jwt"
        );
        assert!(
            yaml_serde::from_str::<TokenExchangeSource>("{token_url: x, client_id: y, bogus: 1}")
                .is_err()
        );
    }
}
