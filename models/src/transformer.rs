//! The pre-norm decoder shared by the Llama, Mistral, Qwen2, Qwen3 and Gemma 2 families: token
//! embedding, `num_hidden_layers` × (RMSNorm → GQA self-attention with rotary embeddings →
//! residual → RMSNorm → gated MLP → residual), final RMSNorm, with what the families change
//! switched on by the `DecoderSpec` (Qwen3's query/key norms, Gemma 2's norms after attention
//! and the MLP, scaled embeddings, soft-capping). Written for batches of sequences of
//! different lengths: every token carries its own position, and an attention mask combines
//! causality, padding and a sliding window (every layer's for Mistral, some layers' for
//! Gemma 2). A KV cache lets a session grow one
//! token at a time and be forked.
//!
//! It follows transformers' `modeling_llama.py` (eager attention), with which the tests compare
//! it; checkpoint names are the Hugging Face ones (`model.layers.N.self_attn.q_proj`...).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};
use std::sync::Arc;
use steerflow_kernels::communicator::Communicator;

pub use crate::decoder_spec::{Activation, DecoderSpec, Shard};
use crate::hf::config::Rope;
use crate::layers::{norm, Attention, Mlp, Norm};

struct Layer {
    input_norm: Norm,
    attention: Attention,
    /// Gemma 2's norm on the attention's output.
    post_attention_norm: Option<Norm>,
    /// The MLP's input norm.
    mlp_norm: Norm,
    mlp: Mlp,
    /// Gemma 2's norm on the MLP's output.
    post_mlp_norm: Option<Norm>,
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
    norm: Norm,
    cos: Tensor,
    sin: Tensor,
    /// The sliding layers' own (cos, sin) when they have their own rope (Gemma 3).
    sliding_rotary: Option<(Tensor, Tensor)>,
    spec: DecoderSpec,
    device: Device,
    /// The other ranks, when this decoder is one shard of a tensor-parallel model.
    comm: Option<Arc<dyn Communicator>>,
    /// What the weights and activations are computed in (f32, or the checkpoint's bf16 on GPUs).
    dtype: DType,
}

/// (cos, sin) for every position, `[max_positions, head_dim / 2]`: angles in f32 as
/// transformers computes them, position (f32) × inv_freq (f32).
fn rotary_tables(
    rope: &Rope,
    spec: &DecoderSpec,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let inv_freq: Vec<f32> = rope
        .inv_freq(spec.head_dim)
        .into_iter()
        .map(|f| f as f32)
        .collect();
    let half = inv_freq.len();
    let mut angles = Vec::with_capacity(spec.max_positions * half);
    for p in 0..spec.max_positions {
        angles.extend(inv_freq.iter().map(|f| p as f32 * f));
    }
    let angles = Tensor::from_vec(angles, (spec.max_positions, half), device)?;
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
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
            let h = spec.hidden_size;
            let sandwich = |name: &str| -> Result<Option<Norm>> {
                match spec.sandwich_norms {
                    true => Ok(Some(norm(&spec, h, lvb.pp(name))?)),
                    false => Ok(None),
                }
            };
            let mlp_norm = match spec.sandwich_norms {
                true => "pre_feedforward_layernorm",
                false => "post_attention_layernorm",
            };
            layers.push(Layer {
                input_norm: norm(&spec, h, lvb.pp("input_layernorm"))?,
                attention: Attention::new(&spec, shard, lvb.pp("self_attn"))?,
                post_attention_norm: sandwich("post_attention_layernorm")?,
                mlp_norm: norm(&spec, h, lvb.pp(mlp_norm))?,
                mlp: Mlp::new(&spec, shard, lvb.pp("mlp"))?,
                post_mlp_norm: sandwich("post_feedforward_layernorm")?,
            });
        }
        let norm = norm(&spec, spec.hidden_size, model.pp("norm"))?;
        let dtype = vb.dtype();
        let (cos, sin) = rotary_tables(&spec.rope, &spec, &device, dtype)?;
        let sliding_rotary = match &spec.sliding_rope {
            Some(rope) => Some(rotary_tables(rope, &spec, &device, dtype)?),
            None => None,
        };
        Ok(Self {
            embed,
            layers,
            norm,
            cos,
            sin,
            sliding_rotary,
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
        // Mistral slides every layer's window; Gemma 2 only some layers'.
        let window = self.spec.sliding_window;
        let (mask, sliding_mask) = match (&self.spec.sliding_layers, window) {
            (Some(_), Some(w)) => (
                self.attention_mask(&all_keys, past, t, None)?,
                Some(self.attention_mask(&all_keys, past, t, Some(w))?),
            ),
            (Some(_), None) => (self.attention_mask(&all_keys, past, t, None)?, None),
            (None, w) => (self.attention_mask(&all_keys, past, t, w)?, None),
        };
        let flat = positions.flatten_all()?;
        let half = self.cos.dims()[1];
        let at = |table: &Tensor| table.index_select(&flat, 0)?.reshape((b, t, half));
        let (cos, sin) = (at(&self.cos)?, at(&self.sin)?);
        let sliding_rotary = match &self.sliding_rotary {
            Some((c, s)) => Some((at(c)?, at(s)?)),
            None => None,
        };
        if cache.layers.len() != self.layers.len() {
            cache.layers = vec![None; self.layers.len()];
        }
        let mut x = self.embed.forward(ids)?;
        if self.spec.scale_embeddings {
            // transformers multiplies by √hidden cast to the hidden states' dtype.
            x = (x * f64::from((self.spec.hidden_size as f64).sqrt() as f32))?;
        }
        let then = |n: &Option<Norm>, h: Tensor| match n {
            Some(n) => n.forward(&h),
            None => Ok(h),
        };
        for (i, (layer, layer_cache)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate()
        {
            let slides = self.spec.sliding_layers.as_ref().is_some_and(|l| l[i]);
            let layer_mask = match (&sliding_mask, slides) {
                (Some(s), true) => s,
                _ => &mask,
            };
            let (cos, sin) = match (&sliding_rotary, slides) {
                (Some((c, s)), true) => (c, s),
                _ => (&cos, &sin),
            };
            let residual = x.clone();
            let h = layer.attention.forward(
                &layer.input_norm.forward(&x)?,
                cos,
                sin,
                layer_mask,
                layer_cache,
                self.comm.as_ref(),
            )?;
            let x1 = (then(&layer.post_attention_norm, h)? + residual)?;
            let h = layer
                .mlp
                .forward(&layer.mlp_norm.forward(&x1)?, self.comm.as_ref())?;
            x = (then(&layer.post_mlp_norm, h)? + x1)?;
        }
        cache.key_mask = Some(all_keys);
        self.norm.forward(&x)
    }

    /// Additive mask `[batch, 1, t, past + t]`: 0 where query i (at index past + i) may attend key
    /// j, the most negative f32 elsewhere (as transformers does, so fully masked rows stay finite).
    fn attention_mask(
        &self,
        key_mask: &Tensor,
        past: usize,
        t: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (b, s) = key_mask.dims2()?;
        let keys: Vec<u8> = key_mask.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
        let window = window.unwrap_or(usize::MAX);
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
