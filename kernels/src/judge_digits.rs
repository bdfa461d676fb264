//! The LLM judge's score from next-token logits: the probability-weighted mean over the rating
//! tokens "0".."4" (REFERENCE.md, "Reward model kinds: LLM judge").

use crate::KernelError;

/// A rating read off one next-token distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DigitRating {
    /// `sum_i i * p(i) / sum_i p(i)` over the rating digits, in 0..=max digit.
    pub expected: f64,
    /// The probability mass the full distribution puts on the rating digits (how much the
    /// model's answer was a rating at all).
    pub digit_mass: f64,
}

/// Reads a rating from `logits` (the full vocabulary) given the token ids of "0", "1", ...
/// Softmax is taken over the full vocabulary in f64 with the max subtracted, so the mass is exact
/// even when the digits are unlikely. Non-finite logits on a digit yield a NaN rating, which
/// goodness and pair selection then treat as unscored.
pub fn digit_rating(logits: &[f32], digit_token_ids: &[u32]) -> Result<DigitRating, KernelError> {
    for &id in digit_token_ids {
        if id as usize >= logits.len() {
            return Err(KernelError::DigitOutOfVocab {
                id,
                vocab: logits.len(),
            });
        }
    }
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = logits
        .iter()
        .filter(|l| l.is_finite())
        .map(|&l| (l as f64 - max).exp())
        .sum();
    let weights: Vec<f64> = digit_token_ids
        .iter()
        .map(|&id| (logits[id as usize] as f64 - max).exp())
        .collect();
    let digit_total: f64 = weights.iter().sum();
    let expected = weights
        .iter()
        .enumerate()
        .map(|(i, w)| i as f64 * w)
        .sum::<f64>()
        / digit_total;
    Ok(DigitRating {
        expected,
        digit_mass: digit_total / total,
    })
}

/// The batched rating op: `[rows, vocab]` f32 logits to `[rows, 2]` f64 (expected rating, digit
/// mass) per row. On the CPU it runs [`digit_rating`]; on a CUDA device, the kernel in
/// `cuda/judge_digits.rs`, so that only two numbers per row leave the device.
pub struct DigitRatings {
    pub digit_token_ids: Vec<u32>,
}

impl DigitRatings {
    /// Runs the op on `logits` (`[rows, vocab]`, on any device).
    pub fn ratings(&self, logits: &candle_core::Tensor) -> Result<Vec<DigitRating>, KernelError> {
        let vocab = logits.dim(candle_core::D::Minus1)?;
        if let Some(&id) = self
            .digit_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab)
        {
            return Err(KernelError::DigitOutOfVocab { id, vocab });
        }
        let logits = logits.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let pairs: Vec<Vec<f64>> = logits.apply_op1_no_bwd(self)?.to_vec2()?;
        Ok(pairs
            .into_iter()
            .map(|p| DigitRating {
                expected: p[0],
                digit_mass: p[1],
            })
            .collect())
    }
}

impl candle_core::CustomOp1 for DigitRatings {
    fn name(&self) -> &'static str {
        "steerflow-digit-ratings"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (rows, vocab) = layout.shape().dims2()?;
        let (start, end) = crate::contiguous(layout, "logits")?;
        let logits = &storage.as_slice::<f32>()?[start..end];
        let mut out = Vec::with_capacity(rows * 2);
        for r in 0..rows {
            let rating = digit_rating(&logits[r * vocab..(r + 1) * vocab], &self.digit_token_ids)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            out.extend([rating.expected, rating.digit_mass]);
        }
        Ok((candle_core::CpuStorage::F64(out), (rows, 2).into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        crate::cuda::judge_digits::digit_ratings(storage, layout, &self.digit_token_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batched_op_rates_each_row_as_digit_rating_does() {
        let logits: Vec<f32> = (0..2 * 50).map(|i| ((i * 7) % 23) as f32 / 3.0).collect();
        let tensor =
            candle_core::Tensor::from_vec(logits.clone(), (2, 50), &candle_core::Device::Cpu)
                .unwrap();
        let op = DigitRatings {
            digit_token_ids: vec![3, 4, 5, 6, 7],
        };
        let ratings = op.ratings(&tensor).unwrap();
        for (r, rating) in ratings.iter().enumerate() {
            let alone = digit_rating(&logits[r * 50..(r + 1) * 50], &op.digit_token_ids).unwrap();
            assert_eq!(*rating, alone);
        }
        let bad = DigitRatings {
            digit_token_ids: vec![50],
        };
        assert!(matches!(
            bad.ratings(&tensor),
            Err(KernelError::DigitOutOfVocab { id: 50, vocab: 50 })
        ));
    }

    #[test]
    fn uniform_digits_give_the_middle() {
        let logits = [0.0f32; 8];
        let r = digit_rating(&logits, &[0, 1, 2, 3, 4]).unwrap();
        assert!((r.expected - 2.0).abs() < 1e-12);
        assert!((r.digit_mass - 5.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn hand_computed_expectation() {
        // p(3) : p(4) = 1 : e, others negligible.
        let mut logits = vec![-100.0f32; 10];
        logits[3] = 0.0;
        logits[4] = 1.0;
        let r = digit_rating(&logits, &[0, 1, 2, 3, 4]).unwrap();
        let e = std::f64::consts::E;
        assert!((r.expected - (3.0 + 4.0 * e) / (1.0 + e)).abs() < 1e-9);
        // Large logits do not overflow.
        let big: Vec<f32> = logits.iter().map(|l| l + 1000.0).collect();
        let rb = digit_rating(&big, &[0, 1, 2, 3, 4]).unwrap();
        assert!((rb.expected - r.expected).abs() < 1e-9);
    }

    #[test]
    fn nan_on_a_digit_is_nan_and_bad_ids_are_errors() {
        let mut logits = vec![0.0f32; 6];
        logits[2] = f32::NAN;
        assert!(digit_rating(&logits, &[0, 1, 2, 3, 4])
            .unwrap()
            .expected
            .is_nan());
        assert!(digit_rating(&logits, &[0, 9]).is_err());
    }
}
