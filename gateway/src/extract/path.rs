//! One canonical spelling of a request path. The policy decides on it and the upstream is sent
//! it, so no other spelling of a path can be matched as one function and routed as another.
//!
//! The form (RFC 3986 §6.2.2, as Envoy's `normalize_path` + `merge_slashes`): percent-encoded
//! unreserved characters decoded (`%72efund` is `refund`), other escapes kept with upper-case
//! hex, runs of `/` merged, `.` and `..` segments removed. What servers disagree about is
//! refused rather than guessed: an encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, a `;` (path
//! parameters, which Tomcat and Spring strip before routing), an escape of a control
//! character, an escape that is not two hex digits, bytes that do not decode to UTF-8, and
//! `..` above the root. A service may keep encoded slashes or `;` when its server needs them
//! (`paths:` in its file).

/// What a service lets through that is refused by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathRules {
    /// `%2F` and `%5C` stay in the path (encoded), instead of a refusal.
    pub encoded_slashes: bool,
    /// `;` stays in the path, instead of a refusal.
    pub semicolons: bool,
    /// `.` and ` ` are kept in query and form parameter names, instead of a refusal (see
    /// [`super::names`]).
    pub dotted_names: bool,
    /// The server routes by no `_method` field: bodies not read for arguments (multipart
    /// uploads, an `http` service's) are not read to look for one either.
    pub no_method_override: bool,
    /// The server reads no format suffix (`/items/7.json` as `/items/7`): a path is decided
    /// only as it is spelled, not also as [`without_format_suffix`] reads it.
    pub no_format_suffix: bool,
    /// The server routes literals in any case (Express, ASP.NET): a path is decided only as
    /// routed so, not also with literals matched in their own case.
    pub any_case: bool,
}

/// Why a path has no canonical form the gateway can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not a path (it must start with '/')")]
    NotOrigin,
    #[error("the path has a '%' that is not followed by two hex digits")]
    BadEscape,
    #[error(
        "the path encodes a '/' or '\\' (%2F, %5C), which servers route differently; \
         this service does not allow it"
    )]
    EncodedSlash,
    #[error("the path has a '\\', which some servers read as '/'")]
    Backslash,
    #[error(
        "the path has a ';' (a path parameter), which some servers strip before routing; \
         this service does not allow it"
    )]
    Semicolon,
    #[error(
        "the query has a ';', which some servers (Rack 2, Python before 3.9.2) read as a \
         separator between parameters; this service does not allow it"
    )]
    QuerySemicolon,
    #[error("the path encodes a control character")]
    Control,
    #[error("the path does not decode to UTF-8")]
    NotUtf8,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
}

/// `path`'s canonical form, or None when it is canonical already (the common case, checked
/// without allocating). `path` is the path alone, without the query.
pub fn canonical(path: &str, rules: PathRules) -> Result<Option<String>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return if path == "*" {
            Ok(None)
        } else {
            Err(PathError::NotOrigin)
        };
    }
    if is_canonical(bytes, rules)? {
        return Ok(None);
    }
    // Decode what must be decoded, check what the escapes stand for.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut raw = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            raw.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).and_then(|c| hex(*c)),
            bytes.get(i + 2).and_then(|c| hex(*c)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = h << 4 | l;
        raw.push(c);
        match c {
            b'/' | b'\\' if !rules.encoded_slashes => return Err(PathError::EncodedSlash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            c if is_unreserved(c) => decoded.push(c),
            c => decoded.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]),
        }
        i += 3;
    }
    if std::str::from_utf8(&raw).is_err() {
        return Err(PathError::NotUtf8);
    }
    // Merge slashes and remove dot segments, on the decoded form (`%2e%2e` is `..`).
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if segs.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segs {
        out.push('/');
        // Only ASCII was produced above, or UTF-8 bytes checked with the rest.
        out.push_str(std::str::from_utf8(s).map_err(|_| PathError::NotUtf8)?);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    Ok((out != path).then_some(out))
}

/// Whether `bytes` (starting with '/') needs no work: no escapes, no empty or dot segments.
/// Refusals that need no decoding are found here too.
fn is_canonical(bytes: &[u8], rules: PathRules) -> Result<bool, PathError> {
    let mut clean = true;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            b';' if !rules.semicolons => return Err(PathError::Semicolon),
            b'%' => clean = false,
            b'/' => {
                let next = &bytes[i + 1..];
                if next.starts_with(b"/")
                    || next == b"."
                    || next.starts_with(b"./")
                    || next == b".."
                    || next.starts_with(b"../")
                {
                    clean = false;
                }
            }
            _ => {}
        }
    }
    Ok(clean)
}

