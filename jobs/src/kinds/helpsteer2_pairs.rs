//! `helpsteer2-pairs`: pairs from responses that already carry attribute labels (chosen = higher
//! `pairs.by`, ties discarded), as HelpSteer2's DPO data was made; also reads `steerflow score`
//! output (`configs/helpsteer2-pairs.toml`).

use crate::checks::{plan, store_spec, DryRunShape};
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::{load_language_model, with_chat_template};
use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use steerflow_operators::pairs::{select_pairs, Candidate, PairRule};
use steerflow_operators::records::Message;
use steerflow_operators::seeding::{pair_draw, prompt_id_from_messages};
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::formats::{ExportFormat, Shard};
use steerflow_pipeline::input::InputFile;
use steerflow_pipeline::publish::ReadmeText;
use steerflow_pipeline::reject::{Reject, RejectReason};
use steerflow_pipeline::report::examples::{pick, table};
use steerflow_pipeline::report::plots::{histogram, Series, BLUE};
use steerflow_pipeline::report::{ExamplePair, ExampleResponse, Page, PairLengths};
use steerflow_pipeline::sink::{
    attributes_array, messages_array, write_parquet_shard, write_text_exports, PairText,
    PromptRenderer,
};
use steerflow_pipeline::source::{conversation, FieldError, RecordShape};
use steerflow_pipeline::storage::redact_url;
use steerflow_pipeline::store_run::{
    read_keyed, run_on_store, FinishRun, Finished, Keyed, Parsed, StoreJob,
};
use steerflow_pipeline::PipelineError;

/// What a helpsteer2-pairs run counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub responses: u64,
    pub prompts: u64,
    pub pairs: u64,
    /// Prompts without a pair, by reason (`margin_too_small`, `too_few_scored`).
    pub dropped: BTreeMap<String, u64>,
    pub rejected: u64,
}

/// What a helpsteer2-pairs run did (`summary.json`).
pub type Summary = crate::summary::StoreSummary<Counts>;

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up_to_date {
            return f.write_str(&self.up_to_date_line("response"));
        }
        let c = &self.counts;
        write!(
            f,
            "{} pairs from {} prompts ({} responses; dropped {}; {} records rejected) written to {}",
            c.pairs,
            c.prompts,
            c.responses,
            serde_json::to_string(&c.dropped).unwrap_or_default(),
            c.rejected,
            self.output
        )
    }
}

/// One labelled response, as kept in the run's parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledResponse {
    pub id: String,
    pub file: String,
    pub record: u64,
    pub prompt_id: String,
    pub prompt: Vec<Message>,
    pub response: String,
    /// In the order of the configured attribute names; NaN where absent.
    pub attributes: Vec<f64>,
}

/// helpsteer2-pairs has no section of its own (`[pairs]` is shared).
pub type Section = ();

pub const SHAPE: DryRunShape = DryRunShape {
    uses_policy: false,
    uses_reward: false,
    records: None,
    samples: false,
    cluster: false,
};

/// Checks the job without loading a model: `pairs.by` must be one of `pairs.attributes`.
pub fn check(config: &Common, _: &Section) -> Result<(), JobError> {
    if config.pairs.length_penalty != 0.0 || config.pairs.max_length_difference.is_some() {
        return Err(invalid(
            "pairs.length_penalty and pairs.max_length_difference need token counts, which \
             labelled responses do not carry: they are read by iterative-dpo only",
        ));
    }
    attribute_names(config).map(|_| ())
}

/// `pairs.attributes`, with `pairs.by` among them.
fn attribute_names(config: &Common) -> Result<Vec<String>, JobError> {
    plan(config)?;
    let names = config.pairs.attributes.names();
    if !names.contains(&config.pairs.by) {
        return Err(invalid(format!(
            "pairs.by `{}` is not among pairs.attributes ({})",
            config.pairs.by,
            names.join(", ")
        )));
    }
    Ok(names)
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

/// Reads one row: the conversation before the response (`prompt` or `messages`, read as every
/// prompt is), `response`, and the attributes `names` (NaN where absent).
pub fn labelled_from(row: &Value, names: &[String]) -> Result<LabelledResponse, FieldError> {
    let (_, prompt) = conversation(row, RecordShape::Prompt)?;
    let response = match row.get("response") {
        Some(Value::String(r)) => r.clone(),
        None | Some(Value::Null) => {
            return Err((
                Some("response"),
                RejectReason::MissingField,
                "`response` is required".into(),
            ))
        }
        Some(_) => {
            return Err((
                Some("response"),
                RejectReason::WrongType,
                "`response` must be a string".into(),
            ))
        }
    };
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
        id: String::new(),
        file: String::new(),
        record: 0,
        prompt_id,
        prompt,
        response,
        attributes,
    })
}

