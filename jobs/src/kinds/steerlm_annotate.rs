//! `steerlm-annotate`: SteerLM labels (`helpfulness:4,...`, rounded half to even) for every
//! assistant turn of NeMo conversations, as the NeMo-Aligner jsonl plus the raw floats in
//! parquet (`configs/steerlm-annotate.toml`).

use crate::checks::{plan, store_spec, DryRunShape};
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::scoring_reward_model;
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use steerflow_models::RewardModel;
use steerflow_operators::records::Message;
use steerflow_operators::steerlm::steerlm_label;
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::formats::{ExportFormat, Shard};
use steerflow_pipeline::input::InputFile;
use steerflow_pipeline::publish::ReadmeText;
use steerflow_pipeline::reject::{Reject, RejectReason};
use steerflow_pipeline::report::plots::bars;
use steerflow_pipeline::report::Page;
use steerflow_pipeline::storage::redact_url;
use steerflow_pipeline::store_run::{
    read_keyed, run_on_store, FinishRun, Finished, Keyed, Parsed, StoreJob,
};
use steerflow_pipeline::PipelineError;

/// `[annotate]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnotateSection {
    /// The label of an assistant turn that could not be scored (never null or empty).
    pub default_label: String,
}

impl Default for AnnotateSection {
    fn default() -> Self {
        Self {
            default_label: steerflow_operators::steerlm::DEFAULT_LABEL.to_string(),
        }
    }
}

/// What an annotation run counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub conversations: u64,
    pub turns_labelled: u64,
    /// Turns that could not be scored and got `annotate.default_label`.
    pub turns_defaulted: u64,
    pub rejected: u64,
}

/// What an annotation run did (`summary.json`).
pub type Summary = crate::summary::StoreSummary<Counts>;

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up_to_date {
            return f.write_str(&self.up_to_date_line("conversation"));
        }
        let c = &self.counts;
        write!(
            f,
            "{} conversations annotated ({} turns labelled, {} given the default label, {} records rejected) into {}",
            c.conversations, c.turns_labelled, c.turns_defaulted, c.rejected, self.output
        )
    }
}

pub type Section = AnnotateSection;

pub const SHAPE: DryRunShape = DryRunShape {
    uses_policy: false,
    uses_reward: true,
    records: None,
    samples: false,
    cluster: false,
};

/// Checks the section without loading a model.
pub fn check(config: &Common, annotate: &AnnotateSection) -> Result<(), JobError> {
    plan(config)?;
    if annotate.default_label.trim().is_empty() {
        return Err(invalid("annotate.default_label must not be empty"));
    }
    Ok(())
}

/// A conversation to annotate, in NeMo form.
#[derive(Debug, Clone, PartialEq)]
pub struct NemoConversation {
    /// The record as read (NeMo input) or as converted (messages input).
    pub record: Value,
    pub system: Option<String>,
    /// (role, text): `user` or `assistant`.
    pub turns: Vec<(String, String)>,
}

/// Parses one record into NeMo form.
pub fn conversation_from(value: Value) -> Result<NemoConversation, (Option<&'static str>, String)> {
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

/// One scored assistant turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnScore {
    pub turn: i32,
    pub label: String,
    pub defaulted: bool,
    pub attributes: Vec<f64>,
    pub error: Option<String>,
}

/// A conversation with every assistant turn labelled, as kept in the run's parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotated {
    pub id: String,
    pub file: String,
    pub record: u64,
    /// The NeMo record with its labels, as a JSON line.
    pub line: String,
    pub turns: Vec<TurnScore>,
}

/// The annotation on the run store.
struct Annotate<'a> {
    reward: &'a dyn RewardModel,
    /// Requests to the reward server, when it is served (this launch's).
    served: &'a steerflow_models::served::ServedCounters,
    default_label: &'a str,
    lineage: Value,
    output: &'a str,
}

