//! Pair selection on small score tables worked out by hand.

use super::*;

const TEXTS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn cands(scores: &[f64]) -> Vec<Candidate<'static>> {
    sized(scores, &[10; 6])
}

fn sized(scores: &[f64], tokens: &[u32]) -> Vec<Candidate<'static>> {
    scores
        .iter()
        .enumerate()
        .map(|(i, &g)| Candidate {
            sample_index: i as u32,
            goodness: g,
            tokens: tokens[i],
            text: TEXTS[i],
        })
        .collect()
}

fn rule(strategy: PairStrategy) -> PairRule {
    PairRule {
        strategy,
        ..PairRule::best_vs_worst(0.0)
    }
}

/// (chosen sample index, rejected sample index, margin) of each pair.
fn picked(c: &[Candidate<'_>], rule: &PairRule, draw: u64) -> Vec<(u32, u32, f64)> {
    select_pairs(c, rule, draw)
        .decision
        .unwrap()
        .iter()
        .map(|p| {
            (
                c[p.chosen].sample_index,
                c[p.rejected].sample_index,
                p.margin,
            )
        })
        .collect()
}

#[test]
fn best_and_worst() {
    let s = select_pair(&cands(&[1.0, 3.0, 0.5, 2.0]), 0.0);
    let p = s.decision.unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].chosen, p[0].rejected), (1, 2));
    assert_eq!(p[0].margin, 2.5);
}

