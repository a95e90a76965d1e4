//! The record's JSON check (`record::valid::is_json`), differentially: a text is one JSON value
//! to it exactly when it is one to `serde_json`, which reads the records back. A text the
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
    assert_eq!(
        callgate::record::valid::is_json(data),
        theirs,
        "{:?}",
        String::from_utf8_lossy(data)
    );
});
