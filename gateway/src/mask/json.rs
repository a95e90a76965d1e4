//! Streaming JSON masking: a resumable lexer that knows, at every byte, whether it is inside a
//! string and which path the current value sits at. Field paths replace whole values; detector
//! hits are replaced inside strings, and a card number written as a bare number becomes a
//! string, so the document stays valid JSON.
//!
//! The lexer only follows structure; it does not build values. Inside strings it jumps with
//! `memchr2` to the next quote or backslash. A body that turns out not to be JSON is masked as
//! text from that point on (`MaskStats::json_fallback`).
use std::sync::Arc;

use super::{
    MaskKey, MaskRules, MaskStats, Style, TextMasker,
    detect::{self, Detector, Hit, Kind},
};
use crate::jsonpath::Step;

/// Nesting beyond this is treated as not-JSON (and masked as text).
const MAX_DEPTH: usize = 128;
/// Keys longer than this are compared by their first bytes only.
const MAX_KEY: usize = 256;
/// A masked field's value is kept for `partial`/`hash` up to this size; larger ones are redacted.
const MAX_CAPTURE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a value; `first` right after `[` (so `]` may close).
    Value {
        first: bool,
    },
    AfterValue,
    /// Expecting a key; `first` right after `{`.
    Key {
        first: bool,
    },
    Colon,
    Str {
        key: bool,
    },
    Escape {
        key: bool,
    },
    Scalar,
}

#[derive(Debug)]
enum Frame {
    Object { key: Vec<u8> },
    Array { index: usize },
}

/// A field value being replaced: output is suppressed until it ends.
#[derive(Debug)]
struct Skip {
    depth: usize,
    style: Style,
    capture: Vec<u8>,
    capped: bool,
}

#[derive(Debug)]
struct Lexer {
    state: State,
    stack: Vec<Frame>,
    skip: Option<Skip>,
    /// Key buffers of closed objects, reused so a document costs no allocation per object.
    free: Vec<Vec<u8>>,
}

impl Lexer {
    fn pop(&mut self) {
        if let Some(Frame::Object { key }) = self.stack.pop() {
            self.free.push(key);
        }
    }
}

