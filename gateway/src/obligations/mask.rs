//! The mask stage: sensitive values in bodies, records and log lines are replaced before they
//! leave the gateway or reach a disk.
//!
//! A [`MaskRules`] is compiled once per mask list (built-in detectors, JSON field paths, custom
//! regexes). Bodies are masked as they stream through a [`BodyMasker`], chunk by chunk with
//! bounded memory: a value split across two chunks is held back until it can be judged.
//! JSON is masked structurally (field paths) and textually (detectors inside strings and
//! numbers), keeping the document valid; other text textually; binary passes unchanged.
pub mod detect;
mod json;
pub mod mcp;
pub mod scrub;
mod unescape;

use std::{borrow::Cow, fmt::Write as _, path::Path, sync::Arc};

use hmac::{Hmac, Mac};
use regex::bytes::Regex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use detect::{Detector, Hit, Kind};
pub use json::JsonMasker;

use crate::util::jsonpath::JsonPath;

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("unknown detector {0:?} (known: {known})", known = Detector::ALL.map(Detector::name).join(", "))]
    UnknownDetector(String),
    #[error(transparent)]
    Path(#[from] crate::util::jsonpath::PathError),
    #[error("invalid regex {regex:?}: {source}")]
    Regex {
        regex: String,
        #[source]
        source: regex::Error,
    },
    #[error("field path `$` would mask the whole body; deny the call instead")]
    WholeBody,
    #[error("mask key {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A header, parameter or field name whose value is a credential or a session (`Cookie`,
/// `X-Api-Key`, `password`, `access_token`): such values are never recorded.
pub fn is_credential_name(name: &str) -> bool {
    // Short names that are words inside other names (`spinner`, `author`, `upwd`): whole only.
    // `sig` is an Azure SAS's and a signed URL's signature.
    const EXACT: [&str; 15] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "auth",
        "pwd",
        "pin",
        "otp",
        "totp",
        "mfa",
        "pass",
        "sig",
        "sas",
        "jwt",
        "bearer",
    ];
    // `signature` also names AWS's `X-Amz-Signature`, `assertion` OAuth's
    // `client_assertion`.
    const PARTS: [&str; 21] = [
        "signature",
        "assertion",
        "hmac",
        "passcode",
        "api-key",
        "apikey",
        "api_key",
        "token",
        "secret",
        "password",
        "passwd",
        "session",
        "credential",
        "private-key",
        "private_key",
        "privatekey",
        "priv_key",
        "privkey",
        "passphrase",
        "cvv",
        "cvc",
    ];
    let lower;
    let name = if name.bytes().any(|c| c.is_ascii_uppercase()) {
        lower = name.to_ascii_lowercase();
        &lower
    } else {
        name
    };
    EXACT.contains(&name)
        || name.ends_with("-auth")
        || name.ends_with("_auth")
        || PARTS.iter().any(|p| name.contains(p))
}

/// Values under a credential's name (a `cookie` header in gRPC metadata, an `api_key` query
/// parameter, a `password` field) are replaced: detectors cannot tell an opaque token from
/// any other string, and nothing kept at rest (a record, a held call) may hold one.
pub fn drop_credentials(v: &mut serde_json::Value) {
    drop_credentials_below(v, 0);
}

/// As deep as serde_json parses (its recursion limit), so no parsed value has a level below
/// this bound; it only stops a hand-built value from recursing without end.
const CREDENTIAL_DEPTH: usize = 128;

fn drop_credentials_below(v: &mut serde_json::Value, depth: usize) {
    use serde_json::Value;
    if depth > CREDENTIAL_DEPTH {
        return;
    }
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if is_credential_name(k) && !x.is_null() {
                    *x = Value::String("[MASKED:credential]".into());
                } else {
                    drop_credentials_below(x, depth + 1);
                }
            }
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| drop_credentials_below(x, depth + 1)),
        _ => {}
    }
}

/// How a masked value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// `[MASKED:card_number]`
    #[default]
    Redact,
    /// `************1111`: the last four characters stay (e-mail keeps its domain).
    Partial,
    /// `[MASKED:email:3f9a…]`: an HMAC under the gateway's key, so equal values stay
    /// correlatable without being revealed.
    Hash,
}

impl Style {
    fn default_for(d: Detector) -> Style {
        match d {
            Detector::CardNumber => Style::Partial,
            _ => Style::Redact,
        }
    }
}

/// The gateway's secret for [`Style::Hash`]. Kept in the state directory, never in policy.
#[derive(Clone)]
pub struct MaskKey(Arc<[u8; 32]>);

impl std::fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskKey(..)")
    }
}

impl MaskKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(Arc::new(b))
    }

    /// Reads the key at `path`, creating it (0600, random) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, MaskError> {
        let err = |source| MaskError::Key {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(b) if b.len() == 32 => {
                let mut k = [0; 32];
                k.copy_from_slice(&b);
                return Ok(Self::from_bytes(k));
            }
            Ok(_) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "expected 32 bytes",
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        crate::util::fs::write_atomic_mode(path, &k, 0o600).map_err(err)?;
        Ok(Self::from_bytes(k))
    }

    /// A keyed digest of `value` (hex), for telling equal values apart without keeping them.
    pub fn fingerprint(&self, label: &str, value: &[u8]) -> String {
        self.tag(label, value)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn tag(&self, label: &str, value: &[u8]) -> [u8; 8] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0[..]).expect("HMAC takes any key");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        let full = mac.finalize().into_bytes();
        let mut out = [0; 8];
        out.copy_from_slice(&full[..8]);
        out
    }
}

/// One compiled mask list.
#[derive(Debug, Default)]
pub struct MaskRules {
    scanner: detect::Scanner,
    /// The same detectors and regexes together with every other built-in detector, for an
    /// answer that is also recorded: one scan finds what the client's copy masks and what the
    /// record's masks besides ([`AnswerSpans`]).
    split: detect::Scanner,
    styles: Vec<(Detector, Style)>,
    custom: Vec<(String, Style)>,
    fields: Vec<(JsonPath, Style)>,
    /// The key names field paths compare, for the streaming JSON masker.
    field_keys: json::FieldKeys,
}

