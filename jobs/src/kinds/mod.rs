//! One home per job kind: each file holds its kind's own config section, its checks, its runner
//! and its typed summary. This module gathers the kinds' sections and dispatches on
//! [`JobKind`].
//!
//! Adding a job kind: a new file here (section, `check`, `run`, `Summary` with `Serialize` for
//! `summary.json` and `Display` for the closing line), a variant of `JobKind`
//! (`job_kind.rs`), and that variant's arms below (the compiler lists them); a section of its
//! own is one more field of [`KindSections`].

pub mod filter_rank;
pub mod helpsteer2_pairs;
pub mod iterative_dpo;
pub mod rm_eval;
pub mod steerlm_annotate;

use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::job_kind::JobKind;
use serde::{Deserialize, Serialize};
use steerflow_pipeline::cluster::ClusterSpec;

/// The sections that belong to one kind each.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KindSections {
    /// `filter-rank` rules.
    pub filter: filter_rank::FilterSection,
    /// `rm-eval` settings.
    pub eval: rm_eval::EvalSection,
    /// `steerlm-annotate` settings.
    pub annotate: steerlm_annotate::AnnotateSection,
}

impl KindSections {
    /// The names of these sections in a job file.
    pub const NAMES: [&'static str; 3] = ["filter", "eval", "annotate"];
}

/// The summary of a job of any kind.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum JobSummary {
    IterativeDpo(iterative_dpo::Summary),
    Helpsteer2Pairs(helpsteer2_pairs::Summary),
    FilterRank(filter_rank::Summary),
    RmEval(rm_eval::Summary),
    SteerlmAnnotate(steerlm_annotate::Summary),
}

impl std::fmt::Display for JobSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobSummary::IterativeDpo(s) => s.fmt(f),
            JobSummary::Helpsteer2Pairs(s) => s.fmt(f),
            JobSummary::FilterRank(s) => s.fmt(f),
            JobSummary::RmEval(s) => s.fmt(f),
            JobSummary::SteerlmAnnotate(s) => s.fmt(f),
        }
    }
}

/// Checks a job of any kind without loading a model.
pub fn check(config: &Common, sections: &KindSections) -> Result<(), JobError> {
    match config.job.kind {
        JobKind::IterativeDpo => iterative_dpo::check(config),
        JobKind::Helpsteer2Pairs => helpsteer2_pairs::check(config).map(|_| ()),
        JobKind::FilterRank => filter_rank::check(config, &sections.filter),
        JobKind::RmEval => crate::checks::plan(config).map(|_| ()),
        JobKind::SteerlmAnnotate => steerlm_annotate::check(config, &sections.annotate),
    }
}

/// Runs a job of any kind as one process of `cluster`.
pub fn run(
    config: &Common,
    sections: &KindSections,
    cluster: &ClusterSpec,
) -> Result<JobSummary, JobError> {
    if cluster.processes > 1 && !runs_on_a_cluster(config.job.kind) {
        return Err(invalid(format!(
            "job.kind `{}` runs on one process; cluster mode (--processes) is for iterative-dpo",
            config.job.kind
        )));
    }
    Ok(match config.job.kind {
        JobKind::IterativeDpo => JobSummary::IterativeDpo(iterative_dpo::run(config, cluster)?),
        JobKind::Helpsteer2Pairs => JobSummary::Helpsteer2Pairs(helpsteer2_pairs::run(config)?),
        JobKind::FilterRank => JobSummary::FilterRank(filter_rank::run(config, &sections.filter)?),
        JobKind::RmEval => JobSummary::RmEval(rm_eval::run(config, &sections.eval)?),
        JobKind::SteerlmAnnotate => {
            JobSummary::SteerlmAnnotate(steerlm_annotate::run(config, &sections.annotate)?)
        }
    })
}

/// Whether a kind runs over the dataflow's cluster (the others run on one process).
pub fn runs_on_a_cluster(kind: JobKind) -> bool {
    matches!(kind, JobKind::IterativeDpo)
}

/// What a dry run of a kind looks at.
pub struct DryRunShape {
    /// The policy model is loaded.
    pub uses_policy: bool,
    /// The reward model is loaded.
    pub uses_reward: bool,
    /// Records are read as prompts (iterative-dpo) or as prompt + response (filter-rank); the
    /// other kinds' records are checked when the job reads them.
    pub records: Option<steerflow_pipeline::source::RecordShape>,
    /// The dry run estimates sampling work and what committed runs settled.
    pub samples: bool,
}

pub fn dry_run_shape(kind: JobKind) -> DryRunShape {
    use steerflow_pipeline::source::RecordShape;
    match kind {
        JobKind::IterativeDpo => DryRunShape {
            uses_policy: true,
            uses_reward: true,
            records: Some(RecordShape::Prompt),
            samples: true,
        },
        JobKind::FilterRank => DryRunShape {
            uses_policy: false,
            uses_reward: true,
            records: Some(RecordShape::Response),
            samples: false,
        },
        JobKind::Helpsteer2Pairs => DryRunShape {
            uses_policy: false,
            uses_reward: false,
            records: None,
            samples: false,
        },
        JobKind::RmEval | JobKind::SteerlmAnnotate => DryRunShape {
            uses_policy: false,
            uses_reward: true,
            records: None,
            samples: false,
        },
    }
}
