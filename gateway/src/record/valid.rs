//! Is a text one JSON value? The record keeps an answer as its text, written into the record
//! as it is, so the text must be exactly one JSON value (anything else could end the record's
//! `response` and write fields of its own). `serde_json` answers this too, by parsing it, at
//! about 19 instructions a byte: two thirds of a 16 KiB answer's cost on the data path.
//!
//! This checks the same grammar (RFC 8259) in two passes over each 64-byte block, as simdjson does:
//! the block's bytes are classified with vector compares ([`Lexed`]), which finds the strings,
//! checks every byte inside them for control bytes at once and each escape for its form (one of
//! `"\/bfnrt`, or `u` and four hex digits), and leaves one bit per token: a structural character, a
//! string's opening quote, the first byte of a number or literal. Then only the tokens are walked
//! through the grammar, and a number or literal is read where it starts. A string's bytes are never
//! looked at one by one.

use crate::util::json_blocks::{Lexed, StringBits, Strings};

/// Nesting deeper than this is refused: `serde_json` refuses 128 levels, and a record reader
/// parses the answer a level or two inside the record.
const MAX_DEPTH: usize = 100;

/// `s` is one JSON value, with whitespace around it or not. Escapes are checked for their
/// form, not for what they encode (`\ud800` passes, as it does `serde_json`'s raw values).
/// UTF-8 is the caller's to check: any byte from 0x80 up may stand in a string.
pub fn is_json(s: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, as just checked.
        return unsafe { is_json_avx2(s) };
    }
    validate(s, Lexed::of)
}

/// [`is_json`] with every block classified by AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn is_json_avx2(s: &[u8]) -> bool {
    // SAFETY: the CPU has AVX2 (this function's contract).
    validate(s, |b| unsafe { Lexed::of_avx2(b) })
}

/// [`is_json`], with `lex` classifying each block.
#[inline(always)]
fn validate(s: &[u8], lex: impl Fn(&[u8; 64]) -> Lexed) -> bool {
    let mut walk = Walk::new();
    let mut strings = Strings::default();
    // The previous block ended inside a number or literal.
    let mut in_scalar = false;
    // Control bytes found inside strings.
    let mut bad = 0;
    let mut padded = [b' '; 64];
    for (n, block) in s.chunks(64).enumerate() {
        let at = 64 * n;
        let bytes: &[u8; 64] = match block.try_into() {
            Ok(full) => full,
            Err(_) => {
                // The last block, padded with whitespace (which changes nothing); its carries
                // are not read again.
                padded[..block.len()].copy_from_slice(block);
                &padded
            }
        };
        let lexed = lex(bytes);
        let StringBits {
            escaped,
            quote,
            inside,
        } = strings.next(&lexed, block.len());
        bad |= lexed.control & inside;
        let escapes_inside = escaped & inside;
        if escapes_inside != 0 && !escapes_valid(s, at, escapes_inside) {
            return false;
        }
        // Every other byte outside strings belongs to a number or literal, or is not JSON at
        // all (a backslash, a control byte, a letter): either way it ends in a token whose
        // reading refuses it.
        let scalar = !(inside | quote | lexed.separator);
        let starts = scalar & !((scalar << 1) | u64::from(in_scalar));
        in_scalar = scalar >> 63 == 1;
        let real = if block.len() == 64 {
            !0
        } else {
            (1 << block.len()) - 1
        };
        let tokens = ((lexed.structural & !inside) | (quote & inside) | starts) & real;
        if !walk.block(s, at, bytes, tokens) {
            return false;
        }
    }
    bad == 0 && !strings.open() && walk.done()
}

/// Each escaped byte inside a string (bits of the block at `at`) is one of `"\\/bfnrt`, or `u`
/// and four hex digits.
#[cold]
fn escapes_valid(s: &[u8], at: usize, mut bits: u64) -> bool {
    while bits != 0 {
        let j = at + bits.trailing_zeros() as usize;
        bits &= bits - 1;
        match s.get(j) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
            Some(b'u') => match s.get(j + 1..j + 5) {
                Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => {}
                _ => return false,
            },
            // A backslash that ends the text: its string is not closed either.
            _ => return false,
        }
    }
    true
}

