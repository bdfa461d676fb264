//! Normalised goodness, `(goodness - mean) / std`: the PPO reward of the HelpSteer2 paper
//! (section 4.4), with the mean and std taken from a reference set, the run, or each prompt.

use crate::OperatorError;
use serde::{Deserialize, Serialize};

/// Below this standard deviation a set of goodness values is treated as constant.
pub const MIN_STD: f64 = 1e-9;

/// Mean and (population) standard deviation of goodness over some set of responses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormStats {
    pub mean: f64,
    pub std: f64,
    /// How many finite values the stats were computed from (0 for reference stats).
    pub count: u64,
}

impl NormStats {
    /// Stats given by the user (the paper's reference set); std must be positive.
    pub fn reference(mean: f64, std: f64) -> Result<Self, OperatorError> {
        if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
            return Err(OperatorError::InvalidReferenceStats { mean, std });
        }
        Ok(Self {
            mean,
            std,
            count: 0,
        })
    }

    /// Stats of the finite values in `values`. NaN and infinite values are skipped: they are
    /// reported elsewhere and must not poison every other response's normalised score.
    /// Values are summed in sorted order so the result does not depend on arrival order.
    pub fn from_values(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut finite: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        finite.sort_by(f64::total_cmp);
        let n = finite.len() as f64;
        let mean = finite.iter().sum::<f64>() / n;
        let var = finite.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Some(Self {
            mean,
            std: var.sqrt(),
            count: finite.len() as u64,
        })
    }
}

/// `(goodness - mean) / std`; when std is (numerically) zero every value equals the mean, and the
/// result is `goodness - mean` (0 for the members of the set), never NaN or infinite.
pub fn normalize_goodness(goodness: f64, stats: &NormStats) -> f64 {
    let centred = goodness - stats.mean;
    if stats.std < MIN_STD {
        centred
    } else {
        centred / stats.std
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_std_by_hand() {
        let s = NormStats::from_values([1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
        assert!((normalize_goodness(4.0, &s) - 1.5 / 1.25f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn zero_std_never_gives_nan_or_inf() {
        let s = NormStats::from_values([3.0, 3.0, 3.0]).unwrap();
        assert_eq!(s.std, 0.0);
        assert_eq!(normalize_goodness(3.0, &s), 0.0);
        assert!(normalize_goodness(4.0, &s).is_finite());
    }

    #[test]
    fn nan_values_are_skipped_and_order_does_not_matter() {
        let a = NormStats::from_values([0.1, f64::NAN, 0.7, 0.2, f64::INFINITY]).unwrap();
        let b = NormStats::from_values([0.2, 0.7, 0.1]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.count, 3);
        assert!(NormStats::from_values([f64::NAN]).is_none());
    }

    #[test]
    fn reference_stats_are_checked() {
        assert!(NormStats::reference(1.0, 0.0).is_err());
        assert!(NormStats::reference(f64::NAN, 1.0).is_err());
        let s = NormStats::reference(2.0, 0.5).unwrap();
        assert_eq!(normalize_goodness(3.0, &s), 2.0);
    }
}
