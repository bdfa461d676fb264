//! The pre-norm decoder shared by the Llama, Mistral and Qwen2 families: token embedding,
//! `num_hidden_layers` × (RMSNorm → GQA self-attention with rotary embeddings → residual →
//! RMSNorm → SwiGLU MLP → residual), final RMSNorm. Written for batches of sequences of
//! different lengths: every token carries its own position, and an attention mask combines
//! causality, padding and (for Mistral) a sliding window. A KV cache lets a session grow one
//! token at a time and be forked.
//!
//! It follows transformers' `modeling_llama.py` (eager attention), with which the tests compare
//! it; checkpoint names are the Hugging Face ones (`model.layers.N.self_attn.q_proj`...).

use crate::hf::config::{HfConfig, Rope};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, linear_b, rms_norm, Embedding, Linear, RmsNorm, VarBuilder};

/// Shapes and options of a decoder, filled in by each family's file from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub rope: Rope,
    /// Bias on the q, k and v projections (Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Keys further back than this are masked (Mistral).
    pub sliding_window: Option<usize>,
}

impl DecoderSpec {
    /// The shapes every family reads the same way from `config.json`, with no biases and no
    /// sliding window; each family's file adjusts what differs.
    pub fn from_config(
        cfg: &HfConfig,
        default_rope_theta: f64,
        default_max_positions: usize,
    ) -> std::result::Result<Self, String> {
        Ok(Self {
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_layers: cfg.num_hidden_layers,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_kv_heads(),
            head_dim: cfg.head_dim(),
            rms_norm_eps: cfg.rms_norm_eps,
            vocab_size: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings.unwrap_or(default_max_positions),
            rope: cfg.rope(default_rope_theta)?,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            sliding_window: None,
        })
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Layer {
    input_norm: RmsNorm,
    attention: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

/// Cached keys and values of every layer, `[batch, kv_heads, positions, head_dim]`.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per-position key mask of what is cached (1 = real token), `[batch, positions]`.
    key_mask: Option<Tensor>,
}

impl KvCache {
    /// Positions held (0 when empty).
    pub fn len(&self) -> usize {
        self.key_mask.as_ref().map(|m| m.dims()[1]).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decoder, returning final hidden states for every position.
pub struct Decoder {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    cos: Tensor,
    sin: Tensor,
    spec: DecoderSpec,
    device: Device,
}

impl Attention {
    fn new(spec: &DecoderSpec, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (spec.hidden_size, spec.head_dim);
        Ok(Self {
            q: linear_b(h, spec.num_heads * hd, spec.qkv_bias, vb.pp("q_proj"))?,
            k: linear_b(h, spec.num_kv_heads * hd, spec.qkv_bias, vb.pp("k_proj"))?,
            v: linear_b(h, spec.num_kv_heads * hd, spec.qkv_bias, vb.pp("v_proj"))?,
            o: linear_b(spec.num_heads * hd, h, spec.o_bias, vb.pp("o_proj"))?,
            heads: spec.num_heads,
            kv_heads: spec.num_kv_heads,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize| {
            y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(x)?, self.heads)?;
        let k = split(self.k.forward(x)?, self.kv_heads)?;
        let v = split(self.v.forward(x)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let rep = self.heads / self.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        let scores = scores.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&y)
    }
}

impl Mlp {
    fn new(spec: &DecoderSpec, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (spec.hidden_size, spec.intermediate_size);
        Ok(Self {
            gate: linear_b(h, i, spec.mlp_bias, vb.pp("gate_proj"))?,
            up: linear_b(h, i, spec.mlp_bias, vb.pp("up_proj"))?,
            down: linear_b(i, h, spec.mlp_bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

impl Decoder {
    /// Loads `model.*` weights from `vb` (the checkpoint root).
    pub fn load(spec: DecoderSpec, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        let model = vb.pp("model");
        let embed = embedding(spec.vocab_size, spec.hidden_size, model.pp("embed_tokens"))?;
        let mut layers = Vec::with_capacity(spec.num_layers);
        for i in 0..spec.num_layers {
            let lvb = model.pp(format!("layers.{i}"));
            layers.push(Layer {
                input_norm: rms_norm(
                    spec.hidden_size,
                    spec.rms_norm_eps,
                    lvb.pp("input_layernorm"),
                )?,
                attention: Attention::new(&spec, lvb.pp("self_attn"))?,
                post_norm: rms_norm(
                    spec.hidden_size,
                    spec.rms_norm_eps,
                    lvb.pp("post_attention_layernorm"),
                )?,
                mlp: Mlp::new(&spec, lvb.pp("mlp"))?,
            });
        }
        let norm = rms_norm(spec.hidden_size, spec.rms_norm_eps, model.pp("norm"))?;
        // Angles in f32 as transformers computes them: position (f32) × inv_freq (f32).
        let inv_freq: Vec<f32> = spec
            .rope
            .inv_freq(spec.head_dim)
            .into_iter()
            .map(|f| f as f32)
            .collect();
        let half = inv_freq.len();
        let mut angles = Vec::with_capacity(spec.max_positions * half);
        for p in 0..spec.max_positions {
            angles.extend(inv_freq.iter().map(|f| p as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (spec.max_positions, half), &device)?;
        Ok(Self {
            embed,
            layers,
            norm,
            cos: angles.cos()?,
            sin: angles.sin()?,
            spec,
            device,
        })
    }

    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The input embedding matrix `[vocab, hidden]` (tied output heads use it).
    pub fn embedding_weight(&self) -> &Tensor {
        self.embed.embeddings()
    }

    /// Runs `ids` (`[batch, t]`) at `positions` (`[batch, t]`, u32) after what `cache` holds.
    /// `key_mask` (`[batch, t]`, 1 = real token, 0 = padding) masks padded keys; queries at padded
    /// positions compute garbage that callers ignore. Returns hidden states `[batch, t, hidden]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let max_position = positions.max_all()?.to_scalar::<u32>()? as usize;
        if max_position >= self.spec.max_positions {
            candle_core::bail!(
                "position {max_position} is beyond the model's {} positions",
                self.spec.max_positions
            );
        }
        let past = cache.len();
        let all_keys = match &cache.key_mask {
            Some(prev) => Tensor::cat(&[prev, key_mask], 1)?,
            None => key_mask.clone(),
        };
        let mask = self.attention_mask(&all_keys, past, t)?;
        let flat = positions.flatten_all()?;
        let half = self.cos.dims()[1];
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        let mut x = self.embed.forward(ids)?;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let residual = x.clone();
            let h = layer.attention.forward(
                &layer.input_norm.forward(&x)?,
                &cos,
                &sin,
                &mask,
                layer_cache,
            )?;
            let x1 = (h + residual)?;
            let h = layer.mlp.forward(&layer.post_norm.forward(&x1)?)?;
            x = (h + x1)?;
        }
        cache.key_mask = Some(all_keys);
        self.norm.forward(&x)
    }

    /// Additive mask `[batch, 1, t, past + t]`: 0 where query i (at index past + i) may attend key
    /// j, the most negative f32 elsewhere (as transformers does, so fully masked rows stay finite).
    fn attention_mask(&self, key_mask: &Tensor, past: usize, t: usize) -> Result<Tensor> {
        let (b, s) = key_mask.dims2()?;
        let keys: Vec<u8> = key_mask.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
        let window = self.spec.sliding_window.unwrap_or(usize::MAX);
        let mut mask = vec![0f32; b * t * s];
        for batch in 0..b {
            for i in 0..t {
                let q = past + i;
                for j in 0..s {
                    let visible = j <= q && q - j < window && keys[batch * s + j] != 0;
                    if !visible {
                        mask[(batch * t + i) * s + j] = f32::MIN;
                    }
                }
            }
        }
        Tensor::from_vec(mask, (b, 1, t, s), &self.device)
    }
}

/// Right-pads sequences into `[batch, longest]` ids, positions and key mask tensors.
pub fn right_padded(
    seqs: &[&[u32]],
    pad_id: u32,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let (mut ids, mut pos, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    for s in seqs {
        for k in 0..longest {
            ids.push(s.get(k).copied().unwrap_or(pad_id));
            pos.push(k.min(s.len().saturating_sub(1)) as u32);
            mask.push(u8::from(k < s.len()));
        }
    }
    let shape = (seqs.len(), longest);
    Ok((
        Tensor::from_vec(ids, shape, device)?,
        Tensor::from_vec(pos, shape, device)?,
        Tensor::from_vec(mask, shape, device)?,
    ))
}

/// Hidden state at each sequence's last real token: `[batch, hidden]` from `[batch, t, hidden]`.
pub fn last_token_states(hidden: &Tensor, lengths: &[usize]) -> Result<Tensor> {
    let rows = lengths
        .iter()
        .enumerate()
        .map(|(b, &len)| hidden.get(b)?.get(len.saturating_sub(1)))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

/// `x @ weight^T` for a head whose weight is `[out, hidden]`.
pub fn project(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(&weight.t()?)
}
