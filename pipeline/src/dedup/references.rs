//! Decontamination: the benchmark items of reference files (jsonl or parquet, files or
//! folders) as an index of word n-grams, and the item a record's text shares n-grams with.

use super::corpus::{auto_text, text_of};
use crate::input::{input_identity, list_input, InputFile};
use crate::values::read_values;
use crate::PipelineError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use steerflow_operators::dedup::ngrams::{record_grams, reference_grams};
use steerflow_operators::dedup::TextNorm;

/// How benchmark items are matched.
#[derive(Debug, Clone, PartialEq)]
pub struct NgramParams {
    /// Words per n-gram (13 by default).
    pub n: usize,
    /// Items with fewer words are not used (counted in [`References::too_short`]).
    pub min_words: usize,
    pub norm: TextNorm,
}

/// A benchmark item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefItem {
    pub file: String,
    pub id: String,
}

/// The benchmark item a record matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contamination {
    pub item: RefItem,
    /// Distinct n-grams of the record found in that item.
    pub grams: u32,
}

/// Every n-gram of every benchmark item.
#[derive(Debug, Clone)]
pub struct References {
    params: NgramParams,
    /// n-gram → the first item (in file and record order) that has it.
    grams: HashMap<u64, u32>,
    items: Vec<RefItem>,
    /// The lengths of the items shorter than `n` words, each matched as one gram.
    short_sizes: Vec<usize>,
    /// Items left out for having fewer than `min_words` words.
    pub too_short: u64,
    /// The digest of the reference files and their versions (part of a run's lineage).
    pub identity: String,
}

impl References {
    /// Reads every item of `specs`; the text is `field` of each record, or the first of the
    /// usual fields (`text`, `prompt`, `instruction`, `question`, `turns`...) when `field` is
    /// empty. A record without it is an error naming the file and line: a reference set that
    /// is silently incomplete would let contamination through.
    pub fn load(specs: &[String], field: &str, params: NgramParams) -> Result<Self, PipelineError> {
        let mut files: Vec<InputFile> = Vec::new();
        for spec in specs {
            files.extend(list_input(spec, "auto")?);
        }
        let mut refs = References {
            identity: input_identity(&files),
            params,
            grams: HashMap::new(),
            items: Vec::new(),
            short_sizes: Vec::new(),
            too_short: 0,
        };
        let mut short = BTreeSet::new();
        for file in &files {
            let values = read_values(file)?;
            if let Some(bad) = values.rejects.first() {
                return Err(PipelineError::Input {
                    location: file.spec.clone(),
                    message: format!("reference record {}: {}", bad.record, bad.detail),
                });
            }
            for (position, value) in values.records {
                let text = if field.is_empty() {
                    auto_text(&value)
                } else {
                    text_of(&value, field)
                };
                let text = text.map_err(|(_, reason, detail)| PipelineError::Input {
                    location: file.spec.clone(),
                    message: format!("reference record {position}: {reason}: {detail}"),
                })?;
                let normal = refs.params.norm.apply(&text);
                let Some(grams) = reference_grams(&normal, refs.params.n, refs.params.min_words)
                else {
                    refs.too_short += 1;
                    continue;
                };
                let words = normal.split_whitespace().count();
                if words < refs.params.n {
                    short.insert(words);
                }
                let index = refs.items.len() as u32;
                refs.items.push(RefItem {
                    file: file.spec.clone(),
                    id: item_id(&value, position, file.parquet),
                });
                for g in grams {
                    refs.grams.entry(g).or_insert(index);
                }
            }
        }
        refs.short_sizes = short.into_iter().collect();
        Ok(refs)
    }

    /// Benchmark items indexed.
    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// The item sharing the most n-grams with `text` (ties: the first item), if any.
    pub fn find(&self, text: &str) -> Option<Contamination> {
        let normal = self.params.norm.apply(text);
        let mut hits: HashMap<u32, u32> = HashMap::new();
        for g in record_grams(&normal, self.params.n, &self.short_sizes) {
            if let Some(&item) = self.grams.get(&g) {
                *hits.entry(item).or_default() += 1;
            }
        }
        let (item, grams) = hits
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
        Some(Contamination {
            item: self.items[item as usize].clone(),
            grams,
        })
    }
}

/// A benchmark item's id: `id`, `question_id` or `uid`, else its line or row.
fn item_id(value: &serde_json::Value, position: u64, parquet: bool) -> String {
    for key in ["id", "question_id", "uid"] {
        match value.get(key) {
            Some(serde_json::Value::String(s)) => return s.clone(),
            Some(serde_json::Value::Number(n)) => return n.to_string(),
            _ => {}
        }
    }
    crate::values::record_id(value, position, parquet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_item_a_record_contains_and_nothing_in_clean_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.jsonl");
        std::fs::write(
            &path,
            concat!(
                "{\"question_id\": 81, \"turns\": [\"Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions.\", \"Rewrite it.\"]}\n",
                "{\"question_id\": 82, \"turns\": [\"Hi\"]}\n",
            ),
        )
        .unwrap();
        let params = NgramParams {
            n: 13,
            min_words: 8,
            norm: TextNorm::default(),
        };
        let refs = References::load(&[path.display().to_string()], "", params).unwrap();
        assert_eq!(refs.items(), 1);
        assert_eq!(refs.too_short, 1);
        let hit = refs
            .find("Sure! compose an ENGAGING travel blog post about a recent trip to hawaii, highlighting cultural experiences and more.")
            .unwrap();
        assert_eq!(hit.item.id, "81");
        assert!(hit.grams >= 1);
        assert!(refs
            .find("Write a travel blog post about Hawaii and its cultural experiences.")
            .is_none());
    }
}
