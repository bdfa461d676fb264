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
use candle_nn::{embedding, rms_norm, Embedding, Linear, RmsNorm, VarBuilder};
use std::sync::Arc;
use steerflow_kernels::communicator::Communicator;

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
    /// RMSNorm over each head's queries and keys before the rotary embedding (Qwen3:
    /// `q_norm`, `k_norm`, one `[head_dim]` weight shared by the heads).
    pub qk_norm: bool,
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
            qk_norm: false,
        })
    }
}

/// Which part of the weights a rank holds: Megatron-style tensor parallelism, with the attention
/// heads and the MLP's intermediate columns split over the ranks (column-parallel q, k, v, gate
/// and up; row-parallel o and down, whose partial sums are all-reduced). With fewer key/value
/// heads than ranks, each kv head is replicated on the ranks whose query heads use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// Checks that `spec` splits over `world` ranks.
    pub fn check(spec: &DecoderSpec, world: usize) -> std::result::Result<(), String> {
        let kv_ok =
            spec.num_kv_heads.is_multiple_of(world) || world.is_multiple_of(spec.num_kv_heads);
        if world == 0
            || !spec.num_heads.is_multiple_of(world)
            || !kv_ok
            || !spec.intermediate_size.is_multiple_of(world)
        {
            return Err(format!(
                "tensor_parallel = {world} does not divide the model: {} attention heads, {} key/value heads, intermediate size {} (heads and intermediate size must be multiples of it; kv heads a multiple or a divisor)",
                spec.num_heads, spec.num_kv_heads, spec.intermediate_size
            ));
        }
        Ok(())
    }

    /// This rank's query heads: (first, count).
    fn heads(&self, spec: &DecoderSpec) -> (usize, usize) {
        let count = spec.num_heads / self.world;
        (self.rank * count, count)
    }

    /// This rank's key/value heads: (first, count).
    fn kv_heads(&self, spec: &DecoderSpec) -> (usize, usize) {
        if spec.num_kv_heads.is_multiple_of(self.world) {
            let count = spec.num_kv_heads / self.world;
            (self.rank * count, count)
        } else {
            (self.rank * spec.num_kv_heads / self.world, 1)
        }
    }

    /// This rank's intermediate columns: (first, count).
    fn intermediate(&self, spec: &DecoderSpec) -> (usize, usize) {
        let count = spec.intermediate_size / self.world;
        (self.rank * count, count)
    }
}

/// A linear layer holding rows `[first, first + count)` of the output features (column-parallel;
/// the whole layer when unsharded).
fn column_linear(
    in_dim: usize,
    out_dim: usize,
    (first, count): (usize, usize),
    bias: bool,
    vb: VarBuilder,
) -> Result<Linear> {
    let weight = vb
        .get((out_dim, in_dim), "weight")?
        .narrow(0, first, count)?;
    let bias = match bias {
        true => Some(vb.get(out_dim, "bias")?.narrow(0, first, count)?),
        false => None,
    };
    Ok(Linear::new(weight.contiguous()?, bias))
}

/// A layer holding columns `[first, first + count)` of the input features (row-parallel): its
/// output is a partial sum, all-reduced before the bias is added once.
struct RowLinear {
    weight: Linear,
    bias: Option<Tensor>,
}

impl RowLinear {
    fn new(
        in_dim: usize,
        out_dim: usize,
        (first, count): (usize, usize),
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb
            .get((out_dim, in_dim), "weight")?
            .narrow(1, first, count)?;
        let bias = match bias {
            true => Some(vb.get(out_dim, "bias")?),
            false => None,
        };
        Ok(Self {
            weight: Linear::new(weight.contiguous()?, None),
            bias,
        })
    }

