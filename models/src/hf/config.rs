//! `config.json` of a Hugging Face checkpoint, as transformers 4 and 5 write it.
//!
//! transformers 5 writes `rope_parameters` (holding `rope_theta`, `rope_type` and the scaling
//! fields) instead of top-level `rope_theta` / `rope_scaling`; both layouts are read, and a
//! config with neither falls back to the family's documented default theta, never silently.

use serde::Deserialize;
use serde_json::Value;

/// The fields steerflow reads; everything else in the file is ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub vocab_size: usize,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub id2label: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub pad_token_id: Option<Value>,
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    #[serde(default)]
    pub sliding_window: Option<Value>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
}

/// How rotary position embeddings are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Rotary embedding parameters resolved from either config layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

fn number(v: &Value, key: &str) -> Result<f64, String> {
    v.get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("rope scaling needs a number `{key}`"))
}

impl HfConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The number of outputs of a sequence-classification head.
    pub fn labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2)
    }

    /// First integer of a token-id field (`eos_token_id` may be an int or a list).
    pub fn token_ids(value: &Option<Value>) -> Vec<u32> {
        match value {
            Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_u64)
                .map(|n| n as u32)
                .collect(),
            _ => vec![],
        }
    }

    /// Rope theta and scaling, from `rope_parameters` (transformers 5) or `rope_theta` +
    /// `rope_scaling` (transformers 4). `default_theta` is the family's documented default.
    pub fn rope(&self, default_theta: f64) -> Result<Rope, String> {
        match &self.rope_parameters {
            Some(params) => Rope::from_parameters(params, self.rope_theta.unwrap_or(default_theta)),
            None => Ok(Rope {
                theta: self.rope_theta.unwrap_or(default_theta),
                scaling: RopeScaling::parse(self.rope_scaling.as_ref())?,
            }),
        }
    }
}

impl RopeScaling {
    /// A `rope_parameters` or `rope_scaling` object (`rope_type`, or transformers 4's `type`).
    fn parse(s: Option<&Value>) -> Result<Self, String> {
        let Some(s) = s.filter(|s| !s.is_null()) else {
            return Ok(Self::None);
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        Ok(match kind {
            "default" => Self::None,
            "linear" => Self::Linear {
                factor: number(s, "factor")?,
            },
            "llama3" => Self::Llama3 {
                factor: number(s, "factor")?,
                low_freq_factor: number(s, "low_freq_factor")?,
                high_freq_factor: number(s, "high_freq_factor")?,
                original_max_position_embeddings: number(s, "original_max_position_embeddings")?,
            },
            other => {
                return Err(format!(
                    "rope scaling `{other}` is not supported (default, linear, llama3)"
                ))
            }
        })
    }
}

impl Rope {
    /// One `rope_parameters` object (transformers 5): its `rope_theta`, else `theta`, and its
    /// scaling.
    pub fn from_parameters(params: &Value, theta: f64) -> Result<Self, String> {
        Ok(Self {
            theta: params
                .get("rope_theta")
                .and_then(Value::as_f64)
                .unwrap_or(theta),
            scaling: RopeScaling::parse(Some(params))?,
        })
    }

    /// Inverse frequencies for `head_dim`, as transformers' `ROPE_INIT_FUNCTIONS` compute them.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f64> {
        let base: Vec<f64> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / self.theta.powf(i as f64 / head_dim as f64))
            .collect();
        match self.scaling {
            RopeScaling::None => base,
            RopeScaling::Linear { factor } => base.into_iter().map(|f| f / factor).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let low_freq_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_freq_wavelen = original_max_position_embeddings / high_freq_factor;
                base.into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_freq_wavelen {
                            f
                        } else if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen
                                - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> HfConfig {
        serde_json::from_str(&format!(
            r#"{{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"rms_norm_eps":1e-6,"vocab_size":10{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn both_layouts_give_the_same_rope() {
        let new = config(
            r#","rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#,
        );
        let old = config(
            r#","rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#,
        );
        assert_eq!(new.rope(10000.0).unwrap(), old.rope(10000.0).unwrap());
        assert_eq!(new.rope(10000.0).unwrap().theta, 500000.0);
        // Neither layout: the family default, not 10000 by accident.
        assert_eq!(config("").rope(1e6).unwrap().theta, 1e6);
        assert!(config(r#","rope_scaling":{"type":"yarn","factor":2.0}"#)
            .rope(1e4)
            .is_err());
    }

    #[test]
    fn llama3_scaling_has_three_regimes() {
        let rope = config(r#","rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#)
            .rope(1e4)
            .unwrap();
        let plain = Rope {
            theta: 500000.0,
            scaling: RopeScaling::None,
        }
        .inv_freq(16);
        let scaled = rope.inv_freq(16);
        assert_eq!(scaled[0], plain[0]); // high frequency: unchanged
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-18); // low frequency: divided by the factor
        assert!(scaled[1] < plain[1] && scaled[1] > plain[1] / 8.0); // in between: smoothed
    }
}
