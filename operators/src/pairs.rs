//! Chosen/rejected selection for iterative DPO (HelpSteer2 paper, section 4.3):
//! of a prompt's scored responses, chosen = highest goodness, rejected = lowest.
//!
//! The paper is silent on ties; steerflow drops a prompt whose best and worst are not more than
//! `min_margin` apart, and says why. Responses with NaN goodness are never chosen or rejected.

use serde::{Deserialize, Serialize};

/// A scored response as pair selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub sample_index: u32,
    pub goodness: f64,
    pub text: &'a str,
}

/// Why a prompt produced no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Fewer than two responses had a finite goodness.
    TooFewScored,
    /// Best and worst goodness are equal or within `min_margin`.
    MarginTooSmall,
    /// Best and worst responses have the same text.
    IdenticalResponses,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooFewScored => "too_few_scored",
            DropReason::MarginTooSmall => "margin_too_small",
            DropReason::IdenticalResponses => "identical_responses",
        }
    }
}

/// The outcome for one prompt: indices into the candidate slice, or a reason.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSelection {
    pub decision: Result<ChosenRejected, DropReason>,
    /// How many candidates had NaN or infinite goodness and were excluded.
    pub non_finite: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChosenRejected {
    pub chosen: usize,
    pub rejected: usize,
    pub margin: f64,
}

/// Picks chosen = max goodness (ties: lowest sample index) and rejected = min goodness
/// (ties: highest sample index), so the result does not depend on the order of `candidates`.
/// Keeps the pair only when `chosen - rejected > min_margin`.
pub fn select_pair(candidates: &[Candidate<'_>], min_margin: f64) -> PairSelection {
    let finite: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].goodness.is_finite())
        .collect();
    let non_finite = candidates.len() - finite.len();
    if finite.len() < 2 {
        return PairSelection {
            decision: Err(DropReason::TooFewScored),
            non_finite,
        };
    }
    let rank = |i: &usize| {
        (
            candidates[*i].goodness,
            std::cmp::Reverse(candidates[*i].sample_index),
        )
    };
    let by_rank = |a: &usize, b: &usize| {
        let (ga, ia) = rank(a);
        let (gb, ib) = rank(b);
        ga.total_cmp(&gb).then(ia.cmp(&ib))
    };
    // Highest goodness, lowest index among equals.
    let chosen = *finite
        .iter()
        .max_by(|a, b| by_rank(a, b))
        .expect("two or more finite");
    // Lowest goodness, highest index among equals.
    let rejected = *finite
        .iter()
        .min_by(|a, b| by_rank(a, b))
        .expect("two or more finite");
    let margin = candidates[chosen].goodness - candidates[rejected].goodness;
    let decision = if margin <= min_margin {
        Err(DropReason::MarginTooSmall)
    } else if candidates[chosen].text == candidates[rejected].text {
        Err(DropReason::IdenticalResponses)
    } else {
        Ok(ChosenRejected {
            chosen,
            rejected,
            margin,
        })
    };
    PairSelection {
        decision,
        non_finite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(scores: &[f64]) -> Vec<Candidate<'static>> {
        const TEXTS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
        scores
            .iter()
            .enumerate()
            .map(|(i, &g)| Candidate {
                sample_index: i as u32,
                goodness: g,
                text: TEXTS[i],
            })
            .collect()
    }

    #[test]
    fn best_and_worst() {
        let s = select_pair(&cands(&[1.0, 3.0, 0.5, 2.0]), 0.0);
        let p = s.decision.unwrap();
        assert_eq!((p.chosen, p.rejected), (1, 2));
        assert_eq!(p.margin, 2.5);
    }

    #[test]
    fn ties_break_by_sample_index_whatever_the_order() {
        let c = cands(&[2.0, 1.0, 2.0, 1.0]);
        let p = select_pair(&c, 0.0).decision.unwrap();
        assert_eq!(
            (c[p.chosen].sample_index, c[p.rejected].sample_index),
            (0, 3)
        );
        let mut reversed = c.clone();
        reversed.reverse();
        let q = select_pair(&reversed, 0.0).decision.unwrap();
        assert_eq!(
            (
                reversed[q.chosen].sample_index,
                reversed[q.rejected].sample_index
            ),
            (0, 3)
        );
    }

    #[test]
    fn margin_rule() {
        assert_eq!(
            select_pair(&cands(&[1.0, 1.0]), 0.0).decision,
            Err(DropReason::MarginTooSmall)
        );
        assert_eq!(
            select_pair(&cands(&[1.0, 1.5]), 0.5).decision,
            Err(DropReason::MarginTooSmall)
        );
        assert!(select_pair(&cands(&[1.0, 1.5]), 0.49).decision.is_ok());
    }

    #[test]
    fn nan_is_never_chosen_and_is_counted() {
        let s = select_pair(&cands(&[f64::NAN, 1.0, 2.0, f64::INFINITY]), 0.0);
        assert_eq!(s.non_finite, 2);
        let p = s.decision.unwrap();
        assert_eq!((p.chosen, p.rejected), (2, 1));
        let s = select_pair(&cands(&[f64::NAN, 1.0]), 0.0);
        assert_eq!(s.decision, Err(DropReason::TooFewScored));
        assert_eq!(s.non_finite, 1);
    }

    #[test]
    fn identical_texts_are_not_a_pair() {
        let c = vec![
            Candidate {
                sample_index: 0,
                goodness: 1.0,
                text: "same",
            },
            Candidate {
                sample_index: 1,
                goodness: 2.0,
                text: "same",
            },
        ];
        assert_eq!(
            select_pair(&c, 0.0).decision,
            Err(DropReason::IdenticalResponses)
        );
    }
}
