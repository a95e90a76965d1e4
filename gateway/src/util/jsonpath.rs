//! A small JSONPath subset, shared by policy argument conditions and field masking:
//! `name`, `$.a.b`, `$.a[0]`, `$.items[*].id`, `$['odd key']`, `$..card` (any depth).
//!
//! Matching visits values through a callback instead of collecting them, so evaluating a
//! condition allocates nothing.
use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
    Wildcard,
    /// `..name`: the key at any depth below.
    Descend(String),
    /// Each element of an array, and nothing in an object: how [`JsonPath::in_each_element`]
    /// reaches into a list (`[*]` also selects an object's members).
    Element,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    segs: Vec<Seg>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON path {path:?}: {reason}")]
pub struct PathError {
    pub path: String,
    pub reason: &'static str,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// A bare name (`amount`) is the top-level key of that name.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        let err = |reason| PathError {
            path: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(err("empty"));
        }
        let Some(rest) = text.strip_prefix('$') else {
            return Ok(Self {
                segs: vec![Seg::Key(text.to_string())],
                text: text.to_string(),
            });
        };
        let b = rest.as_bytes();
        let mut segs = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' if b.get(i + 1) == Some(&b'.') => {
                    let (name, next) =
                        ident(rest, i + 2).ok_or_else(|| err("`..` needs a name"))?;
                    segs.push(Seg::Descend(name));
                    i = next;
                }
                b'.' => {
                    if b.get(i + 1) == Some(&b'*') {
                        segs.push(Seg::Wildcard);
                        i += 2;
                        continue;
                    }
                    let (name, next) = ident(rest, i + 1).ok_or_else(|| err("`.` needs a name"))?;
                    segs.push(Seg::Key(name));
                    i = next;
                }
                b'[' => {
                    let close = rest[i..].find(']').ok_or_else(|| err("unclosed `[`"))? + i;
                    let inner = rest[i + 1..close].trim();
                    segs.push(if inner == "*" {
                        Seg::Wildcard
                    } else if let Some(q) =
                        inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\''))
                    {
                        Seg::Key(q.to_string())
                    } else if let Some(q) =
                        inner.strip_prefix('"').and_then(|s| s.strip_suffix('"'))
                    {
                        Seg::Key(q.to_string())
                    } else {
                        Seg::Index(
                            inner
                                .parse()
                                .map_err(|_| err("index must be a number, `*` or a quoted key"))?,
                        )
                    });
                    i = close + 1;
                }
                _ => return Err(err("expected `.`, `..` or `[`")),
            }
        }
        Ok(Self {
            segs,
            text: text.to_string(),
        })
    }

    /// Calls `f` on every value the path selects, until `f` returns false.
    /// Returns false if it was stopped.
    pub fn visit<'v>(&self, root: &'v Value, f: &mut dyn FnMut(&'v Value) -> bool) -> bool {
        walk(&self.segs, root, f, 0, false)
    }

    /// Like `visit`, where a key also selects every key of the object equal to it under case
    /// folding (`Amount`, `AMOUNT`, `amount` with a Kelvin sign for `k`): what a server that
    /// matches keys without case reads as the same field (Go's `encoding/json` takes the last
    /// of them into a struct field). Arguments are read so, claims in a signed token are not.
    pub fn visit_folded<'v>(&self, root: &'v Value, f: &mut dyn FnMut(&'v Value) -> bool) -> bool {
        walk(&self.segs, root, f, 0, true)
    }

    /// Whether the path, with steps still to take, meets text that holds a JSON object or
    /// list (keys matched as [`JsonPath::visit_folded`] matches them). FastMCP parses such an
    /// argument into the object or list its parameter's type asks for (`pre_parse_json`),
    /// so `"options": "{\"allow_writes\": true}"` has `$.options.allow_writes` to the tool
    /// and none to a reader of the call as sent.
    pub fn passes_json_text(&self, root: &Value) -> bool {
        json_text_on(&self.segs, root, 0)
    }

    /// Like `visit`, with mutable access (for masking in place), keys matched under case
    /// folding as [`JsonPath::visit_folded`] matches them: masks over-reach rather than miss.
    pub fn visit_mut(&self, root: &mut Value, f: &mut dyn FnMut(&mut Value)) {
        walk_mut(&self.segs, root, f, 0)
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Every key name the path compares against (`$.a[0]..b` → `a`, `b`).
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.segs.iter().filter_map(|s| match s {
            Seg::Key(k) | Seg::Descend(k) => Some(k.as_str()),
            _ => None,
        })
    }

    /// The path counts array elements (`[0]`, `[*]`), so a streaming matcher must too. (The
    /// step [`Self::in_each_element`] adds takes any element: nothing to count for it.)
    pub fn steps_into_arrays(&self) -> bool {
        self.segs
            .iter()
            .any(|s| matches!(s, Seg::Index(_) | Seg::Wildcard))
    }

    /// For a path that begins with a key (`$.customer.ssn`, `ssn`), the same path from each
    /// element of a list at the root (`[{"customer": …}, …]`): what the path names in every
    /// item of an answer an upstream shapes as a list. `None` where the path already says
    /// what it wants of a list at the root (`$[0]…`, `$[*]…`) or reaches every depth (`$..a`).
    pub fn in_each_element(&self) -> Option<Self> {
        if !matches!(self.segs.first(), Some(Seg::Key(_))) {
            return None;
        }
        let mut segs = Vec::with_capacity(self.segs.len() + 1);
        segs.push(Seg::Element);
        segs.extend(self.segs.iter().cloned());
        Some(Self {
            segs,
            text: self.text.clone(),
        })
    }

    /// The path is `$` itself: the whole document.
    pub fn is_root(&self) -> bool {
        self.segs.is_empty()
    }

    /// The path has no wildcard or descent: it selects at most one value.
    pub fn is_single(&self) -> bool {
        self.segs
            .iter()
            .all(|s| matches!(s, Seg::Key(_) | Seg::Index(_)))
    }
}