/// Streams a JSON body through field paths and detectors.
#[derive(Debug)]
pub struct JsonMasker {
    rules: Arc<MaskRules>,
    key: MaskKey,
    carry: Vec<u8>,
    hits: Vec<Hit>,
    lex: Lexer,
    /// Without field paths only string-or-not matters: tracked by quote parity.
    quotes: Quotes,
    fallback: Option<TextMasker>,
    masked: u64,
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
            carry: Vec::new(),
            hits: Vec::new(),
            lex: Lexer {
                state: State::Value { first: false },
                stack: Vec::new(),
                skip: None,
                free: Vec::new(),
            },
            quotes: Quotes::default(),
            fallback: None,
            masked: 0,
        }
    }

    pub fn stats(&self) -> MaskStats {
        MaskStats {
            masked: self.masked + self.fallback.as_ref().map_or(0, |f| f.stats.masked),
            json_fallback: self.fallback.is_some(),
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if let Some(text) = &mut self.fallback {
            return text.push(chunk, out);
        }
        // A switch to the text masker consumes everything, so nothing is held back then.
        let carry = std::mem::take(&mut self.carry);
        self.carry = super::feed(carry, chunk, |buf| self.process(buf, false, out));
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(text) = &mut self.fallback {
            return text.finish(out);
        }
        let buf = std::mem::take(&mut self.carry);
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
        let scanner = &self.rules.scanner;
        let safe = if eof {
            buf.len()
        } else {
            detect::pending_from(scanner, buf)
        };
        self.hits.clear();
        scanner.scan(buf, &mut self.hits);
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
        let hits = std::mem::take(&mut self.hits);
        let result = if self.rules.has_fields() {
            self.run(buf, end, &hits, out)
        } else {
            self.run_quotes(buf, end, &hits, out);
            Ok(())
        };
        self.hits = hits;
        match result.err().or(text_from) {
            None => end,
            Some(at) => {
                let mut text = TextMasker::new(self.rules.clone(), self.key.clone());
                text.push(&buf[at..], out);
                if eof {
                    text.finish(out);
                }
                self.fallback = Some(text);
                buf.len()
            }
        }
    }

    /// Writes `buf[..end]` masked, knowing only whether each hit is inside a string. A card
    /// number outside one (a JSON number) becomes a string; anything else outside a string (not
    /// JSON after all) is masked in place, so nothing slips through unparsed.
    fn run_quotes(&mut self, buf: &[u8], end: usize, hits: &[Hit], out: &mut Vec<u8>) {
        let mut pos = 0;
        for h in hits.iter().take_while(|h| h.start < end) {
            self.quotes.advance(&buf[pos..h.start]);
            out.extend_from_slice(&buf[pos..h.start]);
            let hit_end = h.end.min(end);
            if self.quotes.in_string {
                // A custom regex may run past the string's end: output resumes at the quote.
                let stop = self
                    .quotes
                    .string_end(&buf[h.start..hit_end])
                    .map_or(hit_end, |q| h.start + q);
                self.rules
                    .render(&self.key, h.kind, &buf[h.start..stop], out);
                self.quotes.advance(&buf[h.start..stop]);
                pos = stop;
            } else {
                let number = h.kind == Kind::Detector(Detector::CardNumber);
                if number {
                    out.push(b'"');
                }
                self.rules
                    .render(&self.key, h.kind, &buf[h.start..hit_end], out);
                if number {
                    out.push(b'"');
                }
                self.quotes.advance(&buf[h.start..hit_end]);
                pos = hit_end;
            }
            self.masked += 1;
        }
        self.quotes.advance(&buf[pos..end]);
        out.extend_from_slice(&buf[pos..end]);
    }

    /// Lexes `buf[..end]`, writing it (masked) to `out`. `Err(at)`: not JSON from `at` on;
    /// everything before `at` has been written.
    fn run(
        &mut self,
        buf: &[u8],
        end: usize,
        hits: &[Hit],
        out: &mut Vec<u8>,
    ) -> Result<(), usize> {
        let fields = self.rules.has_fields();
        let mut emit = 0;
        let mut hit_i = 0;
        let mut next_hit = hits.first().map_or(usize::MAX, |h| h.start);
        let mut i = 0;
        // The state lives in a local while lexing; `self.lex.state` is only the resume point.
        let mut state = self.lex.state;
        while i < end {
            if i >= next_hit {
                let h = hits[hit_i];
                hit_i += 1;
                next_hit = hits.get(hit_i).map_or(usize::MAX, |h| h.start);
                if self.lex.skip.is_none() {
                    self.lex.state = state;
                    self.on_hit(buf, h, i, &mut emit, out);
                }
                continue;
            }
            let c = buf[i];
            match state {
                State::Str { key } => {
                    let lim = end.min(next_hit);
                    match find_quote_or_backslash(&buf[i..lim]) {
                        None => {
                            if key && fields {
                                self.key_bytes(&buf[i..lim]);
                            }
                            i = lim;
                        }
                        Some(k) => {
                            let j = i + k;
                            if key && fields {
                                self.key_bytes(&buf[i..j]);
                            }
                            if buf[j] == b'\\' {
                                state = State::Escape { key };
                                i = j + 1;
                            } else {
                                // A hit clipped at the string's end: output resumes at the quote.
                                if emit > j {
                                    emit = j;
                                }
                                i = j + 1;
                                if key {
                                    state = State::Colon;
                                } else {
                                    self.value_done(buf, i, &mut emit, out);
                                    state = State::AfterValue;
                                }
                            }
                        }
                    }
                    continue;
                }
                State::Escape { key } => {
                    if key && fields {
                        self.key_bytes(&buf[i..i + 1]);
                    }
                    state = State::Str { key };
                }
                State::Scalar => {
                    if c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.' {
                        i += 1;
                        continue;
                    }
                    self.value_done(buf, i, &mut emit, out);
                    state = State::AfterValue;
                    continue;
                }
                _ if matches!(c, b' ' | b'\t' | b'\n' | b'\r') => {}
                State::Value { first } => match c {
                    b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                        if fields {
                            self.value_start(buf, i, &mut emit, out);
                        }
                        match c {
                            b'{' | b'[' => {
                                if self.lex.stack.len() >= MAX_DEPTH {
                                    return self.fail(buf, i, emit, state, out);
                                }
                                self.lex.stack.push(if c == b'{' {
                                    Frame::Object {
                                        key: self.lex.free.pop().unwrap_or_default(),
                                    }
                                } else {
                                    Frame::Array { index: 0 }
                                });
                                state = if c == b'{' {
                                    State::Key { first: true }
                                } else {
                                    State::Value { first: true }
                                };
                            }
                            b'"' => state = State::Str { key: false },
                            _ => state = State::Scalar,
                        }
                    }
                    b']' if first => {
                        self.lex.pop();
                        self.value_done(buf, i + 1, &mut emit, out);
                        state = State::AfterValue;
                    }
                    _ => return self.fail(buf, i, emit, state, out),
                },
                State::AfterValue => match (c, self.lex.stack.last_mut()) {
                    (b',', Some(Frame::Object { .. })) => state = State::Key { first: false },
                    (b',', Some(Frame::Array { index })) => {
                        *index += 1;
                        state = State::Value { first: false };
                    }
                    (b'}', Some(Frame::Object { .. })) | (b']', Some(Frame::Array { .. })) => {
                        self.lex.pop();
                        self.value_done(buf, i + 1, &mut emit, out);
                    }
                    // Another top-level value (NDJSON, JSON sequences).
                    (_, None) => {
                        state = State::Value { first: false };
                        continue;
                    }
                    _ => return self.fail(buf, i, emit, state, out),
                },
                State::Key { first } => match c {
                    b'"' => {
                        if let Some(Frame::Object { key }) = self.lex.stack.last_mut() {
                            key.clear();
                        }
                        state = State::Str { key: true };
                    }
                    b'}' if first => {
                        self.lex.pop();
                        self.value_done(buf, i + 1, &mut emit, out);
                        state = State::AfterValue;
                    }
                    _ => return self.fail(buf, i, emit, state, out),
                },
                State::Colon => match c {
                    b':' => state = State::Value { first: false },
                    _ => return self.fail(buf, i, emit, state, out),
                },
            }
            i += 1;
        }
        self.lex.state = state;
        self.flush(buf, &mut emit, end, out);
        Ok(())
    }

    fn key_bytes(&mut self, b: &[u8]) {
        if let Some(Frame::Object { key }) = self.lex.stack.last_mut() {
            let room = MAX_KEY.saturating_sub(key.len());
            key.extend_from_slice(&b[..b.len().min(room)]);
        }
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

    fn value_start(&mut self, buf: &[u8], at: usize, emit: &mut usize, out: &mut Vec<u8>) {
        if self.lex.skip.is_some() {
            return;
        }
        let top = match self.lex.stack.last() {
            Some(Frame::Object { key }) => Some(&key[..]),
            _ => None,
        };
        if !self.rules.field_candidate(top) {
            return;
        }
        let n = self.lex.stack.len();
        let stack = &self.lex.stack;
        let step = |i: usize| match &stack[i] {
            Frame::Object { key } => Step::Key(key),
            Frame::Array { index } => Step::Index(*index),
        };
        if let Some(style) = self.rules.field_style(n, &step) {
            self.flush(buf, emit, at, out);
            self.lex.skip = Some(Skip {
                depth: n,
                style,
                capture: Vec::new(),
                capped: false,
            });
        }
    }

    fn value_done(&mut self, buf: &[u8], at: usize, emit: &mut usize, out: &mut Vec<u8>) {
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

    fn render_field(&mut self, skip: &Skip, out: &mut Vec<u8>) {
        let style = if skip.capped {
            Style::Redact
        } else {
            skip.style
        };
        // The value as a caller would see it: a string's content, anything else as written.
        let v = &skip.capture[..];
        let v = v
            .strip_prefix(b"\"")
            .and_then(|s| s.strip_suffix(b"\""))
            .unwrap_or(v);
        out.push(b'"');
        super::render_value(&self.key, "field", style, v, out);
        out.push(b'"');
        self.masked += 1;
    }

    fn on_hit(&mut self, buf: &[u8], h: Hit, at: usize, emit: &mut usize, out: &mut Vec<u8>) {
        match self.lex.state {
            State::Str { .. } | State::Escape { .. } => {
                self.flush(buf, emit, at, out);
                let end = h.end.min(buf.len());
                self.rules
                    .render(&self.key, h.kind, &buf[h.start..end], out);
                self.masked += 1;
                *emit = end;
            }
            // A card number written as a number: it becomes a string (unless the whole
            // value is a masked field anyway).
            State::Value { .. } if h.kind == Kind::Detector(Detector::CardNumber) => {
                if self.rules.has_fields() {
                    self.value_start(buf, at, emit, out);
                    if self.lex.skip.is_some() {
                        return;
                    }
                }
                self.flush(buf, emit, at, out);
                out.push(b'"');
                self.rules
                    .render(&self.key, h.kind, &buf[h.start..h.end], out);
                out.push(b'"');
                self.masked += 1;
                *emit = h.end;
            }
            // Structure or the middle of a number: not a value a detector is meant for.
            _ => {}
        }
    }

    fn fail(
        &mut self,
        buf: &[u8],
        at: usize,
        mut emit: usize,
        state: State,
        out: &mut Vec<u8>,
    ) -> Result<(), usize> {
        self.lex.state = state;
        self.flush(buf, &mut emit, at, out);
        if let Some(skip) = self.lex.skip.take() {
            self.render_field(&skip, out);
        }
        tracing::debug!(at, "body is not valid JSON; masking the rest as text");
        Err(emit.max(at))
    }
}

/// `memchr2(b'"', b'\\', ..)`, but most JSON strings are short enough that a plain loop over
/// their first bytes beats the SIMD call's setup.
#[inline]
fn find_quote_or_backslash(b: &[u8]) -> Option<usize> {
    let head = b.len().min(16);
    for (i, &c) in b[..head].iter().enumerate() {
        if c == b'"' || c == b'\\' {
            return Some(i);
        }
    }
    memchr::memchr2(b'"', b'\\', &b[head..]).map(|i| i + head)
}
