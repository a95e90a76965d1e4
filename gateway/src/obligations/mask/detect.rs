//! Finding sensitive values in text: the built-in detectors, each with a validator that keeps
//! false positives low (Luhn, mod-97, SSN ranges, token shapes), plus custom regexes.
//!
//! Clean text must be skipped fast. Anchored detectors (tokens, keys, e-mail) are found with one
//! aho-corasick automaton and `memchr`; the digit-shaped ones (cards, SSNs, IBANs) in runs of
//! at least [`MIN_RUN`] bytes of `[0-9A-Z -]`, which are found 64 bytes at a time (a block's
//! bytes of that class as a bitmask, then shifts: `next_run`) so that text between them is
//! not read a byte at a time.
use aho_corasick::{AhoCorasick, Input, MatchKind};
use regex::bytes::Regex;

/// A built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    CardNumber,
    Email,
    Ssn,
    Iban,
    AwsAccessKey,
    SecretKey,
    GithubToken,
    SlackToken,
    Jwt,
    PrivateKey,
}

impl Detector {
    pub const ALL: [Detector; 10] = [
        Detector::CardNumber,
        Detector::Email,
        Detector::Ssn,
        Detector::Iban,
        Detector::AwsAccessKey,
        Detector::SecretKey,
        Detector::GithubToken,
        Detector::SlackToken,
        Detector::Jwt,
        Detector::PrivateKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Detector::CardNumber => "card_number",
            Detector::Email => "email",
            Detector::Ssn => "ssn",
            Detector::Iban => "iban",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::SecretKey => "secret_key",
            Detector::GithubToken => "github_token",
            Detector::SlackToken => "slack_token",
            Detector::Jwt => "jwt",
            Detector::PrivateKey => "private_key",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// What a hit is: a detector or the n-th custom regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Detector(Detector),
    Custom(usize),
}

/// One sensitive value at `start..end` of the scanned text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
    /// A private key whose END line is not in the text yet: everything after `start` is secret.
    pub open: bool,
    /// The value goes on past `end` (a streaming masker released it in pieces): render it
    /// without showing any of it, since its tail is not the value's tail.
    pub cut: bool,
    /// The value began before `start`, in a piece a streaming masker released already
    /// ([`Behind`] after a cut): its placeholder went out with that piece.
    pub rest: bool,
}

impl Hit {
    /// A value too long to hold ([`MAX_HELD_HIT`]): it may go out in pieces, cut wherever a
    /// streaming masker's chunks happened to end, so it is written the same way whole or in
    /// pieces (see `MaskRules::render_hit`).
    pub fn long(&self) -> bool {
        self.cut || self.rest || self.end - self.start > MAX_HELD_HIT
    }
}

/// Shortest digit-shaped match (an SSN, `ddd-dd-dddd`): the shortest run the run scan reads.
pub const MIN_RUN: usize = 11;
/// Longest value a streaming scan holds back waiting for its end (a JWT, a long token).
pub const MAX_TOKEN: usize = 16 * 1024;
/// Longest private-key block held back waiting for its END line.
pub const MAX_PEM: usize = 64 * 1024;
/// Custom regexes match within one line of at most this many bytes.
pub const MAX_LINE: usize = 4096;

const PEM_BEGIN: &[u8] = b"-----BEGIN ";
/// [`PEM_BEGIN`]'s searcher, built once.
static PEM_BEGIN_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(PEM_BEGIN));

