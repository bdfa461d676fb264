//! steerflow jobs: a TOML job file turned into a run.
//!
//! [`config`] parses the layered configuration; [`plan`] checks everything that needs no model;
//! [`load_models`] / [`load_reward_model`] locate, install and load models; [`run_any`] runs a
//! job of any kind ([`JOB_KINDS`]); [`dry_run`] checks a job without running it. The `steerflow`
//! binary is a thin clap layer over these.

pub mod bench;
pub mod config;
pub mod dry_run;

use config::{ConfigError, JobConfig};
use std::sync::Arc;
use steerflow_kernels::sampling::{sampling_strategy, SamplingParams};
use steerflow_models::chat_template::named_template;
use steerflow_models::engine::EngineLimits;
use steerflow_models::hf::{HeadKind, HfModel};
use steerflow_models::judge::{helpsteer2_attributes, Judge};
use steerflow_models::llama_gguf::GgufLlama;
use steerflow_models::generation::GenerationParams;
use steerflow_models::policy::Policy;
use steerflow_models::registry::{locate_model, ModelLocation};
use steerflow_models::reward::{NextTokenLogitReward, Overlength, SequenceClassifierReward};
use steerflow_models::TemplatedModel;
use steerflow_models::{LanguageModel, RewardModel};
use steerflow_operators::attributes::{HELPSTEER2, NEMO_NINE};
use steerflow_operators::goodness::GoodnessWeights;
use steerflow_operators::normalize::NormStats;
use steerflow_operators::steerlm::steer_label;
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::reject::RejectLimit;
use steerflow_pipeline::run::{run_iterative_dpo, RunReport};
use steerflow_pipeline::formats::ExportFormat;
use steerflow_pipeline::source::InputFormat;
use steerflow_pipeline::spec::{Models, Normalization, RunSpec};

/// Exit codes of the `steerflow` command.
pub mod exit_code {
    /// The run failed (model, storage, worker).
    pub const FAILURE: i32 = 1;
    /// The command line or the job file is wrong.
    pub const CONFIG: i32 = 2;
    /// More records were rejected than `input.max_rejects` allows.
    pub const TOO_MANY_REJECTS: i32 = 3;
    /// Storage failed in a way that may pass (5xx, throttling, resets, timeouts, after the
    /// retries): nothing partial was committed; rerun the same command to resume.
    pub const RETRYABLE: i32 = 4;
}

/// Any failure of a job, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pipeline(#[from] steerflow_pipeline::PipelineError),
    #[error(transparent)]
    Model(#[from] steerflow_models::ModelError),
}

impl JobError {
    pub fn exit_code(&self) -> i32 {
        match self {
            JobError::Config(_) => exit_code::CONFIG,
            JobError::Pipeline(steerflow_pipeline::PipelineError::TooManyRejects { .. }) => {
                exit_code::TOO_MANY_REJECTS
            }
            JobError::Pipeline(steerflow_pipeline::PipelineError::Operator(_)) => exit_code::CONFIG,
            JobError::Pipeline(steerflow_pipeline::PipelineError::RunConflict(_)) => {
                exit_code::CONFIG
            }
            JobError::Pipeline(steerflow_pipeline::PipelineError::Storage {
                retryable: true,
                ..
            }) => exit_code::RETRYABLE,
            _ => exit_code::FAILURE,
        }
    }
}

pub(crate) fn invalid(message: impl Into<String>) -> JobError {
    JobError::Config(ConfigError::Invalid(message.into()))
}

/// What the config resolves to before any model is loaded.
pub struct Plan {
    pub input_format: InputFormat,
    pub weights: GoodnessWeights,
    pub normalization: Normalization,
    pub max_rejects: RejectLimit,
    pub generation: GenerationParams,
}

/// The jobs `job.kind` names.
pub const JOB_KINDS: [&str; 5] = [
    "iterative-dpo",
    "helpsteer2-pairs",
    "filter-rank",
    "rm-eval",
    "steerlm-annotate",
];

