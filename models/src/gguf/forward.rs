//! The forward pass over a *ragged batch*: each sequence brings its own chunk of tokens (a
//! prompt to prefill or one token to decode) at its own position, the projections and the MLP
//! run once over all the batch's tokens, and attention runs per sequence over that sequence's
//! own KV cache. Every row is computed exactly as it would be alone, so what else is in the
//! batch never changes a sequence's logits.

use super::kv::LayerKv;
use super::weights::{Block, Weights};
use super::KvCache;
use crate::decoder_spec::Activation;
use candle_core::{DType, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;
use rayon::prelude::*;
use steerflow_kernels::attention::{self, Heads};

/// GELU (tanh approximation) as llama.cpp computes it on the CPU (`GGML_GELU_FP16` in
/// ggml-cpu/vec.h): the input rounded to f16, the result read from a table of f16 values,
/// except below -10 (0) and from 10 up (the input itself). 1e-3 from the f32 formula on the
/// tiny Gemma 2's logits, and through the int8 activations of a Q8_0 file 5e-2 in
/// log-probability: enough to turn llama.cpp's greedy tokens at near ties. On other devices
/// the f32 formula, as llama.cpp's GPU backends compute it.
fn gelu_as_llama_cpp(gate: &Tensor) -> candle_core::Result<Tensor> {
    if !gate.device().is_cpu() {
        return gate.gelu();
    }
    let values: Vec<f32> = gate.flatten_all()?.to_vec1()?;
    let out: Vec<f32> = values.into_iter().map(gelu_f16_table).collect();
    Tensor::from_vec(out, gate.shape(), gate.device())
}

fn gelu_f16_table(x: f32) -> f32 {
    use half::f16;
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let x = f16::from_f32(x).to_f32();
        let inner = 0.797_884_6_f32 * x * (1.0 + 0.044715 * x * x);
        f16::from_f32(0.5 * x * (1.0 + inner.tanh())).to_f32()
    }
}

/// cap·tanh(x/cap).
fn softcap(x: Tensor, cap: Option<f64>) -> candle_core::Result<Tensor> {
    match cap {
        Some(cap) => (x / cap)?.tanh()? * cap,
        None => Ok(x),
    }
}

fn post_norm(norm: &Option<RmsNorm>, x: Tensor) -> candle_core::Result<Tensor> {
    match norm {
        Some(n) => n.forward(&x),
        None => Ok(x),
    }
}

/// Chunks of at most this many tokens attend one query at a time over the host cache (a decode
/// step, and the short chunks of the judge's questions over a long shared prefix); longer ones
/// (a prompt's prefill) through candle's matrix products.
const ROW_ATTENTION_MAX: usize = 64;

impl Weights {
    /// The attention's dimensions and score transform.
    fn heads(&self) -> Heads {
        let hy = &self.hyper;
        Heads {
            heads: hy.heads,
            kv_heads: hy.kv_heads,
            head_dim: hy.head_dim,
            divisor: hy.score_divisor as f32,
            softcap: hy.attn_softcap.map(|c| c as f32),
        }
    }

