//! The Gemma 2 and Gemma 3 (text) families, and their reward models (Skywork-Reward-Gemma-2-27B)
//! as sequence classifiers: the shared decoder with embeddings scaled by √hidden, RMSNorm
//! weights stored as offsets from 1, norms before and after both attention and the MLP, GeGLU
//! with tanh GELU, scores scaled by 1/√`query_pre_attn_scalar`, and sliding-window attention on
//! the layers `layer_types` marks.
//!
//! Gemma 2 soft-caps scores and logits (`attn_logit_softcapping`, `final_logit_softcapping`;
//! absent: transformers' `Gemma2Config` defaults 50 and 30; `null` turns one off) and slides
//! every other layer from the first when `layer_types` is absent. Other defaults: `rope_theta`
//! 10000, `max_position_embeddings` 8192.
//!
//! Gemma 3 (`gemma3_text`: Gemma3ForCausalLM, Gemma3TextForSequenceClassification) adds an
//! RMSNorm over each head's queries and keys (offsets from 1 too), drops the soft-caps (unless
//! the config sets them), slides five layers of every six (`sliding_window_pattern`), and gives
//! the sliding layers their own rotary base: `rope_parameters.sliding_attention` and
//! `.full_attention` (transformers 5), or `rope_local_base_freq` (10000) and `rope_theta`
//! (1e6) with `rope_scaling` on the global layers only (transformers 4). Other defaults:
//! `max_position_embeddings` 131072. The multimodal `gemma3` checkpoints (Gemma3ForConditional
//! Generation, 4B and up, their text weights under `language_model`) are refused.
//!
//! Both: `sliding_window` 4096, `query_pre_attn_scalar` 256 when absent.

use crate::decoder_spec::Activation;
use crate::hf::config::{HfConfig, Rope};
use crate::transformer::DecoderSpec;
use serde_json::Value;

pub const GEMMA2_ROPE_THETA: f64 = 10_000.0;
pub const GEMMA3_ROPE_THETA: f64 = 1_000_000.0;
pub const GEMMA3_LOCAL_ROPE_THETA: f64 = 10_000.0;

/// A soft-cap: the number, `None` for `null`, `default` when the key is absent.
fn cap(raw: &Value, key: &str, default: Option<f64>) -> Result<Option<f64>, String> {
    match raw.get(key) {
        None => Ok(default),
        Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|c| *c > 0.0)
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a positive number or null, got {v}")),
    }
}

/// Which layers slide: `layer_types`, else every layer i for which `slides(i)`.
fn sliding_layers(
    raw: &Value,
    layers: usize,
    slides: impl Fn(usize) -> bool,
) -> Result<Vec<bool>, String> {
    let sliding: Vec<bool> = match raw.get("layer_types").and_then(Value::as_array) {
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
        None => (0..layers).map(slides).collect(),
    };
    if sliding.len() != layers {
        return Err(format!(
            "layer_types names {} layers, the model has {layers}",
            sliding.len()
        ));
    }
    Ok(sliding)
}

