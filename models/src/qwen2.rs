//! The Qwen2 family (Qwen2, Qwen2.5): the shared decoder with biases on q, k and v (not o), often
//! tied embeddings, and a sliding window only when `use_sliding_window` is set (transformers then
//! applies it to layers past `max_window_layers`, which steerflow does not support and refuses).
//! transformers' `Qwen2Config` default `rope_theta` is 10000.

use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

pub fn decoder_spec(cfg: &HfConfig, use_sliding_window: bool) -> Result<DecoderSpec, String> {
    if use_sliding_window {
        return Err("Qwen2 with use_sliding_window = true is not supported".into());
    }
    Ok(DecoderSpec {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_layers: cfg.num_hidden_layers,
        num_heads: cfg.num_attention_heads,
        num_kv_heads: cfg.num_kv_heads(),
        head_dim: cfg.head_dim(),
        rms_norm_eps: cfg.rms_norm_eps,
        vocab_size: cfg.vocab_size,
        max_positions: cfg.max_position_embeddings.unwrap_or(32_768),
        rope: cfg.rope(DEFAULT_ROPE_THETA)?,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
    })
}
