//! Literal secrets — the credentials the gateway injects — removed from whatever comes back:
//! an upstream that echoes its request (a debug endpoint, an error page quoting headers) must
//! not hand the caller, a record or a log the secret the caller was never to see.
//!
//! An echo need not be literal: JSON escapes `/` as `\/` and may write any character as
//! `\u00XX`, a URL or form percent-encodes it (`%2F`), HTML writes `&#47;` or `&#x2F;`. Each
//! byte of a secret is matched in any of those spellings, mixed freely (JSON's and HTML's named
//! escapes too, and JSON escaped again inside JSON strings), so no re-encoding of the echo
//! lets the value through. A header whose name holds a secret is removed.
use std::{borrow::Cow, fmt::Write as _, sync::Arc};

use http::{HeaderMap, HeaderValue};
use regex::bytes::Regex;

const REPLACEMENT: &[u8] = b"[MASKED:credential]";

/// The longest spelling of one byte that [`Secrets`] recognises: `\u00hh` with its backslash a
/// run of eight (three more levels of JSON string; a quote's or a backslash's escape doubles
/// and adds one each level, so eight covers two more for those).
const LONGEST_SPELLING: usize = 13;

/// The secrets to look for, compiled once per secret value.
#[derive(Debug)]
pub struct Secrets {
    re: Regex,
    /// The longest a match can be: what a stream must hold back.
    longest: usize,
    /// The values in lower case, for header names (which arrive in lower case).
    lower: Vec<Vec<u8>>,
}

impl Secrets {
    /// A scrubber for `values`; why there can be none (nothing to look for, or a value too long
    /// for its pattern: fail closed rather than inject what could not be scrubbed).
    pub fn new(values: &[&str]) -> Result<Arc<Self>, SecretsError> {
        let values: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
        let longest = values
            .iter()
            .map(|v| v.len())
            .max()
            .ok_or(SecretsError::Empty)?
            * LONGEST_SPELLING;
        let alternatives: Vec<String> = values
            .iter()
            .map(|v| {
                let mut p = spellings(v.as_bytes());
                for e in encodings(v.as_bytes()) {
                    p.push('|');
                    p.push_str(&e);
                }
                p
            })
            .collect();
        let re = Regex::new(&format!("(?s-u){}", alternatives.join("|"))).map_err(|_| {
            SecretsError::TooLong {
                bytes: values.iter().map(|v| v.len()).max().unwrap_or(0),
            }
        })?;
        let lower = values
            .iter()
            .map(|v| v.as_bytes().to_ascii_lowercase())
            .collect();
        Ok(Arc::new(Self { re, longest, lower }))
    }

    /// `data` without the secrets; borrowed when there were none in it.
    pub fn scrub<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        if !self.re.is_match(data) {
            return Cow::Borrowed(data);
        }
        let mut out = Vec::with_capacity(data.len());
        let end = self.replace(data, &mut out);
        out.extend_from_slice(&data[end..]);
        Cow::Owned(out)
    }

    /// Header values that carry a secret get it replaced (or, if the result is not a valid
    /// value, are dropped).
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        for value in headers.values_mut() {
            if let Cow::Owned(clean) = self.scrub(value.as_bytes()) {
                *value = HeaderValue::from_bytes(&clean)
                    .unwrap_or_else(|_| HeaderValue::from_static("[MASKED:credential]"));
            }
        }
        // A field whose name holds a secret (an upstream that echoes values as names) is
        // removed: a scrubbed name would not be a name.
        let named: Vec<http::HeaderName> = headers
            .keys()
            .filter(|n| {
                self.lower
                    .iter()
                    .any(|v| memchr::memmem::find(n.as_str().as_bytes(), v).is_some())
            })
            .cloned()
            .collect();
        for n in named {
            headers.remove(n);
        }
    }

    /// Copies `data` to `out` with each secret replaced; returns where the copy stopped
    /// (the end of the last match, the rest is the caller's to copy or hold).
    fn replace(&self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let mut at = 0;
        for m in self.re.find_iter(data) {
            out.extend_from_slice(&data[at..m.start()]);
            out.extend_from_slice(REPLACEMENT);
            at = m.end();
        }
        at
    }
}

/// Why a secret cannot be scrubbed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("the credential is empty")]
    Empty,
    #[error(
        "the credential ({bytes} bytes) is too long to be scrubbed from answers in every spelling; a credential is not injected unless it can be"
    )]
    TooLong { bytes: usize },
}

/// How much of the end of an issued token is scrubbed: 43 characters, 256 bits of base64url.
const TOKEN_TAIL: usize = 43;

