//! The Gemma 2 family (and its reward models, such as Skywork-Reward-Gemma-2-27B, as sequence
//! classifiers): the shared decoder with embeddings scaled by √hidden, RMSNorm weights stored as
//! offsets from 1, norms before and after both attention and the MLP, GeGLU with tanh GELU,
//! scores scaled by 1/√`query_pre_attn_scalar` and soft-capped (`attn_logit_softcapping`),
//! sliding-window attention on the layers `layer_types` marks (every other layer, from the
//! first, when it is absent), and soft-capped output logits (`final_logit_softcapping`). A
//! soft-cap key that is absent takes transformers' `Gemma2Config` default (50 and 30); `null`
//! turns it off. Other defaults: `rope_theta` 10000, `max_position_embeddings` 8192,
//! `sliding_window` 4096, `query_pre_attn_scalar` 256.

use crate::decoder_spec::Activation;
use crate::hf::config::HfConfig;
use crate::transformer::DecoderSpec;
use serde_json::Value;

pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// A soft-cap: the number, `None` for `null`, `default` when the key is absent.
fn cap(raw: &Value, key: &str, default: f64) -> Result<Option<f64>, String> {
    match raw.get(key) {
        None => Ok(Some(default)),
        Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|c| *c > 0.0)
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a positive number or null, got {v}")),
    }
}

/// `raw` is the whole `config.json`, for the keys whose absence and `null` differ.
pub fn decoder_spec(cfg: &HfConfig, raw: &Value) -> Result<DecoderSpec, String> {
    let activation = raw
        .get("hidden_activation")
        .or_else(|| raw.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    if activation != "gelu_pytorch_tanh" {
        return Err(format!(
            "Gemma 2 with activation `{activation}` is not supported (gelu_pytorch_tanh)"
        ));
    }
    let layers = cfg.num_hidden_layers;
    let sliding_layers: Vec<bool> = match raw.get("layer_types").and_then(Value::as_array) {
        Some(types) => types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(format!(
                    "layer_types: `{t}` is neither sliding_attention nor full_attention"
                )),
            })
            .collect::<Result<_, _>>()?,
        None => (0..layers).map(|i| i % 2 == 0).collect(),
    };
    if sliding_layers.len() != layers {
        return Err(format!(
            "layer_types names {} layers, the model has {layers}",
            sliding_layers.len()
        ));
    }
    let window = match raw.get("sliding_window") {
        None => Some(4096),
        Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("`sliding_window` must be a whole number")? as usize,
        ),
    };
    let bias = cfg.attention_bias.unwrap_or(false);
    Ok(DecoderSpec {
        qkv_bias: bias,
        o_bias: bias,
        activation: Activation::GeluTanh,
        scale_embeddings: true,
        norm_offset: true,
        sandwich_norms: true,
        query_scale: Some(
            raw.get("query_pre_attn_scalar")
                .and_then(Value::as_f64)
                .unwrap_or(256.0),
        ),
        attn_softcap: cap(raw, "attn_logit_softcapping", 50.0)?,
        final_softcap: cap(raw, "final_logit_softcapping", 30.0)?,
        sliding_window: window,
        sliding_layers: Some(sliding_layers),
        ..DecoderSpec::from_config(cfg, DEFAULT_ROPE_THETA, 8192)?
    })
}
