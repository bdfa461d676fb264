//! Chosen against rejected lengths, the best-known bias of DPO data: both distributions side by
//! side and a sentence with their means, for any kind that writes pairs (in tokens where the
//! responses were generated, characters where they were given).

use super::plots::{histogram, Series, GREEN, RED};

/// The lengths of a run's pairs.
#[derive(Debug, Clone)]
pub struct PairLengths {
    pub chosen_mean: f64,
    pub rejected_mean: f64,
    pairs: usize,
    unit: &'static str,
    histogram: String,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl PairLengths {
    /// The chosen and rejected lengths of every pair, in `unit`.
    pub fn new(chosen: Vec<f64>, rejected: Vec<f64>, unit: &'static str) -> Self {
        let (chosen_mean, rejected_mean, pairs) = (mean(&chosen), mean(&rejected), chosen.len());
        let histogram = histogram(
            "Length of chosen and rejected responses",
            (&format!("response length ({unit})"), "pairs"),
            &[
                Series {
                    name: "chosen",
                    color: GREEN,
                    data: chosen,
                },
                Series {
                    name: "rejected",
                    color: RED,
                    data: rejected,
                },
            ],
            16,
        );
        Self {
            chosen_mean,
            rejected_mean,
            pairs,
            unit,
            histogram,
        }
    }

    /// Both distributions as one histogram.
    pub fn histogram(&self) -> &str {
        &self.histogram
    }

    /// "Mean length: chosen X, rejected Y (chosen − rejected: ±Z over N pairs)", in the unit.
    pub fn sentence(&self) -> String {
        let (mc, mr, unit) = (self.chosen_mean, self.rejected_mean, self.unit);
        format!(
            "Mean length: chosen {mc:.1} {unit}, rejected {mr:.1} {unit} (chosen − rejected: {:+.1} {unit} over {} pairs).",
            mc - mr,
            self.pairs
        )
    }
}
