//! `[dedup]` in a sampling job: before anything is sampled, prompts that duplicate another
//! prompt (exactly or nearly) or contain a benchmark item are left out, each reported as a
//! reject naming the copy kept or the item (`duplicate_prompt`, `contaminated`: decisions, not
//! errors, so they do not count against `input.max_rejects`). Prompts committed by earlier
//! runs of the output come first in the keep order, so a grown input never samples a copy of
//! a prompt already sampled. The same clustering as the `dedup` job, over the prompts' text
//! (every message's content, one per line).

use super::entries::{deduplicate, Entry, Match};
use super::references::References;
use super::NearParams;
use crate::cluster::ClusterSpec;
use crate::input::{read_share_alone, InputFile};
use crate::records::PromptKey;
use crate::reject::RejectReason;
use crate::source::RecordShape;
use crate::PipelineError;
use std::collections::HashMap;
use std::sync::Arc;
use steerflow_operators::dedup::{KeepRule, TextNorm};
use steerflow_operators::records::Prompt;

/// How a sampling job deduplicates its prompts.
#[derive(Debug, Clone)]
pub struct PromptDedup {
    pub norm: TextNorm,
    /// `threshold: None`: exact duplicates only.
    pub near: NearParams,
    /// `first` or `longest` (prompts carry no score).
    pub keep: KeepRule,
    pub references: Option<Arc<References>>,
    /// Timely workers of the clustering.
    pub workers: usize,
    /// The settings, for the run's lineage.
    pub lineage: serde_json::Value,
}

/// Prompt id → why it is left out.
pub type Excluded = HashMap<String, (RejectReason, String)>;

/// The text a prompt is compared by.
fn text_of(prompt: &Prompt) -> String {
    let parts: Vec<&str> = prompt.messages.iter().map(|m| m.content.as_str()).collect();
    parts.join("\n")
}