/// Names whose value is a secret (`aws_secret_access_key = …`).
const SECRET_NAMES: [&str; 3] = [
    "aws_secret_access_key",
    "AWS_SECRET_ACCESS_KEY",
    "SecretAccessKey",
];
/// [`SECRET_NAMES`]' searchers, built once: `memmem::rfind` builds one per call, which cost a
/// small answer's streaming scan more than the search itself.
static SECRET_FINDERS: std::sync::LazyLock<[memchr::memmem::FinderRev<'static>; 3]> =
    std::sync::LazyLock::new(|| SECRET_NAMES.map(memchr::memmem::FinderRev::new));
/// The most bytes between a secret's name and its value: quotes, `=` or `:`, and the
/// whitespace JSON, YAML or an env file allows (a JSON key, a newline and an indent; a table
/// whose columns are aligned with spaces): 128 of them as a reader reads them, each up to six
/// bytes as the detectors see it, since an escape reads as spaces and the character it stands
/// for (`\u0009` as five spaces and a tab, see `unescape::View`). Counted in bytes, 22 escaped
/// tabs put a key out of reach that 22 plain ones did not (found in review).
const SECRET_SEPARATORS: usize = 128 * 6;
/// A secret's name, separators and 40-byte value fit in this many bytes.
const SECRET_NAME_WINDOW: usize = 21 + SECRET_SEPARATORS + 40;

/// Anchors of the token detectors. Order matters only for leftmost-longest ties.
const ANCHORS: &[(&str, Detector)] = &[
    ("AKIA", Detector::AwsAccessKey),
    ("ASIA", Detector::AwsAccessKey),
    ("AGPA", Detector::AwsAccessKey),
    ("AIDA", Detector::AwsAccessKey),
    ("AROA", Detector::AwsAccessKey),
    ("ANPA", Detector::AwsAccessKey),
    ("ANVA", Detector::AwsAccessKey),
    ("AIPA", Detector::AwsAccessKey),
    ("sk_live_", Detector::SecretKey),
    ("sk_test_", Detector::SecretKey),
    ("rk_live_", Detector::SecretKey),
    ("rk_test_", Detector::SecretKey),
    ("sk-", Detector::SecretKey),
    ("AIza", Detector::SecretKey),
    ("aws_secret_access_key", Detector::SecretKey),
    ("AWS_SECRET_ACCESS_KEY", Detector::SecretKey),
    ("SecretAccessKey", Detector::SecretKey),
    ("ghp_", Detector::GithubToken),
    ("gho_", Detector::GithubToken),
    ("ghu_", Detector::GithubToken),
    ("ghs_", Detector::GithubToken),
    ("ghr_", Detector::GithubToken),
    ("github_pat_", Detector::GithubToken),
    ("xoxb-", Detector::SlackToken),
    ("xoxp-", Detector::SlackToken),
    ("xoxa-", Detector::SlackToken),
    ("xoxr-", Detector::SlackToken),
    ("xoxs-", Detector::SlackToken),
    ("xapp-", Detector::SlackToken),
    ("eyJ", Detector::Jwt),
    ("-----BEGIN ", Detector::PrivateKey),
];

/// The detectors and regexes of one mask list, ready to scan with. Immutable and shared.
#[derive(Debug, Default)]
pub struct Scanner {
    enabled: u16,
    /// The detectors whose hits [`Scanner::scan_split`] sorts into its first list (all of
    /// `enabled` for a scanner made by [`Scanner::new`]).
    primary: u16,
    anchors: Option<(AhoCorasick, Vec<(usize, Detector)>)>,
    custom: Vec<Regex>,
}

impl Scanner {
    pub fn new(detectors: &[Detector], custom: Vec<Regex>) -> Self {
        let enabled = detectors.iter().fold(0, |m, d| m | d.bit());
        let wanted: Vec<(usize, &str, Detector)> = ANCHORS
            .iter()
            .filter(|(_, d)| enabled & d.bit() != 0)
            .map(|(a, d)| (a.len(), *a, *d))
            .collect();
        let anchors = (!wanted.is_empty()).then(|| {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(wanted.iter().map(|w| w.1))
                .expect("built-in anchors are valid literals");
            (ac, wanted.iter().map(|w| (w.0, w.2)).collect())
        });
        Self {
            enabled,
            primary: enabled,
            anchors,
            custom,
        }
    }

    /// One scanner for two lists: `primary`'s detectors and `custom` (a policy's masks) and
    /// every other built-in detector (what a record masks beyond them), scanned together by
    /// [`Scanner::scan_split`].
    pub fn split(primary: &[Detector], custom: Vec<Regex>) -> Self {
        let mut s = Self::new(&Detector::ALL, custom);
        s.primary = primary.iter().fold(0, |m, d| m | d.bit());
        s
    }

    pub fn is_empty(&self) -> bool {
        self.enabled == 0 && self.custom.is_empty()
    }

    fn on(&self, d: Detector) -> bool {
        self.enabled & d.bit() != 0
    }

    fn digit_shaped(&self) -> bool {
        self.enabled & (Detector::CardNumber.bit() | Detector::Ssn.bit() | Detector::Iban.bit())
            != 0
    }

    pub fn has_custom(&self) -> bool {
        !self.custom.is_empty()
    }

    /// Appends the hits in `t`, sorted, overlapping ones merged (the earlier one names it).
    pub fn scan(&self, t: &[u8], out: &mut Vec<Hit>) {
        self.scan_in(t, Within::Text, out);
    }

    /// [`Scanner::scan`] of text `within` a kind of document.
    pub fn scan_in(&self, t: &[u8], within: Within, out: &mut Vec<Hit>) {
        let first = out.len();
        self.find(t, within, out);
        merge(out, first);
    }

    /// [`Scanner::scan`] for a scanner made by [`Scanner::split`]: the primary detectors' and
    /// custom hits to `out`, exactly as a scanner of those alone finds them, and the other
    /// detectors' to `other`, each list sorted and merged on its own. The text is read once.
    pub fn scan_split(&self, t: &[u8], within: Within, out: &mut Vec<Hit>, other: &mut Vec<Hit>) {
        let first = out.len();
        let first_other = other.len();
        self.find(t, within, out);
        // Found in order of detector, not position: move the others' out, keeping order.
        let mut keep = first;
        for i in first..out.len() {
            let h = out[i];
            if self.is_primary(h.kind) {
                out[keep] = h;
                keep += 1;
            } else {
                other.push(h);
            }
        }
        out.truncate(keep);
        merge(out, first);
        merge(other, first_other);
    }

    /// Whether any of `parts` could hold a value: `false` only if a scan of each part on its
    /// own finds nothing. One scan over the parts joined by NUL bytes, instead of one per part
    /// (a record's short names: each scan's fixed cost is most of its work).
    ///
    /// Sound for the built-in detectors because each reads past a value's ends only to test
    /// a byte against a class NUL is in none of (word, alphanumeric, `[0-9A-Z -]`, an
    /// e-mail's or a token's bytes, `.` after a JWT, the blanks before a named secret): a NUL
    /// is read as the end of the text is. The exception is a private key's label, read up to
    /// 64 bytes ahead, so a join holding `-----BEGIN ` answers `true`; and custom regexes,
    /// which can anchor (`^`, `$`), are scanned part by part. The join finding more than the
    /// parts (a value across two parts) only answers `true`, which costs a scan per part.
    pub fn finds_in_any(&self, parts: &[&str]) -> bool {
        if self
            .custom
            .iter()
            .any(|re| parts.iter().any(|p| re.is_match(p.as_bytes())))
        {
            return true;
        }
        let mut joined = smallvec::SmallVec::<[u8; 512]>::new();
        for p in parts {
            joined.extend_from_slice(p.as_bytes());
            joined.push(0);
        }
        let mut hits = Vec::new();
        self.find(&joined, Within::Text, &mut hits);
        !hits.is_empty()
            || (self.on(Detector::PrivateKey) && PEM_BEGIN_FINDER.find(&joined).is_some())
    }

    fn is_primary(&self, kind: Kind) -> bool {
        match kind {
            Kind::Detector(d) => self.primary & d.bit() != 0,
            Kind::Custom(_) => true,
        }
    }

    /// Every detector's hits, unsorted.
    fn find(&self, t: &[u8], within: Within, out: &mut Vec<Hit>) {
        if self.on(Detector::Email) {
            for at in memchr::memchr_iter(b'@', t) {
                if let Some((s, e)) = email(t, at, 1) {
                    out.push(hit(s, e, Kind::Detector(Detector::Email)));
                }
            }
            // Percent-encoded, as a URL or a form writes one (`Location: /users/alice%40…`,
            // Python's `quote`, Express's cookies): what a client decodes is the address.
            for at in memchr::memmem::find_iter(t, b"%40") {
                if let Some((s, e)) = email(t, at, 3) {
                    out.push(hit(s, e, Kind::Detector(Detector::Email)));
                }
            }
        }
        // No token detector's value is shorter than a private key's `-----BEGIN ` (an open
        // one, its label still to come): a shorter text (a record's names: a session, a rule,
        // a function) skips the automaton, whose set-up costs more than such a text's scan.
        if let Some((ac, kinds)) = &self.anchors
            && t.len() >= PEM_BEGIN.len()
        {
            let mut pos = 0;
            // Per pattern: anchors before this are known to fail (see `token`).
            let mut dead = [0usize; ANCHORS.len()];
            while let Some(m) = ac.find(Input::new(t).span(pos..t.len())) {
                let pattern = m.pattern().as_usize();
                let (len, d) = kinds[pattern];
                pos = m.start() + 1;
                if m.start() < dead[pattern] {
                    continue;
                }
                match token(t, m.start(), len, d, within) {
                    Ok(h) => {
                        // Past a primary hit, as a scanner of the primary detectors alone
                        // goes on; inside another one, whose anchors it would not have seen,
                        // a primary value may still start.
                        if self.primary & d.bit() != 0 {
                            pos = h.end.max(pos);
                        }
                        out.push(h);
                    }
                    Err(skip) => dead[pattern] = skip,
                }
            }
        }
        if self.digit_shaped() {
            self.runs(t, out);
        }
        for (i, re) in self.custom.iter().enumerate() {
            for m in re.find_iter(t) {
                if !m.is_empty() {
                    out.push(hit(m.start(), m.end(), Kind::Custom(i)));
                }
            }
        }
    }
}

/// Sorts `out[first..]` and merges overlapping hits into one.
fn merge(out: &mut Vec<Hit>, first: usize) {
    {
        let hits = &mut out[first..];
        if hits.len() > 1 {
            hits.sort_unstable_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
            // Overlapping hits become one: dropping the later one would leave the part of
            // it past the earlier one's end (a card after a token's last digits) in view.
            let mut keep = first;
            let mut end = 0;
            for i in first..out.len() {
                let h = out[i];
                if h.start >= end || i == first {
                    end = h.end;
                    out[keep] = h;
                    keep += 1;
                } else if h.end > end {
                    end = h.end;
                    out[keep - 1].end = end;
                    out[keep - 1].open |= h.open;
                }
            }
            out.truncate(keep);
        }
    }
}

impl Scanner {
    /// The run scan for card numbers, SSNs and IBANs: each run of at least [`MIN_RUN`] bytes
    /// of `[0-9A-Z -]`, analysed.
    fn runs(&self, t: &[u8], out: &mut Vec<Hit>) {
        let n = t.len();
        // Set up once per scan, not per run: timestamps and ids make runs common. And only at
        // the first run: the table is 3 KiB, and most texts (names, words) hold no run.
        let mut groups: Option<Groups> = None;
        let mut i = 0;
        while let Some(s) = next_run(t, i) {
            // `s` is the first place from `i` where MIN_RUN run bytes follow, so the byte
            // before it (if it is past `i`) is not one: the run starts there.
            let mut e = s + MIN_RUN;
            while e < n && RUN[t[e] as usize] != 0 {
                e += 1;
            }
            // A closure: `get_or_insert` would build (zero) the table at every run.
            #[allow(clippy::unnecessary_lazy_evaluations)]
            let groups = groups.get_or_insert_with(|| [(0, 0, false, false); RUN_GROUPS]);
            self.analyze_run(t, s, e, groups, out);
            i = e + 1;
        }
    }

    /// Finds values in the run `t[s..e]`, split into groups of digits or capitals. A run of
    /// more groups than fit at once is taken in overlapping windows, so a value after a long
    /// run of initials or digits is still seen.
    fn analyze_run(&self, t: &[u8], s: usize, e: usize, groups: &mut Groups, out: &mut Vec<Hit>) {
        let groups = &mut groups[..];
        let mut i = s;
        loop {
            let mut n = 0;
            while i < e && n < groups.len() {
                let c = t[i];
                if c == b' ' || c == b'-' {
                    i += 1;
                    continue;
                }
                let digit = c.is_ascii_digit();
                let start = i;
                while i < e && t[i].is_ascii_digit() == digit && t[i] != b' ' && t[i] != b'-' {
                    i += 1;
                }
                let joined = n > 0 && start - groups[n - 1].1 as usize == 1;
                groups[n] = (start as u32, i as u32, digit, joined);
                n += 1;
            }
            self.analyze_groups(t, &groups[..n], out);
            if i >= e {
                return;
            }
            // Every value spans fewer than RUN_OVERLAP groups, so one cut off at the window's
            // end lies whole in the next.
            i = groups[n - RUN_OVERLAP].0 as usize;
        }
    }

    fn analyze_groups(&self, t: &[u8], groups: &[(u32, u32, bool, bool)], out: &mut Vec<Hit>) {
        if self.on(Detector::CardNumber) {
            cards(t, groups, out);
        }
        if self.on(Detector::Ssn) {
            for k in 0..groups.len() {
                if let Some(h) = ssn(t, groups, k) {
                    out.push(h);
                }
            }
        }
        if self.on(Detector::Iban) {
            for (k, g) in groups.iter().enumerate() {
                if let Some(h) = iban(t, groups, k, g) {
                    out.push(h);
                }
            }
        }
    }
}

/// Groups analysed at once, and how many the next window repeats: more than the groups of
/// the longest value (an IBAN: 34 characters, a card: 19 digits).
const RUN_GROUPS: usize = 256;
const RUN_OVERLAP: usize = 40;
/// (start, end, digits, joined): `joined` says a single space or dash separates the group
/// from the previous one.
type Groups = [(u32, u32, bool, bool); RUN_GROUPS];

fn hit(start: usize, end: usize, kind: Kind) -> Hit {
    Hit {
        start,
        end,
        kind,
        open: false,
        cut: false,
        rest: false,
    }
}

/// `[0-9A-Z -]`: the bytes a card number, SSN or IBAN is made of.
static RUN: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = 1;
        c += 1;
    }
    c = b'A';
    while c <= b'Z' {
        t[c as usize] = 1;
        c += 1;
    }
    t[b' ' as usize] = 1;
    t[b'-' as usize] = 1;
    t
};

