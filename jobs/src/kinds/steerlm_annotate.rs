//! `steerlm-annotate`: SteerLM labels (`helpfulness:4,...`, rounded half to even) for every
//! assistant turn of NeMo conversations, as the NeMo-Aligner jsonl plus the raw floats in
//! parquet (`configs/steerlm-annotate.toml`).

use crate::checks::plan;
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::scoring_reward_model;
use serde::{Deserialize, Serialize};

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

/// What an annotation run did (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job: &'static str,
    pub scorer: String,
    pub output: String,
    pub conversations: u64,
    pub turns_labelled: u64,
    pub turns_defaulted: u64,
    pub rejected: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} conversations annotated ({} turns labelled, {} given the default label, {} records rejected) into {}",
            self.conversations, self.turns_labelled, self.turns_defaulted, self.rejected, self.output
        )
    }
}

pub fn check(config: &Common, annotate: &AnnotateSection) -> Result<(), JobError> {
    plan(config)?;
    if annotate.default_label.trim().is_empty() {
        return Err(invalid("annotate.default_label must not be empty"));
    }
    Ok(())
}

pub fn run(config: &Common, annotate: &AnnotateSection) -> Result<Summary, JobError> {
    check(config, annotate)?;
    let plan = plan(config)?;
    let reward = scoring_reward_model(config)?;
    let report = steerflow_pipeline::annotate::run_annotate(
        &config.input.path,
        &config.output.path,
        reward.as_ref(),
        &annotate.default_label,
        plan.max_rejects,
    )?;
    Ok(Summary {
        job: "steerlm-annotate",
        scorer: reward.id(),
        output: config.output.path.clone(),
        conversations: report.conversations,
        turns_labelled: report.turns_labelled,
        turns_defaulted: report.turns_defaulted,
        rejected: report.rejected,
    })
}
