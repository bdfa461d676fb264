//! The Mistral family: the Llama decoder without biases, with an optional sliding attention
//! window (`sliding_window`; null or absent means full attention). transformers'
//! `MistralConfig` default `rope_theta` is 10000; Mistral 7B v0.2 and later set 1e6 explicitly.

use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

pub fn decoder_spec(cfg: &HfConfig) -> Result<DecoderSpec, String> {
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
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        sliding_window: cfg
            .sliding_window
            .as_ref()
            .and_then(|v| v.as_u64())
            .map(|w| w as usize),
    })
}
