//! Models from the standard Hugging Face layout: `config.json`, single or sharded safetensors
//! (f32, f16 or bf16; computed in f32 on the CPU), `tokenizer.json`, and the chat template from
//! `tokenizer_config.json` or `chat_template.jinja`.
//!
//! One [`HfModel`] is a family's decoder (`llama.rs`, `mistral.rs`, `qwen2.rs`) plus a head read
//! at the last token (`head.rs`): the causal-LM head (`lm_head`, or the tied embedding) or a
//! sequence-classification head (`score`, `[num_labels, hidden]`, or INF-ORM's two-layer MLP).

pub mod config;
pub mod head;
pub mod hub;

use crate::chat_template::ChatTemplate;
use crate::tensor_parallel::TensorParallelDecoder;
use crate::text::TextCodec;
use crate::transformer::{last_token_states, right_padded, Decoder, KvCache};
use crate::{LanguageModel, LmSession, ModelError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use config::HfConfig;
use head::Head;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which head to put on the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// Next-token logits over the vocabulary.
    CausalLm,
    /// `num_labels` scores from the `score` layer.
    SequenceClassification,
}

/// The decoder of a model: whole, or split over tensor-parallel ranks.
enum Backbone {
    Whole(Arc<Decoder>),
    Parallel(Arc<TensorParallelDecoder>),
}

impl Backbone {
    fn device(&self) -> &Device {
        match self {
            Backbone::Whole(d) => d.device(),
            Backbone::Parallel(d) => d.device(),
        }
    }

    /// Hidden states of a padded batch, from an empty cache.
    fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
    ) -> Result<Tensor, ModelError> {
        match self {
            Backbone::Whole(d) => {
                Ok(d.forward(ids, positions, key_mask, &mut KvCache::default())?)
            }
            Backbone::Parallel(d) => d.forward(ids, positions, key_mask),
        }
    }
}

/// A decoder and its head, loaded from a checkpoint directory.
pub struct HfModel {
    id: String,
    config: HfConfig,
    decoder: Backbone,
    dtype: DType,
    head: Head,
    kind: HeadKind,
    text: Option<TextCodec>,
    /// Largest batch, in padded tokens (batch size × longest sequence).
    pub batch_tokens: usize,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(dir: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: dir.to_path_buf(),
        message: message.into(),
    }
}

/// The safetensors files of a checkpoint: the shards named by `model.safetensors.index.json`,
/// or `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(io_error(&index))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(&index, e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(&index, "no weight_map"))?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(Value::as_str)
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(bad(dir, "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are read)"))
}

/// The chat template: `chat_template.jinja`, else `chat_template` in `tokenizer_config.json`
/// (a string, or a list of named templates of which `default` is taken).
fn chat_template_source(
    dir: &Path,
    tokenizer_config: &Value,
) -> Result<Option<String>, ModelError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return Ok(Some(
            std::fs::read_to_string(&jinja).map_err(io_error(&jinja))?,
        ));
    }
    Ok(match tokenizer_config.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(items)) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    })
}

fn special_token(tokenizer_config: &Value, key: &str) -> String {
    match tokenizer_config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// Tokenizer, template and end-of-sequence ids, when the checkpoint has a `tokenizer.json`.
fn load_text(dir: &Path, config: &HfConfig) -> Result<Option<TextCodec>, ModelError> {
    let tokenizer_file = dir.join("tokenizer.json");
    if !tokenizer_file.exists() {
        return Ok(None);
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_file)
        .map_err(|e| bad(&tokenizer_file, format!("cannot read the tokenizer: {e}")))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tokenizer_config: Value = if tc_path.exists() {
        let text = std::fs::read_to_string(&tc_path).map_err(io_error(&tc_path))?;
        serde_json::from_str(&text).map_err(|e| bad(&tc_path, e.to_string()))?
    } else {
        Value::Null
    };
    let bos = special_token(&tokenizer_config, "bos_token");
    let eos = special_token(&tokenizer_config, "eos_token");
    let source = chat_template_source(dir, &tokenizer_config)?.ok_or_else(|| {
        bad(
            dir,
            "no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)",
        )
    })?;
    let template = ChatTemplate::new(&source, &bos, &eos)?;
    let mut eos_ids = HfConfig::token_ids(&config.eos_token_id);
    let generation_config = dir.join("generation_config.json");
    if generation_config.exists() {
        let text =
            std::fs::read_to_string(&generation_config).map_err(io_error(&generation_config))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| bad(&generation_config, e.to_string()))?;
        eos_ids.extend(HfConfig::token_ids(&json.get("eos_token_id").cloned()));
    }
    eos_ids.extend(tokenizer.token_to_id(&eos));
    eos_ids.sort_unstable();
    eos_ids.dedup();
    Ok(Some(TextCodec::new(tokenizer, template, eos_ids)))
}