/// One step of the path to a value met while streaming through a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    Key(&'a [u8]),
    Index(usize),
}

impl JsonPath {
    /// Whether the value at `path` (from the root) is one this path selects; what a streaming
    /// masker asks as each value begins.
    pub fn matches(&self, path: &[Step<'_>]) -> bool {
        self.matches_with(path.len(), &|i| path[i])
    }

    /// The key a selected value always sits under (`$.a.b` → `b`, `$..c` → `c`), if any.
    pub fn last_key(&self) -> Option<&str> {
        match self.segs.last()? {
            Seg::Key(k) | Seg::Descend(k) => Some(k),
            _ => None,
        }
    }

    /// [`Self::matches`] over a path of `len` steps produced on demand by `step`, so the caller
    /// need not build a slice per value.
    pub fn matches_with<'s>(&self, len: usize, step: &dyn Fn(usize) -> Step<'s>) -> bool {
        // Cheap rejection first: a path ending in a key only selects values under that key.
        let rejected = match (self.segs.last(), len.checked_sub(1)) {
            (Some(Seg::Key(k) | Seg::Descend(k)), Some(last)) => {
                step(last) != Step::Key(k.as_bytes())
            }
            (Some(Seg::Index(i)), Some(last)) => step(last) != Step::Index(*i),
            _ => false,
        };
        if rejected {
            return false;
        }
        matches_at(&self.segs, 0, len, step)
    }
}

fn matches_at<'s>(segs: &[Seg], at: usize, len: usize, step: &dyn Fn(usize) -> Step<'s>) -> bool {
    match (segs.split_first(), at < len) {
        (None, more) => !more,
        (Some((Seg::Descend(k), rest)), _) => (at..len)
            .any(|i| step(i) == Step::Key(k.as_bytes()) && matches_at(rest, i + 1, len, step)),
        (Some(_), false) => false,
        (Some((seg, rest)), true) => {
            let here = match (seg, step(at)) {
                (Seg::Key(k), Step::Key(s)) => k.as_bytes() == s,
                (Seg::Index(i), Step::Index(j)) => *i == j,
                (Seg::Wildcard, _) | (Seg::Element, Step::Index(_)) => true,
                _ => false,
            };
            here && matches_at(rest, at + 1, len, step)
        }
    }
}

/// Deep JSON can be hostile; paths stop descending past this depth.
const MAX_DEPTH: usize = 128;

