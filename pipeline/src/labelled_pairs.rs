//! HelpSteer2-style preference pairs from responses that already carry attribute labels (HelpSteer2
//! paper, section 4.3: of a prompt's labelled responses, chosen = higher helpfulness; equal
//! helpfulness is discarded), or from any scored output of steerflow (`steerflow score` parquet,
//! whose scores sit in a `scores` struct).
//!
//! Input rows (jsonl or parquet): `prompt` (string) or `messages` (the conversation before the
//! response), `response` (string), the attributes as numbers at the top level or inside `scores`
//! or `attributes`, and an optional `prompt_id` (else the hash of the prompt's messages). Rows of
//! one prompt are grouped; chosen = highest `by`, rejected = lowest, ties at the extremes dropped.

use crate::formats::{ExportFormat, Shard};
use crate::reject::{enforce_limit, Reject, RejectLimit};
use crate::sink::{
    attributes_array, finish_dataset, messages_array, write_parquet_shard, write_text_exports,
    PairText, PromptRenderer,
};
use crate::source::InputFormat;
use crate::storage::{io_runtime, read_file, Location};
use crate::PipelineError;
use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use steerflow_operators::pairs::{select_pair, Candidate};
use steerflow_operators::records::Message;
use steerflow_operators::seeding::prompt_id_from_messages;

/// One labelled response.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledResponse {
    pub prompt_id: String,
    pub prompt: Vec<Message>,
    pub response: String,
    /// In the order of the configured attribute names; NaN where absent.
    pub attributes: Vec<f64>,
}

fn number_in(row: &Value, name: &str) -> Option<f64> {
    row.get(name)
        .and_then(Value::as_f64)
        .or_else(|| {
            row.get("scores")
                .and_then(|s| s.get(name))
                .and_then(Value::as_f64)
        })
        .or_else(|| {
            row.get("attributes")
                .and_then(|s| s.get(name))
                .and_then(Value::as_f64)
        })
}

/// Reads one row; `names` are the attributes to carry, `by` must be among them.
pub fn labelled_from(
    row: &Value,
    names: &[String],
) -> Result<LabelledResponse, (Option<&'static str>, String)> {
    let prompt = match (row.get("prompt"), row.get("messages")) {
        (Some(Value::String(p)), _) => vec![Message::new("user", p.clone())],
        (_, Some(m)) => serde_json::from_value::<Vec<Message>>(m.clone()).map_err(|_| {
            (
                Some("messages"),
                "`messages` must be a list of {role, content}".to_string(),
            )
        })?,
        _ => {
            return Err((
                Some("prompt"),
                "`prompt` (string) or `messages` is required".into(),
            ))
        }
    };
    let response = row
        .get("response")
        .and_then(Value::as_str)
        .ok_or((Some("response"), "`response` must be a string".to_string()))?
        .to_string();
    let attributes: Vec<f64> = names
        .iter()
        .map(|n| number_in(row, n).unwrap_or(f64::NAN))
        .collect();
    let prompt_id = match row.get("prompt_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => prompt_id_from_messages(&prompt),
    };
    Ok(LabelledResponse {
        prompt_id,
        prompt,
        response,
        attributes,
    })
}

/// Rows of a jsonl or parquet file as JSON objects (parquet through arrow's JSON writer).
fn rows_of(spec: &str, format: InputFormat) -> Result<Vec<Result<Value, String>>, PipelineError> {
    let bytes = read_file(spec)?;
    let fail = |message: String| PipelineError::Input {
        location: spec.to_string(),
        message,
    };
    match format {
        InputFormat::Jsonl => Ok(bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| serde_json::from_slice(l).map_err(|e| format!("invalid JSON: {e}")))
            .collect()),
        InputFormat::Parquet => {
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|e| fail(format!("not a readable parquet file: {e}")))?;
            let mut rows = Vec::new();
            for batch in reader {
                let batch = batch.map_err(|e| fail(format!("corrupt parquet data: {e}")))?;
                let mut writer = arrow::json::ArrayWriter::new(Vec::new());
                writer.write(&batch).map_err(|e| fail(e.to_string()))?;
                writer.finish().map_err(|e| fail(e.to_string()))?;
                let values: Vec<Value> = serde_json::from_slice(&writer.into_inner())
                    .map_err(|e| fail(e.to_string()))?;
                rows.extend(values.into_iter().map(Ok));
            }
            Ok(rows)
        }
    }
}