/// The checkpoint's text side and context length (`max_position_embeddings`), read without
/// loading a weight (a served model's local tokenizer and template).
pub fn text_codec_of_checkpoint(dir: &Path) -> Result<(TextCodec, usize), ModelError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let config: HfConfig = serde_json::from_str(&text)
        .map_err(|e| bad(&config_path, format!("not a usable config: {e}")))?;
    let codec = load_text(dir, &config)?.ok_or_else(|| bad(dir, "no tokenizer.json"))?;
    Ok((codec, config.max_position_embeddings.unwrap_or(usize::MAX)))
}

impl HfModel {
    /// Loads the checkpoint in `dir` with the given head.
    pub fn load(dir: &Path, kind: HeadKind, device: &Device) -> Result<Self, ModelError> {
        Self::load_on(dir, kind, std::slice::from_ref(device), None)
    }

    /// Loads the checkpoint on `devices` (one, or tensor-parallel ranks) computing in `dtype`;
    /// `load` and `load_parallel` choose the checkpoint's bf16 on GPUs and f32 elsewhere.
    pub fn load_with_dtype(
        dir: &Path,
        kind: HeadKind,
        devices: &[Device],
        dtype: DType,
    ) -> Result<Self, ModelError> {
        if devices.is_empty() {
            return Err(bad(dir, "no device to load on"));
        }
        Self::load_on(dir, kind, devices, Some(dtype))
    }

    /// Loads the checkpoint with its decoder split over `devices.len()` tensor-parallel ranks
    /// (CPU threads, or GPUs over NCCL), the head on the first device. Reward scoring only:
    /// such a model cannot generate.
    pub fn load_parallel(
        dir: &Path,
        kind: HeadKind,
        devices: &[Device],
    ) -> Result<Self, ModelError> {
        if devices.is_empty() {
            return Err(bad(dir, "tensor parallelism needs at least one device"));
        }
        Self::load_on(dir, kind, devices, None)
    }