/// `path` (canonical) as a server that reads a format suffix routes it: the last segment's
/// `.ext` taken off, `/items/7.json` read as `/items/7` and `/admin/users.json/` as
/// `/admin/users/`. Rails routes every resource with an optional `(.:format)`, and Spring
/// before 5.3 matched any `/x` route by `/x.anything`; both read the part before the last `.`.
/// None when the last segment (before one trailing `/`) has no `.` with something on both
/// sides of it.
pub fn without_format_suffix(path: &str) -> Option<String> {
    let (body, trailing) = match path.strip_suffix('/') {
        Some(b) => (b, "/"),
        None => (path, ""),
    };
    let start = body.rfind('/')? + 1;
    let dot = start + body[start..].rfind('.')?;
    if dot == start || dot + 1 == body.len() {
        return None;
    }
    Some(format!("{}{trailing}", &body[..dot]))
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_suffix_is_read_off_the_last_segment() {
        let read = |p: &str| without_format_suffix(p);
        assert_eq!(read("/items/7.json").as_deref(), Some("/items/7"));
        assert_eq!(read("/admin/users.json/").as_deref(), Some("/admin/users/"));
        assert_eq!(read("/items.xml").as_deref(), Some("/items"));
        // Spring reads the part before the last `.`; Rails routes `1.2.json` nowhere.
        assert_eq!(
            read("/models/gpt-4.1.json").as_deref(),
            Some("/models/gpt-4.1")
        );
        for none in [
            "/items/7",
            "/",
            "/items/.json",
            "/items/7.",
            "/v1.2/items",
            "/.",
            "",
        ] {
            assert_eq!(read(none), None, "{none:?}");
        }
    }

    fn canon(p: &str) -> Result<String, PathError> {
        canonical(p, PathRules::default()).map(|c| c.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn spellings_of_one_path_have_one_form() {
        for p in [
            "/v1/payments/p2/refund",
            "/v1/payments/p2/%72efund",
            "/v1/payments/p2/refun%64",
            "/v1/%70ayments/p2/refund",
            "//v1/payments/p2/refund",
            "/v1//payments///p2/refund",
            "/v1/./payments/p2/refund",
            "/v1/x/../payments/p2/refund",
            "/v1/x/%2e%2E/payments/p2/refund",
            "/v1/payments/p2/refund/..",
        ] {
            let want = if p.ends_with("..") {
                "/v1/payments/p2/"
            } else {
                "/v1/payments/p2/refund"
            };
            assert_eq!(canon(p).as_deref(), Ok(want), "{p}");
        }
    }

    #[test]
    fn canonical_paths_are_left_alone_without_allocating() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "/a/~x_y-z", "*"] {
            assert_eq!(canonical(p, PathRules::default()), Ok(None), "{p}");
        }
    }

    #[test]
    fn escapes_that_are_not_unreserved_stay_escaped_in_upper_case() {
        assert_eq!(canon("/a%20b/%c3%a9").as_deref(), Ok("/a%20b/%C3%A9"));
        assert_eq!(canon("/a/").as_deref(), Ok("/a/"));
        assert_eq!(canon("/a/.").as_deref(), Ok("/a/"));
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for (p, e) in [
            ("/v1/payments/p8%2Frefund", PathError::EncodedSlash),
            ("/v1/payments/p8%5crefund", PathError::EncodedSlash),
            ("/v1/payments\\refund", PathError::Backslash),
            ("/v1/payments/p2/refund;x=1", PathError::Semicolon),
            ("/v1/%zzrefund", PathError::BadEscape),
            ("/v1/%4", PathError::BadEscape),
            ("/v1/%00", PathError::Control),
            ("/v1/%ff", PathError::NotUtf8),
            ("/../etc", PathError::AboveRoot),
            ("/a/%2e%2e/..", PathError::AboveRoot),
            ("v1/x", PathError::NotOrigin),
        ] {
            assert_eq!(canon(p), Err(e), "{p}");
        }
    }

    #[test]
    fn a_service_may_keep_encoded_slashes_and_semicolons() {
        let rules = PathRules {
            encoded_slashes: true,
            semicolons: true,
            ..PathRules::default()
        };
        assert_eq!(
            canonical("/p/a%2fb;v=1", rules),
            Ok(Some("/p/a%2Fb;v=1".into()))
        );
    }
}
