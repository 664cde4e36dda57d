//! The destinations whose route entry waits for a link's send window: a
//! bit per destination, with the number of bits set and the first block
//! that can hold one.
//!
//! After every input a node asks each link whether anything waits, and
//! when the window opens it takes the lowest waiting destinations. A bare
//! bitset answers both by scanning from its start: 157 words per link per
//! input in a 10 000-node mesh, which was the largest single cost of the
//! simulator at that size. Here the first is a counter and the second
//! starts where the last one stopped.

use fixedbitset::{Block, FixedBitSet};

const BITS: usize = Block::BITS as usize;

/// A set of destination indices taken lowest first.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    bits: FixedBitSet,
    len: usize,
    /// No bit is set in the blocks before this one.
    first_block: usize,
}

impl Pending {
    /// Makes room for destinations below `n`.
    pub fn grow(&mut self, n: usize) {
        self.bits.grow(n);
    }

    /// Adds `d`, growing the set if needed.
    pub fn insert(&mut self, d: usize) {
        if d >= self.bits.len() {
            self.bits.grow(d + 1);
        }
        if !self.bits.put(d) {
            self.len += 1;
            self.first_block = self.first_block.min(d / BITS);
        }
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many destinations wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Removes and returns up to `most` of the lowest destinations.
    pub fn take_lowest(&mut self, most: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(most.min(self.len));
        let blocks = self.bits.as_mut_slice();
        let mut b = self.first_block;
        while out.len() < most && self.len > out.len() && b < blocks.len() {
            let block = &mut blocks[b];
            while *block != 0 && out.len() < most {
                let bit = block.trailing_zeros() as usize;
                *block &= *block - 1;
                out.push(b * BITS + bit);
            }
            if *block == 0 {
                b += 1;
            }
        }
        self.len -= out.len();
        self.first_block = if self.len == 0 { usize::MAX } else { b };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_lowest_first_and_counts() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        for d in [300, 5, 64, 5, 63, 1000] {
            p.insert(d);
        }
        assert_eq!(p.len(), 5);
        assert_eq!(p.take_lowest(2), vec![5, 63]);
        // One lower than where the last take stopped.
        p.insert(1);
        assert_eq!(p.take_lowest(2), vec![1, 64]);
        assert_eq!(p.take_lowest(10), vec![300, 1000]);
        assert!(p.is_empty());
        assert!(p.take_lowest(3).is_empty());
        p.insert(7);
        p.grow(5000);
        assert_eq!(p.take_lowest(1), vec![7]);
        assert!(p.is_empty());
    }

    #[test]
    fn matches_a_plain_bitset() {
        let mut p = Pending::default();
        let mut model = std::collections::BTreeSet::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                let most = (x >> 8) as usize % 40;
                let want: Vec<usize> = model.iter().copied().take(most).collect();
                for d in &want {
                    model.remove(d);
                }
                assert_eq!(p.take_lowest(most), want);
            } else {
                let d = (x >> 16) as usize % 3000;
                p.insert(d);
                model.insert(d);
            }
            assert_eq!(p.is_empty(), model.is_empty());
        }
    }
}
