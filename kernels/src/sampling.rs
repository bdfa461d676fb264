//! Seeded next-token sampling with temperature, top-k and top-p.
//!
//! One `TokenSampler` draws one sequence: it is seeded from (run seed, prompt id, sample index),
//! so the tokens drawn never depend on what else is being generated at the same time.
//!
//! It draws exactly what candle's `LogitsProcessor` draws for the same seed (the tests compare
//! them token for token), but finds the top-p nucleus without sorting the whole vocabulary:
//! candle sorts all 49,152 probabilities of SmolLM2 for every token (9% of decode time), while
//! the nucleus is usually a few dozen tokens. The nucleus is the same prefix of the same order
//! (probability descending, ties by token id), summed in the same order, so the cut is
//! bit-identical. The draw then weighs only the nucleus, in token order: the zeros outside it
//! add nothing to the running sums candle's weighted draw bisects (x + 0 is x), so its total,
//! its uniform and its pick are the same.

use crate::KernelError;
use candle_core::{DType, Tensor, D};
use candle_transformers::generation::Sampling;
use rand::distr::Distribution;
use rand::SeedableRng;

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
    rng: rand::rngs::StdRng,
    sampling: Sampling,
    params: SamplingParams,
}

impl TokenSampler {
    pub fn new(seed: u64, params: &SamplingParams) -> Result<Self, KernelError> {
        Ok(Self {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            sampling: sampling_strategy(params)?,
            params: params.clone(),
        })
    }

    /// The next draw as the batched device sampler takes it (`device_sampling`), consuming one
    /// uniform from this sequence's generator; `None` for greedy sampling (an argmax).
    pub fn device_row(&mut self) -> Option<crate::row_kernel::RowParams> {
        if matches!(self.sampling, Sampling::ArgMax) {
            return None;
        }
        let uniform: f32 = rand::Rng::random(&mut self.rng);
        Some(crate::row_kernel::RowParams {
            temperature: self.params.temperature as f32,
            top_p: self.params.top_p as f32,
            top_k: self.params.top_k as u32,
            uniform,
        })
    }

    /// Draws the next token from a `[vocab]` logits tensor.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32, KernelError> {
        let logits = logits.to_dtype(DType::F32)?;
        let probabilities = |temperature: f64| -> Result<Vec<f32>, KernelError> {
            let scaled = (&logits / temperature)?;
            Ok(candle_nn::ops::softmax_last_dim(&scaled)?.to_vec1()?)
        };
        Ok(match self.sampling {
            Sampling::ArgMax => logits.argmax(D::Minus1)?.to_scalar::<u32>()?,
            Sampling::All { temperature } => self.multinomial(&probabilities(temperature)?)?,
            Sampling::GumbelSoftmax { temperature } => {
                candle_nn::sampling::gumbel_softmax(&logits, temperature, D::Minus1)?
                    .to_scalar::<u32>()?
            }
            Sampling::TopP { p, temperature } => {
                let prs = probabilities(temperature)?;
                if p <= 0.0 || p >= 1.0 {
                    self.multinomial(&prs)?
                } else {
                    self.multinomial_over(&prs, &nucleus(&prs, p as f32))?
                }
            }
            Sampling::TopK { k, temperature } => {
                let prs = probabilities(temperature)?;
                if k >= prs.len() {
                    self.multinomial(&prs)?
                } else {
                    let top = top_k_indices(&prs, k);
                    let kept: Vec<f32> = top.iter().map(|&i| prs[i]).collect();
                    top[self.multinomial(&kept)? as usize] as u32
                }
            }
            Sampling::TopKThenTopP { k, p, temperature } => {
                let prs = probabilities(temperature)?;
                let p = p as f32;
                if k >= prs.len() {
                    self.multinomial_over(&prs, &nucleus(&prs, p))?
                } else {
                    let top = top_k_indices(&prs, k);
                    let kept: Vec<f32> = top.iter().map(|&i| prs[i]).collect();
                    let sum: f32 = kept.iter().sum();
                    let pick = if p > 0.0 && p < sum {
                        self.multinomial_over(&kept, &nucleus(&kept, p))?
                    } else {
                        self.multinomial(&kept)?
                    };
                    top[pick as usize] as u32
                }
            }
        })
    }

    /// The weighted draw over `prs` restricted to `kept` (ascending): what [`Self::multinomial`]
    /// draws when every other probability is zero.
    fn multinomial_over(&mut self, prs: &[f32], kept: &[usize]) -> Result<u32, KernelError> {
        let weights: Vec<f32> = kept.iter().map(|&i| prs[i]).collect();
        Ok(kept[self.multinomial(&weights)? as usize] as u32)
    }

    fn multinomial(&mut self, prs: &[f32]) -> Result<u32, KernelError> {
        let distribution = rand::distr::weighted::WeightedIndex::new(prs)
            .map_err(|e| KernelError::InvalidParams(format!("sampling weights: {e}")))?;
        Ok(distribution.sample(&mut self.rng) as u32)
    }
}

