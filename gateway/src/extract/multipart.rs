//! The names of a multipart form's parts, for the one thing the gateway looks for in such a
//! body: a field a server reads as `_method` ([`super::names::overrides_method`]). PHP, Rack
//! and Go each frame and read a multipart body their own way — where a delimiter may stand
//! (PHP splits on `\n--B`, Go takes one right after a part's headers), which `boundary` of a
//! type counts (PHP takes the first text `boundary=` anywhere in it, Rack cuts at a comma),
//! folded header lines, the first or the last of two `name`s, single quotes, RFC 2231's
//! `name*`, Rack's unanchored `Content-Disposition:[^:]*;\s*name=` and its `Content-ID` — so
//! a body is read only in the form every one of them reads alike, and anything else is
//! refused:
//!
//! - the type: `multipart/…; boundary=B` with one `boundary` (`boundary=` once), of letters,
//!   digits and `-_.=+/`, and no parameter but `boundary` and `charset`;
//! - the body: `--B` CRLF at its start, every other `--B` right after a CRLF and followed by
//!   CRLF or, the last, `--`; nothing after that but a CRLF;
//! - each part: headers on CRLF lines with a `:`, up to a blank line; one
//!   `Content-Disposition` with one `name` (quoted, or a plain token); `;\s*name=` nowhere
//!   else in the part's headers; no `name*`, no `Content-ID`, no nested multipart.

/// Why a multipart body has no one reading.
pub type Unread = &'static str;

/// The `name` of each part of `body`, a multipart body whose `Content-Type` is `content_type`.
pub fn part_names(content_type: &str, body: &[u8]) -> Result<Vec<String>, Unread> {
    let boundary = boundary(content_type)?;
    let delimiter = [b"--", boundary.as_bytes()].concat();
    if !body.starts_with(&delimiter) {
        return Err("a body that does not start with its boundary");
    }
    // Where each delimiter starts: the first at 0, every other right after a CRLF.
    let at: Vec<usize> = memchr::memmem::find_iter(body, &delimiter).collect();
    if at
        .iter()
        .skip(1)
        .any(|&i| i < 2 || &body[i - 2..i] != b"\r\n")
    {
        return Err("a boundary that does not start a line");
    }
    let mut names = Vec::new();
    for (n, &start) in at.iter().enumerate() {
        let after = &body[start + delimiter.len()..];
        if after.starts_with(b"--") {
            // The close delimiter: the last, followed by nothing but a line end.
            if n + 1 != at.len() || !matches!(&after[2..], b"" | b"\r\n") {
                return Err("a body that goes on after its close delimiter");
            }
            return Ok(names);
        }
        if !after.starts_with(b"\r\n") {
            return Err("a boundary not followed by a line end");
        }
        // The part: up to the CRLF before the next delimiter.
        let Some(&next) = at.get(n + 1) else {
            return Err("a body without its close delimiter");
        };
        let part = &body[start + delimiter.len() + 2..next];
        let Some(end) = memchr::memmem::find(part, b"\r\n\r\n") else {
            return Err("a part whose headers do not end");
        };
        names.push(part_name(&part[..end])?);
    }
    Err("a body without its close delimiter")
}

/// The boundary of a `multipart/*` type. PHP takes the text after the first `=` that follows
/// the first `boundary` anywhere in the type (looked for in lower case first, then in any),
/// Rack and PHP keep a space after the `=`, Go trims it: so the parameter must be the first
/// `boundary` in any case, spelled `boundary=` in lower case, its value right after the `=`.
/// (Chrome's own boundary, `----WebKitFormBoundary…`, holds the word after that.)
fn boundary(content_type: &str) -> Result<String, Unread> {
    let lower = content_type.to_ascii_lowercase();
    if lower.contains(',') {
        return Err("a type with a comma");
    }
    let first = lower.find("boundary").ok_or("no boundary")?;
    let mut found = None;
    let mut offset = 0;
    for (n, param) in content_type.split(';').enumerate() {
        let at = offset;
        offset += param.len() + 1;
        if n == 0 {
            continue;
        }
        let (key, value) = param
            .split_once('=')
            .ok_or("a type parameter without '='")?;
        let lead = key.len() - key.trim_ascii_start().len();
        let key = &key[lead..];
        if key.eq_ignore_ascii_case("charset") && !value.to_ascii_lowercase().contains("boundary") {
            continue;
        }
        if key != "boundary" || at + lead != first || found.is_some() {
            return Err("a type whose first `boundary` is not its one boundary= parameter");
        }
        let value = value.trim_ascii_end();
        let value = match value.strip_prefix('"') {
            Some(q) => q
                .strip_suffix('"')
                .ok_or("a boundary with a quote that does not end")?,
            None => value,
        };
        // No space or tab: PHP and Rack keep one after the `=`, Go does not.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.=+/".contains(&b);
        if value.is_empty() || value.len() > 70 || !value.bytes().all(plain) {
            return Err("a boundary of other than letters, digits and -_.=+/");
        }
        found = Some(value.to_string());
    }
    found.ok_or("no boundary")
}

