//! The sections every job kind shares (`[job]`, `[input]`, `[policy]`, `[sampling]`, `[reward]`,
//! `[goodness]`, `[pairs]`, `[output]`, `[storage]`), typed: values that are one of a set are
//! enums parsed by serde, so an unknown value is an error that names the file and key. Defaults
//! are the HelpSteer2 iterative-DPO recipe. A job kind's own section lives in its file under
//! `kinds/`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use steerflow_models::engine::EngineLimits;
use steerflow_pipeline::formats::ExportFormat;

/// The shared sections of a job file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Common {
    pub job: JobSection,
    pub input: InputSection,
    pub policy: PolicySection,
    pub sampling: SamplingSection,
    pub reward: RewardSection,
    pub goodness: GoodnessSection,
    pub pairs: PairsSection,
    pub output: OutputSection,
    /// `[dedup]`: the `dedup` job's settings; in an iterative-DPO job, its presence leaves
    /// duplicate and contaminated prompts out before sampling.
    pub dedup: Option<super::dedup::DedupSection>,
    /// How to reach object storage (endpoint, region, `allow_http`, retries, further
    /// object_store options); credentials normally come from the standard environment variables.
    pub storage: steerflow_pipeline::storage::StorageOptions,
}

/// Where the models run: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    #[default]
    Cpu,
    /// GPU N (a tensor-parallel reward model takes N and the next ones).
    Cuda(usize),
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        value.parse()
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("device `{other}` is not known (cpu, cuda, cuda:N)")),
        }
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobSection {
    /// What the job makes (`kinds/`): iterative-dpo, helpsteer2-pairs, filter-rank, rm-eval,
    /// steerlm-annotate.
    pub kind: crate::job_kind::JobKind,
    pub seed: u64,
    /// Worker threads of the dataflow (`--workers` overrides).
    pub workers: usize,
    /// Written into the dataset README.
    pub description: String,
    /// Where the models run (needs a `cuda` build for GPUs, docs/gpu.md).
    pub device: Device,
}

impl Default for JobSection {
    fn default() -> Self {
        Self {
            kind: crate::job_kind::JobKind::IterativeDpo,
            seed: 0,
            workers: 1,
            description: String::new(),
            device: Device::Cpu,
        }
    }
}

/// `input.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormatSetting {
    /// By each file's extension.
    #[default]
    Auto,
    Jsonl,
    Parquet,
}

impl InputFormatSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

/// `input.max_rejects`: a count, or a fraction of the records below 1.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MaxRejects {
    Count(u64),
    Fraction(f64),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputSection {
    /// A local path or URL of a jsonl or parquet file, or of a folder of them.
    pub path: String,
    pub format: InputFormatSetting,
    /// How many bad records a run tolerates: an integer count, or a fraction below 1.
    pub max_rejects: MaxRejects,
}

impl Default for InputSection {
    fn default() -> Self {
        Self {
            path: String::new(),
            format: InputFormatSetting::Auto,
            max_rejects: MaxRejects::Count(0),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// `default` (SmolLM2-135M-Instruct, installed on first use), a GGUF file, a checkpoint
    /// directory, or a hub id in the local Hugging Face cache.
    pub model: String,
    /// `model` (the model's own template), `nemo-steerlm` (NeMo's SteerLM format, for models
    /// trained on it), or a path to a `.jinja` file.
    pub chat_template: String,
    /// The policy behind a server: `model` is then read only for its tokenizer and chat
    /// template (docs/served.md).
    pub served: Option<super::served::ServedSection>,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            model: "default".into(),
            chat_template: "model".into(),
            served: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingSection {
    pub samples_per_prompt: u32,
    pub temperature: f64,
    pub top_p: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
    /// SteerLM 2.0: target attributes the policy is prompted with (`steerlm2-paper`, or a label
    /// such as `helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2`); empty = off.
    pub steer: String,
    /// The generation engine's batch: at most this many sequences per step...
    pub max_batch_sequences: usize,
    /// ...and at most this many KV-cache tokens reserved at once (each prompt reserves
    /// samples × (prompt + max_new_tokens) while it runs). Neither changes the output.
    pub max_batch_tokens: usize,
}

impl Default for SamplingSection {
    /// HelpSteer2 paper, section 4.3: 10 samples at temperature 0.7, top-p 0.9.
    fn default() -> Self {
        Self {
            samples_per_prompt: 10,
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
            max_new_tokens: 1024,
            stop: vec![],
            steer: String::new(),
            max_batch_sequences: EngineLimits::default().max_sequences,
            max_batch_tokens: EngineLimits::default().max_tokens,
        }
    }
}

/// `reward.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardKind {
    /// An instruct model rates each attribute 0..4.
    Judge,
    /// A `score` head at the last token.
    SequenceClassification,
    /// One logit of a causal LM.
    NextTokenLogit,
}

impl RewardKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Judge => "judge",
            Self::SequenceClassification => "sequence-classification",
            Self::NextTokenLogit => "next-token-logit",
        }
    }
}