/// The first `p >= from` where `t[p..p + MIN_RUN]` are all [`RUN`] bytes, found 64 bytes at a
/// time: each block's run bytes as a bitmask ([`run_bits`]), then the places where MIN_RUN of
/// them follow one another by shifts. Blocks overlap by MIN_RUN − 1 bytes, so every place is
/// tested in a block that holds its whole window. (The byte-at-a-time stride this replaced
/// stopped at every space, digit and capital: an embeddings answer's floats masked at 0.98
/// GB/s with it, 3.6 GB/s with this.)
fn next_run(t: &[u8], from: usize) -> Option<usize> {
    const STEP: usize = 64 - (MIN_RUN - 1);
    let mut base = from;
    while base + MIN_RUN <= t.len() {
        let bits = match t.get(base..base + 64).map(<&[u8; 64]>::try_from) {
            Some(Ok(block)) => run_bits(block),
            // The last bytes: fewer than 64, read one at a time.
            _ => run_bits_bytes(&t[base..]),
        };
        let starts = runs_of_min_run(bits);
        if starts != 0 {
            return Some(base + starts.trailing_zeros() as usize);
        }
        base += STEP;
    }
    None
}

/// Bit `i` set where bits `i..i + MIN_RUN` of `bits` all are (none within MIN_RUN − 1 of the
/// top, whose windows run past the block).
fn runs_of_min_run(bits: u64) -> u64 {
    const _: () = assert!(MIN_RUN == 11, "the shifts below make runs of 11");
    let two = bits & (bits >> 1);
    let four = two & (two >> 2);
    let eight = four & (four >> 4);
    // Eight from `i`, four from `i + 7`: `i..i + 11`.
    eight & (four >> 7)
}