/// The part of an issued token (an OAuth2 access token, an exchanged token) that answers are
/// scrubbed of: its last [`TOKEN_TAIL`] characters. Masked there, what an echo leaves is
/// unusable (256 bits of a JWT's signature or of an opaque token are gone), and the pattern
/// costs a twentieth of a whole JWT's to build, which is done on the data path whenever a
/// token is replaced (a 1.7 KB cloud access token's whole pattern took 75–120 ms).
pub fn token_tail(token: &str) -> &str {
    token
        .char_indices()
        .rev()
        .nth(TOKEN_TAIL - 1)
        .map_or(token, |(i, _)| &token[i..])
}

/// Patterns for the whole-value encodings an echo may give `secret`: UTF-16 and UTF-32 in
/// either byte order (ASP.NET answers in UTF-16 when asked; a Windows API echoes its wide
/// strings), its letters in either case there too; hex in either case; and base64 in both
/// alphabets (a Flask session cookie holds what a view stored in it as base64 JSON; Basic
/// authorization echoes `user:secret` so; .NET encodes UTF-16 so) at each of its three
/// alignments, of the secret and of its UTF-16: of the base64 of any text around the secret,
/// the characters that only the secret's bytes decide, with a line break allowed between any
/// two (MIME wraps base64 at 76 columns). Compressed or encrypted echoes, and encodings made
/// up for the purpose (base32, quoted-printable of every byte, ascii85), are beyond any
/// scrubber.
fn encodings(secret: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    let one = |b: u8| {
        if b.is_ascii_alphabetic() {
            format!(
                "[{}{}]",
                b.to_ascii_lowercase() as char,
                b.to_ascii_uppercase() as char
            )
        } else {
            literal(&[b])
        }
    };
    let mut out = Vec::new();
    for width in [2, 4] {
        let pad = "\\x00".repeat(width - 1);
        let little: String = secret.iter().map(|b| format!("{}{pad}", one(*b))).collect();
        let big: String = secret.iter().map(|b| format!("{pad}{}", one(*b))).collect();
        out.extend([little, big]);
    }
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    out.push(format!("(?i:{hex})"));
    // Short secrets' cores are a few characters, found by chance in any base64: skipped.
    if secret.len() >= 6 {
        let utf16: Vec<u8> = secret.iter().flat_map(|b| [*b, 0]).collect();
        for text in [secret, &utf16[..]] {
            for lead in 0..3 {
                let mut buf = vec![0; lead];
                buf.extend_from_slice(text);
                let enc = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&buf);
                // The first characters mix the unknown bytes before; a last partial group's
                // last character the unknown bytes after.
                let skip = [0, 2, 3][lead];
                let end = enc.len() - usize::from(buf.len() % 3 != 0);
                let core = &enc.as_bytes()[skip..end];
                let url: Vec<u8> = core
                    .iter()
                    .map(|c| match c {
                        b'+' => b'-',
                        b'/' => b'_',
                        c => *c,
                    })
                    .collect();
                out.push(wrapped(core));
                if url != core {
                    out.push(wrapped(&url));
                }
            }
        }
    }
    out
}

/// `bytes` as a pattern that matches exactly them.
fn literal(bytes: &[u8]) -> String {
    let mut p = String::with_capacity(bytes.len() * 4);
    for b in bytes {
        if b.is_ascii_alphanumeric() {
            p.push(*b as char);
        } else {
            let _ = write!(p, "\\x{b:02x}");
        }
    }
    p
}

/// `bytes` as a pattern that matches exactly them, with a line break allowed between any two.
fn wrapped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| literal(&[*b]))
        .collect::<Vec<_>>()
        .join("(?:\\r?\\n)?")
}

/// A pattern matching `secret` with each byte in any spelling an echo may give it: as is,
/// `\u00hh`, `%hh`, `&#ddd;`, `&#xhh;` (hex in either case), HTML's named entities, JSON's
/// short escapes (`\/`, `\"`, `\\`, `\n`…), and each escape inside more levels of JSON
/// string (an echo of JSON as a string in JSON writes `\"` as `\\\"`, `\n` as `\\n`): an
/// escape's backslash may be a run of up to eight.
fn spellings(secret: &[u8]) -> String {
    let mut p = String::with_capacity(secret.len() * 96);
    for &b in secret {
        p.push_str("(?:");
        if b.is_ascii_alphabetic() {
            // In either case: an upper-cased echo leaves a secret's letters to guess.
            let _ = write!(
                p,
                "[{}{}]",
                b.to_ascii_lowercase() as char,
                b.to_ascii_uppercase() as char
            );
        } else if b.is_ascii_graphic() || b == b' ' {
            p.push_str(&regex::escape(&(b as char).to_string()));
        } else {
            let _ = write!(p, "\\x{b:02x}");
        }
        if b == b' ' {
            p.push_str(r"|\+");
        }
        // Escapes: a run of backslashes and what follows them. A backslash is itself the run
        // (two or more: one alone is the byte as is).
        let short = match b {
            b'/' => "/",
            b'"' => "\"",
            b'\n' => "n",
            b'\r' => "r",
            b'\t' => "t",
            0x08 => "b",
            0x0c => "f",
            b'\'' => "'",
            _ => "",
        };
        if b == b'\\' {
            p.push_str(r"|\\{2,8}");
        } else if !short.is_empty() {
            let _ = write!(p, r"|\\{{1,8}}{short}");
        }
        // `\u00hh`, and JavaScript's and Python's `\xhh`.
        let _ = write!(p, r"|\\{{1,8}}(?i:u00{b:02x}|x{b:02x})");
        // HTML's named entities for its specials.
        let named = match b {
            b'"' => "|(?i:&quot;)",
            b'&' => "|(?i:&amp;)",
            b'<' => "|(?i:&lt;)",
            b'>' => "|(?i:&gt;)",
            b'\'' => "|(?i:&apos;)",
            _ => "",
        };
        p.push_str(named);
        // Percent-encoded once or twice (`%2F`, `%252F`); character references with a few
        // leading zeros (bounded: what a stream holds back must be bounded too).
        let _ = write!(
            p,
            r"|(?i:%(?:25)?{b:02x})|&\#0{{0,4}}{b};|(?i:&\#x0{{0,4}}{b:02x};))"
        );
    }
    p
}

