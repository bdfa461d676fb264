//! The reward-model evaluation job: a preference set scored by a reward model, accuracy per
//! subset and category (`steerflow_operators::evaluation`), written as `eval.json`, `eval.md`
//! and `cases.jsonl` (every case with its two scores and whether it counted as correct).
//!
//! Input (jsonl): `prompt` (string) or `messages` (the conversation before the response),
//! `chosen` and `rejected` (strings), `subset` (string; default `default`), optional `id`.

use crate::reject::{enforce_limit, rejects_jsonl, Reject, RejectLimit};
use crate::storage::{io_runtime, read_file, Location};
use crate::PipelineError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use steerflow_models::RewardModel;
use steerflow_operators::evaluation::{evaluate, markdown_table, EvalReport, ScoredCase};
use steerflow_operators::goodness::BoundGoodness;
use steerflow_operators::records::Message;

/// One preference case.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceCase {
    pub id: String,
    pub conversation: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    pub subset: String,
}

/// Parses a preference jsonl file; bad records become rejects naming line and field.
pub fn parse_preferences(file: &str, bytes: &[u8]) -> (Vec<PreferenceCase>, Vec<Reject>, u64) {
    let mut cases = Vec::new();
    let mut rejects = Vec::new();
    let mut records = 0;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i as u64 + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        records += 1;
        let parsed: Result<Value, String> = std::str::from_utf8(raw)
            .map_err(|e| format!("invalid UTF-8: {e}"))
            .and_then(|t| serde_json::from_str(t).map_err(|e| format!("invalid JSON: {e}")));
        let value = match parsed {
            Ok(v) => v,
            Err(detail) => {
                rejects.push(Reject::new(file, line, None, "invalid_json", detail));
                continue;
            }
        };
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        let conversation = match (text("prompt"), value.get("messages")) {
            (Some(p), None) => vec![Message::new("user", p)],
            (None, Some(m)) => match serde_json::from_value::<Vec<Message>>(m.clone()) {
                Ok(m) if m.last().is_some_and(|m| m.role == "user") => m,
                _ => {
                    rejects.push(Reject::new(
                        file,
                        line,
                        Some("messages"),
                        "wrong_type",
                        "`messages` must be a list of {role, content} ending with a user turn",
                    ));
                    continue;
                }
            },
            _ => {
                rejects.push(Reject::new(
                    file,
                    line,
                    Some("prompt"),
                    "missing_field",
                    "exactly one of `prompt` (string) or `messages` is needed",
                ));
                continue;
            }
        };
        let (Some(chosen), Some(rejected)) = (text("chosen"), text("rejected")) else {
            let field = if text("chosen").is_none() {
                "chosen"
            } else {
                "rejected"
            };
            rejects.push(Reject::new(
                file,
                line,
                Some(field),
                "missing_field",
                format!("`{field}` must be a string"),
            ));
            continue;
        };
        let id = match value.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("line-{line}"),
        };
        let subset = text("subset").unwrap_or_else(|| "default".into());
        cases.push(PreferenceCase {
            id,
            conversation,
            chosen,
            rejected,
            subset,
        });
    }
    (cases, rejects, records)
}

/// One number per response: the single output of a scalar model, else goodness.
fn scalar_score(attributes: &[f64], goodness: &BoundGoodness) -> f64 {
    if attributes.len() == 1 {
        attributes[0]
    } else {
        goodness.goodness(attributes)
    }
}

/// Runs the evaluation and writes its outputs into `output`.
pub fn run_rm_eval(
    input: &str,
    output: &str,
    reward: &dyn RewardModel,
    goodness: &BoundGoodness,
    categories: &BTreeMap<String, String>,
    max_rejects: RejectLimit,
) -> Result<EvalReport, PipelineError> {
    let (cases, rejects, records) = parse_preferences(input, &read_file(input)?);
    enforce_limit(max_rejects, &rejects, records)?;
    // Chosen and rejected of a case side by side: they share the conversation's prefill.
    let items: Vec<(&[Message], &str)> = cases
        .iter()
        .flat_map(|c| {
            [
                (c.conversation.as_slice(), c.chosen.as_str()),
                (c.conversation.as_slice(), c.rejected.as_str()),
            ]
        })
        .collect();
    let scores: Vec<f64> = reward
        .score_batch(&items)
        .into_iter()
        .map(|r| {
            r.map(|s| scalar_score(&s.attributes, goodness))
                .unwrap_or(f64::NAN)
        })
        .collect();
    let scored: Vec<ScoredCase> = cases
        .iter()
        .enumerate()
        .map(|(k, c)| ScoredCase {
            subset: c.subset.clone(),
            chosen: scores[2 * k],
            rejected: scores[2 * k + 1],
        })
        .collect();
    let report = evaluate(&scored, categories);
    let out = Location::parse(output, true)?;
    let mut lines = String::new();
    for (c, s) in cases.iter().zip(&scored) {
        let row = json!({
            "id": c.id, "subset": c.subset, "chosen_score": s.chosen, "rejected_score": s.rejected,
            "correct": s.chosen.is_finite() && s.rejected.is_finite() && s.chosen > s.rejected,
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
    }
    let summary = json!({ "scorer": reward.id(), "input": input, "cases": cases.len(), "rejected": rejects.len(), "report": report });
    io_runtime()?.block_on(async {
        out.put("cases.jsonl", lines.into_bytes()).await?;
        if !rejects.is_empty() {
            out.put("rejects/rejects.jsonl", rejects_jsonl(&rejects))
                .await?;
        }
        out.put("eval.md", markdown_table(&report).into_bytes())
            .await?;
        out.put(
            "eval.json",
            serde_json::to_vec_pretty(&summary).unwrap_or_default(),
        )
        .await
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_records_and_rejects() {
        let input =
            br#"{"id": 1, "prompt": "Q", "chosen": "A", "rejected": "B", "subset": "hep-go"}
{"messages": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"}
{"prompt": "Q", "chosen": "A"}
nope
"#;
        let (cases, rejects, records) = parse_preferences("p.jsonl", input);
        assert_eq!(records, 4);
        assert_eq!(cases.len(), 2);
        assert_eq!(
            (cases[0].id.as_str(), cases[0].subset.as_str()),
            ("1", "hep-go")
        );
        assert_eq!(
            (cases[1].id.as_str(), cases[1].subset.as_str()),
            ("line-2", "default")
        );
        let got: Vec<(u64, Option<&str>)> = rejects
            .iter()
            .map(|r| (r.record, r.field.as_deref()))
            .collect();
        assert_eq!(got, vec![(3, Some("rejected")), (4, None)]);
    }
}