/// The [`RUN`] bytes of a block as a bitmask; bit `i` is byte `i`.
#[cfg(target_arch = "x86_64")]
fn run_bits(b: &[u8; 64]) -> u64 {
    // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has it.
    unsafe { run_bits_sse2(b) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn run_bits_sse2(b: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8 as eq, _mm_loadu_si128, _mm_min_epu8 as min, _mm_movemask_epi8,
        _mm_or_si128 as or, _mm_set1_epi8 as splat, _mm_sub_epi8 as sub,
    };
    // Unsigned `v - lo < count` (wrapping): the minimum of it and `count - 1` is itself.
    let within = |v, lo: u8, count: u8| {
        let d = sub(v, splat(lo as i8));
        eq(min(d, splat((count - 1) as i8)), d)
    };
    let mut bits = 0;
    for (k, lane) in b.chunks_exact(16).enumerate() {
        // SAFETY: `lane` is 16 readable bytes and `loadu` has no alignment requirement.
        let v = unsafe { _mm_loadu_si128(lane.as_ptr().cast()) };
        let run = or(
            or(within(v, b'0', 10), within(v, b'A', 26)),
            or(eq(v, splat(b' ' as i8)), eq(v, splat(b'-' as i8))),
        );
        bits |= u64::from(_mm_movemask_epi8(run) as u16) << (16 * k);
    }
    bits
}

#[cfg(not(target_arch = "x86_64"))]
fn run_bits(b: &[u8; 64]) -> u64 {
    run_bits_bytes(b)
}

/// The [`RUN`] bytes of the first 64 of `b` (or fewer) a byte at a time: a text's last bytes,
/// a block where there are no vector compares, and the tests' reference.
fn run_bits_bytes(b: &[u8]) -> u64 {
    b.iter()
        .take(64)
        .enumerate()
        .fold(0, |m, (i, &c)| m | u64::from(RUN[c as usize]) << i)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// No letter or digit right before `s` or right at `e`: a value stands alone in the text.
/// Lowercase letters break a run without making a group, so the groups alone cannot tell
/// that `b502-5351742467be` (the tail of a UUID) is one token and not a card number.
fn stands_alone(t: &[u8], s: usize, e: usize) -> bool {
    starts_alone(t, s) && t.get(e).is_none_or(|c| !c.is_ascii_alphanumeric())
}

fn starts_alone(t: &[u8], s: usize) -> bool {
    s == 0 || !t[s - 1].is_ascii_alphanumeric()
}

/// Card numbers among digit groups. Where groups joined by single spaces allow several
/// readings (`2222222220 4111 1111 1111 1111`), every start is tried and overlapping matches
/// are masked as one: taking only the first reading would leave most of another card in view.
fn cards(t: &[u8], groups: &[(u32, u32, bool, bool)], out: &mut Vec<Hit>) {
    let mut open: Option<(u32, u32)> = None;
    for j in 0..groups.len() {
        let g = groups[j];
        // A card starts a digit group that is not glued to a letter before it.
        if !g.2 || (j > 0 && groups[j - 1].1 == g.0) {
            continue;
        }
        // A card network issues numbers starting 2–6.
        if !(b'2'..=b'6').contains(&t[g.0 as usize]) {
            continue;
        }
        // Most digit runs are dates, times and ids: a chain of joined digit groups shorter
        // than any card is not summed at all.
        if chain_digits(groups, j) < 13 {
            continue;
        }
        let mut digits = 0;
        let mut best = None;
        let mut k = j;
        // Luhn sums of the digits so far, kept for both parities of the last digit, so each
        // longer reading costs its new digits only: overlapping readings (`4 4 4 …`) would
        // otherwise sum each digit once per reading it is part of.
        let mut luhn = Luhn::default();
        while k < groups.len() && groups[k].2 && (k == j || groups[k].3) {
            digits += (groups[k].1 - groups[k].0) as usize;
            if digits > 19 {
                break;
            }
            for &c in &t[groups[k].0 as usize..groups[k].1 as usize] {
                luhn.push(c);
            }
            let glued_after = groups.get(k + 1).is_some_and(|n| n.0 == groups[k].1);
            if digits >= 13
                && !glued_after
                && luhn.valid()
                && stands_alone(t, g.0 as usize, groups[k].1 as usize)
            {
                best = Some(groups[k].1);
            }
            k += 1;
        }
        let Some(end) = best else { continue };
        open = match open {
            Some((s, e)) if g.0 < e => Some((s, e.max(end))),
            Some((s, e)) => {
                out.push(hit(
                    s as usize,
                    e as usize,
                    Kind::Detector(Detector::CardNumber),
                ));
                Some((g.0, end))
            }
            None => Some((g.0, end)),
        };
    }
    if let Some((s, e)) = open {
        out.push(hit(
            s as usize,
            e as usize,
            Kind::Detector(Detector::CardNumber),
        ));
    }
}

/// How many digits the chain of digit groups from `groups[j]` holds: the groups joined to it
/// by a single space or dash, up to the first that is not digits or not joined (what
/// [`cards`] reads as one number), counted up to 20 (more than any card).
fn chain_digits(groups: &[(u32, u32, bool, bool)], j: usize) -> usize {
    let mut digits = 0;
    for (k, g) in groups.iter().enumerate().skip(j) {
        if !g.2 || (k > j && !g.3) || digits > 19 {
            break;
        }
        digits += (g.1 - g.0) as usize;
    }
    digits
}

/// The Luhn check over digits added from the left. The rightmost digit is never doubled, so
/// which ones are depends on how many follow: `now` is the sum with the digits doubled that a
/// number ending here doubles, `next` the other one, which becomes `now` when a digit comes.
/// (Two registers, where an array indexed by the count's parity was a store and a load per
/// digit, each waiting for the last: an eighth of the masker's time on API JSON's dates.)
#[derive(Default)]
struct Luhn {
    now: u32,
    next: u32,
}

/// A digit's value doubled, its digits summed, as Luhn counts a doubled digit.
const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];

impl Luhn {
    fn push(&mut self, c: u8) {
        let d = usize::from(c - b'0');
        // The new digit is the rightmost: not doubled in the number ending here, doubled in
        // one a digit longer.
        (self.now, self.next) = (self.next + d as u32, self.now + DOUBLED[d]);
    }

    fn valid(&self) -> bool {
        self.now.is_multiple_of(10)
    }
}

/// `ddd-dd-dddd` at groups `k..k+3`, standing alone, with the ranges the SSA never issues
/// left out.
fn ssn(t: &[u8], groups: &[(u32, u32, bool, bool)], k: usize) -> Option<Hit> {
    let w = groups.get(k..k + 3)?;
    let shape = w.iter().map(|g| g.1 - g.0).eq([3, 2, 4]);
    if !shape || !w.iter().all(|g| g.2) || !w[1].3 || !w[2].3 {
        return None;
    }
    let (s, e) = (w[0].0 as usize, w[2].1 as usize);
    if t[s + 3] != b'-' || t[s + 6] != b'-' || !stands_alone(t, s, e) {
        return None;
    }
    // Not part of a longer digit sequence (a card written 3-2-4-…).
    let touches = |g: &(u32, u32, bool, bool), joined: bool| g.2 && joined;
    if k > 0 && touches(&groups[k - 1], w[0].3 || groups[k - 1].1 == w[0].0) {
        return None;
    }
    if groups
        .get(k + 3)
        .is_some_and(|n| touches(n, n.3 || n.0 == w[2].1))
    {
        return None;
    }
    let area = &t[s..s + 3];
    let valid = area != b"000"
        && area != b"666"
        && area[0] != b'9'
        && &t[s + 4..s + 6] != b"00"
        && &t[s + 7..e] != b"0000";
    valid.then(|| hit(s, e, Kind::Detector(Detector::Ssn)))
}

fn iban(
    t: &[u8],
    groups: &[(u32, u32, bool, bool)],
    k: usize,
    g: &(u32, u32, bool, bool),
) -> Option<Hit> {
    // A two-capital country code at a boundary, glued to at least two check digits.
    if g.2 || g.1 - g.0 != 2 || (k > 0 && groups[k - 1].1 == g.0) {
        return None;
    }
    if !starts_alone(t, g.0 as usize) {
        return None;
    }
    let next = groups.get(k + 1)?;
    if !next.2 || next.0 != g.1 || next.1 - next.0 < 2 {
        return None;
    }
    // Alphanumerics from the country code on, allowing single spaces between groups; try
    // the longest first, shortening at group ends (the text may go on with capitals).
    let s = g.0 as usize;
    // On the stack: a run of `GB82 GB82 …` is a candidate every five bytes.
    let (mut alnum_buf, mut ends_buf) = ([0u8; 34], [0usize; 34]);
    let mut n = 0;
    let mut i = s;
    while i < t.len() && n < 34 {
        let c = t[i];
        if c.is_ascii_digit() || c.is_ascii_uppercase() {
            alnum_buf[n] = c;
            ends_buf[n] = i + 1;
            n += 1;
            i += 1;
        } else if c == b' ' && i + 1 < t.len() && t[i + 1].is_ascii_alphanumeric() {
            i += 1;
        } else {
            break;
        }
    }
    let (alnum, ends) = (&alnum_buf[..n], &ends_buf[..n]);
    let spaced = ends.windows(2).any(|w| w[1] - w[0] > 1);
    if alnum.len() < 15 || matches!(&alnum[2..4], b"00" | b"01" | b"99") {
        return None;
    }
    // mod-97 of the BBAN's prefixes, each from the one before: every candidate length then
    // costs its four moved characters, not a pass over all of it.
    let mut prefix = [0u32; 35];
    let mut r = 0;
    for (i, &c) in alnum.iter().enumerate().skip(4) {
        r = mod97_step(r, c);
        prefix[i + 1] = r;
    }
    for len in (15..=alnum.len()).rev() {
        let end = ends[len - 1];
        let boundary = t.get(end).is_none_or(|&c| !c.is_ascii_alphanumeric());
        let valid = || {
            alnum[..4]
                .iter()
                .fold(prefix[len], |r, &c| mod97_step(r, c))
                == 1
        };
        if (boundary || (spaced && t[end] == b' ')) && valid() {
            return Some(hit(s, end, Kind::Detector(Detector::Iban)));
        }
        if !spaced && len < alnum.len() {
            // Compact IBANs run to a boundary; a shorter prefix is not one.
            break;
        }
    }
    None
}

/// One character more of a number being reduced mod 97: a digit, or a letter as two digits
/// (`A` = 10 … `Z` = 35).
fn mod97_step(r: u32, c: u8) -> u32 {
    if c.is_ascii_digit() {
        (r * 10 + u32::from(c - b'0')) % 97
    } else {
        (r * 100 + u32::from(c - b'A') + 10) % 97
    }
}

/// The address around the `@` spelled in the `width` bytes at `at` (`@`, or `%40`).
fn email(t: &[u8], at: usize, width: usize) -> Option<(usize, usize)> {
    let local = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let domain = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    let mut s = at;
    while s > 0 && at - s < 64 && local(t[s - 1]) {
        s -= 1;
    }
    let from = at + width;
    let mut e = from;
    while e < t.len() && e - at < 254 && domain(t[e]) {
        e += 1;
    }
    // A sentence can end right after the address.
    while e > from && (t[e - 1] == b'.' || t[e - 1] == b'-') {
        e -= 1;
    }
    let dom = t.get(from..e)?;
    let dot = memchr::memrchr(b'.', dom)?;
    let tld = &dom[dot + 1..];
    (s < at && dot > 0 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic))
        .then_some((s, e))
}