/// candle's top-k selection, kept as it is so that the same tokens are drawn.
fn top_k_indices(prs: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..prs.len()).collect();
    order.select_nth_unstable_by(k, |&i, &j| prs[j].total_cmp(&prs[i]));
    order.truncate(k);
    order
}

/// The top-p nucleus, as token indices in ascending order: walking tokens by probability
/// descending (ties by id), a token is kept while the sum of those before it is below `p`.
/// Sorts only the tokens at or above a threshold (a prefix of that order), lowered until the
/// nucleus is complete.
pub fn nucleus(prs: &[f32], p: f32) -> Vec<usize> {
    let before = |i: &usize, j: &usize| prs[*j].total_cmp(&prs[*i]).then(i.cmp(j));
    let max = prs.iter().copied().fold(0f32, f32::max);
    let mut threshold = max / 1024.0;
    loop {
        let mut order: Vec<usize> = (0..prs.len()).filter(|&i| prs[i] >= threshold).collect();
        order.sort_unstable_by(before);
        let mut cumulative = 0f32;
        let mut kept = 0;
        for &i in &order {
            if cumulative >= p {
                break;
            }
            cumulative += prs[i];
            kept += 1;
        }
        if cumulative >= p || order.len() == prs.len() || threshold == 0.0 {
            order.truncate(kept);
            order.sort_unstable();
            return order;
        }
        threshold = if threshold > f32::MIN_POSITIVE {
            threshold / 1024.0
        } else {
            0.0
        };
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

    /// The reference: candle's `LogitsProcessor`, token for token, in every mode.
    #[test]
    fn draws_what_candles_logits_processor_draws() {
        use candle_transformers::generation::LogitsProcessor;
        // Logits with ties and a long tail, as a vocabulary has.
        let vocab = 5000;
        let values: Vec<f32> = (0..vocab)
            .map(|i| {
                let x = ((i * 7919) % 1013) as f32 / 97.0;
                if i % 50 == 0 {
                    3.0
                } else {
                    x - 8.0
                }
            })
            .collect();
        let logits = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        for (temperature, top_p, top_k) in [
            (0.7, 0.9, 0),
            (1.0, 0.5, 0),
            (1.3, 0.99, 0),
            (0.7, 1.0, 0),
            (0.7, 1.0, 40),
            (0.8, 0.9, 200),
            (0.0, 1.0, 0),
        ] {
            let params = params(temperature, top_p, top_k);
            for seed in 0..20 {
                let mut ours = TokenSampler::new(seed, &params).unwrap();
                let mut theirs =
                    LogitsProcessor::from_sampling(seed, sampling_strategy(&params).unwrap());
                for step in 0..20 {
                    assert_eq!(
                        ours.sample(&logits).unwrap(),
                        theirs.sample(&logits).unwrap(),
                        "{params:?} seed {seed} step {step}"
                    );
                }
            }
        }
    }

    /// Against the plain definition (sort everything, walk): a head of 10 tokens holding 0.9
    /// and a tail of 20,000 below max/1024, so a p of 0.95 or 0.999 needs the lowered thresholds.
    #[test]
    fn the_nucleus_is_the_prefix_a_full_sort_gives() {
        let mut prs: Vec<f32> = (0..10).map(|i| 0.09 + i as f32 * 1e-9).collect();
        prs.extend((0..20_000).map(|i| (0.1 / 20_000.0) * (1.0 + ((i * 37) % 11) as f32 / 10.0)));
        prs.push(0.09); // a tie with the head, resolved by id
        let total: f32 = prs.iter().sum();
        prs.iter_mut().for_each(|p| *p /= total);
        for p in [0.05f32, 0.5, 0.9, 0.95, 0.999, 1.0] {
            let mut order: Vec<usize> = (0..prs.len()).collect();
            order.sort_by(|&i, &j| prs[j].total_cmp(&prs[i]).then(i.cmp(&j)));
            let (mut cumulative, mut want) = (0f32, Vec::new());
            for &i in &order {
                if cumulative >= p {
                    break;
                }
                cumulative += prs[i];
                want.push(i);
            }
            want.sort_unstable();
            assert_eq!(nucleus(&prs, p), want, "p = {p}");
        }
    }

    #[test]
    fn bad_params_are_refused() {
        assert!(sampling_strategy(&params(-1.0, 1.0, 0)).is_err());
        assert!(sampling_strategy(&params(1.0, 0.0, 0)).is_err());
        assert!(sampling_strategy(&params(1.0, 1.5, 0)).is_err());
    }
}
