//! A long answer kept beside its record's JSON rather than inside it.
//!
//! Written into the record's text, an answer must first be found to be exactly one JSON value
//! ([`super::valid::is_json`]): anything else could end the record's `response` and write fields
//! of its own. On the data path that check was a fifth of the CPU a call with 16 KiB answers.
//! A long answer is instead written after the record's JSON, where none of its bytes can reach
//! the record's fields, and is checked only when the record is read:
//!
//! `0x1E ‖ the record's JSON, without "response" ‖ 0x0A ‖ the answer`
//!
//! The answer is the record's copy (masked as always), valid UTF-8 without NUL (a fleet
//! database's `text` refuses NUL). A reader ([`json`]) puts it back as `response`: the answer
//! itself when it is one JSON value, else a JSON string of it, exactly what it would have been
//! written inline ([`RawJson::text`]). A record's JSON begins with `{`, so the first byte says
//! which form a payload has, in a segment of any kind: no payload reads two ways.
//!
//! Which of the two an answer reads as is decided at every read, so the rule is part of the
//! format and must not change between versions: one JSON value by RFC 8259 with whitespace
//! around it, nesting at most 100 levels, every number within `f64`'s range and at most 16,383
//! digits after the point ([`super::valid::is_json`]), every `\u` escape a character other than
//! NUL ([`super::valid::escapes_decode`]); the tests below hold it. (The numbers' bounds came
//! a day after this format: an answer beyond them, read as JSON, made a record `serde_json`
//! and `jsonb` could not read at all.)
//!
//! The payload, in either form, is what the log chains, the Merkle tree hashes, proofs carry
//! as their `leaf` and the fleet's `leaf` column keeps; the JSON it reads as is what `records`
//! shows and the fleet's `record` column holds.
use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;

use super::RawJson;

/// The first byte of a payload whose answer is beside its JSON (ASCII record separator).
pub const MARK: u8 = 0x1e;
/// Answers this long or longer are kept beside: below it the check costs well under a
/// microsecond, and the record stays plain JSON.
pub const FROM: usize = 1024;

/// Whether a record keeps `answer` beside its JSON: long enough, and without NUL.
pub fn keeps(answer: &str) -> bool {
    answer.len() >= FROM && memchr::memchr(0, answer.as_bytes()).is_none()
}

/// Room kept before an answer captured to be kept beside its record's JSON, for that JSON: a
/// record's JSON without its answer is rarely half of it.
pub const ROOM: usize = 2048;

/// An answer's bytes captured for its record as they go to the client. An answer that came in
/// one chunk is kept in the buffer the client's copy went from (the masker's output), not
/// copied: on the l7 bench's 16 KiB answers that copy was 2 % of the gateway's CPU. A second
/// chunk makes one buffer of both; one expected to be kept beside its record's JSON is made
/// with [`ROOM`] before it, where the payload's head is then written ([`payload`]).
#[derive(Debug, Default)]
pub struct Captured {
    /// `room` ASCII spaces, then the answer's bytes (once there is more than one chunk).
    buf: Vec<u8>,
    room: usize,
    /// The answer's one chunk so far, as it went to the client, and its buffer's capacity.
    only: Option<(Bytes, usize)>,
    /// What `buf` is sized for when a second chunk comes.
    expected: usize,
}

