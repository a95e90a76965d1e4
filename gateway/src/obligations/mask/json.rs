//! Streaming JSON masking. Field paths replace whole values; detector hits are replaced inside
//! strings, and a number a detector flags (a card written as a number) becomes a string, so
//! the document stays valid JSON.
//!
//! With field paths, structure is followed from 64-byte bitmasks ([`super::blocks`]): only
//! `{}[]:` (and `,` where array positions matter) outside strings are visited, and an object
//! key is read back from the bytes before its colon only when it could be a path's name. The
//! structure is not validated beyond nesting: detectors still see every byte, in strings or
//! not, so a body that only looks like JSON loses nothing. Unbalanced nesting or nesting deeper
//! than [`MAX_DEPTH`] is masked as text from there on (`MaskStats::json_fallback`).
use std::sync::Arc;

use super::{
    AnswerSpans, Carry, MaskKey, MaskRules, MaskStats, Span, Style, TextMasker,
    detect::{self, Detector, Hit, Kind},
    unescape::{Unescaper, View},
};
use crate::util::{
    json_blocks::{Block, Classifier},
    jsonpath::{JsonPath, Step},
};

/// Nesting beyond this is treated as not-JSON (and masked as text).
const MAX_DEPTH: usize = 128;
/// A masked field's value is kept for `partial`/`hash` up to this size; larger ones are redacted.
const MAX_CAPTURE: usize = 4096;
/// Whitespace allowed between a key and its colon for the key to be recognised.
const MAX_KEY_GAP: usize = 64;
/// The key of a frame whose key no path names: a byte no (UTF-8) path name equals.
const OTHER_KEY: &[u8] = b"\xff";
const OTHER: u16 = u16::MAX;
/// A key that could not be read back (more whitespace before its colon than is looked at):
/// it may be any name, so its value is masked whole (fail closed).
const UNREADABLE: u16 = u16::MAX - 1;

/// The key names field paths compare, compiled once per rule set.
#[derive(Debug, Default)]
pub(super) struct FieldKeys {
    names: Vec<Box<[u8]>>,
    /// By name: some path ends in this key, so a value under it may be masked.
    last: Vec<bool>,
    /// Some path ends in an index or a wildcard: any value may be masked.
    any_value: bool,
    /// Some path steps into arrays: element positions must be counted.
    arrays: bool,
    /// Bytes to look back from a colon to recognise every name.
    lookback: usize,
    /// Bloom filter over each name's last two bytes: most keys are rejected by one load.
    tails: u64,
}

/// The filter bit for a key ending in `a` `b` (`b` last).
fn tail_bit(a: u8, b: u8) -> u64 {
    1 << ((u32::from(a) * 7 + u32::from(b)) % 64)
}

/// The filter bits of every key that names `name` under case folding: Go's `encoding/json`
/// and .NET's web defaults read `SSN` and `Ssn` as the field `ssn`, and Go reads the Kelvin
/// sign as `k` and the long `ſ` as `s`. A name whose last two characters are not ASCII turns
/// the filter off.
fn tails_of(name: &[u8]) -> u64 {
    // An ASCII byte's spellings in a key.
    fn spellings(b: u8) -> Vec<Vec<u8>> {
        let mut out = vec![vec![b.to_ascii_lowercase()], vec![b.to_ascii_uppercase()]];
        match b.to_ascii_lowercase() {
            b'k' => out.push("\u{212a}".as_bytes().to_vec()),
            b's' => out.push("\u{17f}".as_bytes().to_vec()),
            _ => {}
        }
        out
    }
    // What precedes the last character: the opening quote, or the one before's spellings.
    let (before, last) = match name {
        [] => return !0,
        [b] => (vec![b"\"".to_vec()], *b),
        [.., a, b] if a.is_ascii() => (spellings(*a), *b),
        _ => return !0,
    };
    if !last.is_ascii() {
        return !0;
    }
    let mut bits = 0;
    for l in spellings(last) {
        for p in &before {
            if let [.., a, b] = [&p[..], &l[..]].concat()[..] {
                bits |= tail_bit(a, b);
            }
        }
    }
    bits
}

