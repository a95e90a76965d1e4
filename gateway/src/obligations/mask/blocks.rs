//! JSON structure 64 bytes at a time: which bytes are quotes that open or close strings, which
//! are inside strings, and which are the structural characters `{}[]:,` outside them. The
//! JSON masker then visits only the structural characters instead of every byte (the first
//! stage of simdjson: SSE2 compares on x86_64, a byte loop elsewhere).

const EVEN_BITS: u64 = 0x5555_5555_5555_5555;

/// Bitmasks over one block; bit `i` is byte `i`.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    /// Bytes inside a string, opening quote included, closing quote excluded.
    pub in_string: u64,
    /// `{` `}` `[` `]` `:` outside strings.
    pub structural: u64,
    /// `,` outside strings (kept apart: only array-counting paths need them).
    pub comma: u64,
}

/// What carries from one block to the next.
#[derive(Debug, Clone, Copy, Default)]
pub struct Classifier {
    in_string: bool,
    /// The next block's first byte is escaped by a backslash run ending this block.
    escaped: bool,
}

impl Classifier {
    /// Classifies `b` (at most 64 bytes; a short block is padded with spaces, which change
    /// nothing, and the carry is taken at its true end).
    pub fn next(&mut self, b: &[u8]) -> Block {
        let raw = match b.try_into() {
            Ok(full) => Raw::of(full),
            Err(_) => {
                let mut padded = [b' '; 64];
                padded[..b.len()].copy_from_slice(b);
                Raw::of(&padded)
            }
        };
        let escaped = self.escaped_bits(raw.backslash, b.len());
        let quote = raw.quote & !escaped;
        let carry = if self.in_string { !0 } else { 0 };
        let in_string = prefix_xor(quote) ^ carry;
        self.in_string = in_string >> 63 == 1;
        Block {
            in_string,
            structural: raw.structural & !in_string,
            comma: raw.comma & !in_string,
        }
    }

    /// Bytes escaped by a preceding backslash (simdjson's odd-length-run trick); updates the
    /// carry into the next block, read at byte `len` for a short block.
    fn escaped_bits(&mut self, backslash: u64, len: usize) -> u64 {
        let carried = u64::from(self.escaped);
        if backslash == 0 {
            self.escaped = false;
            return carried;
        }
        let backslash = backslash & !carried;
        let follows = (backslash << 1) | carried;
        let odd_starts = backslash & !EVEN_BITS & !follows;
        let (even_runs, overflow) = odd_starts.overflowing_add(backslash);
        let escaped = (EVEN_BITS ^ (even_runs << 1)) & follows;
        self.escaped = if len < 64 {
            (escaped >> len) & 1 == 1
        } else {
            overflow
        };
        escaped
    }
}

/// Character classes before strings are known.
#[derive(Default)]
struct Raw {
    quote: u64,
    backslash: u64,
    structural: u64,
    comma: u64,
}

impl Raw {
    #[cfg(target_arch = "x86_64")]
    fn of(b: &[u8; 64]) -> Self {
        // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
        unsafe { Self::of_sse2(b) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn of_sse2(b: &[u8; 64]) -> Self {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8 as eq, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128 as or,
            _mm_set1_epi8 as splat,
        };
        let mut r = Self::default();
        for (k, lane) in b.chunks_exact(16).enumerate() {
            // SAFETY: `lane` is 16 readable bytes and `loadu` has no alignment requirement.
            let v = unsafe { _mm_loadu_si128(lane.as_ptr().cast()) };
            // `{` 7B `}` 7D and `[` 5B `]` 5D differ only in bit 0x20.
            let folded = or(v, splat(0x20));
            let structural = or(
                or(eq(folded, splat(b'{' as i8)), eq(folded, splat(b'}' as i8))),
                eq(v, splat(b':' as i8)),
            );
            let shift = 16 * k;
            let bits = |m| u64::from(_mm_movemask_epi8(m) as u16) << shift;
            r.quote |= bits(eq(v, splat(b'"' as i8)));
            r.backslash |= bits(eq(v, splat(b'\\' as i8)));
            r.structural |= bits(structural);
            r.comma |= bits(eq(v, splat(b',' as i8)));
        }
        r
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn of(b: &[u8; 64]) -> Self {
        let mut r = Self::default();
        for (i, &c) in b.iter().enumerate() {
            let bit = 1u64 << i;
            let bracket = matches!(c | 0x20, b'{' | b'}');
            r.quote |= bit * u64::from(c == b'"');
            r.backslash |= bit * u64::from(c == b'\\');
            r.structural |= bit * u64::from(bracket | (c == b':'));
            r.comma |= bit * u64::from(c == b',');
        }
        r
    }
}

/// Bit `i` of the result is the XOR of bits `0..=i`: 1 from an opening quote up to (not
/// including) its closing one.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte-at-a-time reference: (in_string, structural outside strings) per byte.
    fn reference(s: &[u8]) -> Vec<(bool, bool)> {
        let (mut in_str, mut esc) = (false, false);
        s.iter()
            .map(|&c| {
                if esc {
                    esc = false;
                    (true, false)
                } else if in_str {
                    match c {
                        b'"' => in_str = false,
                        b'\\' => esc = true,
                        _ => {}
                    }
                    (in_str, false)
                } else if c == b'"' {
                    in_str = true;
                    (true, false)
                } else {
                    (false, b"{}[]:".contains(&c))
                }
            })
            .collect()
    }

    fn classify(s: &[u8], cut: usize) -> Vec<(bool, bool)> {
        let mut c = Classifier::default();
        let mut out = Vec::new();
        let mut at = 0;
        // The first piece ends at `cut`, as a streaming caller may split anywhere.
        let mut ends: Vec<usize> = (cut.min(s.len())..=s.len()).step_by(64).collect();
        ends.insert(0, cut.min(s.len()));
        ends.push(s.len());
        for end in ends {
            while at < end {
                let n = (end - at).min(64);
                let b = c.next(&s[at..at + n]);
                for i in 0..n {
                    out.push((b.in_string >> i & 1 == 1, b.structural >> i & 1 == 1));
                }
                at += n;
            }
        }
        out
    }

    #[test]
    fn agrees_with_a_byte_at_a_time_lexer_at_every_split() {
        let doc = br#"{"a\"b": [1, {"c": "x\\"}, "\\\"}"], "d\\\\": ":{", "e": "\\\\\\"}"#;
        let long: Vec<u8> = doc
            .iter()
            .chain(b" ".repeat(70).iter())
            .chain(doc)
            .copied()
            .collect();
        for s in [&doc[..], &long[..]] {
            let want = reference(s);
            for cut in 0..=s.len() {
                assert_eq!(classify(s, cut), want, "cut at {cut}");
            }
        }
    }

    #[test]
    fn backslash_runs_across_blocks() {
        for pre in [0, 30, 61, 62, 63, 64] {
            for run in 1..=130 {
                let mut s = vec![b'"'];
                s.extend(std::iter::repeat_n(b'x', pre));
                s.extend(std::iter::repeat_n(b'\\', run));
                s.extend_from_slice(br#"" : {"a": "}"} ["#);
                let want = reference(&s);
                for cut in [0, pre, pre + 1, pre + run / 2, s.len()] {
                    assert_eq!(
                        classify(&s, cut),
                        want,
                        "{pre} then {run} backslashes, cut {cut}"
                    );
                }
            }
        }
    }
}
