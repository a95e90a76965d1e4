//! Server-sent events read as the WHATWG specification reads them, which is how the MCP SDKs'
//! clients read them: a line ends at CR, LF or CRLF; an event ends at an empty line; the
//! values of its `data` lines are joined with LF; a field's value loses one leading space; a
//! line that starts with `:` is a comment; a line without a colon is a field with an empty
//! value. Whatever reads an answer's messages (the masker, the tool-list filter, the pin
//! check) reads them through this, so that no framing a client accepts (a message split over
//! several `data` lines, CR-only line endings, `data:` without its space) reaches it unread.
//!
//! Fed in pieces as an answer streams; bounded by the caller ([`Events::held`]).

/// One event: its data (the `data` lines joined), its other fields in order, its comments.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Event {
    /// None: no `data` line (a client dispatches no message for it).
    pub data: Option<Vec<u8>>,
    /// `(name, value)` of every other field (`id`, `event`, `retry`, unknown ones).
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Comment lines, without their `:`.
    pub comments: Vec<Vec<u8>>,
}

impl Event {
    fn is_empty(&self) -> bool {
        self.data.is_none() && self.fields.is_empty() && self.comments.is_empty()
    }
}

/// Splits a stream into events.
#[derive(Debug, Default)]
pub struct Events {
    line: Vec<u8>,
    /// The last byte seen was a CR: an LF right after it ends nothing more.
    after_cr: bool,
    event: Event,
    /// Bytes of the event so far.
    size: usize,
    /// The current event is being skipped to its end (see [`Events::skip_event`]).
    skipping: bool,
    /// While skipping: the current line has bytes (it is not the event's empty line).
    skipped_bytes: bool,
    /// Bytes of the stream seen so far, up to three (a leading byte order mark is dropped,
    /// as clients drop it).
    seen: u8,
}

impl Events {
    /// Feeds `chunk`; calls `each` with every event it completes.
    pub fn push(&mut self, chunk: &[u8], mut each: impl FnMut(Event)) {
        let mut rest = chunk;
        // A UTF-8 byte order mark opening the stream, however it is cut.
        while self.seen < 3 && !rest.is_empty() {
            const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];
            if rest[0] != BOM[self.seen as usize] {
                // Not a mark: what was taken for its start is the stream's.
                self.line.extend_from_slice(&BOM[..self.seen as usize]);
                self.seen = 3;
                break;
            }
            rest = &rest[1..];
            self.seen += 1;
        }
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            match memchr::memchr2(b'\r', b'\n', rest) {
                Some(i) => {
                    if self.skipping {
                        self.skipped_bytes |= i > 0;
                    } else {
                        self.line.extend_from_slice(&rest[..i]);
                    }
                    self.after_cr = rest[i] == b'\r';
                    rest = &rest[i + 1..];
                    self.end_line(&mut each);
                }
                None => {
                    if self.skipping {
                        self.skipped_bytes = true;
                    } else {
                        self.line.extend_from_slice(rest);
                    }
                    rest = &[];
                }
            }
        }
    }

    /// The stream ended: an event without its empty line is dispatched all the same (the
    /// specification drops it; a lenient client may not).
    pub fn finish(&mut self, mut each: impl FnMut(Event)) {
        if !self.line.is_empty() && !self.skipping {
            self.end_line(&mut each);
        }
        if !self.skipping && !self.event.is_empty() {
            each(std::mem::take(&mut self.event));
        }
        *self = Self {
            seen: 3,
            ..Self::default()
        };
    }

    /// Bytes of the current event held so far.
    pub fn held(&self) -> usize {
        self.size + self.line.len()
    }

    /// Drops what is held of the current event and skips the rest of it, to its empty line.
    pub fn skip_event(&mut self) {
        // The line under way has bytes already, or the event would not be over its bound.
        self.skipped_bytes = !self.line.is_empty();
        self.line.clear();
        self.event = Event::default();
        self.size = 0;
        self.skipping = true;
    }

    fn end_line(&mut self, each: &mut impl FnMut(Event)) {
        if self.skipping {
            // Its empty line ends the skipped event; any other line is part of it.
            if !std::mem::replace(&mut self.skipped_bytes, false) {
                self.skipping = false;
                self.size = 0;
            }
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.size += line.len() + 1;
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            self.size = 0;
            if !event.is_empty() {
                each(event);
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(b":") {
            self.event.comments.push(comment.to_vec());
            return;
        }
        let (name, value) = match memchr::memchr(b':', &line) {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        if name == b"data" {
            match &mut self.event.data {
                Some(data) => {
                    data.push(b'\n');
                    data.extend_from_slice(value);
                }
                None => self.event.data = Some(value.to_vec()),
            }
        } else {
            self.event.fields.push((name.to_vec(), value.to_vec()));
        }
    }
}

/// The data of every event of a whole stream.
pub fn data_of(body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut events = Events::default();
    events.push(body, |e| out.extend(e.data));
    events.finish(|e| out.extend(e.data));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(body: &[u8], piece: usize) -> Vec<Event> {
        let mut out = Vec::new();
        let mut events = Events::default();
        for p in body.chunks(piece.max(1)) {
            events.push(p, |e| out.push(e));
        }
        events.finish(|e| out.push(e));
        out
    }

    #[test]
    fn every_framing_a_client_accepts_gives_the_same_events() {
        let expected = vec![
            Event {
                data: Some(b"{\"a\":\n1}".to_vec()),
                fields: vec![
                    (b"event".to_vec(), b"message".to_vec()),
                    (b"id".to_vec(), b"7".to_vec()),
                ],
                comments: vec![],
            },
            Event {
                data: Some(b"x".to_vec()),
                fields: vec![],
                comments: vec![b" ping".to_vec()],
            },
        ];
        for body in [
            &b"event: message\nid: 7\ndata: {\"a\":\ndata: 1}\n\n: ping\ndata: x\n\n"[..],
            b"event: message\r\nid: 7\r\ndata:{\"a\":\r\ndata:1}\r\n\r\n: ping\r\ndata:x\r\n\r\n",
            b"event: message\rid: 7\rdata: {\"a\":\rdata: 1}\r\r: ping\rdata: x\r\r",
            b"\xef\xbb\xbfevent: message\nid: 7\ndata: {\"a\":\ndata: 1}\n\n: ping\ndata: x\n\n",
        ] {
            for piece in [1, 2, 3, 7, 1000] {
                assert_eq!(
                    all(body, piece),
                    expected,
                    "{:?} in pieces of {piece}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn a_skipped_event_ends_at_its_empty_line() {
        let mut events = Events::default();
        let mut out = Vec::new();
        events.push(b"data: 12345", |e| out.push(e));
        assert_eq!(events.held(), 11);
        events.skip_event();
        events.push(b"678\ndata: more\n\ndata: next\n\n", |e| out.push(e));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.as_deref(), Some(&b"next"[..]));
        assert_eq!(
            data_of(b"data\n\ndata: a\n\n"),
            vec![b"".to_vec(), b"a".to_vec()]
        );
    }
}
