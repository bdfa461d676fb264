//! `filter-rank`: a scored corpus filtered by thresholds on any score, top-k per prompt and a run
//! quantile, and ranked; kept rows carry their scores and rank (`configs/filter-rank.toml`).

use crate::checks::{plan, store_spec, DryRunShape};
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::scoring_reward_model;
use arrow::array::{ArrayRef, Float64Array, Int32Array, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use steerflow_models::RewardModel;
use steerflow_operators::filter::{apply_filters, FilterOutcome, FilterRow, FilterRules};
use steerflow_operators::goodness::BoundGoodness;
use steerflow_operators::normalize::{normalize_goodness, NormStats};
use steerflow_operators::records::{Message, Prompt};
use steerflow_operators::seeding::prompt_id_from_messages;
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::formats::{ExportFormat, Shard};
use steerflow_pipeline::input::InputFile;
use steerflow_pipeline::publish::ReadmeText;
use steerflow_pipeline::records::PromptKey;
use steerflow_pipeline::reject::Reject;
use steerflow_pipeline::report::plots::{bars, histogram, Series, GREEN, RED};
use steerflow_pipeline::report::Page;
use steerflow_pipeline::sink::{attributes_array, messages_array};
use steerflow_pipeline::source::{read_prompts, InputFormat, RecordShape};
use steerflow_pipeline::spec::Normalization;
use steerflow_pipeline::storage::redact_url;
use steerflow_pipeline::store_run::{run_on_store, FinishRun, Finished, Keyed, Parsed, StoreJob};
use steerflow_pipeline::PipelineError;

/// `[filter]`: the rules.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSection {
    /// Keep rows whose score is at least this: `{ helpfulness = 3.0, goodness = 2.5 }`. Names are
    /// the reward model's attributes, `goodness` and `normalized_goodness`.
    pub min: BTreeMap<String, f64>,
    /// Keep rows whose score is at most this.
    pub max: BTreeMap<String, f64>,
    /// Keep the k best responses of each prompt (0 = no limit).
    pub top_k: usize,
    /// Keep rows whose goodness is at least this quantile of the run (0.5 = top half).
    pub quantile: Option<f64>,
}

/// What a filter-rank run counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub rows: u64,
    pub prompts: u64,
    pub kept: u64,
    /// Rows removed, by rule (`unscored`, `min.helpfulness`, `top_k`, `quantile`...).
    pub removed_by: BTreeMap<String, u64>,
    pub rejected: u64,
}

/// What a filter-rank run did (`summary.json`).
pub type Summary = crate::summary::StoreSummary<Counts>;

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up_to_date {
            return f.write_str(&self.up_to_date_line("row"));
        }
        let c = &self.counts;
        write!(
            f,
            "{} of {} rows kept (removed by rule: {}) written to {}",
            c.kept,
            c.rows,
            serde_json::to_string(&c.removed_by).unwrap_or_default(),
            self.output
        )
    }
}

pub type Section = FilterSection;

pub const SHAPE: DryRunShape = DryRunShape {
    uses_policy: false,
    uses_reward: true,
    records: Some(steerflow_pipeline::source::RecordShape::Response),
    samples: false,
    cluster: false,
};

/// Checks the section without loading a model.
pub fn check(config: &Common, filter: &FilterSection) -> Result<(), JobError> {
    plan(config)?;
    if let Some(q) = filter.quantile.filter(|q| !(0.0..=1.0).contains(q)) {
        return Err(invalid(format!(
            "filter.quantile must be in [0, 1], got {q}"
        )));
    }
    Ok(())
}

/// A scored row, as kept in the run's parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredRow {
    pub id: String,
    pub prompt_id: String,
    pub file: String,
    pub record: u64,
    pub conversation: Vec<Message>,
    pub response: String,
    /// NaN where the row could not be scored.
    pub attributes: Vec<f64>,
}

/// Scoring, filtering and ranking on the run store: rows are scored per shard; thresholds,
/// normalisation, top-k and the quantile apply over the whole run when it is finished.
struct FilterRank<'a> {
    reward: &'a dyn RewardModel,
    /// Requests to the reward server, when it is served (this launch's).
    served: &'a steerflow_models::served::ServedCounters,
    goodness: BoundGoodness,
    normalization: Normalization,
    rules: FilterRules,
    lineage: Value,
    output: &'a str,
}

