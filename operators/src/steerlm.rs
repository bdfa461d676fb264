//! SteerLM labels: attribute scores written as `helpfulness:4,correctness:3,...`, the form
//! NeMo-Aligner's SteerLM training reads (REFERENCE.md, "Formats"). For training, each value is
//! clamped to [0, 4] and rounded to the nearest integer with ties to even, as NeMo-Aligner's
//! `attribute_annotate.py` does with Python's `round`; the raw floats are kept elsewhere for
//! ranking and filtering.

use crate::attributes::RATING_RANGE;

/// Clamped to [0, 4], rounded half to even (2.5 → 2, 3.5 → 4). NaN stays NaN.
pub fn training_value(value: f64) -> f64 {
    value
        .clamp(RATING_RANGE.0, RATING_RANGE.1)
        .round_ties_even()
}

/// `name:value` pairs joined by commas, in the given order; None if any value is not finite.
pub fn steerlm_label(names: &[String], values: &[f64]) -> Option<String> {
    if names.len() != values.len() || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(
        names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n}:{}", training_value(*v) as i64))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// The label the SteerLM cards suggest when no scores are available: high quality, moderate
/// complexity and verbosity.
pub const DEFAULT_LABEL: &str = "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_to_even_at_every_boundary_and_clamping() {
        let cases = [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (2.4999, 2.0),
            (2.5001, 3.0),
            (-0.7, 0.0),
            (4.6, 4.0),
        ];
        for (input, expected) in cases {
            assert_eq!(training_value(input), expected, "{input}");
        }
        assert!(training_value(f64::NAN).is_nan());
    }

    #[test]
    fn labels_in_order() {
        let names: Vec<String> = ["helpfulness", "correctness", "verbosity"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            steerlm_label(&names, &[3.5, 2.5, 0.49]).unwrap(),
            "helpfulness:4,correctness:2,verbosity:0"
        );
        assert_eq!(steerlm_label(&names, &[3.5, f64::NAN, 1.0]), None);
        assert_eq!(steerlm_label(&names, &[1.0]), None);
    }
}
