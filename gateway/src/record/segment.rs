//! The on-disk format of the call log: segment files of hash-chained frames.
//!
//! ```text
//! segment  = header frame*
//! header   = magic first_seq:u64le created_ms:u64le prev_hash:[32]             (64 bytes)
//! magic    = "CALLGATE-RECORD3" | "CALLGATE-RECORD2" | "CALLGATE-RECORDS"      (16 bytes)
//! frame    = len:u32le seq:u64le hash:[32] payload:[len]                           (44 + len)
//!
//! "CALLGATE-RECORD3" (what this version writes):
//! hash     = SHA-256("callgate chain 3" 0x00 ‖ prev_hash ‖ seq:u64le ‖ leaf)
//! leaf     = SHA-256(0x00 ‖ entry)                  (the record's Merkle leaf, RFC 6962)
//! entry    = payload                     when len ≤ 4096 and payload[0] ≠ 0xFF
//!          | 0xFF ‖ BLAKE3(payload)      otherwise                             (33 bytes)
//! "CALLGATE-RECORD2":
//! hash     = SHA-256("callgate chain 2" 0x00 ‖ prev_hash ‖ seq:u64le ‖ leaf)
//! leaf     = SHA-256(0x00 ‖ entry), entry = payload     when payload[0] ≠ 0xFF
//!                                         | as above   otherwise
//! "CALLGATE-RECORDS":
//! hash     = SHA-256(prev_hash ‖ seq:u64le ‖ payload)
//! leaf     = as for "CALLGATE-RECORD2"
//! ```
//! `prev_hash` of a frame is the hash of the frame before it, across segment boundaries (a
//! segment's header carries the last hash of the previous segment), so removing, reordering or
//! altering anything breaks the chain at a point `verify` can name.
//!
//! The magic says how a segment's frames are chained ([`Chain`]). Each kind hashes each record
//! once, for the tree and the chain together. `CALLGATE-RECORD3` puts a record longer than
//! 4 KiB into the tree by its BLAKE3 digest: SHA-256 runs at 1.7 GB/s on these machines (SHA
//! extensions), BLAKE3 at 6.8 GB/s on 16 KiB and 7.3 GB/s on 1 MiB (AVX-512), and hashing
//! was the largest single cost of recording a large answer (17 % of the gateway's CPU with
//! 16 KiB answers); below 2 KiB SHA-256 is the faster, so short records stay as they were.
//! The tree stays an RFC 6962 SHA-256 tree, so checkpoints and witnesses are unchanged; only
//! what a large record's leaf is over changes. An entry names one record: a digest entry
//! begins with 0xFF, which no record (a JSON object, UTF-8) does, and a payload that does is
//! digested whatever its length, in every kind of segment, so no payload is also another's
//! entry, even in a segment relabelled as another kind. (No writer ever wrote such a payload,
//! so the older kinds' leaves of every record written are what they always were.)
//!
//! Segments of older versions are still read, verified and appended to; a log only ever goes
//! from older kinds to newer ones, so `verify` reports an older-kind segment after a newer one.
//!
//! The magic is not hashed, so no two chains may hash the same bytes: without a tag, a
//! leaf-chained frame's hash is also the `CALLGATE-RECORDS` hash of a frame whose payload is
//! the record's 32-byte leaf hash, and a segment could have every record replaced by its leaf
//! hash, the magic changed, and still verify. With it, an older-kind input would have to begin
//! with the tag where it begins with the previous frame's hash; and the two leaf kinds' tags
//! differ, so neither's frames read as the other's.
//!
//! A segment file, `<first_seq>.seg.zst`, holds that byte stream as a run of independent zstd
//! frames: the header is the first, and each group commit appends one more. Compressing as it
//! is written (rather than sealing a plain file and compressing it afterwards) writes a
//! tenth of the bytes or less and never reads a segment back; a crash can only tear the last zstd
//! frame, which was never fsync'd. Plain `.seg` files, as older versions wrote them, are still
//! read.
use std::{
    fs::File,
    io::{self, BufReader, Read},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::merkle;

/// The magic of segments chained over the payload itself ([`Chain::Payload`]).
pub const MAGIC: &[u8; 16] = b"CALLGATE-RECORDS";
/// The magic of segments chained over the payload's Merkle leaf hash ([`Chain::Leaf`]).
pub const MAGIC_LEAF: &[u8; 16] = b"CALLGATE-RECORD2";
/// The magic of segments whose large records' leaves are over their digest ([`Chain::Digest`]).
pub const MAGIC_DIGEST: &[u8; 16] = b"CALLGATE-RECORD3";
pub const HEADER_LEN: usize = 64;
pub const FRAME_HEADER_LEN: usize = 44;
/// Refuse to believe a length above this: it is a torn or corrupted frame, not a record.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// A [`Chain::Digest`] segment's records longer than this enter the tree by their digest.
pub const DIGEST_ABOVE: usize = 4096;
/// The first byte of a digest entry, which no record has.
const DIGEST_ENTRY: u8 = 0xFF;

pub type Hash = [u8; 32];

/// How a segment's frames are chained, as its header's magic says; oldest first, so that
/// `<` says "written by an older version".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Chain {
    /// `SHA-256(prev ‖ seq ‖ payload)`: segments written by the oldest versions.
    Payload,
    /// `SHA-256(tag2 ‖ prev ‖ seq ‖ leaf)`, `leaf` over the payload.
    Leaf,
    /// `SHA-256(tag3 ‖ prev ‖ seq ‖ leaf)`, `leaf` over the payload, or over its BLAKE3
    /// digest when it is long: what this version writes.
    Digest,
}

