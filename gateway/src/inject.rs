//! Request obligations of an allowed call, applied just before it is forwarded: header edits
//! and the credential the gateway holds for a service, which the caller never sees.
use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::policy::{Obligations, schema::SecretRef};

/// Applies `ob` to outgoing request headers. An error means the call must not go out (a
/// credential that cannot be read is not silently left off).
pub fn apply(
    headers: &mut HeaderMap,
    ob: &Obligations,
    named: &BTreeMap<String, SecretRef>,
) -> Result<(), String> {
    for name in &ob.headers.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &ob.headers.set {
        let (n, v) = header(name, value)?;
        headers.insert(n, v);
    }
    if let Some(inject) = &ob.inject {
        let secret = secret(&inject.from, named)?;
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
    }
    Ok(())
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