impl FieldKeys {
    pub(super) fn new<'p>(paths: impl Iterator<Item = &'p JsonPath> + Clone) -> Self {
        let mut k = Self::default();
        for p in paths.clone() {
            for name in p.key_names() {
                if !k.names.iter().any(|n| **n == *name.as_bytes()) {
                    k.names.push(name.as_bytes().into());
                    k.last.push(false);
                }
            }
            match p.last_key() {
                Some(last) => {
                    let id = k.id(last.as_bytes());
                    k.last[id as usize] = true;
                }
                None => k.any_value = true,
            }
            k.arrays |= p.steps_into_arrays();
        }
        // A key spelled in another case may be longer than the name (the Kelvin sign is
        // three bytes for `k`).
        k.lookback = k.names.iter().map(|n| n.len()).max().unwrap_or(0) * 3 + 3 + MAX_KEY_GAP;
        for n in &k.names {
            k.tails |= tails_of(n);
        }
        k
    }

    fn id(&self, name: &[u8]) -> u16 {
        self.names
            .iter()
            .position(|n| **n == *name)
            .map_or(OTHER, |i| i as u16)
    }

    /// The key whose closing quote ends `before` (the bytes up to a colon), if a path names
    /// it. Keys are compared as written: escape sequences are not decoded.
    #[inline]
    fn key_before(&self, before: &[u8]) -> u16 {
        // The usual `"key":` is settled here; whitespace before the colon takes the long way.
        let n = before.len();
        if n >= 3 && before[n - 1] == b'"' {
            if self.tails & tail_bit(before[n - 3], before[n - 2]) == 0 {
                return OTHER;
            }
            return self.compare(before, n - 1);
        }
        let mut end = n;
        while end > 0 && n - end <= MAX_KEY_GAP && is_ws(before[end - 1]) {
            end -= 1;
        }
        if n - end > MAX_KEY_GAP {
            return UNREADABLE;
        }
        match end.checked_sub(1) {
            Some(close) if close >= 2 && before[close] == b'"' => self.compare(before, close),
            _ => OTHER,
        }
    }

    /// The name whose closing quote is `before[close]`, if any: as written, else under case
    /// folding ([`crate::util::jsonpath::fold_eq`], as Go and .NET clients read keys).
    #[inline(never)]
    fn compare(&self, before: &[u8], close: usize) -> u16 {
        for (i, name) in self.names.iter().enumerate() {
            // Most keys differ from a name in length or in their last byte: check those first.
            let Some(open) = close.checked_sub(name.len() + 1) else {
                continue;
            };
            if name.last().is_none_or(|&l| before[close - 1] == l)
                && before[open] == b'"'
                && before[open + 1..close] == name[..]
                && (open == 0 || before[open - 1] != b'\\')
            {
                return i as u16;
            }
        }
        self.compare_folded(before, close)
    }

    /// [`FieldKeys::compare`] under case folding: the key read back to its opening quote.
    #[cold]
    fn compare_folded(&self, before: &[u8], close: usize) -> u16 {
        let from = close.saturating_sub(self.lookback);
        let Some(open) = (from..close)
            .rev()
            .find(|&i| before[i] == b'"' && (i == 0 || before[i - 1] != b'\\'))
        else {
            return OTHER;
        };
        let Ok(key) = std::str::from_utf8(&before[open + 1..close]) else {
            return OTHER;
        };
        self.names
            .iter()
            .position(|n| {
                std::str::from_utf8(n).is_ok_and(|n| crate::util::jsonpath::fold_eq(key, n))
            })
            .map_or(OTHER, |i| i as u16)
    }

    fn name(&self, id: u16) -> &[u8] {
        self.names.get(id as usize).map_or(OTHER_KEY, |n| n)
    }

    fn candidate(&self, key: u16) -> bool {
        self.any_value || self.last.get(key as usize).copied().unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    array: bool,
    /// Object: the current key's name id. Array: the current element's index.
    at: u32,
}

/// A field value being replaced: output is captured instead of written until it ends.
#[derive(Debug)]
struct Skip {
    depth: usize,
    style: Style,
    capture: Vec<u8>,
    capped: bool,
}

#[derive(Debug, Default)]
struct Lexer {
    blocks: Classifier,
    stack: Vec<Frame>,
    skip: Option<Skip>,
    /// The last bytes consumed, for reading back a key that started in an earlier chunk.
    tail: Vec<u8>,
    /// `tail` joined to a chunk's first bytes, reused for each colon near a chunk's start.
    scratch: Vec<u8>,
}