/// Validates a token detector's anchor at `s` and returns its extent, or where the next
/// anchor of the same pattern is worth trying: one inside the same run of token bytes ends
/// where this one did and fails the same way, so `sk-sk-sk-…` costs one pass, not one pass
/// per anchor.
fn token(t: &[u8], s: usize, anchor: usize, d: Detector, within: Within) -> Result<Hit, usize> {
    let next = s + 1;
    if d != Detector::PrivateKey && s > 0 && is_word(t[s - 1]) {
        return Err(next);
    }
    // A token's run stops before a PEM line's `-----BEGIN ` (no token holds its space):
    // taken into a run of `-`-bearing token bytes (a JWT, `sk-…`), a private key right after
    // one was not seen.
    let run = |from: usize, ok: fn(u8) -> bool| {
        let mut e = from;
        while e < t.len()
            && ok(t[e])
            && e - s < MAX_TOKEN
            && (t[e] != b'-' || !t[e..].starts_with(PEM_BEGIN))
        {
            e += 1;
        }
        e
    };
    // Where anchors inside the run `..e` of `ok` bytes stop failing like this one: at its
    // end, or, if the run outgrew MAX_TOKEN, where an anchor's run no longer would.
    let skip = |e: usize, ok: fn(u8) -> bool| {
        if e - s < MAX_TOKEN {
            return e.max(next);
        }
        let mut r = e;
        while r < t.len() && ok(t[r]) {
            r += 1;
        }
        (r + 1).saturating_sub(MAX_TOKEN).max(next)
    };
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    let b64url = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let body = s + anchor;
    let found = |ok: fn(u8) -> bool, min: usize| {
        let e = run(body, ok);
        (e - body >= min && t.get(e).is_none_or(|&c| !is_word(c)))
            .then(|| hit(s, e, Kind::Detector(d)))
            .ok_or_else(|| skip(e, ok))
    };
    match d {
        Detector::AwsAccessKey => {
            // Exactly 16 characters: looking at a 17th is enough to refuse.
            let upper = |c: u8| c.is_ascii_uppercase() || c.is_ascii_digit();
            let mut e = body;
            while e < t.len() && upper(t[e]) && e - body <= 16 {
                e += 1;
            }
            (e - body == 16 && t.get(e).is_none_or(|&c| !is_word(c)))
                .then(|| hit(s, e, Kind::Detector(d)))
                .ok_or(next)
        }
        Detector::SecretKey
            if t[s..body].ends_with(b"_key")
                || t[s..body].ends_with(b"_KEY")
                || t[s..body] == *b"SecretAccessKey" =>
        {
            // `aws_secret_access_key = "…"`: the value after the name is the secret.
            let mut v = body;
            while v < t.len() && v - body < SECRET_SEPARATORS && b" \t\r\n:=\"'".contains(&t[v]) {
                v += 1;
            }
            let e = run(v, |c| c.is_ascii_alphanumeric() || c == b'/' || c == b'+');
            (e - v == 40)
                .then(|| hit(v, e, Kind::Detector(d)))
                .ok_or(next)
        }
        Detector::SecretKey if &t[s..body] == b"AIza" => found(b64url, 35),
        Detector::SecretKey if &t[s..body] == b"sk-" => found(b64url, 20),
        Detector::SecretKey => found(alnum, 16),
        Detector::GithubToken if anchor == "github_pat_".len() => {
            found(|c| c.is_ascii_alphanumeric() || c == b'_', 22)
        }
        Detector::GithubToken => found(alnum, 36),
        Detector::SlackToken => found(|c| c.is_ascii_alphanumeric() || c == b'-', 10),
        Detector::Jwt => {
            // Anchors inside the header run share its end and everything after it.
            let h = run(body, b64url);
            let fail = skip(h, b64url);
            if h - s < 10 || t.get(h) != Some(&b'.') {
                return Err(fail);
            }
            let p = run(h + 1, b64url);
            if p - h - 1 < 10 || t.get(p) != Some(&b'.') {
                return Err(fail);
            }
            let e = run(p + 1, b64url);
            t.get(e)
                .is_none_or(|&c| !is_word(c) && c != b'.')
                .then(|| hit(s, e, Kind::Detector(d)))
                .ok_or(fail)
        }
        Detector::PrivateKey => pem(t, s, within).ok_or(next),
        _ => Err(next),
    }
}

