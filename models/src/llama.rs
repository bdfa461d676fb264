//! The Llama family (Llama 2, 3, 3.1 and architectures saved as `LlamaFor*`): the shared decoder
//! with optional `attention_bias` (q, k, v and o) and `mlp_bias`, Llama 3 rope scaling, untied or
//! tied output embeddings. transformers' `LlamaConfig` defaults: `rope_theta` 10000,
//! `max_position_embeddings` 2048.

use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

pub fn decoder_spec(cfg: &HfConfig) -> Result<DecoderSpec, String> {
    let bias = cfg.attention_bias.unwrap_or(false);
    Ok(DecoderSpec {
        qkv_bias: bias,
        o_bias: bias,
        mlp_bias: cfg.mlp_bias.unwrap_or(false),
        ..DecoderSpec::from_config(cfg, DEFAULT_ROPE_THETA, 2048)?
    })
}
