//! Seeded next-token sampling with temperature, top-k and top-p, on candle's `LogitsProcessor`.
//!
//! One `TokenSampler` draws one sequence: it is seeded from (run seed, prompt id, sample index),
//! so the tokens drawn never depend on what else is being generated at the same time.

use crate::KernelError;
use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};

/// The knobs of one sequence's sampler (the job config's `[sampling]` table maps onto it).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    /// 1.0 disables nucleus filtering.
    pub top_p: f64,
    /// 0 disables top-k filtering.
    pub top_k: usize,
}

/// Maps parameters to candle's sampling strategy, rejecting values that mean nothing.
pub fn sampling_strategy(params: &SamplingParams) -> Result<Sampling, KernelError> {
    let SamplingParams {
        temperature,
        top_p,
        top_k,
    } = *params;
    if !temperature.is_finite() || temperature < 0.0 {
        return Err(KernelError::InvalidParams(format!(
            "temperature must be >= 0, got {temperature}"
        )));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(KernelError::InvalidParams(format!(
            "top_p must be in (0, 1], got {top_p}"
        )));
    }
    if temperature == 0.0 {
        return Ok(Sampling::ArgMax);
    }
    Ok(match (top_k, top_p < 1.0) {
        (0, false) => Sampling::All { temperature },
        (0, true) => Sampling::TopP {
            p: top_p,
            temperature,
        },
        (k, false) => Sampling::TopK { k, temperature },
        (k, true) => Sampling::TopKThenTopP {
            k,
            p: top_p,
            temperature,
        },
    })
}

/// Draws the tokens of one sequence.
pub struct TokenSampler {
    inner: LogitsProcessor,
}

impl TokenSampler {
    pub fn new(seed: u64, params: &SamplingParams) -> Result<Self, KernelError> {
        Ok(Self {
            inner: LogitsProcessor::from_sampling(seed, sampling_strategy(params)?),
        })
    }

    /// Draws the next token from a `[vocab]` logits tensor.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32, KernelError> {
        Ok(self.inner.sample(logits)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn params(temperature: f64, top_p: f64, top_k: usize) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let logits = Tensor::new(&[0.1f32, 3.0, 0.2, 2.9], &Device::Cpu).unwrap();
        let mut s = TokenSampler::new(1, &params(0.0, 1.0, 0)).unwrap();
        assert_eq!(s.sample(&logits).unwrap(), 1);
    }

    #[test]
    fn same_seed_same_draws_and_top_k_excludes_the_tail() {
        let logits = Tensor::new(&[1.0f32, 1.0, 1.0, -30.0], &Device::Cpu).unwrap();
        let draw = |seed| {
            let mut s = TokenSampler::new(seed, &params(1.0, 1.0, 2)).unwrap();
            (0..50)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(42);
        assert_eq!(a, draw(42));
        assert_ne!(a, draw(43));
        // top-k 2 keeps only two of the three equal tokens, and never the -30 one.
        let distinct: std::collections::BTreeSet<u32> = a.iter().copied().collect();
        assert!(
            distinct.len() <= 2 && !distinct.contains(&3),
            "{distinct:?}"
        );
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities about 0.87, 0.12, 0.01: top-p 0.5 keeps only the first.
        let logits = Tensor::new(&[4.0f32, 2.0, -0.5], &Device::Cpu).unwrap();
        let mut s = TokenSampler::new(9, &params(1.0, 0.5, 0)).unwrap();
        assert!((0..100).all(|_| s.sample(&logits).unwrap() == 0));
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(sampling_strategy(&params(-1.0, 1.0, 0)).is_err());
        assert!(sampling_strategy(&params(1.0, 0.0, 0)).is_err());
        assert!(sampling_strategy(&params(1.0, 1.5, 0)).is_err());
    }
}
