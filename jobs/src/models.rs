//! Models for a job: which devices, and the policy and reward model a config names, located
//! (installed on first use for `default`) and loaded.

use crate::config::sections::{Common, Device, RewardKind, RewardSection};
use crate::config::served::{ProtocolSetting, ServedSection};
use crate::error::{invalid, JobError};
use std::sync::Arc;
use steerflow_models::chat_template::named_template;
use steerflow_models::gguf::GgufModel;
use steerflow_models::hf::{HeadKind, HfModel};
use steerflow_models::judge::{helpsteer2_attributes, Judge};
use steerflow_models::policy::Policy;
use steerflow_models::registry::{locate_model, ModelLocation};
use steerflow_models::reward::{NextTokenLogitReward, SequenceClassifierReward};
use steerflow_models::served::judge::ServedJudge;
use steerflow_models::served::policy::ServedPolicy;
use steerflow_models::served::reward::{RewardProtocol, ServedReward};
use steerflow_models::served::{local_text, ServedCounters};
use steerflow_models::text::TextCodec;
use steerflow_models::TemplatedModel;
use steerflow_models::{LanguageModel, RewardModel};
use steerflow_operators::attributes::HELPSTEER2;
use steerflow_operators::steerlm::steer_label;
use steerflow_pipeline::spec::Models;

/// The score names a reward section names; the judge rates the five HelpSteer2 attributes only.
pub fn reward_names(reward: &RewardSection) -> Result<Vec<String>, JobError> {
    let names = reward.attributes.names();
    if reward.kind == RewardKind::Judge
        && names != HELPSTEER2.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    {
        return Err(invalid(
            "the judge rates the five HelpSteer2 attributes (reward.attributes = \"helpsteer2\")",
        ));
    }
    Ok(names)
}

/// `count` devices from `job.device`: the CPU, or GPUs N, N + 1, ... A build without the `cuda`
/// feature says so.
pub fn devices(spec: Device, count: usize) -> Result<Vec<candle_core::Device>, JobError> {
    let first = match spec {
        Device::Cpu => return Ok(vec![candle_core::Device::Cpu; count.max(1)]),
        Device::Cuda(n) => n,
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
            Arc::new(GgufModel::load(&path, device)?)
        }
        ModelLocation::HfDir(dir) => {
            tracing::info!(model = %dir.display(), "loading checkpoint");
            Arc::new(HfModel::load(&dir, HeadKind::CausalLm, device)?.into_language_model()?)
        }
    })
}

/// The tokenizer and chat template (`template`, as `policy.chat_template`) and context length
/// of a served model, from the local files `spec` names.
fn served_text(spec: &str, template: &str) -> Result<(TextCodec, usize), JobError> {
    if spec == "policy" {
        return Err(invalid(
            "a served judge or OpenRLHF reward server renders its texts locally: set reward.model to the served model's local files (a GGUF or checkpoint directory, for its tokenizer and chat template), not `policy`",
        ));
    }
    let (text, context) = local_text(&locate_model(spec)?)?;
    let text = match template {
        "model" => text,
        name => text.with_template(&named_template(name)?)?,
    };
    Ok((text, context))
}

/// The reward model of a reward section with `[reward.served]`: the judge over the server's
/// log-probabilities, or a reward server.
fn served_reward_model(
    reward: &RewardSection,
    section: &ServedSection,
    counters: &Arc<ServedCounters>,
) -> Result<Arc<dyn RewardModel>, JobError> {
    let names = reward_names(reward)?;
    let endpoint = section.endpoint("reward.served")?;
    Ok(match (reward.kind, section.protocol) {
        (RewardKind::Judge, _) => {
            let (text, _) = served_text(&reward.model, &reward.chat_template)?;
            Arc::new(ServedJudge::connect(
                endpoint,
                text,
                helpsteer2_attributes(),
                section.top_logprobs,
                counters.clone(),
            )?)
        }
        (_, ProtocolSetting::Classify) => Arc::new(ServedReward::new(
            endpoint,
            RewardProtocol::Classify,
            names,
            counters.clone(),
        )?),
        (_, ProtocolSetting::Openrlhf) => {
            let (text, _) = served_text(&reward.model, &reward.chat_template)?;
            Arc::new(ServedReward::new(
                endpoint,
                RewardProtocol::OpenRlhf(Box::new(text)),
                names,
                counters.clone(),
            )?)
        }
    })
}

