//! The filter-and-rank job: a corpus of prompts with one or more responses each is scored by the
//! reward model; rows are kept by thresholds on any score, top-k per prompt and a quantile over
//! the run (`steerflow_operators::filter`); every kept row carries its scores and its rank among
//! its prompt's responses. The summary says how many rows each rule removed.
//!
//! Input rows (jsonl or parquet): `messages` ending with the assistant response, or `prompt` +
//! `response`. Responses to the same conversation are one prompt's responses.

use crate::formats::{ExportFormat, Shard};
use crate::reject::{enforce_limit, RejectLimit};
use crate::sink::{attributes_array, finish_dataset, messages_array, write_parquet_shard};
use crate::source::{read_prompts, InputFormat, RecordShape};
use crate::spec::Normalization;
use crate::storage::{io_runtime, Location};
use crate::PipelineError;
use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use steerflow_models::RewardModel;
use steerflow_operators::filter::{apply_filters, FilterRow, FilterRules};
use steerflow_operators::goodness::BoundGoodness;
use steerflow_operators::normalize::{normalize_goodness, NormStats};
use steerflow_operators::records::Message;
use steerflow_operators::seeding::prompt_id_from_messages;

/// Scores, filters and ranks `input` into a dataset folder at `output`; returns the summary.
#[allow(clippy::too_many_arguments)]
pub fn run_filter_rank(
    input: &str,
    format: InputFormat,
    output: &str,
    reward: &dyn RewardModel,
    goodness: &BoundGoodness,
    normalization: Normalization,
    rules: &FilterRules,
    max_rejects: RejectLimit,
) -> Result<serde_json::Value, PipelineError> {
    let source = read_prompts(input, format, RecordShape::Response)?;
    enforce_limit(max_rejects, &source.rejects, source.records)?;
    let rows = &source.prompts;
    let split: Vec<(&[Message], &str)> = rows
        .iter()
        .map(|p| match p.messages.split_last() {
            Some((last, rest)) => (rest, last.content.as_str()),
            None => (&[][..], ""),
        })
        .collect();
    let prompt_ids: Vec<String> = split
        .iter()
        .map(|(c, _)| prompt_id_from_messages(c))
        .collect();
    let names = reward.attribute_names();
    let attributes: Vec<Vec<f64>> = reward
        .score_batch(&split)
        .into_iter()
        .map(|r| {
            r.map(|s| s.attributes)
                .unwrap_or_else(|_| vec![f64::NAN; names.len()])
        })
        .collect();
    let goodness_values: Vec<f64> = attributes.iter().map(|a| goodness.goodness(a)).collect();
    let (normalized, per_prompt) = normalize_all(&prompt_ids, &goodness_values, normalization);
    let filter_rows: Vec<FilterRow> = (0..rows.len())
        .map(|i| {
            let mut scores: BTreeMap<String, f64> = names
                .iter()
                .cloned()
                .zip(attributes[i].iter().copied())
                .collect();
            scores.insert("goodness".into(), goodness_values[i]);
            scores.insert("normalized_goodness".into(), normalized[i]);
            FilterRow {
                prompt_id: prompt_ids[i].clone(),
                goodness: goodness_values[i],
                scores,
            }
        })
        .collect();
    let outcome = apply_filters(&filter_rows, rules);
    let keep: Vec<usize> = (0..rows.len()).filter(|&i| outcome.kept[i]).collect();
    let scored = ScoredRows {
        ids: rows.iter().map(|r| r.id.as_str()).collect(),
        split: &split,
        prompt_ids: &prompt_ids,
        names: &names,
        attributes: &attributes,
        goodness: &goodness_values,
        normalized: &normalized,
        rank: &outcome.rank,
        responses_of_prompt: &per_prompt,
    };
    let batch = kept_batch(&scored, &keep)?;
    let summary = json!({
        "job": "filter-rank",
        "input": input,
        "output": output,
        "scorer": reward.id(),
        "normalization": normalization.name(),
        "counts": {
            "rows": rows.len(),
            "prompts": per_prompt.len(),
            "kept": keep.len(),
            "removed_by": outcome.removed_by,
            "rejected": source.rejects.len(),
        },
        "quantile_threshold": outcome.quantile_threshold,
    });
    let out = Location::parse(output, true)?;
    let description = "A scored corpus filtered and ranked by steerflow: every row carries its scores and its rank among its prompt's responses.";
    let rt = io_runtime()?;
    let file = write_parquet_shard(
        &out,
        rt,
        &batch,
        ExportFormat::Conversational,
        Shard::plain(0, 1),
    )?;
    finish_dataset(
        &out,
        rt,
        std::slice::from_ref(&file),
        &source.rejects,
        &summary,
        description,
    )?;
    Ok(summary)
}

