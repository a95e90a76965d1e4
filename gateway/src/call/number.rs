//! The numbers servers read a value as: a JSON number is itself and what truncating or
//! wrapping readers make of it; text is what Python, pydantic, Java and Go read whole, what
//! `parseInt`, `to_i` and `(int)` read of its start, what radix prefixes and leading zeros
//! say, in the decimal digits of every script. Policy compares arguments by these readings
//! ([`crate::policy`]), and limits key on them ([`crate::obligations::limit`]).
use serde_json::Value as Json;

/// The numbers servers read a value as. A JSON number is itself. Text is read differently by
/// different servers, and every reading counts:
/// - whole, as Python's `int` and `float`, pydantic, Java and Go read it (`" 7 "`, `"07"`,
///   `"+7"`, `"1_000"` to Python, `"1e3"`), with the decimal digits of every script (`"٧"`);
/// - its longest numeric start, as JavaScript's `parseInt` and `parseFloat`, Ruby's `to_i`
///   and `to_f`, PHP's `(int)` and ActiveRecord's `find` read it: `"7abc"` and `"7.5"` are 7
///   to `parseInt`, `"1_000"` is 1, `"1e3"` is 1 (and 1000 to `parseFloat`);
/// - with a radix prefix, as JavaScript's `Number` and Ruby's `Integer` read `"0x7"`, `"0o7"`
///   and `"0b111"` (7; `parseInt("0b111")` and Ruby's `to_i` read 0).
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// No server reads it as a number.
    Text,
    /// Every number some server reads it as (never NaN, at least one); `whole`: what the
    /// text is as a whole, when it is a number and not only starts with one.
    Numbers {
        xs: smallvec::SmallVec<[f64; 4]>,
        whole: Option<f64>,
    },
    /// Some server may read it as a number the gateway cannot name: a numeric character that
    /// is no decimal digit of [`ND_ZEROS`] (a script's digits newer than the table, `½`).
    Any,
}

impl Reading {
    pub fn of_value(v: &Json) -> Self {
        match v {
            Json::Number(n) => match n.as_f64().filter(|x| !x.is_nan()) {
                Some(x) => {
                    let mut xs: smallvec::SmallVec<[f64; 4]> = smallvec::smallvec![x];
                    for y in number_readings(n) {
                        if !xs.contains(&y) {
                            xs.push(y);
                        }
                    }
                    Reading::Numbers { xs, whole: Some(x) }
                }
                None => Reading::Any,
            },
            Json::String(s) => Reading::of(s),
            // `null` is 0 to JavaScript's `Number` and PHP's `(int)`, `false` 0 and `true` 1.
            Json::Null | Json::Bool(false) => Reading::number(0.0),
            Json::Bool(true) => Reading::number(1.0),
            // An array is 0 (empty) or 1 to PHP's `(int)`; one of a single item is that item
            // to JavaScript's `Number` and `==` (`[7]` is 7).
            Json::Array(items) => match items.as_slice() {
                [] => Reading::number(0.0),
                [one] => match Reading::of_value(one) {
                    Reading::Numbers { mut xs, .. } => {
                        if !xs.contains(&1.0) {
                            xs.push(1.0);
                        }
                        Reading::Numbers { xs, whole: None }
                    }
                    Reading::Text => Reading::number(1.0),
                    Reading::Any => Reading::Any,
                },
                _ => Reading::number(1.0),
            },
            Json::Object(_) => Reading::Text,
        }
    }

    fn number(x: f64) -> Self {
        Reading::Numbers {
            xs: smallvec::smallvec![x],
            whole: None,
        }
    }

