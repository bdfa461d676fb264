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

#[cfg(test)]
mod tests {
    use super::*;

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