/// Streams a JSON body through field paths and detectors.
#[derive(Debug)]
pub struct JsonMasker {
    rules: Arc<MaskRules>,
    key: MaskKey,
    carry: Carry,
    hits: Vec<Hit>,
    behind: detect::Behind,
    lex: Lexer,
    /// Without field paths only string-or-not matters: tracked by quote parity.
    quotes: Quotes,
    fallback: Option<TextMasker>,
    masked: u64,
    /// Decodes escapes that would hide a match (`\u0034` for `4`) before anything else looks.
    unescape: Unescaper,
    unescaped: Vec<u8>,
    /// What detectors read in place of the escapes left as written.
    view: View,
    /// The structure could not be followed any further (broken nesting, nesting deeper than
    /// [`MAX_DEPTH`], a private key too long to hold) with field paths to mask: the rest of
    /// the body is withheld, since text masking runs detectors but not field paths.
    withheld: bool,
    /// Nested deeper than [`MAX_DEPTH`]: said in the placeholder.
    too_deep: bool,
    /// For a recorded answer: the values the rules leave in, for the record.
    spans: Spans,
}

/// Whether a masker follows, for the record, the values of the built-in detectors its rules
/// do not mask ([`AnswerSpans`]).
#[derive(Debug, Default)]
enum Spans {
    #[default]
    Off,
    On(Box<Tracking>),
    /// Something came up that it does not follow: the record masks the answer on its own.
    Lost,
}

#[derive(Debug, Default)]
struct Tracking {
    /// The current piece's other hits.
    other: Vec<Hit>,
    found: Vec<Span>,
    /// Bytes written by earlier pushes.
    written: usize,
    /// Where this push's output starts in its `out`.
    base: usize,
    /// The record keeps no answer longer than this (its cap): past it, there is nothing to
    /// follow the values for, and a long answer full of them would grow `found` without bound.
    limit: usize,
}

/// A replaced piece of input, `in_start..in_end`, and its replacement in the output.
type Replaced = (usize, usize, usize, usize);

/// Where input position `p` lands in the output, given the pieces replaced before it and
/// where the input's first byte went: a position inside a replaced piece lands at the
/// replacement's start (a start) or end (an end), so a value overlapping one covers it.
fn out_at(reps: &[Replaced], out0: usize, p: usize, end: bool) -> usize {
    let k = reps.partition_point(|r| if end { r.0 < p } else { r.0 <= p });
    match k.checked_sub(1).map(|i| reps[i]) {
        None => out0 + p,
        Some((_, in_e, out_s, out_e)) if p < in_e => {
            if end {
                out_e
            } else {
                out_s
            }
        }
        Some((_, in_e, _, out_e)) => out_e + (p - in_e),
    }
}

/// Inside a string or not, and whether the last byte seen was an escaping backslash.
#[derive(Debug, Clone, Copy, Default)]
struct Quotes {
    in_string: bool,
    escape: bool,
}

impl Quotes {
    /// Advances over `b`. Quotes are counted in bulk; backslashes (rare) take the slow path.
    fn advance(&mut self, mut b: &[u8]) {
        if self.escape && !b.is_empty() {
            self.escape = false;
            b = &b[1..];
        }
        if memchr::memchr(b'\\', b).is_none() {
            // Byte-wide counters over 255-byte blocks vectorise to 16/32 lanes.
            let n: usize = b
                .chunks(255)
                .map(|c| c.iter().fold(0u8, |n, &x| n + u8::from(x == b'"')) as usize)
                .sum();
            self.in_string ^= n % 2 == 1;
            return;
        }
        let mut i = 0;
        while let Some(k) = memchr::memchr2(b'"', b'\\', &b[i..]) {
            let j = i + k;
            if b[j] == b'"' {
                self.in_string = !self.in_string;
                i = j + 1;
            } else if j + 1 < b.len() {
                i = j + 2;
            } else {
                self.escape = true;
                return;
            }
        }
    }