/// What the grammar takes as the next token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (the document's, an array element after a comma, or a member's after `:`).
    Value,
    /// A value or `]`: just after `[`.
    ValueOrClose,
    /// A key or `}`: just after `{`.
    KeyOrClose,
    /// A key: after a comma in an object.
    Key,
    /// The colon after a key.
    Colon,
    /// After a value: a comma or the innermost container's close; nothing at the top.
    Next,
}

/// No token is whitespace: the closer of "no container", which nothing closes.
const TOP: u8 = b' ';

/// The token walk: the grammar's state and the open containers. A `match` on the state and
/// the byte, not a table: the next state then depends on predicted branches rather than on a
/// load, and a walk of the l7 bench's 16 KiB answer took 13 % less time than with a table of
/// states (whose lookups chain, one load's latency per token), the same on less regular JSON.
#[derive(Debug)]
struct Walk {
    expect: Expect,
    depth: usize,
    /// The byte that closes each open container (`}` or `]`), from `closers[1]`; `closers[0]`
    /// is [`TOP`].
    closers: [u8; MAX_DEPTH + 1],
}

impl Walk {
    fn new() -> Self {
        Self {
            expect: Expect::Value,
            depth: 0,
            closers: [TOP; MAX_DEPTH + 1],
        }
    }

    /// Takes a block's tokens (bits of `bytes`, the block at `at` of `s`); false if the
    /// grammar refuses one.
    #[inline(always)]
    fn block(&mut self, s: &[u8], at: usize, bytes: &[u8; 64], mut tokens: u64) -> bool {
        let mut expect = self.expect;
        let mut closer = self.closers[self.depth];
        while tokens != 0 {
            let k = tokens.trailing_zeros() as usize;
            tokens &= tokens - 1;
            let c = bytes[k & 63];
            expect = match expect {
                Expect::Next if c == b',' => match closer {
                    b'}' => Expect::Key,
                    b']' => Expect::Value,
                    _ => return false,
                },
                Expect::Next if c == closer => {
                    closer = self.close();
                    Expect::Next
                }
                Expect::Colon if c == b':' => Expect::Value,
                Expect::Key | Expect::KeyOrClose if c == b'"' => Expect::Colon,
                Expect::KeyOrClose if c == b'}' => {
                    closer = self.close();
                    Expect::Next
                }
                Expect::ValueOrClose if c == b']' => {
                    closer = self.close();
                    Expect::Next
                }
                Expect::Value | Expect::ValueOrClose => match c {
                    // A string's bytes hold no token: the next one is past its closing quote.
                    b'"' => Expect::Next,
                    b'{' | b'[' => {
                        if self.depth == MAX_DEPTH {
                            return false;
                        }
                        self.depth += 1;
                        // `}` and `]` are two past `{` and `[`.
                        closer = c + 2;
                        self.closers[self.depth] = closer;
                        if c == b'{' {
                            Expect::KeyOrClose
                        } else {
                            Expect::ValueOrClose
                        }
                    }
                    b'}' | b']' | b',' | b':' => return false,
                    // The whole run of bytes up to the next token or whitespace, not just a
                    // valid beginning of it.
                    _ => match scalar(s, at + k) {
                        Some(end) if s.get(end).is_none_or(|&b| ends_scalar(b)) => Expect::Next,
                        _ => return false,
                    },
                },
                Expect::Next | Expect::Colon | Expect::Key | Expect::KeyOrClose => return false,
            };
        }
        self.expect = expect;
        true
    }

    /// Closes the innermost container; the closer of the one around it.
    fn close(&mut self) -> u8 {
        self.depth -= 1;
        self.closers[self.depth]
    }

    /// One whole value has been read.
    fn done(&self) -> bool {
        self.expect == Expect::Next && self.depth == 0
    }
}

/// Whether `b` ends a number or literal: whitespace, a structural character or a quote (what
/// the next token, if any, then judges).
fn ends_scalar(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'}' | b'[' | b']' | b':' | b',' | b'"'
    )
}