fn walk<'v>(
    segs: &[Seg],
    v: &'v Value,
    f: &mut dyn FnMut(&'v Value) -> bool,
    depth: usize,
    fold: bool,
) -> bool {
    if depth > MAX_DEPTH {
        return true;
    }
    let Some((seg, rest)) = segs.split_first() else {
        return f(v);
    };
    // The members `k` selects: the one of that name and, folded, every other equal to it
    // under case folding.
    let members = |k: &str, f: &mut dyn FnMut(&'v Value) -> bool| {
        if let Some(c) = v.get(k) {
            if !walk(rest, c, f, depth + 1, fold) {
                return false;
            }
        }
        match v {
            Value::Object(o) if fold => o
                .iter()
                .filter(|(name, _)| name.as_str() != k && fold_eq(name, k))
                .all(|(_, c)| walk(rest, c, f, depth + 1, fold)),
            _ => true,
        }
    };
    match seg {
        Seg::Key(k) => members(k, f),
        Seg::Index(i) => v.get(*i).is_none_or(|c| walk(rest, c, f, depth + 1, fold)),
        Seg::Wildcard => match v {
            Value::Array(a) => a.iter().all(|c| walk(rest, c, f, depth + 1, fold)),
            Value::Object(o) => o.values().all(|c| walk(rest, c, f, depth + 1, fold)),
            _ => true,
        },
        Seg::Element => match v {
            Value::Array(a) => a.iter().all(|c| walk(rest, c, f, depth + 1, fold)),
            _ => true,
        },
        Seg::Descend(k) => {
            if !members(k, f) {
                return false;
            }
            match v {
                Value::Array(a) => a.iter().all(|c| walk(segs, c, f, depth + 1, fold)),
                Value::Object(o) => o.values().all(|c| walk(segs, c, f, depth + 1, fold)),
                _ => true,
            }
        }
    }
}

fn json_text_on(segs: &[Seg], v: &Value, depth: usize) -> bool {
    let Some((seg, rest)) = segs.split_first() else {
        return false;
    };
    if depth > MAX_DEPTH {
        return false;
    }
    if let Value::String(t) = v {
        let t = t.trim_start();
        return t.starts_with('{') || t.starts_with('[');
    }
    // What a last step finds is its value, text or not (most conditions: `$.amount`).
    if rest.is_empty() && !matches!(seg, Seg::Descend(_)) {
        return false;
    }
    let on = |c: &Value, segs| json_text_on(segs, c, depth + 1);
    let members = |k: &str| match v {
        Value::Object(o) => o.iter().any(|(name, c)| fold_eq(name, k) && on(c, rest)),
        _ => false,
    };
    match seg {
        Seg::Key(k) => members(k),
        Seg::Index(i) => v.get(*i).is_some_and(|c| on(c, rest)),
        Seg::Wildcard => match v {
            Value::Array(a) => a.iter().any(|c| on(c, rest)),
            Value::Object(o) => o.values().any(|c| on(c, rest)),
            _ => false,
        },
        Seg::Element => match v {
            Value::Array(a) => a.iter().any(|c| on(c, rest)),
            _ => false,
        },
        Seg::Descend(k) => {
            members(k)
                || match v {
                    Value::Array(a) => a.iter().any(|c| on(c, segs)),
                    Value::Object(o) => o.values().any(|c| on(c, segs)),
                    _ => false,
                }
        }
    }
}

/// `a` and `b` are equal under simple case folding, as Go's `strings.EqualFold` has it (the
/// Kelvin sign is a `k`, the long `ſ` an `s`, `ẞ` a `ß`): each character's upper case's
/// lower case, where each is one character. Compared a character at a time, without
/// allocating.
pub fn fold_eq(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars().map(fold_char).eq(b.chars().map(fold_char))
}

