//! Reward-model evaluation on a preference set, as RewardBench scores it (HelpSteer2 paper,
//! section 3; REFERENCE.md, "Recipes"): a case is correct when the chosen response scores
//! strictly higher than the rejected one; ties (and NaN scores) count as wrong and are reported.
//! Accuracy per subset and per category (subsets mapped to Chat, Chat-Hard, Safety, Reasoning);
//! Overall is the mean of the category accuracies. Category accuracy weighs every case equally.
//! Scores are only ever compared within a case, so scalar rewards are used correctly.

use serde::Serialize;
use std::collections::BTreeMap;

/// The four RewardBench categories and their subsets (RewardBench's primary set; Prior Sets
/// are excluded from Overall, as the SteerLM cards do).
pub fn rewardbench_categories() -> BTreeMap<String, String> {
    let table: [(&str, &[&str]); 4] = [
        (
            "Chat",
            &[
                "alpacaeval-easy",
                "alpacaeval-length",
                "alpacaeval-hard",
                "mt-bench-easy",
                "mt-bench-med",
            ],
        ),
        (
            "Chat-Hard",
            &[
                "mt-bench-hard",
                "llmbar-natural",
                "llmbar-adver-neighbor",
                "llmbar-adver-GPTInst",
                "llmbar-adver-GPTOut",
                "llmbar-adver-manual",
            ],
        ),
        (
            "Safety",
            &[
                "refusals-dangerous",
                "refusals-offensive",
                "xstest-should-refuse",
                "xstest-should-respond",
                "donotanswer",
            ],
        ),
        (
            "Reasoning",
            &[
                "math-prm",
                "hep-cpp",
                "hep-go",
                "hep-java",
                "hep-js",
                "hep-python",
                "hep-rust",
            ],
        ),
    ];
    let mut map = BTreeMap::new();
    for (category, subsets) in table {
        for s in subsets {
            map.insert(s.to_string(), category.to_string());
        }
    }
    map
}

/// One scored case.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredCase {
    pub subset: String,
    pub chosen: f64,
    pub rejected: f64,
}

/// Accuracy of a group of cases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    pub cases: u64,
    pub correct: u64,
    pub ties: u64,
    pub unscored: u64,
    pub accuracy: f64,
}

impl Accuracy {
    fn add(&mut self, case: &ScoredCase) {
        self.cases += 1;
        if !case.chosen.is_finite() || !case.rejected.is_finite() {
            self.unscored += 1;
        } else if case.chosen > case.rejected {
            self.correct += 1;
        } else if case.chosen == case.rejected {
            self.ties += 1;
        }
        self.accuracy = self.correct as f64 / self.cases as f64;
    }

    fn empty() -> Self {
        Self {
            cases: 0,
            correct: 0,
            ties: 0,
            unscored: 0,
            accuracy: 0.0,
        }
    }
}

/// The evaluation: per subset, per category, Overall.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub subsets: BTreeMap<String, Accuracy>,
    pub categories: BTreeMap<String, Accuracy>,
    /// Mean of the category accuracies (None when no case falls in a category).
    pub overall: Option<f64>,
    /// Subsets in no category: reported per subset, left out of Overall.
    pub uncategorized: Vec<String>,
}

pub fn evaluate(cases: &[ScoredCase], categories: &BTreeMap<String, String>) -> EvalReport {
    let mut subsets: BTreeMap<String, Accuracy> = BTreeMap::new();
    let mut by_category: BTreeMap<String, Accuracy> = BTreeMap::new();
    for case in cases {
        subsets
            .entry(case.subset.clone())
            .or_insert_with(Accuracy::empty)
            .add(case);
        if let Some(category) = categories.get(&case.subset) {
            by_category
                .entry(category.clone())
                .or_insert_with(Accuracy::empty)
                .add(case);
        }
    }
    let overall = (!by_category.is_empty())
        .then(|| by_category.values().map(|a| a.accuracy).sum::<f64>() / by_category.len() as f64);
    let uncategorized = subsets
        .keys()
        .filter(|s| !categories.contains_key(*s))
        .cloned()
        .collect();
    EvalReport {
        subsets,
        categories: by_category,
        overall,
        uncategorized,
    }
}

/// The report as a markdown table.
pub fn markdown_table(report: &EvalReport) -> String {
    let mut out = String::from(
        "| group | cases | correct | ties | unscored | accuracy |\n|---|---|---|---|---|---|\n",
    );
    let row = |name: &str, a: &Accuracy| {
        format!(
            "| {name} | {} | {} | {} | {} | {:.2}% |\n",
            a.cases,
            a.correct,
            a.ties,
            a.unscored,
            100.0 * a.accuracy
        )
    };
    for (name, a) in &report.categories {
        out.push_str(&row(&format!("**{name}**"), a));
    }
    if let Some(overall) = report.overall {
        out.push_str(&format!(
            "| **Overall** (mean of categories) | | | | | {:.2}% |\n",
            100.0 * overall
        ));
    }
    for (name, a) in &report.subsets {
        out.push_str(&row(name, a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(subset: &str, chosen: f64, rejected: f64) -> ScoredCase {
        ScoredCase {
            subset: subset.into(),
            chosen,
            rejected,
        }
    }

    #[test]
    fn hand_built_set_with_known_answers() {
        let cases = vec![
            case("alpacaeval-easy", 2.0, 1.0),  // correct
            case("alpacaeval-easy", 1.0, 2.0),  // wrong
            case("mt-bench-hard", 0.5, 0.5),    // tie: wrong, reported
            case("mt-bench-hard", 3.0, -1.0),   // correct
            case("donotanswer", f64::NAN, 1.0), // unscored: wrong, reported
            case("math-prm", -0.1, -0.2),       // correct
            case("my-own-set", 1.0, 0.0),       // no category
        ];
        let r = evaluate(&cases, &rewardbench_categories());
        assert_eq!(r.categories["Chat"].accuracy, 0.5);
        assert_eq!(r.categories["Chat-Hard"].accuracy, 0.5);
        assert_eq!(r.categories["Chat-Hard"].ties, 1);
        assert_eq!(r.categories["Safety"].accuracy, 0.0);
        assert_eq!(r.categories["Safety"].unscored, 1);
        assert_eq!(r.categories["Reasoning"].accuracy, 1.0);
        assert_eq!(r.overall, Some((0.5 + 0.5 + 0.0 + 1.0) / 4.0));
        assert_eq!(r.subsets["my-own-set"].correct, 1);
        assert_eq!(r.uncategorized, vec!["my-own-set".to_string()]);
        let md = markdown_table(&r);
        assert!(
            md.contains("| **Overall** (mean of categories) | | | | | 50.00% |"),
            "{md}"
        );
    }
}
