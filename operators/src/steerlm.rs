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

/// SteerLM 2.0's sampling targets (HelpSteer2 paper, section 4.4): helpfulness, correctness and
/// coherence 4, complexity and verbosity 2.
pub const STEERLM2_PAPER_TARGETS: &str =
    "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2";

/// Checks a target-attribute label (`name:value,...`, integer values 0..4) or expands the preset
/// `steerlm2-paper`.
pub fn steer_label(spec: &str) -> Result<String, String> {
    let label = if spec == "steerlm2-paper" {
        STEERLM2_PAPER_TARGETS
    } else {
        spec
    };
    for part in label.split(',') {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not name:value"))?;
        let value: i64 = value
            .parse()
            .map_err(|_| format!("`{part}`: the value must be an integer"))?;
        if name.is_empty() || !(0..=4).contains(&value) {
            return Err(format!("`{part}`: a named attribute with a value in 0..4"));
        }
    }
    Ok(label.to_string())
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
    fn steer_labels() {
        assert_eq!(
            steer_label("steerlm2-paper").unwrap(),
            STEERLM2_PAPER_TARGETS
        );
        assert_eq!(
            steer_label("quality:4,toxicity:0").unwrap(),
            "quality:4,toxicity:0"
        );
        assert!(steer_label("helpfulness:5").is_err());
        assert!(steer_label("helpfulness").is_err());
        assert!(steer_label("helpfulness:high").is_err());
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
