//! The Llama family (Llama 2, 3, 3.1 and architectures saved as `LlamaFor*`): the shared decoder
//! with optional `attention_bias` (q, k, v and o) and `mlp_bias`, Llama 3 rope scaling, untied or
//! tied output embeddings. transformers' `LlamaConfig` default `rope_theta` is 10000.

use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

pub fn decoder_spec(cfg: &HfConfig) -> Result<DecoderSpec, String> {
    let bias = cfg.attention_bias.unwrap_or(false);
    Ok(DecoderSpec {
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_layers: cfg.num_hidden_layers,
        num_heads: cfg.num_attention_heads,
        num_kv_heads: cfg.num_kv_heads(),
        head_dim: cfg.head_dim(),
        rms_norm_eps: cfg.rms_norm_eps,
        vocab_size: cfg.vocab_size,
        max_positions: cfg.max_position_embeddings.unwrap_or(2048),
        rope: cfg.rope(DEFAULT_ROPE_THETA)?,
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: cfg.mlp_bias.unwrap_or(false),
        sliding_window: None,
    })
}
