//! The kinds of job (`job.kind`), listed once. Each has one home under `kinds/`: its own config
//! section, its checks, its runner and its typed summary. The list below generates the
//! [`JobKind`] enum here and, in `kinds/mod.rs`, the modules, the kinds' sections and the
//! dispatch: adding a kind is a file under `kinds/` and a line here.

use serde::{Deserialize, Serialize};

/// Calls `$callback!` with every job kind: `Variant = "name in job files" in module`, and
/// `, section field` when the kind has a config section of its own (`[field]`).
macro_rules! with_job_kinds {
    ($callback:ident) => {
        $callback! {
            // Chosen/rejected pairs for iterative DPO: N samples per prompt, scored, best vs worst.
            IterativeDpo = "iterative-dpo" in iterative_dpo;
            // HelpSteer2-style pairs from responses that already carry attribute labels.
            Helpsteer2Pairs = "helpsteer2-pairs" in helpsteer2_pairs;
            // A scored corpus filtered by thresholds, top-k per prompt and a quantile, and ranked.
            FilterRank = "filter-rank" in filter_rank, section filter;
            // Reward-model accuracy on a preference set, per subset and category.
            RmEval = "rm-eval" in rm_eval, section eval;
            // SteerLM labels for every assistant turn of NeMo conversations.
            SteerlmAnnotate = "steerlm-annotate" in steerlm_annotate, section annotate;
            // A corpus without exact and near duplicates, and without benchmark items.
            Dedup = "dedup" in dedup;
        }
    };
}
pub(crate) use with_job_kinds;

macro_rules! define_job_kind {
    ($($variant:ident = $name:literal in $module:ident $(, section $field:ident)?;)*) => {
        /// A kind of job.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum JobKind {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl JobKind {
            pub const ALL: &'static [JobKind] = &[$(JobKind::$variant),*];

            /// The name in job files and summaries.
            pub fn name(self) -> &'static str {
                match self {
                    $(JobKind::$variant => $name,)*
                }
            }
        }
    };
}
with_job_kinds!(define_job_kind);

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
        assert_eq!(JobKind::ALL.len(), 6);
        for &kind in JobKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<JobKind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<JobKind>("\"dpo\"").is_err());
    }
}
