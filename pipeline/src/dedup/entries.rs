//! The records of a dedup run as the run store keeps them ([`Entry`]: position, keep-rule
//! inputs, text hash, signature; never the text), and the decision over earlier runs' entries
//! and new ones together ([`deduplicate`]): which record each one's cluster keeps.

use super::{cluster, round_robin, Fingerprint, GraphCounts, NearParams};
use crate::cluster::ClusterSpec;
use crate::PipelineError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use steerflow_operators::dedup::keep::KeepKey;
use steerflow_operators::dedup::minhash::estimate;
use steerflow_operators::dedup::{KeepRule, MinHasher, TextNorm};
use xxhash_rust::xxh3::xxh3_128;

/// A record as deduplication sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub file: String,
    pub record: u64,
    /// Characters of the text.
    pub length: u64,
    pub score: Option<f64>,
    /// xxh3-128 of the normalised text.
    pub exact: u128,
    pub signature: Option<Vec<u64>>,
}

impl Entry {
    /// The entry of a record's text.
    pub fn of_text(
        (id, file, record): (String, String, u64),
        text: &str,
        score: Option<f64>,
        (norm, hasher): (&TextNorm, Option<&MinHasher>),
    ) -> Self {
        let normal = norm.apply(text);
        Entry {
            id,
            file,
            record,
            length: text.chars().count() as u64,
            score,
            exact: xxh3_128(normal.as_bytes()),
            signature: hasher.and_then(|h| h.signature(&normal)),
        }
    }
}

/// How a duplicate matched the record its cluster keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// The same normalised text.
    Exact,
    /// Linked to it by pairs of similar signatures.
    Near,
}

impl Match {
    pub fn as_str(self) -> &'static str {
        match self {
            Match::Exact => "exact",
            Match::Near => "near",
        }
    }
}

/// What deduplication decided for one entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The index (in the `earlier` then `new` order given) of the entry its cluster keeps;
    /// its own index when it is kept.
    pub kept: usize,
    /// Records in its cluster.
    pub cluster_size: usize,
    /// `None` for a kept record.
    pub matched: Option<Match>,
    /// The signature estimate of Jaccard similarity to the kept record (1 for exact).
    pub similarity: f64,
}

/// Decides every entry of `earlier` (committed by earlier runs, which always come first in
/// the keep order, so a new record never displaces a written one) then `new`, on `spec`'s
/// workers.
pub fn deduplicate(
    earlier: &[Entry],
    new: &[Entry],
    rule: KeepRule,
    near: &NearParams,
    spec: &ClusterSpec,
) -> Result<(Vec<Decision>, GraphCounts), PipelineError> {
    let all: Vec<(&Entry, u8)> = earlier
        .iter()
        .map(|e| (e, 0))
        .chain(new.iter().map(|e| (e, 1)))
        .collect();
    let files: BTreeMap<&str, u32> = {
        let mut names: Vec<&str> = all.iter().map(|(e, _)| e.file.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().zip(0..).collect()
    };
    let keys: Vec<KeepKey> = all
        .iter()
        .map(|(e, generation)| KeepKey {
            generation: *generation,
            length: e.length as usize,
            score: e.score.filter(|s| s.is_finite()),
            file: files[e.file.as_str()],
            record: e.record,
        })
        .collect();
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| rule.order(&keys[a], &keys[b]));
    let fingerprints: Arc<Vec<Fingerprint>> = Arc::new(
        order
            .iter()
            .enumerate()
            .map(|(node, &i)| Fingerprint {
                node: node as u64,
                exact: all[i].0.exact,
                signature: all[i].0.signature.clone(),
            })
            .collect(),
    );
    let share = fingerprints.clone();
    let clusters = cluster(spec, near, move |w, n| round_robin(&share, w, n))?;
    if clusters.labels.len() != all.len() {
        return Err(PipelineError::Worker(format!(
            "dedup: {} labels for {} records",
            clusters.labels.len(),
            all.len()
        )));
    }
    let mut kept = vec![0; all.len()];
    let mut sizes: BTreeMap<usize, usize> = BTreeMap::new();
    for label in &clusters.labels {
        let k = order[label.kept as usize];
        kept[order[label.node as usize]] = k;
        *sizes.entry(k).or_default() += 1;
    }
    let decisions = (0..all.len())
        .map(|i| {
            let (e, k) = (all[i].0, all[kept[i]].0);
            let how = if e.exact == k.exact {
                Match::Exact
            } else {
                Match::Near
            };
            let matched = (kept[i] != i).then_some(how);
            let similarity = match (&e.signature, &k.signature) {
                _ if e.exact == k.exact => 1.0,
                (Some(a), Some(b)) => estimate(a, b),
                _ => 0.0,
            };
            Decision {
                kept: kept[i],
                cluster_size: sizes[&kept[i]],
                matched,
                similarity,
            }
        })
        .collect();
    Ok((decisions, clusters.counts))
}