    fn forward(&self, x: &Tensor, comm: Option<&Arc<dyn Communicator>>) -> Result<Tensor> {
        let partial = self.weight.forward(x)?;
        let summed = match comm {
            Some(comm) => comm
                .all_reduce_sum(&partial)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            None => partial,
        };
        match &self.bias {
            Some(b) => summed.broadcast_add(b),
            None => Ok(summed),
        }
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: RowLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Per-head query and key norms (Qwen3).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: RowLinear,
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
    /// The other ranks, when this decoder is one shard of a tensor-parallel model.
    comm: Option<Arc<dyn Communicator>>,
    /// What the weights and activations are computed in (f32, or the checkpoint's bf16 on GPUs).
    dtype: DType,
}

impl Attention {
    fn new(spec: &DecoderSpec, shard: Shard, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (spec.hidden_size, spec.head_dim);
        let (q_first, q_count) = shard.heads(spec);
        let (kv_first, kv_count) = shard.kv_heads(spec);
        let q_rows = (q_first * hd, q_count * hd);
        let kv_rows = (kv_first * hd, kv_count * hd);
        Ok(Self {
            q: column_linear(
                h,
                spec.num_heads * hd,
                q_rows,
                spec.qkv_bias,
                vb.pp("q_proj"),
            )?,
            k: column_linear(
                h,
                spec.num_kv_heads * hd,
                kv_rows,
                spec.qkv_bias,
                vb.pp("k_proj"),
            )?,
            v: column_linear(
                h,
                spec.num_kv_heads * hd,
                kv_rows,
                spec.qkv_bias,
                vb.pp("v_proj"),
            )?,
            o: RowLinear::new(spec.num_heads * hd, h, q_rows, spec.o_bias, vb.pp("o_proj"))?,
            heads: q_count,
            kv_heads: kv_count,
            head_dim: hd,
            qk_norm: if spec.qk_norm {
                Some((
                    candle_nn::rms_norm(hd, spec.rms_norm_eps, vb.pp("q_norm"))?,
                    candle_nn::rms_norm(hd, spec.rms_norm_eps, vb.pp("k_norm"))?,
                ))
            } else {
                None
            },
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        comm: Option<&Arc<dyn Communicator>>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize, norm: Option<&RmsNorm>| {
            let y = y.reshape((b, t, heads, self.head_dim))?;
            let y = match norm {
                Some(n) => n.forward(&y)?,
                None => y,
            };
            y.transpose(1, 2)?.contiguous()
        };
        let (q_norm, k_norm) = match &self.qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let q = split(self.q.forward(x)?, self.heads, q_norm)?;
        let k = split(self.k.forward(x)?, self.kv_heads, k_norm)?;
        let v = split(self.v.forward(x)?, self.kv_heads, None)?;
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
        // In f32 whatever the model's dtype, as transformers' eager attention does.
        let probs =
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(q.dtype())?;
        let y = probs.matmul(&v)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&y, comm)
    }
}

impl Mlp {
    fn new(spec: &DecoderSpec, shard: Shard, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (spec.hidden_size, spec.intermediate_size);
        let columns = shard.intermediate(spec);
        Ok(Self {
            gate: column_linear(h, i, columns, spec.mlp_bias, vb.pp("gate_proj"))?,
            up: column_linear(h, i, columns, spec.mlp_bias, vb.pp("up_proj"))?,
            down: RowLinear::new(i, h, columns, spec.mlp_bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor, comm: Option<&Arc<dyn Communicator>>) -> Result<Tensor> {
        let gated = (candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?;
        self.down.forward(&gated, comm)
    }
}

impl Decoder {
    /// Loads `model.*` weights from `vb` (the checkpoint root).
    pub fn load(spec: DecoderSpec, vb: VarBuilder) -> Result<Self> {
        Self::load_shard(spec, vb, None)
    }

    /// Loads this rank's shard of the weights; `comm` connects it to the other ranks (none: the
    /// whole model). Every rank must then run the same `forward` calls in the same order.
    pub fn load_shard(
        spec: DecoderSpec,
        vb: VarBuilder,
        comm: Option<Arc<dyn Communicator>>,
    ) -> Result<Self> {
        let shard = match &comm {
            Some(c) => Shard {
                rank: c.rank(),
                world: c.world_size(),
            },
            None => Shard::WHOLE,
        };
        Shard::check(&spec, shard.world).map_err(candle_core::Error::Msg)?;
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
                attention: Attention::new(&spec, shard, lvb.pp("self_attn"))?,
                post_norm: rms_norm(
                    spec.hidden_size,
                    spec.rms_norm_eps,
                    lvb.pp("post_attention_layernorm"),
                )?,
                mlp: Mlp::new(&spec, shard, lvb.pp("mlp"))?,
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
        let dtype = vb.dtype();
        Ok(Self {
            embed,
            layers,
            norm,
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
            dtype,
            spec,
            device,
            comm,
        })
    }

    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
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
                self.comm.as_ref(),
            )?;
            let x1 = (h + residual)?;
            let h = layer
                .mlp
                .forward(&layer.post_norm.forward(&x1)?, self.comm.as_ref())?;
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
        // The most negative finite value of the compute dtype (as transformers masks), so fully
        // masked rows stay finite.
        let blocked = match self.dtype {
            DType::BF16 => -3.389_531_4e38,
            DType::F16 => -65_504.0,
            _ => f32::MIN,
        };
        let mut mask = vec![0f32; b * t * s];
        for batch in 0..b {
            for i in 0..t {
                let q = past + i;
                for j in 0..s {
                    let visible = j <= q && q - j < window && keys[batch * s + j] != 0;
                    if !visible {
                        mask[(batch * t + i) * s + j] = blocked;
                    }
                }
            }
        }
        Tensor::from_vec(mask, (b, 1, t, s), &self.device)?.to_dtype(self.dtype)
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
