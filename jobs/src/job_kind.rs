//! The kinds of job (`job.kind`). Each has one home under `kinds/`: its own config section, its
//! checks, its runner and its typed summary; `kinds/mod.rs` dispatches on this enum.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Chosen/rejected pairs for iterative DPO: N samples per prompt, scored, best vs worst.
    IterativeDpo,
    /// HelpSteer2-style pairs from responses that already carry attribute labels.
    Helpsteer2Pairs,
    /// A scored corpus filtered by thresholds, top-k per prompt and a run quantile, and ranked.
    FilterRank,
    /// Reward-model accuracy on a preference set, per subset and category.
    RmEval,
    /// SteerLM labels for every assistant turn of NeMo conversations.
    SteerlmAnnotate,
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::IterativeDpo,
        JobKind::Helpsteer2Pairs,
        JobKind::FilterRank,
        JobKind::RmEval,
        JobKind::SteerlmAnnotate,
    ];

    /// The name in job files and summaries.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::IterativeDpo => "iterative-dpo",
            JobKind::Helpsteer2Pairs => "helpsteer2-pairs",
            JobKind::FilterRank => "filter-rank",
            JobKind::RmEval => "rm-eval",
            JobKind::SteerlmAnnotate => "steerlm-annotate",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_serde() {
        for kind in JobKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<JobKind>(&json).unwrap(), kind);
        }
    }
}