    /// Where the current string ends in `b` (the closing quote), if it does.
    fn string_end(self, b: &[u8]) -> Option<usize> {
        let mut i = usize::from(self.escape);
        while let Some(k) = memchr::memchr2(b'"', b'\\', b.get(i..)?) {
            let j = i + k;
            if b[j] == b'"' {
                return Some(j);
            }
            i = j + 2;
        }
        None
    }
}

impl JsonMasker {
    pub fn new(rules: Arc<MaskRules>, key: MaskKey) -> Self {
        Self {
            rules,
            key,
            carry: Carry::default(),
            hits: Vec::new(),
            behind: detect::Behind::json(),
            lex: Lexer::default(),
            quotes: Quotes::default(),
            fallback: None,
            masked: 0,
            unescape: Unescaper::default(),
            unescaped: Vec::new(),
            view: View::default(),
            withheld: false,
            too_deep: false,
            spans: Spans::Off,
        }
    }

    /// Follows, for the record, the values of the built-in detectors the rules do not mask
    /// (not with field paths: their replacements move the text in ways not followed), in
    /// the first `limit` bytes written: an answer that goes on past them is let go
    /// ([`Spans::Lost`]).
    pub(super) fn track_spans(&mut self, limit: usize) {
        if !self.rules.has_fields() {
            self.spans = Spans::On(Box::new(Tracking {
                limit,
                ..Tracking::default()
            }));
        }
    }

    /// The values followed, once the body is finished; None if not followed to the end.
    pub(super) fn take_spans(&mut self) -> Option<AnswerSpans> {
        match std::mem::replace(&mut self.spans, Spans::Lost) {
            Spans::On(t) => Some(AnswerSpans { spans: t.found }),
            _ => None,
        }
    }

    /// Marks the start of a push's output in `out`.
    fn begin(&mut self, out: &[u8]) {
        if let Spans::On(t) = &mut self.spans {
            t.base = out.len();
        }
    }

    /// Counts a push's output; past the limit, stops following.
    fn end(&mut self, out: &[u8]) {
        if let Spans::On(t) = &mut self.spans {
            t.written += out.len() - t.base;
            if t.written > t.limit {
                self.spans = Spans::Lost;
            }
        }
    }

    pub fn stats(&self) -> MaskStats {
        MaskStats {
            masked: self.masked + self.fallback.as_ref().map_or(0, |f| f.stats.masked),
            json_fallback: self.fallback.is_some() || self.withheld,
        }
    }

    /// Bytes the detectors have been run over so far.
    pub fn scanned(&self) -> u64 {
        self.behind.scanned() + self.fallback.as_ref().map_or(0, TextMasker::scanned)
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.begin(out);
        let mut scratch = std::mem::take(&mut self.unescaped);
        let chunk = self.unescape.apply(chunk, &mut scratch);
        self.push_unescaped(chunk, out);
        self.unescaped = scratch;
        self.end(out);
    }

    fn push_unescaped(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.withheld {
            return;
        }
        if let Some(text) = &mut self.fallback {
            return text.push(chunk, out);
        }
        // A switch to the text masker consumes everything, so nothing is held back then. The
        // carry may offer one chunk in two pieces: what the first piece switched to takes the
        // second.
        let mut carry = std::mem::take(&mut self.carry);
        carry.feed(chunk, |buf| {
            if self.withheld {
                return buf.len();
            }
            if let Some(text) = &mut self.fallback {
                text.push(buf, out);
                return buf.len();
            }
            self.process(buf, false, out)
        });
        self.carry = carry;
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.begin(out);
        self.finish_unescaped(out);
        self.end(out);
    }

    fn finish_unescaped(&mut self, out: &mut Vec<u8>) {
        let held = self.unescape.finish();
        self.push_unescaped(&held, out);
        if self.withheld {
            return;
        }
        if let Some(text) = &mut self.fallback {
            return text.finish(out);
        }
        let buf = self.carry.take();
        self.process(&buf, true, out);
        if let Some(text) = &mut self.fallback {
            return text.finish(out);
        }
        // A document cut off inside a masked value: the replacement still goes out.
        if let Some(skip) = self.lex.skip.take() {
            self.render_field(&skip, out);
        }
    }

