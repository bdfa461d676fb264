//! The Mistral family: the Llama decoder without biases, with an optional sliding attention
//! window (`sliding_window`; null or absent means full attention). transformers'
//! `MistralConfig` defaults: `rope_theta` 10000 (Mistral 7B v0.2 and later set 1e6 explicitly),
//! `max_position_embeddings` 32768.

use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

pub fn decoder_spec(cfg: &HfConfig) -> Result<DecoderSpec, String> {
    Ok(DecoderSpec {
        sliding_window: cfg
            .sliding_window
            .as_ref()
            .and_then(|v| v.as_u64())
            .map(|w| w as usize),
        ..DecoderSpec::from_config(cfg, DEFAULT_ROPE_THETA, 32_768)?
    })
}