    /// Runs `chunks[i]` after what `caches[i]` holds, for every i in one batch, and returns the
    /// next-token logits after each chunk's last token, `[sequences, vocab]` (f32).
    pub(super) fn forward(
        &self,
        caches: &mut [&mut KvCache],
        chunks: &[&[u32]],
    ) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = chunks.concat();
        let total = ids.len();
        let mut x = self
            .embed
            .forward(&Tensor::from_vec(ids, total, &self.device)?)?;
        if let Some(scale) = self.hyper.embed_scale {
            x = (x * scale)?;
        }
        for (b, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(&x)?;
            let attended = self.attention(block, b, &h, caches, chunks)?;
            let attended = post_norm(&block.attn_post_norm, block.wo.forward(&attended)?)?;
            let x1 = (attended + &x)?;
            let h = block.ffn_norm.forward(&x1)?;
            let [gate, up]: [Tensor; 2] = block
                .gate_up
                .forward(&h)?
                .try_into()
                .map_err(|_| candle_core::Error::Msg("gate and up: not two products".into()))?;
            let gate = match self.hyper.arch.activation() {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gelu_as_llama_cpp(&gate)?,
            };
            let mlp = post_norm(&block.ffn_post_norm, block.down.forward(&(gate * up)?)?)?;
            x = (mlp + x1)?;
        }
        let mut last = Vec::with_capacity(chunks.len());
        let mut end = 0u32;
        for (cache, chunk) in caches.iter_mut().zip(chunks) {
            end += chunk.len() as u32;
            last.push(end - 1);
            cache.position += chunk.len();
        }
        let x = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        let logits = self
            .output
            .forward(&self.norm.forward(&x)?)?
            .to_dtype(DType::F32)?;
        softcap(logits, self.hyper.final_softcap)
    }

    /// Block `b`'s attention for every sequence of the batch, `[tokens, heads × head_dim]`,
    /// before the output projection.
    fn attention(
        &self,
        block: &Block,
        b: usize,
        h: &Tensor,
        caches: &mut [&mut KvCache],
        chunks: &[&[u32]],
    ) -> candle_core::Result<Tensor> {
        let hy = &self.hyper;
        let [mut q, mut k, mut v]: [Tensor; 3] = block
            .qkv
            .forward(h)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("q, k and v: not three products".into()))?;
        if let Some([bq, bk, bv]) = &block.qkv_bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let (q_norm, k_norm) = match &block.qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let offsets: Vec<usize> = chunks
            .iter()
            .scan(0, |end, c| {
                *end += c.len();
                Some(*end - c.len())
            })
            .collect();
        let one = |(cache, (chunk, offset)): (&mut &mut KvCache, (&&[u32], usize))| {
            let t = chunk.len();
            let rows = |m: &Tensor, heads: usize, norm: Option<&RmsNorm>| {
                let m = m
                    .narrow(0, offset, t)?
                    .reshape((1, t, heads, hy.head_dim))?;
                let m = match norm {
                    Some(n) => n.forward(&m.contiguous()?)?,
                    None => m,
                };
                m.transpose(1, 2)?.contiguous()
            };
            let position = cache.position;
            let y = self.attend(
                [
                    rows(&q, hy.heads, q_norm)?,
                    rows(&k, hy.kv_heads, k_norm)?,
                    rows(&v, hy.kv_heads, None)?,
                ],
                &mut cache.blocks[b],
                position,
                block.window,
            )?;
            y.transpose(1, 2)?.reshape((t, hy.heads * hy.head_dim))
        };
        // Sequences are independent: on the CPU each runs on the compute pool's threads, so both
        // cores work through the per-sequence attention instead of one while the other waits
        // (each sequence is computed the same way on whichever thread takes it). A GPU gets its
        // launches from one thread, in order.
        let attended = if self.device.is_cpu() {
            caches
                .par_iter_mut()
                .zip(chunks.par_iter().zip(offsets))
                .map(one)
                .collect::<candle_core::Result<Vec<Tensor>>>()?
        } else {
            caches
                .iter_mut()
                .zip(chunks.iter().zip(offsets))
                .map(one)
                .collect::<candle_core::Result<Vec<Tensor>>>()?
        };
        Tensor::cat(&attended, 0)
    }

    /// The attention of a short chunk's queries (`[1, heads, t, head_dim]`, at `position` on),
    /// one query at a time over the host cache (which holds the chunk's keys): the query at p
    /// sees the keys from p - window + 1 to p.
    fn row_attention(
        &self,
        q: &Tensor,
        layer: &attention::LayerCache,
        position: usize,
        window: usize,
    ) -> candle_core::Result<Tensor> {
        let (hy, t) = (&self.hyper, q.dim(2)?);
        let hd = hy.head_dim;
        let q: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; q.len()];
        let mut row = vec![0f32; hy.heads * hd];
        let (path, heads) = (attention::Path::best(), self.heads());
        for i in 0..t {
            for (h, qh) in row.chunks_exact_mut(hd).enumerate() {
                qh.copy_from_slice(&q[(h * t + i) * hd..][..hd]);
            }
            let end = position + i + 1;
            let visible = end.saturating_sub(window)..end;
            let out = attention::decode_attention(path, layer, heads, &row, visible);
            for (h, yh) in out.chunks_exact(hd).enumerate() {
                y[(h * t + i) * hd..][..hd].copy_from_slice(yh);
            }
        }
        Tensor::from_vec(y, (1, hy.heads, t, hd), &self.device)
    }

    /// Causal attention of one sequence's new queries (`[1, heads, t, head_dim]`) over its cached
    /// keys and values followed by the new ones, which join the cache; with a `window`, a query
    /// at p sees only the keys at p - window + 1 ..= p.
    fn attend(
        &self,
        [q, k, v]: [Tensor; 3],
        cache: &mut Option<LayerKv>,
        position: usize,
        window: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let hy = &self.hyper;
        let t = q.dim(2)?;
        let cos = self.cos.narrow(0, position, t)?;
        let sin = self.sin.narrow(0, position, t)?;
        let rope = |x: &Tensor| {
            if hy.arch.rope_neox() {
                candle_nn::rotary_emb::rope(x, &cos, &sin)
            } else {
                candle_nn::rotary_emb::rope_i(x, &cos, &sin)
            }
        };
        let (q, k) = (rope(&q)?, rope(&k)?);
        let keys = position + t;
        let window = window.unwrap_or(usize::MAX);
        let (k, v) = if self.device.is_cpu() {
            // `[1, kv_heads, t, head_dim]` → `[t][kv_head][head_dim]`, appended in place.
            let host = |x: &Tensor| x.squeeze(0)?.transpose(0, 1)?.flatten_all()?.to_vec1();
            let width = hy.kv_heads * hy.head_dim;
            LayerKv::append_host(cache, width, &host(&k)?, &host(&v)?);
            let Some(LayerKv::Host(layer)) = cache.as_ref() else {
                return Err(candle_core::Error::Msg("a CPU cache of tensors".into()));
            };
            if t <= ROW_ATTENTION_MAX && self.kernel_attention {
                return self.row_attention(&q, layer, position, window);
            }
            let shape = (1, hy.kv_heads, keys, hy.head_dim);
            (
                Tensor::from_vec(layer.keys_by_head(hy.head_dim), shape, &self.device)?,
                Tensor::from_vec(layer.values_by_head(hy.head_dim), shape, &self.device)?,
            )
        } else {
            let (k, v) = match cache.take() {
                Some(LayerKv::Tensors(pk, pv)) => {
                    (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
                }
                _ => (k, v),
            };
            *cache = Some(LayerKv::Tensors(k.clone(), v.clone()));
            (k, v)
        };
        // Grouped-query attention without copying the keys and values per query head: query head
        // h reads kv head h / rep, so the `rep` query heads of a kv head are stacked as rows,
        // `[1, kv_heads, rep × t, head_dim]`, against that kv head's keys.
        let rep = hy.heads / hy.kv_heads;
        let q = q.reshape((1, hy.kv_heads, rep * t, hy.head_dim))?;
        let scores = (q.matmul(&k.t()?)? / hy.score_divisor)?;
        let scores = softcap(scores, hy.attn_softcap)?;
        // Query i (at position + i) sees keys j ≤ position + i within the window.
        let hidden = |i: usize, j: usize| j > position + i || position + i - j >= window;
        let scores = if t > 1 || keys > window {
            let blocked: Vec<u8> = (0..rep * t)
                .flat_map(|row| (0..keys).map(move |j| u8::from(hidden(row % t, j))))
                .collect();
            let blocked = Tensor::from_vec(blocked, (rep * t, keys), &self.device)?
                .broadcast_as(scores.shape())?;
            let neg_inf =
                Tensor::new(f32::NEG_INFINITY, &self.device)?.broadcast_as(scores.shape())?;
            blocked.where_cond(&neg_inf, &scores)?
        } else {
            scores
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs
            .matmul(&v.contiguous()?)?
            .reshape((1, hy.heads, t, hy.head_dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against candle's f32 GELU on the f16-rounded input: equal after rounding to f16 (both
    /// evaluate the same formula in f32), and the cut-offs at ±10.
    #[test]
    fn the_f16_table_gelu_is_the_f32_formula_rounded_at_both_ends() {
        let xs: Vec<f32> = (-1200..1200).map(|i| i as f32 * 0.01 + 0.003).collect();
        let rounded: Vec<f32> = xs
            .iter()
            .map(|&x| half::f16::from_f32(x).to_f32())
            .collect();
        let n = rounded.len();
        let candle: Vec<f32> = Tensor::from_vec(rounded, n, &candle_core::Device::Cpu)
            .unwrap()
            .gelu()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (&x, want) in xs.iter().zip(candle) {
            let got = gelu_f16_table(x);
            if x <= -10.0 {
                assert_eq!(got, 0.0);
            } else if x >= 10.0 {
                assert_eq!(got, x);
            } else {
                assert_eq!(got, half::f16::from_f32(want).to_f32(), "x = {x}");
            }
        }
    }
}
