//! The llama family (Llama 2/3, SmolLM2, Mistral-style GQA) and the `qwen2` and `qwen3` GGUF
//! architectures (q/k/v biases; per-head query and key norms; the NEOX rotary layout) from GGUF
//! files: candle's quantized
//! matmuls and norms, with a forward pass of our own that runs a *ragged batch*: each sequence
//! brings its own chunk of tokens (a prompt to prefill or one token to decode) at its own
//! position, the projections and the MLP run once over all the batch's tokens, and attention
//! runs per sequence over that sequence's own KV cache. Every row is computed exactly as it would
//! be alone, so what else is in the batch never changes a sequence's logits.
//!
//! It computes what `candle_transformers::models::quantized_llama` computes (the tests compare
//! the two); a KV cache is a list of reference-counted tensors, so forking a prefilled session
//! shares the prompt's cache with every sample drawn from it.

use crate::gguf_tokenizer::text_codec_from_gguf;
use crate::qlinear::{CpuMatmul, FusedLinear, QLinear};
use crate::text::TextCodec;
use crate::{LanguageModel, LmSession, ModelError};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;
use std::path::Path;
use std::sync::Arc;

/// The longest sequence run, as candle's quantized llama bounds it.
pub const MAX_SEQ_LEN: usize = 4096;

/// Quantized formats without a SIMD dot product in candle's CPU kernels (they fall back to
/// scalar code, about 10x slower than Q8_0 with AVX2).
const SLOW_ON_CPU: [GgmlDType; 2] = [GgmlDType::Q4_1, GgmlDType::Q5_1];

