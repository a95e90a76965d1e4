//! Is a text one JSON value? The record keeps a short answer as its text, written into the
//! record's JSON as it is, so the text must be exactly one JSON value (anything else could end
//! the record's `response` and write fields of its own); a long one is kept beside the JSON
//! ([`super::beside`]) and checked here when it is read. `serde_json` answers this too, by
//! parsing it, at about 19 instructions a byte.
//!
//! This checks the same grammar (RFC 8259) in two passes over each 64-byte block, as simdjson does:
//! the block's bytes are classified with vector compares ([`Lexed`]), which finds the strings,
//! checks every byte inside them for control bytes at once and each escape for its form (one of
//! `"\/bfnrt`, or `u` and four hex digits), and leaves one bit per token: a structural character, a
//! string's opening quote, the first byte of a number or literal. Then only the tokens are read
//! through the grammar, by a descent with the open containers on a stack, and a number or literal
//! is read where it starts. A string's bytes are never looked at one by one.

use crate::util::json_blocks::{Lexed, StringBits, Strings};

/// Nesting deeper than this is refused: `serde_json` refuses 128 levels, and a record reader
/// parses the answer a level or two inside the record.
const MAX_DEPTH: usize = 100;

/// `s` is one JSON value, with whitespace around it or not, whose numbers every reader holds
/// ([`holds`]: not `1e400`). Escapes are checked for their form, not for what they encode
/// (`\ud800` passes, as it does `serde_json`'s raw values).
/// UTF-8 is the caller's to check: any byte from 0x80 up may stand in a string.
pub fn is_json(s: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, as just checked.
        return unsafe { is_json_avx2(s) };
    }
    validate(s, Lexed::of)
}

/// Every `\u` escape in `s` (one JSON value, [`is_json`]) decodes to a character other than
/// NUL: no surrogate without its pair, no `\u0000`. `serde_json`'s `Value` refuses the first,
/// PostgreSQL's `jsonb` both; [`is_json`] checks an escape's form only.
pub fn escapes_decode(s: &[u8]) -> bool {
    let hex = |at: usize| code_unit(s, at);
    let mut at = 0;
    // Where the low half of a pair must begin, after its high half.
    let mut low_at = None;
    while let Some(off) = memchr::memchr(b'\\', &s[at..]) {
        let i = at + off;
        if low_at.is_some_and(|l| l != i) {
            return false;
        }
        if s.get(i + 1) != Some(&b'u') {
            if low_at.is_some() {
                return false;
            }
            at = i + 2;
            continue;
        }
        match hex(i + 2) {
            None | Some(0) => return false,
            Some(0xD800..=0xDBFF) if low_at.is_none() => low_at = Some(i + 6),
            Some(0xDC00..=0xDFFF) if low_at.is_some() => low_at = None,
            Some(0xD800..=0xDFFF) => return false,
            Some(_) if low_at.is_some() => return false,
            Some(_) => {}
        }
        at = i + 6;
    }
    low_at.is_none()
}

/// The code unit of a `\u` escape in `s` whose four hex digits begin at `at` (`None`: they
/// are not four hex digits: `from_str_radix` alone would take `+041`).
pub(super) fn code_unit(s: &[u8], at: usize) -> Option<u16> {
    let digits = s.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |v, &d| {
        Some(v * 16 + char::from(d).to_digit(16)? as u16)
    })
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
    let mut tokens = Tokens {
        s,
        lex,
        next_at: 0,
        strings: Strings::default(),
        in_scalar: false,
        bad: 0,
        end: END,
    };
    walk(&mut tokens)
}

/// The token standing for the end of the text.
const END: u16 = 0x100;
/// The token standing for a string the lexer refused (a control byte, a malformed escape,
/// no closing quote): nothing in the grammar takes it.
const BROKEN: u16 = 0x101;

/// The text's tokens in order, each block lexed when the walk reaches it: a structural
/// character outside strings, a string's opening quote, the first byte of a number or
/// literal (or of anything else outside strings, which its reading then refuses).
struct Tokens<'a, L> {
    s: &'a [u8],
    lex: L,
    /// The next block's offset.
    next_at: usize,
    strings: Strings,
    /// The previous block ended inside a number or literal.
    in_scalar: bool,
    /// Control bytes found inside strings.
    bad: u64,
    /// What the walk takes once the blocks are done: [`END`] or [`BROKEN`].
    end: u16,
}