/// Where a scanned text sits, which decides where a private key can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Within {
    #[default]
    /// Any text (`text/*`, XML, HTML, source code): a key ends at its END line, whatever
    /// quotes the text it is written in puts between its lines (`"MIIE…\n" +`, `<td class="…">`).
    Text,
    /// A JSON document, read through its escapes: a key is inside one string and ends with
    /// it, at its closing quote (a key's own text never holds one). Without this a string
    /// holding a BEGIN line alone made the rest of the document one unfinished key, and no
    /// other value in it was looked for.
    Json,
}

/// The longest END line label (`ENCRYPTED PRIVATE KEY` and the like) before its `-----`.
const PEM_END_LABEL: usize = 64;

/// `-----BEGIN … PRIVATE KEY-----` through its END line (and in JSON no further than its
/// string's end); `open` if the END line has not come or is still arriving.
fn pem(t: &[u8], s: usize, within: Within) -> Option<Hit> {
    let key = |e| Some(hit(s, e, Kind::Detector(Detector::PrivateKey)));
    let open = |e| {
        Some(Hit {
            open: true,
            ..hit(s, e, Kind::Detector(Detector::PrivateKey))
        })
    };
    let label_start = s + PEM_BEGIN.len();
    let rest = &t[label_start..t.len().min(label_start + 64)];
    let Some(close) = memchr::memmem::find(rest, b"-----") else {
        // The label is still arriving: it may yet say PRIVATE KEY.
        return if label_start + 64 > t.len() {
            open(t.len())
        } else {
            None
        };
    };
    if !rest[..close].ends_with(b"PRIVATE KEY") {
        return None;
    }
    let body = label_start + close + 5;
    let limit = t.len().min(s + MAX_PEM);
    let quote = match within {
        Within::Json => memchr::memchr(b'"', &t[body..limit]).map(|q| body + q),
        Within::Text => None,
    };
    let limit = quote.unwrap_or(limit);
    let Some(end) = memchr::memmem::find(&t[body..limit], b"-----END ") else {
        return if quote.is_some() {
            key(limit)
        } else {
            open(limit)
        };
    };
    match pem_end_line(&t[..limit], body + end + 9) {
        Some(e) => key(e),
        None if quote.is_some() => key(limit),
        None => open(limit),
    }
}

/// Where a private key ends whose `-----END ` line's label starts at `after`: past the line's
/// own `-----`, looked for within a label's length and before the line ends, so that a
/// malformed END line never reaches into the next key's `-----BEGIN`; where the line ended
/// (or its label ran out) without one; `None` while the line is still arriving. Both readers
/// of a key use it: [`pem`], and a streaming masker swallowing a key too long to hold.
pub fn pem_end_line(t: &[u8], after: usize) -> Option<usize> {
    let line = &t[after..t.len().min(after + PEM_END_LABEL)];
    let stop = memchr::memchr2(b'\n', b'\r', line).unwrap_or(line.len());
    match memchr::memmem::find(&line[..stop], b"-----") {
        Some(x) => Some(after + x + 5),
        None if stop < line.len() || line.len() == PEM_END_LABEL => Some(after + stop),
        None => None,
    }
}

/// A hit that started more than this many bytes before a streaming masker's safe point and
/// runs past it is released in pieces instead of held back whole. Overlapping readings (card
/// numbers in `4 4 4 …`) merge into one hit as long as the body; held until it ended, it was
/// scanned again with every chunk, and masking cost grew with the square of the body.
pub const MAX_HELD_HIT: usize = 256;

/// Cuts, at `safe`, the first hit that runs past it if it started more than [`MAX_HELD_HIT`]
/// bytes before; its kind if it did. The caller releases the hit's first piece (masked, see
/// [`Hit::cut`]) and keeps [`Behind`] with the kind, so the next piece's scan masks the rest.
pub fn cut_long_hit(hits: &mut [Hit], safe: usize) -> Option<Kind> {
    for h in hits.iter_mut() {
        if h.start >= safe {
            break;
        }
        if h.end > safe {
            // A private key is held whole (up to `MAX_PEM`): cut, its rest would be read
            // again without its BEGIN line, as nothing.
            if private_key(h) || safe - h.start <= MAX_HELD_HIT {
                return None;
            }
            h.end = safe;
            h.cut = true;
            return Some(h.kind);
        }
    }
    None
}

/// Where the run of bytes a long value of `kind` is made of ends, from `from` on: tokens and
/// addresses run over [`TOKENISH`] bytes (no space: the words after a long JWT are not its);
/// digit-shaped values (card runs, `4 4 4 …`) over any value byte ([`value_byte`]), spaces
/// included, since such a run takes in tokens (`AIza…`) whose rest after a cut must reach as
/// far as the whole did. `None` for private keys, which end at their END line, and custom
/// regexes, whose matches end where the regex says.
fn value_run_end(t: &[u8], from: usize, kind: Kind) -> Option<usize> {
    let digit_shaped = match kind {
        Kind::Detector(Detector::PrivateKey) | Kind::Custom(_) => return None,
        Kind::Detector(Detector::CardNumber | Detector::Ssn | Detector::Iban) => true,
        Kind::Detector(_) => false,
    };
    let run = t[from.min(t.len())..]
        .iter()
        .take_while(|&&c| {
            if digit_shaped {
                value_byte(c)
            } else {
                tokenish(c)
            }
        })
        .count();
    Some(from + run)
}

/// A private key, whole or still arriving: never taken into another value, so that it is
/// masked as a key and swallowed while its END line has not come (`open`).
fn private_key(h: &Hit) -> bool {
    h.open || h.kind == Kind::Detector(Detector::PrivateKey)
}

/// A value too long to hold ([`MAX_HELD_HIT`]) ends where the run of bytes it is made of
/// ends, whether it is seen whole or in pieces: the scan of a piece after a cut may no longer
/// see the value's start (an address's `@` more than [`BEHIND`] bytes back), and without this
/// its rest went out as written. Hits from `first` on are `t`'s; `cut` is the kind of the
/// value a cut left unfinished before `t`: the piece's first hit, if its scan found the rest
/// ([`Behind::settle`]), takes that kind, so that it is written as the value's rest; else the
/// run the value goes on in becomes that hit (not for private keys and custom regexes, see
/// [`value_run_end`]). A lengthened hit takes in the hits it reaches, but stops before a
/// private key. The hits stay sorted and apart.
fn lengthen_long_hits(t: &[u8], out: &mut Vec<Hit>, first: usize, cut: Option<Kind>) {
    if let Some(kind) = cut {
        match out.get_mut(first) {
            Some(h) if h.rest => h.kind = kind,
            _ => {
                let key = out[first..].iter().find(|h| private_key(h));
                let stop = key.map_or(t.len(), |h| h.start);
                if let Some(end @ 1..) = value_run_end(t, 0, kind).map(|e| e.min(stop)) {
                    let rest = Hit {
                        rest: true,
                        ..hit(0, end, kind)
                    };
                    out.insert(first, rest);
                }
            }
        }
    }
    let mut i = first;
    while i < out.len() {
        let h = out[i];
        i += 1;
        if private_key(&h) || !h.long() {
            continue;
        }
        let Some(mut end) = value_run_end(t, h.end, h.kind) else {
            continue;
        };
        let mut taken = i;
        while let Some(next) = out.get(taken).filter(|n| n.start < end) {
            if private_key(next) {
                end = next.start.max(h.end);
                break;
            }
            if next.end > end {
                // The run goes on past what it took in, as far as its own bytes do.
                end = value_run_end(t, next.end, h.kind).unwrap_or(next.end);
            }
            taken += 1;
        }
        out[i - 1].end = end;
        out.drain(i..taken);
    }
    debug_assert!(
        out[first..].windows(2).all(|w| w[0].end <= w[1].start),
        "hits overlap after lengthening: {:?}",
        &out[first..]
    );
}

