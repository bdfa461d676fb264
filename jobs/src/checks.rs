//! What a job file resolves to before any model is loaded: the checks every kind shares, and
//! the typed values the runners take (goodness weights, normalisation, the reject limit,
//! generation parameters).

use crate::config::sections::{
    Common, GoodnessPreset, MaxRejects, NormalizationSetting, PairStrategySetting, PairsSection,
};
use crate::error::{invalid, JobError};
use steerflow_kernels::sampling::{sampling_strategy, SamplingParams};
use steerflow_models::generation::GenerationParams;
use steerflow_operators::goodness::GoodnessWeights;
use steerflow_operators::normalize::NormStats;
use steerflow_operators::pairs::{PairRule, PairStrategy};
use steerflow_operators::steerlm::steer_label;
use steerflow_pipeline::formats::ExportFormat;
use steerflow_pipeline::reject::RejectLimit;
use steerflow_pipeline::source::InputFormat;
use steerflow_pipeline::spec::Normalization;

/// The shared sections, checked and resolved.
pub struct Plan {
    pub input_format: InputFormat,
    pub weights: GoodnessWeights,
    pub normalization: Normalization,
    pub max_rejects: RejectLimit,
    pub generation: GenerationParams,
    /// `output.formats` in a fixed order, without repeats.
    pub formats: Vec<ExportFormat>,
    pub pairs: PairRule,
}

/// Checks everything in the shared sections that can be checked without loading a model.
pub fn plan(config: &Common) -> Result<Plan, JobError> {
    steerflow_pipeline::storage::configure(config.storage.clone());
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
    if config.reward.tensor_parallel == 0 {
        return Err(invalid("reward.tensor_parallel must be at least 1"));
    }
    crate::models::reward_names(&config.reward)?;
    if !config.sampling.steer.is_empty() {
        steer_label(&config.sampling.steer).map_err(|e| invalid(format!("sampling.steer: {e}")))?;
    }
    let mut formats = config.output.formats.clone();
    formats.sort();
    formats.dedup();
    if formats.is_empty() {
        return Err(invalid("output.formats must name at least one format"));
    }
    // A folder's files are resolved one by one when the run lists them.
    let format = config.input.format.as_str();
    let input_format = if steerflow_pipeline::input::is_folder(&config.input.path) {
        InputFormat::resolve(format, "folder.jsonl").map_err(invalid)?
    } else {
        InputFormat::resolve(format, &config.input.path).map_err(invalid)?
    };
    let sampling = SamplingParams {
        temperature: config.sampling.temperature,
        top_p: config.sampling.top_p,
        top_k: config.sampling.top_k,
    };
    sampling_strategy(&sampling).map_err(|e| invalid(format!("sampling: {e}")))?;
    Ok(Plan {
        input_format,
        weights: goodness_weights(config)?,
        normalization: normalization(config)?,
        max_rejects: reject_limit(config.input.max_rejects)?,
        generation: GenerationParams {
            sampling,
            max_new_tokens: config.sampling.max_new_tokens,
            stop: config.sampling.stop.clone(),
        },
        formats,
        pairs: pair_rule(&config.pairs)?,
    })
}

