//! The sublayers of the decoder: grouped-query self-attention with rotary embeddings, and the
//! gated MLP, both splittable over tensor-parallel ranks (column-parallel q, k, v, gate and up;
//! row-parallel o and down).

use crate::decoder_spec::{Activation, DecoderSpec, Shard};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, RmsNorm, VarBuilder};
use std::sync::Arc;
use steerflow_kernels::communicator::Communicator;

/// An RMSNorm: candle's, or Gemma's, whose stored weight is an offset from 1: transformers'
/// Gemma RMSNorm normalises in f32, multiplies by 1 + w in f32 and rounds once to the input's
/// dtype (in bf16, rounding 1 + w itself first moved the tiny Gemma 2's logits by 0.065 from
/// transformers' own bf16 ones).
pub(crate) enum Norm {
    Plain(RmsNorm),
    /// 1 + w in f32.
    Offset(RmsNorm),
}

impl Module for Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain(n) => n.forward(x),
            Self::Offset(n) if x.dtype() == DType::F32 => n.forward(x),
            Self::Offset(n) => n.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        }
    }
}

/// The RMSNorm over `size` features at `vb`, as `spec.norm_offset` says it is stored.
pub(crate) fn norm(spec: &DecoderSpec, size: usize, vb: VarBuilder) -> Result<Norm> {
    if !spec.norm_offset {
        return Ok(Norm::Plain(candle_nn::rms_norm(
            size,
            spec.rms_norm_eps,
            vb,
        )?));
    }
    let weight = (vb.get(size, "weight")?.to_dtype(DType::F32)? + 1.0)?;
    Ok(Norm::Offset(RmsNorm::new(weight, spec.rms_norm_eps)))
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

pub(crate) struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: RowLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Per-head query and key norms (Qwen3).
    qk_norm: Option<(Norm, Norm)>,
    /// What the scores are multiplied by.
    scale: f64,
    attn_softcap: Option<f64>,
}

pub(crate) struct Mlp {
    gate: Linear,
    up: Linear,
    down: RowLinear,
    activation: Activation,
}

impl Attention {
    pub(crate) fn new(spec: &DecoderSpec, shard: Shard, vb: VarBuilder) -> Result<Self> {
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
                    norm(spec, hd, vb.pp("q_norm"))?,
                    norm(spec, hd, vb.pp("k_norm"))?,
                ))
            } else {
                None
            },
            scale: 1.0 / spec.query_scale.unwrap_or(hd as f64).sqrt(),
            attn_softcap: spec.attn_softcap,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        comm: Option<&Arc<dyn Communicator>>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize, norm: Option<&Norm>| {
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
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let scores = match self.attn_softcap {
            Some(cap) => ((scores / cap)?.tanh()? * cap)?,
            None => scores,
        };
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
    pub(crate) fn new(spec: &DecoderSpec, shard: Shard, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (spec.hidden_size, spec.intermediate_size);
        let columns = shard.intermediate(spec);
        Ok(Self {
            gate: column_linear(h, i, columns, spec.mlp_bias, vb.pp("gate_proj"))?,
            up: column_linear(h, i, columns, spec.mlp_bias, vb.pp("up_proj"))?,
            down: RowLinear::new(i, h, columns, spec.mlp_bias, vb.pp("down_proj"))?,
            activation: spec.activation,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        comm: Option<&Arc<dyn Communicator>>,
    ) -> Result<Tensor> {
        let gate = self.gate.forward(x)?;
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            // candle's `gelu` is the tanh approximation (`gelu_erf` the exact one).
            Activation::GeluTanh => gate.gelu()?,
        };
        let gated = (gate * self.up.forward(x)?)?;
        self.down.forward(&gated, comm)
    }
}
