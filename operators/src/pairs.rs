//! Chosen/rejected selection for iterative DPO.
//!
//! The HelpSteer2 paper (section 4.3) pairs a prompt's best response with its worst; Online-RLHF
//! also trains with best-vs-random, random pairs and a length penalty. A [`PairRule`] says which:
//! - the **selection score** of a response is its goodness minus `length_penalty` × its tokens
//!   (Online-RLHF's "max-min with length penalty"; 0 by default, so the score is the goodness);
//! - a pair is **eligible** when its score margin is above `min_margin`, its two texts differ,
//!   their lengths differ by at most `max_length_difference` tokens and their word 5-gram
//!   Jaccard similarity is below `max_similarity` (each when set);
//! - the [`PairStrategy`] picks among the eligible pairs, with a seeded draw per prompt where it
//!   is random, so the choice is the same for any cluster shape.
//!
//! Ranks break ties by sample index (lower first among equal scores), so nothing depends on the
//! order of the candidates. Responses with NaN or infinite scores are never paired.

use serde::{Deserialize, Serialize};

/// A scored response as pair selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub sample_index: u32,
    pub goodness: f64,
    /// The response's length in tokens (for the length penalty and bound).
    pub tokens: u32,
    pub text: &'a str,
}

/// Which eligible pairs a prompt yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "strategy")]
pub enum PairStrategy {
    /// The eligible pair with the largest margin: without a length bound, best and worst
    /// (HelpSteer2; Online-RLHF's max-min).
    BestVsWorst,
    /// The best response against a seeded draw among those it forms an eligible pair with
    /// (Online-RLHF's max-random).
    BestVsRandom,
    /// A seeded draw among all eligible pairs (Online-RLHF's random).
    RandomPair,
    /// The best response against the `k`-th best (k ≥ 2; k = 2 is the runner-up).
    BestVsKth { k: u32 },
    /// Every eligible pair, largest margins first, at most `max_per_prompt` of them.
    AllPairs { max_per_prompt: u32 },
}

impl PairStrategy {
    pub fn name(&self) -> &'static str {
        match self {
            PairStrategy::BestVsWorst => "best-vs-worst",
            PairStrategy::BestVsRandom => "best-vs-random",
            PairStrategy::RandomPair => "random-pair",
            PairStrategy::BestVsKth { .. } => "best-vs-kth",
            PairStrategy::AllPairs { .. } => "all-pairs",
        }
    }
}

/// How a prompt's responses become pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairRule {
    #[serde(flatten)]
    pub strategy: PairStrategy,
    /// A pair needs `chosen score - rejected score > min_margin`.
    pub min_margin: f64,
    /// Goodness points taken off per response token before ranking.
    pub length_penalty: f64,
    /// The most tokens by which chosen and rejected may differ in length.
    pub max_length_difference: Option<u32>,
    /// Near-identical responses are not paired: a pair needs the Jaccard similarity of its
    /// responses' word 5-gram sets (normalised text) below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_similarity: Option<f64>,
}

impl PairRule {
    /// Best against worst by goodness, any margin above `min_margin`, no length control.
    pub fn best_vs_worst(min_margin: f64) -> Self {
        Self {
            strategy: PairStrategy::BestVsWorst,
            min_margin,
            length_penalty: 0.0,
            max_length_difference: None,
            max_similarity: None,
        }
    }
}

/// Why a prompt produced no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Fewer than two responses (fewer than k for best-vs-kth) had a finite score.
    TooFewScored,
    /// The candidate pair's scores are equal or within `min_margin`.
    MarginTooSmall,
    /// The candidate pair's responses have the same text.
    IdenticalResponses,
    /// The candidate pair's lengths differ by more than `max_length_difference`.
    LengthDifference,
    /// The candidate pair's responses are at least `max_similarity` alike.
    NearIdenticalResponses,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooFewScored => "too_few_scored",
            DropReason::MarginTooSmall => "margin_too_small",
            DropReason::IdenticalResponses => "identical_responses",
            DropReason::LengthDifference => "length_difference",
            DropReason::NearIdenticalResponses => "near_identical_responses",
        }
    }
}

/// The Jaccard similarity of two responses' word 5-gram sets, after the default normalisation
/// (`dedup::TextNorm`).
pub fn response_similarity(a: &str, b: &str) -> f64 {
    let norm = crate::dedup::TextNorm::default();
    crate::dedup::jaccard::jaccard(
        &norm.apply(a),
        &norm.apply(b),
        crate::dedup::ShingleUnit::Words,
        5,
    )
}

/// One pair: indices into the candidate slice, and the margin of their selection scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChosenRejected {
    pub chosen: usize,
    pub rejected: usize,
    pub margin: f64,
}

/// The outcome for one prompt: its pairs (one or more), or why it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSelection {
    pub decision: Result<Vec<ChosenRejected>, DropReason>,
    /// How many candidates had a NaN or infinite score and were excluded.
    pub non_finite: usize,
}

