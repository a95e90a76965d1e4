//! Checks of what a service names but another stage interprets: credential sources (one place
//! each, usable token endpoints) and mask specifications, each a located [`Finding`].
use crate::obligations::mask::{MaskRules, MaskSpec};
use crate::policy::load::{Finding, Source};

/// A secret source: exactly one place; an `oauth2` or `token_exchange` one with a usable token
/// endpoint and a client secret that is itself read from one plain place.
pub(super) fn check_secret(
    src: &Source,
    path: &[&str],
    r: &crate::obligations::inject::SecretRef,
    errors: &mut Vec<Finding>,
) {
    if r.count() != 1 {
        errors.push(src.error(
            path,
            "give exactly one of env, file, systemd, credential, oauth2 or token_exchange",
        ));
    }
    if let Some(x) = &r.token_exchange {
        check_exchange(src, path, x, errors);
    }
    let Some(o) = &r.oauth2 else { return };
    let mut at = path.to_vec();
    at.push("oauth2");
    if let Err(e) = crate::util::outbound::check_url(&o.token_url) {
        errors.push(src.error(&at, format!("token_url {e}")));
    }
    if o.client_id.is_empty() {
        errors.push(src.error(&at, "client_id must not be empty"));
    }
    let s = &o.client_secret;
    if s.count() != 1 || s.credential.is_some() || s.oauth2.is_some() || s.token_exchange.is_some()
    {
        errors.push(src.error(
            &at,
            "client_secret: give exactly one of env, file or systemd",
        ));
    }
}

/// A `token_exchange` source: a usable token endpoint, a client, a plain client secret if
/// any, and something that says whom the token is for.
pub(super) fn check_exchange(
    src: &Source,
    path: &[&str],
    x: &crate::obligations::exchange::TokenExchangeSource,
    errors: &mut Vec<Finding>,
) {
    let mut at = path.to_vec();
    at.push("token_exchange");
    if let Err(e) = crate::util::outbound::check_url(&x.token_url) {
        errors.push(src.error(&at, format!("token_url {e}")));
    }
    if x.client_id.is_empty() {
        errors.push(src.error(&at, "client_id must not be empty"));
    }
    if let Some(s) = &x.client_secret {
        if s.count() != 1
            || s.credential.is_some()
            || s.oauth2.is_some()
            || s.token_exchange.is_some()
        {
            errors.push(src.error(
                &at,
                "client_secret: give exactly one of env, file or systemd",
            ));
        }
    }
    if x.audience.is_none() && x.resource.is_none() {
        errors.push(src.error(
            &at,
            "name the upstream the token is for: audience or resource",
        ));
    }
    if x.timeout_s.is_some_and(|t| !(1..=10).contains(&t)) {
        errors.push(src.error(&at, "timeout_s must be from 1 to 10"));
    }
}

pub(super) fn check_masks(
    src: &Source,
    at: &[&str],
    masks: &[MaskSpec],
    errors: &mut Vec<Finding>,
) {
    for (i, m) in masks.iter().enumerate() {
        if let Err(e) = MaskRules::compile(std::slice::from_ref(m)) {
            let idx = i.to_string();
            let path: Vec<&str> = at.iter().copied().chain([idx.as_str()]).collect();
            errors.push(src.error(&path, e.to_string()));
        }
    }
}
