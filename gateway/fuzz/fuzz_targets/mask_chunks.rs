//! Masking a body that arrives in arbitrary chunks, as JSON and as text: never a panic, the
//! same output however it is cut, and a card number planted in it never survives.
//!
//! Input: the first byte chooses the body kind, the next eight the cut points, the rest is
//! the body (with a card number inserted in the middle).
#![no_main]
use std::sync::{Arc, OnceLock};

use callgate::{
    obligations::mask::{BodyKind, BodyMasker, Detector, MaskKey, MaskRules},
    obligations::mask::MaskSpec,
};
use libfuzzer_sys::fuzz_target;

fn rules() -> &'static Arc<MaskRules> {
    static RULES: OnceLock<Arc<MaskRules>> = OnceLock::new();
    RULES.get_or_init(|| {
        let mut specs: Vec<MaskSpec> = Detector::ALL
            .iter()
            .map(|d| MaskSpec::Detector(d.name().into()))
            .collect();
        for field in ["$.customer.ssn", "$..password", "$.items[*].token"] {
            specs.push(MaskSpec::Field {
                field: field.into(),
                style: None,
            });
        }
        Arc::new(MaskRules::compile(&specs).expect("rules compile"))
    })
}

const CARD: &[u8] = b" 4111 1111 1111 1111 ";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (cuts, body) = rest.split_at(rest.len().min(8));
    let mid = body.len() / 2;
    let input = [&body[..mid], CARD, &body[mid..]].concat();
    let kind = if mode & 1 == 0 { BodyKind::Json } else { BodyKind::Text };
    let key = MaskKey::from_bytes([7; 32]);
    let whole = BodyMasker::new(rules().clone(), key.clone(), kind).mask_all(&input);

    let mut points: Vec<usize> = cuts.iter().map(|&c| c as usize * input.len() / 256).collect();
    points.sort_unstable();
    let mut m = BodyMasker::new(rules().clone(), key, kind);
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        m.push(&input[last..p], &mut out);
        last = p;
    }
    m.push(&input[last..], &mut out);
    m.finish(&mut out);
    assert_eq!(out, whole, "chunking changed the result");
    assert!(
        !out.windows(CARD.len() - 2).any(|w| w == &CARD[1..CARD.len() - 1]),
        "the card survived"
    );
});
