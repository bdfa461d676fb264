//! Deduplication and decontamination, the pure parts: text normalisation and shingles
//! (`text.rs`), MinHash signatures, LSH bands and the signature estimate of Jaccard similarity
//! (`minhash.rs`), the n-grams of decontamination (`ngrams.rs`), exact Jaccard by brute force,
//! the reference the others are measured against (`jaccard.rs`), and which copy of a cluster
//! is kept (`keep.rs`). The clustering itself runs on differential-dataflow in
//! `steerflow-pipeline` (`dataflow/dedup.rs`).

pub mod jaccard;
pub mod keep;
pub mod minhash;
pub mod ngrams;
pub mod text;

pub use keep::KeepRule;
pub use minhash::{MinHashParams, MinHasher, Signature};
pub use text::{ShingleUnit, TextNorm};

/// Identical items scored once: the index of each distinct item's first copy, and for every
/// item the position of its first copy in that list.
pub fn first_copies<T: Eq + std::hash::Hash>(items: &[T]) -> (Vec<usize>, Vec<usize>) {
    let mut position: std::collections::HashMap<&T, usize> = std::collections::HashMap::new();
    let mut firsts = Vec::new();
    let slots = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            *position.entry(item).or_insert_with(|| {
                firsts.push(i);
                firsts.len() - 1
            })
        })
        .collect();
    (firsts, slots)
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_copies_index_each_distinct_item_once() {
        let (firsts, slots) = super::first_copies(&["a", "b", "a", "c", "b"]);
        assert_eq!(firsts, [0, 1, 3]);
        assert_eq!(slots, [0, 1, 0, 2, 1]);
    }
}