impl Captured {
    /// Adds `chunk`; `expected`: how long the answer is expected to be, chunk included.
    /// `own`: the chunk is a buffer written for this answer alone (the masker's output), of
    /// that capacity; as the first, it is kept as it is. Any other (a slice of the upstream's
    /// read buffer, which it would keep whole, read room and all) is copied.
    pub fn push(&mut self, chunk: &Bytes, own: Option<usize>, expected: usize) {
        if self.only.is_none() && self.buf.capacity() == 0 {
            if let Some(held) = own
                && chunk.is_unique()
            {
                self.only = Some((chunk.clone(), held));
                self.expected = expected;
                return;
            }
            self.reserve(expected);
        } else if let Some((only, _)) = self.only.take() {
            self.reserve(self.expected.max(only.len() + chunk.len()));
            self.buf.extend_from_slice(&only);
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Sized for `expected` bytes, once, before the first: with room before them when an
    /// answer that long is kept beside.
    fn reserve(&mut self, expected: usize) {
        if expected >= FROM {
            self.buf.reserve(ROOM + expected);
            self.buf.resize(ROOM, b' ');
            self.room = ROOM;
        } else {
            self.buf.reserve(expected);
        }
    }

    /// The answer's bytes so far.
    pub fn bytes(&self) -> &[u8] {
        match &self.only {
            Some((b, _)) => b,
            None => &self.buf[self.room..],
        }
    }

    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The answer as text; its bytes when they are not UTF-8.
    pub fn into_text(self) -> Result<Answer, Vec<u8>> {
        if let Some((only, held)) = self.only {
            return match std::str::from_utf8(&only) {
                Ok(_) => Ok(Answer(Text::Shared(only, held))),
                Err(_) => Err(only.to_vec()),
            };
        }
        let room = self.room;
        match String::from_utf8(self.buf) {
            Ok(buf) => Ok(Answer(Text::Room { buf, room })),
            Err(e) => {
                let mut bytes = e.into_bytes();
                bytes.drain(..room);
                Err(bytes)
            }
        }
    }
}

impl From<Vec<u8>> for Captured {
    fn from(buf: Vec<u8>) -> Self {
        Self {
            buf,
            ..Self::default()
        }
    }
}

/// An answer's text as its record keeps it beside its JSON: with the room it was captured
/// with ([`Captured`]), if any, or in the buffer the client's copy went from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer(Text);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Text {
    /// `room` ASCII spaces, then the answer.
    Room { buf: String, room: usize },
    /// UTF-8, checked when it was made ([`Captured::into_text`]); and the capacity of the
    /// buffer it keeps.
    Shared(Bytes, usize),
}

impl Default for Answer {
    fn default() -> Self {
        String::new().into()
    }
}

impl Answer {
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Text::Room { buf, room } => &buf[*room..],
            // SAFETY: checked to be UTF-8 when made (`Captured::into_text`), and the bytes
            // behind a `Bytes` never change.
            Text::Shared(b, _) => unsafe { std::str::from_utf8_unchecked(b) },
        }
    }

    /// The answer alone (copied when it had room before it or is shared).
    pub fn into_string(self) -> String {
        match self.0 {
            Text::Room { buf, room: 0 } => buf,
            _ => self.as_str().to_owned(),
        }
    }
}

impl From<String> for Answer {
    fn from(buf: String) -> Self {
        Self(Text::Room { buf, room: 0 })
    }
}

/// A record's payload as the writer gets it: `buf[start..]` then `tail` (before `start`, room
/// its answer was captured with; `tail`, an answer kept in the buffer it went to the client
/// from, `tail_held` bytes of capacity).
#[derive(Debug, Default)]
pub(super) struct Payload {
    pub buf: Vec<u8>,
    pub start: usize,
    pub tail: Bytes,
    pub tail_held: usize,
}

impl Payload {
    /// Its two pieces, in order.
    pub fn parts(&self) -> [&[u8]; 2] {
        [&self.buf[self.start..], &self.tail]
    }

    /// The memory it holds, as the backlog counts it.
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.tail_held.max(self.tail.len())
    }
}

/// One payload: the record's JSON without `response`, as `json` writes it
/// (`Record::write_json`), and `answer` beside it. Written in the answer's room when its head
/// fits there, before the answer's own buffer when it has one, else into a buffer of its own.
pub(super) fn payload(
    answer: Answer,
    json: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<Payload, serde_json::Error> {
    let mut head = Vec::with_capacity(1024);
    head.push(MARK);
    json(&mut head)?;
    head.push(b'\n');
    let (buf, room) = match answer.0 {
        Text::Shared(tail, tail_held) => {
            return Ok(Payload {
                buf: head,
                start: 0,
                tail,
                tail_held,
            });
        }
        Text::Room { buf, room } => (buf, room),
    };
    let mut buf = buf.into_bytes();
    if head.len() <= room {
        let start = room - head.len();
        buf[start..room].copy_from_slice(&head);
        return Ok(Payload {
            buf,
            start,
            ..Payload::default()
        });
    }
    let mut out = Vec::with_capacity(head.len() + buf.len() - room);
    out.extend_from_slice(&head);
    out.extend_from_slice(&buf[room..]);
    Ok(Payload {
        buf: out,
        ..Payload::default()
    })
}

/// Why a payload marked as keeping its answer beside its JSON cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum BesideError {
    #[error("its JSON, before the answer kept beside it, is not a JSON object: {0}")]
    Json(String),
    #[error("no line feed between its JSON and the answer kept beside it")]
    NoSeparator,
    #[error("its JSON has a `response` of its own and an answer kept beside it")]
    TwoResponses,
    #[error("the answer kept beside its JSON is not UTF-8")]
    NotUtf8,
}

