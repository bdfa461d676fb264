//! The typed summary of a run on the store (helpsteer2-pairs, filter-rank, rm-eval,
//! steerlm-annotate): the kind's own `Counts`, read back from the `summary.json` the run wrote
//! (or, when nothing was new, the latest committed run's), which it serialises as.

use crate::error::{invalid, JobError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steerflow_pipeline::store_run::StoreOutcome;

#[derive(Debug, Clone)]
pub struct StoreSummary<C> {
    pub run_id: String,
    pub output: String,
    /// Every record of the input was already committed; `counts` are the latest run's.
    pub up_to_date: bool,
    pub counts: C,
    /// `summary.json` as written.
    pub json: serde_json::Value,
}

impl<C: DeserializeOwned> StoreSummary<C> {
    pub fn from_outcome(outcome: StoreOutcome) -> Result<Self, JobError> {
        let counts = serde_json::from_value(outcome.summary["counts"].clone())
            .map_err(|e| invalid(format!("run {}: its summary's counts: {e}", outcome.run_id)))?;
        Ok(Self {
            output: outcome.summary["output"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            run_id: outcome.run_id,
            up_to_date: outcome.up_to_date,
            counts,
            json: outcome.summary,
        })
    }
}

impl<C> Serialize for StoreSummary<C> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

impl<C> StoreSummary<C> {
    /// The closing line when nothing was new.
    pub fn up_to_date_line(&self, what: &str) -> String {
        format!(
            "nothing new: every {what} of the input is committed in {} (latest run {})",
            self.output, self.run_id
        )
    }
}