/// Pairs from labelled responses on the run store: reading is the whole work, pairs are chosen
/// per prompt over the run when it is finished.
struct LabelledPairs<'a> {
    names: Vec<String>,
    by_index: usize,
    formats: Vec<ExportFormat>,
    render: PromptRenderer<'a>,
    lineage: Value,
    output: &'a str,
    by: &'a str,
    /// `[pairs]`: the strategy and margin (no length control: no token counts here).
    rule: PairRule,
    seed: u64,
}

impl StoreJob for LabelledPairs<'_> {
    type Item = LabelledResponse;
    type Outcome = LabelledResponse;

    fn lineage(&self) -> Value {
        self.lineage.clone()
    }

    fn read(&self, file: &InputFile) -> Result<Parsed<LabelledResponse>, PipelineError> {
        // A prompt's responses share a route, so a shard holds all of them.
        let mut parsed = read_keyed(file, |value| {
            labelled_from(value, &self.names).map(|r| {
                let route = r.prompt_id.clone();
                (r, Some(route))
            })
        })?;
        for k in &mut parsed.items {
            (k.item.id, k.item.file, k.item.record) = (k.key.id.clone(), k.file.clone(), k.record);
        }
        Ok(parsed)
    }

    fn process(
        &self,
        items: Vec<Keyed<LabelledResponse>>,
    ) -> Result<Vec<LabelledResponse>, PipelineError> {
        Ok(items.into_iter().map(|k| k.item).collect())
    }

    fn finish(
        &self,
        run: &FinishRun<'_>,
        responses: Vec<LabelledResponse>,
        rejects: &[Reject],
    ) -> Result<Finished, PipelineError> {
        let mut groups: BTreeMap<String, Vec<LabelledResponse>> = BTreeMap::new();
        for r in responses {
            groups.entry(r.prompt_id.clone()).or_default().push(r);
        }
        let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
        let mut pairs: Vec<LabelledPair<'_>> = Vec::new();
        for group in groups.values_mut() {
            // Ties are broken by input order.
            group.sort_by(|a, b| (a.file.as_str(), a.record).cmp(&(b.file.as_str(), b.record)));
        }
        for group in groups.values() {
            let candidates: Vec<Candidate<'_>> = group
                .iter()
                .enumerate()
                .map(|(k, r)| Candidate {
                    sample_index: k as u32,
                    goodness: r.attributes[self.by_index],
                    tokens: 0,
                    text: &r.response,
                })
                .collect();
            let draw = pair_draw(self.seed, &group[0].prompt_id);
            match select_pairs(&candidates, &self.rule, draw).decision {
                Ok(p) => pairs.extend(
                    p.iter()
                        .map(|p| (&group[p.chosen], &group[p.rejected], p.margin, group.len())),
                ),
                Err(reason) => *dropped.entry(reason.as_str().to_string()).or_default() += 1,
            }
        }
        let shard = Shard {
            k: 0,
            n: 1,
            run: Some(run.run_id),
        };
        let mut files = Vec::new();
        if self.formats.contains(&ExportFormat::Conversational) {
            let batch = pairs_batch(&pairs, &self.names, self.by_index)?;
            files.push(write_parquet_shard(
                run.output,
                run.rt,
                &batch,
                ExportFormat::Conversational,
                shard,
            )?);
        }
        let texts: Vec<PairText<'_>> = pairs
            .iter()
            .map(|(c, r, _, _)| PairText {
                prompt_id: &c.prompt_id,
                prompt: &c.prompt,
                chosen: &c.response,
                rejected: &r.response,
                chosen_score: c.attributes[self.by_index],
                rejected_score: r.attributes[self.by_index],
            })
            .collect();
        files.extend(write_text_exports(
            run.output,
            run.rt,
            &self.formats,
            &texts,
            self.render,
            shard,
        )?);
        let summary = json!({
            "job": "helpsteer2-pairs", "output": self.output, "by": self.by,
            "counts": Counts {
                responses: groups.values().map(Vec::len).sum::<usize>() as u64,
                prompts: groups.len() as u64,
                pairs: pairs.len() as u64,
                dropped,
                rejected: rejects.len() as u64,
            },
        });
        Ok(Finished {
            files,
            report: Some(self.report_page(&pairs)),
            summary,
            ..Finished::default()
        })
    }

    fn readme(&self) -> ReadmeText<'_> {
        ReadmeText {
            description: "HelpSteer2-style pairs from labelled responses: chosen = the higher attribute, equal values discarded.",
            ..ReadmeText::pairs()
        }
    }
}

