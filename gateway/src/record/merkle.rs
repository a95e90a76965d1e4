//! The Merkle tree over the records (RFC 6962 / RFC 9162 §2.1): leaf `i` is the payload of
//! the record with sequence number `i + 1`, hashed as `SHA-256(0x00 ‖ payload)`; an inner node
//! is `SHA-256(0x01 ‖ left ‖ right)`.
//!
//! The writer keeps a [`Frontier`] (the roots of the perfect subtrees that make up the tree,
//! one per set bit of its size: O(log n) hashes), which is all it needs to append and to give
//! the root. Readers build a [`Tree`] from the log on disk to make inclusion and consistency
//! proofs; [`verify_inclusion`] and [`verify_consistency`] check them (RFC 9162 §2.1.3.2 and
//! §2.1.4.2) with nothing but the proof and the roots.
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

pub fn leaf_hash(data: &[u8]) -> Hash {
    leaf_hash_of(&[data])
}

/// [`leaf_hash`] of `parts` one after the other.
pub fn leaf_hash_of(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {old} is larger than tree size {new}")]
    SizesOutOfOrder { old: u64, new: u64 },
    #[error("the proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof does not lead to the root")]
    RootMismatch,
    #[error("the records before sequence number {0} were removed by retention")]
    Pruned(u64),
}

/// The perfect subtrees a tree of `size` leaves is made of, largest (leftmost) first: one
/// per set bit of `size`. Appending is a binary increment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    size: u64,
    #[serde(with = "hex_hashes")]
    nodes: Vec<Hash>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier as stored: `None` if the number of hashes does not fit the size.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Self { size, nodes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Has it one hash per set bit of its size (a stored one may not)?
    pub fn is_valid(&self) -> bool {
        self.nodes.len() == self.size.count_ones() as usize
    }

    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends the leaf with this hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            // A set low bit has its subtree last in `nodes`: merge with it.
            let left = self.nodes.pop().unwrap_or(EMPTY_ROOT);
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// Appends a perfect subtree of `2^height` leaves with root `hash`; `None` (and nothing
    /// changed) unless the size is a multiple of `2^height`.
    pub fn push_node(&mut self, height: u32, hash: Hash) -> Option<()> {
        if height >= 63 || self.size & ((1u64 << height) - 1) != 0 {
            return None;
        }
        let mut h = hash;
        let mut s = self.size >> height;
        while s & 1 == 1 {
            let left = self.nodes.pop().unwrap_or(EMPTY_ROOT);
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1 << height;
        Some(())
    }

    /// The tree's root: the subtrees folded from the right.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return EMPTY_ROOT;
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// Largest power of two smaller than `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// A tree kept whole in memory (two hashes per leaf), to make proofs. It may start from a
/// [`Frontier`] (the records before it removed by retention): then only proofs that need
/// none of the removed subtrees can be made.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// The size of the frontier it started from.
    base: u64,
    /// `levels[h][j]` is the node at height `h`, index `offsets[h] + j`.
    levels: Vec<Vec<Hash>>,
    offsets: Vec<u64>,
    size: u64,
}

impl Tree {
    pub fn new() -> Self {
        Self::from_frontier(&Frontier::new())
    }

    /// A tree whose first `f.size()` leaves are known only by `f`'s subtrees.
    pub fn from_frontier(f: &Frontier) -> Self {
        let k = f.size;
        let height = 64 - k.leading_zeros() as usize;
        let mut t = Self {
            base: k,
            levels: vec![Vec::new(); height.max(1)],
            offsets: (0..height.max(1))
                .map(|h| (k >> h) - ((k >> h) & 1))
                .collect(),
            size: k,
        };
        // `nodes` runs from the highest set bit down.
        let bits = (0..64).rev().filter(|h| k >> h & 1 == 1);
        for (h, node) in bits.zip(&f.nodes) {
            t.levels[h].push(*node);
        }
        t
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut h = 0;
        let mut node = leaf;
        loop {
            if self.levels.len() <= h {
                self.levels.push(Vec::new());
                self.offsets.push((self.base >> h) - ((self.base >> h) & 1));
            }
            self.levels[h].push(node);
            let i = self.offsets[h] + self.levels[h].len() as u64 - 1;
            if i & 1 == 0 {
                break;
            }
            let l = &self.levels[h];
            node = node_hash(&l[l.len() - 2], &l[l.len() - 1]);
            h += 1;
        }
        self.size += 1;
    }

    /// The node at height `h`, index `i`, if it is kept.
    fn node(&self, h: usize, i: u64) -> Option<Hash> {
        let off = *self.offsets.get(h)?;
        let j = i.checked_sub(off)?;
        self.levels.get(h)?.get(j as usize).copied()
    }

    /// MTH(D[a:b]) for a range that is a subtree of a left-aligned tree.
    fn mth(&self, a: u64, b: u64) -> Result<Hash, ProofError> {
        let n = b - a;
        if n == 0 {
            return Ok(EMPTY_ROOT);
        }
        if n.is_power_of_two() {
            let h = n.trailing_zeros() as usize;
            return self
                .node(h, a >> h)
                .ok_or(ProofError::Pruned(self.base + 1));
        }
        let k = split(n);
        Ok(node_hash(&self.mth(a, a + k)?, &self.mth(a + k, b)?))
    }

    /// The root of the tree of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        if size > self.size {
            return Err(ProofError::SizesOutOfOrder {
                old: size,
                new: self.size,
            });
        }
        self.mth(0, size)
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out)?;
        Ok(out)
    }

    fn path(&self, m: u64, a: u64, b: u64, out: &mut Vec<Hash>) -> Result<(), ProofError> {
        let n = b - a;
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < a + k {
            self.path(m, a, a + k, out)?;
            out.push(self.mth(a + k, b)?);
        } else {
            self.path(m, a + k, b, out)?;
            out.push(self.mth(a, a + k)?);
        }
        Ok(())
    }

    /// The consistency proof from the tree of the first `old` leaves to that of the first
    /// `new`.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if old > new || new > self.size {
            return Err(ProofError::SizesOutOfOrder { old, new });
        }
        let mut out = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out)?;
        }
        Ok(out)
    }

    fn subproof(
        &self,
        m: u64,
        a: u64,
        b: u64,
        complete: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), ProofError> {
        let n = b - a;
        if m == n {
            if !complete {
                out.push(self.mth(a, b)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, a, a + k, complete, out)?;
            out.push(self.mth(a + k, b)?);
        } else {
            self.subproof(m - k, a + k, b, false, out)?;
            out.push(self.mth(a, a + k)?);
        }
        Ok(())
    }
}