impl StoreJob for Annotate<'_> {
    type Item = NemoConversation;
    type Outcome = Annotated;

    fn lineage(&self) -> Value {
        self.lineage.clone()
    }

    fn read(&self, file: &InputFile) -> Result<Parsed<NemoConversation>, PipelineError> {
        read_keyed(file, |value| match conversation_from(value.clone()) {
            Ok(c) if c.turns.iter().any(|(r, _)| r == "assistant") => Ok((c, None)),
            Ok(_) => Err((
                Some("conversations"),
                RejectReason::NoAssistantTurn,
                "nothing to annotate".into(),
            )),
            Err((field, detail)) => Err((
                Some(field.unwrap_or("conversations")),
                RejectReason::WrongType,
                detail,
            )),
        })
    }

    fn process(
        &self,
        conversations: Vec<Keyed<NemoConversation>>,
    ) -> Result<Vec<Annotated>, PipelineError> {
        let names = self.reward.attribute_names();
        // (conversation, turn) of every assistant turn, and its context.
        let targets: Vec<(usize, usize)> = conversations
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| {
                c.item
                    .turns
                    .iter()
                    .enumerate()
                    .filter(|(_, (r, _))| r == "assistant")
                    .map(move |(k, _)| (ci, k))
            })
            .collect();
        let contexts: Vec<Vec<Message>> = targets
            .iter()
            .map(|&(ci, k)| context_of(&conversations[ci].item, k))
            .collect();
        let items: Vec<(&[Message], &str)> = targets
            .iter()
            .zip(&contexts)
            .map(|(&(ci, k), ctx)| (ctx.as_slice(), conversations[ci].item.turns[k].1.as_str()))
            .collect();
        let results = steerflow_pipeline::store_run::score_items(self.reward, &items)?;
        let mut turns: Vec<Vec<TurnScore>> = vec![Vec::new(); conversations.len()];
        let mut records: Vec<Value> = conversations
            .iter()
            .map(|c| c.item.record.clone())
            .collect();
        for (&(ci, k), result) in targets.iter().zip(results) {
            let (attributes, error) = match result {
                Ok(s) => (s.attributes, None),
                Err(e) => (vec![f64::NAN; names.len()], Some(e.to_string())),
            };
            let label = steerlm_label(&names, &attributes);
            let defaulted = label.is_none();
            let label = label.unwrap_or_else(|| self.default_label.to_string());
            if let Some(turn) = records[ci]
                .get_mut("conversations")
                .and_then(|t| t.get_mut(k))
            {
                turn["label"] = Value::String(label.clone());
            }
            turns[ci].push(TurnScore {
                turn: k as i32,
                label,
                defaulted,
                attributes,
                error,
            });
        }
        Ok(conversations
            .into_iter()
            .zip(records)
            .zip(turns)
            .map(|((c, record), turns)| Annotated {
                id: c.key.id,
                file: c.file,
                record: c.record,
                line: record.to_string(),
                turns,
            })
            .collect())
    }

    fn finish(
        &self,
        run: &FinishRun<'_>,
        mut annotated: Vec<Annotated>,
        rejects: &[Reject],
    ) -> Result<Finished, PipelineError> {
        // In input order.
        annotated.sort_by(|a, b| (a.file.as_str(), a.record).cmp(&(b.file.as_str(), b.record)));
        let names = self.reward.attribute_names();
        let batch = turns_batch(&annotated, &names, &self.reward.id())?;
        let data = steerflow_pipeline::sink::write_parquet_shard(
            run.output,
            run.rt,
            &batch,
            ExportFormat::Conversational,
            Shard {
                k: 0,
                n: 1,
                run: Some(run.run_id),
            },
        )?;
        let lines: String = annotated.iter().map(|a| format!("{}\n", a.line)).collect();
        let jsonl = run.put_other(
            run.path("annotated", "train-00000-of-00001.jsonl"),
            lines.into_bytes(),
            annotated.len() as u64,
        )?;
        let all: Vec<&TurnScore> = annotated.iter().flat_map(|a| &a.turns).collect();
        let defaulted = all.iter().filter(|t| t.defaulted).count();
        let summary = json!({
            "job": "steerlm-annotate", "scorer": self.reward.id(), "output": self.output,
            "served": self.served.snapshot(),
            "counts": Counts {
                conversations: annotated.len() as u64,
                turns_labelled: (all.len() - defaulted) as u64,
                turns_defaulted: defaulted as u64,
                rejected: rejects.len() as u64,
            },
        });
        Ok(Finished {
            files: vec![data],
            other_files: vec![jsonl],
            report: Some(report_page(&all, &names, self.output)),
            summary,
            ..Finished::default()
        })
    }

    fn readme(&self) -> ReadmeText<'_> {
        ReadmeText {
            title: "SteerLM annotations by steerflow",
            description: "Every assistant turn labelled with SteerLM attributes (`helpfulness:4,...`).",
            formats_note: "`annotated/<run>/*.jsonl` is NeMo-Aligner's SteerLM format with every assistant turn labelled; `data/<run>/*.parquet` has one row per assistant turn with the raw scores.",
            count: "turns_labelled",
        }
    }
}

/// How many labelled turns got each training value (0–4) of each attribute.
pub fn label_distribution(turns: &[&TurnScore], attributes: usize) -> Vec<[u64; 5]> {
    let mut counts = vec![[0u64; 5]; attributes];
    for t in turns.iter().filter(|t| !t.defaulted) {
        for (k, v) in t.attributes.iter().enumerate().take(attributes) {
            let v = steerflow_operators::steerlm::training_value(*v);
            if v.is_finite() {
                counts[k][v as usize] += 1;
            }
        }
    }
    counts
}