/// What Gemma 2 and 3 share, over `base` (the shapes and the global rope).
fn gemma_spec(
    cfg: &HfConfig,
    raw: &Value,
    base: DecoderSpec,
    sliding_layers: Vec<bool>,
) -> Result<DecoderSpec, String> {
    let activation = raw
        .get("hidden_activation")
        .or_else(|| raw.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    if activation != "gelu_pytorch_tanh" {
        return Err(format!(
            "Gemma with activation `{activation}` is not supported (gelu_pytorch_tanh)"
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
        sliding_window: window,
        sliding_layers: Some(sliding_layers),
        ..base
    })
}

/// `raw` is the whole `config.json`, for the keys whose absence and `null` differ.
pub fn gemma2_spec(cfg: &HfConfig, raw: &Value) -> Result<DecoderSpec, String> {
    let base = DecoderSpec::from_config(cfg, GEMMA2_ROPE_THETA, 8192)?;
    let sliding = sliding_layers(raw, cfg.num_hidden_layers, |i| i % 2 == 0)?;
    Ok(DecoderSpec {
        attn_softcap: cap(raw, "attn_logit_softcapping", Some(50.0))?,
        final_softcap: cap(raw, "final_logit_softcapping", Some(30.0))?,
        ..gemma_spec(cfg, raw, base, sliding)?
    })
}

/// Gemma 3's global and local ropes, from either config layout.
fn gemma3_ropes(raw: &Value) -> Result<(Rope, Rope), String> {
    let params = raw.get("rope_parameters").filter(|p| !p.is_null());
    match params {
        Some(p) if p.get("full_attention").is_some() || p.get("sliding_attention").is_some() => {
            let of = |kind: &str, theta: f64| match p.get(kind) {
                Some(v) => Rope::from_parameters(v, theta),
                None => Err(format!("rope_parameters has no `{kind}`")),
            };
            Ok((
                of("full_attention", GEMMA3_ROPE_THETA)?,
                of("sliding_attention", GEMMA3_LOCAL_ROPE_THETA)?,
            ))
        }
        _ => {
            let theta =
                |key: &str, default: f64| raw.get(key).and_then(Value::as_f64).unwrap_or(default);
            let global = Rope::from_parameters(
                raw.get("rope_scaling").unwrap_or(&Value::Null),
                theta("rope_theta", GEMMA3_ROPE_THETA),
            )?;
            let local = Rope::from_parameters(
                &Value::Null,
                theta("rope_local_base_freq", GEMMA3_LOCAL_ROPE_THETA),
            )?;
            Ok((global, local))
        }
    }
}

/// A `gemma3_text` config.
pub fn gemma3_spec(cfg: &HfConfig, raw: &Value) -> Result<DecoderSpec, String> {
    if raw
        .get("use_bidirectional_attention")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return Err(
            "Gemma 3 with use_bidirectional_attention (an embedding model) is not supported".into(),
        );
    }
    let (global, local) = gemma3_ropes(raw)?;
    let pattern = raw
        .get("sliding_window_pattern")
        .or_else(|| raw.get("_sliding_window_pattern"))
        .and_then(Value::as_u64)
        .unwrap_or(6) as usize;
    let sliding = sliding_layers(raw, cfg.num_hidden_layers, |i| {
        pattern == 0 || (i + 1) % pattern != 0
    })?;
    let mut base = DecoderSpec::from_config(cfg, GEMMA3_ROPE_THETA, 131_072)?;
    base.rope = global;
    Ok(DecoderSpec {
        qk_norm: true,
        attn_softcap: cap(raw, "attn_logit_softcapping", None)?,
        final_softcap: cap(raw, "final_logit_softcapping", None)?,
        sliding_rope: Some(local),
        ..gemma_spec(cfg, raw, base, sliding)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(raw: &Value) -> HfConfig {
        serde_json::from_value(raw.clone()).unwrap()
    }

    fn tiny(extra: Value) -> Value {
        let mut raw = serde_json::json!({
            "model_type": "gemma3_text", "vocab_size": 384, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 7, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6,
        });
        for (k, v) in extra.as_object().unwrap() {
            raw[k] = v.clone();
        }
        raw
    }

    #[test]
    fn gemma3_defaults_slide_five_layers_of_six_with_a_local_rope() {
        let raw = tiny(serde_json::json!({}));
        let spec = gemma3_spec(&config(&raw), &raw).unwrap();
        let sliding = spec.sliding_layers.clone().unwrap();
        assert_eq!(sliding, [true, true, true, true, true, false, true]);
        assert_eq!(spec.rope.theta, GEMMA3_ROPE_THETA);
        assert_eq!(spec.sliding_rope.as_ref().unwrap().theta, 10_000.0);
        assert_eq!((spec.attn_softcap, spec.final_softcap), (None, None));
        assert!(spec.qk_norm && spec.norm_offset && spec.sandwich_norms);
        assert_eq!(spec.sliding_window, Some(4096));
        assert_eq!(spec.max_positions, 131_072);
    }

    #[test]
    fn gemma3s_transformers_4_layout_scales_only_the_global_rope() {
        let raw = tiny(serde_json::json!({
            "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        }));
        let spec = gemma3_spec(&config(&raw), &raw).unwrap();
        let v5 = tiny(serde_json::json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        }}));
        let spec5 = gemma3_spec(&config(&v5), &v5).unwrap();
        assert_eq!(spec.rope, spec5.rope);
        assert_eq!(spec.sliding_rope, spec5.sliding_rope);
        assert_eq!(spec.rope.inv_freq(16)[0], 1.0 / 8.0);
        assert_eq!(spec.sliding_rope.unwrap().inv_freq(16)[0], 1.0);
    }

    #[test]
    fn an_embedding_gemma_is_refused() {
        let raw = tiny(serde_json::json!({"use_bidirectional_attention": true}));
        let err = gemma3_spec(&config(&raw), &raw).unwrap_err();
        assert!(err.contains("use_bidirectional_attention"), "{err}");
    }
}
