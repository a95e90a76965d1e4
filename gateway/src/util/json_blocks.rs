//! JSON structure 64 bytes at a time: which bytes are quotes that open or close strings, which are
//! inside strings, and which are the structural characters `{}[]:,` outside them (the first stage
//! of simdjson: AVX2 or SSE2 compares on x86_64, a byte loop elsewhere). The JSON masker then
//! visits only the structural characters instead of every byte ([`Classifier`]), and the record's
//! validator only the tokens ([`Lexed`]).

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
    strings: Strings,
}

impl Classifier {
    /// Classifies `b` (at most 64 bytes; a short block is padded with spaces, which change
    /// nothing, and the carry is taken at its true end).
    pub fn next(&mut self, b: &[u8]) -> Block {
        let raw = match b.try_into() {
            Ok(full) => Lexed::structure(full),
            Err(_) => {
                let mut padded = [b' '; 64];
                padded[..b.len()].copy_from_slice(b);
                Lexed::structure(&padded)
            }
        };
        let in_string = self.strings.next(&raw, b.len()).inside;
        Block {
            in_string,
            structural: raw.structural & !raw.comma & !in_string,
            comma: raw.comma & !in_string,
        }
    }
}

/// Where the strings are, carried from block to block: the one place both the masker's
/// [`Classifier`] and the record's JSON check follow quotes and escapes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Strings {
    in_string: bool,
    escapes: Escapes,
}

/// One block's strings; bit `i` is byte `i`.
#[derive(Debug, Clone, Copy)]
pub struct StringBits {
    /// Bytes right after a backslash that escapes them.
    pub escaped: u64,
    /// Quotes that open or close a string (not escaped).
    pub quote: u64,
    /// Bytes inside a string, opening quote included, closing quote excluded.
    pub inside: u64,
}

impl Strings {
    /// The strings of a block classified as `lexed`, `len` bytes of it real (the rest padding
    /// that changes nothing); the carry is taken at its true end.
    pub fn next(&mut self, lexed: &Lexed, len: usize) -> StringBits {
        let escaped = self.escapes.next(lexed.backslash, len);
        let quote = lexed.quote & !escaped;
        let inside = prefix_xor(quote) ^ if self.in_string { !0 } else { 0 };
        self.in_string = inside >> 63 == 1;
        StringBits {
            escaped,
            quote,
            inside,
        }
    }

    /// The last block ended inside a string.
    pub fn open(&self) -> bool {
        self.in_string
    }
}

/// Which bytes a backslash escapes, carried from block to block.
#[derive(Debug, Clone, Copy, Default)]
struct Escapes {
    /// The next block's first byte is escaped by a backslash run ending this block.
    escaped: bool,
}

impl Escapes {
    /// Bytes escaped by a preceding backslash (simdjson's odd-length-run trick), given a
    /// block's backslashes; updates the carry into the next block, read at byte `len` for a
    /// short block.
    fn next(&mut self, backslash: u64, len: usize) -> u64 {
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

/// Character classes before strings are known: bit `i` is byte `i`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Lexed {
    pub quote: u64,
    pub backslash: u64,
    /// `{` `}` `[` `]` `:` `,`.
    pub structural: u64,
    /// `,` alone.
    pub comma: u64,
    /// The structural characters and JSON's whitespace (space, tab, line feed, carriage
    /// return): what ends a number or literal.
    pub separator: u64,
    /// Bytes below 0x20, which no string may hold unescaped.
    pub control: u64,
}

impl Lexed {
    #[cfg(target_arch = "x86_64")]
    pub fn of(b: &[u8; 64]) -> Self {
        // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
        unsafe { Self::of_sse2::<true>(b) }
    }

    /// Only the quotes, backslashes, structural characters and commas (what the masker's
    /// [`Classifier`] reads), with fewer compares; `separator` and `control` are left empty.
    #[cfg(target_arch = "x86_64")]
    pub fn structure(b: &[u8; 64]) -> Self {
        // SAFETY: as in `of`.
        unsafe { Self::of_sse2::<false>(b) }
    }