/// Reads every prompt of `files` and decides which new ones are left out; `settled` holds the
/// prompts earlier runs committed (id → digest).
pub fn excluded_prompts(
    dedup: &PromptDedup,
    files: &[InputFile],
    settled: &HashMap<String, String>,
) -> Result<Excluded, PipelineError> {
    let mut prompts = read_share_alone(files, 0, 1, RecordShape::Prompt)?.prompts;
    // The first of a repeated id is the one the run plans (the others are `duplicate_id`).
    prompts.sort_by(|a, b| {
        (a.source.file.as_str(), a.source.record).cmp(&(b.source.file.as_str(), b.source.record))
    });
    let mut seen = std::collections::HashSet::new();
    prompts.retain(|p| seen.insert(p.id.clone()));
    let hasher = dedup.near.threshold.map(|_| &dedup.near.hasher);
    let entry = |p: &Prompt, text: &str| {
        let position = (p.id.clone(), p.source.file.clone(), p.source.record);
        Entry::of_text(position, text, None, (&dedup.norm, hasher))
    };
    let (mut earlier, mut new) = (Vec::new(), Vec::new());
    let mut excluded = Excluded::new();
    for p in &prompts {
        let text = text_of(p);
        match settled.get(&p.id) {
            Some(digest) if *digest == PromptKey::of(p).digest => earlier.push(entry(p, &text)),
            // Changed under a committed id: rejected as such by the run.
            Some(_) => {}
            None => match dedup.references.as_ref().and_then(|r| r.find(&text)) {
                Some(hit) => {
                    let detail = format!(
                        "the prompt contains benchmark item `{}` of {} ({} shared n-grams); it is not sampled",
                        hit.item.id,
                        crate::storage::redact_url(&hit.item.file),
                        hit.grams
                    );
                    excluded.insert(p.id.clone(), (RejectReason::Contaminated, detail));
                }
                None => new.push(entry(p, &text)),
            },
        }
    }
    let spec = ClusterSpec::single(dedup.workers);
    let (decisions, _) = deduplicate(&earlier, &new, dedup.keep, &dedup.near, &spec)?;
    let base = earlier.len();
    let all: Vec<&Entry> = earlier.iter().chain(&new).collect();
    for (i, e) in new.iter().enumerate() {
        let d = &decisions[base + i];
        let Some(matched) = d.matched else { continue };
        let kept = all[d.kept];
        let how = match matched {
            Match::Exact => "the same text".to_string(),
            Match::Near => format!("similarity {:.3}", d.similarity),
        };
        let when = if d.kept < base {
            "an earlier run sampled it"
        } else {
            "it is sampled"
        };
        let detail = format!(
            "duplicate of prompt `{}` ({}:{}; {how}); {when}, this one is not",
            kept.id, kept.file, kept.record
        );
        excluded.insert(e.id.clone(), (RejectReason::DuplicatePrompt, detail));
    }
    Ok(excluded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steerflow_operators::dedup::{MinHashParams, MinHasher};

    #[test]
    fn copies_and_benchmark_prompts_are_left_out_naming_the_kept_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let long = "Explain how photosynthesis turns light, water and carbon dioxide into glucose and oxygen, and why chlorophyll absorbs mostly red and blue light.";
        let lines = [
            format!(r#"{{"id": "a", "prompt": "{long}"}}"#),
            r#"{"id": "b", "prompt": "Write a haiku about rain."}"#.to_string(),
            format!(r#"{{"id": "c", "prompt": "{}"}}"#, long.to_uppercase()),
            format!(r#"{{"id": "d", "prompt": "{} so well."}}"#, &long[..long.len() - 1]),
            r#"{"id": "e", "prompt": "Please: compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions."}"#.to_string(),
        ];
        let input = dir.path().join("p.jsonl");
        std::fs::write(&input, lines.join("\n") + "\n").unwrap();
        let bench = dir.path().join("bench.jsonl");
        std::fs::write(&bench, "{\"question_id\": 81, \"turns\": [\"Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions.\"]}\n").unwrap();
        let params = super::super::references::NgramParams {
            n: 13,
            min_words: 8,
            norm: TextNorm::default(),
        };
        let references = References::load(&[bench.display().to_string()], "", params).unwrap();
        let dedup = PromptDedup {
            norm: TextNorm::default(),
            near: NearParams {
                hasher: MinHasher::new(MinHashParams {
                    bands: 20,
                    rows: 5,
                    ..MinHashParams::default()
                }),
                threshold: Some(0.7),
            },
            keep: KeepRule::First,
            references: Some(Arc::new(references)),
            workers: 1,
            lineage: serde_json::Value::Null,
        };
        let files = crate::input::list_input(&input.display().to_string(), "auto").unwrap();
        let excluded = excluded_prompts(&dedup, &files, &HashMap::new()).unwrap();
        let mut ids: Vec<&str> = excluded.keys().map(String::as_str).collect();
        ids.sort();
        assert_eq!(ids, ["c", "d", "e"]);
        assert_eq!(excluded["c"].0, RejectReason::DuplicatePrompt);
        assert!(
            excluded["c"].1.contains("prompt `a`") && excluded["c"].1.contains("the same text"),
            "{}",
            excluded["c"].1
        );
        assert!(
            excluded["d"].1.contains("similarity"),
            "{}",
            excluded["d"].1
        );
        assert_eq!(excluded["e"].0, RejectReason::Contaminated);
        assert!(excluded["e"].1.contains("`81`"));

        // `a` committed by an earlier run: now `c` and `d` copy a prompt already sampled.
        let a = read_share_alone(&files, 0, 1, RecordShape::Prompt)
            .unwrap()
            .prompts
            .remove(0);
        let settled = HashMap::from([(a.id.clone(), PromptKey::of(&a).digest)]);
        let excluded = excluded_prompts(&dedup, &files, &settled).unwrap();
        assert!(excluded["c"].1.contains("an earlier run sampled it"));
        assert!(!excluded.contains_key("a"));
    }
}