impl std::str::FromStr for RewardKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
            .map_err(|e| format!("reward kind: {e}"))
    }
}

/// `reward.overlength`: a conversation longer than the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverlengthSetting {
    /// Unscored, counted.
    Skip,
    /// Earliest turns dropped, response kept, counted.
    DropTurns,
}

impl From<OverlengthSetting> for steerflow_models::reward::Overlength {
    fn from(o: OverlengthSetting) -> Self {
        match o {
            OverlengthSetting::Skip => Self::Skip,
            OverlengthSetting::DropTurns => Self::DropTurns,
        }
    }
}

/// Score names: a preset or an explicit list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Attributes {
    Preset(AttributePreset),
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttributePreset {
    /// The five HelpSteer2 attributes.
    Helpsteer2,
    /// NeMo's nine SteerLM attributes.
    Nemo9,
    /// One score named `reward`.
    Scalar,
}

impl Attributes {
    pub fn names(&self) -> Vec<String> {
        use steerflow_operators::attributes::{HELPSTEER2, NEMO_NINE};
        match self {
            Attributes::Preset(AttributePreset::Helpsteer2) => {
                HELPSTEER2.iter().map(|a| a.to_string()).collect()
            }
            Attributes::Preset(AttributePreset::Nemo9) => {
                NEMO_NINE.iter().map(|a| a.to_string()).collect()
            }
            Attributes::Preset(AttributePreset::Scalar) => vec!["reward".to_string()],
            Attributes::List(names) => names.clone(),
        }
    }

    /// `a,b,c` as a list, else a preset name (the `--attributes` flag).
    pub fn parse_flag(value: &str) -> Result<Self, String> {
        if value.contains(',') {
            return Ok(Attributes::List(
                value.split(',').map(|a| a.trim().to_string()).collect(),
            ));
        }
        AttributePreset::deserialize(
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value),
        )
        .map(Attributes::Preset)
        .map_err(|e| format!("attributes: {e} (or a comma-separated list)"))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSection {
    pub kind: RewardKind,
    /// `policy` (the policy model itself), `default`, a GGUF file, a checkpoint directory, or a
    /// hub id in the local Hugging Face cache.
    pub model: String,
    /// Names of the scores in order: `helpsteer2` (5), `nemo9` (9), `scalar` (`reward`), or a list.
    pub attributes: Attributes,
    /// The logit read by `next-token-logit` (0 for Llama-3.1-Nemotron-70B-Reward-HF).
    pub logit_index: usize,
    /// Context limit; default: the model's `max_position_embeddings`.
    pub max_tokens: Option<usize>,
    pub overlength: OverlengthSetting,
    /// `model` (the model's own template), `nemo-steerlm-rm` (NeMo's SteerLM reward-model input,
    /// ending with `<extra_id_2>`), `nemo-steerlm`, or a path to a `.jinja` file.
    pub chat_template: String,
    /// Ranks the reward model's decoder is split over (tensor parallelism): threads on the CPU,
    /// GPUs over NCCL with `job.device = "cuda"`. Checkpoint reward models only.
    pub tensor_parallel: usize,
    /// The reward model behind a server: the judge over `/completions` log-probabilities, or a
    /// reward server (`classify`, `openrlhf`); docs/served.md.
    pub served: Option<super::served::ServedSection>,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self {
            kind: RewardKind::Judge,
            model: "policy".into(),
            attributes: Attributes::Preset(AttributePreset::Helpsteer2),
            logit_index: 0,
            max_tokens: None,
            overlength: OverlengthSetting::Skip,
            chat_template: "model".into(),
            tensor_parallel: 1,
            served: None,
        }
    }
}

