//! What every operator of one worker shares: the run, the models, the worker's counters and
//! progress bars, and the first failure (kept until the dataflow ends, since a worker that
//! returned early would leave the others waiting for its share of the exchanges).

use crate::progress::StageProgress;
use crate::spec::{Models, RunSpec};
use crate::summary::StageCounters;
use crate::PipelineError;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

#[derive(Clone)]
pub(crate) struct Worker {
    pub spec: Arc<RunSpec>,
    pub models: Models,
    pub index: usize,
    pub peers: usize,
    pub counters: Rc<RefCell<StageCounters>>,
    pub failure: Rc<RefCell<Option<PipelineError>>>,
    pub sample_bar: StageProgress,
    pub score_bar: StageProgress,
}

impl Worker {
    /// Records `error` as the worker's failure, replacing an earlier one.
    pub fn fail(&self, error: PipelineError) {
        *self.failure.borrow_mut() = Some(error);
    }

    /// Records `error` unless a failure is already recorded (the first cause wins).
    pub fn fail_unless_failed(&self, error: PipelineError) {
        self.failure.borrow_mut().get_or_insert(error);
    }

    pub fn failed(&self) -> bool {
        self.failure.borrow().is_some()
    }
}
