//! JSON escapes a detector would not see through. To any JSON reader `"\u0034\u0031…"` is the
//! string `"41…"`, so a card number spelled with escapes has to be masked like one spelled
//! plainly. Before a JSON body reaches the masker, escapes of the characters detectors match
//! on (letters, digits, `@ . - _ + / = :` and space, and the rest of what an e-mail address's
//! local part may hold but HTML does not mind, `% ! # $ * ? ^ ` { | } ~`) are decoded: the
//! document means the same, and the masker sees what a client's parser will. `\/` is decoded
//! too (an AWS secret key holds slashes), except after `<`: `<\/script>` keeps a body safe to
//! embed in HTML, and no detector's match has a `<` before a `/`. Every other escape stays as
//! written, among them `\u003c`-style ones that keep a body safe to embed in HTML, and
//! detectors read it through a [`View`]: as the character it stands for.
use memchr::memchr;

use super::detect::Hit;

/// The longest escape, `\uXXXX`, less one byte: what a chunk boundary can cut off.
const MAX_HELD: usize = 5;

#[derive(Debug, Default)]
pub struct Unescaper {
    /// The start of an escape cut off by the end of the last chunk.
    held: Vec<u8>,
    /// The last byte passed before `held`: whether a `\/` at a chunk's start follows a `<`.
    last: u8,
}

impl Unescaper {
    /// `chunk` with those escapes decoded: the chunk itself when it has nothing to decode and
    /// nothing was held back, `scratch` otherwise. The end of an escape cut off by the chunk's
    /// end is held back for the next call; `finish` gives it back.
    pub fn apply<'a>(&mut self, chunk: &'a [u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
        if self.held.is_empty() && memchr(b'\\', chunk).is_none() {
            if let Some(&b) = chunk.last() {
                self.last = b;
            }
            return chunk;
        }
        scratch.clear();
        let mut input = std::mem::take(&mut self.held);
        let buf: &[u8] = if input.is_empty() {
            chunk
        } else {
            input.extend_from_slice(chunk);
            &input
        };
        let mut copied = 0;
        let mut at = 0;
        let mut hold = buf.len();
        while let Some(p) = memchr(b'\\', &buf[at..]) {
            let esc = at + p;
            match buf.get(esc + 1) {
                None => {
                    hold = esc;
                    break;
                }
                Some(b'u') => {}
                Some(b'/') if esc.checked_sub(1).map_or(self.last, |p| buf[p]) != b'<' => {
                    scratch.extend_from_slice(&buf[copied..esc]);
                    scratch.push(b'/');
                    copied = esc + 2;
                    at = esc + 2;
                    continue;
                }
                // Two-byte escapes (`\\`, `\"`, `\n`, …) pass as they are, and the byte after
                // the backslash never starts another.
                Some(_) => {
                    at = esc + 2;
                    continue;
                }
            }
            let Some(hex) = buf.get(esc + 2..esc + 6) else {
                hold = esc;
                break;
            };
            at = esc + 2;
            if let Some(c) = decoded(hex) {
                scratch.extend_from_slice(&buf[copied..esc]);
                scratch.push(c);
                copied = esc + 6;
                at = esc + 6;
            }
        }
        debug_assert!(buf.len() - hold <= MAX_HELD);
        scratch.extend_from_slice(&buf[copied..hold]);
        if let Some(p) = hold.checked_sub(1) {
            self.last = buf[p];
        }
        // Empty (and so without an allocation) unless a chunk boundary cut an escape.
        self.held = buf[hold..].to_vec();
        scratch
    }

    /// Bytes held back at the end of the body: not an escape after all, so passed as written.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }
}

/// The value of `\uXXXX`'s four hex digits.
fn code_unit(hex: &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for &h in hex {
        v = v * 16 + char::from(h).to_digit(16)?;
    }
    Some(v)
}

/// The character `\uXXXX` stands for, when it is one to decode: what detectors match on, and
/// the punctuation an e-mail address's local part may hold that no HTML parser minds.
fn decoded(hex: &[u8]) -> Option<u8> {
    let c = u8::try_from(code_unit(hex)?).ok()?;
    (c.is_ascii_alphanumeric() || b" @.-_+/=:%!#$*?^`{|}~".contains(&c)).then_some(c)
}

