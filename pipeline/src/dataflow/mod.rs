//! The timely dataflow of an iterative-DPO run: one file per operator, composed here.
//!
//! ```text
//! read (each worker its share of the input files and parquet row groups)
//!   ─exchange(hash(prompt id))→ plan (duplicates, committed shards; max_rejects over all readers)
//!   → sample (N per prompt) ─ok/err→ sampling rejects ────────────────────┐
//!   → score (one prompt's samples at a time) → goodness                     │
//!   ─exchange(owner of the prompt's shard)→ per-prompt reduce (select pair) │
//!   → concat ←──────────── exchange(owner of the prompt's shard) ──────────┘
//!            ←──────────── input rejects, read counts, per-shard item counts from plan
//!   → commit shard (part + marker, as soon as everything routed to it has arrived)
//! ```
//!
//! Run-wide goodness stats and the output files are made afterwards from the committed parts
//! (`run.rs`), so a resumed run writes the same files as an uninterrupted one.
//!
//! The pure logic (seeds, goodness, normalisation, pair selection) lives in
//! `steerflow-operators` and in this folder's plain functions (`plan_items`, `reduce_prompt`,
//! `PromptGroups`, `ShardCollector`), tested without timely; the operators only move records
//! and call it: [`plan`] → [`sample`] → [`score`] → [`select`] → [`commit_shards`].

// Samples and rejects travel by value as timely records; both are large, so boxing one side
// of the Result buys nothing.
#![allow(clippy::result_large_err)]

mod commit_shards;
mod groups;
mod plan;
mod sample;
mod score;
mod select;
mod worker;

pub use groups::{shard_part, OfSample, PromptGroups, ShardCollector};
pub use plan::{filter_share, plan_items};
pub use select::reduce_prompt;

use crate::commit::{RunStore, ShardMarker};
use crate::input::{InputFile, RangeCount};
use crate::progress::Progress;
use crate::records::{ReadItem, ReadStats, RunState, Settled};
use crate::source::RecordShape;
use crate::spec::{Models, RunSpec};
use crate::summary::StageCounters;
use crate::PipelineError;
use commit_shards::CommitShards;
use plan::PlanPrompts;
use sample::SamplePrompts;
use score::ScoreSamples;
use select::SelectPairs;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use steerflow_operators::records::{Prompt, Sample};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::{Broadcast, Map, ToStream};
use timely::dataflow::operators::{Concat, Exchange, Inspect, OkErr, Probe};

/// What a worker hands back after the dataflow has finished.
#[derive(Debug, Default)]
pub struct WorkerResult {
    pub index: usize,
    /// The work this worker did in this launch.
    pub counters: StageCounters,
    /// The shard markers this worker created (or found created by an earlier attempt).
    pub markers: Vec<ShardMarker>,
    /// Worker 0 only: every worker's counters, of every process (for process 0's summary).
    pub cluster_counters: Vec<StageCounters>,
}

/// This worker's share of the input as read items. A failure is kept for the end (returning now
/// would leave the other workers waiting for this one's part of the dataflow); every planner
/// is told, so nobody plans anything and no shard completes without the share.
fn read_items(
    files: &[InputFile],
    state: &RunState,
    worker: &worker::Worker,
    counts: &[RangeCount],
) -> Vec<ReadItem> {
    let share = crate::input::read_share(
        files,
        worker.index,
        worker.peers,
        RecordShape::Prompt,
        counts,
    );
    match share {
        Ok(share) => filter_share(share, state, worker.peers),
        Err(e) => {
            let message = e.to_string();
            worker.fail_unless_failed(e);
            (0..worker.peers)
                .map(|to| ReadItem::Stats {
                    stats: ReadStats::default(),
                    first_reject: None,
                    failed: Some(message.clone()),
                    to,
                })
                .collect()
        }
    }
}

/// Where [`collect`] sends each worker's items.
enum Gather {
    /// To every worker.
    Everyone,
    /// To worker 0 (in process 0).
    WorkerZero,
}

/// A small dataflow of its own that sends each worker's `items` as `to` says and returns what
/// this worker received, once every worker's items are in.
fn collect<T: timely::ExchangeData + Clone>(
    timely_worker: &mut timely::worker::Worker,
    items: Vec<T>,
    to: Gather,
) -> Vec<T> {
    let all = Rc::new(RefCell::new(Vec::<T>::new()));
    let sink = all.clone();
    let probe = ProbeHandle::new();
    timely_worker.dataflow::<u64, _, _>(|scope| {
        let stream = items.to_stream(scope);
        let routed = match to {
            Gather::Everyone => stream.broadcast(),
            Gather::WorkerZero => stream.exchange(|_| 0),
        };
        routed
            .inspect(move |x: &T| sink.borrow_mut().push(x.clone()))
            .probe_with(&probe);
    });
    timely_worker.step_while(|| !probe.done());
    all.take()
}

