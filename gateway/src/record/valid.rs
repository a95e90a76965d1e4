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
#[inline(always)]
fn string(s: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j = plain_run(s, j);
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

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// Where the first byte at or after `j` that a string cannot simply contain is (a quote, a
/// backslash, a control byte), or `s.len()`. Eight bytes at a time as one word: most strings
/// of an answer are short, and a byte-at-a-time or 16-byte-block check paid more per string
/// than the string had bytes (callgrind, the l7 bench's 16 KiB answer: 160 instructions a
/// string, over half of the data path's work).
#[inline]
fn plain_run(s: &[u8], mut j: usize) -> usize {
    while let Some(word) = s.get(j..j + 8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or([b'"'; 8]));
        // A byte is flagged where it is zero in `w ^ c` (the byte equals c) or below 0x20.
        // Borrows can flag bytes above a true hit, never below one: the lowest flag is exact.
        let quote = w ^ (ONES * u64::from(b'"'));
        let slash = w ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote)
            | (slash.wrapping_sub(ONES) & !slash)
            | (w.wrapping_sub(ONES * 0x20) & !w);
        let found = found & HIGHS;
        if found != 0 {
            return j + (found.trailing_zeros() / 8) as usize;
        }
        j += 8;
    }
    while let Some(&c) = s.get(j) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        j += 1;
    }
    j
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

    /// Strings with a quote, a backslash, a control byte or a multi-byte character at every
    /// position of the word-at-a-time scan, as `serde_json` judges them.
    #[test]
    fn strings_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                for special in [
                    "\\\"",
                    "\\\\",
                    "\\u00e9",
                    "\u{1}",
                    "\u{1f}",
                    "\u{7f}",
                    "\u{e9}",
                    "\u{1F600}",
                    "\\x",
                    "\"",
                ] {
                    let mut body = "a".repeat(at);
                    body.push_str(special);
                    body.push_str(&"b".repeat(len - at));
                    for doc in [
                        format!("\"{body}\""),
                        format!("[\"{body}\",1]"),
                        format!("{{\"{body}\":\"{body}\"}}"),
                    ] {
                        let theirs = serde_json::from_str::<serde::de::IgnoredAny>(&doc).is_ok();
                        assert_eq!(is_json(doc.as_bytes()), theirs, "{doc:?}");
                    }
                }
            }
        }
        // Every byte value inside a string, at every offset in a word.
        for b in 0..=255u8 {
            for at in 0..9 {
                let mut d = vec![b'"'];
                d.extend(std::iter::repeat_n(b'a', at));
                d.push(b);
                d.extend_from_slice(b"zzzzzzzzz\"");
                let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(&d).is_ok();
                assert_eq!(is_json(&d), theirs, "{:?}", String::from_utf8_lossy(&d));
            }
        }
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
