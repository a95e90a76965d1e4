//! Literal secrets — the credentials the gateway injects — removed from whatever comes back:
//! an upstream that echoes its request (a debug endpoint, an error page quoting headers) must
//! not hand the caller, a record or a log the secret the caller was never to see.
use std::{borrow::Cow, sync::Arc};

use aho_corasick::AhoCorasick;
use http::{HeaderMap, HeaderValue};

const REPLACEMENT: &[u8] = b"[MASKED:credential]";

/// The secrets to look for, compiled once per secret value.
#[derive(Debug)]
pub struct Secrets {
    ac: AhoCorasick,
    longest: usize,
}

impl Secrets {
    /// None when there is nothing to look for.
    pub fn new(values: &[&str]) -> Option<Arc<Self>> {
        let values: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
        let longest = values.iter().map(|v| v.len()).max()?;
        let ac = AhoCorasick::new(&values).ok()?;
        Some(Arc::new(Self { ac, longest }))
    }

    /// `data` without the secrets; borrowed when there were none in it.
    pub fn scrub<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        if self.ac.find(data).is_none() {
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
    }

    /// Copies `data` to `out` with each secret replaced; returns where the copy stopped
    /// (the end of the last match, the rest is the caller's to copy or hold).
    fn replace(&self, data: &[u8], out: &mut Vec<u8>) -> usize {
        let mut at = 0;
        for m in self.ac.find_iter(data) {
            out.extend_from_slice(&data[at..m.start()]);
            out.extend_from_slice(REPLACEMENT);
            at = m.end();
        }
        at
    }
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
            assert!(st.carry.len() < "s3cr3t-value".len());
        }
        st.finish(&mut out);
        assert_eq!(out, b"a [MASKED:credential] b [MASKED:credential] c");
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
    }
}