/// Checks everything in the config that can be checked without loading a model.
pub fn plan(config: &JobConfig) -> Result<Plan, JobError> {
    steerflow_pipeline::storage::configure(config.storage.clone());
    if !JOB_KINDS.contains(&config.job.kind.as_str()) {
        return Err(invalid(format!(
            "job.kind `{}` is not known ({})",
            config.job.kind,
            JOB_KINDS.join(", ")
        )));
    }
    if config.input.path.is_empty() {
        return Err(invalid("input.path is required"));
    }
    if config.output.path.is_empty() {
        return Err(invalid("output.path is required"));
    }
    if config.output.shards == 0 {
        return Err(invalid("output.shards must be at least 1"));
    }
    if config.job.workers == 0 {
        return Err(invalid("job.workers must be at least 1"));
    }
    if config.sampling.samples_per_prompt < 2 {
        return Err(invalid(
            "sampling.samples_per_prompt must be at least 2 to form a pair",
        ));
    }
    if config.sampling.max_new_tokens == 0 {
        return Err(invalid("sampling.max_new_tokens must be at least 1"));
    }
    if !config.pairs.min_margin.is_finite() || config.pairs.min_margin < 0.0 {
        return Err(invalid("pairs.min_margin must be a finite number >= 0"));
    }
    reward_spec(&config.reward)?;
    if !config.sampling.steer.is_empty() {
        steer_label(&config.sampling.steer).map_err(|e| invalid(format!("sampling.steer: {e}")))?;
    }
    export_formats(&config.output.formats)?;
    // A folder's files are resolved one by one when the run lists them.
    let input_format = if steerflow_pipeline::input::is_folder(&config.input.path) {
        InputFormat::resolve(&config.input.format, "folder.jsonl").map_err(invalid)?
    } else {
        InputFormat::resolve(&config.input.format, &config.input.path).map_err(invalid)?
    };
    let sampling = SamplingParams {
        temperature: config.sampling.temperature,
        top_p: config.sampling.top_p,
        top_k: config.sampling.top_k,
    };
    sampling_strategy(&sampling).map_err(|e| invalid(format!("sampling: {e}")))?;
    let weights = match config.goodness.preset.as_str() {
        "custom" => {
            if config.goodness.weights.is_empty() {
                return Err(invalid(
                    "goodness.preset = \"custom\" needs goodness.weights",
                ));
            }
            GoodnessWeights::custom(config.goodness.weights.clone())
        }
        preset => {
            if !config.goodness.weights.is_empty() {
                return Err(invalid(
                    "goodness.weights is only used with goodness.preset = \"custom\"",
                ));
            }
            GoodnessWeights::preset(preset)
        }
    }
    .map_err(|e| invalid(format!("goodness: {e}")))?;
    let normalization = match config.goodness.normalization.as_str() {
        "run" => Normalization::Run,
        "per-prompt" => Normalization::PerPrompt,
        "reference" => match (
            config.goodness.reference_mean,
            config.goodness.reference_std,
        ) {
            (Some(mean), Some(std)) => Normalization::Reference(
                NormStats::reference(mean, std).map_err(|e| invalid(format!("goodness: {e}")))?,
            ),
            _ => {
                return Err(invalid(
                    "goodness.normalization = \"reference\" needs reference_mean and reference_std",
                ))
            }
        },
        other => {
            return Err(invalid(format!(
                "goodness.normalization `{other}` is not known (run, per-prompt, reference)"
            )))
        }
    };
    let max_rejects = match &config.input.max_rejects {
        toml::Value::Integer(n) if *n >= 0 => RejectLimit::Count(*n as u64),
        toml::Value::Float(f) if (0.0..1.0).contains(f) => RejectLimit::Fraction(*f),
        other => {
            return Err(invalid(format!(
                "input.max_rejects must be a count >= 0 or a fraction in [0, 1), got {other}"
            )))
        }
    };
    let generation = GenerationParams {
        sampling,
        max_new_tokens: config.sampling.max_new_tokens,
        stop: config.sampling.stop.clone(),
    };
    Ok(Plan {
        input_format,
        weights,
        normalization,
        max_rejects,
        generation,
    })
}

