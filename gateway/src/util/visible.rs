//! Text a workload (or a token, or an approver) chose, made safe to show to a person: on a
//! terminal (`callgate approvals`, `records`, `status`), in the daemon's log and on the
//! approvals page. A cgroup name or a `comm` can hold escape sequences, carriage returns,
//! backspaces or bidi overrides that would redraw the screen, hide the real call or reorder
//! what is read. Every such character is written out visibly instead (`\x1b`, `\u{202e}`), so
//! what is shown is what is there.
use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
};

/// A character that must not reach a person's screen as itself: every control character
/// (C0 including tab and newline, DEL, C1), and the invisible characters that change how the
/// text around them reads: bidi marks, embeddings, overrides and isolates, zero-width
/// characters, line and paragraph separators, the byte-order mark.
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// `s` with every [`hidden`] character written as an escape: `\x1b` below U+0080 and for DEL,
/// `\u{202e}` above. Borrows when there is nothing to escape (the usual case).
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if !hidden(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// A JSON document (as serde_json writes it, possibly pretty) made safe to show: the
/// [`hidden`] characters serde_json leaves raw inside strings (DEL, C1, bidi and the like)
/// become `\uXXXX` escapes, so the text stays the same JSON. The document's own line breaks
/// stay (serde_json escapes those inside strings itself).
pub fn visible_json(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && hidden(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if c == '\n' || !hidden(c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    Cow::Owned(out)
}

/// The daemon's log writer: each event arrives as one write ending in a newline (that is how
/// `tracing-subscriber`'s fmt layer writes); everything before that newline that would not
/// show as itself is escaped, so a field carrying a workload's name can neither forge a log
/// line nor drive the terminal of whoever reads the log.
pub struct LogWriter<W> {
    inner: W,
    json: bool,
}

impl<W: Write> LogWriter<W> {
    /// `json`: the events are JSON lines (escape as `\uXXXX`, keeping them JSON).
    pub fn new(inner: W, json: bool) -> Self {
        Self { inner, json }
    }
}

impl<W: Write> Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (line, end) = match text.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (&*text, ""),
        };
        let shown = if self.json {
            // A JSON line has no line breaks of its own: any left would be the content's.
            match visible_json(line) {
                Cow::Borrowed(l) if l.contains('\n') => visible(l),
                other => other,
            }
        } else {
            visible(line)
        };
        // One write per event: a line with nothing to escape goes out as it came, newline
        // included (two writes were two system calls for every logged connection).
        match shown {
            Cow::Borrowed(s) if s.len() == line.len() && matches!(text, Cow::Borrowed(_)) => {
                self.inner.write_all(buf)?
            }
            shown => {
                let mut out = shown.into_owned();
                out.push_str(end);
                self.inner.write_all(out.as_bytes())?
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_shown_not_obeyed() {
        assert!(matches!(visible("curl"), Cow::Borrowed("curl")));
        assert_eq!(visible("a\x1b[2Jb"), "a\\x1b[2Jb");
        assert_eq!(
            visible("x\r\n\t\x07\x08\x7f\u{9b}y"),
            "x\\x0d\\x0a\\x09\\x07\\x08\\x7f\\u{9b}y"
        );
        assert_eq!(visible("pay\u{202e}lстеп"), "pay\\u{202e}lстеп");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}', '\u{200b}', '\u{2028}',
            '\u{feff}', '\u{85}',
        ] {
            let s = visible(&format!("a{c}b")).into_owned();
            assert!(!s.contains(c), "{c:?} shown raw");
            assert!(s.starts_with("a\\u{"), "{s}");
        }
        // Nothing in any escaped text reaches the screen as a control.
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!visible(&all).chars().any(hidden));
    }

    #[test]
    fn json_stays_json() {
        let v = serde_json::json!({"comm": "a\u{202e}\u{9b}\u{7f}\x1b\nb", "n": [1, 2]});
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let shown = visible_json(&pretty);
        assert!(!shown.chars().any(|c| c != '\n' && hidden(c)), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn a_log_event_stays_one_line() {
        let mut out = Vec::new();
        let mut w = LogWriter::new(&mut out, false);
        w.write_all(b"INFO conn ended comm=x\rFAKE\nINFO forged\x1b[1A\n")
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "INFO conn ended comm=x\\x0dFAKE\\x0aINFO forged\\x1b[1A\n"
        );
        let mut out = Vec::new();
        LogWriter::new(&mut out, true)
            .write_all("{\"comm\":\"a\u{202e}b\"}\n".as_bytes())
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"comm\":\"a\\u202eb\"}\n"
        );
    }
}