#[test]
fn ties_break_by_sample_index_whatever_the_order() {
    let c = cands(&[2.0, 1.0, 2.0, 1.0]);
    assert_eq!(
        picked(&c, &PairRule::best_vs_worst(0.0), 0),
        vec![(0, 3, 1.0)]
    );
    let mut reversed = c.clone();
    reversed.reverse();
    assert_eq!(
        picked(&reversed, &PairRule::best_vs_worst(0.0), 0),
        vec![(0, 3, 1.0)]
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
    let c = cands(&[f64::NAN, 1.0, 2.0, f64::INFINITY]);
    let s = select_pair(&c, 0.0);
    assert_eq!(s.non_finite, 2);
    let p = s.decision.unwrap();
    assert_eq!((p[0].chosen, p[0].rejected), (2, 1));
    let s = select_pair(&cands(&[f64::NAN, 1.0]), 0.0);
    assert_eq!(s.decision, Err(DropReason::TooFewScored));
    assert_eq!(s.non_finite, 1);
}

#[test]
fn identical_texts_are_not_a_pair() {
    let same = |i: u32, g: f64| Candidate {
        sample_index: i,
        goodness: g,
        tokens: 3,
        text: "same",
    };
    assert_eq!(
        select_pair(&[same(0, 1.0), same(1, 2.0)], 0.0).decision,
        Err(DropReason::IdenticalResponses)
    );
    // With a third response, best-vs-worst takes the largest margin that is a real pair.
    let c = [
        same(0, 1.0),
        same(1, 3.0),
        Candidate {
            text: "other",
            ..same(2, 2.0)
        },
    ];
    assert_eq!(
        picked(&c, &PairRule::best_vs_worst(0.0), 0),
        vec![(1, 2, 1.0)]
    );
}

#[test]
fn best_vs_random_draws_among_the_eligible_rejected() {
    // Scores by sample index: 0:4, 1:1, 2:3, 3:3.9, 4:2. Best is 0; with min_margin 0.5 the
    // eligible rejected are 1, 2 and 4 (3 is within 0.1), in sample-index order.
    let c = cands(&[4.0, 1.0, 3.0, 3.9, 2.0]);
    let r = PairRule {
        min_margin: 0.5,
        ..rule(PairStrategy::BestVsRandom)
    };
    assert_eq!(picked(&c, &r, 0), vec![(0, 1, 3.0)]);
    assert_eq!(picked(&c, &r, 1), vec![(0, 2, 1.0)]);
    assert_eq!(picked(&c, &r, 2), vec![(0, 4, 2.0)]);
    assert_eq!(picked(&c, &r, 5), vec![(0, 4, 2.0)]);
}

#[test]
fn random_pair_draws_among_all_eligible_pairs() {
    // Scores 0:1, 1:3, 2:2. Eligible (chosen, rejected), ordered by (chosen, rejected) index:
    // (1,0) margin 2, (1,2) margin 1, (2,0) margin 1.
    let c = cands(&[1.0, 3.0, 2.0]);
    let r = rule(PairStrategy::RandomPair);
    assert_eq!(picked(&c, &r, 0), vec![(1, 0, 2.0)]);
    assert_eq!(picked(&c, &r, 1), vec![(1, 2, 1.0)]);
    assert_eq!(picked(&c, &r, 2), vec![(2, 0, 1.0)]);
    assert_eq!(picked(&c, &r, 3), vec![(1, 0, 2.0)]);
    // Equal scores are never a pair: only (1, 0) remains with 0 and 2 tied.
    let tied = cands(&[1.0, 3.0, 1.0]);
    for draw in 0..4 {
        assert_eq!(picked(&tied, &r, draw).len(), 1);
        assert_eq!(picked(&tied, &r, draw)[0].0, 1);
    }
}

#[test]
fn best_vs_kth_takes_the_kth_ranked() {
    // Ranked: 1 (5.0), 3 (4.0), 0 (3.0), 2 (1.0).
    let c = cands(&[3.0, 5.0, 1.0, 4.0]);
    let kth = |k| rule(PairStrategy::BestVsKth { k });
    assert_eq!(picked(&c, &kth(2), 0), vec![(1, 3, 1.0)]);
    assert_eq!(picked(&c, &kth(3), 0), vec![(1, 0, 2.0)]);
    assert_eq!(picked(&c, &kth(4), 0), vec![(1, 2, 4.0)]);
    assert_eq!(
        select_pairs(&c, &kth(5), 0).decision,
        Err(DropReason::TooFewScored)
    );
    let r = PairRule {
        min_margin: 1.5,
        ..kth(2)
    };
    assert_eq!(
        select_pairs(&c, &r, 0).decision,
        Err(DropReason::MarginTooSmall)
    );
}

#[test]
fn all_pairs_above_the_margin_largest_first_up_to_k() {
    // Scores 0:1, 1:4, 2:2, 3:3.5. Pairs with margin > 1: (1,0) 3, (3,0) 2.5, (1,2) 2,
    // (3,2) 1.5; (2,0) and (1,3) have margin 1 and 0.5.
    let c = cands(&[1.0, 4.0, 2.0, 3.5]);
    let all = |max_per_prompt| PairRule {
        min_margin: 1.0,
        ..rule(PairStrategy::AllPairs { max_per_prompt })
    };
    assert_eq!(
        picked(&c, &all(10), 0),
        vec![(1, 0, 3.0), (3, 0, 2.5), (1, 2, 2.0), (3, 2, 1.5)]
    );
    assert_eq!(picked(&c, &all(2), 0), vec![(1, 0, 3.0), (3, 0, 2.5)]);
    let r = PairRule {
        min_margin: 5.0,
        ..all(3)
    };
    assert_eq!(
        select_pairs(&c, &r, 0).decision,
        Err(DropReason::MarginTooSmall)
    );
}

#[test]
fn length_penalty_ranks_by_goodness_minus_tokens() {
    // Goodness 0:3.0 (100 tokens), 1:2.5 (10 tokens), 2:1.0 (20 tokens). With 0.01 per token
    // the scores are 2.0, 2.4 and 0.8: the short response 1 becomes the best.
    let c = sized(&[3.0, 2.5, 1.0], &[100, 10, 20]);
    let r = PairRule {
        length_penalty: 0.01,
        ..PairRule::best_vs_worst(0.0)
    };
    let p = picked(&c, &r, 0);
    assert_eq!((p[0].0, p[0].1), (1, 2));
    assert!((p[0].2 - 1.6).abs() < 1e-12, "{}", p[0].2);
    // Without the penalty: 0 against 2.
    assert_eq!(picked(&c, &PairRule::best_vs_worst(0.0), 0)[0].0, 0);
}

#[test]
fn length_bound_keeps_pairs_of_similar_length() {
    // Goodness 0:5 (200 tokens), 1:1 (20 tokens), 2:2 (190 tokens), 3:4 (30 tokens).
    let c = sized(&[5.0, 1.0, 2.0, 4.0], &[200, 20, 190, 30]);
    let bounded = |strategy, bound| PairRule {
        max_length_difference: Some(bound),
        ..rule(strategy)
    };
    // Best against worst is 0 vs 1 (180 tokens apart); within 15 tokens the largest margin is
    // 3 vs 1 (4 - 1 = 3, 10 tokens apart) over 0 vs 2 (5 - 2 = 3, also 10 apart): equal
    // margins, the better-ranked chosen (0) first.
    assert_eq!(
        picked(&c, &bounded(PairStrategy::BestVsWorst, 15), 0),
        vec![(0, 2, 3.0)]
    );
    assert_eq!(
        picked(
            &c,
            &bounded(PairStrategy::AllPairs { max_per_prompt: 5 }, 15),
            0
        ),
        vec![(0, 2, 3.0), (3, 1, 3.0)]
    );
    // The best against the runner-up (0 vs 3) is 170 tokens apart.
    assert_eq!(
        select_pairs(&c, &bounded(PairStrategy::BestVsKth { k: 2 }, 15), 0).decision,
        Err(DropReason::LengthDifference)
    );
    // Nothing within 5 tokens: the reason is best-vs-worst's.
    assert_eq!(
        select_pairs(&c, &bounded(PairStrategy::BestVsWorst, 5), 0).decision,
        Err(DropReason::LengthDifference)
    );
}

#[test]
fn rules_round_trip_through_serde() {
    let r = PairRule {
        strategy: PairStrategy::AllPairs { max_per_prompt: 3 },
        min_margin: 0.5,
        length_penalty: 0.001,
        max_length_difference: Some(64),
        max_similarity: Some(0.8),
    };
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["strategy"], "all-pairs");
    assert_eq!(json["max_per_prompt"], 3);
    assert_eq!(serde_json::from_value::<PairRule>(json).unwrap(), r);
}