impl LabelledPairs<'_> {
    /// The report: margins, chosen against rejected lengths (characters: labelled responses
    /// have no token counts) and example pairs.
    fn report_page(&self, pairs: &[LabelledPair<'_>]) -> Page {
        let mut page = Page::new(
            &format!("steerflow helpsteer2-pairs: {}", redact_url(self.output)),
            &format!("{} pairs by {}.", pairs.len(), self.by),
        );
        page.section("Pairs");
        page.push(&histogram(
            &format!("Chosen − rejected {}", self.by),
            (&format!("margin ({})", self.by), "pairs"),
            &[Series {
                name: "pairs",
                color: BLUE,
                data: pairs.iter().map(|p| p.2).collect(),
            }],
            16,
        ));
        let lengths = PairLengths::new(
            pairs
                .iter()
                .map(|p| p.0.response.chars().count() as f64)
                .collect(),
            pairs
                .iter()
                .map(|p| p.1.response.chars().count() as f64)
                .collect(),
            "characters",
        );
        page.push(lengths.histogram());
        page.paragraph("pair-lengths", &lengths.sentence());
        page.section("Example pairs");
        let keys: Vec<(&str, f64)> = pairs
            .iter()
            .map(|p| (p.0.prompt_id.as_str(), p.2))
            .collect();
        let response = |r: &LabelledResponse| ExampleResponse {
            text: r.response.clone(),
            score: r.attributes[self.by_index],
            attributes: r.attributes.clone(),
            tokens: None,
        };
        let rows: Vec<(ExamplePair, &str)> = pick(&keys, self.seed, 4)
            .into_iter()
            .map(|(i, why)| {
                let (c, r, margin, _) = pairs[i];
                let example = ExamplePair {
                    prompt_id: c.prompt_id.clone(),
                    prompt: ExamplePair::prompt_of(&c.prompt),
                    margin,
                    chosen: response(c),
                    rejected: response(r),
                };
                (example, why)
            })
            .collect();
        page.push(&table(&rows, &self.names, self.by));
        page
    }
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

pub fn run(config: &Common, _: &Section, _: &ClusterSpec) -> Result<Summary, JobError> {
    let names = attribute_names(config)?;
    let plan = plan(config)?;
    // The string exports render prompts with the template of the model to be trained.
    let template_model = if plan
        .formats
        .iter()
        .any(|f| *f != ExportFormat::Conversational)
    {
        Some(with_chat_template(
            load_language_model(&config.policy.model, &candle_core::Device::Cpu)?,
            &config.policy.chat_template,
        )?)
    } else {
        None
    };
    let render = |messages: &[Message]| match &template_model {
        Some(m) => m.text().render(messages, true),
        None => Err(steerflow_models::ModelError::Template(
            "no template model".into(),
        )),
    };
    let by_index = names
        .iter()
        .position(|n| *n == config.pairs.by)
        .unwrap_or(0);
    let mut lineage = json!({
        "job": "helpsteer2-pairs", "attributes": names, "by": config.pairs.by,
        "formats": plan.formats, "template_model": template_model.as_ref().map(|m| m.id().to_string()),
        "shards": config.output.shards,
    });
    // The paper's rule (best against worst, ties dropped) keeps the lineage runs had before
    // `[pairs]` chose among strategies; any other rule is another lineage.
    if plan.pairs != PairRule::best_vs_worst(0.0) {
        lineage["pairs"] = json!(plan.pairs);
    }
    let job = LabelledPairs {
        lineage,
        names,
        by_index,
        formats: plan.formats.clone(),
        render: &render,
        output: &config.output.path,
        by: &config.pairs.by,
        rule: plan.pairs,
        seed: config.job.seed,
    };
    Summary::from_outcome(run_on_store(&job, &store_spec(config, plan.max_rejects))?)
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