/// How much of what came before a cut is scanned again with the next piece: more than the
/// longest value plus the group before it.
const BEHIND: usize = 96;

/// The bytes consumed just before a cut that fell inside a run of value-like bytes (a long
/// digit run, a token). Scanning the next piece with them in front judges its first group as
/// the whole text would: without them, the tail of a 20-digit number looks like a card.
#[derive(Debug, Default)]
pub struct Behind {
    /// What the scanned text is ([`Within`]).
    within: Within,
    bytes: Vec<u8>,
    scratch: Vec<u8>,
    /// The last piece ended inside a value it released in pieces ([`cut_long_hit`]): its kind.
    after_cut: Option<Kind>,
    scanned: u64,
}

impl Behind {
    /// For text that is JSON, read through its escapes ([`Within::Json`]).
    pub fn json() -> Self {
        Self {
            within: Within::Json,
            ..Self::default()
        }
    }

    /// Appends the hits in `t` as if the remembered bytes came right before it; hits that
    /// start in them were settled with the previous piece, except after a cut inside a value:
    /// then what runs on past the cut is masked from the start of `t`.
    pub fn scan(&mut self, scanner: &Scanner, t: &[u8], out: &mut Vec<Hit>) {
        let first = out.len();
        if self.bytes.is_empty() {
            self.scanned += t.len() as u64;
            scanner.scan_in(t, self.within, out);
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.bytes);
            self.scratch.extend_from_slice(t);
            self.scanned += self.scratch.len() as u64;
            scanner.scan_in(&self.scratch, self.within, out);
            self.settle(out, first);
        }
        lengthen_long_hits(t, out, first, self.after_cut);
    }

    /// [`Behind::scan`] with [`Scanner::scan_split`].
    pub fn scan_split(
        &mut self,
        scanner: &Scanner,
        t: &[u8],
        out: &mut Vec<Hit>,
        other: &mut Vec<Hit>,
    ) {
        let (first, first_other) = (out.len(), other.len());
        if self.bytes.is_empty() {
            self.scanned += t.len() as u64;
            scanner.scan_split(t, self.within, out, other);
        } else {
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.bytes);
            self.scratch.extend_from_slice(t);
            self.scanned += self.scratch.len() as u64;
            scanner.scan_split(&self.scratch, self.within, out, other);
            self.settle(out, first);
            self.settle(other, first_other);
        }
        lengthen_long_hits(t, out, first, self.after_cut);
        lengthen_long_hits(t, other, first_other, None);
    }

    /// Drops the hits of `out[first..]` settled with the previous piece and makes the rest
    /// relative to the new text. After a cut, a hit that began before it is the cut value's
    /// rest ([`Hit::rest`]; [`lengthen_long_hits`] gives it the value's kind).
    fn settle(&self, out: &mut Vec<Hit>, first: usize) {
        let k = self.bytes.len();
        let mut keep = first;
        for i in first..out.len() {
            let h = out[i];
            if h.start >= k || (self.after_cut.is_some() && h.end > k) {
                out[keep] = Hit {
                    start: h.start.saturating_sub(k),
                    end: h.end - k,
                    rest: h.start < k,
                    ..h
                };
                keep += 1;
            }
        }
        out.truncate(keep);
    }

    /// Remembers what precedes `t[end..]`, if the cut at `end` falls inside a run or (`cut`)
    /// inside a value released in pieces.
    pub fn keep(&mut self, t: &[u8], end: usize, cut: Option<Kind>) {
        if end == 0 {
            // Nothing consumed: what came before is still what comes before.
            return;
        }
        self.after_cut = cut;
        let inside = end < t.len() && value_byte(t[end - 1]) && value_byte(t[end]);
        if !inside && cut.is_none() {
            self.bytes.clear();
            return;
        }
        keep_last(&mut self.bytes, &t[..end], BEHIND);
    }

    /// Bytes the detectors have been run over, the remembered ones included: the measure of
    /// a masker's work, which must stay linear in the body's size.
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.after_cut = None;
    }
}

/// Makes `kept` the last `n` bytes of what it held followed by `consumed`.
pub(super) fn keep_last(kept: &mut Vec<u8>, consumed: &[u8], n: usize) {
    if consumed.len() >= n {
        kept.clear();
        kept.extend_from_slice(&consumed[consumed.len() - n..]);
    } else {
        kept.extend_from_slice(consumed);
        let extra = kept.len().saturating_sub(n);
        kept.drain(..extra);
    }
}

/// A byte that may belong to a value: digit-shaped runs and tokens.
pub fn value_byte(c: u8) -> bool {
    RUN[c as usize] != 0 || tokenish(c)
}

fn tokenish(c: u8) -> bool {
    TOKENISH[c as usize] != 0
}

/// `[0-9A-Za-z_.%+\-@=/]`: the bytes a token, an e-mail address or a compact IBAN is made of.
static TOKENISH: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() {
            t[c] = 1;
        }
        c += 1;
    }
    let extra = b"_.%+-@=/";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = 1;
        i += 1;
    }
    t
};

/// Where the run of bytes in `class` that ends `t` starts, looking back at most `max` bytes.
/// A long run (a 16 KiB string of letters) is checked a block at a time: byte by byte, this
/// was a tenth of the gateway's CPU time on such an answer.
fn trailing_run(t: &[u8], max: usize, class: &[u8; 256]) -> usize {
    const BLOCK: usize = 16;
    let floor = t.len().saturating_sub(max);
    let mut s = t.len();
    while s - floor >= BLOCK {
        let block = &t[s - BLOCK..s];
        // Branch-free over the block: all sixteen lookups, then one test.
        if block.iter().fold(1, |all, &c| all & class[c as usize]) == 0 {
            break;
        }
        s -= BLOCK;
    }
    while s > floor && class[t[s - 1] as usize] != 0 {
        s -= 1;
    }
    s
}