impl Chain {
    /// The kind new segments get.
    pub const NEWEST: Chain = Chain::Digest;

    /// The Merkle leaf hash of the record `payload` in a segment of this kind.
    ///
    /// A payload beginning with 0xFF, which no writer ever wrote, is digested in every kind:
    /// else a large record of a `CALLGATE-RECORD3` segment could be replaced by its 33-byte
    /// digest entry and the segment relabelled as an older kind, whose leaf over that entry
    /// is the large record's leaf, and every proof would still hold.
    pub fn leaf(self, payload: &[u8]) -> Hash {
        self.leaf_of(&[payload])
    }

    /// [`Chain::leaf`] of the payload made of `parts` one after the other.
    pub fn leaf_of(self, parts: &[&[u8]]) -> Hash {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let first = parts.iter().find_map(|p| p.first());
        let digested =
            first == Some(&DIGEST_ENTRY) || (self == Chain::Digest && len > DIGEST_ABOVE);
        if digested {
            let mut h = blake3::Hasher::new();
            for p in parts {
                h.update(p);
            }
            let mut entry = [0u8; 33];
            entry[0] = DIGEST_ENTRY;
            entry[1..].copy_from_slice(h.finalize().as_bytes());
            merkle::leaf_hash(&entry)
        } else {
            merkle::leaf_hash_of(parts)
        }
    }

    /// The hash of the frame `seq` carrying `payload`, after `prev`.
    pub fn hash(self, prev: &Hash, seq: u64, payload: &[u8]) -> Hash {
        self.hash_with_leaf(prev, seq, payload, &self.leaf(payload))
    }

    /// [`Chain::hash`] when the payload's leaf hash ([`Chain::leaf`]) is known already: the
    /// payload is not hashed again.
    pub fn hash_with_leaf(self, prev: &Hash, seq: u64, payload: &[u8], leaf: &Hash) -> Hash {
        self.hash_of(prev, seq, &[payload], leaf)
    }

    /// [`Chain::hash_with_leaf`] of the payload made of `parts` one after the other.
    pub fn hash_of(self, prev: &Hash, seq: u64, parts: &[&[u8]], leaf: &Hash) -> Hash {
        match self {
            Chain::Digest => chain_leaf(DIGEST_CHAIN_TAG, prev, seq, leaf),
            Chain::Leaf => chain_leaf(LEAF_CHAIN_TAG, prev, seq, leaf),
            Chain::Payload => chain_of(prev, seq, parts),
        }
    }