/// The report: each attribute's label distribution over the labelled turns.
fn report_page(turns: &[&TurnScore], names: &[String], output: &str) -> Page {
    let defaulted = turns.iter().filter(|t| t.defaulted).count();
    let mut page = Page::new(
        &format!("steerflow steerlm-annotate: {}", redact_url(output)),
        &format!(
            "{} assistant turns: {} labelled by the model, {defaulted} given the default label (not scored).",
            turns.len(),
            turns.len() - defaulted
        ),
    );
    page.section("Label distributions");
    for (name, counts) in names.iter().zip(label_distribution(turns, names.len())) {
        let values: Vec<(String, f64)> = counts
            .iter()
            .enumerate()
            .map(|(v, c)| (format!("{name}:{v}"), *c as f64))
            .collect();
        page.push(&bars(name, ("turns", "label"), &values, |v| {
            format!("{v:.0}")
        }));
    }
    page
}

/// One row per assistant turn with the raw floats.
fn turns_batch(
    annotated: &[Annotated],
    names: &[String],
    scorer: &str,
) -> Result<RecordBatch, PipelineError> {
    let rows: Vec<(&str, &TurnScore)> = annotated
        .iter()
        .flat_map(|a| a.turns.iter().map(move |t| (a.id.as_str(), t)))
        .collect();
    let fields: Fields = names
        .iter()
        .map(|n| Field::new(n, DataType::Float64, true))
        .collect();
    let columns: Vec<ArrayRef> = (0..names.len())
        .map(|j| {
            let v = rows.iter().map(|(_, t)| t.attributes[j]);
            Arc::new(Float64Array::from_iter(
                v.map(|x| x.is_finite().then_some(x)),
            )) as ArrayRef
        })
        .collect();
    Ok(RecordBatch::try_from_iter([
        (
            "conversation_id",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
        ),
        (
            "turn",
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1.turn))) as ArrayRef,
        ),
        (
            "label",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.label.as_str()),
            )) as ArrayRef,
        ),
        (
            "default_label_used",
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.1.defaulted).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "attributes",
            Arc::new(StructArray::new(fields, columns, None)) as ArrayRef,
        ),
        (
            "error",
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1.error.clone()).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "scorer",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|_| scorer))) as ArrayRef,
        ),
    ])?)
}

pub fn run(
    config: &Common,
    annotate: &AnnotateSection,
    _: &ClusterSpec,
) -> Result<Summary, JobError> {
    check(config, annotate)?;
    let plan = plan(config)?;
    let (reward, served) = scoring_reward_model(config)?;
    let job = Annotate {
        reward: reward.as_ref(),
        served: &served,
        default_label: &annotate.default_label,
        lineage: json!({
            "job": "steerlm-annotate", "scorer": reward.id(), "attributes": reward.attribute_names(),
            "default_label": annotate.default_label, "shards": config.output.shards,
        }),
        output: &config.output.path,
    };
    Summary::from_outcome(run_on_store(&job, &store_spec(config, plan.max_rejects))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemo_and_messages_records() {
        let input = br#"{"system": "S", "conversations": [{"from": "User", "value": "Q1", "label": null}, {"from": "Assistant", "value": "A1", "label": null}, {"from": "User", "value": "Q2", "label": null}, {"from": "Assistant", "value": "A2", "label": null}], "mask": "User", "type": "VALUE_TO_TEXT"}
{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
{"conversations": [{"from": "Bot", "value": "x"}]}
"#;
        let values = steerflow_pipeline::values::jsonl_values("c.jsonl", input);
        let cs: Vec<_> = values
            .records
            .into_iter()
            .map(|(_, v)| conversation_from(v))
            .collect();
        let first = cs[0].as_ref().unwrap();
        // The second assistant turn is scored on everything before it.
        assert_eq!(
            context_of(first, 3),
            vec![
                Message::new("system", "S"),
                Message::new("user", "Q1"),
                Message::new("assistant", "A1"),
                Message::new("user", "Q2")
            ]
        );
        let second = cs[1].as_ref().unwrap();
        assert_eq!(second.record["conversations"][1]["from"], "Assistant");
        assert_eq!(second.record["system"], "S");
        assert!(cs[2].is_err());
    }

    #[test]
    fn label_distribution_counts_training_values_of_labelled_turns() {
        let turn = |attributes: Vec<f64>, defaulted| TurnScore {
            turn: 1,
            label: String::new(),
            defaulted,
            attributes,
            error: None,
        };
        let turns = [
            turn(vec![3.6, -1.0], false),
            turn(vec![2.5, 9.0], false),
            turn(vec![f64::NAN, 1.0], true),
        ];
        let refs: Vec<&TurnScore> = turns.iter().collect();
        // 3.6 → 4, 2.5 → 2 (ties to even); -1 → 0, 9 → 4; the defaulted turn is not counted.
        assert_eq!(
            label_distribution(&refs, 2),
            vec![[0, 0, 1, 0, 1], [1, 0, 0, 0, 1]]
        );
    }
}