/// Where an unfinished value may start at the end of `t`: bytes from there on must wait for
/// more input before they can be judged. `t.len()` when nothing is pending.
pub fn pending_from(scanner: &Scanner, t: &[u8]) -> usize {
    let n = t.len();
    // Tokens, e-mail, compact IBANs and digits: a trailing run of word-ish bytes.
    let mut from = trailing_run(t, MAX_TOKEN, &TOKENISH);
    // Spaced card numbers and IBANs: a trailing run of `[0-9A-Z -]`.
    if scanner.digit_shaped() {
        from = from.min(trailing_run(t, 48, &RUN));
    }
    // A secret named just before it: the name must stay with the value.
    if scanner.on(Detector::SecretKey) {
        let window = n.saturating_sub(SECRET_NAME_WINDOW);
        for name in &*SECRET_FINDERS {
            if let Some(b) = name.rfind(&t[window..]) {
                from = from.min(window + b);
            }
        }
    }
    // (A private key whose END line has not arrived is an `open` hit; see `pem`.)
    if scanner.has_custom() {
        let line = memchr::memrchr(b'\n', t).map_or(0, |i| i + 1);
        if n - line <= MAX_LINE {
            from = from.min(line);
        }
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-at-a-time loop `trailing_run` replaced.
    fn by_bytes(t: &[u8], max: usize, class: &[u8; 256]) -> usize {
        let n = t.len();
        let mut s = n;
        while s > 0 && n - s < max && class[t[s - 1] as usize] != 0 {
            s -= 1;
        }
        s
    }

    /// The incremental check agrees with Luhn computed over each whole number.
    #[test]
    fn incremental_luhn_matches_the_whole_number_check() {
        fn whole(d: &[u8]) -> bool {
            let sum: u32 = d
                .iter()
                .rev()
                .enumerate()
                .map(|(i, &c)| {
                    let v = u32::from(c - b'0');
                    if i % 2 == 1 {
                        (2 * v) % 9 + u32::from(v == 9) * 9
                    } else {
                        v
                    }
                })
                .sum();
            sum.is_multiple_of(10)
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut l = Luhn::default();
            let mut digits = Vec::new();
            for _ in 0..19 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let c = b'0' + (x % 10) as u8;
                digits.push(c);
                l.push(c);
                assert_eq!(
                    l.valid(),
                    whole(&digits),
                    "{}",
                    String::from_utf8_lossy(&digits)
                );
            }
        }
        let mut l = Luhn::default();
        b"4111111111111111".iter().for_each(|&c| l.push(c));
        assert!(l.valid());
    }

    /// The block-wise search finds the first place MIN_RUN run bytes follow one another,
    /// as a byte-by-byte reading does, from anywhere, across block edges and at the end.
    #[test]
    fn runs_are_found_where_a_byte_by_byte_reading_finds_them() {
        fn first(t: &[u8], from: usize) -> Option<usize> {
            (from..t.len()).find(|&p| {
                t.get(p..p + MIN_RUN)
                    .is_some_and(|w| w.iter().all(|&c| RUN[c as usize] != 0))
            })
        }
        // Mostly run bytes, so runs of every length start and stop everywhere.
        const ALPHABET: &[u8] = b"0123456789AZ -a\"\x80:";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..20_000 {
            let len = next(300);
            // Few breaks in some texts, many in others.
            let breaks = 1 + next(40);
            let t: Vec<u8> = (0..len)
                .map(|_| match next(breaks) {
                    0 => ALPHABET[13 + next(ALPHABET.len() - 13)],
                    _ => ALPHABET[next(13)],
                })
                .collect();
            let from = next(len + 2);
            assert_eq!(
                next_run(&t, from),
                first(&t, from),
                "{:?} from {from}",
                String::from_utf8_lossy(&t)
            );
            if let Some(block) = t.get(..64) {
                let block: &[u8; 64] = block.try_into().expect("64 bytes");
                assert_eq!(run_bits(block), run_bits_bytes(block));
            }
        }
        let every: Vec<u8> = (0..=255).collect();
        for block in every.chunks_exact(64) {
            let block: &[u8; 64] = block.try_into().expect("64 bytes");
            assert_eq!(run_bits(block), run_bits_bytes(block));
        }
    }

    #[test]
    fn trailing_runs_are_found_across_block_edges() {
        for len in 0..70 {
            for brk in (0..len).map(Some).chain([None]) {
                let mut t = vec![b'A'; len];
                if let Some(b) = brk {
                    t[b] = b'"';
                }
                for max in [0, 1, 15, 16, 17, 33, 48, 1000] {
                    for class in [&TOKENISH, &RUN] {
                        assert_eq!(
                            trailing_run(&t, max, class),
                            by_bytes(&t, max, class),
                            "len {len}, break at {brk:?}, max {max}"
                        );
                    }
                }
            }
        }
        let long = vec![b'Z'; 3 * MAX_TOKEN];
        assert_eq!(trailing_run(&long, MAX_TOKEN, &TOKENISH), 2 * MAX_TOKEN);
    }

    /// Fragments whose joins make values, near-values and the bytes detectors test around
    /// them: for [`Scanner::finds_in_any`], parts built from them in any order.
    const FRAGMENTS: &[&str] = &[
        "4111 1111 1111 1111",
        "4111111111111111",
        "123-45-6789",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "AKIAIOSFODNN7EXAMPLE",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk-",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "xoxb-1234567890-abcdef",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlX2hlcmU",
        "-----BEGIN ",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
        "RSA PRIVATE KEY-----",
        "ann.lee@example.com",
        "@example.com",
        "ann.lee",
        "aws_secret_access_key = ",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "x",
        "_",
        "-",
        " ",
        ".",
        "@",
        "1",
        "A",
        "/",
        "\0",
        "0000",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// One scan of the joined parts never misses what a scan of one part finds.
        #[test]
        fn a_joined_scan_misses_nothing_a_part_holds(
            parts in proptest::collection::vec(
                proptest::collection::vec(0..FRAGMENTS.len(), 0..4), 1..6),
            cut in 0usize..40,
        ) {
            let scanner = Scanner::new(&Detector::ALL, Vec::new());
            let mut texts: Vec<String> = parts
                .iter()
                .map(|p| p.iter().map(|&i| FRAGMENTS[i]).collect())
                .collect();
            // A value cut short at a part's end, as a truncated name would be.
            if let Some(last) = texts.last_mut() {
                let mut at = cut.min(last.len());
                while !last.is_char_boundary(at) {
                    at -= 1;
                }
                last.truncate(at);
            }
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let alone = refs.iter().any(|t| {
                let mut hits = Vec::new();
                scanner.scan(t.as_bytes(), &mut hits);
                !hits.is_empty()
            });
            proptest::prop_assert!(!alone || scanner.finds_in_any(&refs), "{refs:?}");
        }
    }

    #[test]
    fn a_joined_scan_finds_a_value_at_either_end_of_a_part() {
        let scanner = Scanner::new(&Detector::ALL, Vec::new());
        assert!(!scanner.finds_in_any(&["conn-7", "10.0.0.7:8080", "rest", "payments"]));
        for v in [
            "ann.lee@example.com",
            "4111111111111111",
            "AKIAIOSFODNN7EXAMPLE",
            "-----BEGIN ",
        ] {
            assert!(scanner.finds_in_any(&["rest", v]), "{v} last");
            assert!(scanner.finds_in_any(&[v, "rest"]), "{v} first");
        }
        let custom = Scanner::new(&[], vec![Regex::new("^secret$").expect("regex")]);
        assert!(custom.finds_in_any(&["a", "secret"]));
        assert!(!custom.finds_in_any(&["a", "secrets"]));
    }
}