/// [`Secrets`] over a body that arrives in chunks: a secret split across two chunks is held
/// back (at most its length less one byte) until it can be judged.
#[derive(Debug)]
pub struct ScrubStream {
    secrets: Arc<Secrets>,
    carry: Vec<u8>,
}

impl ScrubStream {
    pub fn new(secrets: Arc<Secrets>) -> Self {
        Self {
            secrets,
            carry: Vec::new(),
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let owned;
        let data: &[u8] = if self.carry.is_empty() {
            chunk
        } else {
            self.carry.extend_from_slice(chunk);
            owned = std::mem::take(&mut self.carry);
            &owned
        };
        let at = self.secrets.replace(data, out);
        // A secret not yet complete starts within its length less one of the end.
        let hold = (self.secrets.longest - 1).min(data.len() - at);
        let split = data.len() - hold;
        out.extend_from_slice(&data[at..split]);
        self.carry.clear();
        self.carry.extend_from_slice(&data[split..]);
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.carry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_value_encodings_of_a_secret_are_scrubbed() {
        use base64::Engine as _;
        let secret = "Zq9s3cr3tK3y77XyzW";
        let s = Secrets::new(&[secret]).unwrap();
        let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        let b64url = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
        let utf16: Vec<u8> = secret.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let utf32be: Vec<u8> = secret
            .chars()
            .flat_map(|c| (c as u32).to_be_bytes())
            .collect();
        let hex: String = secret.bytes().map(|b| format!("{b:02X}")).collect();
        for echo in [
            // A Flask session cookie, a Basic authorization, at each alignment.
            b64(&format!(r#"{{"api_key":"{secret}"}}"#)).into_bytes(),
            b64(&format!("user:{secret}")).into_bytes(),
            b64(&format!("{secret}:")).into_bytes(),
            b64url(&format!("ab{secret}cd?>")).into_bytes(),
            utf16,
            utf32be,
            hex.into_bytes(),
            secret.to_ascii_uppercase().into_bytes(),
            // MIME's base64, wrapped at 76 columns right inside the secret's characters.
            {
                let b = b64(&format!("{}{secret}", "p".repeat(44)));
                let (head, tail) = b.split_at(62);
                format!("{head}\r\n{tail}").into_bytes()
            },
            // UTF-16 of the upper-cased secret, and .NET's base64 of its UTF-16.
            secret
                .to_ascii_uppercase()
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
            base64::engine::general_purpose::STANDARD
                .encode(
                    secret
                        .encode_utf16()
                        .flat_map(u16::to_le_bytes)
                        .collect::<Vec<u8>>(),
                )
                .into_bytes(),
        ] {
            let out = s.scrub(&echo);
            assert!(
                matches!(out, Cow::Owned(_)),
                "not scrubbed: {:?}",
                String::from_utf8_lossy(&echo)
            );
            // What is left decodes to nothing that holds the secret's middle.
            let left = String::from_utf8_lossy(&out).replace('\0', "");
            assert!(!left.contains("3cr3tK3y"), "{left}");
        }
        // Text that only shares letters with it is left alone.
        assert!(matches!(
            s.scrub(b"plain text, no secret"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn secrets_are_replaced_whole_and_split() {
        let s = Secrets::new(&["s3cr3t-value"]).unwrap();
        assert_eq!(
            &*s.scrub(b"key=s3cr3t-value;"),
            b"key=[MASKED:credential];".as_slice()
        );
        assert!(matches!(s.scrub(b"clean"), Cow::Borrowed(_)));
        let text = b"a s3cr3t-value b s3cr3t-value c".as_slice();
        for cut in 0..text.len() {
            let mut st = ScrubStream::new(s.clone());
            let mut out = Vec::new();
            st.push(&text[..cut], &mut out);
            st.push(&text[cut..], &mut out);
            st.finish(&mut out);
            assert_eq!(
                out, b"a [MASKED:credential] b [MASKED:credential] c",
                "cut at {cut}"
            );
        }
        // Byte by byte: memory stays bounded by the secret's length.
        let mut st = ScrubStream::new(s);
        let mut out = Vec::new();
        for b in text {
            st.push(std::slice::from_ref(b), &mut out);
            assert!(st.carry.len() < "s3cr3t-value".len() * LONGEST_SPELLING);
        }
        st.finish(&mut out);
        assert_eq!(out, b"a [MASKED:credential] b [MASKED:credential] c");
    }

    #[test]
    fn escaped_echoes_are_scrubbed_too() {
        let s = Secrets::new(&["s3cr3t/K3y+1"]).unwrap();
        for echo in [
            "s3cr3t/K3y+1",
            "s3cr3t\\/K3y+1",
            "s3cr3t\\u002fK3y+1",
            "s3cr3t\\u002FK3y\\u002b1",
            "\\u0073\\u0033cr3t/K3y+1",
            "s3cr3t%2FK3y%2B1",
            "s3cr3t%2fK3y%2b1",
            "%73%33%63%72%33%74%2F%4B%33%79%2B%31",
            "s3cr3t&#47;K3y&#43;1",
            "s3cr3t&#x2F;K3y&#x2b;1",
        ] {
            let scrubbed = s.scrub(echo.as_bytes());
            assert_eq!(&*scrubbed, REPLACEMENT, "{echo}");
        }
        assert!(matches!(s.scrub(b"s3cr3t/K3y-1"), Cow::Borrowed(_)));
        // A quote, a backslash and HTML's specials, as JSON and a page write them.
        let s2 = Secrets::new(&["gw-key\"7f3a\\9c&x<y'\n"]).unwrap();
        for echo in [
            "gw-key\\\"7f3a\\\\9c&x<y'\\n",
            "gw-key&quot;7f3a\\9c&amp;x&lt;y&apos;\n",
            "gw-key\\u00227f3a\\u005c9c\\u0026x\\u003cy\\u0027\\u000a",
            // JavaScript's and Python's hex escapes, references with leading zeros, percent
            // twice.
            "gw-key\\x227f3a\\x5c9c&x<y\\'\\n",
            "gw-key&#x00022;7f3a&#0092;9c&#0038;x%253cy%2527%250a",
            // JSON holding JSON as a string: each escape escaped again.
            "gw-key\\\\\\\"7f3a\\\\\\\\9c&x<y'\\\\n",
        ] {
            assert_eq!(&*s2.scrub(echo.as_bytes()), REPLACEMENT, "{echo}");
        }
        // Streamed, cut anywhere inside the longest spelling.
        let text = b"a %73%33%63%72%33%74%2F%4B%33%79%2B%31 b".as_slice();
        for cut in 0..text.len() {
            let mut st = ScrubStream::new(s.clone());
            let mut out = Vec::new();
            st.push(&text[..cut], &mut out);
            st.push(&text[cut..], &mut out);
            st.finish(&mut out);
            assert_eq!(out, b"a [MASKED:credential] b", "cut at {cut}");
        }
    }

    #[test]
    fn a_secret_that_cannot_be_scrubbed_says_why() {
        assert_eq!(Secrets::new(&[""]).err(), Some(SecretsError::Empty));
        let long = "k".repeat(6000);
        assert_eq!(
            Secrets::new(&[&long]).err(),
            Some(SecretsError::TooLong { bytes: 6000 })
        );
        let jwt = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            "p".repeat(1500),
            "s".repeat(342)
        );
        assert_eq!(token_tail(&jwt).len(), TOKEN_TAIL);
        assert_eq!(token_tail("short"), "short");
        assert!(Secrets::new(&[token_tail(&jwt)]).is_ok());
    }

    #[test]
    fn headers_are_scrubbed() {
        let s = Secrets::new(&["tok"]).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-echo", "Bearer tok".parse().unwrap());
        h.insert("x-other", "fine".parse().unwrap());
        s.scrub_headers(&mut h);
        assert_eq!(h["x-echo"], "Bearer [MASKED:credential]");
        assert_eq!(h["x-other"], "fine");
        // A name that holds the secret, in any case, goes.
        let s = Secrets::new(&["Tok3n"]).unwrap();
        h.insert("x-tok3n-echo", "1".parse().unwrap());
        s.scrub_headers(&mut h);
        assert!(!h.contains_key("x-tok3n-echo") && h.contains_key("x-other"));
    }
}