impl MaskRules {
    pub fn compile(specs: &[MaskSpec]) -> Result<Self, MaskError> {
        let mut styles: Vec<(Detector, Style)> = Vec::new();
        let mut regexes = Vec::new();
        let mut custom = Vec::new();
        let mut fields = Vec::new();
        for spec in specs {
            match spec {
                MaskSpec::Detector(name) => {
                    let d = Detector::parse(name)
                        .ok_or_else(|| MaskError::UnknownDetector(name.clone()))?;
                    styles.push((d, Style::default_for(d)));
                }
                MaskSpec::Styled { detector, style } => {
                    let d = Detector::parse(detector)
                        .ok_or_else(|| MaskError::UnknownDetector(detector.clone()))?;
                    styles.push((d, *style));
                }
                MaskSpec::Field { field, style } => {
                    let path = JsonPath::parse(field)?;
                    if path.is_root() {
                        return Err(MaskError::WholeBody);
                    }
                    // An upstream may answer a list of what the path names one of
                    // (`[{"customer": …}]` for `$.customer.ssn`): the value is masked there too.
                    let style = style.unwrap_or_default();
                    if let Some(each) = path.in_each_element() {
                        fields.push((each, style));
                    }
                    fields.push((path, style));
                }
                MaskSpec::Regex { regex, name, style } => {
                    let re = Regex::new(regex).map_err(|source| MaskError::Regex {
                        regex: regex.clone(),
                        source,
                    })?;
                    regexes.push(re);
                    custom.push((
                        name.clone().unwrap_or_else(|| "custom".into()),
                        style.unwrap_or_default(),
                    ));
                }
            }
        }
        // A later entry for the same detector restyles it.
        styles.reverse();
        styles.dedup_by_key(|s| s.0);
        let detectors: Vec<Detector> = styles.iter().map(|s| s.0).collect();
        let field_keys = json::FieldKeys::new(fields.iter().map(|f| &f.0));
        Ok(Self {
            field_keys,
            split: detect::Scanner::split(&detectors, regexes.clone()),
            scanner: detect::Scanner::new(&detectors, regexes),
            styles,
            custom,
            fields,
        })
    }

    /// Every built-in detector, default styles: what log lines and records get when the
    /// policy says nothing.
    pub fn all_detectors() -> Self {
        let specs: Vec<MaskSpec> = Detector::ALL
            .iter()
            .map(|d| MaskSpec::Detector(d.name().into()))
            .collect();
        Self::compile(&specs).expect("built-in detectors compile")
    }

    pub fn is_empty(&self) -> bool {
        self.scanner.is_empty() && self.fields.is_empty()
    }

    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    fn label_style(&self, kind: Kind) -> (&str, Style) {
        match kind {
            Kind::Detector(d) => (
                d.name(),
                self.styles
                    .iter()
                    .find(|s| s.0 == d)
                    .map_or(Style::Redact, |s| s.1),
            ),
            Kind::Custom(i) => (&self.custom[i].0, self.custom[i].1),
        }
    }

