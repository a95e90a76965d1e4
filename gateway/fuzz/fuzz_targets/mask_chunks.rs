//! Masking a body that arrives in arbitrary chunks, as JSON and as text: never a panic, the
//! same output however it is cut, and a card number planted in it never survives.
//!
//! Input: the first byte chooses the body kind, the next eight the cut points, the rest is
//! the body (with a card number inserted in the middle); see `../mask_chunks_case.rs`, which
//! `tests/mask.rs` also runs over this target's seeds.
#![no_main]
use std::sync::{Arc, OnceLock};

use callgate::obligations::mask::MaskRules;
use libfuzzer_sys::fuzz_target;

include!("../mask_chunks_case.rs");

fn rules() -> &'static Arc<MaskRules> {
    static RULES: OnceLock<Arc<MaskRules>> = OnceLock::new();
    RULES.get_or_init(|| Arc::new(mask_chunks_rules()))
}

fuzz_target!(|data: &[u8]| {
    let Some((out, whole)) = mask_chunks_case(rules(), data) else {
        return;
    };
    assert_eq!(out, whole, "chunking changed the result");
    assert!(!mask_chunks_card_survived(&out), "the card survived");
});
