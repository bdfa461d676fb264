//! Which record of a cluster is kept: every record gets a priority, the cluster keeps the one
//! with the best, the others are its duplicates.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Which copy of a cluster is kept (`dedup.keep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepRule {
    /// The first by input order (file, then line or row).
    #[default]
    First,
    /// The longest text; ties by input order.
    Longest,
    /// The highest score (`dedup.score_field`); records without one come last; ties by input
    /// order.
    HighestScore,
}

/// What the keep rule looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepKey {
    /// Records committed by earlier runs come before new ones (`0` and `1`), so a grown input
    /// never displaces a record already written.
    pub generation: u8,
    /// Characters of the text.
    pub length: usize,
    pub score: Option<f64>,
    /// The input file's position among the run's files, then the record's in the file.
    pub file: u32,
    pub record: u64,
}

impl KeepRule {
    /// `Less` when `a` is kept before `b`. A total order: ties end at (file, record).
    pub fn order(self, a: &KeepKey, b: &KeepKey) -> Ordering {
        let by_rule = match self {
            KeepRule::First => Ordering::Equal,
            KeepRule::Longest => b.length.cmp(&a.length),
            KeepRule::HighestScore => match (a.score, b.score) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            },
        };
        a.generation
            .cmp(&b.generation)
            .then(by_rule)
            .then(a.file.cmp(&b.file))
            .then(a.record.cmp(&b.record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(generation: u8, length: usize, score: Option<f64>, record: u64) -> KeepKey {
        KeepKey {
            generation,
            length,
            score,
            file: 0,
            record,
        }
    }

    #[test]
    fn each_rule_orders_as_documented() {
        let a = key(1, 10, Some(1.0), 0);
        let b = key(1, 20, None, 1);
        let c = key(1, 5, Some(3.0), 2);
        let mut keys = [c.clone(), b.clone(), a.clone()];
        keys.sort_by(|x, y| KeepRule::First.order(x, y));
        assert_eq!(keys.each_ref().map(|k| k.record), [0, 1, 2]);
        keys.sort_by(|x, y| KeepRule::Longest.order(x, y));
        assert_eq!(keys.each_ref().map(|k| k.record), [1, 0, 2]);
        keys.sort_by(|x, y| KeepRule::HighestScore.order(x, y));
        assert_eq!(keys.each_ref().map(|k| k.record), [2, 0, 1]);
        let committed = key(0, 1, None, 9);
        assert_eq!(KeepRule::Longest.order(&committed, &b), Ordering::Less);
    }
}
