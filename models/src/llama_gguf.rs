//! The llama family (Llama 2/3, SmolLM2, Mistral-style GQA) from GGUF files, on candle's
//! quantized llama (`candle_transformers::models::quantized_llama`).
//!
//! candle keeps the KV cache inside the weights struct and clones it cheaply (tensors are
//! reference-counted), so a session is a clone of the weights: forking a prefilled session shares
//! the prompt's KV cache with every sample drawn from it.

use crate::chat_template::ChatTemplate;
use crate::gguf_tokenizer::{metadata_token_id, tokenizer_error, tokenizer_from_gguf};
use crate::text::TextCodec;
use crate::{LanguageModel, LmSession, ModelError};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use std::path::Path;

/// End-of-turn tokens that also end a generation when the vocabulary has them as specials.
const END_OF_TURN_TOKENS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"];

/// Quantized formats without a SIMD dot product in candle's CPU kernels (they fall back to
/// scalar code, about 10x slower than Q8_0 with AVX2).
const SLOW_ON_CPU: [GgmlDType; 2] = [GgmlDType::Q4_1, GgmlDType::Q5_1];

/// Rewrites the tensors in `SLOW_ON_CPU` formats as Q8_0, which candle runs with AVX2 and which
/// holds more precision than the source; other tensors are kept as they are. Returns the new
/// GGUF content and its bytes.
fn requantize(
    content: gguf_file::Content,
    file: &mut std::fs::File,
) -> candle_core::Result<(gguf_file::Content, std::io::Cursor<Vec<u8>>)> {
    let cpu = Device::Cpu;
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(file, name, &cpu)?;
        let tensor = if SLOW_ON_CPU.contains(&tensor.dtype()) {
            QTensor::quantize(&tensor.dequantize(&cpu)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.clone(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut bytes = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut bytes, &metadata, &tensor_refs)?;
    bytes.set_position(0);
    let rewritten = gguf_file::Content::read(&mut bytes)?;
    Ok((rewritten, bytes))
}

/// A GGUF llama-architecture model, loaded once and shared by every worker of a process.
pub struct GgufLlama {
    id: String,
    weights: ModelWeights,
    text: TextCodec,
    context_length: usize,
    device: Device,
}

impl GgufLlama {
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let gguf_error = |message: String| ModelError::Gguf {
            path: path.to_path_buf(),
            message,
        };
        let mut file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| gguf_error(e.to_string()))?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            return Err(gguf_error(format!(
                "architecture `{arch}` is not supported by the GGUF loader (llama only)"
            )));
        }
        let context_length = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map(|n| n as usize)
            .unwrap_or(MAX_SEQ_LEN)
            .min(MAX_SEQ_LEN);
        let tokenizer = tokenizer_from_gguf(&content).map_err(|m| tokenizer_error(path, m))?;
        let token_text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let bos = token_text(metadata_token_id(&content, "tokenizer.ggml.bos_token_id"));
        let eos_id = metadata_token_id(&content, "tokenizer.ggml.eos_token_id");
        let eos = token_text(eos_id);
        let template_source = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| {
                gguf_error("no chat template (`tokenizer.chat_template`) in the metadata".into())
            })?;
        let template = ChatTemplate::new(&template_source, &bos, &eos)?;
        let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
        for token in END_OF_TURN_TOKENS {
            if let Some(id) = tokenizer.token_to_id(token) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        // candle's own switch: every matmul weight is dequantized to f32 at load, so there is
        // nothing to gain from requantizing first (and precision to lose).
        let dequantize_all =
            std::env::var("CANDLE_DEQUANTIZE_ALL").is_ok_and(|v| !v.is_empty() && v != "0");
        let slow = content
            .tensor_infos
            .values()
            .any(|t| SLOW_ON_CPU.contains(&t.ggml_dtype));
        let weights = if slow && device.is_cpu() && !dequantize_all {
            let (content, mut bytes) =
                requantize(content, &mut file).map_err(|e| gguf_error(e.to_string()))?;
            ModelWeights::from_gguf(content, &mut bytes, device)
        } else {
            ModelWeights::from_gguf(content, &mut file, device)
        }
        .map_err(|e| gguf_error(e.to_string()))?;
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            id,
            weights,
            text: TextCodec::new(tokenizer, template, eos_ids),
            context_length,
            device: device.clone(),
        })
    }
}

impl LanguageModel for GgufLlama {
    fn id(&self) -> &str {
        &self.id
    }
    fn text(&self) -> &TextCodec {
        &self.text
    }
    fn context_length(&self) -> usize {
        self.context_length
    }
    fn start(&self) -> Box<dyn LmSession> {
        let mut weights = self.weights.clone();
        weights.clear_kv_cache();
        Box::new(GgufLlamaSession {
            weights,
            position: 0,
            device: self.device.clone(),
        })
    }
}

#[derive(Clone)]
struct GgufLlamaSession {
    weights: ModelWeights,
    position: usize,
    device: Device,
}

impl LmSession for GgufLlamaSession {
    fn extend(&mut self, tokens: &[u32]) -> Result<Tensor, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::Tensor(candle_core::Error::Msg(
                "extend with no tokens".into(),
            )));
        }
        if self.position + tokens.len() > MAX_SEQ_LEN {
            return Err(ModelError::ContextOverflow {
                tokens: self.position + tokens.len(),
                limit: MAX_SEQ_LEN,
                what: "model sequence".into(),
            });
        }
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&input, self.position)?;
        self.position += tokens.len();
        Ok(logits.squeeze(0)?.to_dtype(candle_core::DType::F32)?)
    }

    fn position(&self) -> usize {
        self.position
    }

    fn fork(&self) -> Box<dyn LmSession> {
        Box::new(self.clone())
    }
}