/// `[pairs]` as the rule the per-prompt reduce applies.
pub fn pair_rule(pairs: &PairsSection) -> Result<PairRule, JobError> {
    if !pairs.min_margin.is_finite() || pairs.min_margin < 0.0 {
        return Err(invalid("pairs.min_margin must be a finite number >= 0"));
    }
    if !pairs.length_penalty.is_finite() || pairs.length_penalty < 0.0 {
        return Err(invalid("pairs.length_penalty must be a finite number >= 0"));
    }
    if let Some(s) = pairs.max_similarity.filter(|s| !(*s > 0.0 && *s <= 1.0)) {
        return Err(invalid(format!(
            "pairs.max_similarity must be in (0, 1], got {s}"
        )));
    }
    let k = |least: u32, meaning: &str| match pairs.k {
        Some(k) if k >= least => Ok(k),
        Some(k) => Err(invalid(format!(
            "pairs.k = {k}: strategy `{}` needs k >= {least} ({meaning})",
            pairs.strategy.as_str()
        ))),
        None => Err(invalid(format!(
            "pairs.k is required by strategy `{}` ({meaning})",
            pairs.strategy.as_str()
        ))),
    };
    let strategy = match pairs.strategy {
        PairStrategySetting::BestVsKth => PairStrategy::BestVsKth {
            k: k(2, "the rank of the rejected response; 2 is the runner-up")?,
        },
        PairStrategySetting::AllPairs => PairStrategy::AllPairs {
            max_per_prompt: k(1, "the most pairs per prompt")?,
        },
        other if pairs.k.is_some() => {
            return Err(invalid(format!(
                "pairs.k is only read by the best-vs-kth and all-pairs strategies, not `{}`",
                other.as_str()
            )))
        }
        PairStrategySetting::BestVsWorst => PairStrategy::BestVsWorst,
        PairStrategySetting::BestVsRandom => PairStrategy::BestVsRandom,
        PairStrategySetting::RandomPair => PairStrategy::RandomPair,
    };
    Ok(PairRule {
        strategy,
        min_margin: pairs.min_margin,
        length_penalty: pairs.length_penalty,
        max_length_difference: pairs.max_length_difference,
        max_similarity: pairs.max_similarity,
    })
}

fn goodness_weights(config: &Common) -> Result<GoodnessWeights, JobError> {
    let goodness = &config.goodness;
    match goodness.preset {
        GoodnessPreset::Custom if goodness.weights.is_empty() => Err(invalid(
            "goodness.preset = \"custom\" needs goodness.weights",
        )),
        GoodnessPreset::Custom => Ok(GoodnessWeights::custom(goodness.weights.clone())),
        _ if !goodness.weights.is_empty() => Err(invalid(
            "goodness.weights is only used with goodness.preset = \"custom\"",
        )),
        preset => Ok(GoodnessWeights::preset(preset.as_str())),
    }?
    .map_err(|e| invalid(format!("goodness: {e}")))
}

fn normalization(config: &Common) -> Result<Normalization, JobError> {
    let goodness = &config.goodness;
    Ok(match goodness.normalization {
        NormalizationSetting::Run => Normalization::Run,
        NormalizationSetting::PerPrompt => Normalization::PerPrompt,
        NormalizationSetting::Reference => {
            match (goodness.reference_mean, goodness.reference_std) {
                (Some(mean), Some(std)) => Normalization::Reference(
                    NormStats::reference(mean, std)
                        .map_err(|e| invalid(format!("goodness: {e}")))?,
                ),
                _ => return Err(invalid(
                    "goodness.normalization = \"reference\" needs reference_mean and reference_std",
                )),
            }
        }
    })
}

fn reject_limit(value: MaxRejects) -> Result<RejectLimit, JobError> {
    match value {
        MaxRejects::Count(n) => Ok(RejectLimit::Count(n)),
        MaxRejects::Fraction(f) if (0.0..1.0).contains(&f) => Ok(RejectLimit::Fraction(f)),
        MaxRejects::Fraction(f) => Err(invalid(format!(
            "input.max_rejects must be a count >= 0 or a fraction in [0, 1), got {f}"
        ))),
    }
}

/// Where a store-run kind reads and writes.
pub fn store_spec(
    config: &Common,
    max_rejects: RejectLimit,
) -> steerflow_pipeline::store_run::StoreSpec {
    steerflow_pipeline::store_run::StoreSpec {
        input: config.input.path.clone(),
        input_format: config.input.format.as_str().to_string(),
        output: config.output.path.clone(),
        shards: config.output.shards,
        max_rejects,
    }
}

/// What a kind's run and dry run look at.
#[derive(Debug, Clone, Copy)]
pub struct DryRunShape {
    /// The policy model is loaded.
    pub uses_policy: bool,
    /// The reward model is loaded.
    pub uses_reward: bool,
    /// Records are read as prompts (iterative-dpo) or as prompt + response (filter-rank) by the
    /// dry run; the other kinds' records are checked when the job reads them.
    pub records: Option<steerflow_pipeline::source::RecordShape>,
    /// The dry run estimates sampling work and what committed runs settled.
    pub samples: bool,
    /// The kind runs over a cluster of processes (the others run on one).
    pub cluster: bool,
}
