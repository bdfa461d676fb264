//! Job configuration: TOML with every key known (unknown keys are errors), defaults that are the
//! HelpSteer2 iterative-DPO recipe, and `--set key=value` overrides applied before validation.
//! Documented in `docs/configuration.md`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use steerflow_models::engine::EngineLimits;

/// A whole job file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    pub job: JobSection,
    pub input: InputSection,
    pub policy: PolicySection,
    pub sampling: SamplingSection,
    pub reward: RewardSection,
    pub goodness: GoodnessSection,
    pub pairs: PairsSection,
    pub output: OutputSection,
    pub eval: EvalSection,
    pub annotate: AnnotateSection,
    pub filter: FilterSection,
    /// How to reach object storage (endpoint, region, `allow_http`, retries, further
    /// object_store options); credentials normally come from the standard environment variables.
    pub storage: steerflow_pipeline::storage::StorageOptions,
}

/// `filter-rank` rules.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSection {
    /// Keep rows whose score is at least this: `{ helpfulness = 3.0, goodness = 2.5 }`. Names are
    /// the reward model's attributes, `goodness` and `normalized_goodness`.
    pub min: std::collections::BTreeMap<String, f64>,
    /// Keep rows whose score is at most this.
    pub max: std::collections::BTreeMap<String, f64>,
    /// Keep the k best responses of each prompt (0 = no limit).
    pub top_k: usize,
    /// Keep rows whose goodness is at least this quantile of the run (0.5 = top half).
    pub quantile: Option<f64>,
}

/// `steerlm-annotate` settings.
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

/// `rm-eval` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// `rewardbench` (RewardBench's subset → category map) or a table `{ subset = "Category" }`.
    pub categories: toml::Value,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            categories: toml::Value::String("rewardbench".into()),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobSection {
    /// `iterative-dpo`, `rm-eval`, `steerlm-annotate`, `helpsteer2-pairs` or `filter-rank`.
    pub kind: String,
    pub seed: u64,
    /// Worker threads of the dataflow (`--workers` overrides).
    pub workers: usize,
    /// Written into the dataset README.
    pub description: String,
    /// Where the models run: `cpu`, `cuda` (GPU 0) or `cuda:N` (needs a `cuda` build,
    /// docs/gpu.md). A tensor-parallel reward model takes this GPU and the next ones.
    pub device: String,
}

