//! MinHash signatures and LSH bands.
//!
//! A text's shingles are hashed to 64 bits (xxh3 over the units' own hashes), and each of the
//! `permutations` hash functions is `h_i(x) = (a_i x + b_i) mod (2^61 - 1)` with `a_i, b_i`
//! drawn from the seed; the signature holds each function's minimum over the shingles. Two
//! signatures agree at one position with probability equal to the Jaccard similarity of the
//! shingle sets, so the fraction of equal positions estimates it ([`estimate`]). LSH splits the
//! first `bands × rows` positions into bands; texts sharing any band's values become candidates.

use super::text::ShingleUnit;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// A MinHash signature: one minimum per permutation.
pub type Signature = Vec<u64>;

/// The Mersenne prime 2^61 - 1, the modulus of the permutations.
const PRIME: u64 = (1 << 61) - 1;

/// How signatures are made and banded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MinHashParams {
    pub unit: ShingleUnit,
    /// Units per shingle.
    pub shingle: usize,
    /// Hash functions (the signature's length): at least `bands × rows`; all of them are used
    /// to estimate similarity.
    pub permutations: usize,
    pub bands: usize,
    pub rows: usize,
    pub seed: u64,
}

impl Default for MinHashParams {
    /// Word 5-grams, 14 bands × 8 rows (DataTrove's defaults) and 128 permutations.
    fn default() -> Self {
        Self {
            unit: ShingleUnit::Words,
            shingle: 5,
            permutations: 128,
            bands: 14,
            rows: 8,
            seed: 1,
        }
    }
}

impl MinHashParams {
    /// The reason these parameters cannot work, if any.
    pub fn problem(&self) -> Option<String> {
        if self.shingle == 0 || self.bands == 0 || self.rows == 0 {
            return Some("dedup.shingle, dedup.bands and dedup.rows must be at least 1".into());
        }
        if self.bands * self.rows > self.permutations {
            return Some(format!(
                "dedup.bands × dedup.rows ({} × {}) exceeds dedup.permutations ({})",
                self.bands, self.rows, self.permutations
            ));
        }
        None
    }

    /// The probability that two texts of Jaccard similarity `s` share at least one band.
    pub fn candidate_probability(&self, s: f64) -> f64 {
        1.0 - (1.0 - s.powi(self.rows as i32)).powi(self.bands as i32)
    }
}

/// Makes signatures for one set of parameters.
#[derive(Debug, Clone)]
pub struct MinHasher {
    params: MinHashParams,
    /// `(a_i, b_i)` of every permutation.
    coefficients: Vec<(u64, u64)>,
}

/// `x mod (2^61 - 1)` for `x < 2^122`.
fn mod_prime(x: u128) -> u64 {
    let folded = (x & PRIME as u128) + (x >> 61);
    let folded = (folded & PRIME as u128) as u64 + (folded >> 61) as u64;
    if folded >= PRIME {
        folded - PRIME
    } else {
        folded
    }
}

impl MinHasher {
    pub fn new(params: MinHashParams) -> Self {
        let draw = |i: u64, which: u64| {
            let mut bytes = [0u8; 24];
            bytes[..8].copy_from_slice(&params.seed.to_le_bytes());
            bytes[8..16].copy_from_slice(&i.to_le_bytes());
            bytes[16..].copy_from_slice(&which.to_le_bytes());
            xxh3_64(&bytes) % PRIME
        };
        let coefficients = (0..params.permutations as u64)
            .map(|i| (draw(i, 0).max(1), draw(i, 1)))
            .collect();
        Self {
            params,
            coefficients,
        }
    }

    pub fn params(&self) -> &MinHashParams {
        &self.params
    }

    /// The distinct 64-bit hashes of a normalised text's shingles (see [`super::text::shingles`]
    /// for what a shingle is), sorted.
    pub fn shingle_hashes(&self, normalised: &str) -> Vec<u64> {
        let seed = self.params.seed;
        let units: Vec<u64> = match self.params.unit {
            ShingleUnit::Words => normalised
                .split_whitespace()
                .map(|w| xxh3_64_with_seed(w.as_bytes(), seed))
                .collect(),
            ShingleUnit::Chars => normalised.chars().map(|c| c as u64).collect(),
        };
        let mut bytes = Vec::with_capacity(8 * self.params.shingle);
        let mut hashes: Vec<u64> = super::text::windows(&units, self.params.shingle)
            .map(|window| {
                bytes.clear();
                for u in window {
                    bytes.extend_from_slice(&u.to_le_bytes());
                }
                xxh3_64_with_seed(&bytes, seed)
            })
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes
    }

