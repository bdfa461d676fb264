//! `rm-eval`: reward-model accuracy on a preference set, per subset and RewardBench category
//! (`eval.json`, `eval.md`, `cases.jsonl`; `configs/rm-eval.toml`).

use crate::checks::{plan, store_spec, DryRunShape};
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::scoring_reward_model;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use steerflow_models::RewardModel;
use steerflow_operators::evaluation::{evaluate, markdown_table, ScoredCase};
use steerflow_operators::goodness::BoundGoodness;
use steerflow_operators::records::Message;
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::input::InputFile;
use steerflow_pipeline::publish::ReadmeText;
use steerflow_pipeline::reject::{Reject, RejectReason};
use steerflow_pipeline::report::plots::{bars, histogram, Series, BLUE};
use steerflow_pipeline::report::Page;
use steerflow_pipeline::source::{conversation, FieldError, RecordShape};
use steerflow_pipeline::storage::redact_url;
use steerflow_pipeline::store_run::{
    read_keyed, run_on_store, FinishRun, Finished, Keyed, Parsed, StoreJob,
};
use steerflow_pipeline::PipelineError;

/// `[eval]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// `rewardbench` (RewardBench's subset → category map) or a table `{ subset = "Category" }`.
    pub categories: Categories,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Categories {
    Preset(CategoryPreset),
    Table(BTreeMap<String, String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CategoryPreset {
    Rewardbench,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            categories: Categories::Preset(CategoryPreset::Rewardbench),
        }
    }
}

impl Categories {
    /// The subset → category map.
    pub fn map(&self) -> BTreeMap<String, String> {
        match self {
            Categories::Preset(CategoryPreset::Rewardbench) => {
                steerflow_operators::evaluation::rewardbench_categories()
            }
            Categories::Table(t) => t.clone(),
        }
    }
}

/// What an evaluation run counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub cases: u64,
    pub rejected: u64,
}

/// What an evaluation run did (`summary.json`, also the run's `eval.json`).
pub type Summary = crate::summary::StoreSummary<Counts>;

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up_to_date {
            return f.write_str(&self.up_to_date_line("case"));
        }
        write!(
            f,
            "reward-model evaluation of {} cases written to {}: overall {}",
            self.counts.cases, self.output, self.json["report"]["overall"]
        )
    }
}

/// One preference case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreferenceCase {
    pub conversation: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
    pub subset: String,
}

/// A case of a record: `prompt` (string) or `messages` (the conversation before the responses,
/// read as every prompt is), `chosen` and `rejected` (strings), `subset` (default `default`).
pub fn preference_case(value: &Value) -> Result<PreferenceCase, FieldError> {
    let (_, conversation) = conversation(value, RecordShape::Prompt)?;
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    let (Some(chosen), Some(rejected)) = (text("chosen"), text("rejected")) else {
        let field = if text("chosen").is_none() {
            "chosen"
        } else {
            "rejected"
        };
        let reason = match value.get(field) {
            None | Some(Value::Null) => RejectReason::MissingField,
            Some(_) => RejectReason::WrongType,
        };
        return Err((Some(field), reason, format!("`{field}` must be a string")));
    };
    Ok(PreferenceCase {
        conversation,
        chosen,
        rejected,
        subset: text("subset").unwrap_or_else(|| "default".into()),
    })
}

/// A scored case, as kept in the run's parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseOutcome {
    pub id: String,
    pub subset: String,
    pub chosen_score: f64,
    pub rejected_score: f64,
}

/// One number per response: the single output of a scalar model, else goodness.
fn scalar_score(attributes: &[f64], goodness: &BoundGoodness) -> f64 {
    if attributes.len() == 1 {
        attributes[0]
    } else {
        goodness.goodness(attributes)
    }
}

/// The evaluation on the run store.
struct RmEval<'a> {
    reward: &'a dyn RewardModel,
    /// Requests to the reward server, when it is served (this launch's).
    served: &'a steerflow_models::served::ServedCounters,
    goodness: BoundGoodness,
    categories: BTreeMap<String, String>,
    lineage: Value,
    output: &'a str,
}

