//! The names of a multipart form's parts, for the one thing the gateway looks for in such a
//! body: a field a server reads as `_method` ([`super::names::overrides_method`]). PHP, Rack
//! and Go each read part headers their own way — folded lines, the first or the last of two
//! `name`s, single quotes, RFC 2231's `name*`, Rack's `Content-ID`, a token cut at a space or
//! a comma — so a part's headers are read only where every reading agrees, and anything else
//! is refused: one `Content-Disposition` per part, one `name`, quoted plainly or a plain token,
//! on lines that end in CRLF and hold a `:`.

/// Why a multipart body's part headers have no one reading.
pub type Unread = &'static str;

/// The `name` of each part of `body`, a multipart body whose `Content-Type` is `content_type`.
pub fn part_names(content_type: &str, body: &[u8]) -> Result<Vec<String>, Unread> {
    let boundary = boundary(content_type)?;
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let mut names = Vec::new();
    // The first delimiter, wherever it is (a preamble before it is skipped by every reader).
    let Some(first) = find(body, &delimiter, 0) else {
        return Ok(names);
    };
    let mut at = first + delimiter.len();
    // Each round moves past one delimiter: at most one round per byte of the body.
    while at < body.len() {
        if body[at..].starts_with(b"--") {
            break; // The close delimiter.
        }
        // The rest of the delimiter's line (transport padding), then the part's headers.
        let Some(eol) = find(body, b"\r\n", at) else {
            break;
        };
        let mut line_start = eol + 2;
        let mut dispositions = 0;
        loop {
            let Some(eol) = find(body, b"\r\n", line_start) else {
                return Err("a part's headers do not end");
            };
            let line = &body[line_start..eol];
            line_start = eol + 2;
            if line.is_empty() {
                break;
            }
            if let Some(name) = header(line, &mut dispositions)? {
                names.push(name);
            }
        }
        if dispositions != 1 {
            return Err("a part without one Content-Disposition");
        }
        // The next delimiter starts a line.
        let next = [b"\r\n".as_slice(), &delimiter].concat();
        match find(body, &next, line_start) {
            Some(n) => at = n + next.len(),
            None => break,
        }
    }
    Ok(names)
}

/// The boundary of a `multipart/*` type: given once, of the characters RFC 2046 allows.
fn boundary(content_type: &str) -> Result<String, Unread> {
    let mut found = None;
    for param in content_type.split(';').skip(1) {
        let Some((key, value)) = param.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        if found.is_some() {
            return Err("two boundaries");
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let bchar = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=? ".contains(c);
        if value.is_empty() || value.len() > 70 || !value.chars().all(bchar) {
            return Err("a boundary of characters multipart does not allow");
        }
        found = Some(value.to_string());
    }
    found.ok_or("no boundary")
}

/// One header line of a part: the `name` its `Content-Disposition` gives, if it is that
/// header; a refusal for a line servers read apart.
fn header(line: &[u8], dispositions: &mut usize) -> Result<Option<String>, Unread> {
    let line = std::str::from_utf8(line).map_err(|_| "a part header that is not UTF-8")?;
    if line.starts_with([' ', '\t']) {
        return Err("a folded part header line");
    }
    if line.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("a part header line with a bare CR, LF or NUL");
    }
    let (name, value) = line
        .split_once(':')
        .ok_or("a part header line without ':'")?;
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err("a part header name that is not a token");
    }
    if name.eq_ignore_ascii_case("content-id") {
        // Rack names a part without a `name` by it.
        return Err("a part with a Content-ID");
    }
    if name.eq_ignore_ascii_case("content-type")
        && value
            .trim_start()
            .get(..10)
            .is_some_and(|t| t.eq_ignore_ascii_case("multipart/"))
    {
        return Err("a multipart part inside a multipart form");
    }
    if !name.eq_ignore_ascii_case("content-disposition") {
        return Ok(None);
    }
    *dispositions += 1;
    disposition_name(value).map(Some)
}

