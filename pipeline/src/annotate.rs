//! The SteerLM annotation job: every assistant turn of every conversation is scored on the
//! conversation up to and including that turn, and labelled for SteerLM training.
//!
//! Input (jsonl): NeMo-Aligner's SteerLM format (`{"system", "conversations": [{"from": "User" |
//! "Assistant", "value", "label"}], "mask", "type"}`) or `{"messages": [{role, content}]}`.
//! Output in the output directory:
//! - `annotated.jsonl`: the NeMo format NeMo-Aligner trains on, every assistant turn labelled
//!   (`helpfulness:4,...`, clamped and rounded half to even); a turn that could not be scored gets
//!   the configured default label, never null or empty. Other fields of NeMo records are kept.
//! - `data/train-00000-of-00001.parquet`: one row per assistant turn with the raw floats.
//! - `rejects/rejects.jsonl` for records that cannot be read.

use crate::reject::{enforce_limit, rejects_jsonl, Reject, RejectLimit};
use crate::sink::parquet_bytes;
use crate::storage::{io_runtime, read_file, Location};
use crate::PipelineError;
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields};
use serde_json::{json, Value};
use std::sync::Arc;
use steerflow_models::RewardModel;
use steerflow_operators::records::Message;
use steerflow_operators::steerlm::steerlm_label;

/// A conversation to annotate, in NeMo form.
#[derive(Debug, Clone, PartialEq)]
pub struct NemoConversation {
    pub id: String,
    /// The record as read (NeMo input) or as converted (messages input).
    pub record: Value,
    pub system: Option<String>,
    /// (role, text): `user` or `assistant`.
    pub turns: Vec<(String, String)>,
}

/// Parses one record into NeMo form.
fn conversation_from(
    value: Value,
    line: u64,
) -> Result<NemoConversation, (Option<&'static str>, String)> {
    let id = match value.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("line-{line}"),
    };
    if let Some(turns) = value.get("conversations").and_then(Value::as_array) {
        let mut parsed = Vec::with_capacity(turns.len());
        for (k, t) in turns.iter().enumerate() {
            let from = t.get("from").and_then(Value::as_str);
            let text = t.get("value").and_then(Value::as_str);
            let role = match from {
                Some("User") => "user",
                Some("Assistant") => "assistant",
                _ => {
                    return Err((
                        Some("conversations"),
                        format!("conversations[{k}].from must be \"User\" or \"Assistant\""),
                    ))
                }
            };
            let text = text.ok_or((
                Some("conversations"),
                format!("conversations[{k}].value must be a string"),
            ))?;
            parsed.push((role.to_string(), text.to_string()));
        }
        let system = value
            .get("system")
            .and_then(Value::as_str)
            .map(str::to_string);
        return Ok(NemoConversation {
            id,
            record: value,
            system,
            turns: parsed,
        });
    }
    if let Some(messages) = value.get("messages") {
        let messages: Vec<Message> = serde_json::from_value(messages.clone()).map_err(|_| {
            (
                Some("messages"),
                "`messages` must be a list of {role, content}".to_string(),
            )
        })?;
        let mut system = None;
        let mut turns = Vec::new();
        for (k, m) in messages.into_iter().enumerate() {
            match m.role.as_str() {
                "system" if k == 0 => system = Some(m.content),
                "user" | "assistant" => turns.push((m.role, m.content)),
                other => {
                    return Err((
                        Some("messages"),
                        format!("messages[{k}] has role `{other}`"),
                    ))
                }
            }
        }
        let record = json!({
            "system": system.clone().unwrap_or_default(),
            "conversations": turns.iter().map(|(r, v)| json!({
                "from": if r == "user" { "User" } else { "Assistant" }, "value": v, "label": Value::Null,
            })).collect::<Vec<_>>(),
            "mask": "User",
            "type": "VALUE_TO_TEXT",
        });
        return Ok(NemoConversation {
            id,
            record,
            system,
            turns,
        });
    }
    Err((
        Some("conversations"),
        "neither `conversations` (NeMo format) nor `messages` is present".into(),
    ))
}

/// Parses a jsonl file of conversations; bad records become rejects.
pub fn parse_conversations(file: &str, bytes: &[u8]) -> (Vec<NemoConversation>, Vec<Reject>, u64) {
    let (mut out, mut rejects, mut records) = (Vec::new(), Vec::new(), 0);
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        records += 1;
        let value: Value = match std::str::from_utf8(raw)
            .ok()
            .and_then(|t| serde_json::from_str(t).ok())
        {
            Some(v) => v,
            None => {
                rejects.push(Reject::new(
                    file,
                    line,
                    None,
                    "invalid_json",
                    "not a JSON object in UTF-8",
                ));
                continue;
            }
        };
        match conversation_from(value, line) {
            Ok(c) if c.turns.iter().any(|(r, _)| r == "assistant") => out.push(c),
            Ok(_) => rejects.push(Reject::new(
                file,
                line,
                Some("conversations"),
                "no_assistant_turn",
                "nothing to annotate",
            )),
            Err((field, detail)) => {
                rejects.push(Reject::new(file, line, field, "wrong_type", detail))
            }
        }
    }
    (out, rejects, records)
}

/// The conversation before assistant turn `k`, as chat messages.
fn context_of(c: &NemoConversation, k: usize) -> Vec<Message> {
    let mut messages: Vec<Message> = c
        .system
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| Message::new("system", s.clone()))
        .collect();
    messages.extend(
        c.turns[..k]
            .iter()
            .map(|(r, v)| Message::new(r.clone(), v.clone())),
    );
    messages
}

