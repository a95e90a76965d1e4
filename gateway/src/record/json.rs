//! A record's JSON text, written by hand for the log on the data path.
//!
//! Through serde, every key of every record is a string escaped byte by byte, and so is every
//! value: together over half of the serialising. Here keys are literal bytes, a plain string
//! value is checked and copied whole, and only what may need escaping (or is not a string)
//! goes through `serde_json`. The text parses to what the `Serialize` derive writes, fields
//! in the same order; the tests hold the two to that.
use serde::Serialize;

use super::{Record, RecordedDecision};

impl Record {
    /// Appends this record's JSON to `out`.
    pub(super) fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let mut o = Object::open(out);
        o.str("id", &self.id);
        o.value("time_ms", self.time_ms)?;
        o.str("session", &self.session);
        if let Some(w) = &self.workload {
            o.raw("workload", w.get());
        }
        o.opt("caller", &self.caller)?;
        o.str("destination", &self.destination);
        o.opt_str("service", &self.service);
        o.opt_str("function", &self.function);
        o.str("protocol", &self.protocol);
        o.opt("args", &self.args)?;
        o.key("decision");
        self.decision.write_json(o.out)?;
        o.opt("approval", &self.approval)?;
        o.opt("mcp", &self.mcp)?;
        o.opt("status", &self.status)?;
        if let Some(r) = &self.response {
            o.raw("response", r.get());
        }
        if self.response_truncated {
            o.raw("response_truncated", "true");
        }
        o.value("latency_ms", self.latency_ms)?;
        o.value("bytes_in", self.bytes_in)?;
        o.value("bytes_out", self.bytes_out)?;
        o.close();
        Ok(())
    }
}

impl RecordedDecision {
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let mut o = Object::open(out);
        o.str("action", &self.action);
        o.raw("enforced", if self.enforced { "true" } else { "false" });
        o.opt_str("rule", &self.rule);
        o.opt_str("reason", &self.reason);
        o.opt_str("policy_commit", &self.policy_commit);
        if self.policy_dirty {
            o.raw("policy_dirty", "true");
        }
        o.opt_str("mode", &self.mode);
        o.opt("limit", &self.limit)?;
        o.close();
        Ok(())
    }
}

