//! `filter-rank`: a scored corpus filtered by thresholds on any score, top-k per prompt and a run
//! quantile, and ranked; kept rows carry their scores and rank (`configs/filter-rank.toml`).

use crate::checks::plan;
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::scoring_reward_model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use steerflow_pipeline::spec::Normalization;

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

/// What a filter-rank run did (`summary.json`).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Summary(pub serde_json::Value);

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = &self.0["counts"];
        write!(
            f,
            "{} of {} rows kept (removed by rule: {}) written to {}",
            counts["kept"],
            counts["rows"],
            counts["removed_by"],
            self.0["output"].as_str().unwrap_or_default()
        )
    }
}

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

pub fn run(config: &Common, filter: &FilterSection) -> Result<Summary, JobError> {
    check(config, filter)?;
    let plan = plan(config)?;
    let reward = scoring_reward_model(config)?;
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
    let rules = steerflow_operators::filter::FilterRules {
        min: filter.min.clone(),
        max: filter.max.clone(),
        top_k: (filter.top_k > 0).then_some(filter.top_k),
        quantile: filter.quantile,
    };
    let summary = steerflow_pipeline::filter_rank::run_filter_rank(
        &config.input.path,
        plan.input_format,
        &config.output.path,
        reward.as_ref(),
        &goodness,
        plan.normalization,
        &rules,
        plan.max_rejects,
    )?;
    Ok(Summary(summary))
}