/// Picks best and worst by goodness (ties: lowest sample index is best, highest is worst),
/// keeping the pair only when `chosen - rejected > min_margin`.
pub fn select_pair(candidates: &[Candidate<'_>], min_margin: f64) -> PairSelection {
    select_pairs(candidates, &PairRule::best_vs_worst(min_margin), 0)
}

/// The pairs `rule` takes from `candidates`; `draw` is the prompt's seeded random number
/// (`seeding::pair_draw`), used by the random strategies only.
pub fn select_pairs(candidates: &[Candidate<'_>], rule: &PairRule, draw: u64) -> PairSelection {
    let score =
        |i: usize| candidates[i].goodness - rule.length_penalty * f64::from(candidates[i].tokens);
    // Best first: highest score, lowest sample index among equals.
    let mut ranked: Vec<usize> = (0..candidates.len())
        .filter(|&i| score(i).is_finite())
        .collect();
    ranked.sort_by(|&a, &b| {
        score(b)
            .total_cmp(&score(a))
            .then(candidates[a].sample_index.cmp(&candidates[b].sample_index))
    });
    let non_finite = candidates.len() - ranked.len();
    let decision = if ranked.len() < 2 {
        Err(DropReason::TooFewScored)
    } else {
        choose(candidates, rule, draw, &ranked, &score)
    };
    PairSelection {
        decision,
        non_finite,
    }
}

fn choose(
    candidates: &[Candidate<'_>],
    rule: &PairRule,
    draw: u64,
    ranked: &[usize],
    score: &dyn Fn(usize) -> f64,
) -> Result<Vec<ChosenRejected>, DropReason> {
    let check = |c: usize, r: usize| -> Result<ChosenRejected, DropReason> {
        let margin = score(c) - score(r);
        let (a, b) = (&candidates[c], &candidates[r]);
        if margin.is_nan() || margin <= rule.min_margin {
            Err(DropReason::MarginTooSmall)
        } else if a.text == b.text {
            Err(DropReason::IdenticalResponses)
        } else if rule
            .max_length_difference
            .is_some_and(|bound| a.tokens.abs_diff(b.tokens) > bound)
        {
            Err(DropReason::LengthDifference)
        } else if rule
            .max_similarity
            .is_some_and(|t| response_similarity(a.text, b.text) >= t)
        {
            Err(DropReason::NearIdenticalResponses)
        } else {
            Ok(ChosenRejected {
                chosen: c,
                rejected: r,
                margin,
            })
        }
    };
    let best = ranked[0];
    let worst = ranked[ranked.len() - 1];
    // When nothing is eligible, the reason is that of the pair the strategy prefers most.
    // (Every strategy that uses it keeps that pair when it is eligible, so it is not.)
    let fallback = |preferred: (usize, usize)| {
        check(preferred.0, preferred.1)
            .err()
            .unwrap_or(DropReason::MarginTooSmall)
    };
    let nonempty = |pairs: Vec<ChosenRejected>, preferred| {
        if pairs.is_empty() {
            Err(fallback(preferred))
        } else {
            Ok(pairs)
        }
    };
    match rule.strategy {
        PairStrategy::BestVsWorst => {
            let mut eligible = eligible_by_margin(ranked, &check);
            eligible.truncate(1);
            nonempty(eligible, (best, worst))
        }
        PairStrategy::AllPairs { max_per_prompt } => {
            let mut eligible = eligible_by_margin(ranked, &check);
            eligible.truncate(max_per_prompt as usize);
            nonempty(eligible, (best, worst))
        }
        PairStrategy::BestVsRandom => {
            let mut eligible: Vec<ChosenRejected> = ranked[1..]
                .iter()
                .filter_map(|&r| check(best, r).ok())
                .collect();
            eligible.sort_by_key(|p| candidates[p.rejected].sample_index);
            nonempty(pick(eligible, draw), (best, worst))
        }
        PairStrategy::RandomPair => {
            let mut eligible = eligible_by_margin(ranked, &check);
            eligible.sort_by_key(|p| {
                (
                    candidates[p.chosen].sample_index,
                    candidates[p.rejected].sample_index,
                )
            });
            nonempty(pick(eligible, draw), (best, worst))
        }
        PairStrategy::BestVsKth { k } => {
            let Some(&kth) = ranked.get((k as usize).saturating_sub(1).max(1)) else {
                return Err(DropReason::TooFewScored);
            };
            check(best, kth).map(|p| vec![p])
        }
    }
}

/// Every eligible pair (chosen ranked above rejected), largest margin first; among equal
/// margins the better-ranked chosen, then the worse-ranked rejected, first. Without a length
/// bound the first is best against worst.
fn eligible_by_margin(
    ranked: &[usize],
    check: &dyn Fn(usize, usize) -> Result<ChosenRejected, DropReason>,
) -> Vec<ChosenRejected> {
    let mut pairs = Vec::new();
    for (i, &c) in ranked.iter().enumerate() {
        for (j, &r) in ranked.iter().enumerate().skip(i + 1) {
            if let Ok(p) = check(c, r) {
                pairs.push((i, j, p));
            }
        }
    }
    pairs.sort_by(|(ia, ja, a), (ib, jb, b)| {
        b.margin
            .total_cmp(&a.margin)
            .then(ia.cmp(ib))
            .then(jb.cmp(ja))
    });
    pairs.into_iter().map(|(_, _, p)| p).collect()
}

/// One of `pairs`, chosen by `draw` (none when there are none).
fn pick(pairs: Vec<ChosenRejected>, draw: u64) -> Vec<ChosenRejected> {
    if pairs.is_empty() {
        return pairs;
    }
    let k = (draw % pairs.len() as u64) as usize;
    vec![pairs[k]]
}

#[cfg(test)]
#[path = "pairs_tests.rs"]
mod tests;