/// One character folded: its upper case's lower case, each only where it is one character
/// (`ß` upper-cases to `SS` and stays `ß`, as `ẞ` lower-cases to it). `İ` (whose full lower
/// case is `i` and a combining dot) is an `i`: Go's encoding/json folds each character as
/// `ToUpper(ToLower(c))` with Unicode's simple mappings, where `İ` lower-cases to `i`, so
/// `recİpient` is the field `recipient` to it.
pub fn fold_char(c: char) -> char {
    if c == '\u{130}' {
        return 'i';
    }
    let mut up = c.to_uppercase();
    let up = match (up.next(), up.next()) {
        (Some(u), None) => u,
        _ => c,
    };
    let mut low = up.to_lowercase();
    match (low.next(), low.next()) {
        (Some(l), None) => l,
        _ => up,
    }
}

fn walk_mut(segs: &[Seg], v: &mut Value, f: &mut dyn FnMut(&mut Value), depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    let Some((seg, rest)) = segs.split_first() else {
        return f(v);
    };
    // Every member whose name folds to `k`: a client that reads keys without case (Go's
    // `encoding/json`, .NET's web defaults) reads `SSN` as the field `ssn`.
    let members = |k: &str, v: &mut Value, f: &mut dyn FnMut(&mut Value)| {
        if let Value::Object(o) = v {
            o.iter_mut()
                .filter(|(name, _)| fold_eq(name, k))
                .for_each(|(_, c)| walk_mut(rest, c, f, depth + 1));
        }
    };
    match seg {
        Seg::Key(k) => members(k, v, f),
        Seg::Index(i) => {
            if let Some(c) = v.get_mut(*i) {
                walk_mut(rest, c, f, depth + 1)
            }
        }
        Seg::Wildcard => match v {
            Value::Array(a) => a.iter_mut().for_each(|c| walk_mut(rest, c, f, depth + 1)),
            Value::Object(o) => o.values_mut().for_each(|c| walk_mut(rest, c, f, depth + 1)),
            _ => {}
        },
        Seg::Element => {
            if let Value::Array(a) = v {
                a.iter_mut().for_each(|c| walk_mut(rest, c, f, depth + 1));
            }
        }
        Seg::Descend(k) => {
            members(k, v, f);
            match v {
                Value::Array(a) => a.iter_mut().for_each(|c| walk_mut(segs, c, f, depth + 1)),
                Value::Object(o) => o.values_mut().for_each(|c| walk_mut(segs, c, f, depth + 1)),
                _ => {}
            }
        }
    }
}

