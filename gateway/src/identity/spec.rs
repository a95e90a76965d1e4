//! The `identity:` section of a policy repository's `callgate.yaml`: which OIDC providers vouch
//! for callers and where their tokens are read from.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default)]
    pub providers: Vec<Provider>,
    /// The provider whose groups, subjects and claims a rule means when it names none.
    /// Needed when there is more than one provider (with one, it is that one).
    #[serde(default)]
    pub default_provider: Option<String>,
    /// Request headers a bearer token is read from, first present wins. A value may be
    /// `Bearer <token>` or the bare token.
    #[serde(default = "token_headers")]
    pub token_headers: Vec<String>,
}

impl Default for Identity {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            default_provider: None,
            token_headers: token_headers(),
        }
    }
}

/// An OIDC issuer whose bearer tokens identify callers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// JSON path of the groups claim, e.g. `groups` or `realm_access.roles`.
    #[serde(default = "groups_claim")]
    pub groups_claim: String,
    /// Accepted signature algorithms (asymmetric only); default RS256, ES256 and EdDSA.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Leeway for `exp`, `nbf` and `iat` (default 60).
    #[serde(default)]
    pub clock_skew_s: Option<u64>,
    /// How often the signing keys are fetched again (default 300).
    #[serde(default)]
    pub jwks_refresh_s: Option<u64>,
    /// How long fetched keys stay usable while the provider cannot be reached (default
    /// 86400); after that, tokens from it are not accepted.
    #[serde(default)]
    pub jwks_max_age_s: Option<u64>,
    /// Least time between two fetches caused by a token naming an unknown key (default 30),
    /// so that a flood of bad tokens cannot hammer the provider.
    #[serde(default)]
    pub unknown_key_refresh_s: Option<u64>,
}

fn token_headers() -> Vec<String> {
    vec!["authorization".into()]
}

fn groups_claim() -> String {
    "groups".into()
}