    fn field_style<'s>(
        &self,
        len: usize,
        step: &dyn Fn(usize) -> crate::util::jsonpath::Step<'s>,
    ) -> Option<Style> {
        self.fields
            .iter()
            .find(|(p, _)| p.matches_with(len, step))
            .map(|(_, s)| *s)
    }

    /// Whether [`MaskRules::mask_str`] could change any of `parts`: `false` only if it would
    /// change none (one scan over them all; see [`detect::Scanner::finds_in_any`]).
    pub fn finds_in_any(&self, parts: &[&str]) -> bool {
        self.scanner.finds_in_any(parts)
    }

    /// Whether the detectors find anything in `text` read as a JSON reader would read its
    /// escapes: `\u0034` as `4`, `\/` as `/`, and every other escape (`\n`, `\u000a`,
    /// `\u0028`, a surrogate pair) as the character it stands for, its letters no longer
    /// before what follows: the masker's own reading of a JSON body ([`unescape`]). For a text
    /// kept as it is (an answer that is not JSON to the record) that a lenient reader could
    /// still parse as JSON and decode.
    pub fn finds_through_escapes(&self, text: &str) -> bool {
        let mut u = unescape::Unescaper::default();
        let mut scratch = Vec::new();
        let mut decoded = u.apply(text.as_bytes(), &mut scratch).to_vec();
        decoded.extend(u.finish());
        let mut view = unescape::View::default();
        view.build(&decoded);
        let mut hits = Vec::new();
        self.scanner.scan(view.read(&decoded), &mut hits);
        !hits.is_empty()
    }

    /// Masks a whole text at once (log lines, record fields).
    pub fn mask_str<'a>(&self, key: &MaskKey, s: &'a str) -> Cow<'a, str> {
        let mut hits = Vec::new();
        self.scanner.scan(s.as_bytes(), &mut hits);
        if hits.is_empty() {
            return Cow::Borrowed(s);
        }
        let mut out = Vec::with_capacity(s.len());
        let mut pos = 0;
        for h in &hits {
            out.extend_from_slice(&s.as_bytes()[pos..h.start]);
            self.render(key, h.kind, &s.as_bytes()[h.start..h.end], &mut out);
            pos = h.end;
        }
        out.extend_from_slice(&s.as_bytes()[pos..]);
        // Replacements are ASCII and cut only at detector boundaries, which are ASCII.
        Cow::Owned(String::from_utf8_lossy(&out).into_owned())
    }

    /// `text` (an answer as the client got it) with the values of `spans` masked by these
    /// rules: what a record keeps of an answer whose masker found them ([`AnswerSpans`]).
    pub fn mask_spans<'a>(
        &self,
        key: &MaskKey,
        text: &'a [u8],
        spans: &AnswerSpans,
    ) -> Cow<'a, [u8]> {
        if spans.spans.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len());
        let mut pos = 0;
        for sp in &spans.spans {
            let (start, end) = (sp.start.max(pos).min(text.len()), sp.end.min(text.len()));
            if end <= start {
                continue;
            }
            out.extend_from_slice(&text[pos..start]);
            let h = Hit {
                start,
                end,
                kind: Kind::Detector(sp.kind),
                open: false,
                cut: sp.cut,
                rest: sp.rest,
            };
            // As the JSON masker wrote it: a long value is not made a string (see there).
            let number = sp.number && !h.long();
            if number {
                out.push(b'"');
            }
            self.render_hit(key, &h, &text[start..end], &mut out);
            if number {
                out.push(b'"');
            }
            pos = end;
        }
        out.extend_from_slice(&text[pos..]);
        Cow::Owned(out)
    }

    /// Masks a JSON value in place: field paths first, then detectors in every string (and
    /// card numbers written as numbers). Returns how many values were masked.
    ///
    /// A value that already is a field mask is left as it is: two paths that select it (an
    /// MCP result masked as a list and element by element, `$.a` beside `$[*].a`) mask it
    /// once, not the `hash` style's hash of its own mask.
    pub fn mask_value(&self, key: &MaskKey, v: &mut serde_json::Value) -> usize {
        let mut n = 0;
        for (path, style) in &self.fields {
            path.visit_mut(v, &mut |x| {
                if matches!(&*x, serde_json::Value::String(s) if is_field_mask(s)) {
                    return;
                }
                let raw = match &*x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let mut out = Vec::new();
                render_value(key, "field", *style, raw.as_bytes(), &mut out);
                *x = serde_json::Value::String(String::from_utf8_lossy(&out).into_owned());
                n += 1;
            });
        }
        if !self.scanner.is_empty() {
            self.mask_strings(key, v, &mut n, 0);
        }
        n
    }

    fn mask_strings(&self, key: &MaskKey, v: &mut serde_json::Value, n: &mut usize, depth: usize) {
        use serde_json::Value;
        if depth > 128 {
            return;
        }
        match v {
            // Nothing a detector finds is shorter than `a@b.cd`.
            Value::String(s) if s.len() >= 6 => {
                if let Cow::Owned(m) = self.mask_str(key, s) {
                    *s = m;
                    *n += 1;
                }
            }
            // Only a number of 13 digits or more can be a card number: written as an integer,
            // negative, or with a fraction or an exponent (`4111111111111111.0`).
            Value::Number(num)
                if num.as_u64().is_some_and(|u| u >= 1_000_000_000_000)
                    || num.as_i64().is_some_and(|i| i <= -1_000_000_000_000)
                    || (num.is_f64() && num.as_f64().is_some_and(|f| f.abs() >= 1e12)) =>
            {
                let text = num.to_string();
                if let Cow::Owned(m) = self.mask_str(key, &text) {
                    *v = Value::String(m);
                    *n += 1;
                }
            }
            Value::Array(a) => a
                .iter_mut()
                .for_each(|x| self.mask_strings(key, x, n, depth + 1)),
            Value::Object(o) => {
                self.mask_keys(key, o, n);
                o.values_mut()
                    .for_each(|x| self.mask_strings(key, x, n, depth + 1));
            }
            _ => {}
        }
    }

    /// Keys are text too, chosen by whoever wrote the object (a query's names, a body's
    /// fields, a tool's schema): a key a detector finds something in is replaced by its
    /// masked text, numbered (`#2`, …) if an entry has that name already, so that no value is
    /// lost. Almost always clean: one scan over all the keys.
    fn mask_keys(
        &self,
        key: &MaskKey,
        o: &mut serde_json::Map<String, serde_json::Value>,
        n: &mut usize,
    ) {
        let keys: smallvec::SmallVec<[&str; 16]> = o.keys().map(String::as_str).collect();
        let hit = self.scanner.finds_in_any(&keys);
        drop(keys);
        if !hit {
            return;
        }
        // The next number to try for each name masked keys took: many keys masking to one text
        // (`[MASKED:email]`) are numbered in one pass, not each from `#2` again.
        let mut next: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (k, v) in std::mem::take(o) {
            let k = match self.mask_str(key, &k) {
                Cow::Owned(m) => {
                    *n += 1;
                    m
                }
                Cow::Borrowed(_) => k,
            };
            let name = if o.contains_key(&k) {
                let i = next.entry(k.clone()).or_insert(2);
                loop {
                    let name = format!("{k}#{i}");
                    *i += 1;
                    if !o.contains_key(&name) {
                        break name;
                    }
                }
            } else {
                k
            };
            o.insert(name, v);
        }
    }

    /// Renders a hit's value.
    ///
    /// A value longer than a streaming masker holds back ([`detect::MAX_HELD_HIT`]) may go
    /// out in pieces ([`Hit::cut`], [`Hit::rest`]) cut wherever the chunks happened to end.
    /// So that the client gets the same bytes however the answer was cut, such a value is
    /// rendered the same way whole or in pieces, showing none of itself: `partial` writes a
    /// star per byte (the pieces' stars add up to the whole's), every other style one
    /// `[MASKED:…]`, with the value's first piece.
    fn render_hit(&self, key: &MaskKey, h: &Hit, value: &[u8], out: &mut Vec<u8>) {
        if !h.long() {
            return self.render(key, h.kind, value, out);
        }
        let (label, style) = self.label_style(h.kind);
        match style {
            Style::Partial => out.extend(std::iter::repeat_n(b'*', value.len())),
            _ if h.rest => {}
            _ => render_value(key, label, Style::Redact, value, out),
        }
    }

    fn render(&self, key: &MaskKey, kind: Kind, value: &[u8], out: &mut Vec<u8>) {
        let (label, style) = self.label_style(kind);
        match kind {
            Kind::Detector(Detector::CardNumber) if style != Style::Redact => {
                // Separators do not make a different card. Overlapping readings masked as one
                // may hold more than 19 digits: the last ones are what `partial` shows.
                let all = value.iter().filter(|c| c.is_ascii_digit()).count();
                let mut digits = [0u8; 19];
                let mut n = 0;
                for &c in value
                    .iter()
                    .filter(|c| c.is_ascii_digit())
                    .skip(all.saturating_sub(19))
                {
                    digits[n] = c;
                    n += 1;
                }
                render_value(key, label, style, &digits[..n], out)
            }
            Kind::Detector(Detector::Email) if style == Style::Partial => {
                // `@`, or `%40` in a percent-encoded address: the domain is kept.
                let at = memchr::memchr(b'@', value)
                    .or_else(|| memchr::memmem::find(value, b"%40"))
                    .unwrap_or(0);
                out.extend_from_slice(b"***");
                out.extend_from_slice(&value[at..]);
            }
            _ => render_value(key, label, style, value, out),
        }
    }
}

