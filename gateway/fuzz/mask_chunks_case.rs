// The `mask_chunks` property, shared with `include!` by the fuzz target and by the test in
// `gateway/tests/mask.rs` that replays the target's seeds (every input it ever failed on) in
// `cargo test`. Paths are written out: the including files import what they like.

/// The planted card number: one that survives masking is a failure.
const MASK_CHUNKS_CARD: &[u8] = b" 4111 1111 1111 1111 ";

/// The rules the property masks with: every detector, and three field paths.
fn mask_chunks_rules() -> callgate::obligations::mask::MaskRules {
    use callgate::obligations::mask::{Detector, MaskRules, MaskSpec};
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
    MaskRules::compile(&specs).expect("rules compile")
}

/// Masks one input whole and in the pieces it names: the first byte chooses the body kind
/// (even: JSON), the next eight the cut points, the rest is the body, with the card put in
/// its middle. Returns the chunked output and the whole one; `None` for an empty input.
fn mask_chunks_case(
    rules: &std::sync::Arc<callgate::obligations::mask::MaskRules>,
    data: &[u8],
) -> Option<(Vec<u8>, Vec<u8>)> {
    use callgate::obligations::mask::{BodyKind, BodyMasker, MaskKey};
    let (&mode, rest) = data.split_first()?;
    let (cuts, body) = rest.split_at(rest.len().min(8));
    let mid = body.len() / 2;
    let input = [&body[..mid], MASK_CHUNKS_CARD, &body[mid..]].concat();
    let kind = if mode & 1 == 0 {
        BodyKind::Json
    } else {
        BodyKind::Text
    };
    let key = MaskKey::from_bytes([7; 32]);
    let whole = BodyMasker::new(rules.clone(), key.clone(), kind).mask_all(&input);
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize * input.len() / 256)
        .collect();
    points.sort_unstable();
    let mut m = BodyMasker::new(rules.clone(), key, kind);
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        m.push(&input[last..p], &mut out);
        last = p;
    }
    m.push(&input[last..], &mut out);
    m.finish(&mut out);
    Some((out, whole))
}

/// The planted card's digits are in `out`.
fn mask_chunks_card_survived(out: &[u8]) -> bool {
    let digits = &MASK_CHUNKS_CARD[1..MASK_CHUNKS_CARD.len() - 1];
    out.windows(digits.len()).any(|w| w == digits)
}