/// Every worker's newline counts of its jsonl ranges, which the readers of later ranges need
/// for line numbers: each worker scans its own ranges and broadcasts the counts. A worker that
/// cannot count sends none and keeps its failure for the end.
fn exchange_range_counts(
    timely_worker: &mut timely::worker::Worker,
    files: &[InputFile],
    worker: &worker::Worker,
) -> Vec<RangeCount> {
    let own =
        crate::input::count_own_ranges(files, worker.index, worker.peers).unwrap_or_else(|e| {
            worker.fail(e);
            Vec::new()
        });
    collect(timely_worker, own, Gather::Everyone)
}

/// Runs the graph on the cluster `spec.cluster` (this process's workers). Every worker reads
/// its share of `files`, drops what committed runs settled (`state`), and routes the rest by
/// prompt id to a planning worker, which settles duplicates and feeds the prompts to sampling,
/// sorted by shard so that shards complete one after another. The owner of shard k (worker
/// k % all workers) commits the shard's part and marker through `store` as soon as everything
/// routed to the shard has arrived. `connected` is set once the dataflow runs.
pub fn run_graph(
    spec: Arc<RunSpec>,
    models: Models,
    files: Arc<Vec<InputFile>>,
    state: Arc<RunState>,
    store: Arc<RunStore>,
    progress: &Progress,
    connected: Arc<AtomicBool>,
) -> Result<Vec<WorkerResult>, PipelineError> {
    let sample_bar = progress.stage("sample", "prompts", 0);
    let score_bar = progress.stage("score", "responses", 0);
    let (sample_bar_w, score_bar_w) = (sample_bar.clone(), score_bar.clone());
    let guards = timely::execute(spec.cluster.timely_config(), move |timely_worker| {
        connected.store(true, Ordering::SeqCst);
        // This worker's own compute threads (itself first), for its models' kernels.
        let _compute =
            steerflow_kernels::threads::join(steerflow_kernels::threads::configured_threads(1));
        let worker = worker::Worker {
            spec: spec.clone(),
            models: models.clone(),
            index: timely_worker.index(),
            peers: timely_worker.peers(),
            counters: Rc::new(RefCell::new(StageCounters::default())),
            failure: Rc::new(RefCell::new(None)),
            sample_bar: sample_bar_w.clone(),
            score_bar: score_bar_w.clone(),
        };
        let markers = Rc::new(RefCell::new(Vec::<ShardMarker>::new()));
        let probe = ProbeHandle::new();
        let counts = exchange_range_counts(timely_worker, &files, &worker);
        let share = read_items(&files, &state, &worker, &counts);
        timely_worker.dataflow::<u64, _, _>(|scope| {
            let (to_sample, to_settle) = share
                .to_stream(scope)
                .container::<Vec<ReadItem>>()
                .plan_prompts(&worker, state.resumed.clone())
                .ok_err(|r| r);
            let (samples, sample_rejects) = to_sample
                .container::<Vec<Prompt>>()
                .sample_prompts(&worker)
                .ok_err(|r| r);
            let outcomes = samples
                .container::<Vec<Sample>>()
                .score_samples(&worker)
                .select_pairs(spec.shards, spec.pairs, spec.seed);
            let rejected = sample_rejects
                .container::<Vec<(crate::reject::Reject, crate::records::PromptKey)>>()
                .map(|(r, key)| Settled::Rejected(r, key));
            outcomes
                .concat(rejected)
                .concat(to_settle.container::<Vec<Settled>>())
                .commit_shards(&worker, store.clone(), markers.clone())
                .probe_with(&probe);
        });
        timely_worker.step_while(|| !probe.done());
        // The served models' counts are the process's: its first worker reports them.
        if worker.index.is_multiple_of(spec.workers.max(1)) {
            worker.counters.borrow_mut().served = worker.models.served.snapshot();
        }
        let counters = worker.counters.borrow().clone();
        // Worker 0 gets every worker's counters, of every process, for process 0's summary.
        let cluster_counters = collect(timely_worker, vec![counters.clone()], Gather::WorkerZero);
        if let Some(e) = worker.failure.borrow_mut().take() {
            return Err(e);
        }
        let markers = std::mem::take(&mut *markers.borrow_mut());
        Ok::<_, PipelineError>(WorkerResult {
            index: worker.index,
            counters,
            markers,
            cluster_counters,
        })
    })
    .map_err(PipelineError::Worker)?;
    let mut results = Vec::new();
    // The first worker's own failure wins over other workers' reports of it.
    let mut failures = Vec::new();
    for r in guards.join() {
        match r.map_err(PipelineError::Worker)? {
            Ok(result) => results.push(result),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        let derived = |e: &PipelineError| matches!(e, PipelineError::Worker(m) if m.starts_with("a worker could not read"));
        let index = failures.iter().position(|e| !derived(e)).unwrap_or(0);
        return Err(failures.swap_remove(index));
    }
    sample_bar.finish();
    score_bar.finish();
    results.sort_by_key(|r| r.index);
    Ok(results)
}