impl Default for JobSection {
    fn default() -> Self {
        Self {
            kind: "iterative-dpo".into(),
            seed: 0,
            workers: 1,
            description: String::new(),
            device: "cpu".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputSection {
    /// A local path or URL of a jsonl or parquet file, or of a folder of them.
    pub path: String,
    /// `auto` (by extension), `jsonl` or `parquet`.
    pub format: String,
    /// How many bad records a run tolerates: an integer count, or a fraction below 1.
    pub max_rejects: toml::Value,
}

impl Default for InputSection {
    fn default() -> Self {
        Self {
            path: String::new(),
            format: "auto".into(),
            max_rejects: toml::Value::Integer(0),
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
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            model: "default".into(),
            chat_template: "model".into(),
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RewardSection {
    /// `judge` (an instruct model rates each attribute 0..4), `sequence-classification` (a
    /// `score` head at the last token) or `next-token-logit` (one logit of a causal LM).
    pub kind: String,
    /// `policy` (the policy model itself), `default`, a GGUF file, a checkpoint directory, or a
    /// hub id in the local Hugging Face cache.
    pub model: String,
    /// Names of the scores in order: `helpsteer2` (5), `nemo9` (9), `scalar` (`reward`), or a list.
    pub attributes: toml::Value,
    /// The logit read by `next-token-logit` (0 for Llama-3.1-Nemotron-70B-Reward-HF).
    pub logit_index: usize,
    /// Context limit; default: the model's `max_position_embeddings`.
    pub max_tokens: Option<usize>,
    /// A conversation longer than the context: `skip` (unscored, counted) or `drop-turns`
    /// (earliest turns dropped, response kept, counted).
    pub overlength: String,
    /// `model` (the model's own template), `nemo-steerlm-rm` (NeMo's SteerLM reward-model input,
    /// ending with `<extra_id_2>`), `nemo-steerlm`, or a path to a `.jinja` file.
    pub chat_template: String,
    /// Ranks the reward model's decoder is split over (tensor parallelism): threads on the CPU,
    /// GPUs over NCCL with `job.device = "cuda"`. Checkpoint reward models only.
    pub tensor_parallel: usize,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self {
            kind: "judge".into(),
            model: "policy".into(),
            attributes: toml::Value::String("helpsteer2".into()),
            logit_index: 0,
            max_tokens: None,
            overlength: "skip".into(),
            chat_template: "model".into(),
            tensor_parallel: 1,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GoodnessSection {
    /// `helpsteer2-paper`, `steerlm-rm-card`, or `custom` (then `weights` is used).
    pub preset: String,
    pub weights: BTreeMap<String, f64>,
    /// `run`, `per-prompt` or `reference`.
    pub normalization: String,
    pub reference_mean: Option<f64>,
    pub reference_std: Option<f64>,
}

impl Default for GoodnessSection {
    fn default() -> Self {
        Self {
            preset: "helpsteer2-paper".into(),
            weights: BTreeMap::new(),
            normalization: "run".into(),
            reference_mean: None,
            reference_std: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PairsSection {
    /// A prompt is kept only when best - worst > min_margin.
    pub min_margin: f64,
    /// `helpsteer2-pairs`: the attribute that decides chosen and rejected.
    pub by: String,
    /// `helpsteer2-pairs`: the attributes carried with each response (a preset or a list).
    pub attributes: toml::Value,
}

impl Default for PairsSection {
    fn default() -> Self {
        Self {
            min_margin: 0.0,
            by: "helpfulness".into(),
            attributes: toml::Value::String("helpsteer2".into()),
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
    pub formats: Vec<String>,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            path: String::new(),
            shards: 1,
            formats: vec!["conversational".into(), "standard".into(), "nemo".into()],
        }
    }
}

/// A problem with the configuration (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("--set {item}: {message}")]
    Override { item: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// Prefix of environment variables that set config keys: `STEERFLOW_SECTION__KEY=value`
/// (double underscore between section and key), e.g. `STEERFLOW_SAMPLING__MAX_NEW_TOKENS=64`.
pub const ENV_PREFIX: &str = "STEERFLOW_";

/// Config overrides (`section.key=value`) from environment variables, in name order. Variables
/// without a `__` (such as `STEERFLOW_CACHE_DIR`) are settings of the tool, not config keys.
pub fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            let (section, key) = rest.split_once("__")?;
            Some((
                format!("{}.{}", section.to_lowercase(), key.to_lowercase()),
                value,
            ))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Reads `path`, applies `overrides` (`section.key=value`, value in TOML syntax or a bare string)
/// and checks every key.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<JobConfig, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    parse_config(&text, &display, overrides)
}

/// As [`load_config`] on a string.
pub fn parse_config(
    text: &str,
    display: &str,
    overrides: &[String],
) -> Result<JobConfig, ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: display.into(),
            message: e.to_string(),
        })?;
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    let config: JobConfig =
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: display.into(),
                message: e.to_string(),
            })?;
    Ok(config)
}

fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let fail = |message: &str| ConfigError::Override {
        item: item.into(),
        message: message.into(),
    };
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| fail("expected key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(fail("empty key"));
    }
    // A TOML value if it parses as one (numbers, booleans, quoted strings, arrays), else a string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, sections) = parts.split_last().ok_or_else(|| fail("empty key"))?;
    let mut current = table;
    for section in sections {
        current = current
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| fail(&format!("`{section}` is not a table")))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper_recipe() {
        let c = parse_config("", "t.toml", &[]).unwrap();
        assert_eq!(c.sampling.samples_per_prompt, 10);
        assert_eq!(c.sampling.temperature, 0.7);
        assert_eq!(c.sampling.top_p, 0.9);
        assert_eq!(c.goodness.preset, "helpsteer2-paper");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = parse_config("[sampling]\ntemprature = 0.5\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("temprature") && err.contains("t.toml"),
            "{err}"
        );
        let err = parse_config("", "t.toml", &["sampling.nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn environment_variables_become_overrides_and_flags_win() {
        let vars = [
            (
                "STEERFLOW_SAMPLING__MAX_NEW_TOKENS".to_string(),
                "64".to_string(),
            ),
            ("STEERFLOW_CACHE_DIR".to_string(), "/tmp/x".to_string()),
            ("STEERFLOW_OUTPUT__PATH".to_string(), "out/env".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let env = env_overrides(vars);
        assert_eq!(
            env,
            vec![
                "output.path=out/env".to_string(),
                "sampling.max_new_tokens=64".to_string()
            ]
        );
        // File < environment < flags.
        let mut overrides = env.clone();
        overrides.push("output.path=out/flag".into());
        let c = parse_config(
            "[sampling]\nmax_new_tokens = 8\n[output]\npath = \"out/file\"\n",
            "t.toml",
            &overrides,
        )
        .unwrap();
        assert_eq!(c.sampling.max_new_tokens, 64);
        assert_eq!(c.output.path, "out/flag");
        let bad = env_overrides([(
            "STEERFLOW_SAMPLING__TEMPRATURE".to_string(),
            "1".to_string(),
        )]);
        assert!(parse_config("", "t.toml", &bad)
            .unwrap_err()
            .to_string()
            .contains("temprature"));
    }

    #[test]
    fn overrides_replace_values_and_types_are_checked() {
        let c = parse_config(
            "[sampling]\ntemperature = 0.7\n",
            "t.toml",
            &[
                "sampling.temperature=0.2".into(),
                "output.path=out/x".into(),
                "sampling.stop=[\"\\n\\n\"]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.sampling.temperature, 0.2);
        assert_eq!(c.output.path, "out/x");
        assert_eq!(c.sampling.stop, vec!["\n\n".to_string()]);
        assert!(parse_config("", "t.toml", &["sampling.temperature=hot".into()]).is_err());
        assert!(parse_config("", "t.toml", &["novalue".into()]).is_err());
    }
}