    fn magic(self) -> &'static [u8; 16] {
        match self {
            Chain::Digest => MAGIC_DIGEST,
            Chain::Leaf => MAGIC_LEAF,
            Chain::Payload => MAGIC,
        }
    }
}

/// `SHA-256(prev ‖ seq ‖ payload)`: the frame hash of [`Chain::Payload`] segments.
pub fn chain(prev: &Hash, seq: u64, payload: &[u8]) -> Hash {
    chain_of(prev, seq, &[payload])
}

/// [`chain`] of the payload made of `parts` one after the other.
fn chain_of(prev: &Hash, seq: u64, parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_le_bytes());
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What a [`Chain::Leaf`] frame hash begins with, so that no [`Chain::Payload`] frame hashes
/// the same bytes (see the module's doc). 72 + 17 bytes still fit SHA-256's two blocks.
pub const LEAF_CHAIN_TAG: &[u8; 17] = b"callgate chain 2\0";
/// What a [`Chain::Digest`] frame hash begins with: neither older kind's frames hash the
/// same bytes.
pub const DIGEST_CHAIN_TAG: &[u8; 17] = b"callgate chain 3\0";

/// `SHA-256(tag ‖ prev ‖ seq ‖ leaf)`: the frame hash of leaf-chained segments.
fn chain_leaf(tag: &[u8; 17], prev: &Hash, seq: u64, leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(tag);
    h.update(prev);
    h.update(seq.to_le_bytes());
    h.update(leaf);
    h.finalize().into()
}

pub fn hex(h: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub first_seq: u64,
    pub created_ms: u64,
    pub prev_hash: Hash,
    pub chain: Chain,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..16].copy_from_slice(self.chain.magic());
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        b[32..].copy_from_slice(&self.prev_hash);
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Option<Self> {
        let chain = match &b[..16] {
            m if m == MAGIC_DIGEST => Chain::Digest,
            m if m == MAGIC_LEAF => Chain::Leaf,
            m if m == MAGIC => Chain::Payload,
            _ => return None,
        };
        let mut prev_hash = [0; 32];
        prev_hash.copy_from_slice(&b[32..]);
        Some(Self {
            first_seq: u64::from_le_bytes(b[16..24].try_into().ok()?),
            created_ms: u64::from_le_bytes(b[24..32].try_into().ok()?),
            prev_hash,
            chain,
        })
    }
}

/// Appends one frame, chained as `chain` says, to `out`; returns its hash. `leaf` is the
/// payload's Merkle leaf hash ([`Chain::leaf`]).
pub fn encode_frame(
    out: &mut Vec<u8>,
    chain: Chain,
    prev: &Hash,
    seq: u64,
    payload: &[u8],
    leaf: &Hash,
) -> Hash {
    encode_frame_of(out, chain, prev, seq, &[payload], leaf)
}

/// [`encode_frame`] of the payload made of `parts` one after the other.
pub fn encode_frame_of(
    out: &mut Vec<u8>,
    chain: Chain,
    prev: &Hash,
    seq: u64,
    parts: &[&[u8]],
    leaf: &Hash,
) -> Hash {
    let hash = chain.hash_of(prev, seq, parts, leaf);
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&hash);
    for p in parts {
        out.extend_from_slice(p);
    }
    hash
}

/// A segment file in the records directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub path: PathBuf,
    /// The first sequence number, from the file name.
    pub first_seq: u64,
    pub compressed: bool,
}

impl SegmentFile {
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The segment's byte stream (header and frames), decompressed if need be.
    pub fn open(&self) -> io::Result<Source> {
        let f = File::open(&self.path)?;
        Ok(if self.compressed {
            Source::Zstd(BufReader::with_capacity(
                256 * 1024,
                TornTail {
                    inner: zstd::stream::read::Decoder::new(f)?,
                    torn: false,
                },
            ))
        } else {
            Source::Plain(BufReader::with_capacity(256 * 1024, f))
        })
    }
}