/// The reward section, checked: kind, score names and overlength policy.
pub struct RewardSpec {
    pub kind: RewardKind,
    pub names: Vec<String>,
    pub overlength: Overlength,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardKind {
    Judge,
    SequenceClassification,
    NextTokenLogit,
}

/// Score names of a preset or an explicit list.
pub fn attribute_names(value: &toml::Value) -> Result<Vec<String>, JobError> {
    match value {
        toml::Value::String(s) => match s.as_str() {
            "helpsteer2" => Ok(HELPSTEER2.iter().map(|a| a.to_string()).collect()),
            "nemo9" => Ok(NEMO_NINE.iter().map(|a| a.to_string()).collect()),
            "scalar" => Ok(vec!["reward".to_string()]),
            other => Err(invalid(format!(
                "reward.attributes `{other}` is not known (helpsteer2, nemo9, scalar, or a list)"
            ))),
        },
        toml::Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("reward.attributes must be a list of strings"))
            })
            .collect(),
        other => Err(invalid(format!(
            "reward.attributes must be a preset name or a list, got {other}"
        ))),
    }
}

pub fn reward_spec(reward: &config::RewardSection) -> Result<RewardSpec, JobError> {
    let kind = match reward.kind.as_str() {
        "judge" => RewardKind::Judge,
        "sequence-classification" => RewardKind::SequenceClassification,
        "next-token-logit" => RewardKind::NextTokenLogit,
        other => {
            return Err(invalid(format!(
            "reward.kind `{other}` is not known (judge, sequence-classification, next-token-logit)"
        )))
        }
    };
    let names = attribute_names(&reward.attributes)?;
    if kind == RewardKind::Judge
        && names != HELPSTEER2.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    {
        return Err(invalid(
            "the judge rates the five HelpSteer2 attributes (reward.attributes = \"helpsteer2\")",
        ));
    }
    let overlength = match reward.overlength.as_str() {
        "skip" => Overlength::Skip,
        "drop-turns" => Overlength::DropTurns,
        other => {
            return Err(invalid(format!(
                "reward.overlength `{other}` is not known (skip, drop-turns)"
            )))
        }
    };
    Ok(RewardSpec {
        kind,
        names,
        overlength,
    })
}

/// `count` devices from `job.device`: `cpu` (all the CPU), or `cuda` / `cuda:N` (GPUs N,
/// N + 1, ...). A build without the `cuda` feature says so.
pub fn devices(spec: &str, count: usize) -> Result<Vec<candle_core::Device>, JobError> {
    let first = match spec {
        "cpu" => return Ok(vec![candle_core::Device::Cpu; count.max(1)]),
        "cuda" => 0,
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                invalid(format!(
                    "job.device `{other}` is not known (cpu, cuda, cuda:N)"
                ))
            })?,
    };
    (first..first + count.max(1))
        .map(|ordinal| {
            candle_core::Device::new_cuda(ordinal).map_err(|e| {
                invalid(format!(
                    "job.device `{spec}`: GPU {ordinal} is not usable: {e} (a build with `--features cuda` and a CUDA driver are needed: docs/gpu.md)"
                ))
            })
        })
        .collect()
}

/// Loads a model that generates text: a GGUF file or a causal-LM checkpoint, on `device`.
pub fn load_language_model(
    spec: &str,
    device: &candle_core::Device,
) -> Result<Arc<dyn LanguageModel>, JobError> {
    Ok(match locate_model(spec)? {
        ModelLocation::Gguf(path) => {
            tracing::info!(model = %path.display(), "loading GGUF model");
            Arc::new(GgufLlama::load(&path, device)?)
        }
        ModelLocation::HfDir(dir) => {
            tracing::info!(model = %dir.display(), "loading checkpoint");
            Arc::new(HfModel::load(&dir, HeadKind::CausalLm, device)?.into_language_model()?)
        }
    })
}

