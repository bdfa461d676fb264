//! steerflow jobs: a TOML job file turned into a run.
//!
//! [`config`] parses the layered configuration; [`checks`] resolves the shared sections without
//! loading a model; [`models`] locates, installs and loads models; [`kinds`] has one file per
//! job kind ([`job_kind::JobKind`]) and dispatches on it; [`dry_run`] checks a job without
//! running it. The `steerflow` binary is a thin clap layer over these.

pub mod bench;
pub mod checks;
pub mod config;
pub mod dry_run;
pub mod error;
pub mod job_kind;
pub mod kinds;
pub mod models;
pub mod serve;
pub mod summary;

pub use error::{exit_code, invalid, JobError};

use config::sections::{Device, InputFormatSetting, RewardSection};
use config::JobConfig;
use kinds::JobSummary;
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::run::RunReport;
use steerflow_pipeline::source::InputFormat;

/// Runs a job of any kind on one process; its typed summary.
pub fn run_kind(config: &JobConfig, cluster: &ClusterSpec) -> Result<JobSummary, JobError> {
    kinds::run(&config.common, &config.sections, cluster)
}

/// Runs a job of any kind and returns its summary as `summary.json` has it.
pub fn run_any(config: &JobConfig) -> Result<serde_json::Value, JobError> {
    let summary = run_kind(config, &ClusterSpec::single(config.job.workers))?;
    serde_json::to_value(&summary)
        .map_err(|e| invalid(format!("the summary cannot be serialised: {e}")))
}

/// Runs an iterative-DPO job on one process and returns its whole report.
pub fn run_job(config: &JobConfig) -> Result<RunReport, JobError> {
    kinds::iterative_dpo::run_report(config, ClusterSpec::single(config.job.workers))
}

/// Scores every response of `input` with the reward model `reward` describes (`steerflow score`).
pub fn score_responses(
    reward: &RewardSection,
    input: &str,
    format: InputFormatSetting,
    output: &str,
    device: Device,
) -> Result<steerflow_pipeline::score_file::ScoreReport, JobError> {
    let input_format = InputFormat::resolve(format.as_str(), input).map_err(invalid)?;
    let counters = std::sync::Arc::new(steerflow_models::served::ServedCounters::default());
    let model = models::load_reward_model(reward, None, device, &counters)?;
    Ok(steerflow_pipeline::score_file::score_file(
        input,
        input_format,
        output,
        model.as_ref(),
    )?)
}

/// Sizes the compute threads so that `workers` dataflow workers, each running model kernels on
/// a pool of its own (`steerflow_kernels::threads`), do not oversubscribe the cores: threads =
/// max(1, cores / workers) per worker. `RAYON_NUM_THREADS` wins when set. Call once, at start-up
/// before any other thread or model runs; the calling thread joins a pool of that size (for
/// what it computes itself: the scoring-only kinds, `bench`), which it keeps while the returned
/// [`ComputePool`](steerflow_kernels::threads::ComputePool) lives.
pub fn configure_threads(workers: usize) -> steerflow_kernels::threads::ComputePool {
    let threads = steerflow_kernels::threads::configured_threads(workers);
    // candle sizes its own pools from this variable, and without it re-reads /proc/cpuinfo on
    // every f32 matmul (6% of decode time in `steerflow bench --generate-only`).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    steerflow_kernels::threads::join(threads)
}
