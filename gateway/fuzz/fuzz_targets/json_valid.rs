//! The record's JSON check (`record::valid::is_json`), differentially: a text is one JSON value
//! to it exactly when it is one to `serde_json`, which reads the records back (but for numbers
//! out of some reader's range, which it refuses and `serde_json`'s raw values take). A text the
//! check passes and `serde_json` refuses would make a record unreadable (or, worse, let an
//! answer end the record's `response` and write fields of its own); one it refuses and
//! `serde_json` takes is recorded as a string instead of as itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The record holds text only: UTF-8 is checked before.
    if std::str::from_utf8(data).is_err() {
        return;
    }
    // Nesting: the check refuses more than 100 levels (a reader parsing the record into
    // `serde_json::Value` refuses 128); a raw value has no limit.
    if data.iter().filter(|&&b| b == b'[' || b == b'{').count() > 100 {
        return;
    }
    let theirs = serde_json::from_slice::<Box<serde_json::value::RawValue>>(data).is_ok();
    let ours = callgate::record::valid::is_json(data);
    // The check also refuses a number not every reader holds (beyond f64, or more than 16,383
    // digits after the point for PostgreSQL's jsonb): only possible with an exponent of three
    // digits or more, or a run of over 200 digits. Everywhere else the two agree exactly.
    let digits_at = |i: usize| data[i.min(data.len())..].iter().take_while(|b| b.is_ascii_digit()).count();
    let far = (0..data.len()).any(|i| {
        matches!(data[i], b'e' | b'E')
            && digits_at(i + 1 + usize::from(matches!(data.get(i + 1), Some(b'+' | b'-')))) >= 3
    }) || data.split(|b| !b.is_ascii_digit()).any(|run| run.len() > 200);
    if ours || !far {
        assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(data));
    }
    if ours {
        // Every number it passes, serde_json reads as a value (a lone surrogate it may not).
        let escapes = callgate::record::valid::escapes_decode(data);
        assert!(
            !escapes || serde_json::from_slice::<serde_json::Value>(data).is_ok(),
            "{:?}",
            String::from_utf8_lossy(data)
        );
    }
});
