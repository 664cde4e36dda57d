//! Seqno hash chains: one composite signature covers many route seqnos.
//!
//! An origin signs an [`OriginCert`](crate::wire::OriginCert) naming the
//! anchor `h_L` of a hash chain `h_0 = seed`, `h_{i+1} = H(i, h_i)`. Seqno
//! `base + j` is then proven by revealing `h_{L-j}`: anyone holding the
//! certificate hashes it `j` times and compares with the anchor, and nobody
//! without the seed can compute an element that has not been revealed yet
//! (preimage resistance). This is the hash-chain idea of SEAD (Hu, Johnson
//! and Perrig, 2002) applied to Babel seqnos.
//!
//! Why: raising a seqno is how a distance-vector mesh repairs routes that
//! became unfeasible, and after a mass failure hundreds of origins do it at
//! once. With a fresh 3.4 KB ML-DSA-65+Ed25519 signature per seqno, every
//! node fetched every new signature (4.7 MB per node after killing 30 % of
//! 1000 nodes); with the chain, a raise costs a 32-byte element per link.
//!
//! Each step hashes a domain tag, the origin, the step index and the
//! previous element, so elements of different origins or positions never
//! collide on purpose (no multi-target shortcuts).

use aws_lc_rs::digest;
use weft_crypto::NodeId;

/// One chain element.
pub type Element = [u8; 32];

/// Seqnos one certificate covers beyond its base. Raising past it needs a
/// new signature; verifying the farthest element costs this many hashes.
pub const CHAIN_LEN: u16 = 128;

const TAG: &[u8] = b"weft/seqno-chain/v1";

/// `h_{i+1}` from `h_i`.
fn step(origin: &NodeId, i: u16, h: &Element) -> Element {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(TAG);
    ctx.update(&origin.0);
    ctx.update(&i.to_be_bytes());
    ctx.update(h);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Hashes `h`, which sits at position `from`, forward to position `to`.
fn forward(origin: &NodeId, from: u16, to: u16, h: &Element) -> Element {
    (from..to).fold(*h, |x, i| step(origin, i, &x))
}

/// The origin's side: every element of one chain, from its seed.
#[derive(Clone)]
pub struct Chain {
    /// `elements[i]` is `h_i`; `elements[len]` is the anchor.
    elements: Vec<Element>,
}

impl Chain {
    /// The chain of `origin` with `len` steps from `seed`.
    pub fn new(origin: &NodeId, seed: Element, len: u16) -> Self {
        let mut elements = Vec::with_capacity(usize::from(len) + 1);
        elements.push(seed);
        for i in 0..len {
            let next = step(origin, i, &elements[usize::from(i)]);
            elements.push(next);
        }
        Self { elements }
    }

    /// Steps in the chain (the seqnos it covers beyond its base).
    pub fn len(&self) -> u16 {
        (self.elements.len() - 1) as u16
    }

    /// Whether the chain covers no seqno beyond its base.
    pub fn is_empty(&self) -> bool {
        self.elements.len() <= 1
    }

    /// The anchor `h_L`, which the certificate signs.
    pub fn anchor(&self) -> Element {
        self.elements[self.elements.len() - 1]
    }

    /// The element proving seqno `base + offset`, if the chain reaches it.
    pub fn proof(&self, offset: u16) -> Option<Element> {
        let len = self.len();
        (offset <= len).then(|| self.elements[usize::from(len - offset)])
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print elements: the unrevealed ones are secrets.
        f.debug_struct("Chain").field("len", &self.len()).finish()
    }
}

/// Whether `proof` is the element for `offset` in the chain of `origin`
/// with `len` steps ending at `anchor`.
pub fn verify(origin: &NodeId, anchor: &Element, len: u16, offset: u16, proof: &Element) -> bool {
    offset <= len && forward(origin, len - offset, len, proof) == *anchor
}

/// Whether `proof` for `offset` leads to `known`, an already verified
/// element for the smaller offset `known_offset` of the same chain: costs
/// only the distance between them.
pub fn verify_from(
    origin: &NodeId,
    len: u16,
    offset: u16,
    proof: &Element,
    known_offset: u16,
    known: &Element,
) -> bool {
    known_offset < offset
        && offset <= len
        && forward(origin, len - offset, len - known_offset, proof) == *known
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> NodeId {
        NodeId([7; 32])
    }

    #[test]
    fn every_offset_verifies_against_the_anchor_and_earlier_elements() {
        let c = Chain::new(&origin(), [1; 32], 16);
        let anchor = c.anchor();
        assert_eq!(c.proof(0), Some(anchor));
        for j in 0..=16 {
            let p = c.proof(j).unwrap();
            assert!(verify(&origin(), &anchor, 16, j, &p), "offset {j}");
            for k in 0..j {
                assert!(verify_from(&origin(), 16, j, &p, k, &c.proof(k).unwrap()));
            }
        }
        assert_eq!(c.proof(17), None);
        assert!(!verify(&origin(), &anchor, 16, 17, &[0; 32]));
    }

    #[test]
    fn wrong_offset_origin_or_element_rejects() {
        let c = Chain::new(&origin(), [1; 32], 16);
        let anchor = c.anchor();
        let p3 = c.proof(3).unwrap();
        assert!(!verify(&origin(), &anchor, 16, 4, &p3));
        assert!(!verify(&origin(), &anchor, 16, 2, &p3));
        assert!(!verify(&NodeId([8; 32]), &anchor, 16, 3, &p3));
        let mut bad = p3;
        bad[0] ^= 1;
        assert!(!verify(&origin(), &anchor, 16, 3, &bad));
        // An earlier element never proves a later offset.
        assert!(!verify_from(&origin(), 16, 2, &p3, 3, &p3));
    }

    proptest! {
        #[test]
        fn random_elements_never_verify(offset in 1u16..=16, guess in any::<[u8; 32]>()) {
            let c = Chain::new(&origin(), [9; 32], 16);
            prop_assume!(Some(guess) != c.proof(offset));
            prop_assert!(!verify(&origin(), &c.anchor(), 16, offset, &guess));
        }
    }
}
