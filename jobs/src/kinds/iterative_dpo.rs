//! `iterative-dpo`: chosen/rejected pairs for iterative DPO (HelpSteer2 recipe: N samples per
//! prompt, scored, best vs worst goodness), exactly once on the run store; also SteerLM 2.0
//! attribute-conditioned sampling (`configs/iterative-dpo.toml`, `demo.toml`,
//! `steerlm2-sampling.toml`). The dataflow is `steerflow_pipeline::dataflow`.

use crate::checks::{plan, DryRunShape};
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::load_models;
use serde::Serialize;
use steerflow_models::engine::EngineLimits;
use steerflow_operators::dedup::KeepRule;
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::dedup::prompts::PromptDedup;
use steerflow_pipeline::run::{run_iterative_dpo, RunReport};
use steerflow_pipeline::spec::{Normalization, RunSpec};

/// What an iterative-DPO launch did: `summary.json` as written beside the data (`json`), and
/// what the closing line says.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Summary {
    pub json: serde_json::Value,
    #[serde(skip)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// This launch committed a run.
    Committed {
        pairs: u64,
        prompts: u64,
        dropped: u64,
        rejected: u64,
        sampling_tokens_per_second: f64,
        scoring_responses_per_second: f64,
    },
    /// Every prompt of the input was already committed.
    UpToDate,
    /// A process other than 0 of a cluster: its share is done; process 0 commits.
    ShareDone { process: u64, processes: u64 },
}

impl Summary {
    pub fn from_json(json: serde_json::Value) -> Self {
        let number = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let outcome = if json.get("committed_by").is_some() {
            Outcome::ShareDone {
                process: number(&json["process"]),
                processes: number(&json["processes"]),
            }
        } else if json["up_to_date"] == true {
            Outcome::UpToDate
        } else {
            let counts = &json["counts"];
            let throughput = &json["throughput"];
            Outcome::Committed {
                pairs: number(&counts["pairs"]),
                prompts: number(&counts["prompts"]),
                dropped: counts["dropped"]
                    .as_object()
                    .map(|d| d.values().map(number).sum())
                    .unwrap_or(0),
                rejected: number(&counts["rejected"]),
                sampling_tokens_per_second: throughput["sampling_tokens_per_second"]
                    .as_f64()
                    .unwrap_or(0.0),
                scoring_responses_per_second: throughput["scoring_responses_per_second"]
                    .as_f64()
                    .unwrap_or(0.0),
            }
        };
        Self { json, outcome }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let output = self.json["output"].as_str().unwrap_or_default();
        let run = self.json["run_id"].as_str().unwrap_or("?");
        match &self.outcome {
            Outcome::ShareDone { process, processes } => write!(
                f,
                "process {process} of {processes}: its share of run {run} is done; process 0 commits it to {output}"
            ),
            Outcome::UpToDate => write!(
                f,
                "nothing new: every prompt of the input is committed in {output} (latest run {run})"
            ),
            Outcome::Committed { pairs, prompts, dropped, rejected, sampling_tokens_per_second, scoring_responses_per_second } => write!(
                f,
                "{pairs} pairs from {prompts} prompts ({dropped} dropped, {rejected} rejected) written to {output}; sampling {sampling_tokens_per_second:.1} tokens/s, scoring {scoring_responses_per_second:.2} responses/s"
            ),
        }
    }
}

/// iterative-dpo has no section of its own.
pub type Section = ();

pub const SHAPE: DryRunShape = DryRunShape {
    uses_policy: true,
    uses_reward: true,
    records: Some(steerflow_pipeline::source::RecordShape::Prompt),
    samples: true,
    cluster: true,
};

/// Checks the job without loading a model.
pub fn check(config: &Common, _: &Section) -> Result<(), JobError> {
    plan(config).map(|_| ())
}

pub fn run(config: &Common, _: &Section, cluster: &ClusterSpec) -> Result<Summary, JobError> {
    Ok(Summary::from_json(
        run_report(config, cluster.clone())?.summary,
    ))
}

/// Runs the job as process `cluster.process` of `cluster.processes`, with the whole report.
pub fn run_report(config: &Common, cluster: ClusterSpec) -> Result<RunReport, JobError> {
    cluster.validate().map_err(invalid)?;
    let plan = plan(config)?;
    let models = load_models(config)?;
    if models.reward.attribute_names() == ["reward"] && plan.normalization == Normalization::Run {
        return Err(invalid(
            "a scalar reward is only comparable between responses to the same prompt: \
             set goodness.normalization = \"per-prompt\" (or \"reference\" with stats for this model)",
        ));
    }
    let goodness = plan
        .weights
        .bind(&models.reward.attribute_names())
        .map_err(|e| invalid(format!("goodness: {e}")))?;
    let description = if config.job.description.is_empty() {
        format!(
            "Iterative-DPO pairs: {} samples per prompt from `{}`, scored by `{}`, goodness preset `{}`.",
            config.sampling.samples_per_prompt,
            models.policy.id(),
            models.reward.id(),
            config.goodness.preset.as_str()
        )
    } else {
        config.job.description.clone()
    };
    let spec = RunSpec {
        input: config.input.path.clone(),
        output: config.output.path.clone(),
        shards: config.output.shards,
        seed: config.job.seed,
        samples_per_prompt: config.sampling.samples_per_prompt,
        generation: plan.generation,
        engine: EngineLimits {
            max_sequences: config.sampling.max_batch_sequences.max(1),
            max_tokens: config.sampling.max_batch_tokens,
        },
        goodness_preset: config.goodness.preset.as_str().to_string(),
        goodness,
        normalization: plan.normalization,
        pairs: plan.pairs,
        max_rejects: plan.max_rejects,
        workers: cluster.workers,
        description,
        formats: plan.formats.clone(),
        prompt_dedup: prompt_dedup(config, cluster.workers)?,
        cluster,
    };
    Ok(run_iterative_dpo(
        spec,
        config.input.format.as_str(),
        models,
    )?)
}

/// `[dedup]` for the prompts: copies of a prompt and prompts holding a benchmark item are not
/// sampled.
fn prompt_dedup(config: &Common, workers: usize) -> Result<Option<PromptDedup>, JobError> {
    let Some(dedup) = &config.dedup else {
        return Ok(None);
    };
    if dedup.keep == KeepRule::HighestScore {
        return Err(invalid(
            "dedup.keep = \"highest_score\" needs scored records; prompts are kept by \"first\" or \"longest\"",
        ));
    }
    let references = dedup.references()?;
    Ok(Some(PromptDedup {
        norm: dedup.normalize,
        near: dedup.near(),
        keep: dedup.keep,
        lineage: dedup.lineage(references.as_deref()),
        references,
        workers,
    }))
}