    /// Masks `buf` up to the point where nothing pending can change; returns bytes consumed.
    /// On a syntax error, hands the rest to a text masker and consumes everything.
    fn process(&mut self, buf: &[u8], eof: bool, out: &mut Vec<u8>) -> usize {
        // Past the record's cap already within this push: let go before the wider scan.
        if let Spans::On(t) = &self.spans
            && t.written + (out.len() - t.base) > t.limit
        {
            self.spans = Spans::Lost;
        }
        let tracking = matches!(self.spans, Spans::On(_));
        let scanner = if tracking {
            &self.rules.split
        } else {
            &self.rules.scanner
        };
        // Detectors read the escapes left as written as what they stand for; a piece never
        // ends inside one, so the next piece's view starts where an escape can.
        let mut view = std::mem::take(&mut self.view);
        view.build(buf);
        let seen = view.read(buf);
        let safe = if eof {
            buf.len()
        } else {
            view.start_of(detect::pending_from(scanner, seen))
        };
        self.hits.clear();
        match &mut self.spans {
            Spans::On(t) => {
                t.other.clear();
                self.behind
                    .scan_split(scanner, seen, &mut self.hits, &mut t.other);
                view.widen_hits(&mut t.other);
            }
            _ => self.behind.scan(scanner, seen, &mut self.hits),
        }
        view.widen_hits(&mut self.hits);
        let cut = detect::cut_long_hit(&mut self.hits, safe);
        let mut end = safe;
        // A private key too long to hold: the text masker swallows it up to its END line.
        let mut text_from = None;
        if let Some(h) = self
            .hits
            .iter()
            .find(|h| h.start < end && (h.end > end || (h.open && !eof)))
        {
            end = h.start;
            if h.open && buf.len() - h.start >= detect::MAX_PEM {
                text_from = Some(h.start);
            }
        }
        // A value the record needs that runs on past this piece is held back with what
        // follows, as the rules' own are, if it is short and holding it splits nothing else.
        // Otherwise (a private key whose end has not come, a long value, one overlapping a
        // value the rules mask) it is not followed: the record masks the answer on its own.
        if let Spans::On(t) = &self.spans {
            let mut lost = t.other.iter().any(|h| h.open);
            if let Some(h) = t.other.iter().find(|h| h.start < end && h.end > end) {
                let to = h.start;
                if cut.is_some()
                    || text_from.is_some()
                    || safe - to > detect::MAX_HELD_HIT
                    || self.hits.iter().any(|p| p.start < to && p.end > to)
                {
                    lost = true;
                } else {
                    end = to;
                }
            }
            if lost {
                self.spans = Spans::Lost;
            }
        }
        let hits = std::mem::take(&mut self.hits);
        let result = if self.rules.has_fields() {
            self.run(buf, end, &hits, out)
        } else {
            self.run_quotes(buf, end, &hits, out);
            Ok(())
        };
        self.hits = hits;
        let consumed = match result.err().or(text_from) {
            None => {
                self.behind.keep(view.read(buf), end, cut);
                end
            }
            Some(_) if self.rules.has_fields() => {
                self.spans = Spans::Lost;
                self.withheld = true;
                out.extend_from_slice(if self.too_deep {
                    b"\"[MASKED:too_deep]\"".as_slice()
                } else {
                    b"\"[MASKED:unparsed]\""
                });
                self.masked += 1;
                tracing::debug!(
                    too_deep = self.too_deep,
                    "JSON not followed further with field paths to mask: the rest is withheld"
                );
                buf.len()
            }
            Some(at) => {
                self.spans = Spans::Lost;
                let mut text = TextMasker::json(self.rules.clone(), self.key.clone());
                text.push(&buf[at..], out);
                if eof {
                    text.finish(out);
                }
                self.fallback = Some(text);
                buf.len()
            }
        };
        self.view = view;
        consumed
    }

