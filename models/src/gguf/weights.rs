//! A GGUF file's weights as the forward pass (`forward.rs`) reads them: llama.cpp's tensor
//! names, the architecture's extra tensors (`arch.rs`), Q8_0 products through `qlinear.rs`, and
//! the rotary tables.

use super::arch::{GgufArch, Hyper};
use crate::qlinear::{CpuMatmul, FusedLinear, QLinear};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::quantized_nn::RmsNorm;

/// One transformer block's weights.
pub(super) struct Block {
    pub attn_norm: RmsNorm,
    /// q, k and v as one product where the int8 kernel runs them.
    pub qkv: FusedLinear,
    /// q, k and v biases (`qwen2`).
    pub qkv_bias: Option<[Tensor; 3]>,
    /// Per-head query and key norms (`qwen3`).
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
    pub wo: QLinear,
    /// The norm of the attention's output before its residual add (`gemma2`).
    pub attn_post_norm: Option<RmsNorm>,
    pub ffn_norm: RmsNorm,
    /// The feed-forward's gate and up as one product where the int8 kernel runs them.
    pub gate_up: FusedLinear,
    pub down: QLinear,
    /// The norm of the feed-forward's output before its residual add (`gemma2`).
    pub ffn_post_norm: Option<RmsNorm>,
    /// This block's sliding window, `None`: it attends to every earlier position.
    pub window: Option<usize>,
}

/// The decoder's weights and rotary tables, shared by every session.
pub(super) struct Weights {
    pub hyper: Hyper,
    pub embed: candle_nn::Embedding,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    pub output: QLinear,
    pub cos: Tensor,
    pub sin: Tensor,
    pub device: Device,
    /// Whether short chunks (decode steps among them) attend through steerflow's attention
    /// kernel over the host KV cache (on the CPU with steerflow's kernels); else through candle's
    /// operations, as candle's own models do (on a GPU, and on the CPU under
    /// `STEERFLOW_CPU_MATMUL=candle`).
    pub kernel_attention: bool,
}

impl Weights {
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
        (arch, context_length, kernel): (GgufArch, usize, CpuMatmul),
    ) -> candle_core::Result<Self> {
        let hyper = Hyper::read(content, arch)?;
        let eps = hyper.eps;
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let embed_q = tensor("token_embd.weight")?;
        let embed = candle_nn::Embedding::new(embed_q.dequantize(device)?, hyper.hidden);
        let norm = RmsNorm::from_qtensor(tensor("output_norm.weight")?, eps)?;
        let output = match tensor("output.weight") {
            Ok(t) => t,
            Err(_) => embed_q, // tied embeddings (always, for gemma2)
        };
        let mut blocks = Vec::with_capacity(hyper.blocks);
        for i in 0..hyper.blocks {
            let mut blk = |name: &str| tensor(&format!("blk.{i}.{name}"));
            let norm = |t: candle_core::quantized::QTensor| RmsNorm::from_qtensor(t, eps);
            let attn_norm = norm(blk("attn_norm.weight")?)?;
            let ffn_norm = norm(blk("ffn_norm.weight")?)?;
            let qk_norm = match arch.qk_norm() {
                true => Some((
                    norm(blk("attn_q_norm.weight")?)?,
                    norm(blk("attn_k_norm.weight")?)?,
                )),
                false => None,
            };
            let (attn_post_norm, ffn_post_norm) = match arch.sandwich_norms() {
                true => (
                    Some(norm(blk("post_attention_norm.weight")?)?),
                    Some(norm(blk("post_ffw_norm.weight")?)?),
                ),
                false => (None, None),
            };
            let qkv_bias = match arch.qkv_bias() {
                true => Some([
                    blk("attn_q.bias")?.dequantize(device)?,
                    blk("attn_k.bias")?.dequantize(device)?,
                    blk("attn_v.bias")?.dequantize(device)?,
                ]),
                false => None,
            };
            let qkv = vec![
                blk("attn_q.weight")?,
                blk("attn_k.weight")?,
                blk("attn_v.weight")?,
            ];
            let gate_up = vec![blk("ffn_gate.weight")?, blk("ffn_up.weight")?];
            let (wo, down) = (blk("attn_output.weight")?, blk("ffn_down.weight")?);
            blocks.push(Block {
                attn_norm,
                qkv: FusedLinear::from_qtensors(qkv, kernel)?,
                qkv_bias,
                qk_norm,
                wo: QLinear::from_qtensor(wo, kernel)?,
                attn_post_norm,
                ffn_norm,
                gate_up: FusedLinear::from_qtensors(gate_up, kernel)?,
                down: QLinear::from_qtensor(down, kernel)?,
                ffn_post_norm,
                window: hyper.windows[i],
            });
        }
        let (cos, sin) = rotary_tables(&hyper, context_length, device)?;
        Ok(Self {
            hyper,
            embed,
            blocks,
            norm,
            output: QLinear::from_qtensor(output, kernel)?,
            cos,
            sin,
            device: device.clone(),
            kernel_attention: device.is_cpu() && kernel != CpuMatmul::Candle,
        })
    }
}

/// Angles as candle computes them: position (f32) × 1 / base^(2i / d) (f32).
fn rotary_tables(
    hyper: &Hyper,
    context_length: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let rope_dim = hyper.rope_dim;
    let inv_freq: Vec<f32> = (0..rope_dim)
        .step_by(2)
        .map(|i| 1f32 / hyper.freq_base.powf(i as f32 / rope_dim as f32))
        .collect();
    let half = inv_freq.len();
    let angles: Vec<f32> = (0..context_length)
        .flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f))
        .collect();
    let angles = Tensor::from_vec(angles, (context_length, half), device)?;
    Ok((angles.cos()?, angles.sin()?))
}
