//! What the GGUF architectures differ in, read from a file's metadata the way llama.cpp reads
//! it (`src/models/<arch>.cpp` in its source): one place per difference, so a new architecture
//! is a new variant here and, where it has tensors of its own, a few lines in `weights.rs`.

use crate::decoder_spec::Activation;
use candle_core::quantized::gguf_file;

/// The GGUF `general.architecture` values the loader runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufArch {
    /// Llama 2/3, SmolLM2, Mistral-style GQA.
    Llama,
    /// q/k/v biases.
    Qwen2,
    /// RMSNorm on each head's queries and keys before rope.
    Qwen3,
    /// Embeddings × √hidden, norms before and after attention and the MLP, GeGLU, scores and
    /// logits soft-capped, a sliding window on every other layer.
    Gemma2,
}

impl GgufArch {
    /// The names the error for any other architecture lists.
    pub const SUPPORTED: &'static str = "llama, qwen2, qwen3, gemma2";

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            "gemma2" => Some(Self::Gemma2),
            _ => None,
        }
    }

    /// The metadata keys' prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma2 => "gemma2",
        }
    }

    /// NEOX rotary layout (pairs i and i + d/2). `llama` GGUFs interleave the pairs (the
    /// converter permutes q and k); the others keep the checkpoint's layout.
    pub fn rope_neox(self) -> bool {
        self != Self::Llama
    }

    pub fn qkv_bias(self) -> bool {
        self == Self::Qwen2
    }

    pub fn qk_norm(self) -> bool {
        self == Self::Qwen3
    }

    /// Norms after attention and after the MLP, before each residual add.
    pub fn sandwich_norms(self) -> bool {
        self == Self::Gemma2
    }

    pub fn activation(self) -> Activation {
        match self {
            Self::Gemma2 => Activation::GeluTanh,
            _ => Activation::Silu,
        }
    }
}

/// The shapes and constants of one file.
#[derive(Clone, Debug)]
pub struct Hyper {
    pub arch: GgufArch,
    pub heads: usize,
    pub kv_heads: usize,
    pub blocks: usize,
    pub hidden: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub eps: f64,
    pub freq_base: f32,
    /// Attention scores are `q·k / score_divisor` (√head_dim).
    pub score_divisor: f64,
    /// Scores capped as cap·tanh(score/cap) before masking.
    pub attn_softcap: Option<f64>,
    /// Output logits capped the same way.
    pub final_softcap: Option<f64>,
    /// Each block's sliding window (a query at p sees keys at p - w + 1 ..= p), `None`: all.
    pub windows: Vec<Option<usize>>,
    /// Embeddings multiplied by this (√hidden, in f32, for Gemma).
    pub embed_scale: Option<f64>,
}

impl Hyper {
    pub fn read(content: &gguf_file::Content, arch: GgufArch) -> candle_core::Result<Self> {
        let meta = |key: &str| {
            let key = format!("{}.{key}", arch.name());
            content
                .metadata
                .get(&key)
                .ok_or_else(|| candle_core::Error::Msg(format!("no `{key}` in the metadata")))
        };
        let heads = meta("attention.head_count")?.to_u32()? as usize;
        let kv_heads = meta("attention.head_count_kv")?.to_u32()? as usize;
        let blocks = meta("block_count")?.to_u32()? as usize;
        let hidden = meta("embedding_length")?.to_u32()? as usize;
        let head_dim = match meta("attention.key_length") {
            Ok(v) => v.to_u32()? as usize,
            Err(_) => hidden / heads,
        };
        let rope_dim = match meta("rope.dimension_count") {
            Ok(v) => v.to_u32()? as usize,
            Err(_) => head_dim,
        };
        let eps = meta("attention.layer_norm_rms_epsilon")?.to_f32()? as f64;
        let freq_base = meta("rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        let mut hyper = Self {
            arch,
            heads,
            kv_heads,
            blocks,
            hidden,
            head_dim,
            rope_dim,
            eps,
            freq_base,
            score_divisor: (head_dim as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            windows: vec![None; blocks],
            embed_scale: None,
        };
        if arch == GgufArch::Gemma2 {
            // llama.cpp's defaults when a key is absent (llama-hparams.h, models/gemma2.cpp).
            let float = |key: &str, default: f32| match meta(key) {
                Ok(v) => v.to_f32(),
                Err(_) => Ok(default),
            };
            hyper.attn_softcap = Some(float("attn_logit_softcapping", 50.0)? as f64);
            hyper.final_softcap = Some(float("final_logit_softcapping", 30.0)? as f64);
            let window = match meta("attention.sliding_window") {
                Ok(v) => v.to_u32()? as usize,
                Err(_) => 4096,
            };
            let sliding = sliding_layers(meta("attention.sliding_window_pattern").ok(), blocks)?;
            hyper.windows = sliding.into_iter().map(|s| s.then_some(window)).collect();
            hyper.embed_scale = Some(f64::from((hidden as f32).sqrt()));
            // Gemma 2 27B (46 layers) scales by its query_pre_attn_scalar, n_embd / n_head;
            // the others by the head size (GGUF has no key for the scalar).
            if blocks == 46 {
                hyper.score_divisor = ((hidden / heads) as f64).sqrt();
            }
        }
        Ok(hyper)
    }
}

/// Which layers slide: the file's `sliding_window_pattern` as one flag per layer or as a
/// period n (layer i slides when i mod n < n - 1), else Gemma 2's period of 2 (even layers).
fn sliding_layers(
    pattern: Option<&gguf_file::Value>,
    blocks: usize,
) -> candle_core::Result<Vec<bool>> {
    let period = match pattern {
        Some(gguf_file::Value::Array(flags)) => {
            let flags: Vec<bool> = flags
                .iter()
                .map(|f| f.to_bool())
                .collect::<candle_core::Result<_>>()?;
            if flags.len() != blocks {
                candle_core::bail!(
                    "sliding_window_pattern names {} layers, the model has {blocks}",
                    flags.len()
                );
            }
            return Ok(flags);
        }
        Some(v) => v.to_u32()? as usize,
        None => 2,
    };
    Ok((0..blocks)
        .map(|i| period == 0 || i % period < period - 1)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gguf_file::Value;

    #[test]
    fn sliding_layers_follow_llama_cpps_pattern_rule() {
        assert_eq!(sliding_layers(None, 4).unwrap(), [true, false, true, false]);
        // Gemma 3's period of 6: five sliding layers, then a global one.
        let six = sliding_layers(Some(&Value::U32(6)), 7).unwrap();
        assert_eq!(six, [true, true, true, true, true, false, true]);
        assert_eq!(
            sliding_layers(Some(&Value::U32(0)), 2).unwrap(),
            [true, true]
        );
        let flags = Value::Array(vec![Value::Bool(false), Value::Bool(true)]);
        assert_eq!(sliding_layers(Some(&flags), 2).unwrap(), [false, true]);
        assert!(sliding_layers(Some(&flags), 3).is_err());
    }

    #[test]
    fn every_architecture_parses_back_from_its_name() {
        for arch in [
            GgufArch::Llama,
            GgufArch::Qwen2,
            GgufArch::Qwen3,
            GgufArch::Gemma2,
        ] {
            assert_eq!(GgufArch::parse(arch.name()), Some(arch));
            assert!(GgufArch::SUPPORTED.contains(arch.name()));
        }
        assert_eq!(GgufArch::parse("gemma3"), None);
    }
}
