//! Models from GGUF files: the `llama` (Llama 2/3, SmolLM2, Mistral-style GQA), `qwen2`,
//! `qwen3` and `gemma2` architectures (what differs between them: `arch.rs`), with a forward
//! pass of our own over a ragged batch (`forward.rs`) whose linear layers are `qlinear.rs`'s
//! (`weights.rs`).
//!
//! It computes what `candle_transformers::models::quantized_llama` computes for `llama` and
//! what llama.cpp computes for the others (the tests compare them); a KV cache is a list of
//! reference-counted buffers per block (`kv.rs`), so forking a prefilled session shares the
//! prompt's cache with every sample drawn from it until the sample appends to it.

mod arch;
mod forward;
mod kv;
mod weights;

use crate::gguf_tokenizer::text_codec_from_gguf;
use crate::qlinear::CpuMatmul;
use crate::text::TextCodec;
use crate::{LanguageModel, LmSession, ModelError};
pub use arch::GgufArch;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::sync::Arc;
use weights::Weights;

/// The longest sequence run, as candle's quantized llama bounds it.
pub const MAX_SEQ_LEN: usize = 4096;

/// Quantized formats without a SIMD dot product in candle's CPU kernels (they fall back to
/// scalar code, about 10x slower than Q8_0 with AVX2).
const SLOW_ON_CPU: [GgmlDType; 2] = [GgmlDType::Q4_1, GgmlDType::Q5_1];

/// Whether a tensor of `dtype` is rewritten as Q8_0 for `kernel`: a `SLOW_ON_CPU` format that
/// the kernel does not run as stored (steerflow's int8 kernel runs Q4_1 and Q5_1 as they are).
fn slow_on(kernel: CpuMatmul, dtype: GgmlDType) -> bool {
    let native = kernel != CpuMatmul::Candle && crate::qlinear::int8_kernel_runs(dtype);
    SLOW_ON_CPU.contains(&dtype) && !native
}

/// Rewrites the tensors in `SLOW_ON_CPU` formats as Q8_0, which candle runs with AVX2 and which
/// holds more precision than the source; other tensors are kept as they are. Returns the new
/// GGUF content and its bytes.
pub fn requantize(
    content: gguf_file::Content,
    file: &mut std::fs::File,
) -> candle_core::Result<(gguf_file::Content, std::io::Cursor<Vec<u8>>)> {
    requantize_for(CpuMatmul::Candle, content, file)
}

/// [`requantize`], of the tensors that `kernel` does not run as they are stored.
fn requantize_for(
    kernel: CpuMatmul,
    content: gguf_file::Content,
    file: &mut std::fs::File,
) -> candle_core::Result<(gguf_file::Content, std::io::Cursor<Vec<u8>>)> {
    let cpu = Device::Cpu;
    let mut tensors = Vec::with_capacity(content.tensor_infos.len());
    for name in content.tensor_infos.keys() {
        let tensor = content.tensor(file, name, &cpu)?;
        let tensor = if slow_on(kernel, tensor.dtype()) {
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

/// One sequence's keys and values per block.
#[derive(Clone, Default)]
struct KvCache {
    blocks: Vec<Option<kv::LayerKv>>,
    position: usize,
}

/// A model from a GGUF file, loaded once and shared by every worker of a process.
pub struct GgufModel {
    id: String,
    weights: Arc<Weights>,
    text: TextCodec,
    context_length: usize,
}

impl GgufModel {
    /// Loads `path` with the CPU matrix kernel the environment chooses ([`CpuMatmul::from_env`]).
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::load_with(path, device, CpuMatmul::from_env())
    }

    /// Loads `path` with the Q8_0 matrix products of the CPU on `kernel`.
    pub fn load_with(path: &Path, device: &Device, kernel: CpuMatmul) -> Result<Self, ModelError> {
        let gguf_error = |message: String| ModelError::Gguf {
            path: path.to_path_buf(),
            message,
        };
        let mut file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| gguf_error(e.to_string()))?;
        let name = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        let arch = GgufArch::parse(&name).ok_or_else(|| {
            gguf_error(format!(
                "architecture `{name}` is not supported by the GGUF loader ({})",
                GgufArch::SUPPORTED
            ))
        })?;
        let (text, context_length) = text_codec_from_gguf(&content, path, &name, MAX_SEQ_LEN)?;
        // candle's own switch: every matmul weight is dequantized to f32 at load, so there is
        // nothing to gain from requantizing first (and precision to lose).
        let dequantize_all = crate::qlinear::candle_dequantizes_all();
        let slow = content
            .tensor_infos
            .values()
            .any(|t| slow_on(kernel, t.ggml_dtype));
        let weights = if slow && device.is_cpu() && !dequantize_all {
            let (content, mut bytes) = requantize_for(kernel, content, &mut file)
                .map_err(|e| gguf_error(e.to_string()))?;
            Weights::from_gguf(&content, &mut bytes, device, (arch, context_length, kernel))
        } else {
            Weights::from_gguf(&content, &mut file, device, (arch, context_length, kernel))
        }
        .map_err(|e| gguf_error(e.to_string()))?;
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            id,
            weights: Arc::new(weights),
            text,
            context_length,
        })
    }
}

impl LanguageModel for GgufModel {
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
        Box::new(GgufModelSession {
            weights: self.weights.clone(),
            cache: KvCache {
                blocks: vec![None; self.weights.blocks.len()],
                position: 0,
            },
            context_length: self.context_length,
        })
    }

    fn extend_batch(
        &self,
        sessions: &mut [&mut dyn LmSession],
        chunks: &[&[u32]],
    ) -> Result<Tensor, ModelError> {
        let mut caches = Vec::with_capacity(sessions.len());
        for (session, chunk) in sessions.iter_mut().zip(chunks) {
            match session.as_any_mut().downcast_mut::<GgufModelSession>() {
                Some(s) if Arc::ptr_eq(&s.weights, &self.weights) => {
                    s.check_room(chunk.len())?;
                    caches.push(&mut s.cache);
                }
                _ => {
                    return Err(ModelError::Tensor(candle_core::Error::Msg(
                        "extend_batch: a session of another model".into(),
                    )))
                }
            }
        }
        Ok(self.weights.forward(&mut caches, chunks)?)
    }
}

#[derive(Clone)]
struct GgufModelSession {
    weights: Arc<Weights>,
    cache: KvCache,
    context_length: usize,
}

impl GgufModelSession {
    fn check_room(&self, tokens: usize) -> Result<(), ModelError> {
        if tokens == 0 {
            return Err(ModelError::Tensor(candle_core::Error::Msg(
                "extend with no tokens".into(),
            )));
        }
        if self.cache.position + tokens > self.context_length {
            return Err(ModelError::ContextOverflow {
                tokens: self.cache.position + tokens,
                limit: self.context_length,
                what: "model sequence".into(),
            });
        }
        Ok(())
    }
}

impl LmSession for GgufModelSession {
    fn extend(&mut self, tokens: &[u32]) -> Result<Tensor, ModelError> {
        self.check_room(tokens.len())?;
        let logits = self.weights.forward(&mut [&mut self.cache], &[tokens])?;
        Ok(logits.squeeze(0)?)
    }

    fn position(&self) -> usize {
        self.cache.position
    }

    fn fork(&self) -> Box<dyn LmSession> {
        Box::new(self.clone())
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