    /// The signature of a normalised text; `None` for a text with no shingles (empty).
    pub fn signature(&self, normalised: &str) -> Option<Signature> {
        let hashes = self.shingle_hashes(normalised);
        if hashes.is_empty() {
            return None;
        }
        let reduced: Vec<u128> = hashes.iter().map(|&h| (h % PRIME) as u128).collect();
        Some(
            self.coefficients
                .iter()
                .map(|&(a, b)| {
                    let (a, b) = (a as u128, b as u128);
                    reduced
                        .iter()
                        .map(|&h| mod_prime(a * h + b))
                        .min()
                        .unwrap_or(u64::MAX)
                })
                .collect(),
        )
    }

    /// One key per band: the hash of the band's index and its `rows` values.
    pub fn band_keys(&self, signature: &[u64]) -> Vec<u64> {
        let rows = self.params.rows;
        (0..self.params.bands)
            .map(|band| {
                let mut bytes = Vec::with_capacity(8 * (rows + 1));
                bytes.extend_from_slice(&(band as u64).to_le_bytes());
                for v in &signature[band * rows..(band + 1) * rows] {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                xxh3_64(&bytes)
            })
            .collect()
    }
}

/// The signature estimate of Jaccard similarity: the fraction of positions where `a` and `b`
/// agree.
pub fn estimate(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::jaccard::jaccard;

    #[test]
    fn reduction_matches_u128_remainder() {
        for x in [
            0u128,
            1,
            PRIME as u128,
            PRIME as u128 + 5,
            u64::MAX as u128 * 12345,
            (1u128 << 121) + 77,
        ] {
            assert_eq!(mod_prime(x) as u128, x % PRIME as u128, "{x}");
        }
    }

    #[test]
    fn identical_texts_share_signatures_and_every_band() {
        let h = MinHasher::new(MinHashParams::default());
        let a = h
            .signature("the quick brown fox jumps over the lazy dog")
            .unwrap();
        let b = h
            .signature("the quick brown fox jumps over the lazy dog")
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 128);
        assert_eq!(estimate(&a, &b), 1.0);
        assert_eq!(h.band_keys(&a), h.band_keys(&b));
        assert!(h.signature("").is_none());
    }

    #[test]
    fn estimate_tracks_exact_jaccard() {
        let params = MinHashParams {
            permutations: 1024,
            bands: 16,
            rows: 64,
            ..MinHashParams::default()
        };
        let h = MinHasher::new(params);
        let words: Vec<String> = (0..300).map(|i| format!("w{}", i * 7 % 113)).collect();
        let a = words.join(" ");
        let mut edited = words.clone();
        for i in (0..300).step_by(17) {
            edited[i] = format!("x{i}");
        }
        let b = edited.join(" ");
        let exact = jaccard(&a, &b, ShingleUnit::Words, 5);
        let est = estimate(&h.signature(&a).unwrap(), &h.signature(&b).unwrap());
        // 1024 permutations: standard error sqrt(J(1-J)/1024) < 0.016; 4 of them allowed.
        assert!((exact - est).abs() < 0.064, "exact {exact} estimate {est}");
        assert!(
            exact > 0.3 && exact < 0.9,
            "a useful test needs a middling {exact}"
        );
    }

    #[test]
    fn candidate_probability_is_the_s_curve() {
        let p = MinHashParams::default();
        assert!((p.candidate_probability(1.0) - 1.0).abs() < 1e-12);
        assert_eq!(p.candidate_probability(0.0), 0.0);
        let expected = 1.0 - (1.0 - 0.8f64.powi(8)).powi(14);
        assert!((p.candidate_probability(0.8) - expected).abs() < 1e-12);
        assert!(p.problem().is_none());
        let bad = MinHashParams { bands: 20, ..p };
        assert!(bad.problem().unwrap().contains("exceeds"));
    }
}