/// Normalised goodness of every row (by the run, its prompt, or the reference) and how many
/// responses each prompt has.
fn normalize_all(
    prompt_ids: &[String],
    goodness: &[f64],
    normalization: Normalization,
) -> (Vec<f64>, BTreeMap<String, usize>) {
    let run_stats = NormStats::from_values(goodness.iter().copied());
    let mut per_prompt: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (id, g) in prompt_ids.iter().zip(goodness) {
        per_prompt.entry(id.as_str()).or_default().push(*g);
    }
    let prompt_stats: BTreeMap<&str, Option<NormStats>> = per_prompt
        .iter()
        .map(|(id, v)| (*id, NormStats::from_values(v.iter().copied())))
        .collect();
    let normalized = prompt_ids
        .iter()
        .zip(goodness)
        .map(|(id, &g)| {
            let stats = match normalization {
                Normalization::Reference(s) => Some(s),
                Normalization::Run => run_stats,
                Normalization::PerPrompt => prompt_stats.get(id.as_str()).copied().flatten(),
            };
            match stats {
                Some(s) if g.is_finite() => normalize_goodness(g, &s),
                _ => f64::NAN,
            }
        })
        .collect();
    let counts = per_prompt
        .into_iter()
        .map(|(id, v)| (id.to_string(), v.len()))
        .collect();
    (normalized, counts)
}

/// Every scored row, column by column.
struct ScoredRows<'a> {
    ids: Vec<&'a str>,
    split: &'a [(&'a [Message], &'a str)],
    prompt_ids: &'a [String],
    names: &'a [String],
    attributes: &'a [Vec<f64>],
    goodness: &'a [f64],
    normalized: &'a [f64],
    rank: &'a [u32],
    responses_of_prompt: &'a BTreeMap<String, usize>,
}

/// The kept rows as the output's record batch.
fn kept_batch(rows: &ScoredRows<'_>, keep: &[usize]) -> Result<RecordBatch, PipelineError> {
    fn strings<'s>(keep: &[usize], f: impl Fn(usize) -> &'s str) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(keep.iter().map(|&i| f(i))))
    }
    let floats = |v: &[f64]| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(keep.iter().map(|&i| v[i])))
    };
    let conversations: Vec<Vec<Message>> = keep.iter().map(|&i| rows.split[i].0.to_vec()).collect();
    let kept_attributes: Vec<&[f64]> = keep
        .iter()
        .map(|&i| rows.attributes[i].as_slice())
        .collect();
    Ok(RecordBatch::try_from_iter([
        ("prompt_id", strings(keep, |i| rows.prompt_ids[i].as_str())),
        ("id", strings(keep, |i| rows.ids[i])),
        (
            "messages",
            Arc::new(messages_array(&conversations)) as ArrayRef,
        ),
        ("response", strings(keep, |i| rows.split[i].1)),
        (
            "attributes",
            Arc::new(attributes_array(rows.names, &kept_attributes)) as ArrayRef,
        ),
        ("goodness", floats(rows.goodness)),
        ("normalized_goodness", floats(rows.normalized)),
        (
            "rank",
            Arc::new(Int32Array::from_iter_values(
                keep.iter().map(|&i| rows.rank[i] as i32),
            )) as ArrayRef,
        ),
        (
            "n_responses",
            Arc::new(Int32Array::from_iter_values(keep.iter().map(|&i| {
                rows.responses_of_prompt[rows.prompt_ids[i].as_str()] as i32
            }))),
        ),
    ])?)
}