impl StoreJob for FilterRank<'_> {
    type Item = Prompt;
    type Outcome = ScoredRow;

    fn lineage(&self) -> Value {
        self.lineage.clone()
    }

    fn read(&self, file: &InputFile) -> Result<Parsed<Prompt>, PipelineError> {
        let format = if file.parquet {
            InputFormat::Parquet
        } else {
            InputFormat::Jsonl
        };
        let source = read_prompts(&file.spec, format, RecordShape::Response)?;
        let items = source
            .prompts
            .into_iter()
            .map(|p| {
                let (context, _) = p.messages.split_at(p.messages.len().saturating_sub(1));
                Keyed {
                    key: PromptKey::of(&p),
                    route: prompt_id_from_messages(context),
                    file: p.source.file.clone(),
                    record: p.source.record,
                    item: p,
                }
            })
            .collect();
        Ok(Parsed {
            items,
            rejects: source.rejects,
            records: source.records,
        })
    }

    fn process(&self, rows: Vec<Keyed<Prompt>>) -> Result<Vec<ScoredRow>, PipelineError> {
        let split: Vec<(&[Message], &str)> = rows
            .iter()
            .map(|p| match p.item.messages.split_last() {
                Some((last, rest)) => (rest, last.content.as_str()),
                None => (&[][..], ""),
            })
            .collect();
        let width = self.reward.attribute_names().len();
        let scores = steerflow_pipeline::store_run::score_items(self.reward, &split)?;
        Ok(rows
            .iter()
            .zip(&split)
            .zip(scores)
            .map(|((row, (context, response)), score)| ScoredRow {
                id: row.key.id.clone(),
                prompt_id: row.route.clone(),
                file: row.file.clone(),
                record: row.record,
                conversation: context.to_vec(),
                response: response.to_string(),
                attributes: score
                    .map(|s| s.attributes)
                    .unwrap_or_else(|_| vec![f64::NAN; width]),
            })
            .collect())
    }

    fn finish(
        &self,
        run: &FinishRun<'_>,
        mut rows: Vec<ScoredRow>,
        rejects: &[Reject],
    ) -> Result<Finished, PipelineError> {
        // In input order.
        rows.sort_by(|a, b| (a.file.as_str(), a.record).cmp(&(b.file.as_str(), b.record)));
        let names = self.reward.attribute_names();
        let goodness: Vec<f64> = rows
            .iter()
            .map(|r| self.goodness.goodness(&r.attributes))
            .collect();
        let prompt_ids: Vec<String> = rows.iter().map(|r| r.prompt_id.clone()).collect();
        let (normalized, per_prompt) = normalize_all(&prompt_ids, &goodness, self.normalization);
        let filter_rows: Vec<FilterRow> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut scores: BTreeMap<String, f64> = names
                    .iter()
                    .cloned()
                    .zip(r.attributes.iter().copied())
                    .collect();
                scores.insert("goodness".into(), goodness[i]);
                scores.insert("normalized_goodness".into(), normalized[i]);
                FilterRow {
                    prompt_id: r.prompt_id.clone(),
                    goodness: goodness[i],
                    scores,
                }
            })
            .collect();
        let outcome = apply_filters(&filter_rows, &self.rules);
        let keep: Vec<usize> = (0..rows.len()).filter(|&i| outcome.kept[i]).collect();
        let split: Vec<(&[Message], &str)> = rows
            .iter()
            .map(|r| (r.conversation.as_slice(), r.response.as_str()))
            .collect();
        let attributes: Vec<Vec<f64>> = rows.iter().map(|r| r.attributes.clone()).collect();
        let scored = ScoredRows {
            ids: rows.iter().map(|r| r.id.as_str()).collect(),
            split: &split,
            prompt_ids: &prompt_ids,
            names: &names,
            attributes: &attributes,
            goodness: &goodness,
            normalized: &normalized,
            rank: &outcome.rank,
            responses_of_prompt: &per_prompt,
        };
        let batch = kept_batch(&scored, &keep)?;
        let file = steerflow_pipeline::sink::write_parquet_shard(
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
        let report = report_page(&goodness, &outcome, self.output);
        let summary = json!({
            "job": "filter-rank",
            "output": self.output,
            "served": self.served.snapshot(),
            "scorer": self.reward.id(),
            "normalization": self.normalization.name(),
            "counts": Counts {
                rows: rows.len() as u64,
                prompts: per_prompt.len() as u64,
                kept: keep.len() as u64,
                removed_by: outcome.removed_by,
                rejected: rejects.len() as u64,
            },
            "quantile_threshold": outcome.quantile_threshold,
        });
        Ok(Finished {
            files: vec![file],
            report: Some(report),
            summary,
            ..Finished::default()
        })
    }

    fn readme(&self) -> ReadmeText<'_> {
        ReadmeText {
            title: "A scored corpus filtered and ranked by steerflow",
            description:
                "Every kept row carries its scores and its rank among its prompt's responses.",
            formats_note:
                "Rules (thresholds, top-k per prompt, the quantile) apply within each run.",
            count: "kept",
        }
    }
}

