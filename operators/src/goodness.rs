//! Goodness: one scalar per response, a weighted sum of its attributes.
//!
//! Presets (REFERENCE.md, "Scores"):
//! - `helpsteer2-paper`: `0.65*helpfulness + 0.8*correctness + 0.45*coherence`, the weighting the
//!   HelpSteer2 paper uses to pick chosen/rejected responses for iterative DPO (section 4.3).
//! - `steerlm-rm-card`: `[0,0,0,0,0.65,0.8,0.45,0.55,-0.4]` over the NeMo nine outputs, as printed
//!   on the Llama3-70B-SteerLM-RM card; on a five-attribute scorer the four zero weights vanish.

use crate::attributes::NEMO_NINE;
use crate::OperatorError;

/// Names of the built-in presets.
pub const PRESETS: [&str; 3] = ["helpsteer2-paper", "steerlm-rm-card", "scalar"];

/// A weight per attribute name; attributes without a weight count zero.
#[derive(Debug, Clone, PartialEq)]
pub struct GoodnessWeights {
    weights: Vec<(String, f64)>,
}

impl GoodnessWeights {
    /// The weights of a named preset.
    pub fn preset(name: &str) -> Result<Self, OperatorError> {
        let pairs: Vec<(&str, f64)> = match name {
            "helpsteer2-paper" => vec![
                ("helpfulness", 0.65),
                ("correctness", 0.8),
                ("coherence", 0.45),
            ],
            "steerlm-rm-card" => {
                let card = [0.0, 0.0, 0.0, 0.0, 0.65, 0.8, 0.45, 0.55, -0.4];
                NEMO_NINE.iter().copied().zip(card).collect()
            }
            "scalar" => vec![("reward", 1.0)],
            _ => {
                return Err(OperatorError::UnknownPreset {
                    name: name.to_string(),
                    known: PRESETS.join(", "),
                })
            }
        };
        Self::custom(pairs.into_iter().map(|(n, w)| (n.to_string(), w)))
    }

    /// Custom weights, for example from the `[goodness.weights]` table of a job config.
    pub fn custom(weights: impl IntoIterator<Item = (String, f64)>) -> Result<Self, OperatorError> {
        let weights: Vec<(String, f64)> = weights.into_iter().collect();
        for (attribute, weight) in &weights {
            if !weight.is_finite() {
                return Err(OperatorError::NonFiniteWeight {
                    attribute: attribute.clone(),
                    weight: *weight,
                });
            }
        }
        Ok(Self { weights })
    }

    /// The (attribute, weight) pairs, in the order given.
    pub fn weights(&self) -> &[(String, f64)] {
        &self.weights
    }

    /// Binds the weights to a scorer's attribute order, so goodness is a plain dot product.
    ///
    /// Fails when a non-zero weight names an attribute the scorer does not produce: silently
    /// treating it as zero would change what "goodness" means without telling anyone.
    pub fn bind(&self, attribute_names: &[String]) -> Result<BoundGoodness, OperatorError> {
        let mut dense = vec![0.0; attribute_names.len()];
        for (attribute, weight) in &self.weights {
            match attribute_names.iter().position(|a| a == attribute) {
                Some(i) => dense[i] += weight,
                None if *weight == 0.0 => {}
                None => {
                    return Err(OperatorError::MissingAttribute {
                        attribute: attribute.clone(),
                        weight: *weight,
                        available: attribute_names.join(", "),
                    })
                }
            }
        }
        Ok(BoundGoodness { dense })
    }
}

/// Weights laid out in a scorer's attribute order.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundGoodness {
    dense: Vec<f64>,
}

impl BoundGoodness {
    /// Goodness of one response: the dot product of weights and attributes.
    /// Any NaN attribute with a non-zero weight makes the goodness NaN, which pair selection
    /// then excludes and reports; it is never replaced by a number.
    pub fn goodness(&self, attributes: &[f64]) -> f64 {
        debug_assert_eq!(attributes.len(), self.dense.len());
        self.dense
            .iter()
            .zip(attributes)
            .filter(|(w, _)| **w != 0.0)
            .map(|(w, a)| w * a)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::{HELPSTEER2, NEMO_NINE};

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn helpsteer2_paper_matches_hand_computation() {
        let g = GoodnessWeights::preset("helpsteer2-paper")
            .unwrap()
            .bind(&names(&HELPSTEER2))
            .unwrap();
        // 0.65*4 + 0.8*3 + 0.45*2 = 2.6 + 2.4 + 0.9 = 5.9; complexity and verbosity ignored.
        assert!((g.goodness(&[4.0, 3.0, 2.0, 1.0, 0.5]) - 5.9).abs() < 1e-12);
        assert_eq!(g.goodness(&[0.0; 5]), 0.0);
    }

    #[test]
    fn steerlm_card_on_nine_outputs() {
        let g = GoodnessWeights::preset("steerlm-rm-card")
            .unwrap()
            .bind(&names(&NEMO_NINE))
            .unwrap();
        // quality..creativity count zero even when large.
        let outputs = [9.0, 9.0, 9.0, 9.0, 3.0, 2.0, 4.0, 1.0, 2.5];
        // 0.65*3 + 0.8*2 + 0.45*4 + 0.55*1 - 0.4*2.5 = 1.95 + 1.6 + 1.8 + 0.55 - 1.0 = 4.9
        assert!((g.goodness(&outputs) - 4.9).abs() < 1e-12);
    }

    #[test]
    fn steerlm_card_on_five_attributes_drops_zero_weights() {
        let g = GoodnessWeights::preset("steerlm-rm-card")
            .unwrap()
            .bind(&names(&HELPSTEER2))
            .unwrap();
        let attrs = [3.0, 2.0, 4.0, 1.0, 2.5];
        assert!((g.goodness(&attrs) - 4.9).abs() < 1e-12);
    }

    #[test]
    fn custom_weights_and_missing_attribute() {
        let w = GoodnessWeights::custom([("verbosity".to_string(), -1.0)]).unwrap();
        let g = w.bind(&names(&HELPSTEER2)).unwrap();
        assert_eq!(g.goodness(&[0.0, 0.0, 0.0, 0.0, 2.0]), -2.0);
        let w = GoodnessWeights::custom([("humor".to_string(), 1.0)]).unwrap();
        assert!(matches!(
            w.bind(&names(&HELPSTEER2)),
            Err(OperatorError::MissingAttribute { .. })
        ));
        assert!(GoodnessWeights::custom([("humor".to_string(), f64::NAN)]).is_err());
        assert!(GoodnessWeights::preset("nope").is_err());
    }

    #[test]
    fn nan_attribute_gives_nan_goodness() {
        let g = GoodnessWeights::preset("helpsteer2-paper")
            .unwrap()
            .bind(&names(&HELPSTEER2))
            .unwrap();
        assert!(g.goodness(&[f64::NAN, 1.0, 1.0, 1.0, 1.0]).is_nan());
        // A NaN in an attribute with zero weight does not matter.
        assert!(!g.goodness(&[1.0, 1.0, 1.0, f64::NAN, 1.0]).is_nan());
    }
}