/// `s` is what [`render_value`] writes for a field in the `redact` or `hash` style: nothing
/// of a value but, for `hash`, its tag. (`partial` gives its own output again.)
fn is_field_mask(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("[MASKED:field")
        .and_then(|r| r.strip_suffix(']'))
    else {
        return false;
    };
    rest.is_empty()
        || rest.strip_prefix(':').is_some_and(|hex| {
            hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Writes the replacement for `value`. Replacements never contain `"` or `\`, so they are
/// valid inside a JSON string.
fn render_value(key: &MaskKey, label: &str, style: Style, value: &[u8], out: &mut Vec<u8>) {
    match style {
        Style::Redact => {
            out.extend_from_slice(b"[MASKED:");
            out.extend_from_slice(label.as_bytes());
            out.push(b']');
        }
        Style::Partial => {
            let keep = if value.len() >= 8 { 4 } else { 0 };
            let tail = &value[value.len() - keep..];
            let stars = value.len() - keep;
            out.extend(std::iter::repeat_n(b'*', stars.max(4)));
            for &c in tail {
                out.push(if c == b'"' || c == b'\\' || c < 0x20 {
                    b'*'
                } else {
                    c
                });
            }
        }
        Style::Hash => {
            let mut s = String::with_capacity(40);
            s.push_str("[MASKED:");
            s.push_str(label);
            s.push(':');
            for b in key.tag(label, value) {
                let _ = write!(s, "{b:02x}");
            }
            s.push(']');
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Masks header fields — a response's head and trailers — with a mask list. Detectors run
/// over each value (field paths name JSON, not headers) but a head's length and transfer
/// coding, which frame the message and which the gateway's readers have checked are a number
/// and a list of codings; a value whose masked form is not a valid header value is replaced
/// whole. A field whose *name* holds a value (`X-4111111111111111: 1`) is removed: a masked
/// name would not be a name.
#[derive(Debug, Clone)]
pub struct HeaderMasker {
    rules: Arc<MaskRules>,
    key: MaskKey,
}

/// The fields of a head that frame the message: a number and a list of codings, read and
/// checked before the head is passed on (a value there would have failed that reading).
/// Every other field is masked, `Content-Type`'s parameters, `Date` and gRPC's status fields
/// included: an upstream put a card number and an address in those, and they went out.
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

/// No name shorter than this holds a built-in detector's value (the shortest, an SSN, is 11
/// bytes; an e-mail address's `@` cannot stand in a name) unless it has a digit: names are
/// checked only then (every name when the list has a regex of its own), which keeps the
/// usual heads (`content-type`, `date`, `server`) from being scanned twice.
const NAME_SCAN_FROM: usize = 20;

impl HeaderMasker {
    /// None when the list has no detector to run.
    pub fn new(rules: Arc<MaskRules>, key: MaskKey) -> Option<Self> {
        (!rules.scanner.is_empty()).then_some(Self { rules, key })
    }

    /// Masks every field of a head but the framing ones; returns how many were masked or
    /// removed.
    pub fn mask(&self, h: &mut http::HeaderMap) -> usize {
        self.mask_fields(h, &FRAMING)
    }

    /// Masks every field of trailers, which frame nothing.
    pub fn mask_trailers(&self, h: &mut http::HeaderMap) -> usize {
        self.mask_fields(h, &[])
    }

    fn mask_fields(&self, h: &mut http::HeaderMap, framing: &[&str]) -> usize {
        let mut n = 0;
        let mut named: Vec<http::HeaderName> = Vec::new();
        for (name, value) in h.iter_mut() {
            let name_text = name.as_str();
            // Names arrive in lower case; a value that is upper case where it is itself (an
            // AWS key's `AKIA`, an IBAN's country) is looked for in the upper-cased name too.
            let holds_value = |n: &str| matches!(self.rules.mask_str(&self.key, n), Cow::Owned(_));
            if (!self.rules.custom.is_empty()
                || name_text.len() >= NAME_SCAN_FROM
                || name_text.bytes().any(|b| b.is_ascii_digit()))
                && (holds_value(name_text) || holds_value(&name_text.to_ascii_uppercase()))
                && !named.contains(name)
            {
                named.push(name.clone());
                continue;
            }
            if framing.contains(&name_text) {
                continue;
            }
            let text = String::from_utf8_lossy(value.as_bytes());
            if let Cow::Owned(m) = self.rules.mask_str(&self.key, &text) {
                *value = http::HeaderValue::from_str(&m)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("[MASKED]"));
                n += 1;
            } else if matches!(text, Cow::Owned(_)) {
                // Not UTF-8: the detectors saw replacement characters where bytes were, so a
                // value spelled around them cannot be judged. Replaced whole.
                *value = http::HeaderValue::from_static("[MASKED]");
                n += 1;
            }
        }
        for name in named {
            h.remove(name);
            n += 1;
        }
        n
    }
}

/// What a record must mask in an answer beyond what the client's copy had masked: the values
/// of the built-in detectors the policy does not mask, found by the same scan that masked the
/// policy's (see [`BodyMasker::recorded`]), at their places in the bytes the client got. The
/// record's copy is those bytes with these masked ([`MaskRules::mask_spans`]): nothing is
/// parsed or scanned again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnswerSpans {
    spans: Vec<Span>,
}

impl AnswerSpans {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// One value at `start..end` of the answer's bytes (from its first byte).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    start: usize,
    end: usize,
    kind: Detector,
    /// A piece of a longer value ([`Hit::cut`]).
    cut: bool,
    /// The rest of a value whose first piece came before ([`Hit::rest`]).
    rest: bool,
    /// A card number written as a JSON number: it becomes a string.
    number: bool,
}

/// Counts of what a masker did, for records and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MaskStats {
    pub masked: u64,
    /// The body claimed to be JSON but was not; it was masked as text from that point on.
    pub json_fallback: bool,
}

/// Below this many held bytes, every chunk is masked as soon as it arrives.
const DEFER_FROM: usize = 4096;

/// A chunk of at least 4 × this many bytes, after at most this many held back, is masked
/// without copying it behind them: its first `BRIDGE` bytes are, which almost always end the
/// value that was cut (a JSON token, a word), and the masker goes on over the rest in place.
/// Each byte of a large answer was copied once more when every chunk was appended to what
/// was held (4.5 % of the gateway's time on 1 MiB JSON answers).
const BRIDGE: usize = 256;

/// More than the longest escape a JSON view reads as one (`\u00b0`, six bytes): a piece with
/// no backslash this close before its end ends between escapes.
const ESCAPE_MAX: usize = 16;

/// What a streaming masker has not consumed yet: held back (a value may still be arriving)
/// and, past [`DEFER_FROM`] held bytes, chunks that only make the value longer. Each chunk
/// scans what is held again; deferring such chunks until they add up to as much as is held
/// keeps a long value arriving in small chunks (a 16 KiB run of token bytes, 100 bytes at a
/// time) from being scanned once per chunk.
#[derive(Debug, Default)]
struct Carry {
    buf: Vec<u8>,
    /// Bytes at the end of `buf` not yet offered to `process`.
    fresh: usize,
}

impl Carry {
    /// Runs `process` over what was held back followed by `chunk` and keeps what it did not
    /// consume. The common case (nothing held) copies nothing first; nor, mostly, does the next
    /// most common, a short value cut by the chunk's start (see [`BRIDGE`]).
    fn feed(&mut self, mut chunk: &[u8], mut process: impl FnMut(&[u8]) -> usize) {
        if self.buf.is_empty() {
            let used = process(chunk);
            self.buf.extend_from_slice(&chunk[used..]);
            return;
        }
        let mut held = self.buf.len() - self.fresh;
        if self.fresh == 0
            && held <= BRIDGE
            && chunk.len() >= 4 * BRIDGE
            && memchr::memchr(b'\\', &chunk[BRIDGE - ESCAPE_MAX..BRIDGE]).is_none()
        {
            // As if the chunk had come in two: its first BRIDGE bytes behind what is held,
            // then the rest where it is. Masking does not depend on where chunks end; the
            // first piece ends where no escape can be under way, so its view reads each of its
            // escapes (`\u00b0`) as the whole chunk's view does.
            self.buf.extend_from_slice(&chunk[..BRIDGE]);
            let used = process(&self.buf);
            if used >= held {
                let rest = &chunk[used - held..];
                self.buf.clear();
                let used = process(rest);
                self.buf.extend_from_slice(&rest[used..]);
                return;
            }
            // Still a value arriving: the rest goes behind it, as a second chunk would.
            self.buf.drain(..used);
            chunk = &chunk[BRIDGE..];
            held = self.buf.len();
        }
        self.buf.extend_from_slice(chunk);
        if held >= DEFER_FROM
            && self.fresh + chunk.len() < held
            && chunk.iter().all(|&c| detect::value_byte(c))
        {
            self.fresh += chunk.len();
            return;
        }
        let used = process(&self.buf);
        self.buf.drain(..used);
        self.fresh = 0;
    }

    fn take(&mut self) -> Vec<u8> {
        self.fresh = 0;
        std::mem::take(&mut self.buf)
    }

    fn len(&self) -> usize {
        self.buf.len()
    }
}

/// Streams text through the detectors; holds back only what may be the start of a value.
#[derive(Debug)]
pub struct TextMasker {
    rules: Arc<MaskRules>,
    key: MaskKey,
    carry: Carry,
    hits: Vec<Hit>,
    /// Inside a private key whose END line has not come: swallow until it does.
    in_pem: bool,
    behind: detect::Behind,
    pub stats: MaskStats,
    /// JSON read as text ([`TextMasker::json`]): its escapes decoded and read as the JSON
    /// masker reads them.
    json: Option<Box<JsonText>>,
}

#[derive(Debug, Default)]
struct JsonText {
    unescape: unescape::Unescaper,
    unescaped: Vec<u8>,
    view: unescape::View,
}

impl TextMasker {
    pub fn new(rules: Arc<MaskRules>, key: MaskKey) -> Self {
        Self {
            rules,
            key,
            carry: Carry::default(),
            hits: Vec::new(),
            in_pem: false,
            behind: detect::Behind::default(),
            stats: MaskStats::default(),
            json: None,
        }
    }

    /// A text masker for JSON it cannot follow (a body whose nesting broke, an MCP message
    /// too long to hold): escapes cannot hide a value from it either.
    pub fn json(rules: Arc<MaskRules>, key: MaskKey) -> Self {
        Self {
            json: Some(Box::default()),
            behind: detect::Behind::json(),
            ..Self::new(rules, key)
        }
    }

    /// Masks `chunk`, appending what can be released to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(j) = &mut self.json else {
            return self.feed(chunk, out);
        };
        let mut unescape = std::mem::take(&mut j.unescape);
        let mut scratch = std::mem::take(&mut j.unescaped);
        self.feed(unescape.apply(chunk, &mut scratch), out);
        if let Some(j) = &mut self.json {
            j.unescape = unescape;
            j.unescaped = scratch;
        }
    }

    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut carry = std::mem::take(&mut self.carry);
        carry.feed(chunk, |buf| self.process(buf, false, out));
        self.carry = carry;
    }

    /// The body ended: release everything held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(j) = &mut self.json {
            let held = j.unescape.finish();
            self.feed(&held, out);
        }
        let buf = self.carry.take();
        self.process(&buf, true, out);
        self.in_pem = false;
    }

    /// Bytes held back right now.
    pub fn pending(&self) -> usize {
        self.carry.len()
    }

    /// Bytes the detectors have been run over so far (see [`detect::Behind::scanned`]).
    pub fn scanned(&self) -> u64 {
        self.behind.scanned()
    }

    /// Masks `buf` and returns how many bytes of it were consumed.
    fn process(&mut self, buf: &[u8], eof: bool, out: &mut Vec<u8>) -> usize {
        let mut start = 0;
        if self.in_pem {
            // JSON read as text: the key ends with its string, at the first quote (as
            // `detect::pem` reads it), if that comes before an END line.
            let quote = self
                .json
                .as_ref()
                .and_then(|_| memchr::memchr(b'"', buf))
                .filter(|&q| memchr::memmem::find(&buf[..q], b"-----END ").is_none());
            if let Some(q) = quote {
                start = q;
                self.in_pem = false;
            }
        }
        if self.in_pem {
            match memchr::memmem::find(buf, b"-----END ") {
                // Where the END line says, as for a key held whole (an END line is short:
                // what is held for it is bounded).
                Some(e) => match detect::pem_end_line(buf, e + 9) {
                    Some(end) => {
                        start = end;
                        self.in_pem = false;
                    }
                    None if eof => return buf.len(),
                    None => return e,
                },
                // Keep a few bytes in case the END marker is split.
                None if eof => return buf.len(),
                None => return buf.len().saturating_sub(8),
            }
        }
        let rest = &buf[start..];
        // JSON read as text: escapes read as what they stand for (see `unescape::View`).
        let view = match &mut self.json {
            Some(j) => {
                let mut view = std::mem::take(&mut j.view);
                view.build(rest);
                view
            }
            None => unescape::View::default(),
        };
        let seen = view.read(rest);
        let safe = if eof {
            rest.len()
        } else {
            view.start_of(detect::pending_from(&self.rules.scanner, seen))
        };
        self.hits.clear();
        if start > 0 {
            self.behind.clear();
        }
        self.behind.scan(&self.rules.scanner, seen, &mut self.hits);
        view.widen_hits(&mut self.hits);
        let cut = detect::cut_long_hit(&mut self.hits, safe);
        let mut pos = 0;
        let mut end = safe;
        for h in &self.hits {
            if h.open {
                if eof || rest.len() - h.start >= detect::MAX_PEM {
                    out.extend_from_slice(&rest[pos..h.start]);
                    self.rules.render(&self.key, h.kind, b"", out);
                    self.stats.masked += 1;
                    self.in_pem = true;
                    if let Some(j) = &mut self.json {
                        j.view = view;
                    }
                    // Swallowed from its BEGIN line on; what follows its END line (in JSON,
                    // its string's end) in this same piece is read as anything else.
                    let from = start + h.start + 1;
                    return from + self.process(&buf[from..], eof, out);
                }
                end = end.min(h.start);
                break;
            }
            if h.end > end {
                end = end.min(h.start);
                break;
            }
            out.extend_from_slice(&rest[pos..h.start]);
            self.rules
                .render_hit(&self.key, h, &rest[h.start..h.end], out);
            self.stats.masked += 1;
            pos = h.end;
        }
        let end = end.max(pos);
        out.extend_from_slice(&rest[pos..end]);
        self.behind.keep(seen, end, cut);
        if let Some(j) = &mut self.json {
            j.view = view;
        }
        start + end
    }
}

/// What kind of body a masker is looking at, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Text,
    /// Not text the masker can read: `application/octet-stream`, `multipart/*` (its parts
    /// may be anything, and `multipart/byteranges` cuts a document anywhere), gRPC messages,
    /// images, and any type not known to be text.
    Binary,
}

impl BodyKind {
    pub fn from_content_type(ct: Option<&str>) -> Self {
        let Some(ct) = ct else {
            return BodyKind::Text;
        };
        // Compared in place, case-insensitively: this runs for every response.
        let mime = memchr::memchr(b';', ct.as_bytes())
            .map_or(ct, |end| &ct[..end])
            .trim()
            .as_bytes();
        let is = |m: &str| mime.eq_ignore_ascii_case(m.as_bytes());
        let starts = |p: &str| {
            mime.get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
        };
        let ends = |s: &str| {
            (mime.len().checked_sub(s.len()))
                .is_some_and(|at| mime[at..].eq_ignore_ascii_case(s.as_bytes()))
        };
        // JSON, JSON Lines and JSON text sequences: the JSON masker takes one value after
        // another.
        let json_lines = [
            "application/x-ndjson",
            "application/jsonl",
            "application/jsonlines",
            "application/x-jsonlines",
            "application/json-seq",
        ];
        // Text under an `application/` name: read as text, whatever its syntax.
        let text = [
            "application/xml",
            "application/x-www-form-urlencoded",
            "application/javascript",
            "application/ecmascript",
            "application/csv",
            "application/yaml",
            "application/x-yaml",
            "application/toml",
            "application/sql",
            "application/graphql",
            "application/x-sh",
        ];
        if is("application/json")
            || ends("+json")
            || is("text/json")
            || is("text/x-json")
            || json_lines.iter().any(|m| is(m))
        {
            BodyKind::Json
        } else if starts("text/")
            || ends("+xml")
            || ends("+yaml")
            || ends("+csv")
            || text.iter().any(|m| is(m))
        {
            BodyKind::Text
        } else {
            BodyKind::Binary
        }
    }
}

/// Why a response body cannot be masked as it streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmaskable {
    /// A content or transfer coding other than `identity`/`chunked`: the bytes are not the
    /// text (gzip, br, …).
    Encoded,
    /// The head says two things about the body (two `Content-Type` fields, a list of types):
    /// the masker would read it one way and the client perhaps the other.
    Ambiguous,
    /// A type that is not text ([`BodyKind::Binary`]).
    Binary,
    /// `206 Partial Content`: a piece of a document, cut where a value may be.
    Partial,
    /// Text in a character set other than UTF-8 or ASCII (UTF-16, EBCDIC): the detectors and
    /// the credential scrubber read bytes as ASCII spells them.
    Charset,
    /// Text that is not JSON where policy masks JSON fields: XML, CSV or no type at all has
    /// the same values under no field path (a client may ask for it: `Accept`, `?format=`).
    NotJson,
    /// A body labelled as text that holds bytes no text has ([`not_text`]): UTF-16 or UTF-32
    /// under a UTF-8 label (or none), compressed data under a text type.
    NotText,
}

impl Unmaskable {
    pub fn reason(self) -> &'static str {
        match self {
            Unmaskable::Encoded => {
                "the upstream encoded (compressed) a response that policy says to mask"
            }
            Unmaskable::Ambiguous => {
                "the upstream's response head is ambiguous about its body's type, encoding or length"
            }
            Unmaskable::Binary => {
                "the upstream answered with a body that is not text (binary, multipart, gRPC or \
                 an unknown type), which policy says to mask"
            }
            Unmaskable::Partial => {
                "the upstream answered with part of a document (206), which policy says to mask"
            }
            Unmaskable::Charset => {
                "the upstream answered in a character set other than UTF-8 (UTF-16, …), which \
                 policy says to mask or scrub"
            }
            Unmaskable::NotJson => {
                "the upstream answered with text that is not JSON (XML, CSV, no type), where \
                 policy masks JSON fields"
            }
            Unmaskable::NotText => {
                "the upstream's answer is labelled as text but holds bytes no text has (the \
                 zero bytes of UTF-16 or UTF-32, compressed data), which policy says to mask \
                 or scrub"
            }
        }
    }
}

/// How a masked service's answer is masked, or why it is not let out: [`response_body`], then
/// the service's choice (`unmaskable: refuse | pass`) for what cannot be masked. An ambiguous
/// head is refused whatever the choice; an answer without a body (204, 304, `Content-Length:
/// 0`) has nothing to mask.
/// `fields`: the masks name JSON fields (and the answer is not MCP's, read message by
/// message): only a JSON answer can be masked then.
pub fn answer_kind(
    status: u16,
    h: &http::HeaderMap,
    choice: crate::obligations::mask::UnmaskableAnswer,
    fields: bool,
) -> Result<BodyKind, Unmaskable> {
    let empty = status == 204
        || status == 304
        || h.get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0");
    let verdict = match response_body(h) {
        Err(Unmaskable::Ambiguous) => return Err(Unmaskable::Ambiguous),
        _ if empty => return Ok(BodyKind::Binary),
        Ok(_) if status == 206 => Err(Unmaskable::Partial),
        Ok(BodyKind::Binary) => Err(Unmaskable::Binary),
        // A redirect's or an error's text page is the server's, not the data's: masked by
        // the detectors, and the client keeps its status.
        Ok(BodyKind::Text) if fields && (200..300).contains(&status) => Err(Unmaskable::NotJson),
        other => other,
    };
    match verdict {
        // Let through as what it is: text, still masked by the detectors.
        Err(Unmaskable::NotJson) if choice == crate::obligations::mask::UnmaskableAnswer::Pass => {
            Ok(BodyKind::Text)
        }
        Err(_) if choice == crate::obligations::mask::UnmaskableAnswer::Pass => {
            Ok(BodyKind::Binary)
        }
        v => v,
    }
}

/// What a response's head says its body is, read from every field — before hop-by-hop
/// stripping, which would remove a `Content-Encoding` that `Connection` names, and with every
/// `Transfer-Encoding` coding (`gzip, chunked` leaves gzip bytes once chunking is undone).
pub fn response_body(h: &http::HeaderMap) -> Result<BodyKind, Unmaskable> {
    use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
    // A length and a transfer coding: readers differ on which one frames the body (a
    // `Content-Length: 0` read as no body at all let a chunked one through unmasked).
    if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        return Err(Unmaskable::Ambiguous);
    }
    let codings = |name| {
        h.get_all(name).iter().map(|v| {
            let Ok(v) = v.to_str() else {
                return Err(Unmaskable::Ambiguous);
            };
            Ok(v.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>())
        })
    };
    for items in codings(CONTENT_ENCODING) {
        if items?.iter().any(|c| !c.eq_ignore_ascii_case("identity")) {
            return Err(Unmaskable::Encoded);
        }
    }
    for items in codings(TRANSFER_ENCODING) {
        if items?
            .iter()
            .any(|c| !c.eq_ignore_ascii_case("chunked") && !c.eq_ignore_ascii_case("identity"))
        {
            return Err(Unmaskable::Encoded);
        }
    }
    let mut types = h.get_all(CONTENT_TYPE).iter();
    let ct = match (types.next(), types.next()) {
        (None, _) => None,
        (Some(v), None) => Some(v.to_str().map_err(|_| Unmaskable::Ambiguous)?),
        (Some(_), Some(_)) => return Err(Unmaskable::Ambiguous),
    };
    if let Some(ct) = ct {
        // One media type: a list (`text/plain, application/octet-stream`) is two claims.
        let mime = ct.split(';').next().unwrap_or("");
        if mime.contains(',') {
            return Err(Unmaskable::Ambiguous);
        }
    }
    let kind = BodyKind::from_content_type(ct);
    if kind != BodyKind::Binary && ct.is_some_and(|ct| !ascii_charset(ct)) {
        return Err(Unmaskable::Charset);
    }
    Ok(kind)
}

/// Every `charset` a media type names keeps ASCII's bytes for ASCII's characters, so that
/// the detectors and the scrubber read digits, letters and `@` where they are
/// ([`crate::util::media::Charset`]); none named: UTF-8, as JSON is. Any other (UTF-16,
/// UTF-32, UTF-7, EBCDIC, ISO-2022, one not known) is not: ASP.NET and Spring answer in UTF-16
/// when a client's `Accept-Charset` asks, and a card number is then digits with a zero byte
/// between each.
fn ascii_charset(ct: &str) -> bool {
    crate::util::media::charset(ct) != crate::util::media::Charset::Other
}

/// Whether `data` holds a byte no text in an ASCII-compatible set has: a C0 control other
/// than tab, line feed, vertical tab, form feed, carriage return and escape. UTF-16 and
/// UTF-32 put zero bytes beside every ASCII character, and compressed data has controls every
/// few bytes. Under a text label (or none) either reaches a client that reads it (Python's
/// `json.loads` and browsers detect UTF-16 and UTF-32 by their zero bytes or byte-order mark;
/// `zcat`) past detectors and a scrubber that read ASCII. Eight bytes at a time: text has few
/// controls, and a word without one is passed in a few instructions.
pub fn not_text(data: &[u8]) -> bool {
    // Tab, LF, VT, FF, CR and ESC.
    const ALLOWED: u32 = 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 27;
    let bad = |b: u8| b < 0x20 && ALLOWED >> b & 1 == 0;
    let words = data.chunks_exact(8);
    let rest = words.remainder();
    words.into_iter().any(|w| {
        let x = u64::from_le_bytes(w.try_into().unwrap_or_default());
        // A byte below 0x20 sets its top bit here (each byte's value is at most 0x7f after
        // the mask, so no borrow crosses into the next byte's).
        let low = (x & 0x7f7f_7f7f_7f7f_7f7f).wrapping_add(0x6060_6060_6060_6060) | x;
        low & 0x8080_8080_8080_8080 != 0x8080_8080_8080_8080 && w.iter().any(|b| bad(*b))
    }) || rest.iter().any(|b| bad(*b))
}

/// A body on its way out: JSON, text, or passed through.
#[derive(Debug)]
pub enum BodyMasker {
    Json(Box<JsonMasker>),
    Text(TextMasker),
    /// An MCP answer, message by message ([`mcp`]).
    Mcp(Box<mcp::McpMasker>),
    Binary,
}

impl BodyMasker {
    pub fn new(rules: Arc<MaskRules>, key: MaskKey, kind: BodyKind) -> Self {
        if rules.is_empty() {
            return BodyMasker::Binary;
        }
        match kind {
            BodyKind::Json => BodyMasker::Json(Box::new(JsonMasker::new(rules, key))),
            BodyKind::Text => BodyMasker::Text(TextMasker::new(rules, key)),
            BodyKind::Binary => BodyMasker::Binary,
        }
    }

    /// [`BodyMasker::new`] for an answer that is also recorded in full, up to `cap` bytes: a
    /// JSON masker then finds, in the same scan, the values of every built-in detector the
    /// rules do not mask, for the record ([`BodyMasker::answer_spans`]), until it has written
    /// more than `cap` bytes (a record would not keep such an answer).
    pub fn recorded(rules: Arc<MaskRules>, key: MaskKey, kind: BodyKind, cap: usize) -> Self {
        match Self::new(rules, key, kind) {
            BodyMasker::Json(mut m) => {
                m.track_spans(cap);
                BodyMasker::Json(m)
            }
            other => other,
        }
    }

    /// After [`BodyMasker::finish`]: where the values the client's copy keeps and a record
    /// must not are, in the bytes this masker wrote. None when this masker did not keep
    /// track (not made by [`BodyMasker::recorded`], not JSON, field paths, or something it
    /// does not follow came up: a private key, a body that was not JSON): the record masks
    /// the answer again on its own.
    pub fn answer_spans(&mut self) -> Option<AnswerSpans> {
        match self {
            BodyMasker::Json(m) => m.take_spans(),
            _ => None,
        }
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        match self {
            BodyMasker::Json(m) => m.push(chunk, out),
            BodyMasker::Text(m) => m.push(chunk, out),
            BodyMasker::Mcp(m) => m.push(chunk, out),
            BodyMasker::Binary => out.extend_from_slice(chunk),
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            BodyMasker::Json(m) => m.finish(out),
            BodyMasker::Text(m) => m.finish(out),
            BodyMasker::Mcp(m) => m.finish(out),
            BodyMasker::Binary => {}
        }
    }

    pub fn stats(&self) -> MaskStats {
        match self {
            BodyMasker::Json(m) => m.stats(),
            BodyMasker::Text(m) => m.stats,
            BodyMasker::Mcp(m) => m.stats,
            BodyMasker::Binary => MaskStats::default(),
        }
    }

    /// Bytes the detectors have been run over so far: linear in what was pushed.
    pub fn scanned(&self) -> u64 {
        match self {
            BodyMasker::Json(m) => m.scanned(),
            BodyMasker::Text(m) => m.scanned(),
            BodyMasker::Mcp(m) => m.scanned(),
            BodyMasker::Binary => 0,
        }
    }

    /// Masks a whole body at once.
    pub fn mask_all(&mut self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len());
        self.push(body, &mut out);
        self.finish(&mut out);
        out
    }
}

/// A masking obligation: a built-in detector by name, a JSON field path, or a custom regex.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MaskSpec {
    Detector(String),
    /// A detector with a replacement style other than its default.
    Styled {
        detector: String,
        style: crate::obligations::mask::Style,
    },
    Field {
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        style: Option<crate::obligations::mask::Style>,
    },
    Regex {
        regex: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        style: Option<crate::obligations::mask::Style>,
    },
}

/// An answer a service's masks cannot be applied to: a body that is not text (binary,
/// `multipart/*`, gRPC messages, a type the gateway does not know) or one that is compressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnmaskableAnswer {
    /// 502 `unmaskable_response`: nothing unmasked gets out (the default).
    #[default]
    Refuse,
    /// Passed as it is, unmasked (headers and trailers are still masked).
    Pass,
}

#[cfg(test)]
mod text_tests {
    use super::not_text;

    #[test]
    fn text_has_no_controls_but_layout_ones() {
        let json = br#"{"card": "4111 1111 1111 1111",	"note": "caf\xc3\xa9"}"#;
        assert!(!not_text(json));
        assert!(!not_text(
            b"line one\r\nline\x0btwo\x0c\x1b[0m and more text to fill a word"
        ));
        assert!(!not_text(b""));
        // UTF-16 and UTF-32 of ASCII, a byte-order mark or not.
        let utf16: Vec<u8> = "\u{feff}{\"card\":\"4111\"}"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert!(not_text(&utf16));
        let utf32: Vec<u8> = "4111"
            .chars()
            .flat_map(|c| (c as u32).to_be_bytes())
            .collect();
        assert!(not_text(&utf32));
        // gzip's header, and a control in the last, short word.
        assert!(not_text(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"));
        assert!(not_text(b"eight by\x01"));
        for at in 0..24 {
            let mut b = vec![b'a'; 24];
            b[at] = 0;
            assert!(not_text(&b), "a zero byte at {at}");
            b[at] = 0x80;
            assert!(!not_text(&b), "a high byte at {at}");
        }
    }
}
