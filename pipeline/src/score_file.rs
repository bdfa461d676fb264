//! `steerflow score`: every response of a file scored by one reward model, written as one
//! parquet file, in input order. A record that cannot be scored keeps its row, with null
//! scores and the reason in `error`; records that cannot be read go to `<output>.rejects.jsonl`.

use crate::reject::rejects_jsonl;
use crate::sink::parquet_bytes;
use crate::source::{read_prompts, InputFormat, RecordShape};
use crate::storage::{io_runtime, Location};
use crate::PipelineError;
use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields};
use std::sync::Arc;
use steerflow_models::{ModelError, RewardModel, RewardScores};
use steerflow_operators::records::{Message, Prompt};

/// Responses scored per call into the model (they are batched by length inside it).
pub const SCORE_BATCH: usize = 32;

/// What a `score` run did.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreReport {
    pub scored: u64,
    pub failed: u64,
    pub rejected: u64,
    pub truncated: u64,
}

/// Scores `input` with `reward` and writes `output` (a parquet file path or URL).
pub fn score_file(
    input: &str,
    format: InputFormat,
    output: &str,
    reward: &dyn RewardModel,
) -> Result<ScoreReport, PipelineError> {
    let source = read_prompts(input, format, RecordShape::Response)?;
    let mut results: Vec<Result<RewardScores, ModelError>> =
        Vec::with_capacity(source.prompts.len());
    for chunk in source.prompts.chunks(SCORE_BATCH) {
        let items: Vec<(&[Message], &str)> = chunk.iter().map(split_response).collect();
        results.extend(crate::store_run::score_items(reward, &items)?);
    }
    let batch = scores_batch(&source.prompts, &results, reward)?;
    let (location, file) = Location::parse_file(output)?;
    let rt = io_runtime()?;
    rt.block_on(location.put(file.as_ref(), parquet_bytes(&batch)?))?;
    if !source.rejects.is_empty() {
        rt.block_on(location.put(
            &format!("{}.rejects.jsonl", file.as_ref()),
            rejects_jsonl(&source.rejects),
        ))?;
    }
    Ok(ScoreReport {
        scored: results.iter().filter(|r| r.is_ok()).count() as u64,
        failed: results.iter().filter(|r| r.is_err()).count() as u64,
        rejected: source.rejects.len() as u64,
        truncated: results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|s| s.dropped_turns > 0))
            .count() as u64,
    })
}

/// The conversation before the last message, and the last message (the response).
fn split_response(p: &Prompt) -> (&[Message], &str) {
    match p.messages.split_last() {
        Some((last, rest)) => (rest, last.content.as_str()),
        None => (&[], ""),
    }
}

fn scores_batch(
    prompts: &[Prompt],
    results: &[Result<RewardScores, ModelError>],
    reward: &dyn RewardModel,
) -> Result<RecordBatch, PipelineError> {
    let names = reward.attribute_names();
    let fields: Fields = names
        .iter()
        .map(|n| Field::new(n, DataType::Float64, true))
        .collect();
    let columns: Vec<ArrayRef> = (0..names.len())
        .map(|k| {
            Arc::new(Float64Array::from_iter(
                results
                    .iter()
                    .map(|r| r.as_ref().ok().map(|s| s.attributes[k])),
            )) as ArrayRef
        })
        .collect();
    let validity =
        arrow::buffer::NullBuffer::from(results.iter().map(|r| r.is_ok()).collect::<Vec<_>>());
    let scores = StructArray::new(fields, columns, Some(validity));
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(StringArray::from_iter_values(
                prompts.iter().map(|p| p.id.as_str()),
            )) as ArrayRef,
        ),
        (
            "response",
            Arc::new(StringArray::from_iter_values(
                prompts.iter().map(|p| split_response(p).1),
            )) as ArrayRef,
        ),
        ("scores", Arc::new(scores) as ArrayRef),
        (
            "tokens",
            Arc::new(Int64Array::from_iter(
                results
                    .iter()
                    .map(|r| r.as_ref().ok().map(|s| s.tokens_run as i64)),
            )),
        ),
        (
            "dropped_turns",
            Arc::new(Int32Array::from_iter(
                results
                    .iter()
                    .map(|r| r.as_ref().ok().map(|s| s.dropped_turns as i32)),
            )),
        ),
        (
            "error",
            Arc::new(StringArray::from_iter(
                results
                    .iter()
                    .map(|r| r.as_ref().err().map(|e| e.to_string())),
            )),
        ),
        (
            "scorer",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                reward.id(),
                prompts.len(),
            ))) as ArrayRef,
        ),
    ])?;
    Ok(batch)
}