#[test]
fn near_identical_responses_are_not_paired_when_asked() {
    let base: Vec<String> = (0..30).map(|i| format!("word{i}")).collect();
    let mut edited = base.clone();
    edited[15] = "other".into();
    let (a, b, far) = (
        base.join(" "),
        edited.join(" "),
        "a different answer altogether here".to_string(),
    );
    let c = [
        Candidate {
            sample_index: 0,
            goodness: 3.0,
            tokens: 30,
            text: &a,
        },
        Candidate {
            sample_index: 1,
            goodness: 1.0,
            tokens: 30,
            text: &b,
        },
        Candidate {
            sample_index: 2,
            goodness: 2.0,
            tokens: 5,
            text: &far,
        },
    ];
    // 30 words, one changed: 21 of 31 distinct 5-grams shared.
    let s = response_similarity(&a, &b);
    assert!((s - 21.0 / 31.0).abs() < 1e-12, "{s}");
    assert_eq!(
        picked(&c, &PairRule::best_vs_worst(0.0), 0),
        vec![(0, 1, 2.0)]
    );
    let strict = |strategy| PairRule {
        max_similarity: Some(0.6),
        ..rule(strategy)
    };
    // Best against worst is near-identical: the largest eligible margin instead.
    assert_eq!(
        picked(&c, &strict(PairStrategy::BestVsWorst), 0),
        vec![(0, 2, 1.0)]
    );
    assert_eq!(
        select_pairs(&c[..2], &strict(PairStrategy::BestVsWorst), 0).decision,
        Err(DropReason::NearIdenticalResponses)
    );
    assert_eq!(
        picked(&c, &strict(PairStrategy::AllPairs { max_per_prompt: 5 }), 0),
        vec![(0, 2, 1.0), (2, 1, 1.0)]
    );
    let lenient = PairRule {
        max_similarity: Some(0.7),
        ..rule(PairStrategy::BestVsWorst)
    };
    assert_eq!(picked(&c, &lenient, 0), vec![(0, 1, 2.0)]);
}