/// The record's JSON in a stored payload: the payload itself, or its JSON with the answer kept
/// beside it put back as `response`.
pub fn json(payload: &[u8]) -> Result<Cow<'_, [u8]>, BesideError> {
    let Some(rest) = payload.strip_prefix(&[MARK]) else {
        return Ok(Cow::Borrowed(payload));
    };
    /// The JSON before the answer: any object without a `response` of its own.
    #[derive(Deserialize)]
    struct Head {
        #[serde(default, deserialize_with = "present")]
        response: bool,
    }
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| true)
    }
    if rest.first() != Some(&b'{') {
        return Err(BesideError::Json("it does not begin with `{`".into()));
    }
    let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Head>();
    let head = match values.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => return Err(BesideError::Json(e.to_string())),
        None => return Err(BesideError::NoSeparator),
    };
    if head.response {
        return Err(BesideError::TwoResponses);
    }
    // The object ends with its `}`, right before the line feed.
    let (object, tail) = rest.split_at(values.byte_offset());
    let answer = tail.strip_prefix(b"\n").ok_or(BesideError::NoSeparator)?;
    let answer = std::str::from_utf8(answer).map_err(|_| BesideError::NotUtf8)?;
    let response = RawJson::text(answer);
    let fields = &object[..object.len() - 1];
    let mut out = Vec::with_capacity(fields.len() + response.get().len() + 16);
    out.extend_from_slice(fields);
    if fields[1..].iter().any(|b| !b.is_ascii_whitespace()) {
        out.push(b',');
    }
    out.extend_from_slice(br#""response":"#);
    out.extend_from_slice(response.get().as_bytes());
    out.push(b'}');
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn payload(head: &str, answer: &str) -> Vec<u8> {
        super::payload(Answer::from(answer.to_string()), |o| {
            o.extend_from_slice(head.as_bytes());
            Ok(())
        })
        .unwrap()
        .parts()
        .concat()
    }

    fn read(p: &[u8]) -> Value {
        serde_json::from_slice(&json(p).unwrap()).unwrap()
    }

    #[test]
    fn an_answer_beside_reads_as_it_would_have_been_written_inline() {
        let long = "x".repeat(FROM);
        for answer in [
            format!(r#"{{"items":["{long}"]}}"#),
            format!("  [1, 2, \"{long}\"]\n"),
            format!("plain text {long}"),
            // An answer that would end `response` and write a decision of its own, inline.
            format!(r#"1,"decision":{{"action":"allow"}},"x":"{long}""#),
            format!(r#"{{"a":1}} {{"b":"{long}"}}"#),
            format!("{long}\"}}"),
            " ".repeat(FROM),
            format!("line\nfeeds\n{long}\n"),
            format!("\u{1e}{{\"id\":\"other\"}}\n{long}"),
        ] {
            let inline = format!(
                r#"{{"id":"r1","response":{}}}"#,
                RawJson::text(&answer).get()
            );
            let inline: Value = serde_json::from_str(&inline).unwrap();
            let back = read(&payload(r#"{"id":"r1"}"#, &answer));
            assert_eq!(back, inline, "{answer:?}");
            assert_eq!(back.as_object().map(|o| o.len()), Some(2), "{answer:?}");
        }
    }

    /// The rule that makes an answer read as JSON or as a string is part of the format.
    #[test]
    fn what_reads_as_json_is_fixed() {
        let pad = " ".repeat(FROM);
        let nested = |depth: usize| format!("{}{}{pad}", "[".repeat(depth), "]".repeat(depth));
        for (answer, is_value) in [
            (nested(100), true),
            (nested(101), false),
            (format!(r#"["\u00e9\ud83d\ude00",{pad}1]"#), true),
            (format!("{pad}\"x\"{pad}"), true),
            (format!(r#"["\ud800",{pad}1]"#), false),
            (format!(r#"["\u0000",{pad}1]"#), false),
            (format!(r#"[1,{pad}]"#), false),
            (format!("[\"\u{1}\"{pad}]"), false),
            (format!("[NaN{pad}]"), false),
            (format!("[01{pad}]"), false),
            (format!("1{pad}2"), false),
            (format!("[1.7976931348623157e308,{pad}1e-16383]"), true),
            (format!("[1e400,{pad}1]"), false),
            (format!("[1e-16384,{pad}1]"), false),
        ] {
            let stored = payload("{}", &answer);
            let back = json(&stored).unwrap();
            let inline = format!(r#"{{"response":{}}}"#, answer.trim_matches(' '));
            assert_eq!(back == inline.as_bytes(), is_value, "{answer:?}");
            let read: Value = serde_json::from_slice(&back).expect("every reader reads it");
            let string = !is_value || answer.trim().starts_with('"');
            assert_eq!(read["response"].is_string(), string, "{answer:?}");
        }
    }

    /// Captured with room before it, the answer's payload is written around it, in place: the
    /// same bytes as one written into a buffer of its own; a head too long for the room, or
    /// an answer not UTF-8, is not lost. Captured in one chunk nothing else holds, it stays in
    /// that chunk's buffer, and the head goes before it.
    #[test]
    fn a_payload_is_written_in_the_room_its_answer_was_captured_with() {
        let answer = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3000));
        let head = |n: usize| format!(r#"{{"id":"{}"}}"#, "i".repeat(n));
        for n in [10, ROOM - 10, ROOM - 9, ROOM, 3 * ROOM] {
            for chunk in [700, answer.len()] {
                let mut c = Captured::default();
                for piece in answer.as_bytes().chunks(chunk) {
                    c.push(
                        &Bytes::copy_from_slice(piece),
                        Some(piece.len()),
                        answer.len(),
                    );
                }
                assert_eq!(c.bytes(), answer.as_bytes());
                let text = c.into_text().expect("UTF-8");
                assert_eq!(text.as_str(), answer);
                let shared = matches!(text.0, Text::Shared(..));
                assert_eq!(shared, chunk == answer.len(), "{chunk}");
                let p = super::payload(text, |o| {
                    o.extend_from_slice(head(n).as_bytes());
                    Ok(())
                })
                .unwrap();
                assert_eq!(p.parts().concat(), payload(&head(n), &answer), "{n}");
                // MARK, the head's 9 bytes and n, the line feed: in the room while they fit.
                let fits = n + 11 <= ROOM;
                assert_eq!(
                    p.buf.len() == ROOM + answer.len(),
                    fits && !shared,
                    "{n} {chunk}"
                );
                assert_eq!(p.tail.len(), if shared { answer.len() } else { 0 });
                assert_eq!(
                    read(&p.parts().concat())["response"]["pad"]
                        .as_str()
                        .map(str::len),
                    Some(3000)
                );
            }
        }
        // A chunk not written for this answer alone, or that something else holds too, is
        // copied.
        let chunk = Bytes::from(answer.clone());
        let mut c = Captured::default();
        c.push(&chunk, None, answer.len());
        assert!(c.only.is_none() && c.room == ROOM);
        let held = chunk.clone();
        let mut c = Captured::default();
        c.push(&chunk, Some(answer.len()), answer.len());
        assert!(c.only.is_none() && c.room == ROOM);
        drop(held);
        // What a kept chunk holds is what the backlog counts.
        let mut c = Captured::default();
        c.push(&chunk, Some(1 << 20), answer.len());
        let p = super::payload(c.into_text().expect("UTF-8"), |o| {
            o.extend_from_slice(b"{}");
            Ok(())
        })
        .unwrap();
        assert_eq!(p.held(), p.buf.capacity() + (1 << 20));
        for chunks in [1, 2] {
            let mut c = Captured::default();
            for piece in [&b"\xff not "[..], b"UTF-8"].chunks(3 - chunks) {
                c.push(&Bytes::from(piece.concat()), Some(9), FROM);
            }
            assert_eq!(c.into_text().unwrap_err(), b"\xff not UTF-8");
        }
        // A short answer is captured without room.
        let mut c = Captured::default();
        c.push(&Bytes::from_static(b"sh"), None, FROM - 1);
        c.push(&Bytes::from_static(b"ort"), None, FROM - 1);
        assert_eq!(c.room, 0);
        assert_eq!(
            c.into_text().map(Answer::into_string).as_deref(),
            Ok("short")
        );
    }

    #[test]
    fn a_payload_without_the_mark_is_its_own_json() {
        let p = br#"{"id":"r1","response":{"a":1}}"#;
        assert!(matches!(json(p), Ok(Cow::Borrowed(b)) if b == p));
    }

    #[test]
    fn an_empty_head_takes_the_answer_alone() {
        assert_eq!(read(&payload("{ }", "[1]")), json!({"response": [1]}));
    }

    #[test]
    fn a_payload_that_is_not_the_form_is_refused() {
        for (p, why) in [
            (
                payload(r#"{"id":"r1","response":null}"#, "1"),
                "`response` of its own",
            ),
            (payload(r#"{"id":"r1"} "#, "1"), "no line feed"),
            (payload(r#"["id"]"#, "1"), "does not begin"),
            (payload(r#"{"id":"r1""#, "1"), "not a JSON object"),
            (b"\x1e{\"id\":\"r1\"}".to_vec(), "no line feed"),
            (b"\x1e".to_vec(), "does not begin"),
            (b"\x1e{\"id\":\"r1\"}\n\xff".to_vec(), "not UTF-8"),
        ] {
            let e = json(&p).expect_err(why).to_string();
            assert!(e.contains(why), "{e} ({why})");
        }
    }

    #[test]
    fn only_a_long_answer_without_nul_is_kept_beside() {
        assert!(!keeps(&"x".repeat(FROM - 1)));
        assert!(keeps(&"x".repeat(FROM)));
        assert!(!keeps(&format!("{}\0", "x".repeat(FROM))));
    }
}
