//! Request obligations of an allowed call, applied just before it is forwarded: header edits
//! and the credential the gateway holds for a service, which the caller never sees.
//!
//! Secrets are read where the policy says they live and kept for a short while, so that a
//! rotated file or systemd credential takes effect without a restart but a call does not
//! cost a file read. Each comes with the [`Secrets`] scrubber for the answer to its call.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{
    mask::scrub::Secrets,
    policy::{Obligations, schema::SecretRef},
};

/// How long a secret read from its source is used before it is read again.
const REREAD: Duration = Duration::from_secs(30);

/// The credentials the gateway holds, as last read.
#[derive(Default)]
pub struct Credentials {
    cache: Mutex<HashMap<SecretRef, Read>>,
}

struct Read {
    value: Arc<str>,
    scrub: Arc<Secrets>,
    at: Instant,
}

impl Credentials {
    /// Applies `ob` to outgoing request headers; returns the scrubber for the injected secret,
    /// which the answer must pass through. An error means the call must not go out (a
    /// credential that cannot be read is not silently left off).
    pub fn apply(
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
        let (secret, scrub) = self.get(&inject.from, named)?;
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

    fn get(
        &self,
        r: &SecretRef,
        named: &BTreeMap<String, SecretRef>,
    ) -> Result<(Arc<str>, Arc<Secrets>), String> {
        if let Some(hit) = self.cache.lock().ok().and_then(|c| {
            c.get(r)
                .filter(|e| e.at.elapsed() < REREAD)
                .map(|e| (e.value.clone(), e.scrub.clone()))
        }) {
            return Ok(hit);
        }
        let value: Arc<str> = secret(r, named)?.into();
        let scrub = Secrets::new(&[&value]).ok_or("the credential is empty")?;
        if let Ok(mut c) = self.cache.lock() {
            c.insert(
                r.clone(),
                Read {
                    value: value.clone(),
                    scrub: scrub.clone(),
                    at: Instant::now(),
                },
            );
        }
        Ok((value, scrub))
    }
}

fn header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::try_from(name).map_err(|_| format!("bad header name {name:?}"))?;
    let v = HeaderValue::try_from(value).map_err(|_| format!("bad value for header {name}"))?;
    Ok((n, v))
}

/// Reads a secret from where the policy says it is; trailing newlines of files are dropped.
pub fn secret(r: &SecretRef, named: &BTreeMap<String, SecretRef>) -> Result<String, String> {
    if let Some(name) = &r.credential {
        let inner = named
            .get(name)
            .ok_or_else(|| format!("credential {name:?} is not defined"))?;
        if inner.credential.is_some() {
            return Err(format!("credential {name:?} refers to another credential"));
        }
        return secret(inner, named);
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