/// The report: rows kept and removed by each rule, and goodness of the kept and removed rows.
fn report_page(goodness: &[f64], outcome: &FilterOutcome, output: &str) -> Page {
    let kept = outcome.kept.iter().filter(|k| **k).count();
    let mut page = Page::new(
        &format!("steerflow filter-rank: {}", redact_url(output)),
        &format!(
            "{} rows scored: {kept} kept, {} removed.",
            goodness.len(),
            goodness.len() - kept
        ),
    );
    page.section("Kept and removed");
    let mut counts = vec![("kept".to_string(), kept as f64)];
    counts.extend(
        outcome
            .removed_by
            .iter()
            .map(|(rule, n)| (format!("removed by {rule}"), *n as f64)),
    );
    page.push(&bars(
        "Rows kept, and removed by each rule",
        ("rows", "outcome"),
        &counts,
        |v| format!("{v:.0}"),
    ));
    let split = |keep: bool| -> Vec<f64> {
        goodness
            .iter()
            .zip(&outcome.kept)
            .filter(|(_, k)| **k == keep)
            .map(|(g, _)| *g)
            .collect()
    };
    page.push(&histogram(
        "Goodness of kept and removed rows",
        ("goodness (weighted attributes)", "rows"),
        &[
            Series {
                name: "kept",
                color: GREEN,
                data: split(true),
            },
            Series {
                name: "removed",
                color: RED,
                data: split(false),
            },
        ],
        20,
    ));
    if let Some(t) = outcome.quantile_threshold {
        page.paragraph(
            "quantile-threshold",
            &format!("The quantile rule kept goodness ≥ {t:.4}."),
        );
    }
    page
}

pub fn run(config: &Common, filter: &FilterSection, _: &ClusterSpec) -> Result<Summary, JobError> {
    check(config, filter)?;
    let plan = plan(config)?;
    let (reward, served) = scoring_reward_model(config)?;
    let names = reward.attribute_names();
    let scalar = names == ["reward"];
    if scalar && (plan.normalization == Normalization::Run || filter.quantile.is_some()) {
        return Err(invalid(
            "a scalar reward only ranks responses to the same prompt: use filter.top_k and \
             goodness.normalization = \"per-prompt\", not a run-wide quantile or run normalisation",
        ));
    }
    for name in filter.min.keys().chain(filter.max.keys()) {
        if !names.contains(name) && name != "goodness" && name != "normalized_goodness" {
            return Err(invalid(format!(
                "filter rule on `{name}`: the scores are {}, goodness and normalized_goodness",
                names.join(", ")
            )));
        }
    }
    let goodness = plan
        .weights
        .bind(&names)
        .map_err(|e| invalid(format!("goodness: {e}")))?;
    let rules = FilterRules {
        min: filter.min.clone(),
        max: filter.max.clone(),
        top_k: (filter.top_k > 0).then_some(filter.top_k),
        quantile: filter.quantile,
    };
    let job = FilterRank {
        reward: reward.as_ref(),
        served: &served,
        goodness,
        normalization: plan.normalization,
        lineage: json!({
            "job": "filter-rank", "scorer": reward.id(), "attributes": names,
            "goodness": config.goodness.preset.as_str(), "weights": config.goodness.weights,
            "normalization": format!("{:?}", plan.normalization), "rules": format!("{rules:?}"),
            "shards": config.output.shards,
        }),
        rules,
        output: &config.output.path,
    };
    Summary::from_outcome(run_on_store(&job, &store_spec(config, plan.max_rejects))?)
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