/// The `name` of a part whose header lines (CRLF between them) are `headers`.
fn part_name(headers: &[u8]) -> Result<String, Unread> {
    let headers = std::str::from_utf8(headers).map_err(|_| "a part header that is not UTF-8")?;
    if headers.bytes().any(|b| b == 0) {
        return Err("a part header with a NUL");
    }
    // PHP reads a header line in pieces of 5,120 bytes: a longer one is cut, and what follows
    // the cut read as a header of its own.
    if headers.split("\r\n").any(|l| l.len() > MAX_HEADER_LINE) {
        return Err("a part header line longer than 4,096 bytes");
    }
    // Rack reads the name with `/Content-Disposition:[^:]*;\s*name=/i` over the whole block.
    let lower = headers.to_ascii_lowercase();
    if lower.matches("content-disposition").count() != 1 || rack_names(&lower) != 1 {
        return Err("a part whose headers name it other than once");
    }
    let mut name = None;
    for line in headers.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            return Err("a folded part header line");
        }
        if line.contains(['\r', '\n']) {
            return Err("a part header line with a bare CR or LF");
        }
        let (key, value) = line
            .split_once(':')
            .ok_or("a part header line without ':'")?;
        if key.is_empty() || !key.bytes().all(is_tchar) {
            return Err("a part header name that is not a token");
        }
        if key.eq_ignore_ascii_case("content-id") {
            // Rack names a part without a `name` by it.
            return Err("a part with a Content-ID");
        }
        if key.eq_ignore_ascii_case("content-type")
            && value
                .trim_start()
                .get(..10)
                .is_some_and(|t| t.eq_ignore_ascii_case("multipart/"))
        {
            return Err("a multipart part inside a multipart form");
        }
        if key.eq_ignore_ascii_case("content-disposition") {
            name = Some(disposition_name(value)?);
        }
    }
    name.ok_or("a part without a Content-Disposition")
}

/// The longest part header line read.
const MAX_HEADER_LINE: usize = 4096;

/// Ruby's `\s`: ASCII whitespace only (a no-break space is not).
const RUBY_SPACE: [char; 5] = [' ', '\t', '\x0b', '\x0c', '\r'];

/// How many times Rack's `;\s*name=` (any case) is in `lower`.
fn rack_names(lower: &str) -> usize {
    lower
        .match_indices(';')
        .filter(|(i, _)| {
            lower[i + 1..]
                .trim_start_matches(RUBY_SPACE)
                .trim_start_matches('\n')
                .starts_with("name=")
        })
        .count()
}

/// The one `name` of a `Content-Disposition` value (`form-data; name="x"; filename="y"`):
/// parameters split on `;` outside quotes, each given once, quoted or a plain token; no
/// `name*` (RFC 2231); the name itself without a backslash.
fn disposition_name(value: &str) -> Result<String, Unread> {
    let params = split_outside_quotes(value)?;
    let kind = params.first().map_or("", |k| k.trim_ascii());
    if kind.is_empty() || !kind.bytes().all(is_tchar) {
        return Err("a Content-Disposition that is not a token and parameters");
    }
    let mut keys = Vec::new();
    let mut name = None;
    for param in &params[1..] {
        let (key, value) = param
            .split_once('=')
            .ok_or("a Content-Disposition parameter without '='")?;
        // ASCII whitespace only: Rack's `\s` is not Rust's `trim` (a no-break space).
        let key = key.trim_ascii_start().to_ascii_lowercase();
        if key.is_empty() || !key.bytes().all(is_tchar) || key.contains('*') {
            return Err("a Content-Disposition parameter key that is not a plain token");
        }
        if keys.contains(&key) {
            return Err("a Content-Disposition parameter given twice");
        }
        let value = value.trim_ascii_end();
        let text = match value.strip_prefix('"') {
            Some(q) => q
                .strip_suffix('"')
                .ok_or("a quoted Content-Disposition value without its end")?,
            None if !value.is_empty() && value.bytes().all(is_tchar) => value,
            None => return Err("a Content-Disposition value that is not a plain token"),
        };
        if key == "name" {
            if text.contains(['\\', '"']) {
                return Err("a part name with a backslash or a quote");
            }
            if text.is_empty() {
                // Rack names such a part by its type or its filename.
                return Err("a part with an empty name");
            }
            name = Some(text.to_string());
        }
        keys.push(key);
    }
    name.ok_or("a part without a name")
}

