//! A resolved run: everything the graph and the sinks need, with models loaded.
//! The job layer (`steerflow` crate) builds it from a TOML config.

use crate::reject::RejectLimit;
use std::sync::Arc;
use steerflow_models::engine::EngineLimits;
use steerflow_models::generation::GenerationParams;
use steerflow_models::policy::Policy;
use steerflow_models::RewardModel;
use steerflow_operators::goodness::BoundGoodness;
use steerflow_operators::normalize::NormStats;

/// Where the mean and std of normalised goodness come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalization {
    /// Given in the config (the paper's HelpSteer2 reference set).
    Reference(NormStats),
    /// Computed over all scored responses of this run.
    Run,
    /// Computed over each prompt's own responses.
    PerPrompt,
}

impl Normalization {
    pub fn name(&self) -> &'static str {
        match self {
            Normalization::Reference(_) => "reference",
            Normalization::Run => "run",
            Normalization::PerPrompt => "per-prompt",
        }
    }
}

/// Run parameters that travel to every worker.
#[derive(Clone)]
pub struct RunSpec {
    pub input: String,
    pub output: String,
    /// Number of parquet files the pairs are split over; fixed by the config, not by the number
    /// of workers, so the files are the same whatever the cluster shape.
    pub shards: usize,
    pub seed: u64,
    pub samples_per_prompt: u32,
    pub generation: GenerationParams,
    /// How many sequences the generation engine batches; never changes the output.
    pub engine: EngineLimits,
    pub goodness_preset: String,
    pub goodness: BoundGoodness,
    pub normalization: Normalization,
    /// How a prompt's scored responses become pairs.
    pub pairs: steerflow_operators::pairs::PairRule,
    pub max_rejects: RejectLimit,
    pub workers: usize,
    /// A short description written into the dataset README.
    pub description: String,
    /// The forms the pairs are written in.
    pub formats: Vec<crate::formats::ExportFormat>,
    /// Processes × workers; `workers` above is this process's share.
    pub cluster: crate::cluster::ClusterSpec,
    /// `[dedup]`: prompts left out before sampling.
    pub prompt_dedup: Option<crate::dedup::prompts::PromptDedup>,
}

/// The loaded models, shared by every worker of the process.
#[derive(Clone)]
pub struct Models {
    pub policy: Policy,
    pub reward: Arc<dyn RewardModel>,
    /// Requests, retries and failures of the served models among them (zero when none is).
    pub served: Arc<steerflow_models::served::ServedCounters>,
}
