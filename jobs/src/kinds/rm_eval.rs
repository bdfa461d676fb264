//! `rm-eval`: reward-model accuracy on a preference set, per subset and RewardBench category
//! (`eval.json`, `eval.md`, `cases.jsonl`; `configs/rm-eval.toml`).

use crate::checks::plan;
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::scoring_reward_model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use steerflow_operators::evaluation::EvalReport;

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

/// What an evaluation run did (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job: &'static str,
    pub scorer: String,
    pub output: String,
    pub report: EvalReport,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let overall = serde_json::to_value(&self.report)
            .map(|r| r["overall"].to_string())
            .unwrap_or_default();
        write!(
            f,
            "reward-model evaluation written to {}: overall {overall}",
            self.output
        )
    }
}

pub fn run(config: &Common, eval: &EvalSection) -> Result<Summary, JobError> {
    let plan = plan(config)?;
    let reward = scoring_reward_model(config)?;
    let goodness = plan
        .weights
        .bind(&reward.attribute_names())
        .map_err(|e| invalid(format!("goodness: {e}")))?;
    let report = steerflow_pipeline::rm_eval::run_rm_eval(
        &config.input.path,
        &config.output.path,
        reward.as_ref(),
        &goodness,
        &eval.categories.map(),
        plan.max_rejects,
    )?;
    Ok(Summary {
        job: "rm-eval",
        scorer: reward.id(),
        output: config.output.path.clone(),
        report,
    })
}