fn ident(s: &str, start: usize) -> Option<(String, usize)> {
    let end = s[start..].find(['.', '[']).map_or(s.len(), |i| i + start);
    (end > start).then(|| (s[start..end].to_string(), end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_below_text_that_holds_json_are_seen() {
        let p = |t: &str| JsonPath::parse(t).unwrap();
        let args = json!({"options": " {\"w\": 1}", "list": "[1]", "name": "{x}", "n": {"a": "b"}});
        assert!(p("$.options.w").passes_json_text(&args));
        assert!(p("$.OPTIONS.w").passes_json_text(&args));
        assert!(p("$.list[0]").passes_json_text(&args));
        assert!(p("$..w").passes_json_text(&args));
        // The last step takes the text as its value; other branches hold none.
        assert!(!p("$.options").passes_json_text(&args));
        assert!(!p("$.n.a").passes_json_text(&args));
        assert!(!p("$.missing.w").passes_json_text(&args));
    }

    #[test]
    fn folded_visits_read_every_spelling_of_a_key() {
        let v: Value = json!({
            "amount": 5, "Amount": 5000, "o": {"\u{212A}ind": "x"}, "\u{17F}tatus": "s"
        });
        let seen = |p: &str, folded: bool| {
            let mut out = Vec::new();
            let path = JsonPath::parse(p).unwrap();
            let mut f = |x: &Value| {
                out.push(x.to_string());
                true
            };
            if folded {
                path.visit_folded(&v, &mut f);
            } else {
                path.visit(&v, &mut f);
            }
            out
        };
        assert_eq!(seen("amount", false), ["5"]);
        assert_eq!(seen("amount", true), ["5", "5000"]);
        let mut upper = seen("AMOUNT", true);
        upper.sort();
        assert_eq!(upper, ["5", "5000"]);
        assert_eq!(seen("$.o.kind", true), ["\"x\""]);
        assert_eq!(seen("$..KIND", true), ["\"x\""]);
        assert_eq!(seen("status", true), ["\"s\""]);
        assert!(fold_eq("Stra\u{df}e", "STRA\u{1e9e}E") && !fold_eq("a", "b"));
        assert!(fold_eq("\u{212A}ind", "KIND") && fold_eq("\u{17F}tatus", "STATUS"));
        // Go's ToUpper(ToLower(c)): the dotted capital I is an i.
        assert!(fold_eq("rec\u{130}pient", "RECIPIENT") && fold_eq("\u{131}d", "ID"));
    }

    fn all(path: &str, v: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        JsonPath::parse(path).unwrap().visit(v, &mut |x| {
            out.push(x.clone());
            true
        });
        out
    }

    #[test]
    fn selects() {
        let v = json!({"amount": 5, "customer": {"ssn": "1", "cards": [{"card": "a"}, {"card": "b"}]}, "odd key": 1});
        assert_eq!(all("amount", &v), [json!(5)]);
        assert_eq!(all("$.customer.ssn", &v), [json!("1")]);
        assert_eq!(all("$.customer.cards[1].card", &v), [json!("b")]);
        assert_eq!(
            all("$.customer.cards[*].card", &v),
            [json!("a"), json!("b")]
        );
        assert_eq!(all("$..card", &v), [json!("a"), json!("b")]);
        assert_eq!(all("$['odd key']", &v), [json!(1)]);
        assert!(all("$.nope.deeper", &v).is_empty());
    }

    #[test]
    fn masks_in_place() {
        let mut v = json!({"a": [{"ssn": 1}, {"ssn": 2}]});
        JsonPath::parse("$..ssn")
            .unwrap()
            .visit_mut(&mut v, &mut |x| *x = json!("x"));
        assert_eq!(v, json!({"a": [{"ssn": "x"}, {"ssn": "x"}]}));
    }

    #[test]
    fn matches_streamed_paths() {
        use Step::*;
        let p = |s: &str| JsonPath::parse(s).unwrap();
        assert!(p("$.customer.ssn").matches(&[Key(b"customer"), Key(b"ssn")]));
        assert!(!p("$.customer.ssn").matches(&[Key(b"customer")]));
        assert!(!p("$.customer.ssn").matches(&[Key(b"customer"), Key(b"ssn"), Key(b"x")]));
        assert!(p("$..card").matches(&[Key(b"a"), Index(3), Key(b"card")]));
        assert!(p("$..card").matches(&[Key(b"card")]));
        assert!(!p("$..card").matches(&[Key(b"card"), Key(b"x")]));
        assert!(p("$.items[*].id").matches(&[Key(b"items"), Index(7), Key(b"id")]));
        assert!(p("$.items[2]").matches(&[Key(b"items"), Index(2)]));
        assert!(!p("$.items[2]").matches(&[Key(b"items"), Index(1)]));
        assert!(p("ssn").matches(&[Key(b"ssn")]));
    }

    #[test]
    fn a_path_from_each_element_of_a_list() {
        use Step::*;
        let each = |s: &str| JsonPath::parse(s).unwrap().in_each_element();
        let p = each("$.customer.ssn").unwrap();
        assert!(p.matches(&[Index(4), Key(b"customer"), Key(b"ssn")]));
        // Elements of a list only, not an object's members.
        assert!(!p.matches(&[Key(b"x"), Key(b"customer"), Key(b"ssn")]));
        assert!(!p.matches(&[Key(b"customer"), Key(b"ssn")]));
        let v = json!([{"customer": {"ssn": 1}}, {"customer": {"ssn": 2}}, 3]);
        let mut seen = Vec::new();
        p.visit(&v, &mut |x| {
            seen.push(x.clone());
            true
        });
        assert_eq!(seen, [json!(1), json!(2)]);
        let mut m = v.clone();
        p.visit_mut(&mut m, &mut |x| *x = json!("x"));
        assert_eq!(
            m,
            json!([{"customer": {"ssn": "x"}}, {"customer": {"ssn": "x"}}, 3])
        );
        assert!(each("ssn").is_some());
        for whole in ["$[0].ssn", "$[*].ssn", "$..ssn"] {
            assert!(each(whole).is_none(), "{whole}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "$.", "$..", "$[", "$[x]", "$a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }
}
