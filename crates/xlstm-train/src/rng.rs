//! A small counter-based random number generator.
//!
//! Every random choice of the data pipeline is a pure function of `(seed, stream, index)`:
//! example `i` of the training stream is generated from `Rng::for_example(seed, TRAIN, i)`.
//! The data position (the number of examples consumed) is therefore the whole random state of
//! training after initialisation, which makes checkpoints and resumption exact.

/// SplitMix64 (Steele, Lea, Flood 2014): 64-bit state, one add and a mix per draw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: mix(seed) }
    }

    /// The generator of example `index` of stream `stream` (train, eval bucket, ...) under `seed`.
    pub fn for_example(seed: u64, stream: u64, index: u64) -> Self {
        Self::new(mix(mix(seed ^ stream.wrapping_mul(GOLDEN)) ^ index))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `lo..=hi` (`lo <= hi`), by Lemire's multiply-shift with rejection.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        debug_assert!(lo <= hi);
        let span = hi - lo + 1;
        if span == 0 {
            return self.next_u64();
        }
        let zone = u64::MAX - (u64::MAX % span) - 1;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return lo + x % span;
            }
        }
    }

    /// Uniform in `0..n` as `usize` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.range(0, n as u64 - 1) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_stays_in_bounds_and_covers_it() {
        let mut rng = Rng::new(7);
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            let x = rng.range(3, 7);
            assert!((3..=7).contains(&x));
            seen[(x - 3) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
    }

    #[test]
    fn streams_and_indices_differ() {
        let a = Rng::for_example(1, 0, 5).next_u64();
        assert_eq!(a, Rng::for_example(1, 0, 5).next_u64());
        assert_ne!(a, Rng::for_example(1, 1, 5).next_u64());
        assert_ne!(a, Rng::for_example(1, 0, 6).next_u64());
        assert_ne!(a, Rng::for_example(2, 0, 5).next_u64());
    }
}