    /// With `ALL`, every class; without, `separator` and `control` stay empty.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn of_sse2<const ALL: bool>(b: &[u8; 64]) -> Self {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8 as eq, _mm_loadu_si128, _mm_min_epu8 as min, _mm_movemask_epi8,
            _mm_or_si128 as or, _mm_set1_epi8 as splat,
        };
        let mut r = Self::default();
        for (k, lane) in b.chunks_exact(16).enumerate() {
            // SAFETY: `lane` is 16 readable bytes and `loadu` has no alignment requirement.
            let v = unsafe { _mm_loadu_si128(lane.as_ptr().cast()) };
            // `{` 7B `}` 7D and `[` 5B `]` 5D differ only in bit 0x20.
            let folded = or(v, splat(0x20));
            let comma = eq(v, splat(b',' as i8));
            let structural = or(
                or(eq(folded, splat(b'{' as i8)), eq(folded, splat(b'}' as i8))),
                or(eq(v, splat(b':' as i8)), comma),
            );
            let shift = 16 * k;
            let bits = |m| u64::from(_mm_movemask_epi8(m) as u16) << shift;
            r.quote |= bits(eq(v, splat(b'"' as i8)));
            r.backslash |= bits(eq(v, splat(b'\\' as i8)));
            r.structural |= bits(structural);
            r.comma |= bits(comma);
            if ALL {
                let whitespace = or(
                    or(eq(v, splat(b' ' as i8)), eq(v, splat(b'\n' as i8))),
                    or(eq(v, splat(b'\t' as i8)), eq(v, splat(b'\r' as i8))),
                );
                // Unsigned `v <= 0x1f`: the minimum of the two is `v` itself.
                let control = eq(min(v, splat(0x1f)), v);
                r.separator |= bits(or(structural, whitespace));
                r.control |= bits(control);
            }
        }
        r
    }

    /// [`Lexed::of`] 32 bytes at a time, with structure and whitespace found by table lookups
    /// (simdjson's: `{}[]:,` and the four whitespace bytes each differ in their low nibble,
    /// once `[` `]` are folded onto `{` `}`).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    pub unsafe fn of_avx2(b: &[u8; 64]) -> Self {
        use std::arch::x86_64::{
            _mm256_andnot_si256 as andnot, _mm256_cmpeq_epi8 as eq, _mm256_loadu_si256,
            _mm256_min_epu8 as min, _mm256_movemask_epi8, _mm256_or_si256 as or,
            _mm256_set1_epi8 as splat, _mm256_setr_epi8, _mm256_shuffle_epi8 as lookup,
        };
        // By low nibble, the byte that nibble stands for, if any. A byte from 0x80 up looks up
        // 0, which it never equals; the fillers (100, 17, ...) sit at nibbles they lack.
        #[rustfmt::skip]
        let whitespace_table = _mm256_setr_epi8(
            b' ' as i8, 100, 100, 100, 17, 100, 113, 2, 100, b'\t' as i8, b'\n' as i8, 112, 100,
            b'\r' as i8, 100, 100,
            b' ' as i8, 100, 100, 100, 17, 100, 113, 2, 100, b'\t' as i8, b'\n' as i8, 112, 100,
            b'\r' as i8, 100, 100,
        );
        #[rustfmt::skip]
        let structural_table = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b':' as i8, b'{' as i8, b',' as i8, b'}' as i8, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b':' as i8, b'{' as i8, b',' as i8, b'}' as i8, 0, 0,
        );
        let mut r = Self::default();
        for (k, lane) in b.chunks_exact(32).enumerate() {
            // SAFETY: `lane` is 32 readable bytes and `loadu` has no alignment requirement.
            let v = unsafe { _mm256_loadu_si256(lane.as_ptr().cast()) };
            let whitespace = eq(v, lookup(whitespace_table, v));
            // Unsigned `v <= 0x1f`: the minimum of the two is `v` itself.
            let control = eq(min(v, splat(0x1f)), v);
            // `[` 5B `]` 5D become `{` 7B `}` 7D; `:` 3A and `,` 2C have 0x20 already, and so
            // would the control bytes 1A and 0C, which are not structural.
            let structural = andnot(control, eq(or(v, splat(0x20)), lookup(structural_table, v)));
            let comma = eq(v, splat(b',' as i8));
            let shift = 32 * k;
            let bits = |m| u64::from(_mm256_movemask_epi8(m) as u32) << shift;
            r.quote |= bits(eq(v, splat(b'"' as i8)));
            r.backslash |= bits(eq(v, splat(b'\\' as i8)));
            r.structural |= bits(structural);
            r.comma |= bits(comma);
            r.separator |= bits(or(structural, whitespace));
            r.control |= bits(control);
        }
        r
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn of(b: &[u8; 64]) -> Self {
        Self::of_bytes(b)
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn structure(b: &[u8; 64]) -> Self {
        Self::of_bytes(b)
    }

    /// A byte at a time: where there are no vector compares, and the tests' reference.
    #[cfg(any(test, not(target_arch = "x86_64")))]
    fn of_bytes(b: &[u8; 64]) -> Self {
        let mut r = Self::default();
        for (i, &c) in b.iter().enumerate() {
            let bit = 1u64 << i;
            r.quote |= bit * u64::from(c == b'"');
            r.backslash |= bit * u64::from(c == b'\\');
            let structural = matches!(c, b'{' | b'}' | b'[' | b']' | b':' | b',');
            let whitespace = matches!(c, b' ' | b'\t' | b'\n' | b'\r');
            r.structural |= bit * u64::from(structural);
            r.comma |= bit * u64::from(c == b',');
            r.separator |= bit * u64::from(structural | whitespace);
            r.control |= bit * u64::from(c < 0x20);
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

    /// Every byte value at every position of a block, in a block of every other kind of byte:
    /// each way of classifying finds the same classes as a byte at a time.
    #[test]
    fn every_lexer_classifies_every_byte_alike() {
        let fields = |l: Lexed| {
            let Lexed {
                quote,
                backslash,
                structural,
                comma,
                separator,
                control,
            } = l;
            (quote, backslash, structural, comma, separator, control)
        };
        for filler in [b'a', b' ', b'"', b'{', 0x01, 0xff] {
            for b in 0..=255u8 {
                for at in 0..64 {
                    let mut block = [filler; 64];
                    block[at] = b;
                    let want = fields(Lexed::of_bytes(&block));
                    assert_eq!(fields(Lexed::of(&block)), want, "{b:#x} at {at}");
                    let s = Lexed::structure(&block);
                    let (quote, backslash, structural, comma, ..) = want;
                    assert_eq!(
                        (s.quote, s.backslash, s.structural, s.comma),
                        (quote, backslash, structural, comma),
                        "{b:#x} at {at}"
                    );
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU has AVX2, as just checked.
                        let avx2 = unsafe { Lexed::of_avx2(&block) };
                        assert_eq!(fields(avx2), want, "{b:#x} at {at}");
                    }
                }
            }
        }
    }
}