/// What detectors read in place of the JSON escapes [`Unescaper`] leaves as written (`\n`,
/// `\"`, `\u0022`, `\u00e9`, …): a copy of the text of the same length, each escape turned
/// into spaces ending in the character it stands for (`\n` reads ` \n`, `\u0022` reads
/// `     "`) when that is printable ASCII or a line break or tab, else in a space. Read as written, the escape's last letter or digit (`n`, `2`) joined the value
/// after it: `"a\n4111…"` or `"\u00224111…\u0022"` hid a card number that a JSON reader sees
/// standing alone. Offsets are unchanged, so hits map back to the text; a hit that starts or
/// ends inside an escape is widened to the whole escape ([`View::widen`]), so no escape is
/// ever cut in two by a replacement.
///
/// A piece of text must not start inside an escape: the streaming masker stops a piece only
/// where [`View::start_of`] says an escape does not continue.
#[derive(Debug, Default)]
pub struct View {
    bytes: Vec<u8>,
    /// Each escape's `start..end` in the text, in order.
    escapes: Vec<(usize, usize)>,
    /// Where an escape the text's end may have cut short starts: a `\` or `\u` with fewer
    /// than four hex digits after it. What comes next can complete it (`\u00b`, then the `0`
    /// that the [`Unescaper`] decodes from the `\u0030` it held back: `\u00b0`, a `°`), so a
    /// piece does not end after its start ([`View::start_of`]).
    open: Option<usize>,
}

impl View {
    /// The text detectors should read for `t` ([`View::build`] first): `t` itself when it has
    /// no escape left.
    pub fn read<'a>(&'a self, t: &'a [u8]) -> &'a [u8] {
        if self.escapes.is_empty() {
            t
        } else {
            &self.bytes
        }
    }

    /// Builds the view of `t`.
    pub fn build(&mut self, t: &[u8]) {
        self.escapes.clear();
        self.open = None;
        let Some(first) = memchr(b'\\', t) else {
            return;
        };
        self.bytes.clear();
        self.bytes.extend_from_slice(t);
        let mut at = first;
        loop {
            // `\u` and four hex digits, else (as the Unescaper and any parser read it) a
            // two-byte escape: `\u0 4111…` must not hide the digits after it.
            let unit = (t.get(at + 1) == Some(&b'u'))
                .then(|| t.get(at + 2..at + 6).and_then(code_unit))
                .flatten();
            let end = (at + if unit.is_some() { 6 } else { 2 }).min(t.len());
            let cut_short = match t.get(at + 1) {
                None => true,
                Some(b'u') => t.len() < at + 6 && t[at + 2..].iter().all(u8::is_ascii_hexdigit),
                Some(_) => false,
            };
            if cut_short {
                self.open = Some(at);
            }
            let stands_for = match t.get(at + 1) {
                Some(b'u') => unit.and_then(|v| u8::try_from(v).ok()),
                Some(b'n') => Some(b'\n'),
                Some(b'r') => Some(b'\r'),
                Some(b't') => Some(b'\t'),
                Some(b'b') => Some(0x08),
                Some(b'f') => Some(0x0c),
                other => other.copied(),
            };
            // Letters and digits too: an escape the Unescaper left because an invalid one
            // came first (`\u003\u0034…` decodes to `\u0034…`, which a client reads as `4`).
            let shown = match stands_for {
                Some(c @ (b'\n' | b'\r' | b'\t')) => c,
                Some(c) if c.is_ascii_graphic() && c != b'\\' => c,
                _ => b' ',
            };
            self.bytes[at..end].fill(b' ');
            self.bytes[end - 1] = shown;
            self.escapes.push((at, end));
            match memchr(b'\\', &t[end..]) {
                Some(k) => at = end + k,
                None => break,
            }
        }
    }

    /// Whether the text had no escape left: the view is the text.
    pub fn is_plain(&self) -> bool {
        self.escapes.is_empty()
    }

    /// `p`, or the start of the escape `p` falls inside, or of one the text's end may have cut
    /// short that `p` follows: a piece may end there.
    pub fn start_of(&self, p: usize) -> usize {
        match self.open {
            Some(open) if p > open => open,
            _ => self.around(p).map_or(p, |e| e.0),
        }
    }