/// Loads the reward model a reward section describes (`policy` reuses `policy`).
/// `device` is `job.device`; `reward.tensor_parallel` ranks start there.
pub fn load_reward_model(
    reward: &config::RewardSection,
    policy: Option<&Arc<dyn LanguageModel>>,
    device: &str,
) -> Result<Arc<dyn RewardModel>, JobError> {
    let spec = reward_spec(reward)?;
    let ranks = reward.tensor_parallel;
    if ranks == 0 {
        return Err(invalid("reward.tensor_parallel must be at least 1"));
    }
    if ranks > 1 && spec.kind == RewardKind::Judge {
        return Err(invalid(
            "reward.tensor_parallel applies to checkpoint reward models (sequence-classification, next-token-logit), not to the judge",
        ));
    }
    let devices = devices(device, ranks)?;
    let checkpoint = |kind: HeadKind| -> Result<HfModel, JobError> {
        let model = match locate_model(&reward.model)? {
            ModelLocation::HfDir(dir) if ranks > 1 => {
                tracing::info!(model = %dir.display(), ranks, "loading a tensor-parallel reward model");
                HfModel::load_parallel(&dir, kind, &devices)?
            }
            ModelLocation::HfDir(dir) => HfModel::load(&dir, kind, &devices[0])?,
            ModelLocation::Gguf(path) => {
                return Err(invalid(format!(
                    "reward.kind `{}` needs a Hugging Face checkpoint directory, not {}",
                    reward.kind,
                    path.display()
                )))
            }
        };
        Ok(match reward.chat_template.as_str() {
            "model" => model,
            name => model.with_chat_template(&named_template(name)?)?,
        })
    };
    Ok(match spec.kind {
        RewardKind::Judge => {
            let model = match (reward.model.as_str(), policy) {
                ("policy", Some(p)) => p.clone(),
                ("policy", None) => {
                    return Err(invalid("reward.model = \"policy\" needs a policy model"))
                }
                (other, _) => load_language_model(other, &devices[0])?,
            };
            Arc::new(Judge::new(
                with_chat_template(model, &reward.chat_template)?,
                helpsteer2_attributes(),
            )?)
        }
        RewardKind::SequenceClassification => Arc::new(SequenceClassifierReward::new(
            checkpoint(HeadKind::SequenceClassification)?,
            spec.names,
            reward.max_tokens,
            spec.overlength,
        )?),
        RewardKind::NextTokenLogit => Arc::new(NextTokenLogitReward::new(
            checkpoint(HeadKind::CausalLm)?,
            reward.logit_index,
            reward.max_tokens,
            spec.overlength,
        )?),
    })
}

/// Loads the models a config names.
/// `model` with the chat template `policy.chat_template` names (`model` keeps its own).
pub fn with_chat_template(
    model: Arc<dyn LanguageModel>,
    template: &str,
) -> Result<Arc<dyn LanguageModel>, JobError> {
    Ok(match template {
        "model" => model,
        name => Arc::new(TemplatedModel::new(model, &named_template(name)?)?),
    })
}

pub fn load_models(config: &JobConfig) -> Result<Models, JobError> {
    let device = devices(&config.job.device, 1)?.remove(0);
    let model = load_language_model(&config.policy.model, &device)?;
    // A judge that is the policy model rates with the model's own template.
    let reward = load_reward_model(&config.reward, Some(&model), &config.job.device)?;
    let policy_model = with_chat_template(model, &config.policy.chat_template)?;
    let mut policy = Policy::new(policy_model);
    if !config.sampling.steer.is_empty() {
        let label = steer_label(&config.sampling.steer)
            .map_err(|e| invalid(format!("sampling.steer: {e}")))?;
        policy = policy
            .with_steer(&label)
            .map_err(|e| invalid(format!("sampling.steer: {e}")))?;
    }
    Ok(Models { policy, reward })
}

/// Scores every response of `input` with the reward model `reward` describes (`steerflow score`).
pub fn score_responses(
    reward: &config::RewardSection,
    input: &str,
    format: &str,
    output: &str,
    device: &str,
) -> Result<steerflow_pipeline::score_file::ScoreReport, JobError> {
    let input_format = InputFormat::resolve(format, input).map_err(invalid)?;
    let model = load_reward_model(reward, None, device)?;
    Ok(steerflow_pipeline::score_file::score_file(
        input,
        input_format,
        output,
        model.as_ref(),
    )?)
}