/// A number or literal at `i`; just past it.
#[inline(always)]
fn scalar(s: &[u8], i: usize) -> Option<usize> {
    let literal = |word: &[u8]| s[i..].starts_with(word).then_some(i + word.len());
    match s[i] {
        b't' => literal(b"true"),
        b'f' => literal(b"false"),
        b'n' => literal(b"null"),
        b'-' | b'0'..=b'9' => number(s, i),
        _ => None,
    }
}

/// A number at `i`: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; just past it.
#[inline(always)]
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

    /// [`is_json`], checked against the portable classification too (the machine's own may
    /// be AVX2's).
    fn judged(s: &[u8]) -> bool {
        let portable = validate(s, Lexed::of);
        assert_eq!(is_json(s), portable, "{:?}", String::from_utf8_lossy(s));
        portable
    }

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
            assert_eq!(judged(c.as_bytes()), theirs, "{c:?}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(judged(deep(MAX_DEPTH).as_bytes()));
        assert!(!judged(deep(MAX_DEPTH + 1).as_bytes()));
        assert!(!judged(deep(100_000).as_bytes()));
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
                        assert_eq!(judged(doc.as_bytes()), theirs, "{doc:?}");
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
                assert_eq!(judged(&d), theirs, "{:?}", String::from_utf8_lossy(&d));
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
            assert_eq!(judged(p), theirs, "{:?}", String::from_utf8_lossy(p));
        }
        for at in 0..doc.len() {
            for b in [
                b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b' ', 0x01, b'x', b'1',
            ] {
                let mut d = doc.as_bytes().to_vec();
                d[at] = b;
                let theirs = serde_json::from_slice::<serde::de::IgnoredAny>(&d).is_ok();
                assert_eq!(judged(&d), theirs, "{:?}", String::from_utf8_lossy(&d));
            }
        }
    }

    /// Pieces of JSON and of things that are not, to be strung together at random.
    const PIECES: [&str; 30] = [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\"k\"",
        "\"a\\\"b\"",
        "\\",
        "\\\\",
        "\\u00e9",
        "\\u12",
        "1",
        "-0.5e3",
        "01",
        "1.",
        "true",
        "nul",
        "false",
        " ",
        "\n\t\r",
        "\u{1}",
        "\u{c}",
        "\u{e9}",
        "x",
        "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789\"",
        "                                                                ",
        "[1,2]",
        "{\"a\":[]}",
    ];

    /// Whether `serde_json` takes `d` as one value.
    fn theirs(d: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(d).is_ok()
    }

    /// A JSON value of some depth, with strings that need escapes.
    fn value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[a-z\"\\\u{1}-\u{1f}é€😀 ]{0,80}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-z\"]{0,12}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Pieces strung together at any offset from a block's start (the leading spaces):
        /// judged as `serde_json` judges them, valid or not.
        #[test]
        fn pieces_at_any_block_offset(
            pieces in proptest::collection::vec(0..PIECES.len(), 0..40),
            lead in 0usize..70,
        ) {
            let d = " ".repeat(lead) + &pieces.iter().map(|&i| PIECES[i]).collect::<String>();
            proptest::prop_assert_eq!(judged(d.as_bytes()), theirs(d.as_bytes()), "{:?}", d);
        }

        /// A real document, compact or pretty, and the same with one byte replaced, one
        /// removed or the text cut short: judged as `serde_json` judges them.
        #[test]
        fn documents_and_their_mutations(
            v in value(),
            pretty: bool,
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::sample::select(b"{}[]:,\"\\ \x01\x1fx0-.eu\n".to_vec()),
            edit in 0u8..4,
        ) {
            let text = if pretty {
                serde_json::to_vec_pretty(&v)
            } else {
                serde_json::to_vec(&v)
            };
            let mut d = text.unwrap_or_default();
            proptest::prop_assert!(judged(&d), "{:?}", String::from_utf8_lossy(&d));
            let k = at.index(d.len());
            match edit {
                0 => d[k] = byte,
                1 => { d.remove(k); }
                2 => d.truncate(k),
                _ => d.insert(k, byte),
            }
            proptest::prop_assert_eq!(judged(&d), theirs(&d), "{:?}", String::from_utf8_lossy(&d));
        }
    }
}