/// The one `name` of a `Content-Disposition` value (`form-data; name="x"; filename="y"`):
/// parameters quoted without escapes or `;`, or plain tokens; no `name*` (RFC 2231), no key
/// given twice.
fn disposition_name(value: &str) -> Result<String, Unread> {
    let mut params = value.split(';');
    let kind = params.next().unwrap_or("").trim();
    if kind.is_empty() || !kind.bytes().all(is_tchar) {
        return Err("a Content-Disposition that is not a token and parameters");
    }
    let mut keys = Vec::new();
    let mut name = None;
    for param in params {
        let (key, value) = param
            .split_once('=')
            .ok_or("a Content-Disposition parameter without '='")?;
        let key = key.trim_start();
        if key.is_empty() || !key.bytes().all(is_tchar) || key.contains('*') {
            return Err("a Content-Disposition parameter key that is not a plain token");
        }
        let lower = key.to_ascii_lowercase();
        if keys.contains(&lower) {
            return Err("a Content-Disposition parameter given twice");
        }
        let value = value.trim_end();
        let text = match value.strip_prefix('"') {
            // Split on `;` already: a quoted value that held one is cut, and has no end.
            Some(q) => match q.strip_suffix('"') {
                Some(inner) if !inner.contains(['"', '\\']) => inner,
                _ => return Err("a quoted Content-Disposition value with ';', '\"' or '\\'"),
            },
            None if !value.is_empty() && value.bytes().all(is_tchar) => value,
            None => return Err("a Content-Disposition value that is not a plain token"),
        };
        if lower == "name" {
            name = Some(text.to_string());
        }
        keys.push(lower);
    }
    name.ok_or("a part without a name")
}

/// RFC 9110's `tchar`, without `'` (PHP reads `'…'` as quotes).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&*+-.^_`|~".contains(&b)
}

/// Where `needle` is in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(hay.get(from..)?, needle).map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XB";

    fn names(headers: &str) -> Result<Vec<String>, Unread> {
        let body = format!("--XB\r\n{headers}\r\n\r\nDELETE\r\n--XB--\r\n");
        part_names(CT, body.as_bytes())
    }

    #[test]
    fn plain_parts_are_read() {
        let body = b"preamble\r\n--XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XB\r\ncontent-disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XB--\r\n";
        assert_eq!(
            part_names(CT, body),
            Ok(vec!["file".into(), "_method".into()])
        );
        assert_eq!(
            part_names(
                "multipart/form-data; boundary=\"a b\"",
                b"--a b\r\nContent-Disposition: form-data; name=x\r\n\r\n\r\n--a b--"
            ),
            Ok(vec!["x".into()])
        );
    }

    /// Each was read as `_method` by PHP, Rack or Go, and as another name (or none) by the
    /// gateway's first reading.
    #[test]
    fn headers_servers_read_apart_are_refused() {
        for h in [
            "Content-Disposition: form-data;\r\n name=\"_method\"",
            "Content-Disposition: form-data;\r\n\tname=\"_method\"",
            "Content-Disposition: form-data; name=\"x\"; name=\"_method\"",
            "Content-Disposition: form-data; name='_method'",
            "Content-Disposition: form-data; name=_method x",
            "Content-Disposition: form-data; name=_method,x",
            "Content-Disposition: form-data; foo=\"a;name=x\"; name=\"_method\"",
            "Content-Disposition: form-data; name=\"x\"\r\nX-Foo; name=_method",
            "Content-ID: _method",
            "Content-Disposition: form-data; name*=UTF-8''_method",
            "Content-Disposition: form-data; name*0=_met; name*1=hod",
            "Content-Disposition: form-data; name=\"a\\\"b\"",
            "Content-Disposition : form-data; name=x",
            "Content-Disposition: form-data; name=x\r\nContent-Disposition: form-data; name=_method",
            "Content-Disposition: form-data; name=x\r\nContent-Type: multipart/mixed; boundary=XB",
            "Content-Disposition: form-data; name=\"x\nX: y; name=_method\"",
        ] {
            assert!(names(h).is_err(), "{h:?} was read as {:?}", names(h));
        }
        assert!(part_names("multipart/form-data", b"--XB\r\n").is_err());
        assert!(part_names("multipart/form-data; boundary=a; boundary=b", b"").is_err());
    }
}