impl<L: Fn(&[u8; 64]) -> Lexed> Tokens<'_, L> {
    /// Lexes the next block into `out`: its offset and its tokens; `None` when there is none
    /// (`end` then says how the text ended). Not inlined: the walk's every call of `next!`
    /// would otherwise carry a copy, and the walk's state would no longer fit in registers
    /// (2.6× slower).
    fn lex_block(&mut self, out: &mut [u8; 64]) -> Option<(usize, u64)> {
        let at = self.next_at;
        let s = self.s;
        if at >= s.len() {
            if self.bad != 0 || self.strings.open() {
                self.end = BROKEN;
            }
            return None;
        }
        let block = &s[at..s.len().min(at + 64)];
        let mut padded = [b' '; 64];
        let bytes: &[u8; 64] = match block.try_into() {
            Ok(full) => full,
            Err(_) => {
                // The last block, padded with whitespace (which changes nothing); its carries
                // are not read again.
                padded[..block.len()].copy_from_slice(block);
                &padded
            }
        };
        let lexed = (self.lex)(bytes);
        *out = *bytes;
        let StringBits {
            escaped,
            quote,
            inside,
        } = self.strings.next(&lexed, block.len());
        self.bad |= lexed.control & inside;
        let escapes_inside = escaped & inside;
        if escapes_inside != 0 && !escapes_valid(s, at, escapes_inside) {
            self.end = BROKEN;
            self.next_at = s.len();
            return None;
        }
        // Every other byte outside strings belongs to a number or literal, or is not JSON at
        // all (a backslash, a control byte, a letter): either way it ends in a token whose
        // reading refuses it.
        let scalar = !(inside | quote | lexed.separator);
        let starts = scalar & !((scalar << 1) | u64::from(self.in_scalar));
        self.in_scalar = scalar >> 63 == 1;
        let real = if block.len() == 64 {
            !0
        } else {
            (1 << block.len()) - 1
        };
        self.next_at = at + 64;
        Some((
            at,
            ((lexed.structural & !inside) | (quote & inside) | starts) & real,
        ))
    }
}

/// A byte as a token.
const fn tok(c: u8) -> u16 {
    c as u16
}

/// Reads the tokens through the grammar: one value, then the end. A descent with the open
/// containers on a stack, each place in the grammar its own code, rather than one state
/// machine dispatching on its state for every token: that dispatch was an indirect jump the
/// CPU mispredicted most of the time, and on the l7 bench's 16 KiB answer (about 4,100 tokens)
/// the check alone took 12.6 µs; this one 10.5 µs (fastest of 8 interleaved runs each), with 8 %
/// fewer instructions. A 160-byte answer's check stays about 140 ns.
#[inline(always)]
// The last token's taking (the text's end) leaves `bits` unread.
#[allow(unused_assignments)]
fn walk<L: Fn(&[u8; 64]) -> Lexed>(t: &mut Tokens<'_, L>) -> bool {
    // The byte that closes each open container.
    let mut closers = [0u8; MAX_DEPTH];
    let mut depth = 0;
    // The current block: its offset, its bytes and the tokens of it not yet taken.
    let (mut at, mut bits) = (0usize, 0u64);
    let mut block = [0u8; 64];
    // The next token's byte and offset; [`END`] or [`BROKEN`] (at the text's length) past
    // the last one.
    macro_rules! next {
        () => {
            'next: {
                while bits == 0 {
                    match t.lex_block(&mut block) {
                        Some(b) => (at, bits) = b,
                        None => break 'next (t.end, t.s.len()),
                    }
                }
                let k = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                (u16::from(block[k & 63]), at + k)
            }
        };
    }
    let mut token = next!();
    'value: loop {
        let (c, i) = token;
        const OPEN_OBJECT: u16 = tok(b'{');
        const OPEN_ARRAY: u16 = tok(b'[');
        const QUOTE: u16 = tok(b'"');
        match c {
            QUOTE => {}
            // An empty container is a level of nesting too.
            OPEN_OBJECT | OPEN_ARRAY if depth == MAX_DEPTH => return false,
            OPEN_OBJECT => match next!().0 {
                QUOTE => {
                    if next!().0 != tok(b':') {
                        return false;
                    }
                    closers[depth] = b'}';
                    depth += 1;
                    token = next!();
                    continue 'value;
                }
                c if c == tok(b'}') => {}
                _ => return false,
            },
            OPEN_ARRAY => {
                let next = next!();
                if next.0 != tok(b']') {
                    closers[depth] = b']';
                    depth += 1;
                    token = next;
                    continue 'value;
                }
            }
            // The whole run of bytes up to the next token or whitespace, not just a valid
            // beginning of it.
            _ => match (c < 0x100).then(|| scalar(t.s, i)).flatten() {
                Some(end) if t.s.get(end).is_none_or(|&b| ends_scalar(b)) => {}
                _ => return false,
            },
        }
        // A value has been read: a comma goes on to the next one (in an object, after its
        // key), the innermost container's closer ends it as a value of the one around it.
        loop {
            let Some(&closer) = closers.get(depth.wrapping_sub(1)) else {
                return next!().0 == END;
            };
            let c = next!().0;
            if c == tok(b',') {
                if closer == b'}' && (next!().0 != QUOTE || next!().0 != tok(b':')) {
                    return false;
                }
                token = next!();
                continue 'value;
            }
            if c != u16::from(closer) {
                return false;
            }
            depth -= 1;
        }
    }
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

