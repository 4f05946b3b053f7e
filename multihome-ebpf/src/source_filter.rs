//! A bit per hash of every source address that has an entry: when a packet's bit is clear, its
//! source has no entry and it passes without the hash lookup (traffic the host forwards, such as
//! a delegated IPv6 prefix's, takes this path on every packet).
//!
//! User space sets a source's bit before it writes the entry and clears it only after the last
//! entry with that bit is gone, so a clear bit never hides an entry. A set bit says nothing: the
//! program then looks the source up. Rewriting the bits concurrently with a run is harmless,
//! each bit reads as its old or its new value.

use crate::frame::{fold, Source};

/// Bits in the filter. With a few hundred sources most bits stay clear.
pub const FILTER_BITS: u32 = 4096;

/// The filter: the one value of a one-slot array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SourceFilter {
    pub words: [u64; (FILTER_BITS / 64) as usize],
}

impl Default for SourceFilter {
    fn default() -> Self {
        Self {
            words: [0; (FILTER_BITS / 64) as usize],
        }
    }
}

impl SourceFilter {
    /// Whether the source whose words fold to `folded` may have an entry (its bit is set).
    #[inline(always)]
    pub fn may_have(&self, folded: u32) -> bool {
        let bit = bit(folded);
        let word = self.words.get((bit / 64) as usize).copied().unwrap_or(!0);
        word & (1 << (bit % 64)) != 0
    }

    pub fn set(&mut self, bit: u32) {
        if let Some(word) = self.words.get_mut((bit / 64) as usize) {
            *word |= 1 << (bit % 64);
        }
    }
}

/// The bit of a source, from its 32-bit words XORed (`frame::fold`; the BPF target has no
/// 128-bit arithmetic) and mixed (the "lowbias32" finaliser), so that addresses one apart land
/// far apart.
#[inline(always)]
pub fn bit(folded: u32) -> u32 {
    let mut x = folded;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x % FILTER_BITS
}

/// An address's fold, as the parser makes it (`Frame::src_fold`), for user space and tests.
pub fn fold_of(src: &Source) -> u32 {
    match src {
        Source::V4(a) => fold(a),
        Source::V6(a) => fold(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_bit_is_found_and_bits_spread() {
        let mut filter = SourceFilter::default();
        let src = Source::V4([192, 168, 0, 20]);
        assert!(!filter.may_have(fold(&[192, 168, 0, 20])));
        filter.set(bit(fold_of(&src)));
        assert!(filter.may_have(fold(&[192, 168, 0, 20])));
        // Neighbouring addresses of one subnet (and of one IPv6 prefix) spread like random
        // bits would (256 random bits of 4096 are about 248 distinct).
        let v4: std::collections::BTreeSet<u32> = (0..=255)
            .map(|i| bit(fold_of(&Source::V4([192, 168, 0, i]))))
            .collect();
        assert!(v4.len() >= 240, "{}", v4.len());
        let v6: std::collections::BTreeSet<u32> = (0..=255u8)
            .map(|i| {
                let mut a = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                a[15] = i;
                bit(fold_of(&Source::V6(a)))
            })
            .collect();
        assert!(v6.len() >= 240, "{}", v6.len());
        assert!(v4.iter().chain(&v6).all(|&b| b < FILTER_BITS));
    }
}
