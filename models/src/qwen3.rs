//! The Qwen3 family (dense Qwen3; its reward models, such as Skywork-Reward-V2's Qwen3 ones, as
//! sequence classifiers): the shared decoder with an RMSNorm over each head's queries and keys
//! before the rotary embedding (`q_norm`, `k_norm`), no q/k/v biases unless `attention_bias`,
//! tied or untied embeddings, and an explicit `head_dim`. A sliding window applies only when
//! `use_sliding_window` is set (the config carries a `sliding_window` value either way), which
//! steerflow refuses, as for Qwen2. transformers' `Qwen3Config` defaults: `rope_theta` 10000,
//! `max_position_embeddings` 32768.

use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

pub fn decoder_spec(cfg: &HfConfig) -> Result<DecoderSpec, String> {
    if cfg.use_sliding_window == Some(true) {
        return Err("Qwen3 with use_sliding_window = true is not supported".into());
    }
    let bias = cfg.attention_bias.unwrap_or(false);
    Ok(DecoderSpec {
        qk_norm: true,
        qkv_bias: bias,
        o_bias: bias,
        ..DecoderSpec::from_config(cfg, DEFAULT_ROPE_THETA, 32_768)?
    })
}