/// Rewrites the tensors in `SLOW_ON_CPU` formats as Q8_0, which candle runs with AVX2 and which
/// holds more precision than the source; other tensors are kept as they are. Returns the new
/// GGUF content and its bytes.
pub fn requantize(
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

/// One transformer block's weights.
struct Block {
    attn_norm: RmsNorm,
    /// q, k and v as one product where the int8 kernel runs them.
    qkv: FusedLinear,
    /// q, k and v biases (`qwen2`).
    qkv_bias: Option<[Tensor; 3]>,
    /// Per-head query and key norms (`qwen3`).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    wo: QLinear,
    ffn_norm: RmsNorm,
    /// The feed-forward's gate and up as one product where the int8 kernel runs them.
    gate_up: FusedLinear,
    down: QLinear,
}

/// The decoder's weights and rotary tables, shared by every session.
struct Weights {
    embed: candle_nn::Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    output: QLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// NEOX rotary layout (pairs i and i + d/2) rather than llama's interleaved pairs.
    rope_neox: bool,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// One sequence's keys and values per block, `[1, kv_heads, positions, head_dim]`.
#[derive(Clone, Default)]
struct KvCache {
    blocks: Vec<Option<(Tensor, Tensor)>>,
    position: usize,
}

impl Weights {
    fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        (arch, context_length, kernel): (&str, usize, CpuMatmul),
    ) -> candle_core::Result<Self> {
        let meta = |key: &str| {
            let key = format!("{arch}.{key}");
            content
                .metadata
                .get(&key)
                .ok_or_else(|| candle_core::Error::Msg(format!("no `{key}` in the metadata")))
        };
        let heads = meta("attention.head_count")?.to_u32()? as usize;
        let kv_heads = meta("attention.head_count_kv")?.to_u32()? as usize;
        let block_count = meta("block_count")?.to_u32()? as usize;
        let hidden = meta("embedding_length")?.to_u32()? as usize;
        let head_dim = match meta("attention.key_length") {
            Ok(v) => v.to_u32()? as usize,
            Err(_) => hidden / heads,
        };
        let rope_dim = match meta("rope.dimension_count") {
            Ok(v) => v.to_u32()? as usize,
            Err(_) => head_dim,
        };
        let eps = meta("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let freq_base = meta("rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let embed_q = tensor("token_embd.weight")?;
        let embed = candle_nn::Embedding::new(embed_q.dequantize(device)?, hidden);
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let output = match tensor("output.weight") {
            Ok(t) => t,
            Err(_) => embed_q, // tied embeddings
        };
        let mut blocks = Vec::with_capacity(block_count);
        for i in 0..block_count {
            let vector = |t: QTensor| t.dequantize(device);
            let qkv_bias = match arch {
                "qwen2" => Some([
                    vector(tensor(&format!("blk.{i}.attn_q.bias"))?)?,
                    vector(tensor(&format!("blk.{i}.attn_k.bias"))?)?,
                    vector(tensor(&format!("blk.{i}.attn_v.bias"))?)?,
                ]),
                _ => None,
            };
            let qk_norm = match arch {
                "qwen3" => Some((
                    RmsNorm::from_qtensor(tensor(&format!("blk.{i}.attn_q_norm.weight"))?, eps)?,
                    RmsNorm::from_qtensor(tensor(&format!("blk.{i}.attn_k_norm.weight"))?, eps)?,
                )),
                _ => None,
            };
            let mut weight = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            let qkv = vec![weight("attn_q")?, weight("attn_k")?, weight("attn_v")?];
            let gate_up = vec![weight("ffn_gate")?, weight("ffn_up")?];
            let (wo, down) = (weight("attn_output")?, weight("ffn_down")?);
            blocks.push(Block {
                qkv_bias,
                qk_norm,
                qkv: FusedLinear::from_qtensors(qkv, kernel)?,
                wo: QLinear::from_qtensor(wo, kernel)?,
                gate_up: FusedLinear::from_qtensors(gate_up, kernel)?,
                down: QLinear::from_qtensor(down, kernel)?,
                attn_norm: RmsNorm::from_qtensor(
                    tensor(&format!("blk.{i}.attn_norm.weight"))?,
                    eps,
                )?,
                ffn_norm: RmsNorm::from_qtensor(tensor(&format!("blk.{i}.ffn_norm.weight"))?, eps)?,
            });
        }
        // Angles as candle computes them: position (f32) × 1 / base^(2i / d) (f32).
        let inv_freq: Vec<f32> = (0..rope_dim)
            .step_by(2)
            .map(|i| 1f32 / freq_base.powf(i as f32 / rope_dim as f32))
            .collect();
        let half = inv_freq.len();
        let angles: Vec<f32> = (0..context_length)
            .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = Tensor::from_vec(angles, (context_length, half), device)?;
        Ok(Self {
            embed,
            blocks,
            norm,
            output: QLinear::from_qtensor(output, kernel)?,
            heads,
            kv_heads,
            head_dim,
            // `llama` GGUFs interleave the rotary pairs (convert permutes q and k); qwen's don't.
            rope_neox: arch != "llama",
            cos: angles.cos()?,
            sin: angles.sin()?,
            device: device.clone(),
        })
    }

    /// Runs `chunks[i]` after what `caches[i]` holds, for every i in one batch, and returns the
    /// next-token logits after each chunk's last token, `[sequences, vocab]` (f32).
    fn forward(
        &self,
        caches: &mut [&mut KvCache],
        chunks: &[&[u32]],
    ) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = chunks.concat();
        let total = ids.len();
        let mut x = self
            .embed
            .forward(&Tensor::from_vec(ids, total, &self.device)?)?;
        for (b, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(&x)?;
            let [mut q, mut k, mut v]: [Tensor; 3] =
                block.qkv.forward(&h)?.try_into().map_err(|_| {
                    candle_core::Error::Msg("q, k and v: not three products".into())
                })?;
            if let Some([bq, bk, bv]) = &block.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let (q_norm, k_norm) = match &block.qk_norm {
                Some((q, k)) => (Some(q), Some(k)),
                None => (None, None),
            };
            let mut attended = Vec::with_capacity(chunks.len());
            let mut offset = 0;
            for (cache, chunk) in caches.iter_mut().zip(chunks) {
                let t = chunk.len();
                let rows = |m: &Tensor, heads: usize, norm: Option<&RmsNorm>| {
                    let m = m
                        .narrow(0, offset, t)?
                        .reshape((1, t, heads, self.head_dim))?;
                    let m = match norm {
                        Some(n) => n.forward(&m.contiguous()?)?,
                        None => m,
                    };
                    m.transpose(1, 2)?.contiguous()
                };
                let y = self.attend(
                    rows(&q, self.heads, q_norm)?,
                    rows(&k, self.kv_heads, k_norm)?,
                    rows(&v, self.kv_heads, None)?,
                    &mut cache.blocks[b],
                    cache.position,
                )?;
                attended.push(
                    y.transpose(1, 2)?
                        .reshape((t, self.heads * self.head_dim))?,
                );
                offset += t;
            }
            let x1 = (block.wo.forward(&Tensor::cat(&attended, 0)?)? + &x)?;
            let h = block.ffn_norm.forward(&x1)?;
            let [gate, up]: [Tensor; 2] = block
                .gate_up
                .forward(&h)?
                .try_into()
                .map_err(|_| candle_core::Error::Msg("gate and up: not two products".into()))?;
            let gated = (candle_nn::ops::silu(&gate)? * up)?;
            x = (block.down.forward(&gated)? + x1)?;
        }
        let mut last = Vec::with_capacity(chunks.len());
        let mut end = 0u32;
        for (cache, chunk) in caches.iter_mut().zip(chunks) {
            end += chunk.len() as u32;
            last.push(end - 1);
            cache.position += chunk.len();
        }
        let x = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        self.output
            .forward(&self.norm.forward(&x)?)?
            .to_dtype(DType::F32)
    }

    /// Causal attention of one sequence's new queries (`[1, heads, t, head_dim]`) over its cached
    /// keys and values followed by the new ones, which join the cache.
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        position: usize,
    ) -> candle_core::Result<Tensor> {
        let t = q.dim(2)?;
        let cos = self.cos.narrow(0, position, t)?;
        let sin = self.sin.narrow(0, position, t)?;
        let rope = |x: &Tensor| {
            if self.rope_neox {
                candle_nn::rotary_emb::rope(x, &cos, &sin)
            } else {
                candle_nn::rotary_emb::rope_i(x, &cos, &sin)
            }
        };
        let (q, k) = (rope(&q)?, rope(&k)?);
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let rep = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, rep)?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = if t > 1 {
            // Query i (at position + i) sees keys 0..=position + i.
            let keys = position + t;
            let blocked: Vec<u8> = (0..t)
                .flat_map(|i| (0..keys).map(move |j| u8::from(j > position + i)))
                .collect();
            let blocked =
                Tensor::from_vec(blocked, (t, keys), &self.device)?.broadcast_as(scores.shape())?;
            let neg_inf =
                Tensor::new(f32::NEG_INFINITY, &self.device)?.broadcast_as(scores.shape())?;
            blocked.where_cond(&neg_inf, &scores)?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(&v.contiguous()?)
    }
}

