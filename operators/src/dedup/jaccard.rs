//! Exact Jaccard similarity of shingle sets, by brute force: the reference MinHash is measured
//! against (precision and recall in the tests and docs/dedup.md).

use super::text::{shingles, ShingleUnit};
use std::collections::HashSet;

/// The Jaccard similarity of two normalised texts' shingle sets (1 for two empty texts).
pub fn jaccard(a: &str, b: &str, unit: ShingleUnit, size: usize) -> f64 {
    let a: HashSet<String> = shingles(a, unit, size).into_iter().collect();
    let b: HashSet<String> = shingles(b, unit, size).into_iter().collect();
    set_jaccard(&a, &b)
}

/// |a ∩ b| / |a ∪ b|, 1 for two empty sets.
pub fn set_jaccard<T: Eq + std::hash::Hash>(a: &HashSet<T>, b: &HashSet<T>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Every pair `(i, j)`, `i < j`, of `texts` whose exact Jaccard similarity is at least
/// `threshold`: quadratic, for references only.
pub fn similar_pairs(
    texts: &[String],
    unit: ShingleUnit,
    size: usize,
    threshold: f64,
) -> Vec<(usize, usize)> {
    let sets: Vec<HashSet<String>> = texts
        .iter()
        .map(|t| shingles(t, unit, size).into_iter().collect())
        .collect();
    let mut pairs = Vec::new();
    for i in 0..sets.len() {
        for j in i + 1..sets.len() {
            // |a ∩ b| ≤ min and |a ∪ b| ≥ max: skip pairs whose sizes alone rule them out.
            let (small, large) = (
                sets[i].len().min(sets[j].len()),
                sets[i].len().max(sets[j].len()),
            );
            if large > 0 && (small as f64) < threshold * large as f64 {
                continue;
            }
            if set_jaccard(&sets[i], &sets[j]) >= threshold {
                pairs.push((i, j));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        // {a b, b c, c d} against {a b, b c, c e}: 2 shared of 4.
        assert_eq!(jaccard("a b c d", "a b c e", ShingleUnit::Words, 2), 0.5);
        assert_eq!(jaccard("", "", ShingleUnit::Words, 2), 1.0);
        assert_eq!(jaccard("a b", "", ShingleUnit::Words, 2), 0.0);
        let texts: Vec<String> = ["a b c d", "a b c e", "x y z"].map(String::from).to_vec();
        assert_eq!(
            similar_pairs(&texts, ShingleUnit::Words, 2, 0.5),
            vec![(0, 1)]
        );
        assert!(similar_pairs(&texts, ShingleUnit::Words, 2, 0.6).is_empty());
    }
}
