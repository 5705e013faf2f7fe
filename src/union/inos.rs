//! Inode numbers: unique within the mount, the same after a remount of the
//! same layers, and shared by the names of one hard-linked file.
//!
//! A union object takes the inode number of the real object shown. When all
//! layers live on one filesystem that number is already unique. When they
//! span several, the filesystem's index (in layer order, so stable across
//! remounts) goes into the top bits, as the kernel's `xino` does.

use super::LayerIdx;

#[derive(Debug)]
pub struct InoMap {
    /// For each layer, the index of its filesystem among the distinct ones.
    fs_of_layer: Vec<u32>,
    /// The distinct devices, by filesystem index.
    devs: Vec<u64>,
    /// How many top bits hold the filesystem index (0 with one filesystem).
    fs_bits: u32,
}

/// Real inode numbers that collide with FUSE's root id (1) or need more
/// bits than are free are folded into this range, top bit set.
const FOLD_BASE: u64 = 1 << 63;

impl InoMap {
    pub fn new(devs: impl Iterator<Item = u64>) -> InoMap {
        let mut distinct: Vec<u64> = Vec::new();
        let fs_of_layer = devs
            .map(|dev| match distinct.iter().position(|&d| d == dev) {
                Some(i) => i as u32,
                None => {
                    distinct.push(dev);
                    (distinct.len() - 1) as u32
                }
            })
            .collect();
        // Bits for indices 0..n, plus one spare so the top bit stays free
        // for folded numbers.
        let fs_bits = match distinct.len() {
            0 | 1 => 0,
            n => (usize::BITS - (n - 1).leading_zeros()) + 1,
        };
        InoMap {
            fs_of_layer,
            devs: distinct,
            fs_bits,
        }
    }

    /// The union inode number of real inode `ino` found in `layer`.
    pub fn map(&self, layer: LayerIdx, ino: u64) -> u64 {
        self.map_fs(u64::from(self.fs_of_layer[layer as usize]), ino)
    }

    /// The union inode number of real inode `ino` of device `dev` (one of
    /// the layers' devices).
    pub fn map_dev(&self, dev: u64, ino: u64) -> Option<u64> {
        let fs = self.devs.iter().position(|&d| d == dev)?;
        Some(self.map_fs(fs as u64, ino))
    }

    fn map_fs(&self, fs: u64, ino: u64) -> u64 {
        let mapped = if self.fs_bits == 0 {
            ino
        } else {
            let shift = 64 - self.fs_bits;
            if ino >> shift == 0 {
                ino | (fs << shift)
            } else {
                fold(fs, ino)
            }
        };
        if mapped == 1 { fold(fs, ino) } else { mapped }
    }
}

/// A stable number for a real inode that cannot be used as is.
fn fold(fs: u64, ino: u64) -> u64 {
    // splitmix64 finaliser: deterministic, spreads bits well.
    let mut x = ino ^ fs.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    FOLD_BASE | (x & (FOLD_BASE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_filesystem_keeps_real_numbers() {
        let m = InoMap::new([7, 7, 7].into_iter());
        assert_eq!(m.map(0, 1234), 1234);
        assert_eq!(m.map(2, 99), 99);
        assert_ne!(m.map(0, 1), 1, "1 is the FUSE root");
    }

    #[test]
    fn several_filesystems_get_distinct_numbers() {
        let m = InoMap::new([5, 6, 5].into_iter());
        assert_eq!(m.map(0, 42), 42);
        assert_eq!(m.map(2, 42), 42);
        assert_ne!(m.map(1, 42), 42);
        assert_eq!(m.map(1, 42), m.map(1, 42));
        assert_ne!(m.map(1, u64::MAX >> 1), m.map(0, u64::MAX >> 1));
    }
}
