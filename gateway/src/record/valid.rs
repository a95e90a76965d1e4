//! Is a text one JSON value? The record keeps an answer as its text, written into the record
//! as it is, so the text must be exactly one JSON value (anything else could end the record's
//! `response` and write fields of its own). `serde_json` answers this too, by parsing it, at
//! about 19 instructions a byte: two thirds of a 16 KiB answer's cost on the data path. This
//! checks the same grammar (RFC 8259) in one pass, strings in 16-byte blocks.

/// Nesting deeper than this is refused: `serde_json` refuses 128 levels, and a record reader
/// parses the answer a level or two inside the record.
const MAX_DEPTH: usize = 100;

/// `s` is one JSON value, with whitespace around it or not. Escapes are checked for their
/// form, not for what they encode (`\ud800` passes, as it does `serde_json`'s raw values).
pub fn is_json(s: &[u8]) -> bool {
    // Containers open around the current position: `true` for an object.
    let mut stack = [false; MAX_DEPTH];
    let mut depth = 0;
    let mut i = ws(s, 0);
    loop {
        // A value at `i`.
        let Some(&c) = s.get(i) else { return false };
        i = match c {
            b'{' | b'[' => {
                if depth == MAX_DEPTH {
                    return false;
                }
                let object = c == b'{';
                stack[depth] = object;
                depth += 1;
                i = ws(s, i + 1);
                if s.get(i) == Some(if object { &b'}' } else { &b']' }) {
                    depth -= 1;
                    i + 1
                } else if object {
                    match key(s, i) {
                        Some(next) => {
                            i = next;
                            continue;
                        }
                        None => return false,
                    }
                } else {
                    continue;
                }
            }
            b'"' => match string(s, i) {
                Some(e) => e,
                None => return false,
            },
            b't' if s[i..].starts_with(b"true") => i + 4,
            b'f' if s[i..].starts_with(b"false") => i + 5,
            b'n' if s[i..].starts_with(b"null") => i + 4,
            b'-' | b'0'..=b'9' => match number(s, i) {
                Some(e) => e,
                None => return false,
            },
            _ => return false,
        };
        // After a value: a comma and the next, or the end of containers.
        loop {
            i = ws(s, i);
            if depth == 0 {
                return i == s.len();
            }
            let object = stack[depth - 1];
            match s.get(i) {
                Some(b',') => {
                    i = ws(s, i + 1);
                    if object {
                        match key(s, i) {
                            Some(next) => i = next,
                            None => return false,
                        }
                    }
                    break;
                }
                Some(b'}') if object => {
                    depth -= 1;
                    i += 1;
                }
                Some(b']') if !object => {
                    depth -= 1;
                    i += 1;
                }
                _ => return false,
            }
        }
    }
}

/// Past the whitespace at `i`.
fn ws(s: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = s.get(i) {
        i += 1;
    }
    i
}

/// An object's key and its colon at `i`; where its value starts.
fn key(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let e = ws(s, string(s, i)?);
    (s.get(e) == Some(&b':')).then(|| ws(s, e + 1))
}

/// A string opening at `i` (its quote); just past its closing quote.
fn string(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        // Sixteen bytes at a time while none needs a look: no quote, backslash or control.
        while let Some(block) = s.get(j..j + 16) {
            let special = block
                .iter()
                .fold(false, |a, &b| a | (b < 0x20) | (b == b'"') | (b == b'\\'));
            if special {
                break;
            }
            j += 16;
        }
        match *s.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => match *s.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    let hex = s.get(j + 2..j + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    j += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => j += 1,
        }
    }
}

/// A number at `i`: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; just past it.
fn number(s: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let from = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match s.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if s.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if let Some(b'e' | b'E') = s.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = s.get(i) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agrees with `serde_json` on what is one JSON value.
    #[test]
    fn agrees_with_serde_json() {
        let cases = [
            "{}",
            "[]",
            " {} ",
            "\n[1, 2.5e3, -0, 0.1, 1E+2, 1e-2]\t",
            r#"{"a":{"b":[true,false,null]}}"#,
            r#""x\"y\\z\/\b\f\n\r\t\u00e9\uD800""#,
            r#"{"k" : "v" , "k2":[ ]}"#,
            "0",
            "-1",
            "12",
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "[,1]",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "truex",
            "nul",
            "[1 2]",
            r#""abc"#,
            r#""\x""#,
            r#""\u12g4""#,
            "\"a\u{1}b\"",
            "{}{}",
            "[] x",
            r#"{"a":1}}"#,
            "[1]]",
            "NaN",
            "Infinity",
            r#""0123456789abcdef0123456789abcdef\"""#,
            r#""0123456789abcdef0123456789abcdef"#,
            r#"[{"a":[{"b":{}}]},"0123456789abcdef"]"#,
        ];
        for c in cases {
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(c).is_ok();
            assert_eq!(is_json(c.as_bytes()), theirs, "{c:?}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(is_json(deep(MAX_DEPTH).as_bytes()));
        assert!(!is_json(deep(MAX_DEPTH + 1).as_bytes()));
        assert!(!is_json(deep(100_000).as_bytes()));
    }

    /// Every prefix of a valid document but itself is refused, as `serde_json` refuses it.
    #[test]
    fn prefixes_and_bytes() {
        let doc =
            r#"{"id":42,"name":"a \"widget\"","tags":["x","y"],"n":-1.5e3,"ok":true,"z":null}"#;
        for k in 0..=doc.len() {
            let p = &doc.as_bytes()[..k];
            let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok();
            assert_eq!(is_json(p), theirs, "{:?}", String::from_utf8_lossy(p));
        }
        for at in 0..doc.len() {
            for b in [
                b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', 0x01, b'x', b'1',
            ] {
                let mut d = doc.as_bytes().to_vec();
                d[at] = b;
                let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(&d).is_ok();
                assert_eq!(is_json(&d), theirs, "{:?}", String::from_utf8_lossy(&d));
            }
        }
    }
}