/// A segment's byte stream.
pub enum Source {
    Plain(BufReader<File>),
    Zstd(BufReader<TornTail<zstd::stream::read::Decoder<'static, BufReader<File>>>>),
}

impl Source {
    /// Did the stream end inside a zstd frame (one being written now, or torn by a crash)?
    pub fn torn_tail(&self) -> bool {
        match self {
            Source::Plain(_) => false,
            Source::Zstd(r) => r.get_ref().torn,
        }
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(r) => r.read(buf),
            Source::Zstd(r) => r.read(buf),
        }
    }
}

/// Ends a decompressed stream where its last zstd frame is cut short, instead of failing it:
/// what that frame's whole blocks held has been read by then, and the reader of the frames
/// sees an incomplete frame or a clean end, as with a plain file cut mid-append. Corruption
/// anywhere else is still an error.
pub struct TornTail<R> {
    inner: R,
    torn: bool,
}

impl<R: Read> Read for TornTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.torn {
            return Ok(0);
        }
        match self.inner.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.torn = true;
                Ok(0)
            }
            r => r,
        }
    }
}

/// The name of a segment this version writes.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg.zst")
}

/// The name of an uncompressed segment, as older versions wrote them.
pub fn plain_segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The compressor segments are written with. Level 1: records compress about as well as at
/// level 3 (repetitive JSON) for three quarters of the CPU.
pub fn compressor() -> io::Result<zstd::bulk::Compressor<'static>> {
    zstd::bulk::Compressor::new(1)
}

/// Compresses `raw` into `out` (replacing what it held) as one zstd frame.
pub fn compress_frame(
    z: &mut zstd::bulk::Compressor<'static>,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
    z.compress_to_buffer(raw, out).map(drop)
}

/// How much of a compressed segment's bytes are whole zstd frames. What follows them is what
/// a crash mid-commit leaves: the start of a frame (`Ok` with the length to keep); anything
/// that is not is an error, since cutting it could destroy records.
pub fn whole_frames(bytes: &[u8]) -> Result<usize, String> {
    const MAGIC: [u8; 4] = zstd::zstd_safe::MAGICNUMBER.to_le_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        match zstd::zstd_safe::find_frame_compressed_size(&bytes[pos..]) {
            Ok(n) if n > 0 && pos + n <= bytes.len() => pos += n,
            _ => {
                let rest = &bytes[pos..];
                let n = rest.len().min(MAGIC.len());
                if rest[..n] == MAGIC[..n] {
                    return Ok(pos);
                }
                return Err(format!(
                    "bytes at offset {pos} of the compressed file are not a zstd frame"
                ));
            }
        }
    }
    Ok(pos)
}

/// The segments in `dir`, oldest first. A segment present both compressed and not (an older
/// version's crash while compressing it) is listed once, uncompressed.
pub fn list(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out: Vec<SegmentFile> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let (stem, compressed) = if let Some(s) = name.strip_suffix(".seg.zst") {
            (s, true)
        } else if let Some(s) = name.strip_suffix(".seg") {
            (s, false)
        } else {
            continue;
        };
        let Ok(first_seq) = stem.parse::<u64>() else {
            continue;
        };
        out.push(SegmentFile {
            path: entry.path(),
            first_seq,
            compressed,
        });
    }
    out.sort_by_key(|s| (s.first_seq, s.compressed));
    out.dedup_by_key(|s| s.first_seq);
    Ok(out)
}

/// One frame as read back.
#[derive(Debug, Clone)]
pub struct Frame {
    pub seq: u64,
    pub hash: Hash,
    pub payload: Vec<u8>,
    /// Byte offset of the frame in the (uncompressed) segment.
    pub offset: u64,
    /// How its segment is chained.
    pub chain: Chain,
}

impl Frame {
    /// The record's Merkle leaf hash.
    pub fn leaf(&self) -> Hash {
        self.chain.leaf(&self.payload)
    }
}