/// `value` split on `;` outside `"…"` (a backslash escapes the next character inside them).
fn split_outside_quotes(value: &str) -> Result<Vec<&str>, Unread> {
    let (mut parts, mut from, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&value[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("a Content-Disposition with a quote that does not end");
    }
    parts.push(&value[from..]);
    Ok(parts)
}

/// RFC 9110's `tchar`, without `'` (PHP reads `'…'` as quotes).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&*+-.^_`|~".contains(&b)
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
        let body = b"--XB\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a;b \\\"c\\\".txt\"\r\nContent-Type: text/plain\r\n\r\nline\nline\r\n--XB\r\ncontent-disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XB\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n\r\n--XB--\r\n";
        assert_eq!(
            part_names(CT, body),
            Ok(vec!["file".into(), "_method".into(), "empty".into()])
        );
        assert_eq!(
            part_names(
                "multipart/form-data; charset=utf-8; boundary=\"----WebKitFormBoundaryA1\"",
                b"------WebKitFormBoundaryA1\r\nContent-Disposition: form-data; name=x\r\n\r\n\r\n------WebKitFormBoundaryA1--"
            ),
            Ok(vec!["x".into()])
        );
    }

    /// Each was read as `_method` by PHP, Rack or Go, and as another name (or none) by an
    /// earlier reading of the gateway's.
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
            "Content-Disposition: form-data; name=x; filename=\"a; name=_method\"",
            "Content-Disposition: form-data; name=\"x\"\r\nX-Foo; name=_method",
            "X-Content-Disposition: x; name=_method\r\nContent-Disposition: form-data; name=a",
            "X-Foo: Content-Disposition:; name=_method\r\nContent-Disposition: form-data; name=a",
            "Content-ID: _method",
            "Content-Disposition: form-data; name*=UTF-8''_method",
            "Content-Disposition: form-data; name*0=_met; name*1=hod",
            "Content-Disposition: form-data; name=\"a\\\"b\"",
            "Content-Disposition : form-data; name=x",
            "Content-Disposition: form-data; name=x\r\nContent-Disposition: form-data; name=_method",
            "Content-Disposition: form-data; name=x\r\nContent-Type: multipart/mixed; boundary=XB",
            "Content-Disposition: form-data; name=\"x\nX: y; name=_method\"",
            "Content-Disposition: form-data;\u{a0}name=\"a\"\r\nContent-Type: _method",
            "Content-Disposition: form-data; name=\"\"; filename=\"_method\"",
        ] {
            assert!(names(h).is_err(), "{h:?} was read as {:?}", names(h));
        }
        // PHP cuts a header line at 5,120 bytes.
        let long = format!(
            "Content-Disposition: form-data; pad=\"{}\"; name=\"_method:x\"",
            "P".repeat(5067)
        );
        assert!(
            names(&long).is_err(),
            "a header line of {} bytes",
            long.len()
        );
    }

    #[test]
    fn framing_servers_read_apart_is_refused() {
        let part = |name: &str| format!("Content-Disposition: form-data; name={name}\r\n\r\nx");
        let (a, m) = (part("a"), part("_method"));
        for body in [
            // A delimiter not at the start of a line, or not at the start of the body.
            format!("x--XB\r\n{a}\r\n--XB\r\n{m}\r\n--XB--\r\n"),
            format!("preamble\r\n--XB\r\n{a}\r\n--XB--\r\n"),
            format!("--XB\r\n{a}--XB\r\n{m}\r\n--XB--\r\n"),
            // Line ends that are LF alone.
            format!("--XB\n{m}\n--XB--\n"),
            format!("--XB\r\n{a}\n--XB\r\n{m}\r\n--XB--\r\n"),
            // No close delimiter; something after it.
            format!("--XB\r\n{a}\r\n"),
            format!("--XB\r\n{a}\r\n--XB--\r\n--XB\r\n{m}"),
            // A part whose headers do not end.
            "--XB\r\nContent-Disposition: form-data; name=a\r\n--XB--\r\n".to_string(),
        ] {
            assert!(
                part_names(CT, body.as_bytes()).is_err(),
                "{body:?} was read as {:?}",
                part_names(CT, body.as_bytes())
            );
        }
        // A part right after the headers of the one before (Go reads an empty part there)
        // is read as a part too.
        let body = "--XB\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--XB\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--XB--\r\n";
        assert_eq!(
            part_names(CT, body.as_bytes()),
            Ok(vec!["a".into(), "_method".into()])
        );
        for ct in [
            "multipart/form-data",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=a,b",
            "multipart/form-data; xboundary=ZZ; boundary=XB",
            "multipart/form-data; charset=boundary=ZZ; boundary=XB",
            "multipart/form-data; boundary=\"a b\"",
            "multipart/form-data; other=1; boundary=XB",
            // Found by a differential run against PHP 8.2, Rack 2.2 and Go.
            "multipart/form-data; boundary= XB",
            "multipart/form-data; boundary=\tXB",
            "multipart/form-data; charset=boundary x=ZZ; boundary=XB",
            "multipart/form-data; charset=boundaryx=ZZ; boundary=XB",
            "multipart/form-data; BOUNDARY=XB; charset=boundary/=ZZ",
            "multipart/form-data; boundary =ZZ; boundary=XB",
        ] {
            assert!(part_names(ct, b"--XB\r\n").is_err(), "{ct}");
        }
    }
}