/// What a labelled-pairs run did.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledPairsReport {
    pub responses: u64,
    pub prompts: u64,
    pub pairs: u64,
    pub dropped: BTreeMap<String, u64>,
    pub rejected: u64,
}

/// Builds the pairs of `input` and writes them as a dataset folder into `output`.
#[allow(clippy::too_many_arguments)]
pub fn run_labelled_pairs(
    input: &str,
    format: InputFormat,
    output: &str,
    names: &[String],
    by: &str,
    max_rejects: RejectLimit,
    formats: &[ExportFormat],
    render: PromptRenderer<'_>,
) -> Result<LabelledPairsReport, PipelineError> {
    let by_index = names
        .iter()
        .position(|n| n == by)
        .ok_or_else(|| PipelineError::Input {
            location: input.to_string(),
            message: format!(
                "pairs.by `{by}` is not among the attributes ({})",
                names.join(", ")
            ),
        })?;
    let rows = rows_of(input, format)?;
    let records = rows.len() as u64;
    let mut rejects = Vec::new();
    let mut groups: BTreeMap<String, Vec<LabelledResponse>> = BTreeMap::new();
    for (i, row) in rows.into_iter().enumerate() {
        let record = match format {
            InputFormat::Jsonl => i as u64 + 1,
            InputFormat::Parquet => i as u64,
        };
        match row
            .map_err(|e| (None, e))
            .and_then(|v| labelled_from(&v, names))
        {
            Ok(r) => groups.entry(r.prompt_id.clone()).or_default().push(r),
            Err((field, detail)) => {
                rejects.push(Reject::new(input, record, field, "bad_record", detail))
            }
        }
    }
    enforce_limit(max_rejects, &rejects, records)?;
    let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
    let mut pairs: Vec<LabelledPair<'_>> = Vec::new();
    for group in groups.values() {
        let candidates: Vec<Candidate<'_>> = group
            .iter()
            .enumerate()
            .map(|(k, r)| Candidate {
                sample_index: k as u32,
                goodness: r.attributes[by_index],
                text: &r.response,
            })
            .collect();
        match select_pair(&candidates, 0.0).decision {
            Ok(p) => pairs.push((&group[p.chosen], &group[p.rejected], p.margin, group.len())),
            Err(reason) => *dropped.entry(reason.as_str().to_string()).or_default() += 1,
        }
    }
    let batch = pairs_batch(&pairs, names, by_index)?;
    let report = LabelledPairsReport {
        responses: groups.values().map(|g| g.len() as u64).sum(),
        prompts: groups.len() as u64,
        pairs: pairs.len() as u64,
        dropped: dropped.clone(),
        rejected: rejects.len() as u64,
    };
    let summary = json!({
        "job": "helpsteer2-pairs", "input": input, "by": by,
        "counts": { "responses": report.responses, "prompts": report.prompts, "pairs": report.pairs, "dropped": dropped, "rejected": report.rejected },
    });
    let out = Location::parse(output, true)?;
    let rt = io_runtime()?;
    let mut files = Vec::new();
    if formats.contains(&ExportFormat::Conversational) {
        files.push(write_parquet_shard(
            &out,
            rt,
            &batch,
            ExportFormat::Conversational,
            Shard::plain(0, 1),
        )?);
    }
    let texts: Vec<PairText<'_>> = pairs
        .iter()
        .map(|(c, r, _, _)| PairText {
            prompt_id: &c.prompt_id,
            prompt: &c.prompt,
            chosen: &c.response,
            rejected: &r.response,
            chosen_score: c.attributes[by_index],
            rejected_score: r.attributes[by_index],
        })
        .collect();
    files.extend(write_text_exports(
        &out,
        rt,
        formats,
        &texts,
        render,
        Shard::plain(0, 1),
    )?);
    let description = format!("HelpSteer2-style pairs from labelled responses: chosen = higher `{by}`, equal `{by}` discarded.");
    finish_dataset(&out, rt, &files, &rejects, &summary, &description)?;
    Ok(report)
}

