//! `[dedup]`: the settings of the `dedup` job kind, and of prompt deduplication before sampling
//! in iterative-DPO jobs (where the section's presence turns it on). docs/dedup.md.

use crate::error::{invalid, JobError};
use serde::Deserialize;
use std::sync::Arc;
use steerflow_operators::dedup::{KeepRule, MinHashParams, MinHasher, ShingleUnit, TextNorm};
use steerflow_pipeline::dedup::references::{NgramParams, References};
use steerflow_pipeline::dedup::NearParams;

/// What counts as a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupMethod {
    /// The same normalised text.
    Exact,
    /// The same normalised text, or MinHash similarity at or above `threshold`.
    #[default]
    Near,
}

/// `[dedup]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupSection {
    /// The field holding the text: a string, a list of strings or a list of messages; dots
    /// reach into objects (`meta.text`).
    pub field: String,
    pub method: DedupMethod,
    /// The Jaccard similarity (estimated from the signatures) at which two texts are near
    /// duplicates.
    pub threshold: f64,
    /// Shingles of `words` or `chars`, `shingle` units long.
    pub unit: ShingleUnit,
    pub shingle: usize,
    /// MinHash functions; `bands × rows` of them form the LSH bands, all of them estimate
    /// similarity.
    pub permutations: usize,
    pub bands: usize,
    pub rows: usize,
    pub seed: u64,
    /// Which record of a cluster is kept: `first`, `longest` or `highest_score`.
    pub keep: KeepRule,
    /// The numeric field `keep = "highest_score"` reads.
    pub score_field: String,
    pub normalize: TextNorm,
    pub decontaminate: DecontaminateSection,
}

impl Default for DedupSection {
    fn default() -> Self {
        let p = MinHashParams::default();
        // 20 bands of 5 rows make a pair at the threshold a candidate with probability 0.9997
        // (0.975 at 0.7); the threshold then decides on all 128 positions.
        Self {
            field: "text".into(),
            method: DedupMethod::Near,
            threshold: 0.8,
            unit: p.unit,
            shingle: p.shingle,
            permutations: p.permutations,
            bands: 20,
            rows: 5,
            seed: p.seed,
            keep: KeepRule::First,
            score_field: "score".into(),
            normalize: TextNorm::default(),
            decontaminate: DecontaminateSection::default(),
        }
    }
}

/// `[dedup.decontaminate]`: benchmark sets whose items must not be in the corpus.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DecontaminateSection {
    /// Files or folders (jsonl or parquet, local or object storage); none: no decontamination.
    pub references: Vec<String>,
    /// The items' text field; empty: the first of `text`, `prompt`, `instruction`, `question`,
    /// `turns`, `messages`, `conversations`.
    pub field: String,
    /// Words per n-gram.
    pub n: usize,
    /// Items with fewer words are not used (reported in the summary).
    pub min_words: usize,
}

impl Default for DecontaminateSection {
    fn default() -> Self {
        Self {
            references: Vec::new(),
            field: String::new(),
            n: 13,
            min_words: 8,
        }
    }
}

impl DedupSection {
    pub fn minhash(&self) -> MinHashParams {
        MinHashParams {
            unit: self.unit,
            shingle: self.shingle,
            permutations: self.permutations,
            bands: self.bands,
            rows: self.rows,
            seed: self.seed,
        }
    }
}

impl DedupSection {
    /// Checks the values without reading anything.
    pub fn check(&self) -> Result<(), JobError> {
        if self.field.is_empty() {
            return Err(invalid("dedup.field must name the field holding the text"));
        }
        if let Some(problem) = self.minhash().problem() {
            return Err(invalid(problem));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(invalid(format!(
                "dedup.threshold must be in (0, 1], got {}",
                self.threshold
            )));
        }
        let d = &self.decontaminate;
        if d.n == 0 || d.min_words == 0 {
            return Err(invalid(
                "dedup.decontaminate.n and min_words must be at least 1",
            ));
        }
        Ok(())
    }

    /// How near duplicates are found (`threshold: None` for `method = "exact"`).
    pub fn near(&self) -> NearParams {
        NearParams {
            hasher: MinHasher::new(self.minhash()),
            threshold: (self.method == DedupMethod::Near).then_some(self.threshold),
        }
    }

    /// The benchmark items of `decontaminate.references`, if any are named.
    pub fn references(&self) -> Result<Option<Arc<References>>, JobError> {
        let d = &self.decontaminate;
        if d.references.is_empty() {
            return Ok(None);
        }
        let params = NgramParams {
            n: d.n,
            min_words: d.min_words,
            norm: self.normalize,
        };
        Ok(Some(Arc::new(References::load(
            &d.references,
            &d.field,
            params,
        )?)))
    }

    /// The settings that decide which records are left out, for a run's lineage.
    pub fn lineage(&self, references: Option<&References>) -> serde_json::Value {
        let d = &self.decontaminate;
        serde_json::json!({
            "field": self.field, "method": format!("{:?}", self.method), "threshold": self.threshold,
            "minhash": self.minhash(), "keep": self.keep, "score_field": self.score_field,
            "normalize": self.normalize,
            "decontaminate": references.map(|r| serde_json::json!({
                "references": r.identity, "field": d.field, "n": d.n, "min_words": d.min_words,
            })),
        })
    }
}