/// Whether `b` ends a number or literal: whitespace, a structural character or a quote (what
/// the next token, if any, then judges).
pub(super) fn ends_scalar(b: u8) -> bool {
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

/// A number at `i`: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, one every
/// reader holds ([`holds`]); just past it.
#[inline(always)]
pub(super) fn number(s: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let from = i;
        while s.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let from = i;
    if s.get(i) == Some(&b'-') {
        i += 1;
    }
    let int = i;
    i = match s.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    let int = int..i;
    let mut frac = i..i;
    if s.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
        frac = frac.start + 1..i;
    }
    let mut exp = None;
    if let Some(b'e' | b'E') = s.get(i) {
        let at = i + 1;
        i = at;
        if let Some(b'+' | b'-') = s.get(i) {
            i += 1;
        }
        i = digits(i)?;
        exp = Some(at..i);
    }
    // Without an exponent, up to 300 digits are within every range.
    if (exp.is_some() || i - from > 300) && !holds(s, int, frac, exp) {
        return None;
    }
    Some(i)
}

/// Whether the number of these parts (its integer and fraction digits, its exponent with its
/// sign) is one every reader of a record holds: `serde_json` refuses one beyond `f64`'s range
/// (about 1.8e308), PostgreSQL's `jsonb` (a fleet's) one with more than 16,383 digits after the
/// point once its exponent is applied (`1e-16384`, even `0e-20000`). Such a number in an answer
/// keeps the answer out of the record's JSON (it is kept as a string), and one an older
/// callgate recorded is shipped as a string ([`super::ship::for_jsonb`]). A zero's exponent
/// above 16,383 is refused too (PostgreSQL's is bounded, if further out).
#[cold]
fn holds(
    s: &[u8],
    int: std::ops::Range<usize>,
    frac: std::ops::Range<usize>,
    exp: Option<std::ops::Range<usize>>,
) -> bool {
    const SCALE: i64 = 16_383;
    let whole = int.start..exp.as_ref().map_or(frac.end, |e| e.end);
    let exp = exp.map_or(0, |e| {
        let (neg, digits) = match s[e.start] {
            b'-' => (true, &s[e.start + 1..e.end]),
            b'+' => (false, &s[e.start + 1..e.end]),
            _ => (false, &s[e]),
        };
        // Saturated far beyond any bound below.
        let v = digits
            .iter()
            .fold(0i64, |v, d| (v * 10 + i64::from(d - b'0')).min(1 << 40));
        if neg { -v } else { v }
    });
    let (int, frac) = (&s[int], &s[frac]);
    if frac.len() as i64 - exp > SCALE {
        return false;
    }
    // The power of ten just above the number's magnitude (its first digit's place + 1).
    let above = if int != b"0" {
        int.len() as i64 + exp
    } else {
        match frac.iter().position(|&d| d != b'0') {
            Some(zeros) => exp - zeros as i64,
            None => return exp <= SCALE,
        }
    };
    match above {
        ..=308 => true,
        // Up to f64::MAX (1.797…e308), as a correctly rounded parse (`serde_json`'s) has it.
        309 => std::str::from_utf8(&s[whole])
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(f64::is_finite),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_that_do_not_decode_are_found() {
        for (s, ok) in [
            (r#""plain""#, true),
            (r#""caf\u00e9 \n \" \\u0000""#, true),
            (r#""\ud83d\ude00""#, true),
            (r#""\u0000""#, false),
            // Not four hex digits, though `from_str_radix` reads them as 0x41.
            (r#""\u+041""#, false),
            (r#""\ud800""#, false),
            (r#""\ud800x""#, false),
            (r#""\ud800\n""#, false),
            (r#""\ud800\u0041""#, false),
            (r#""\ud800\ud800""#, false),
            (r#""\ude00""#, false),
            (r#""\\\ud800""#, false),
            (r#""\\\\ud800""#, true),
        ] {
            assert_eq!(escapes_decode(s.as_bytes()), ok, "{s}");
            if is_json(s.as_bytes()) && ok {
                assert!(serde_json::from_str::<serde_json::Value>(s).is_ok(), "{s}");
            }
        }
    }

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

    /// Whether `serde_json` takes `d` as one value, and every reader its numbers.
    fn theirs(d: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(d).is_ok() && numbers_held(d)
    }

    /// Each number in `d` (a run of number bytes outside strings) is one `serde_json` reads as
    /// a finite `f64` and PostgreSQL's `jsonb` takes: at most 16,383 digits after the point
    /// once the exponent is applied, a zero's exponent at most 16,383. (Runs that are not
    /// numbers are `serde_json`'s to refuse.)
    fn numbers_held(d: &[u8]) -> bool {
        let text = String::from_utf8_lossy(d);
        let (mut inside, mut escaped) = (false, false);
        let mut runs = vec![String::new()];
        for c in text.chars() {
            if inside {
                (inside, escaped) = (escaped || c != '"', !escaped && c == '\\');
            } else if c == '"' {
                inside = true;
            } else if "+-.eE0123456789".contains(c) {
                if let Some(r) = runs.last_mut() {
                    r.push(c);
                }
                continue;
            }
            runs.push(String::new());
        }
        runs.iter().filter(|r| !r.is_empty()).all(|r| {
            let (mantissa, exp) = r.split_once(['e', 'E']).unwrap_or((r, "0"));
            let Ok(exp) = exp.parse::<i64>() else {
                // Out of i64's range: held only if it is not a number at all.
                return r.parse::<f64>().is_err();
            };
            let fraction = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i64);
            let zero = mantissa.chars().all(|c| "-0.".contains(c));
            r.parse::<f64>().map_or(true, f64::is_finite)
                && fraction - exp <= 16_383
                && (!zero || exp <= 16_383)
        })
    }

    /// Numbers at the edges of what `serde_json` and `jsonb` hold: the answer that holds one
    /// beyond them is not JSON to the record (it keeps the answer as a string).
    #[test]
    fn numbers_every_reader_holds() {
        for (n, ok) in [
            ("0", true),
            ("-0.0", true),
            ("1e308", true),
            ("1.7976931348623157e308", true),
            ("-1.7976931348623157e+308", true),
            ("17976931348623157e292", true),
            ("1.7976931348623159e308", false),
            ("2e308", false),
            ("1e309", false),
            ("0.1e309", true),
            ("0.01e310", true),
            ("0.01e311", false),
            ("1e400", false),
            ("1e-400", true),
            ("1e-16383", true),
            ("1e-16384", false),
            ("0.5e-16382", true),
            ("0.5e-16383", false),
            ("0e-16383", true),
            ("0e-16384", false),
            ("0e16383", true),
            ("0e16384", false),
            ("0e99999999999999999999999", false),
            ("1e-99999999999999999999999", false),
            ("1E+2", true),
        ] {
            assert_eq!(judged(n.as_bytes()), ok, "{n}");
            assert_eq!(theirs(n.as_bytes()), ok, "the oracle: {n}");
            // What `serde_json` reads: every number held, and the f64 ones it refuses.
            let read = serde_json::from_str::<serde_json::Value>(n).is_ok();
            assert!(read || !ok, "{n}");
            if [
                "1.7976931348623159e308",
                "2e308",
                "1e309",
                "0.01e311",
                "1e400",
            ]
            .contains(&n)
            {
                assert!(!read, "{n}");
            }
            let doc = format!(r#"{{"a":[1,{n}],"s":"{n}"}}"#);
            assert_eq!(judged(doc.as_bytes()), ok, "{doc}");
        }
        // A 400-digit integer (no exponent) is as far out as 1e399.
        let long = "9".repeat(400);
        assert!(!judged(long.as_bytes()));
        assert!(judged(format!("0.{long}").as_bytes()));
        assert!(judged("9".repeat(300).as_bytes()));
        assert!(!judged(format!("0.{}", "1".repeat(16_384)).as_bytes()));
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