    /// `start..end` widened to whole escapes at both ends.
    pub fn widen(&self, start: usize, end: usize) -> (usize, usize) {
        (
            self.around(start).map_or(start, |e| e.0),
            self.around(end).map_or(end, |e| e.1),
        )
    }

    /// Hits widened to whole escapes ([`View::widen`]); two that then share an escape become
    /// one, so that no writer drops the second as already written.
    pub fn widen_hits(&self, hits: &mut Vec<Hit>) {
        if self.is_plain() {
            return;
        }
        let mut kept: usize = 0;
        for i in 0..hits.len() {
            let mut h = hits[i];
            (h.start, h.end) = self.widen(h.start, h.end);
            match kept.checked_sub(1).map(|k| &mut hits[k]) {
                Some(last) if h.start < last.end => {
                    last.end = last.end.max(h.end);
                    last.open |= h.open;
                    last.cut |= h.cut;
                }
                _ => {
                    hits[kept] = h;
                    kept += 1;
                }
            }
        }
        hits.truncate(kept);
    }

    /// The escape strictly containing `p` (past its first byte).
    fn around(&self, p: usize) -> Option<(usize, usize)> {
        let k = self.escapes.partition_point(|e| e.0 < p);
        let e = *self.escapes.get(k.checked_sub(1)?)?;
        (p > e.0 && p < e.1).then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut u = Unescaper::default();
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        for c in chunks {
            out.extend_from_slice(u.apply(c, &mut scratch));
        }
        out.extend_from_slice(&u.finish());
        out
    }

    #[test]
    fn decodes_what_detectors_match_and_keeps_the_rest() {
        let cases: [(&str, &str); 11] = [
            (r#"{"a":"\u0034\u0031\u0031\u0031"}"#, r#"{"a":"4111"}"#),
            (r#""x\u0040y\u002Ecom""#, r#""x@y.com""#),
            // An escaped backslash followed by the letters u0034 is not an escape.
            (r#""\\u0034""#, r#""\\u0034""#),
            (r#""\\\u0034""#, r#""\\4""#),
            // HTML-safety escapes, quotes, controls and non-ASCII stay as written.
            (
                r#""\u003c\u0022\u000a\u00e9\u2028""#,
                r#""\u003c\u0022\u000a\u00e9\u2028""#,
            ),
            (r#""\n\"\/""#, r#""\n\"/""#),
            // `\/` is a slash (an AWS secret key holds them), but `<\/` stays: HTML-safe.
            (
                r#""wJalrXUtnFEMI\/K7MDENG\/bPxRfiCYEXAMPLEKEY""#,
                r#""wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY""#,
            ),
            (r#""<\/script>\\\/""#, r#""<\/script>\\/""#),
            ("\"\\/\\/\"", "\"//\""),
            // Not hex: left alone.
            (r#""\u00zz4""#, r#""\u00zz4""#),
            ("no escapes at all", "no escapes at all"),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8(run(&[input.as_bytes()])).unwrap(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn the_view_reads_escapes_as_what_they_stand_for() {
        let mut v = View::default();
        let t = br#""a\n4111\u0022x\\y\u00e9z\"""#;
        v.build(t);
        let seen = v.read(t).to_vec();
        assert_eq!(seen.len(), t.len());
        assert_eq!(&seen[..], b"\"a \n4111     \"x  y      z \"\"".as_slice());
        // Inside `\u0022` (bytes 8..14): back to its start; widened to the whole of it.
        assert_eq!(v.start_of(10), 8);
        assert_eq!(v.start_of(8), 8);
        assert_eq!(v.start_of(14), 14);
        assert_eq!(v.widen(10, 12), (8, 14));
        assert_eq!(v.widen(4, 8), (4, 8));
        v.build(b"plain");
        assert_eq!(v.read(b"plain"), b"plain");
    }

    #[test]
    fn every_split_point_gives_the_same_output() {
        let input = br#"{"card":"\u0034111 1111 1111 1111","p":"a\\\\u0031\u0031\"","s":"a\/b<\/c","t":"x\"#;
        let whole = run(&[input]);
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let got = run(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, whole, "split at {i} and {j}");
            }
        }
        assert!(whole.starts_with(br#"{"card":"4111 1111"#));
    }
}