/// What an annotation run did.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnotateReport {
    pub conversations: u64,
    pub turns_labelled: u64,
    pub turns_defaulted: u64,
    pub rejected: u64,
}

/// Annotates `input` with `reward` into `output`.
pub fn run_annotate(
    input: &str,
    output: &str,
    reward: &dyn RewardModel,
    default_label: &str,
    max_rejects: RejectLimit,
) -> Result<AnnotateReport, PipelineError> {
    let (mut conversations, rejects, records) = parse_conversations(input, &read_file(input)?);
    enforce_limit(max_rejects, &rejects, records)?;
    let names = reward.attribute_names();
    // (conversation, turn) of every assistant turn, and its context.
    let targets: Vec<(usize, usize)> = conversations
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| {
            c.turns
                .iter()
                .enumerate()
                .filter(|(_, (r, _))| r == "assistant")
                .map(move |(k, _)| (ci, k))
        })
        .collect();
    let contexts: Vec<Vec<Message>> = targets
        .iter()
        .map(|&(ci, k)| context_of(&conversations[ci], k))
        .collect();
    let items: Vec<(&[Message], &str)> = targets
        .iter()
        .zip(&contexts)
        .map(|(&(ci, k), ctx)| (ctx.as_slice(), conversations[ci].turns[k].1.as_str()))
        .collect();
    let results = reward.score_batch(&items);
    let (mut ids, mut turn_idx, mut labels, mut defaulted, mut raw, mut errors) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (&(ci, k), result) in targets.iter().zip(results) {
        let (values, error) = match result {
            Ok(s) => (s.attributes, None),
            Err(e) => (vec![f64::NAN; names.len()], Some(e.to_string())),
        };
        let label = steerlm_label(&names, &values);
        defaulted.push(label.is_none());
        let label = label.unwrap_or_else(|| default_label.to_string());
        if let Some(turn) = conversations[ci]
            .record
            .get_mut("conversations")
            .and_then(|t| t.get_mut(k))
        {
            turn["label"] = Value::String(label.clone());
        }
        ids.push(conversations[ci].id.clone());
        turn_idx.push(k as i32);
        labels.push(label);
        raw.push(values);
        errors.push(error);
    }
    let fields: Fields = names
        .iter()
        .map(|n| Field::new(n, DataType::Float64, true))
        .collect();
    let columns: Vec<ArrayRef> = (0..names.len())
        .map(|j| {
            Arc::new(Float64Array::from_iter(
                raw.iter().map(|v| v[j].is_finite().then_some(v[j])),
            )) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_from_iter([
        (
            "conversation_id",
            Arc::new(StringArray::from(ids)) as ArrayRef,
        ),
        ("turn", Arc::new(Int32Array::from(turn_idx)) as ArrayRef),
        ("label", Arc::new(StringArray::from(labels)) as ArrayRef),
        (
            "default_label_used",
            Arc::new(BooleanArray::from(defaulted.clone())) as ArrayRef,
        ),
        (
            "attributes",
            Arc::new(StructArray::new(fields, columns, None)) as ArrayRef,
        ),
        ("error", Arc::new(StringArray::from(errors)) as ArrayRef),
        (
            "scorer",
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                reward.id(),
                targets.len(),
            ))) as ArrayRef,
        ),
    ])?;
    let annotated: String = conversations
        .iter_mut()
        .map(|c| format!("{}\n", c.record))
        .collect();
    let out = Location::parse(output, true)?;
    io_runtime()?.block_on(async {
        out.put("data/train-00000-of-00001.parquet", parquet_bytes(&batch)?)
            .await?;
        if !rejects.is_empty() {
            out.put("rejects/rejects.jsonl", rejects_jsonl(&rejects))
                .await?;
        }
        out.put("annotated.jsonl", annotated.into_bytes()).await
    })?;
    Ok(AnnotateReport {
        conversations: conversations.len() as u64,
        turns_labelled: defaulted.iter().filter(|d| !**d).count() as u64,
        turns_defaulted: defaulted.iter().filter(|d| **d).count() as u64,
        rejected: rejects.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemo_and_messages_records() {
        let input = br#"{"system": "S", "conversations": [{"from": "User", "value": "Q1", "label": null}, {"from": "Assistant", "value": "A1", "label": null}, {"from": "User", "value": "Q2", "label": null}, {"from": "Assistant", "value": "A2", "label": null}], "mask": "User", "type": "VALUE_TO_TEXT"}
{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
{"messages": [{"role": "user", "content": "only a question"}]}
{"conversations": [{"from": "Bot", "value": "x"}]}
"#;
        let (cs, rejects, records) = parse_conversations("c.jsonl", input);
        assert_eq!(records, 4);
        assert_eq!(cs.len(), 2);
        // The second assistant turn is scored on everything before it.
        assert_eq!(
            context_of(&cs[0], 3),
            vec![
                Message::new("system", "S"),
                Message::new("user", "Q1"),
                Message::new("assistant", "A1"),
                Message::new("user", "Q2")
            ]
        );
        assert_eq!(cs[1].record["conversations"][1]["from"], "Assistant");
        assert_eq!(cs[1].record["system"], "S");
        let reasons: Vec<&str> = rejects.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, vec!["no_assistant_turn", "wrong_type"]);
    }
}