impl StoreJob for RmEval<'_> {
    type Item = PreferenceCase;
    type Outcome = CaseOutcome;

    fn lineage(&self) -> Value {
        self.lineage.clone()
    }

    fn read(&self, file: &InputFile) -> Result<Parsed<PreferenceCase>, PipelineError> {
        read_keyed(file, |value| {
            preference_case(value).map(|case| (case, None))
        })
    }

    fn process(
        &self,
        cases: Vec<Keyed<PreferenceCase>>,
    ) -> Result<Vec<CaseOutcome>, PipelineError> {
        // Chosen and rejected of a case side by side: they share the conversation's prefill.
        let items: Vec<(&[Message], &str)> = cases
            .iter()
            .flat_map(|c| {
                [
                    (c.item.conversation.as_slice(), c.item.chosen.as_str()),
                    (c.item.conversation.as_slice(), c.item.rejected.as_str()),
                ]
            })
            .collect();
        let scores: Vec<f64> = steerflow_pipeline::store_run::score_items(self.reward, &items)?
            .into_iter()
            .map(|r| {
                r.map(|s| scalar_score(&s.attributes, &self.goodness))
                    .unwrap_or(f64::NAN)
            })
            .collect();
        Ok(cases
            .into_iter()
            .enumerate()
            .map(|(k, c)| CaseOutcome {
                id: c.key.id,
                subset: c.item.subset,
                chosen_score: scores[2 * k],
                rejected_score: scores[2 * k + 1],
            })
            .collect())
    }

    fn finish(
        &self,
        run: &FinishRun<'_>,
        cases: Vec<CaseOutcome>,
        rejects: &[Reject],
    ) -> Result<Finished, PipelineError> {
        let scored: Vec<ScoredCase> = cases
            .iter()
            .map(|c| ScoredCase {
                subset: c.subset.clone(),
                chosen: c.chosen_score,
                rejected: c.rejected_score,
            })
            .collect();
        let report = evaluate(&scored, &self.categories);
        let mut lines = String::new();
        for c in &cases {
            let correct = c.chosen_score.is_finite()
                && c.rejected_score.is_finite()
                && c.chosen_score > c.rejected_score;
            let row = json!({
                "id": c.id, "subset": c.subset, "chosen_score": c.chosen_score,
                "rejected_score": c.rejected_score, "correct": correct,
            });
            lines.push_str(&row.to_string());
            lines.push('\n');
        }
        let cases_file = run.put_other(
            run.path("eval", "cases.jsonl"),
            lines.into_bytes(),
            cases.len() as u64,
        )?;
        let summary = json!({
            "job": "rm-eval", "scorer": self.reward.id(), "output": self.output,
            "served": self.served.snapshot(),
            "counts": Counts { cases: cases.len() as u64, rejected: rejects.len() as u64 },
            "report": report,
        });
        run.put_top("eval.md", markdown_table(&report).into_bytes())?;
        run.put_top(
            "eval.json",
            steerflow_pipeline::commit::to_json(&summary, "eval.json")?,
        )?;
        Ok(Finished {
            other_files: vec![cases_file],
            top_files: vec!["eval.md".into(), "eval.json".into()],
            report: Some(report_page(&report, &cases, self.output)),
            summary,
            ..Finished::default()
        })
    }

    fn readme(&self) -> ReadmeText<'_> {
        ReadmeText {
            title: "Reward-model evaluation by steerflow",
            description: "A preference set scored by a reward model: accuracy per subset and category.",
            formats_note: "`eval.md` and `eval.json` hold the latest run's accuracy; `eval/<run>/cases.jsonl` every case with its two scores.",
            count: "cases",
        }
    }
}

