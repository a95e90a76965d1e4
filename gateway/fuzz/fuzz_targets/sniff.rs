//! The first bytes of an intercepted connection (TLS ClientHello with SNI/ALPN, HTTP/1, h2
//! preface, other): a verdict or "need more", never a panic; and the protocol a verdict names
//! never changes when more bytes arrive (only the reason given for "other" may sharpen).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = callgate::proxy::sniff::classify(data);
    if let Some(cut) = data.len().checked_sub(1)
        && let Some(early) = callgate::proxy::sniff::classify(&data[..cut])
    {
        let whole = whole.expect("a verdict cannot turn back into 'need more'");
        assert_eq!(
            std::mem::discriminant(&early),
            std::mem::discriminant(&whole),
            "{early:?} became {whole:?} with one more byte"
        );
    }
});