/// RFC 9162 §2.1.3.2: does `proof` show the leaf `leaf` at `index` in the tree of `size`
/// leaves with root `root`?
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: does `proof` show that the tree of `old` leaves with root `old_root`
/// is a prefix of the tree of `new` leaves with root `new_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesOutOfOrder { old, new });
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*path[0], *path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(ProofError::WrongLength);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Hashes as lowercase hex strings in JSON.
pub mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::Hash;

    pub fn serialize<S: Serializer>(v: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(crate::record::segment::hex))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| super::parse_hex(s).ok_or_else(|| D::Error::custom("not a SHA-256 hash")))
            .collect()
    }
}

/// A hash from 64 hex digits.
pub fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hx(s: &str) -> Hash {
        parse_hex(s).unwrap()
    }

    /// The leaves and hashes of transparency-dev/merkle's `testonly` (RFC 6962 test data).
    fn leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|s| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
    }

    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// Level-0 (leaf) hashes 4 and 5 and level-1 and level-2 nodes of the same test data.
    const LEAF4: &str = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b";
    const L1_2: &str = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a";
    const L1_3: &str = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0";
    const L2_0: &str = "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7";

    fn known_tree() -> Tree {
        let mut t = Tree::new();
        for l in leaves() {
            t.push(leaf_hash(&l));
        }
        t
    }

    #[test]
    fn roots_match_the_rfc6962_test_data() {
        let mut f = Frontier::new();
        assert_eq!(f.root(), hx(ROOTS[0]));
        for (i, l) in leaves().iter().enumerate() {
            f.push(leaf_hash(l));
            assert_eq!(f.root(), hx(ROOTS[i + 1]), "size {}", i + 1);
        }
        let t = known_tree();
        for (n, root) in ROOTS.iter().enumerate() {
            assert_eq!(t.root(n as u64).unwrap(), hx(root), "size {n}");
        }
    }

    #[test]
    fn proofs_match_the_test_data() {
        let t = known_tree();
        let root = hx(ROOTS[8]);
        // transparency-dev testdata/inclusion/2: leaf 5 of 8, before its bit was flipped.
        let p = t.inclusion(5, 8).unwrap();
        assert_eq!(p, vec![hx(LEAF4), hx(L1_3), hx(L2_0)]);
        let leaf5 = leaf_hash(&leaves()[5]);
        verify_inclusion(5, 8, &leaf5, &p, &root).unwrap();
        // testdata/consistency/2: 6 → 8 (the "truncated" vector lacks the last hash).
        let c = t.consistency(6, 8).unwrap();
        assert_eq!(c, vec![hx(L1_2), hx(L1_3), hx(L2_0)]);
        verify_consistency(6, 8, &hx(ROOTS[6]), &root, &c).unwrap();
        assert!(verify_consistency(6, 8, &hx(ROOTS[6]), &root, &c[..2]).is_err());
        // testdata/consistency/3: 2 → 5 with an empty proof is refused.
        assert!(verify_consistency(2, 5, &hx(ROOTS[2]), &hx(ROOTS[5]), &[]).is_err());
        // One bit flipped in any hash of the path is refused.
        for i in 0..p.len() {
            let mut bad = p.clone();
            bad[i][0] ^= 8;
            assert!(verify_inclusion(5, 8, &leaf5, &bad, &root).is_err());
        }
    }

    #[test]
    fn a_tree_from_a_frontier_proves_what_it_kept() {
        let mut full = Tree::new();
        let mut f = Frontier::new();
        for i in 0..100u64 {
            let l = leaf_hash(&i.to_le_bytes());
            full.push(l);
            if i < 37 {
                f.push(l);
            }
        }
        let mut t = Tree::from_frontier(&f);
        for i in 37..100u64 {
            t.push(leaf_hash(&i.to_le_bytes()));
        }
        for n in 37..=100 {
            assert_eq!(t.root(n).unwrap(), full.root(n).unwrap());
            assert_eq!(
                t.consistency(37, n).unwrap(),
                full.consistency(37, n).unwrap()
            );
        }
        for i in 37..100 {
            assert_eq!(
                t.inclusion(i, 100).unwrap(),
                full.inclusion(i, 100).unwrap()
            );
        }
        assert_eq!(t.inclusion(3, 100), Err(ProofError::Pruned(38)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_proof_verifies_and_every_altered_one_fails(
            n in 1u64..70, seed in any::<u64>(), flip in any::<(usize, u8)>(),
        ) {
            let data: Vec<Vec<u8>> = (0..n).map(|i| (seed ^ i).to_le_bytes().to_vec()).collect();
            let mut t = Tree::new();
            let mut f = Frontier::new();
            for d in &data {
                t.push(leaf_hash(d));
                f.push(leaf_hash(d));
                prop_assert_eq!(f.root(), t.root(f.size()).unwrap());
            }
            let bit = 1u8 << (flip.1 % 8);
            for m in 1..=n {
                let root_m = t.root(m).unwrap();
                for i in 0..m {
                    let leaf = leaf_hash(&data[i as usize]);
                    let p = t.inclusion(i, m).unwrap();
                    prop_assert!(verify_inclusion(i, m, &leaf, &p, &root_m).is_ok());
                    let mut tampered = data[i as usize].clone();
                    tampered[0] ^= bit;
                    prop_assert!(verify_inclusion(i, m, &leaf_hash(&tampered), &p, &root_m).is_err());
                    prop_assert!(verify_inclusion((i + 1) % m, m, &leaf, &p, &root_m).is_err() || m == 1);
                    if !p.is_empty() {
                        let mut bad = p.clone();
                        bad[flip.0 % p.len()][flip.0 % 32] ^= bit;
                        prop_assert!(verify_inclusion(i, m, &leaf, &bad, &root_m).is_err());
                    }
                }
                let root_n = t.root(n).unwrap();
                let c = t.consistency(m, n).unwrap();
                prop_assert!(verify_consistency(m, n, &root_m, &root_n, &c).is_ok());
                if m < n {
                    let mut bad = c.clone();
                    bad[flip.0 % c.len()][flip.0 % 32] ^= bit;
                    prop_assert!(verify_consistency(m, n, &root_m, &root_n, &bad).is_err());
                    prop_assert!(verify_consistency(m, n, &root_m, &root_n, &c[1..]).is_err());
                    // A fork: the same size, one leaf different.
                    let mut forked = Tree::new();
                    for (j, d) in data.iter().enumerate() {
                        let mut d = d.clone();
                        if j as u64 == (flip.0 as u64) % m {
                            d[0] ^= bit;
                        }
                        forked.push(leaf_hash(&d));
                    }
                    let fc = forked.consistency(m, n).unwrap();
                    prop_assert!(verify_consistency(m, n, &root_m, &forked.root(n).unwrap(), &fc).is_err());
                }
            }
        }
    }
}