/// Loads the reward model a reward section describes (`policy` reuses `policy`).
/// `device` is `job.device`; `reward.tensor_parallel` ranks start there; a served one counts its
/// requests in `counters`.
pub fn load_reward_model(
    reward: &RewardSection,
    policy: Option<&Arc<dyn LanguageModel>>,
    device: Device,
    counters: &Arc<ServedCounters>,
) -> Result<Arc<dyn RewardModel>, JobError> {
    if let Some(section) = &reward.served {
        return served_reward_model(reward, section, counters);
    }
    let names = reward_names(reward)?;
    let ranks = reward.tensor_parallel;
    if ranks == 0 {
        return Err(invalid("reward.tensor_parallel must be at least 1"));
    }
    if ranks > 1 && reward.kind == RewardKind::Judge {
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
                    reward.kind.as_str(),
                    path.display()
                )))
            }
        };
        Ok(match reward.chat_template.as_str() {
            "model" => model,
            name => model.with_chat_template(&named_template(name)?)?,
        })
    };
    Ok(match reward.kind {
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
            names,
            reward.max_tokens,
            reward.overlength.into(),
        )?),
        RewardKind::NextTokenLogit => Arc::new(NextTokenLogitReward::new(
            checkpoint(HeadKind::CausalLm)?,
            reward.logit_index,
            reward.max_tokens,
            reward.overlength.into(),
        )?),
    })
}

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

/// Loads the models a config names: the policy, and the reward model (the judge may be the
/// policy model itself).
pub fn load_models(config: &Common) -> Result<Models, JobError> {
    let served = Arc::new(ServedCounters::default());
    let device = devices(config.job.device, 1)?.remove(0);
    // `reward.model = "policy"` names the policy's model when either is served: loaded here to
    // judge, or read for its tokenizer and template.
    let mut reward_section = config.reward.clone();
    if reward_section.model == "policy"
        && (config.policy.served.is_some() || reward_section.served.is_some())
    {
        reward_section.model = config.policy.model.clone();
    }
    let (mut policy, reward) = match &config.policy.served {
        Some(section) => {
            let (text, context) = served_text(&config.policy.model, &config.policy.chat_template)?;
            let endpoint = section.endpoint("policy.served")?;
            if endpoint.server == steerflow_models::served::ServerKind::OpenAi
                && config.sampling.top_k != 0
            {
                return Err(invalid(format!(
                    "sampling.top_k = {}: OpenAI's API has no top-k; set it to 0, or name the server (policy.served.server = \"llama-cpp\", \"vllm\" or \"sglang\")",
                    config.sampling.top_k
                )));
            }
            let policy = Policy::served(ServedPolicy::connect(
                endpoint,
                text,
                context,
                served.clone(),
            )?);
            let reward = load_reward_model(&reward_section, None, config.job.device, &served)?;
            (policy, reward)
        }
        None => {
            let model = load_language_model(&config.policy.model, &device)?;
            // A judge that is the policy model rates with the model's own template.
            let reward =
                load_reward_model(&reward_section, Some(&model), config.job.device, &served)?;
            let policy_model = with_chat_template(model, &config.policy.chat_template)?;
            (Policy::new(policy_model), reward)
        }
    };
    if !config.sampling.steer.is_empty() {
        let label = steer_label(&config.sampling.steer)
            .map_err(|e| invalid(format!("sampling.steer: {e}")))?;
        policy = policy
            .with_steer(&label)
            .map_err(|e| invalid(format!("sampling.steer: {e}")))?;
    }
    Ok(Models {
        policy,
        reward,
        served,
    })
}

/// The reward model of a scoring-only job (`reward.model = "policy"` means `policy.model`), and
/// the counts of its requests when it is served.
pub fn scoring_reward_model(
    config: &Common,
) -> Result<(Arc<dyn RewardModel>, Arc<ServedCounters>), JobError> {
    let mut reward_section = config.reward.clone();
    if reward_section.model == "policy" {
        reward_section.model = config.policy.model.clone();
    }
    let counters = Arc::new(ServedCounters::default());
    let model = load_reward_model(&reward_section, None, config.job.device, &counters)?;
    Ok((model, counters))
}
