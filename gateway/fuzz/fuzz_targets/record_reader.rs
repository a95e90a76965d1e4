//! A records directory holding a damaged or forged segment: verify and list report it, never
//! panic. Input: the first byte chooses raw bytes as the segment file, or a valid chained
//! segment built from the rest (payloads split at NUL), chained over leaf hashes or (bit 1)
//! over payloads as older versions wrote, with one frame byte flipped, which verify must
//! notice.
#![no_main]
use std::{path::PathBuf, sync::OnceLock};

use callgate::record::{
    merkle, query,
    segment::{self, Chain, Header},
};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("callgate-fuzz-records-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let dir = dir();
    let (bytes, flipped) = if mode & 1 == 1 {
        (rest.to_vec(), false)
    } else {
        let Some((&at, payloads)) = rest.split_first() else { return };
        let chain = if mode & 2 == 2 { Chain::Payload } else { Chain::Leaf };
        let mut seg =
            Header { first_seq: 1, created_ms: 0, prev_hash: [0; 32], chain }.encode().to_vec();
        let mut prev = [0; 32];
        for (i, p) in payloads.split(|&b| b == 0).enumerate() {
            let leaf = merkle::leaf_hash(p);
            prev = segment::encode_frame(&mut seg, chain, &prev, 1 + i as u64, p, &leaf);
        }
        let frames = seg.len() - segment::HEADER_LEN;
        let flip = segment::HEADER_LEN + (at as usize * 7919) % frames;
        seg[flip] ^= 1 << (mode >> 5);
        (seg, true)
    };
    if std::fs::write(dir.join(segment::segment_name(1)), &bytes).is_err() {
        return;
    }
    let verdict = query::verify(dir, None);
    let _ = query::scan(dir, &query::Filter::default(), &mut |_| true);
    if flipped {
        let intact = matches!(&verdict, Ok(v) if v.ok() && v.notes.is_empty());
        assert!(!intact, "a flipped frame byte went unnoticed: {verdict:?}");
    }
});