/// `goodness.preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GoodnessPreset {
    /// HelpSteer2 paper: 0.65 helpfulness + 0.8 correctness + 0.45 coherence.
    Helpsteer2Paper,
    /// The Nemotron-4-340B-Reward card's weights over the nine NeMo attributes.
    SteerlmRmCard,
    /// The `reward` score itself.
    Scalar,
    /// `goodness.weights`.
    Custom,
}

impl GoodnessPreset {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Helpsteer2Paper => "helpsteer2-paper",
            Self::SteerlmRmCard => "steerlm-rm-card",
            Self::Scalar => "scalar",
            Self::Custom => "custom",
        }
    }
}

/// `goodness.normalization`: where the mean and std of normalised goodness come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalizationSetting {
    /// All scored responses of the run.
    Run,
    /// Each prompt's own responses.
    PerPrompt,
    /// `reference_mean` and `reference_std` (the paper's HelpSteer2 reference set).
    Reference,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GoodnessSection {
    pub preset: GoodnessPreset,
    pub weights: BTreeMap<String, f64>,
    pub normalization: NormalizationSetting,
    pub reference_mean: Option<f64>,
    pub reference_std: Option<f64>,
}

impl Default for GoodnessSection {
    fn default() -> Self {
        Self {
            preset: GoodnessPreset::Helpsteer2Paper,
            weights: BTreeMap::new(),
            normalization: NormalizationSetting::Run,
            reference_mean: None,
            reference_std: None,
        }
    }
}

/// `pairs.strategy`: which of a prompt's eligible pairs become rows (`operators::pairs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairStrategySetting {
    /// The largest-margin pair: best against worst (HelpSteer2).
    #[default]
    BestVsWorst,
    /// The best against a seeded random response.
    BestVsRandom,
    /// A seeded random pair.
    RandomPair,
    /// The best against the `k`-th best.
    BestVsKth,
    /// Every pair above the margin, largest first, up to `k` per prompt.
    AllPairs,
}

impl PairStrategySetting {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BestVsWorst => "best-vs-worst",
            Self::BestVsRandom => "best-vs-random",
            Self::RandomPair => "random-pair",
            Self::BestVsKth => "best-vs-kth",
            Self::AllPairs => "all-pairs",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PairsSection {
    /// `iterative-dpo`: how pairs are taken from a prompt's responses.
    pub strategy: PairStrategySetting,
    /// `best-vs-kth`: the rank of the rejected response (2 = runner-up); `all-pairs`: the most
    /// pairs per prompt.
    pub k: Option<u32>,
    /// A pair needs chosen - rejected > min_margin (in goodness less the length penalty).
    pub min_margin: f64,
    /// `iterative-dpo`: goodness points taken off per response token before ranking.
    pub length_penalty: f64,
    /// `iterative-dpo`: the most tokens by which chosen and rejected may differ in length.
    pub max_length_difference: Option<u32>,
    /// `iterative-dpo`: near-identical responses are not paired (word 5-gram Jaccard similarity
    /// at or above this).
    pub max_similarity: Option<f64>,
    /// `helpsteer2-pairs`: the attribute that decides chosen and rejected.
    pub by: String,
    /// `helpsteer2-pairs`: the attributes carried with each response (a preset or a list).
    pub attributes: Attributes,
}

impl Default for PairsSection {
    fn default() -> Self {
        Self {
            strategy: PairStrategySetting::BestVsWorst,
            k: None,
            min_margin: 0.0,
            length_penalty: 0.0,
            max_length_difference: None,
            max_similarity: None,
            by: "helpfulness".into(),
            attributes: Attributes::Preset(AttributePreset::Helpsteer2),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    /// A local directory or URL.
    pub path: String,
    /// Number of parquet files.
    pub shards: usize,
    /// Forms the pairs are written in: `conversational` (TRL message lists, `data/`), `standard`
    /// (TRL strings, `standard/`), `nemo` (NeMo-Aligner DPO jsonl, `nemo/`).
    pub formats: Vec<ExportFormat>,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            path: String::new(),
            shards: 1,
            formats: vec![
                ExportFormat::Conversational,
                ExportFormat::Standard,
                ExportFormat::Nemo,
            ],
        }
    }
}