    /// Writes `buf[..end]` masked, knowing only whether each hit is inside a string. A card
    /// number outside one (a JSON number) becomes a string; anything else outside a string (not
    /// JSON after all) is masked in place, so nothing slips through unparsed.
    fn run_quotes(&mut self, buf: &[u8], end: usize, hits: &[Hit], out: &mut Vec<u8>) {
        let others =
            matches!(&self.spans, Spans::On(t) if t.other.first().is_some_and(|h| h.start < end));
        let (quotes0, out0) = (self.quotes, out.len());
        let mut reps: Vec<Replaced> = Vec::new();
        let mut pos = 0;
        for h in hits.iter().take_while(|h| h.start < end) {
            // Widened to whole escapes, two hits may share one: the second starts where the
            // first stopped.
            if h.end.min(end) <= pos {
                continue;
            }
            let h = &Hit {
                start: h.start.max(pos),
                ..*h
            };
            self.quotes.advance(&buf[pos..h.start]);
            out.extend_from_slice(&buf[pos..h.start]);
            let hit_end = h.end.min(end);
            let out_start = out.len();
            if self.quotes.in_string {
                // A custom regex may run past the string's end: output resumes at the quote.
                let stop = self
                    .quotes
                    .string_end(&buf[h.start..hit_end])
                    .map_or(hit_end, |q| h.start + q);
                self.rules
                    .render_hit(&self.key, h, &buf[h.start..stop], out);
                self.quotes.advance(&buf[h.start..stop]);
                pos = stop;
            } else {
                // No JSON number is a value too long to hold (a card stands alone): a long
                // hit outside a string is not JSON after all, and is masked in place, the
                // same whether it went out whole or in pieces.
                let number = h.kind == Kind::Detector(Detector::CardNumber) && !h.long();
                if number {
                    out.push(b'"');
                }
                self.rules
                    .render_hit(&self.key, h, &buf[h.start..hit_end], out);
                if number {
                    out.push(b'"');
                }
                self.quotes.advance(&buf[h.start..hit_end]);
                pos = hit_end;
            }
            if others {
                reps.push((h.start, pos, out_start, out.len()));
            }
            self.masked += 1;
        }
        self.quotes.advance(&buf[pos..end]);
        out.extend_from_slice(&buf[pos..end]);
        if others {
            self.place_others(buf, end, quotes0, out0, &reps);
        }
    }

    /// Notes where this piece's other hits (before `end`) landed in the output: `quotes0`
    /// and `out0` are the quoting state at `buf`'s start and where its first byte went,
    /// `reps` the pieces the rules replaced.
    fn place_others(
        &mut self,
        buf: &[u8],
        end: usize,
        quotes0: Quotes,
        out0: usize,
        reps: &[Replaced],
    ) {
        let Spans::On(t) = &mut self.spans else {
            return;
        };
        let mut quotes = quotes0;
        let mut at = 0;
        // Output index `i` of this push is byte `i - base` of it, after `written` before it.
        let origin = t.written;
        let base = t.base;
        for h in t.other.iter().take_while(|h| h.start < end) {
            quotes.advance(&buf[at..h.start.max(at)]);
            at = h.start.max(at);
            let stop = if quotes.in_string {
                quotes
                    .string_end(&buf[h.start..h.end])
                    .map_or(h.end, |q| h.start + q)
            } else {
                h.end
            };
            let kind = match h.kind {
                Kind::Detector(d) => d,
                // Custom regexes are the rules' own: never among the others.
                Kind::Custom(_) => continue,
            };
            let start = out_at(reps, out0, h.start, false);
            let stop = out_at(reps, out0, stop, true);
            t.found.push(Span {
                start: origin + start - base,
                end: origin + stop - base,
                kind,
                cut: h.cut,
                rest: h.rest,
                number: !quotes.in_string && kind == Detector::CardNumber,
            });
        }
    }

    /// Follows `buf[..end]`'s structure, writing it (masked) to `out`. `Err(at)`: not JSON
    /// from `at` on; everything before `at` has been written.
    fn run(
        &mut self,
        buf: &[u8],
        end: usize,
        hits: &[Hit],
        out: &mut Vec<u8>,
    ) -> Result<(), usize> {
        let mut emit = 0;
        let mut hits = hits.iter().take_while(|h| h.start < end);
        let mut hit = hits.next();
        let mut base = 0;
        while base < end {
            let len = (end - base).min(64);
            let block = self.lex.blocks.next(&buf[base..base + len]);
            let mut events = self.events(&block, 0);
            loop {
                let ev = if events == 0 {
                    usize::MAX
                } else {
                    base + events.trailing_zeros() as usize
                };
                if let Some(h) = hit.filter(|h| h.start < base + len && h.start <= ev) {
                    if self.lex.skip.is_none() {
                        let in_string = block.in_string >> (h.start - base) & 1 == 1;
                        self.on_hit(buf, *h, in_string, &mut emit, out);
                    }
                    hit = hits.next();
                    continue;
                }
                if events == 0 {
                    break;
                }
                let at = ev;
                events &= events - 1;
                let skipping = self.lex.skip.is_some();
                if let Err(at) = self.on_structure(buf, at, &mut emit, out) {
                    return self.fail(buf, at, emit, out);
                }
                if self.lex.skip.is_some() != skipping {
                    events = self.events(&block, at - base + 1);
                }
            }
            base += len;
        }
        self.flush(buf, &mut emit, end, out);
        self.keep_tail(&buf[..end]);
        Ok(())
    }