    fn load_on(
        dir: &Path,
        kind: HeadKind,
        devices: &[Device],
        dtype: Option<DType>,
    ) -> Result<Self, ModelError> {
        let device = &devices[0];
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let config: HfConfig = serde_json::from_str(&text)
            .map_err(|e| bad(&config_path, format!("not a usable config: {e}")))?;
        let raw: Value =
            serde_json::from_str(&text).map_err(|e| bad(&config_path, format!("not JSON: {e}")))?;
        // Gemma checks its own activation (GeGLU).
        if !["gemma2", "gemma3_text"].contains(&config.model_type.as_str())
            && config.hidden_act.as_deref().is_some_and(|a| a != "silu")
        {
            return Err(bad(
                &config_path,
                format!(
                    "hidden_act `{:?}` is not supported (silu)",
                    config.hidden_act
                ),
            ));
        }
        let spec = match config.model_type.as_str() {
            "llama" => crate::llama::decoder_spec(&config),
            "mistral" => crate::mistral::decoder_spec(&config),
            "qwen2" => {
                crate::qwen2::decoder_spec(&config, config.use_sliding_window.unwrap_or(false))
            }
            "qwen3" => crate::qwen3::decoder_spec(&config),
            "gemma2" => crate::gemma::gemma2_spec(&config, &raw),
            "gemma3_text" => crate::gemma::gemma3_spec(&config, &raw),
            "gemma3" => Err("model_type `gemma3` (Gemma3ForConditionalGeneration, the multimodal checkpoints) is not supported; text-only Gemma 3 checkpoints (`gemma3_text`, such as gemma-3-1b) are".into()),
            other => Err(format!(
                "model_type `{other}` is not supported (llama, mistral, qwen2, qwen3, gemma2, gemma3_text){}",
                if raw.get("auto_map").is_some() {
                    "; this checkpoint names custom code (`auto_map`, trust_remote_code), which steerflow does not run"
                } else {
                    ""
                }
            )),
        }
        .map_err(|m| bad(&config_path, m))?;
        let final_softcap = spec.final_softcap;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for file in weight_files(dir)? {
            let loaded = candle_core::safetensors::load(&file, &Device::Cpu)
                .map_err(|e| bad(&file, format!("cannot read safetensors: {e}")))?;
            tensors.extend(loaded);
        }
        let head = match kind {
            HeadKind::CausalLm => match tensors.get("lm_head.weight") {
                Some(w) => Some(Head::Linear(w.to_dtype(DType::F32)?.to_device(device)?)),
                None if config.tie_word_embeddings != Some(false) => None,
                None => return Err(bad(dir, "the checkpoint has no `lm_head.weight`")),
            },
            HeadKind::SequenceClassification => match Head::score_from(&tensors, device) {
                Ok(Some(head)) => Some(head),
                Ok(None) => return Err(bad(dir, "the checkpoint has no `score.weight`")),
                Err(message) => return Err(bad(dir, message)),
            },
        };
        // bf16 checkpoints compute in bf16 on GPUs (half the memory, tensor cores); the CPU
        // computes in f32 unless told otherwise.
        let saved = tensors
            .get("model.embed_tokens.weight")
            .map(Tensor::dtype)
            .unwrap_or(DType::F32);
        let dtype = dtype.unwrap_or(match saved {
            DType::BF16 if devices.iter().all(Device::is_cuda) => DType::BF16,
            _ => DType::F32,
        });
        let decoder = if devices.len() == 1 {
            let vb = VarBuilder::from_tensors(tensors, dtype, device);
            let decoder = Decoder::load(spec, vb)
                .map_err(|e| bad(dir, format!("weights do not match config.json: {e}")))?;
            Backbone::Whole(Arc::new(decoder))
        } else {
            let decoder = TensorParallelDecoder::load(spec, tensors, devices, dtype)
                .map_err(|e| bad(dir, format!("cannot split the model: {e}")))?;
            Backbone::Parallel(Arc::new(decoder))
        };
        let head = match (head, &decoder) {
            (Some(h), _) => h,
            (None, Backbone::Whole(d)) => Head::Linear(d.embedding_weight().to_dtype(DType::F32)?),
            (None, Backbone::Parallel(d)) => {
                Head::Linear(d.embedding_weight().to_dtype(DType::F32)?)
            }
        };
        // Gemma 2 caps the causal LM's logits (not a classifier's scores).
        let head = match (kind, final_softcap) {
            (HeadKind::CausalLm, Some(cap)) => Head::Capped {
                head: Box::new(head),
                cap,
            },
            _ => head,
        };
        let text = load_text(dir, &config)?;
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            id,
            config,
            decoder,
            dtype,
            head,
            kind,
            text,
            batch_tokens: 8192,
        })
    }

    /// The checkpoint's directory name.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn config(&self) -> &HfConfig {
        &self.config
    }

    pub fn head_kind(&self) -> HeadKind {
        self.kind
    }

    /// Number of head outputs (vocabulary size or labels).
    pub fn outputs(&self) -> usize {
        self.head.outputs()
    }

    /// The text side, or an error naming what is missing.
    pub fn text_codec(&self) -> Result<&TextCodec, ModelError> {
        self.text.as_ref().ok_or_else(|| ModelError::Checkpoint {
            path: PathBuf::from(&self.id),
            message: "the checkpoint has no tokenizer.json".into(),
        })
    }

    /// Replaces the chat template (`reward.chat_template`), keeping the tokenizer.
    pub fn with_chat_template(mut self, source: &str) -> Result<Self, ModelError> {
        let text = self.text_codec()?.with_template(source)?;
        self.text = Some(text);
        Ok(self)
    }

    /// Final hidden states of one sequence, `[t, hidden]`.
    pub fn hidden_states(&self, ids: &[u32]) -> Result<Tensor, ModelError> {
        let (ids, positions, mask) = right_padded(&[ids], 0, self.decoder.device())?;
        Ok(self
            .decoder
            .forward(&ids, &positions, &mask)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
    }

    /// The whole decoder, which generation needs: a tensor-parallel model has none.
    fn whole_decoder(&self) -> Result<&Arc<Decoder>, ModelError> {
        match &self.decoder {
            Backbone::Whole(decoder) => Ok(decoder),
            Backbone::Parallel(_) => Err(ModelError::Checkpoint {
                path: PathBuf::from(&self.id),
                message: "a tensor-parallel model scores but cannot generate (tensor_parallel applies to reward models)".into(),
            }),
        }
    }

    /// An empty generation session (KV cache at position 0) on this model's head; a
    /// tensor-parallel model has none.
    pub fn start_session(&self) -> Result<Box<dyn LmSession>, ModelError> {
        Ok(Box::new(HfSession {
            decoder: self.whole_decoder()?.clone(),
            head: self.head.clone(),
            cache: KvCache::default(),
        }))
    }

    /// What the decoder computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Tensor-parallel ranks the decoder runs on (1 when whole).
    pub fn tensor_parallel(&self) -> usize {
        match &self.decoder {
            Backbone::Whole(_) => 1,
            Backbone::Parallel(d) => d.world_size(),
        }
    }

    /// The head read at the last token of each sequence. Sequences are run in batches of
    /// similar lengths (right-padded, padding masked), and results come back in input order.
    pub fn last_token_outputs(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        if let Some(empty) = seqs.iter().position(|s| s.is_empty()) {
            return Err(ModelError::Judge(format!("sequence {empty} is empty")));
        }
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let mut out = vec![Vec::new(); seqs.len()];
        for batch in crate::batching::length_batches(&lengths, self.batch_tokens) {
            let members: Vec<&[u32]> = batch.iter().map(|&i| seqs[i]).collect();
            let (ids, positions, mask) = right_padded(&members, 0, self.decoder.device())?;
            let hidden = self.decoder.forward(&ids, &positions, &mask)?;
            let batch_lengths: Vec<usize> = batch.iter().map(|&i| lengths[i]).collect();
            let last = last_token_states(&hidden, &batch_lengths)?;
            let values: Vec<Vec<f32>> = self.head.apply(&last.to_dtype(DType::F32)?)?.to_vec2()?;
            for (slot, v) in batch.iter().zip(values) {
                out[*slot] = v;
            }
        }
        Ok(out)
    }
}