/// A GGUF llama-architecture model, loaded once and shared by every worker of a process.
pub struct GgufLlama {
    id: String,
    weights: Arc<Weights>,
    text: TextCodec,
    context_length: usize,
}

impl GgufLlama {
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
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if !["llama", "qwen2", "qwen3"].contains(&arch.as_str()) {
            return Err(gguf_error(format!(
                "architecture `{arch}` is not supported by the GGUF loader (llama, qwen2, qwen3)"
            )));
        }
        let (text, context_length) = text_codec_from_gguf(&content, path, &arch, MAX_SEQ_LEN)?;
        // candle's own switch: every matmul weight is dequantized to f32 at load, so there is
        // nothing to gain from requantizing first (and precision to lose).
        let dequantize_all = crate::qlinear::candle_dequantizes_all();
        let slow = content
            .tensor_infos
            .values()
            .any(|t| SLOW_ON_CPU.contains(&t.ggml_dtype));
        let weights = if slow && device.is_cpu() && !dequantize_all {
            let (content, mut bytes) =
                requantize(content, &mut file).map_err(|e| gguf_error(e.to_string()))?;
            Weights::from_gguf(
                &content,
                &mut bytes,
                device,
                (&arch, context_length, kernel),
            )
        } else {
            Weights::from_gguf(&content, &mut file, device, (&arch, context_length, kernel))
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
        Box::new(GgufLlamaSession {
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
            match session.as_any_mut().downcast_mut::<GgufLlamaSession>() {
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
struct GgufLlamaSession {
    weights: Arc<Weights>,
    cache: KvCache,
    context_length: usize,
}

impl GgufLlamaSession {
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

impl LmSession for GgufLlamaSession {
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
