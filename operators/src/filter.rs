//! Filtering and ranking a scored corpus: thresholds on any score, top-k per prompt, and a
//! quantile over the run. Every row gets its rank among its prompt's responses (1 = highest
//! goodness, ties by input order, unscored last); the rules run in a fixed order (unscored,
//! thresholds in name order, top-k, quantile) and each removal is counted against the rule that
//! made it.

use std::collections::BTreeMap;

/// The rules of a filter-rank job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterRules {
    /// Keep rows whose score `name` is at least the value.
    pub min: BTreeMap<String, f64>,
    /// Keep rows whose score `name` is at most the value.
    pub max: BTreeMap<String, f64>,
    /// Keep the k best responses of each prompt (by goodness).
    pub top_k: Option<usize>,
    /// Keep rows whose goodness is at least this quantile of the run's goodness (0.5 = top half).
    pub quantile: Option<f64>,
}

/// One scored row as the filter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRow {
    pub prompt_id: String,
    pub goodness: f64,
    /// Every score by name (attributes, `goodness`, `normalized_goodness`).
    pub scores: BTreeMap<String, f64>,
}

/// The outcome for each row, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterOutcome {
    pub kept: Vec<bool>,
    pub rank: Vec<u32>,
    /// Rows removed, by rule (`unscored`, `min.helpfulness`, `max.verbosity`, `top_k`, `quantile`).
    pub removed_by: BTreeMap<String, u64>,
    /// The goodness threshold the quantile rule used.
    pub quantile_threshold: Option<f64>,
}

/// The q-quantile with linear interpolation between order statistics (numpy's default).
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Rank of each row among its prompt's rows: 1 = highest goodness; ties by input order; NaN last.
pub fn ranks(rows: &[FilterRow]) -> Vec<u32> {
    let mut by_prompt: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        by_prompt.entry(r.prompt_id.as_str()).or_default().push(i);
    }
    let mut rank = vec![0u32; rows.len()];
    for members in by_prompt.values_mut() {
        members.sort_by(|&a, &b| {
            let (ga, gb) = (rows[a].goodness, rows[b].goodness);
            match (ga.is_finite(), gb.is_finite()) {
                (true, true) => gb.total_cmp(&ga).then(a.cmp(&b)),
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
                (false, false) => a.cmp(&b),
            }
        });
        for (k, &i) in members.iter().enumerate() {
            rank[i] = k as u32 + 1;
        }
    }
    rank
}

/// Applies `rules` to `rows`.
pub fn apply_filters(rows: &[FilterRow], rules: &FilterRules) -> FilterOutcome {
    let rank = ranks(rows);
    let mut kept = vec![true; rows.len()];
    let mut removed_by: BTreeMap<String, u64> = BTreeMap::new();
    let mut remove = |kept: &mut Vec<bool>, i: usize, rule: String| {
        if kept[i] {
            kept[i] = false;
            *removed_by.entry(rule).or_default() += 1;
        }
    };
    for (i, r) in rows.iter().enumerate() {
        if !r.goodness.is_finite() {
            remove(&mut kept, i, "unscored".into());
        }
    }
    for (name, bound) in &rules.min {
        for (i, r) in rows.iter().enumerate() {
            if !r.scores.get(name).is_some_and(|v| v >= bound) {
                remove(&mut kept, i, format!("min.{name}"));
            }
        }
    }
    for (name, bound) in &rules.max {
        for (i, r) in rows.iter().enumerate() {
            if !r.scores.get(name).is_some_and(|v| v <= bound) {
                remove(&mut kept, i, format!("max.{name}"));
            }
        }
    }
    if let Some(k) = rules.top_k {
        for (i, &r) in rank.iter().enumerate() {
            if r as usize > k {
                remove(&mut kept, i, "top_k".into());
            }
        }
    }
    let goodness: Vec<f64> = rows.iter().map(|r| r.goodness).collect();
    let quantile_threshold = rules.quantile.and_then(|q| quantile(&goodness, q));
    if let Some(threshold) = quantile_threshold {
        for (i, r) in rows.iter().enumerate() {
            if r.goodness < threshold {
                remove(&mut kept, i, "quantile".into());
            }
        }
    }
    FilterOutcome {
        kept,
        rank,
        removed_by,
        quantile_threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prompt: &str, goodness: f64, verbosity: f64) -> FilterRow {
        let scores = BTreeMap::from([
            ("goodness".to_string(), goodness),
            ("verbosity".to_string(), verbosity),
        ]);
        FilterRow {
            prompt_id: prompt.into(),
            goodness,
            scores,
        }
    }

    fn corpus() -> Vec<FilterRow> {
        vec![
            row("a", 3.0, 1.0),
            row("a", 5.0, 3.5),
            row("a", 4.0, 2.0),
            row("b", 1.0, 0.0),
            row("b", f64::NAN, 1.0),
            row("b", 1.0, 1.0),
        ]
    }

    #[test]
    fn ranks_within_prompt_ties_by_order_nan_last() {
        assert_eq!(ranks(&corpus()), vec![3, 1, 2, 1, 3, 2]);
    }

    #[test]
    fn each_rule_alone() {
        let rows = corpus();
        let only_unscored = apply_filters(&rows, &FilterRules::default());
        assert_eq!(
            only_unscored.kept,
            vec![true, true, true, true, false, true]
        );
        assert_eq!(
            only_unscored.removed_by,
            BTreeMap::from([("unscored".to_string(), 1)])
        );

        let min = FilterRules {
            min: BTreeMap::from([("goodness".to_string(), 3.5)]),
            ..Default::default()
        };
        assert_eq!(
            apply_filters(&rows, &min).kept,
            vec![false, true, true, false, false, false]
        );

        let max = FilterRules {
            max: BTreeMap::from([("verbosity".to_string(), 2.0)]),
            ..Default::default()
        };
        let out = apply_filters(&rows, &max);
        assert_eq!(out.kept, vec![true, false, true, true, false, true]);
        assert_eq!(out.removed_by["max.verbosity"], 1);

        let top = FilterRules {
            top_k: Some(1),
            ..Default::default()
        };
        assert_eq!(
            apply_filters(&rows, &top).kept,
            vec![false, true, false, true, false, false]
        );

        // Finite goodness 3, 5, 4, 1, 1: the median is 3.
        let half = FilterRules {
            quantile: Some(0.5),
            ..Default::default()
        };
        let out = apply_filters(&rows, &half);
        assert_eq!(out.quantile_threshold, Some(3.0));
        assert_eq!(out.kept, vec![true, true, true, false, false, false]);
        assert_eq!(out.removed_by["quantile"], 2);
    }

    #[test]
    fn removals_are_counted_once_by_the_first_rule() {
        let rules = FilterRules {
            top_k: Some(2),
            quantile: Some(0.5),
            ..Default::default()
        };
        let out = apply_filters(&corpus(), &rules);
        assert_eq!(out.kept, vec![false, true, true, false, false, false]);
        let total: u64 = out.removed_by.values().sum();
        assert_eq!(total, 4);
        assert_eq!(out.removed_by["top_k"], 1);
        assert_eq!(out.removed_by["quantile"], 2);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.5));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.25), Some(1.75));
        assert_eq!(quantile(&[f64::NAN], 0.5), None);
    }
}