    /// The structural bytes of `block` from bit `from` on that the lexer must visit: commas
    /// only when array positions matter or a masked value may end at one.
    fn events(&self, block: &Block, from: usize) -> u64 {
        let mut ev = block.structural;
        if self.rules.field_keys.arrays || self.lex.skip.is_some() {
            ev |= block.comma;
        }
        ev & (!0u64).checked_shl(from as u32).unwrap_or(0)
    }

    /// One structural byte at `at` outside strings. `Err(at)`: nesting is broken there.
    fn on_structure(
        &mut self,
        buf: &[u8],
        at: usize,
        emit: &mut usize,
        out: &mut Vec<u8>,
    ) -> Result<(), usize> {
        let c = buf[at];
        match c {
            b'{' | b'[' => {
                if self.lex.stack.len() >= MAX_DEPTH {
                    // Valid JSON to Python and JavaScript, but deeper than paths are followed:
                    // with field paths to mask, the rest is withheld, not masked as text.
                    self.too_deep = true;
                    return Err(at);
                }
                let array = c == b'[';
                self.lex.stack.push(Frame {
                    array,
                    at: if array { 0 } else { u32::from(OTHER) },
                });
                if array && self.rules.field_keys.any_value {
                    self.value_start(buf, at + 1, emit, out);
                }
            }
            b'}' | b']' => {
                self.value_end(buf, at, emit, out);
                match self.lex.stack.pop() {
                    Some(f) if f.array == (c == b']') => {}
                    _ => return Err(at),
                }
            }
            b':' => {
                let keys = &self.rules.field_keys;
                let key = if self.lex.skip.is_some() || keys.names.is_empty() {
                    OTHER
                } else if at >= keys.lookback {
                    keys.key_before(&buf[at - keys.lookback..at])
                } else {
                    let before = &mut self.lex.scratch;
                    before.clear();
                    before.extend_from_slice(&self.lex.tail);
                    before.extend_from_slice(&buf[..at]);
                    keys.key_before(before)
                };
                match self.lex.stack.last_mut() {
                    Some(f) if !f.array => {
                        f.at = u32::from(if key == UNREADABLE { OTHER } else { key })
                    }
                    _ => return Err(at),
                }
                if key == UNREADABLE && self.lex.skip.is_none() {
                    self.flush(buf, emit, at + 1, out);
                    self.lex.skip = Some(Skip {
                        depth: self.lex.stack.len(),
                        style: Style::Redact,
                        capture: Vec::new(),
                        capped: false,
                    });
                } else if self.rules.field_keys.candidate(key) {
                    self.value_start(buf, at + 1, emit, out);
                }
            }
            _ => {
                // `,`
                self.value_end(buf, at, emit, out);
                if let Some(f) = self.lex.stack.last_mut()
                    && f.array
                {
                    f.at = f.at.saturating_add(1);
                    if self.rules.field_keys.any_value {
                        self.value_start(buf, at + 1, emit, out);
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the last bytes consumed so a key split across chunks can still be read back.
    fn keep_tail(&mut self, consumed: &[u8]) {
        detect::keep_last(&mut self.lex.tail, consumed, self.rules.field_keys.lookback);
    }

    /// Writes `buf[emit..to]`, or keeps it for a masked field's replacement.
    fn flush(&mut self, buf: &[u8], emit: &mut usize, to: usize, out: &mut Vec<u8>) {
        if to <= *emit {
            return;
        }
        match &mut self.lex.skip {
            Some(skip) => {
                let room = MAX_CAPTURE.saturating_sub(skip.capture.len());
                let part = &buf[*emit..to];
                skip.capped |= part.len() > room;
                skip.capture
                    .extend_from_slice(&part[..part.len().min(room)]);
            }
            None => out.extend_from_slice(&buf[*emit..to]),
        }
        *emit = to;
    }

    /// A value begins at `at` (after its colon, `[` or `,`; whitespace included) under the
    /// current stack: starts replacing it if a field path selects it.
    fn value_start(&mut self, buf: &[u8], at: usize, emit: &mut usize, out: &mut Vec<u8>) {
        if self.lex.skip.is_some() {
            return;
        }
        let keys = &self.rules.field_keys;
        let stack = &self.lex.stack;
        let step = |i: usize| {
            let f = stack[i];
            if f.array {
                Step::Index(f.at as usize)
            } else {
                Step::Key(keys.name(f.at as u16))
            }
        };
        let depth = stack.len();
        if let Some(style) = self.rules.field_style(depth, &step) {
            self.flush(buf, emit, at, out);
            self.lex.skip = Some(Skip {
                depth,
                style,
                capture: Vec::new(),
                capped: false,
            });
        }
    }

    /// The value at the current depth ends at `at` (a `,` or the closing bracket).
    fn value_end(&mut self, buf: &[u8], at: usize, emit: &mut usize, out: &mut Vec<u8>) {
        if self
            .lex
            .skip
            .as_ref()
            .is_some_and(|s| s.depth == self.lex.stack.len())
        {
            self.flush(buf, emit, at, out);
            if let Some(skip) = self.lex.skip.take() {
                self.render_field(&skip, out);
            }
        }
    }

    /// Writes a masked field's replacement where its value was, keeping the whitespace
    /// around it. An empty value (`[]`'s missing first element) is no value.
    fn render_field(&mut self, skip: &Skip, out: &mut Vec<u8>) {
        let v = &skip.capture[..];
        let lead = v.iter().take_while(|&&c| is_ws(c)).count();
        let trail = if skip.capped {
            0
        } else {
            v[lead..].iter().rev().take_while(|&&c| is_ws(c)).count()
        };
        let core = &v[lead..v.len() - trail];
        out.extend_from_slice(&v[..lead]);
        if !core.is_empty() {
            let style = if skip.capped {
                Style::Redact
            } else {
                skip.style
            };
            // The value as a caller would see it: a string's content, anything else as written.
            let core = core
                .strip_prefix(b"\"")
                .and_then(|s| s.strip_suffix(b"\""))
                .unwrap_or(core);
            out.push(b'"');
            super::render_value(&self.key, "field", style, core, out);
            out.push(b'"');
            self.masked += 1;
        }
        out.extend_from_slice(&v[v.len() - trail..]);
    }

    /// A detector hit outside any masked field. In a string it is replaced up to the string's
    /// end; outside one, a number becomes a string and anything else (not JSON after all) is
    /// replaced in place.
    fn on_hit(&mut self, buf: &[u8], h: Hit, in_string: bool, emit: &mut usize, out: &mut Vec<u8>) {
        if h.start < *emit {
            return;
        }
        self.flush(buf, emit, h.start, out);
        let end = h.end.min(buf.len());
        if in_string {
            let stop = string_end(&buf[h.start..end]).map_or(end, |q| h.start + q);
            self.rules
                .render_hit(&self.key, &h, &buf[h.start..stop], out);
            *emit = stop;
        } else {
            // A long hit is masked in place, as in `run_quotes`.
            let number = matches!(buf[h.start], b'0'..=b'9' | b'-') && !h.long();
            if number {
                out.push(b'"');
            }
            self.rules
                .render_hit(&self.key, &h, &buf[h.start..end], out);
            if number {
                out.push(b'"');
            }
            *emit = end;
        }
        self.masked += 1;
    }

    fn fail(
        &mut self,
        buf: &[u8],
        at: usize,
        mut emit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), usize> {
        self.flush(buf, &mut emit, at, out);
        if let Some(skip) = self.lex.skip.take() {
            self.render_field(&skip, out);
        }
        tracing::debug!(at, "body is not JSON; masking the rest as text");
        Err(emit.max(at))
    }
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where the string a hit sits in ends (its closing quote), if within `b`.
fn string_end(b: &[u8]) -> Option<usize> {
    Quotes::default().string_end(b)
}
