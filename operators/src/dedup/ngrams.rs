//! The word n-grams of decontamination: a record is contaminated when it shares an n-gram with
//! a benchmark item. A benchmark item shorter than `n` words (but at least `min_words`) counts
//! as one n-gram of all its words, matched against the record's windows of that many words.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The seed of n-gram hashes (any fixed value: hashes are never stored across versions
/// without their parameters).
const SEED: u64 = 0x5eed_0013;

fn word_hashes(normalised: &str) -> Vec<u64> {
    normalised
        .split_whitespace()
        .map(|w| xxh3_64_with_seed(w.as_bytes(), SEED))
        .collect()
}

fn gram_hash(words: &[u64]) -> u64 {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    xxh3_64_with_seed(&bytes, SEED ^ words.len() as u64)
}

/// The n-grams of a benchmark item, or `None` when it has fewer than `min_words` words (too
/// short to match anything meaningfully). Sorted and distinct.
pub fn reference_grams(normalised: &str, n: usize, min_words: usize) -> Option<Vec<u64>> {
    let words = word_hashes(normalised);
    if words.is_empty() || words.len() < min_words {
        return None;
    }
    let size = n.min(words.len());
    let mut grams: Vec<u64> = words.windows(size).map(gram_hash).collect();
    grams.sort_unstable();
    grams.dedup();
    Some(grams)
}

/// The windows of a record that can match: of `n` words, and of every shorter size in
/// `short_sizes` (the lengths of the benchmark items shorter than `n`). Sorted and distinct.
pub fn record_grams(normalised: &str, n: usize, short_sizes: &[usize]) -> Vec<u64> {
    let words = word_hashes(normalised);
    let mut grams = Vec::new();
    for &size in std::iter::once(&n).chain(short_sizes) {
        if size > 0 && words.len() >= size {
            grams.extend(words.windows(size).map(gram_hash));
        }
    }
    grams.sort_unstable();
    grams.dedup();
    grams
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_benchmark_item_inside_a_longer_record_matches() {
        let item = "what is the capital of france and why is it so famous today";
        let refs = reference_grams(item, 13, 8).unwrap();
        assert_eq!(refs.len(), 1, "13 words: one 13-gram");
        let record = format!("please answer this: {item} thanks a lot");
        let grams = record_grams(&record, 13, &[]);
        assert!(refs.iter().any(|g| grams.binary_search(g).is_ok()));
        let other = record_grams(
            "what is the capital of spain and why is it so famous today",
            13,
            &[],
        );
        assert!(!refs.iter().any(|g| other.binary_search(g).is_ok()));
    }

    #[test]
    fn short_items_match_windows_of_their_own_length() {
        let item = "name three primary colours of light please";
        assert!(
            reference_grams(item, 13, 8).is_none(),
            "7 words < min_words 8"
        );
        let refs = reference_grams(item, 13, 5).unwrap();
        assert_eq!(refs.len(), 1);
        let record = format!("homework: {item} and explain");
        assert!(record_grams(&record, 13, &[]).is_empty(), "under 13 words");
        let grams = record_grams(&record, 13, &[7]);
        assert!(grams.binary_search(&refs[0]).is_ok());
    }
}
