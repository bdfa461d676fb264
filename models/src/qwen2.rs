//! The Qwen2 family (Qwen2, Qwen2.5): the shared decoder with biases on q, k and v (not o), often
//! tied embeddings, and a sliding window only when `use_sliding_window` is set (transformers then
//! applies it to layers past `max_window_layers`, which steerflow does not support and refuses).
//! transformers' `Qwen2Config` defaults: `rope_theta` 10000, `max_position_embeddings` 32768.

use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

pub fn decoder_spec(cfg: &HfConfig, use_sliding_window: bool) -> Result<DecoderSpec, String> {
    if use_sliding_window {
        return Err("Qwen2 with use_sliding_window = true is not supported".into());
    }
    Ok(DecoderSpec {
        qkv_bias: true,
        ..DecoderSpec::from_config(cfg, DEFAULT_ROPE_THETA, 32_768)?
    })
}
