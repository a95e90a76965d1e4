//! The `charset` a media type names, as readers of bodies act on it: a body is decoded by the
//! label, so a gateway that reads bytes as UTF-8 must know when a server or a client will not.
//! Express's JSON parser decodes any `utf-*` charset through iconv-lite (UTF-7 included, where
//! `+ACI-` is a `"`), Python's and browsers' readers honour UTF-16 and UTF-32.

/// What a `Content-Type` says of its body's characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// No `charset`, or UTF-8 or ASCII by any of their names: bytes read as the gateway reads
    /// them.
    Utf8,
    /// A set that keeps ASCII's bytes for ASCII's characters (the ISO 8859 and Windows code
    /// pages, the East Asian multi-byte sets whose digits and Latin letters are ASCII's):
    /// digits, letters, `@`, quotes and braces are where the gateway sees them.
    AsciiCompatible,
    /// Any other (UTF-16, UTF-32, UTF-7, EBCDIC, ISO-2022, one not known), or `charset`
    /// given more than once: the same bytes are other characters to a reader that decodes
    /// by the label.
    Other,
}

/// The charset `content_type` names ([`Charset`]).
pub fn charset(content_type: &str) -> Charset {
    let mut named = content_type.split(';').skip(1).filter_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').trim().to_ascii_lowercase())
    });
    let value = match (named.next(), named.next()) {
        (None, _) => return Charset::Utf8,
        (Some(v), None) => v,
        // Two: readers differ on which one they take.
        (Some(_), Some(_)) => return Charset::Other,
    };
    const UTF8: [&str; 4] = ["utf-8", "utf8", "us-ascii", "ascii"];
    const EXACT: [&str; 8] = [
        "shift_jis",
        "shift-jis",
        "sjis",
        "gb2312",
        "gbk",
        "gb18030",
        "big5",
        "macintosh",
    ];
    const FAMILIES: [&str; 8] = [
        "iso-8859-",
        "iso8859-",
        "latin",
        "windows-125",
        "cp125",
        "koi8-",
        "euc-",
        "tis-620",
    ];
    if UTF8.contains(&value.as_str()) {
        Charset::Utf8
    } else if EXACT.contains(&value.as_str()) || FAMILIES.iter().any(|f| value.starts_with(f)) {
        Charset::AsciiCompatible
    } else {
        Charset::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_are_read_as_decoders_read_them() {
        for (ct, want) in [
            ("application/json", Charset::Utf8),
            ("application/json; charset=utf-8", Charset::Utf8),
            ("application/json;charset=\"UTF-8\"", Charset::Utf8),
            ("text/plain; CHARSET=us-ascii", Charset::Utf8),
            ("text/csv; charset=iso-8859-1", Charset::AsciiCompatible),
            ("text/html; charset=Windows-1252", Charset::AsciiCompatible),
            ("application/json; charset=utf-7", Charset::Other),
            ("application/json; charset=utf-16le", Charset::Other),
            ("application/json; charset=\"utf-32\"", Charset::Other),
            ("text/plain; charset=ibm037", Charset::Other),
            ("text/plain; charset=hz-gb-2312", Charset::Other),
            (
                "application/json; charset=utf-8; charset=utf-7",
                Charset::Other,
            ),
            (
                "application/json; charset=utf-8; charset=utf-8",
                Charset::Other,
            ),
            ("application/json; q=1", Charset::Utf8),
        ] {
            assert_eq!(charset(ct), want, "{ct}");
        }
    }
}