/// Sizes the compute thread pools so that `workers` dataflow workers, each running model kernels
/// on the shared pools, do not oversubscribe the cores: threads = max(1, cores / workers).
/// `RAYON_NUM_THREADS` wins when set. Call once, at start-up before any other thread or model
/// runs; returns the pool size.
pub fn configure_threads(workers: usize) -> usize {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            (cores / workers.max(1)).max(1)
        });
    // candle sizes its own pools from this variable, and without it re-reads /proc/cpuinfo on
    // every f32 matmul (6% of decode time in `steerflow bench --generate-only`).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // Fails only if the pool already exists (a second job in one process); the first size stays.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    rayon::current_num_threads()
}

/// The subset → category map of an `[eval]` section.
pub fn eval_categories(
    value: &toml::Value,
) -> Result<std::collections::BTreeMap<String, String>, JobError> {
    match value {
        toml::Value::String(s) if s == "rewardbench" => {
            Ok(steerflow_operators::evaluation::rewardbench_categories())
        }
        toml::Value::Table(t) => t
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|c| (k.clone(), c.to_string()))
                    .ok_or_else(|| invalid(format!("eval.categories.{k} must be a category name")))
            })
            .collect(),
        other => Err(invalid(format!(
            "eval.categories must be \"rewardbench\" or a table, got {other}"
        ))),
    }
}