/// How reading a segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// At a frame boundary.
    Clean,
    /// Inside a frame: `offset` is where the incomplete frame starts, `bytes` how many of its
    /// bytes are there.
    Torn { offset: u64, bytes: u64 },
    /// A length no writer produces.
    BadLength { offset: u64, len: u64 },
}

/// Reads frames from a segment, after its header.
pub struct Reader {
    r: Source,
    offset: u64,
    pub header: Header,
    pub end: Option<End>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a callgate records segment (bad header)")]
    BadHeader,
}

impl Reader {
    pub fn open(seg: &SegmentFile) -> Result<Self, ReadError> {
        let mut r = seg.open()?;
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadError::BadHeader,
            _ => ReadError::Io(e),
        })?;
        let header = Header::decode(&h).ok_or(ReadError::BadHeader)?;
        Ok(Self {
            r,
            offset: HEADER_LEN as u64,
            header,
            end: None,
        })
    }

    /// The next frame; `None` at the end (see `self.end` for how it ended).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.end.is_some() {
            return Ok(None);
        }
        let mut fh = [0u8; FRAME_HEADER_LEN];
        let got = read_full(&mut self.r, &mut fh)?;
        if got == 0 {
            self.end = Some(if self.r.torn_tail() {
                End::Torn {
                    offset: self.offset,
                    bytes: 0,
                }
            } else {
                End::Clean
            });
            return Ok(None);
        }
        if got < FRAME_HEADER_LEN {
            self.end = Some(End::Torn {
                offset: self.offset,
                bytes: got as u64,
            });
            return Ok(None);
        }
        let len = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]) as usize;
        if len > MAX_PAYLOAD {
            self.end = Some(End::BadLength {
                offset: self.offset,
                len: len as u64,
            });
            return Ok(None);
        }
        let mut payload = vec![0u8; len];
        let got = read_full(&mut self.r, &mut payload)?;
        if got < len {
            self.end = Some(End::Torn {
                offset: self.offset,
                bytes: (FRAME_HEADER_LEN + got) as u64,
            });
            return Ok(None);
        }
        let mut hash = [0; 32];
        hash.copy_from_slice(&fh[12..44]);
        let frame = Frame {
            seq: u64::from_le_bytes(fh[4..12].try_into().unwrap_or_default()),
            hash,
            payload,
            offset: self.offset,
            chain: self.header.chain,
        };
        self.offset += (FRAME_HEADER_LEN + len) as u64;
        Ok(Some(frame))
    }
}

/// Like `read_exact`, but says how much it got before EOF.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload given in two pieces (a record's head, and its answer kept in the buffer the
    /// client's copy went from) hashes and encodes exactly as the one buffer they make, in
    /// every kind of segment, on each side of the digest bound and with the digest entry's
    /// first byte.
    #[test]
    fn a_payload_in_pieces_is_the_payload_they_make() {
        let prev = [7u8; 32];
        for len in [0, 1, 100, DIGEST_ABOVE, DIGEST_ABOVE + 1, 20_000] {
            for first in [b'\x1e', DIGEST_ENTRY] {
                let mut whole: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                if let Some(b) = whole.first_mut() {
                    *b = first;
                }
                for cut in [0, 1.min(len), len / 2, len.saturating_sub(1), len] {
                    let parts = [&whole[..cut], &whole[cut..]];
                    for chain in [Chain::Payload, Chain::Leaf, Chain::Digest] {
                        let leaf = chain.leaf(&whole);
                        assert_eq!(chain.leaf_of(&parts), leaf, "{len} {cut} {chain:?}");
                        let (mut one, mut two) = (Vec::new(), Vec::new());
                        let h1 = encode_frame(&mut one, chain, &prev, 9, &whole, &leaf);
                        let h2 = encode_frame_of(&mut two, chain, &prev, 9, &parts, &leaf);
                        assert_eq!((h1, &one), (h2, &two), "{len} {cut} {chain:?}");
                    }
                }
            }
        }
    }
}