/// A causal LM with its tokenizer: what the policy and the judge run.
pub struct HfCausalLm {
    model: HfModel,
    decoder: Arc<Decoder>,
    text: TextCodec,
}

impl HfModel {
    /// Checks that this is a causal LM with a tokenizer and chat template.
    pub fn into_language_model(mut self) -> Result<HfCausalLm, ModelError> {
        if self.kind != HeadKind::CausalLm {
            return Err(ModelError::Checkpoint {
                path: PathBuf::from(&self.id),
                message: "a sequence-classification checkpoint cannot generate text".into(),
            });
        }
        let decoder = self.whole_decoder()?.clone();
        self.text_codec()?;
        let text = self
            .text
            .take()
            .ok_or_else(|| ModelError::Judge("tokenizer vanished".into()))?;
        Ok(HfCausalLm {
            model: self,
            decoder,
            text,
        })
    }
}

impl LanguageModel for HfCausalLm {
    fn id(&self) -> &str {
        &self.model.id
    }
    fn text(&self) -> &TextCodec {
        &self.text
    }
    fn context_length(&self) -> usize {
        self.decoder.spec().max_positions
    }
    fn start(&self) -> Box<dyn LmSession> {
        Box::new(HfSession {
            decoder: self.decoder.clone(),
            head: self.model.head.clone(),
            cache: KvCache::default(),
        })
    }
}

#[derive(Clone)]
struct HfSession {
    decoder: Arc<Decoder>,
    head: Head,
    cache: KvCache,
}

impl LmSession for HfSession {
    fn extend(&mut self, tokens: &[u32]) -> Result<Tensor, ModelError> {
        let device = self.decoder.device();
        let past = self.cache.len();
        let positions: Vec<u32> = (past..past + tokens.len()).map(|p| p as u32).collect();
        let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let positions = Tensor::new(positions.as_slice(), device)?.unsqueeze(0)?;
        let mask = Tensor::ones((1, tokens.len()), DType::U8, device)?;
        let hidden = self
            .decoder
            .forward(&ids, &positions, &mask, &mut self.cache)?;
        let last = hidden.get(0)?.get(tokens.len() - 1)?.unsqueeze(0)?;
        Ok(self.head.apply(&last.to_dtype(DType::F32)?)?.squeeze(0)?)
    }
    fn position(&self) -> usize {
        self.cache.len()
    }
    fn fork(&self) -> Box<dyn LmSession> {
        Box::new(self.clone())
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