/// The export formats named in `output.formats`, in a fixed order, at least one.
pub fn export_formats(names: &[String]) -> Result<Vec<ExportFormat>, JobError> {
    let mut formats = names
        .iter()
        .map(|n| {
            ExportFormat::parse(n).ok_or_else(|| {
                invalid(format!(
                    "output.formats: `{n}` is not known (conversational, standard, nemo)"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    formats.sort();
    formats.dedup();
    if formats.is_empty() {
        return Err(invalid("output.formats must name at least one format"));
    }
    Ok(formats)
}

/// Runs a job of any kind and returns its summary.
pub fn run_any(config: &JobConfig) -> Result<serde_json::Value, JobError> {
    run_any_on(config, &ClusterSpec::single(config.job.workers))
}

/// As [`run_any`] as one process of a cluster (iterative-dpo only: the scoring-only jobs run
/// without the dataflow, on one process).
pub fn run_any_on(
    config: &JobConfig,
    cluster: &ClusterSpec,
) -> Result<serde_json::Value, JobError> {
    if cluster.processes > 1 && config.job.kind != "iterative-dpo" {
        return Err(invalid(format!(
            "job.kind `{}` runs on one process; cluster mode (--processes) is for iterative-dpo",
            config.job.kind
        )));
    }
    match config.job.kind.as_str() {
        "rm-eval" => run_rm_eval_job(config),
        "steerlm-annotate" => run_annotate_job(config),
        "helpsteer2-pairs" => run_labelled_pairs_job(config),
        "filter-rank" => run_filter_rank_job(config),
        _ => Ok(run_job_on(config, cluster.clone())?.summary),
    }
}

/// The reward model of a scoring-only job; `reward.model = "policy"` means `policy.model`.
fn scoring_reward_model(config: &JobConfig) -> Result<Arc<dyn RewardModel>, JobError> {
    let mut reward_section = config.reward.clone();
    if reward_section.model == "policy" {
        reward_section.model = config.policy.model.clone();
    }
    load_reward_model(&reward_section, None, &config.job.device)
}

/// The `filter-rank` job: a scored corpus filtered by thresholds, top-k and quantile, and ranked.
pub fn run_filter_rank_job(config: &JobConfig) -> Result<serde_json::Value, JobError> {
    let plan = plan(config)?;
    let f = &config.filter;
    if let Some(q) = f.quantile.filter(|q| !(0.0..=1.0).contains(q)) {
        return Err(invalid(format!(
            "filter.quantile must be in [0, 1], got {q}"
        )));
    }
    let reward = scoring_reward_model(config)?;
    let names = reward.attribute_names();
    let scalar = names == ["reward"];
    if scalar && (plan.normalization == Normalization::Run || f.quantile.is_some()) {
        return Err(invalid(
            "a scalar reward only ranks responses to the same prompt: use filter.top_k and \
             goodness.normalization = \"per-prompt\", not a run-wide quantile or run normalisation",
        ));
    }
    for name in f.min.keys().chain(f.max.keys()) {
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
        min: f.min.clone(),
        max: f.max.clone(),
        top_k: (f.top_k > 0).then_some(f.top_k),
        quantile: f.quantile,
    };
    Ok(steerflow_pipeline::filter_rank::run_filter_rank(
        &config.input.path,
        plan.input_format,
        &config.output.path,
        reward.as_ref(),
        &goodness,
        plan.normalization,
        &rules,
        plan.max_rejects,
    )?)
}

/// The `helpsteer2-pairs` job: pairs from responses that already carry attribute labels.
pub fn run_labelled_pairs_job(config: &JobConfig) -> Result<serde_json::Value, JobError> {
    let plan = plan(config)?;
    let names = attribute_names(&config.pairs.attributes)?;
    if !names.contains(&config.pairs.by) {
        return Err(invalid(format!(
            "pairs.by `{}` is not among pairs.attributes ({})",
            config.pairs.by,
            names.join(", ")
        )));
    }
    // The string exports render prompts with the template of the model to be trained.
    let formats = export_formats(&config.output.formats)?;
    let template_model = if formats.iter().any(|f| *f != ExportFormat::Conversational) {
        Some(with_chat_template(
            load_language_model(&config.policy.model, &candle_core::Device::Cpu)?,
            &config.policy.chat_template,
        )?)
    } else {
        None
    };
    let render = |messages: &[steerflow_operators::records::Message]| match &template_model {
        Some(m) => m.text().render(messages, true),
        None => Err(steerflow_models::ModelError::Template(
            "no template model".into(),
        )),
    };
    let report = steerflow_pipeline::labelled_pairs::run_labelled_pairs(
        &config.input.path,
        plan.input_format,
        &config.output.path,
        &names,
        &config.pairs.by,
        plan.max_rejects,
        &formats,
        &render,
    )?;
    Ok(serde_json::json!({
        "job": "helpsteer2-pairs", "output": config.output.path, "pairs": report.pairs, "prompts": report.prompts,
        "responses": report.responses, "dropped": report.dropped, "rejected": report.rejected,
    }))
}

/// The `steerlm-annotate` job: every assistant turn labelled for SteerLM training.
pub fn run_annotate_job(config: &JobConfig) -> Result<serde_json::Value, JobError> {
    let plan = plan(config)?;
    if config.annotate.default_label.trim().is_empty() {
        return Err(invalid("annotate.default_label must not be empty"));
    }
    let reward = scoring_reward_model(config)?;
    let report = steerflow_pipeline::annotate::run_annotate(
        &config.input.path,
        &config.output.path,
        reward.as_ref(),
        &config.annotate.default_label,
        plan.max_rejects,
    )?;
    Ok(serde_json::json!({
        "job": "steerlm-annotate", "scorer": reward.id(), "output": config.output.path,
        "conversations": report.conversations, "turns_labelled": report.turns_labelled,
        "turns_defaulted": report.turns_defaulted, "rejected": report.rejected,
    }))
}

/// The `rm-eval` job: a preference set scored by the reward model, accuracy per subset and category.
pub fn run_rm_eval_job(config: &JobConfig) -> Result<serde_json::Value, JobError> {
    let plan = plan(config)?;
    let categories = eval_categories(&config.eval.categories)?;
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
        &categories,
        plan.max_rejects,
    )?;
    Ok(
        serde_json::json!({ "job": "rm-eval", "scorer": reward.id(), "output": config.output.path, "report": report }),
    )
}

/// Runs the job a config describes.
pub fn run_job(config: &JobConfig) -> Result<RunReport, JobError> {
    run_job_on(config, ClusterSpec::single(config.job.workers))
}

/// As [`run_job`] as process `cluster.process` of `cluster.processes`.
pub fn run_job_on(config: &JobConfig, cluster: ClusterSpec) -> Result<RunReport, JobError> {
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
            models.policy.model().id(),
            models.reward.id(),
            config.goodness.preset
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
        goodness_preset: config.goodness.preset.clone(),
        goodness,
        normalization: plan.normalization,
        min_margin: config.pairs.min_margin,
        max_rejects: plan.max_rejects,
        workers: cluster.workers,
        description,
        formats: export_formats(&config.output.formats)?,
        cluster,
    };
    Ok(run_iterative_dpo(spec, &config.input.format, models)?)
}
