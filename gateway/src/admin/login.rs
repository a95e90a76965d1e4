//! Approvers log in to the approvals page at an OpenID provider: authorization code flow with
//! PKCE (S256), state bound to the browser, nonce checked in the ID token. The provider's
//! metadata and keys are discovered again after a few minutes so a key rotation is picked
//! up without a restart.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::util::sync::LockExt;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
    core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata},
};
use serde_json::Value as Json;

use crate::{
    config::LoginConfig,
    identity::oidc::{claim_path, groups_at},
    util::jsonpath::JsonPath,
    util::outbound::{Outbound, chain},
};

/// How long a browser has between leaving for the provider and coming back.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Logins under way at once; beyond it the oldest are forgotten.
const MAX_LOGINS: usize = 1024;
/// Discovered metadata and keys are used this long before being fetched again.
const METADATA_TTL: Duration = Duration::from_secs(300);

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Who logged in.
#[derive(Debug, Clone)]
pub struct Person {
    pub subject: String,
    /// For display: `preferred_username`, `name` or `email`, else the subject.
    pub name: String,
    pub groups: Vec<String>,
}

/// A login under way: what the callback must see again.
struct Pending {
    nonce: Nonce,
    verifier: PkceCodeVerifier,
    /// Where the browser was going when sent to log in.
    back_to: String,
    started: Instant,
}

pub struct Login {
    cfg: LoginConfig,
    secret: Option<String>,
    redirect: RedirectUrl,
    groups: JsonPath,
    http: Outbound,
    client: tokio::sync::Mutex<Option<(Instant, Client)>>,
    pending: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("login setup: {0}")]
    Setup(String),
    #[error("the login provider is unreachable or misbehaving: {0}")]
    Provider(String),
    #[error("this login is unknown or expired; start again")]
    UnknownState,
    #[error("the login was refused: {0}")]
    Refused(String),
}

impl Login {
    /// `public_url` is where browsers reach the page; the provider sends them back to its
    /// `/callback`.
    pub fn new(cfg: LoginConfig, public_url: &str, http: Outbound) -> Result<Self, LoginError> {
        let secret = match &cfg.client_secret_file {
            None => None,
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| LoginError::Setup(format!("{}: {e}", p.display())))?
                    .trim()
                    .to_string(),
            ),
        };
        let redirect = RedirectUrl::new(format!("{public_url}/callback"))
            .map_err(|e| LoginError::Setup(format!("redirect URL: {e}")))?;
        let groups = claim_path(&cfg.groups_claim)
            .map_err(|e| LoginError::Setup(format!("groups_claim: {e}")))?;
        Ok(Self {
            cfg,
            secret,
            redirect,
            groups,
            http,
            client: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    pub fn session_length(&self) -> Duration {
        self.cfg.session
    }

    async fn client(&self, fresh: bool) -> Result<Client, LoginError> {
        let mut cached = self.client.lock().await;
        if let Some((at, c)) = cached.as_ref() {
            if !fresh && at.elapsed() < METADATA_TTL {
                return Ok(c.clone());
            }
        }
        let issuer = IssuerUrl::new(self.cfg.issuer.clone())
            .map_err(|e| LoginError::Setup(format!("issuer: {e}")))?;
        let meta = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| LoginError::Provider(chain(&e)))?;
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.cfg.client_id.clone()),
            self.secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(self.redirect.clone());
        *cached = Some((Instant::now(), client.clone()));
        Ok(client)
    }

    /// Starts a login: the provider URL to send the browser to, and the state that its
    /// cookie must carry back.
    pub async fn begin(&self, back_to: &str) -> Result<(String, String), LoginError> {
        let client = self.client(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.cfg.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let mut pending = self.pending.locked();
        pending.retain(|_, p| p.started.elapsed() < LOGIN_TTL);
        if pending.len() >= MAX_LOGINS {
            let oldest = pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                pending.remove(&k);
            }
        }
        pending.insert(
            state.secret().clone(),
            Pending {
                nonce,
                verifier,
                back_to: back_to.to_string(),
                started: Instant::now(),
            },
        );
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Completes a login from the provider's redirect: who logged in, and where they were
    /// going. `cookie_state` is the state the browser's login cookie carries: a redirect
    /// that another browser started is refused.
    pub async fn finish(
        &self,
        code: &str,
        state: &str,
        cookie_state: Option<&str>,
    ) -> Result<(Person, String), LoginError> {
        if cookie_state != Some(state) {
            return Err(LoginError::UnknownState);
        }
        let p = self
            .pending
            .locked()
            .remove(state)
            .filter(|p| p.started.elapsed() < LOGIN_TTL)
            .ok_or(LoginError::UnknownState)?;
        let client = self.client(false).await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| LoginError::Provider(e.to_string()))?
            .set_pkce_verifier(p.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| LoginError::Refused(chain(&e)))?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| LoginError::Refused("the provider returned no ID token".into()))?;
        let verified = match id_token.claims(&client.id_token_verifier(), &p.nonce) {
            Ok(c) => c.subject().to_string(),
            // Perhaps the provider rotated its keys since they were discovered.
            Err(first) => {
                let client = self.client(true).await?;
                id_token
                    .claims(&client.id_token_verifier(), &p.nonce)
                    .map_err(|_| LoginError::Refused(format!("ID token: {first}")))?
                    .subject()
                    .to_string()
            }
        };
        // Verified above; read the claims the standard set does not model (groups).
        let claims = payload(&id_token.to_string()).unwrap_or(Json::Null);
        let name = ["preferred_username", "name", "email"]
            .iter()
            .find_map(|k| claims.get(*k).and_then(Json::as_str))
            .unwrap_or(&verified)
            .to_string();
        let person = Person {
            groups: groups_at(&self.groups, &claims),
            subject: verified,
            name,
        };
        Ok((person, p.back_to))
    }
}

fn payload(jwt: &str) -> Option<Json> {
    let part = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}