/// The report: accuracy per category and per subset, and the distribution of score margins.
fn report_page(
    report: &steerflow_operators::evaluation::EvalReport,
    cases: &[CaseOutcome],
    output: &str,
) -> Page {
    let overall = report
        .overall
        .map_or("no case in a category".to_string(), |o| {
            format!("{:.1}%", 100.0 * o)
        });
    let mut page = Page::new(
        &format!("steerflow rm-eval: {}", redact_url(output)),
        &format!(
            "{} preference cases; overall accuracy (mean of the categories) {overall}.",
            cases.len()
        ),
    );
    let accuracy =
        |m: &BTreeMap<String, steerflow_operators::evaluation::Accuracy>| -> Vec<(String, f64)> {
            m.iter()
                .map(|(k, a)| (format!("{k} ({} cases)", a.cases), 100.0 * a.accuracy))
                .collect()
        };
    let percent = |v: f64| format!("{v:.1}%");
    page.section("Accuracy");
    page.push(&bars(
        "Accuracy per category",
        ("accuracy (%)", "category"),
        &accuracy(&report.categories),
        percent,
    ));
    page.push(&bars(
        "Accuracy per subset",
        ("accuracy (%)", "subset"),
        &accuracy(&report.subsets),
        percent,
    ));
    page.section("Margins");
    let margins: Vec<f64> = cases
        .iter()
        .map(|c| c.chosen_score - c.rejected_score)
        .collect();
    page.push(&histogram(
        "Chosen score − rejected score",
        ("margin (score)", "cases"),
        &[Series {
            name: "cases",
            color: BLUE,
            data: margins,
        }],
        20,
    ));
    page.paragraph(
        "margins-note",
        "A case is correct when its margin is above 0; ties and unscored cases count as wrong.",
    );
    page
}

pub type Section = EvalSection;

pub const SHAPE: DryRunShape = DryRunShape {
    uses_policy: false,
    uses_reward: true,
    records: None,
    samples: false,
    cluster: false,
};

/// Checks the job without loading a model.
pub fn check(config: &Common, _: &Section) -> Result<(), JobError> {
    plan(config).map(|_| ())
}

pub fn run(config: &Common, eval: &EvalSection, _: &ClusterSpec) -> Result<Summary, JobError> {
    let plan = plan(config)?;
    let (reward, served) = scoring_reward_model(config)?;
    let goodness = plan
        .weights
        .bind(&reward.attribute_names())
        .map_err(|e| invalid(format!("goodness: {e}")))?;
    let job = RmEval {
        reward: reward.as_ref(),
        served: &served,
        goodness,
        categories: eval.categories.map(),
        lineage: json!({
            "job": "rm-eval", "scorer": reward.id(), "attributes": reward.attribute_names(),
            "goodness": config.goodness.preset.as_str(), "weights": config.goodness.weights,
            "categories": eval.categories.map(), "shards": config.output.shards,
        }),
        output: &config.output.path,
    };
    Summary::from_outcome(run_on_store(&job, &store_spec(config, plan.max_rejects))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steerflow_pipeline::values::record_id;

    #[test]
    fn preference_records_and_rejects() {
        let input =
            br#"{"id": 1, "prompt": "Q", "chosen": "A", "rejected": "B", "subset": "hep-go"}
{"messages": [{"role": "user", "content": "Q"}], "chosen": "A", "rejected": "B"}
{"prompt": "Q", "chosen": "A"}
nope
"#;
        let values = steerflow_pipeline::values::jsonl_values("p.jsonl", input);
        assert_eq!(values.count, 4);
        let cases: Vec<_> = values
            .records
            .iter()
            .map(|(_, v)| preference_case(v))
            .collect();
        let first = cases[0].as_ref().unwrap();
        assert_eq!(first.subset, "hep-go");
        assert_eq!(record_id(&values.records[0].1, 1, false), "1");
        assert_eq!(cases[1].as_ref().unwrap().subset, "default");
        assert_eq!(record_id(&values.records[1].1, 2, false), "line-2");
        assert_eq!(cases[2].as_ref().unwrap_err().0, Some("rejected"));
        assert_eq!(values.rejects[0].record, 4);
    }
}