/// A JSON object being written: `{`, then `"key":value` pairs with commas between. Its
/// methods are inlined into each call site, where the key is a literal: its bytes are then
/// stored in place, not copied by a call to `memcpy` per key (about 19 a record).
struct Object<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Object<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    /// `key` is one of this module's literals: plain ASCII, nothing to escape.
    #[inline(always)]
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    #[inline(always)]
    fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.out.extend_from_slice(json.as_bytes());
    }

    #[inline(always)]
    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        string(self.out, value);
    }

    #[inline(always)]
    fn opt_str<S: AsRef<str>>(&mut self, key: &str, value: &Option<S>) {
        if let Some(v) = value {
            self.str(key, v.as_ref());
        }
    }

    #[inline(always)]
    fn value<T: Serialize>(&mut self, key: &str, value: T) -> Result<(), serde_json::Error> {
        self.key(key);
        write(self.out, &value)
    }

    #[inline(always)]
    fn opt<T: Serialize>(&mut self, key: &str, value: &Option<T>) -> Result<(), serde_json::Error> {
        match value {
            Some(v) => self.value(key, v),
            None => Ok(()),
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// `s` as a JSON string: copied whole when nothing in it needs escaping (names, ids, addresses
/// almost always), else escaped by `serde_json`.
fn string(out: &mut Vec<u8>, s: &str) {
    // A fold rather than `any`: no early exit, so the compiler checks many bytes at once.
    let plain = !s.bytes().fold(false, |esc, b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a str into a Vec cannot fail.
        let _ = write(out, s);
    }
}

/// Appends `v` to `out` as `serde_json` writes it compact, except a NUL, written `\ufffd`
/// (U+FFFD): a fleet database's `jsonb` refuses `\u0000`, and one record it refuses would
/// stop its host's records from being shipped at all. Every value a record's text holds that
/// is not copied as it is goes through here.
pub(super) fn write<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    v: &T,
) -> Result<(), serde_json::Error> {
    v.serialize(&mut serde_json::Serializer::with_formatter(out, NulFree))
}

/// [`serde_json::ser::CompactFormatter`], a NUL written as U+FFFD.
struct NulFree;

impl serde_json::ser::Formatter for NulFree {
    fn write_char_escape<W>(
        &mut self,
        writer: &mut W,
        char_escape: serde_json::ser::CharEscape,
    ) -> std::io::Result<()>
    where
        W: ?Sized + std::io::Write,
    {
        match char_escape {
            serde_json::ser::CharEscape::AsciiControl(0) => writer.write_all(br"\ufffd"),
            other => serde_json::ser::CompactFormatter.write_char_escape(writer, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RawJson;

    #[test]
    fn no_record_text_holds_an_escaped_nul() {
        let mut r = Record::new("conn-\0", "127.0.0.1:1");
        r.args = Some(serde_json::json!({"a\0": ["x\0y"], "n": 1}));
        r.decision.reason = Some("why\0".into());
        r.response = Some(RawJson::string("text\0"));
        let mut out = Vec::new();
        r.write_json(&mut out).expect("json");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(!text.contains(r"\u0000"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(back["args"]["a\u{fffd}"][0], "x\u{fffd}y");
        assert_eq!(back["response"], "text\u{fffd}");
        assert_eq!(back["session"], "conn-\u{fffd}");
    }

    fn both(r: &Record) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
        let mut out = Vec::new();
        r.write_json(&mut out).expect("write_json");
        let ours: serde_json::Value = serde_json::from_slice(&out).expect("our text is JSON");
        let derived = serde_json::to_value(r).expect("derive");
        (ours, derived, out)
    }

    #[test]
    fn a_full_record_reads_back_as_the_derive_writes_it() {
        let mut r = Record::new("sess-1", "10.0.0.1:443");
        r.workload = Some(RawJson::of(&serde_json::json!({"pid": 7, "comm": "curl"})));
        r.caller = Some(serde_json::json!({"subject": "alice", "groups": ["a", "b"]}));
        r.service = Some("pay\"ments".into());
        r.function = Some("refund\n\u{1}é".into());
        r.protocol = "rest".into();
        r.args = Some(serde_json::json!({"id": "42", "amount": 1.5, "tags": [null, true]}));
        r.decision = RecordedDecision {
            action: "deny".into(),
            enforced: true,
            rule: Some("no-refunds".into()),
            reason: Some("back\\slash \t tab".into()),
            policy_commit: Some("abc123".into()),
            policy_dirty: true,
            mode: Some("enforce".into()),
            limit: Some(serde_json::json!({"name": "per-minute", "limit": 10})),
        };
        r.approval = Some(serde_json::json!({"approver": "bob"}));
        r.status = Some(403);
        r.response = Some(RawJson::text(r#"{"error": "denied", "n": [1, 2.5e3]}"#));
        r.response_truncated = true;
        r.latency_ms = 1.000_000_1;
        r.bytes_in = 12;
        r.bytes_out = u64::MAX;
        let (ours, derived, text) = both(&r);
        assert_eq!(ours, derived);
        let back: Record = serde_json::from_slice(&text).expect("reads back as a Record");
        assert_eq!(back, r);
    }

    #[test]
    fn a_bare_record_leaves_out_what_the_derive_leaves_out() {
        let mut r = Record::new("", "");
        r.latency_ms = f64::NAN;
        let (ours, derived, text) = both(&r);
        assert_eq!(ours, derived);
        for absent in ["workload", "caller", "service", "response", "policy_dirty"] {
            let needle = format!("\"{absent}\"");
            assert!(
                !String::from_utf8_lossy(&text).contains(&needle),
                "{absent} written"
            );
        }
    }

    #[test]
    fn strings_are_escaped_only_when_they_must_be() {
        for s in [
            "plain",
            "",
            "quote\"",
            "back\\",
            "nl\n",
            "\u{7f}del",
            "ünï",
            "\u{0}",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            let back: String = serde_json::from_slice(&out).expect("JSON string");
            assert_eq!(back, s.replace('\0', "\u{fffd}"));
        }
    }
}
