//! One home per job kind: each file holds its kind's own config section (`Section`, `()` when it
//! has none), its checks (`check`), its runner (`run`), what a dry run looks at (`SHAPE`) and
//! its typed summary (`Summary`: `Serialize` for `summary.json`, `Display` for the closing
//! line). The modules, the kinds' sections and the dispatch below are generated from the one
//! list of kinds in `job_kind.rs`.
//!
//! Adding a job kind: a new file here with that interface, and its line in `job_kind.rs`.

use crate::checks::DryRunShape;
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::job_kind::JobKind;
use serde::{Deserialize, Serialize};
use steerflow_pipeline::cluster::ClusterSpec;

/// The kind's own section in `sections`, or `()` for a kind without one.
macro_rules! section_of {
    ($sections:ident) => {
        &()
    };
    ($sections:ident $field:ident) => {
        &$sections.$field
    };
}

macro_rules! define_kinds {
    ($($variant:ident = $name:literal in $module:ident $(, section $field:ident)?;)*) => {
        $(pub mod $module;)*

        /// The sections that belong to one kind each (`[filter]`, `[eval]`, `[annotate]`).
        #[derive(Debug, Clone, Default, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct KindSections {
            $($(pub $field: $module::Section,)?)*
        }

        impl KindSections {
            /// The names of these sections in a job file.
            pub const NAMES: &'static [&'static str] = &[$($(stringify!($field),)?)*];
        }

        /// The summary of a job of any kind.
        #[derive(Debug, Clone, Serialize)]
        #[serde(untagged)]
        pub enum JobSummary {
            $($variant($module::Summary),)*
        }

        impl std::fmt::Display for JobSummary {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $(JobSummary::$variant(s) => s.fmt(f),)*
                }
            }
        }

        /// Checks a job of any kind without loading a model.
        pub fn check(config: &Common, sections: &KindSections) -> Result<(), JobError> {
            dedup_applies(config)?;
            match config.job.kind {
                $(JobKind::$variant => $module::check(config, section_of!(sections $($field)?)),)*
            }
        }

        /// What a dry run of `kind` looks at.
        pub fn dry_run_shape(kind: JobKind) -> DryRunShape {
            match kind {
                $(JobKind::$variant => $module::SHAPE,)*
            }
        }

        /// Runs a job of any kind as one process of `cluster`.
        pub fn run(
            config: &Common,
            sections: &KindSections,
            cluster: &ClusterSpec,
        ) -> Result<JobSummary, JobError> {
            dedup_applies(config)?;
            if cluster.processes > 1 && !dry_run_shape(config.job.kind).cluster {
                return Err(invalid(format!(
                    "job.kind `{}` runs on one process; cluster mode (--processes) is for iterative-dpo",
                    config.job.kind
                )));
            }
            Ok(match config.job.kind {
                $(JobKind::$variant => JobSummary::$variant(
                    $module::run(config, section_of!(sections $($field)?), cluster)?
                ),)*
            })
        }
    };
}
crate::job_kind::with_job_kinds!(define_kinds);

/// `[dedup]` means something to the `dedup` kind and, for prompts, to iterative-DPO only.
fn dedup_applies(config: &Common) -> Result<(), JobError> {
    match (&config.dedup, config.job.kind) {
        (Some(dedup), JobKind::IterativeDpo | JobKind::Dedup) => dedup.check(),
        (Some(_), kind) => Err(invalid(format!(
            "[dedup] applies to job.kind \"dedup\" and to the prompts of \"iterative-dpo\", not to `{kind}`"
        ))),
        (None, _) => Ok(()),
    }
}
