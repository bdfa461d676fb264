//! What a decoder is made of, filled in by each family's file from its `config.json`
//! ([`DecoderSpec`]), and which part of the weights a tensor-parallel rank holds ([`Shard`]).

use crate::hf::config::{HfConfig, Rope};

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
    /// RMSNorm over each head's queries and keys before the rotary embedding (Qwen3, Gemma 3:
    /// `q_norm`, `k_norm`, one `[head_dim]` weight shared by the heads; offsets from 1 with
    /// `norm_offset`).
    pub qk_norm: bool,
    /// The gated MLP's activation.
    pub activation: Activation,
    /// Embeddings multiplied by √hidden_size (Gemma).
    pub scale_embeddings: bool,
    /// RMSNorm weights stored as offsets from 1: the norm multiplies by (1 + w) (Gemma).
    pub norm_offset: bool,
    /// A norm after attention and one after the MLP as well, the MLP's own pre-norm being
    /// `pre_feedforward_layernorm` (Gemma 2); otherwise the MLP's pre-norm is
    /// `post_attention_layernorm`.
    pub sandwich_norms: bool,
    /// Attention scores are scaled by 1/√this (Gemma's `query_pre_attn_scalar`); `None`:
    /// 1/√head_dim.
    pub query_scale: Option<f64>,
    /// Attention scores capped as cap·tanh(score/cap) before masking (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// The causal-LM head's logits capped the same way (Gemma 2's `final_logit_softcapping`).
    pub final_softcap: Option<f64>,
    /// Which layers `sliding_window` applies to; `None`: every layer (Mistral).
    pub sliding_layers: Option<Vec<bool>>,
    /// The sliding layers' own rotary embedding (Gemma 3's local base); `None`: `rope`.
    pub sliding_rope: Option<Rope>,
}

/// The gated MLP's activation: `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (Llama, Mistral, Qwen).
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
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
            activation: Activation::Silu,
            scale_embeddings: false,
            norm_offset: false,
            sandwich_norms: false,
            query_scale: None,
            attn_softcap: None,
            final_softcap: None,
            sliding_layers: None,
            sliding_rope: None,
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
    pub(crate) fn heads(&self, spec: &DecoderSpec) -> (usize, usize) {
        let count = spec.num_heads / self.world;
        (self.rank * count, count)
    }

    /// This rank's key/value heads: (first, count).
    pub(crate) fn kv_heads(&self, spec: &DecoderSpec) -> (usize, usize) {
        if spec.num_kv_heads.is_multiple_of(self.world) {
            let count = spec.num_kv_heads / self.world;
            (self.rank * count, count)
        } else {
            (self.rank * spec.num_kv_heads / self.world, 1)
        }
    }

    /// This rank's intermediate columns: (first, count).
    pub(crate) fn intermediate(&self, spec: &DecoderSpec) -> (usize, usize) {
        let count = spec.intermediate_size / self.world;
        (self.rank * count, count)
    }
}