    pub fn of(s: &str) -> Self {
        let Some(digits) = ascii_digits(s) else {
            return Reading::Any;
        };
        // Java's `trim` takes off every character up to U+0020, JavaScript's `Number` every
        // Unicode space and U+FEFF.
        let t = digits.trim_matches(|c: char| c <= ' ' || c.is_whitespace() || c == '\u{FEFF}');
        let mut xs: smallvec::SmallVec<[f64; 4]> = smallvec::SmallVec::new();
        let mut add = |x: Option<f64>| {
            if let Some(x) = x.filter(|x| !x.is_nan())
                && !xs.contains(&x)
            {
                xs.push(x);
            }
        };
        // Whole, as Python reads it (`_` between digits), and as Spring's `NumberUtils` does,
        // every space taken out (`"1 000"`).
        let whole = t
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .filter(|x| !x.is_nan());
        add(whole);
        if t.contains(char::is_whitespace) {
            add(t.split_whitespace().collect::<String>().parse().ok());
        }
        // A decimal text with more digits than a double holds (`"100.000000000000001"` is
        // more than 100 to Python's `Decimal` and Java's `BigDecimal`): its neighbours too.
        if let Some(x) = whole
            && t.bytes().filter(u8::is_ascii_digit).count() > 15
        {
            add(Some(x.next_up()));
            add(Some(x.next_down()));
        }
        let (neg, unsigned) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let signed = |x: f64| if neg { -x } else { x };
        let b = unsigned.as_bytes();
        // A radix prefix: `0x`, `0o`, `0b`, `0d` (JavaScript's `Number` and `parseInt`, Go's
        // `ParseInt(s, 0)`, Ruby's `Integer`), `#` (Java's `decode`), read as far as the
        // radix's digits go (`parseInt("0xAz")` is 10); a hexadecimal float (`0x1p10` is 1024
        // to Go's `ParseFloat`, Java's `parseDouble`, Ruby's `Float`).
        let radix = match b {
            [b'0', b'x' | b'X', ..] => Some((16, 2)),
            [b'0', b'o' | b'O', ..] => Some((8, 2)),
            [b'0', b'b' | b'B', ..] => Some((2, 2)),
            // Ruby's `to_i`, `Integer` and ActiveModel read `0d500` as 500.
            [b'0', b'd' | b'D', ..] => Some((10, 2)),
            [b'#', ..] => Some((16, 1)),
            _ => None,
        };
        if let Some((radix, skip)) = radix {
            match lead_in_radix(&b[skip..], radix) {
                Some(Some(n)) => add(Some(signed(n))),
                // More digits than the gateway can name; not more than `Number` reads.
                Some(None) => return Reading::Any,
                None => {}
            }
            if radix == 16 {
                add(hex_float(&b[skip..]).map(signed));
            }
        }
        // A leading zero is octal to Go's `ParseInt(s, 0)`, Ruby's `Integer` and Java's
        // `decode`: `"012"` is 10.
        if b.len() > 1 && b[0] == b'0' {
            match lead_in_radix(&b[1..], 8) {
                Some(Some(n)) => add(Some(signed(n))),
                Some(None) => return Reading::Any,
                None => {}
            }
        }
        // The longest numeric start (`parseInt`, `parseFloat`, `to_i`, `to_f`, `(int)`):
        // integer digits, then a fraction, then an exponent; and Ruby's, whose digits may have
        // single `_` between them (`"1_000x".to_i` is 1000).
        let int = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut end = int;
        if b.get(end) == Some(&b'.') {
            end += 1 + b[end + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
        }
        if end > usize::from(int == 0) {
            if int > 0 {
                add(unsigned[..int].parse().ok().map(signed));
            }
            add(unsigned[..end].parse().ok().map(signed));
            if matches!(b.get(end), Some(b'e' | b'E')) {
                let mut e = end + 1;
                if matches!(b.get(e), Some(b'+' | b'-')) {
                    e += 1;
                }
                let exp = b[e..].iter().take_while(|c| c.is_ascii_digit()).count();
                if exp > 0 {
                    add(unsigned[..e + exp].parse().ok().map(signed));
                }
            }
        }
        if int > 0 && b.get(int) == Some(&b'_') {
            let mut ruby = String::new();
            let mut k = 0;
            while k < b.len()
                && (b[k].is_ascii_digit()
                    || (b[k] == b'_'
                        && k > 0
                        && b[k - 1].is_ascii_digit()
                        && b.get(k + 1).is_some_and(u8::is_ascii_digit)))
            {
                if b[k] != b'_' {
                    ruby.push(b[k] as char);
                }
                k += 1;
            }
            add(ruby.parse().ok().map(signed));
        }
        match xs.is_empty() {
            true => Reading::Text,
            false => Reading::Numbers { xs, whole },
        }
    }

    /// The one number every server reads this as, when the text is that number spelled
    /// whole (`"7"`, `"-2.5"`, `"07"`, not `"7abc"` nor `"7.5"`, which `parseInt` reads as 7):
    /// how a rule names a number as text.
    pub fn plain(&self) -> Option<f64> {
        match self {
            Reading::Numbers { xs, whole: Some(w) }
                if xs
                    .iter()
                    .all(|x| x == w || *x == w.next_up() || *x == w.next_down()) =>
            {
                Some(*w)
            }
            _ => None,
        }
    }

    /// Whether some server may read this as `x`. Text with no numeric start is 0 to Ruby's
    /// `to_i`, PHP's `(int)` and ActiveRecord's `find`.
    pub fn may_be(&self, x: f64) -> bool {
        match self {
            Reading::Numbers { xs, .. } => xs.contains(&x),
            Reading::Any => true,
            Reading::Text => x == 0.0,
        }
    }
}

/// A value as the key of a count (a rate limit's bucket, a quota's window): text no server
/// reads as a number is itself, a value every server reads as one number is that number
/// (`"05"`, `"5abc"`, `"+5"`, `"5.json"`, `5.0`, `[5]` are all `5`; `null` and `false` are
/// `0`), an object is its JSON.
/// Err: the values servers read it as, when they read it as several numbers (`"1e3"` is 1000
/// or 1): no one count is its.
pub fn key_text(v: &Json) -> Result<std::borrow::Cow<'_, str>, String> {
    use std::borrow::Cow;
    let reading = match v {
        Json::Object(_) => return Ok(Cow::Owned(v.to_string())),
        v => Reading::of_value(v),
    };
    match (reading, v) {
        (Reading::Text, Json::String(t)) => Ok(Cow::Borrowed(t)),
        (Reading::Numbers { xs, .. }, _) => {
            let x = xs[0];
            if xs
                .iter()
                .all(|y| *y == x || *y == x.next_up() || *y == x.next_down())
            {
                Ok(Cow::Owned(if x.fract() == 0.0 && x.abs() < 1e15 {
                    format!("{}", x as i64)
                } else {
                    format!("{x}")
                }))
            } else {
                Err(xs
                    .iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "))
            }
        }
        _ => Err("a number the gateway cannot name".into()),
    }
}

/// The digits of `radix` (and `_` between them) at the start of `b`, as a number: None when
/// there are none, Some(None) when there are more than the gateway can name.
fn lead_in_radix(b: &[u8], radix: u32) -> Option<Option<f64>> {
    let run: String = b
        .iter()
        .take_while(|c| (**c as char).is_digit(radix) || **c == b'_')
        .filter(|c| **c != b'_')
        .map(|c| *c as char)
        .collect();
    if run.is_empty() {
        return None;
    }
    Some(u128::from_str_radix(&run, radix).ok().map(|n| n as f64))
}

/// A hexadecimal float after its `0x` (`1p10`, `1.8p1`, `.8p-1`), as Go's `ParseFloat`,
/// Java's `parseDouble` and Ruby's `Float` read it; None when `b` does not start with one.
fn hex_float(b: &[u8]) -> Option<f64> {
    let digit = |c: &u8| (*c as char).to_digit(16);
    let mut mantissa = 0f64;
    let mut scale = 0i32;
    let mut k = 0;
    let mut any = false;
    while let Some(d) = b.get(k).and_then(digit) {
        mantissa = mantissa * 16.0 + f64::from(d);
        (k, any) = (k + 1, true);
    }
    if b.get(k) == Some(&b'.') {
        k += 1;
        while let Some(d) = b.get(k).and_then(digit) {
            mantissa = mantissa * 16.0 + f64::from(d);
            scale -= 4;
            (k, any) = (k + 1, true);
        }
    }
    if !any || !matches!(b.get(k), Some(b'p' | b'P')) {
        return None;
    }
    k += 1;
    let neg = match b.get(k) {
        Some(b'-') => {
            k += 1;
            true
        }
        Some(b'+') => {
            k += 1;
            false
        }
        _ => false,
    };
    let digits = b[k..].iter().take_while(|c| c.is_ascii_digit()).count();
    let exp: i32 = std::str::from_utf8(&b[k..k + digits]).ok()?.parse().ok()?;
    let exp = if neg { -exp } else { exp };
    Some(mantissa * 2f64.powi(exp.saturating_add(scale)))
}

/// The numbers other than its own value that servers read a JSON number as: its integer part
/// (`int(7.5)`), what JavaScript's `parseInt` reads of its text (`7e-7` is 7), and, past
/// 2^63, the integer PHP's `(int)` wraps it to.
pub fn number_readings(n: &serde_json::Number) -> smallvec::SmallVec<[f64; 4]> {
    let mut out = smallvec::SmallVec::new();
    let Some(x) = n.as_f64().filter(|x| x.is_finite()) else {
        return out;
    };
    if x.fract() != 0.0 {
        out.push(x.trunc());
    }
    if let Reading::Numbers { xs, .. } = Reading::of(&n.to_string()) {
        out.extend(xs.into_iter().filter(|y| *y != x));
    }
    if x.abs() >= 2f64.powi(63) && x.abs() < 1e38 {
        out.push(((x as i128).rem_euclid(1 << 64) as u64 as i64) as f64);
    }
    out
}

/// The first code point of each run of ten decimal digits (Unicode category Nd) outside
/// ASCII, from Python's `unicodedata` (Unicode 14.0) and the runs Unicode 15.0 and 16.0 add.
/// Python's `int` and `float`, werkzeug's `int` and `float` route converters and Java's
/// `parseInt` read each as its digit: Flask runs `/items/<int:id>` for `/items/٧` with id 7.
const ND_ZEROS: &[u32] = &[
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
    0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50,
    0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10,
    0x104A0, 0x10D30, 0x10D40, 0x11066, 0x110F0, 0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0,
    0x11650, 0x116C0, 0x116D0, 0x116DA, 0x11730, 0x118E0, 0x11950, 0x11BF0, 0x11C50, 0x11D50,
    0x11DA0, 0x11F50, 0x16130, 0x16A60, 0x16AC0, 0x16B50, 0x16D70, 0x1CCF0, 0x1D7CE, 0x1D7D8,
    0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E5F1, 0x1E950, 0x1FBF0,
];

/// `s` with every decimal digit of [`ND_ZEROS`] written as its ASCII digit; borrowed when it
/// has none (the common case). None when it holds another numeric character, which some
/// server may read as a digit the gateway cannot name.
fn ascii_digits(s: &str) -> Option<std::borrow::Cow<'_, str>> {
    if s.is_ascii() {
        return Some(std::borrow::Cow::Borrowed(s));
    }
    let digit = |c: char| {
        let at = ND_ZEROS
            .partition_point(|&z| z <= c as u32)
            .checked_sub(1)?;
        let d = (c as u32).checked_sub(ND_ZEROS[at]).filter(|d| *d < 10)?;
        char::from_digit(d, 10)
    };
    let mut out = String::with_capacity(s.len());
    let mut mapped = false;
    for c in s.chars() {
        match c {
            c if c.is_ascii() => out.push(c),
            c => match digit(c) {
                Some(d) => {
                    out.push(d);
                    mapped = true;
                }
                None if c.is_numeric() => return None,
                None => out.push(c),
            },
        }
    }
    Some(match mapped {
        true => std::borrow::Cow::Owned(out),
        false => std::borrow::Cow::Borrowed(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_of_digits_is_ten_numeric_characters_in_order() {
        assert!(
            ND_ZEROS.windows(2).all(|w| w[0] + 10 <= w[1]),
            "sorted, apart"
        );
        for &zero in ND_ZEROS {
            for d in 0..10 {
                let c = char::from_u32(zero + d).expect("a character");
                assert!(c.is_numeric(), "U+{:X} is not numeric", zero + d);
                assert_eq!(
                    ascii_digits(&c.to_string()).as_deref(),
                    Some(&*d.to_string())
                );
            }
        }
    }

    #[test]
    fn a_key_is_the_one_number_every_server_reads() {
        use serde_json::json;
        let key = |v: Json| key_text(&v).map(|k| k.into_owned());
        for (v, want) in [
            (json!("05"), "5"),
            (json!("5abc"), "5"),
            (json!("5.json"), "5"),
            (json!(5.0), "5"),
            (json!(null), "0"),
            (json!(false), "0"),
            (json!([]), "0"),
            (json!("customer"), "customer"),
        ] {
            assert_eq!(key(v.clone()).as_deref(), Ok(want), "{v}");
        }
        // 5 to Ruby's `to_i`, 0 to `parseInt`: several.
        for several in [json!("1e3"), json!([7]), json!("0x10"), json!("0d5")] {
            assert!(key(several.clone()).is_err(), "{several}");
        }
    }
}