/// An entry in a run's index file, with whether its run kept (wrote) the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Indexed {
    pub entry: Entry,
    pub kept: bool,
}

/// Index entries as the run store keeps them (bincode).
pub fn encode(entries: &[Indexed]) -> Result<Vec<u8>, PipelineError> {
    bincode::serialize(entries).map_err(|e| PipelineError::Worker(format!("dedup index: {e}")))
}

/// Index entries read back; `location` names the file in the error.
pub fn decode(bytes: &[u8], location: &str) -> Result<Vec<Indexed>, PipelineError> {
    bincode::deserialize(bytes).map_err(|e| PipelineError::Input {
        location: location.into(),
        message: format!("not a dedup index of this version: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use steerflow_operators::dedup::MinHashParams;

    fn entry(id: &str, record: u64, text: &str, hasher: &MinHasher) -> Entry {
        Entry::of_text(
            (id.into(), "f.jsonl".into(), record),
            text,
            None,
            (&TextNorm::default(), Some(hasher)),
        )
    }

    #[test]
    fn earlier_entries_are_kept_ahead_and_the_rule_picks_within_a_run() {
        let hasher = MinHasher::new(MinHashParams::default());
        let long = "one two three four five six seven eight nine ten eleven twelve";
        let near = NearParams {
            hasher: hasher.clone(),
            threshold: Some(0.5),
        };
        let new = vec![
            entry("a", 1, long, &hasher),
            entry("b", 2, &format!("{long} thirteen"), &hasher),
            entry("c", 3, &long.to_uppercase(), &hasher),
            entry("d", 4, "something else entirely here", &hasher),
        ];
        let spec = ClusterSpec::single(1);
        let (first, counts) = deduplicate(&[], &new, KeepRule::First, &near, &spec).unwrap();
        assert_eq!(
            first.iter().map(|d| d.kept).collect::<Vec<_>>(),
            [0, 0, 0, 3]
        );
        assert_eq!(first[2].matched, Some(Match::Exact));
        assert_eq!(first[1].matched, Some(Match::Near));
        assert!(first[1].similarity > 0.5 && first[1].similarity < 1.0);
        assert_eq!(first[0].cluster_size, 3);
        assert_eq!(counts.exact_duplicates, 1);
        let (longest, _) = deduplicate(&[], &new, KeepRule::Longest, &near, &spec).unwrap();
        assert_eq!(
            longest.iter().map(|d| d.kept).collect::<Vec<_>>(),
            [1, 1, 1, 3]
        );
        // An earlier run kept `c`'s text: it stays kept, whatever the rule.
        let earlier = vec![entry("z", 9, long, &hasher)];
        let (inc, _) = deduplicate(&earlier, &new, KeepRule::Longest, &near, &spec).unwrap();
        assert_eq!(
            inc.iter().map(|d| d.kept).collect::<Vec<_>>(),
            [0, 0, 0, 0, 4]
        );
        let index: Vec<Indexed> = new
            .iter()
            .map(|e| Indexed {
                entry: e.clone(),
                kept: true,
            })
            .collect();
        assert_eq!(decode(&encode(&index).unwrap(), "x").unwrap(), index);
    }
}