/// A chosen response, the rejected one, the margin and how many responses the prompt had.
type LabelledPair<'a> = (&'a LabelledResponse, &'a LabelledResponse, f64, usize);

/// The pairs as the conversational parquet's record batch.
fn pairs_batch(
    pairs: &[LabelledPair<'_>],
    names: &[String],
    by_index: usize,
) -> Result<RecordBatch, PipelineError> {
    let prompts: Vec<Vec<Message>> = pairs.iter().map(|(c, _, _, _)| c.prompt.clone()).collect();
    let chosen: Vec<Vec<Message>> = pairs
        .iter()
        .map(|(c, _, _, _)| vec![Message::new("assistant", c.response.clone())])
        .collect();
    let rejected: Vec<Vec<Message>> = pairs
        .iter()
        .map(|(_, r, _, _)| vec![Message::new("assistant", r.response.clone())])
        .collect();
    let chosen_attrs: Vec<&[f64]> = pairs
        .iter()
        .map(|(c, _, _, _)| c.attributes.as_slice())
        .collect();
    let rejected_attrs: Vec<&[f64]> = pairs
        .iter()
        .map(|(_, r, _, _)| r.attributes.as_slice())
        .collect();
    Ok(RecordBatch::try_from_iter([
        (
            "prompt_id",
            Arc::new(StringArray::from_iter_values(
                pairs.iter().map(|p| p.0.prompt_id.as_str()),
            )) as ArrayRef,
        ),
        ("prompt", Arc::new(messages_array(&prompts)) as ArrayRef),
        ("chosen", Arc::new(messages_array(&chosen)) as ArrayRef),
        ("rejected", Arc::new(messages_array(&rejected)) as ArrayRef),
        (
            "chosen_score",
            Arc::new(Float64Array::from_iter_values(
                pairs.iter().map(|p| p.0.attributes[by_index]),
            )) as ArrayRef,
        ),
        (
            "rejected_score",
            Arc::new(Float64Array::from_iter_values(
                pairs.iter().map(|p| p.1.attributes[by_index]),
            )) as ArrayRef,
        ),
        (
            "margin",
            Arc::new(Float64Array::from_iter_values(pairs.iter().map(|p| p.2))) as ArrayRef,
        ),
        (
            "chosen_attributes",
            Arc::new(attributes_array(names, &chosen_attrs)) as ArrayRef,
        ),
        (
            "rejected_attributes",
            Arc::new(attributes_array(names, &rejected_attrs)) as ArrayRef,
        ),
        (
            "n_responses",
            Arc::new(Int32Array::from_iter_values(
                pairs.iter().map(|p| p.3 as i32),
            )) as ArrayRef,
        ),
    ])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_at_top_level_or_nested() {
        let names: Vec<String> = ["helpfulness", "verbosity"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = labelled_from(
            &json!({"prompt": "Q", "response": "A", "helpfulness": 3, "verbosity": 1}),
            &names,
        )
        .unwrap();
        assert_eq!(r.attributes, vec![3.0, 1.0]);
        let r = labelled_from(
            &json!({"prompt": "Q", "response": "A", "scores": {"helpfulness": 2.5}}),
            &names,
        )
        .unwrap();
        assert_eq!(r.attributes[0], 2.5);
        assert!(r.attributes[1].is_nan());
        assert!(labelled_from(&json!({"prompt": "Q"}), &names).is_err());
    }
}
