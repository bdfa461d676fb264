//! The timely dataflow of an iterative-DPO run.
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
//! `steerflow-operators`; the operators here only move records and call it.

// Samples and rejects travel by value as timely records; both are large, so boxing one side
// of the Result buys nothing.
#![allow(clippy::result_large_err)]

use crate::commit::{reject_key, PromptKey, RunStore, ShardMarker, ShardPart};
use crate::reject::Reject;
use crate::source::RecordShape;
use crate::spec::{Models, RunSpec};
use crate::summary::StageCounters;
use crate::PipelineError;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use steerflow_models::engine::GenerationRequest;
use steerflow_operators::normalize::NormStats;
use steerflow_operators::pairs::{select_pair, Candidate, DropReason};
use steerflow_operators::records::{Prompt, Sample, ScoredSample};
use steerflow_operators::seeding::{route_hash, sample_seed, shard_of};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::vec::{Map, ToStream};
use timely::dataflow::operators::{Concat, Exchange, OkErr, Probe};

/// The result of the per-prompt reduce: all scored samples of a prompt and the pair, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptOutcome {
    pub prompt: Prompt,
    /// Scored samples, sorted by sample index.
    pub samples: Vec<ScoredSample>,
    /// (chosen, rejected) indices into `samples`, and the margin.
    pub pair: Option<(usize, usize, f64)>,
    pub dropped: Option<DropReason>,
    /// Samples with NaN or infinite goodness.
    pub non_finite: usize,
    /// Mean and std of this prompt's finite goodness values.
    pub prompt_stats: Option<NormStats>,
}

/// What a worker hands back after the dataflow has finished.
#[derive(Debug, Default)]
pub struct WorkerResult {
    pub index: usize,
    /// The work this worker did in this launch.
    pub counters: StageCounters,
    /// The shard markers this worker created (or found created by an earlier attempt).
    pub markers: Vec<ShardMarker>,
}

/// Builds the per-prompt outcome from its scored samples (any order).
pub fn reduce_prompt(mut samples: Vec<ScoredSample>, min_margin: f64) -> PromptOutcome {
    samples.sort_by_key(|s| s.sample.sample_index);
    let prompt = samples[0].sample.prompt.clone();
    let candidates: Vec<Candidate<'_>> = samples
        .iter()
        .map(|s| Candidate {
            sample_index: s.sample.sample_index,
            goodness: s.goodness,
            text: &s.sample.text,
        })
        .collect();
    let selection = select_pair(&candidates, min_margin);
    let (pair, dropped) = match selection.decision {
        Ok(p) => (Some((p.chosen, p.rejected, p.margin)), None),
        Err(reason) => (None, Some(reason)),
    };
    let prompt_stats = NormStats::from_values(samples.iter().map(|s| s.goodness));
    PromptOutcome {
        prompt,
        pair,
        dropped,
        non_finite: selection.non_finite,
        prompt_stats,
        samples,
    }
}

/// Samples all the responses of a batch of prompts, or says why a prompt cannot be sampled. The
/// prompts run together through the generation engine's continuous batches; a sample's tokens
/// depend only on its prompt, seed and the sampling settings, never on the batch. `progress` is
/// called once per prompt as it finishes; once `cancelled` says so, the rest are left unsampled.
fn sample_prompts(
    prompts: Vec<Prompt>,
    spec: &RunSpec,
    models: &Models,
    counters: &RefCell<StageCounters>,
    cancelled: impl Fn() -> bool,
    mut progress: impl FnMut(),
) -> Vec<Result<Sample, (Reject, PromptKey)>> {
    let started = Instant::now();
    let reject = |prompt: &Prompt, reason: &str, detail: String| {
        let mut r = Reject::new(
            &prompt.source.file,
            prompt.source.record,
            None,
            reason,
            detail,
        );
        r.prompt_id = Some(prompt.id.clone());
        Err((r, PromptKey::of(prompt)))
    };
    let n = spec.samples_per_prompt;
    let mut out = Vec::new();
    let mut accepted = Vec::with_capacity(prompts.len());
    let mut requests = Vec::with_capacity(prompts.len());
    for prompt in prompts {
        match models.policy.prompt_tokens(&prompt.messages) {
            Ok(prompt_tokens) => {
                let seeds = (0..n)
                    .map(|i| sample_seed(spec.seed, &prompt.id, i))
                    .collect();
                requests.push(GenerationRequest {
                    prompt_tokens,
                    seeds,
                });
                accepted.push(prompt);
            }
            Err(e) => {
                let reason = if e.is_record_error() {
                    "policy_prompt"
                } else {
                    "policy_error"
                };
                out.push(reject(&prompt, reason, e.to_string()));
                progress();
            }
        }
    }
    let prompt_lengths: Vec<u32> = requests
        .iter()
        .map(|r| r.prompt_tokens.len() as u32)
        .collect();
    models.policy.generate_many(
        requests,
        &spec.generation,
        &spec.engine,
        |i, result| {
            let prompt = &accepted[i];
            match result {
                Err(e) => out.push(reject(prompt, "generation_failed", e.to_string())),
                Ok((generations, work)) => {
                    let mut c = counters.borrow_mut();
                    c.prompts_sampled += 1;
                    c.samples += generations.len() as u64;
                    c.prompt_tokens_prefilled += work.prompt_tokens_prefilled;
                    c.tokens_decoded += work.tokens_decoded;
                    c.prefill_seconds += work.prefill_seconds;
                    c.decode_seconds += work.decode_seconds;
                    for (index, g) in generations.into_iter().enumerate() {
                        *c.finish_reasons
                            .entry(g.finish.as_str().to_string())
                            .or_default() += 1;
                        out.push(Ok(Sample {
                            prompt: prompt.clone(),
                            sample_index: index as u32,
                            samples_per_prompt: n,
                            text: g.text,
                            prompt_tokens: prompt_lengths[i],
                            new_tokens: g.new_tokens,
                            finish: g.finish,
                            steer: models.policy.steer().map(str::to_string),
                        }));
                    }
                }
            }
            progress();
        },
        cancelled,
    );
    counters.borrow_mut().sampling_seconds += started.elapsed().as_secs_f64();
    out
}

/// Scores one sample; a failure leaves NaN attributes (never chosen, counted as unscored).
/// Scores samples as they arrive: consecutive samples of one prompt go to the reward model
/// together, so it can share their prompt's prefill (the judge) or batch them (trained heads).
/// A failure leaves NaN attributes (never chosen, counted as unscored).
fn score_samples(
    samples: Vec<Sample>,
    spec: &RunSpec,
    models: &Models,
    counters: &RefCell<StageCounters>,
) -> Vec<ScoredSample> {
    let started = Instant::now();
    let items: Vec<(&[steerflow_operators::records::Message], &str)> = samples
        .iter()
        .map(|s| (s.prompt.messages.as_slice(), s.text.as_str()))
        .collect();
    let results = models.reward.score_batch(&items);
    let mut c = counters.borrow_mut();
    let scored: Vec<ScoredSample> = samples
        .into_iter()
        .zip(results)
        .map(|(sample, result)| {
            let (attributes, tokens, dropped_turns, mut unscored) = match result {
                Ok(s) => {
                    if s.dropped_turns > 0 {
                        c.overlength_truncated += 1;
                    }
                    (s.attributes, s.tokens_run, s.dropped_turns, None)
                }
                Err(e) => {
                    let reason = if matches!(e, steerflow_models::ModelError::ContextOverflow { .. }) {
                        c.overlength_skipped += 1;
                        "context_overflow"
                    } else {
                        "scoring_failed"
                    };
                    tracing::warn!(prompt_id = %sample.prompt.id, sample = sample.sample_index, error = %e, "scoring failed; the sample is unscored");
                    (vec![f64::NAN; models.reward.attribute_names().len()], 0, 0, Some(reason.to_string()))
                }
            };
            let goodness = spec.goodness.goodness(&attributes);
            if goodness.is_finite() {
                c.samples_scored += 1;
            } else {
                c.samples_unscored += 1;
                unscored.get_or_insert_with(|| "non_finite_score".to_string());
            }
            c.tokens_scored += tokens;
            ScoredSample { sample, attributes, goodness, scored_tokens: tokens, dropped_turns, unscored }
        })
        .collect();
    c.scoring_seconds += started.elapsed().as_secs_f64();
    scored
}

/// Samples grouped by prompt until all of a prompt's samples are in. Pure bookkeeping.
#[derive(Debug)]
pub struct PromptGroups<T> {
    pending: HashMap<String, Vec<T>>,
}

impl<T> Default for PromptGroups<T> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

/// A record that is one sample of a prompt: a sample, or a scored one.
pub trait OfSample {
    fn sample(&self) -> &Sample;
}

impl OfSample for Sample {
    fn sample(&self) -> &Sample {
        self
    }
}

impl OfSample for ScoredSample {
    fn sample(&self) -> &Sample {
        &self.sample
    }
}

impl<T: OfSample> PromptGroups<T> {
    /// Adds a sample; returns its prompt's samples (sorted by index) once all have arrived.
    pub fn add(&mut self, item: T) -> Option<Vec<T>> {
        let expected = item.sample().samples_per_prompt as usize;
        let id = item.sample().prompt.id.clone();
        let group = self.pending.entry(id.clone()).or_default();
        group.push(item);
        if group.len() < expected {
            return None;
        }
        let mut group = self.pending.remove(&id)?;
        group.sort_by_key(|s| s.sample().sample_index);
        Some(group)
    }

    /// Groups still short of samples (none when every prompt's samples arrive), by prompt id.
    pub fn drain(&mut self) -> Vec<Vec<T>> {
        let mut rest: Vec<(String, Vec<T>)> = self.pending.drain().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        rest.into_iter().map(|(_, g)| g).collect()
    }
}

/// What reaches a shard's owner: a prompt's outcome or why it could not be sampled, an input
/// record's reject, a reader's counts, or how many of these a planning worker sent the shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Settled {
    Outcome(PromptOutcome),
    /// A prompt that could not be sampled, with its key.
    Rejected(Reject, PromptKey),
    /// An input record that is not a usable prompt (bad, duplicate, changed since committed).
    InputRejected(Reject),
    Stats(ReadStats),
    /// How many items a planning worker routed to `shard` (one per prompt, input reject and
    /// stats record). Every worker sends one for every shard not yet committed.
    Expect {
        shard: usize,
        items: u64,
    },
}

/// What one worker read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    pub records: u64,
    pub prompts: u64,
    /// Prompts an earlier committed run settled (left out).
    pub already_committed: u64,
    /// Records rejected while reading (not counting rejects earlier runs reported).
    pub rejects: u64,
}

impl ReadStats {
    pub fn add(&mut self, other: &ReadStats) {
        self.records += other.records;
        self.prompts += other.prompts;
        self.already_committed += other.already_committed;
        self.rejects += other.rejects;
    }
}

/// The whole input's read counts, summed from every reader's (every planner receives all), and
/// the first reject in input order, for the `max_rejects` check before any sampling.
pub fn read_totals(stats: &[(ReadStats, Option<Reject>)]) -> (ReadStats, Option<Reject>) {
    let mut total = ReadStats::default();
    let mut first: Option<&Reject> = None;
    for (s, r) in stats {
        total.add(s);
        if let Some(r) = r {
            if first.is_none_or(|f| (r.file.as_str(), r.record) < (f.file.as_str(), f.record)) {
                first = Some(r);
            }
        }
    }
    (total, first.cloned())
}

/// Collects settled items per shard; a shard is complete once every planning worker has said
/// how many items it sent there and that many have arrived. Pure bookkeeping.
#[derive(Debug)]
pub struct ShardCollector {
    planners: usize,
    expects: HashMap<usize, (usize, u64)>,
    pending: HashMap<usize, Vec<Settled>>,
}

impl ShardCollector {
    /// `planners`: how many workers send an `Expect` for each shard.
    pub fn new(planners: usize) -> Self {
        Self {
            planners,
            expects: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Adds an item of `shard`; returns the shard's part when it is complete.
    pub fn add(&mut self, shard: usize, item: Settled) -> Option<ShardPart> {
        match item {
            Settled::Expect { items, .. } => {
                let e = self.expects.entry(shard).or_default();
                e.0 += 1;
                e.1 += items;
            }
            item => self.pending.entry(shard).or_default().push(item),
        }
        let &(senders, expected) = self.expects.get(&shard)?;
        let have = self.pending.get(&shard).map_or(0, Vec::len) as u64;
        if senders < self.planners || have != expected {
            return None;
        }
        self.expects.remove(&shard);
        let items = self.pending.remove(&shard).unwrap_or_default();
        Some(shard_part(shard, items))
    }

    /// Shards that never completed: (shard, items in, items expected so far, planners heard).
    pub fn incomplete(&self) -> Vec<(usize, usize, u64, usize)> {
        let mut shards: Vec<usize> = self
            .pending
            .keys()
            .chain(self.expects.keys())
            .copied()
            .collect();
        shards.sort();
        shards.dedup();
        shards
            .into_iter()
            .map(|k| {
                let (senders, expected) = self.expects.get(&k).copied().unwrap_or_default();
                (
                    k,
                    self.pending.get(&k).map_or(0, Vec::len),
                    expected,
                    senders,
                )
            })
            .collect()
    }
}

/// A shard's part from its settled items (any order), each list sorted.
pub fn shard_part(shard: usize, items: Vec<Settled>) -> ShardPart {
    let mut part = ShardPart {
        shard,
        outcomes: Vec::new(),
        rejects: Vec::new(),
        input_rejects: Vec::new(),
        settled: Vec::new(),
        read_stats: ReadStats::default(),
    };
    for item in items {
        match item {
            Settled::Outcome(o) => {
                part.settled.push(PromptKey::of(&o.prompt));
                part.outcomes.push(o);
            }
            Settled::Rejected(r, key) => {
                part.settled.push(key);
                part.rejects.push(r);
            }
            Settled::InputRejected(r) => part.input_rejects.push(r),
            Settled::Stats(s) => part.read_stats.add(&s),
            Settled::Expect { .. } => {}
        }
    }
    part.outcomes.sort_by(|a, b| a.prompt.id.cmp(&b.prompt.id));
    part.rejects.sort_by(|a, b| a.prompt_id.cmp(&b.prompt_id));
    part.input_rejects.sort_by(|a, b| {
        (a.file.as_str(), a.record, a.reason.as_str()).cmp(&(
            b.file.as_str(),
            b.record,
            b.reason.as_str(),
        ))
    });
    part.settled.sort();
    part
}

/// The output shard of a settled item (`Expect` names its own).
fn settled_shard(item: &Settled, shards: usize) -> usize {
    match item {
        Settled::Outcome(o) => shard_of(&o.prompt.id, shards),
        Settled::Rejected(_, key) => shard_of(&key.id, shards),
        Settled::InputRejected(r) => shard_of(&input_reject_route(r), shards),
        Settled::Stats(_) => 0,
        Settled::Expect { shard, .. } => *shard,
    }
}

/// Input rejects are routed by their prompt id when they have one, else by file and record.
fn input_reject_route(r: &Reject) -> String {
    r.prompt_id
        .clone()
        .unwrap_or_else(|| crate::input::reject_route(r))
}

/// What a reader hands to planning, routed by prompt id (or by file and record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReadItem {
    Prompt(Prompt),
    Reject(Reject),
    /// A reader's counts and first reject, sent to planner `to` (every planner gets one).
    /// `failed` says the reader could not read its share: then nobody plans anything, so no
    /// shard can complete without that share.
    Stats {
        stats: ReadStats,
        first_reject: Option<Reject>,
        failed: Option<String>,
        to: usize,
    },
}

/// What the run already holds: committed prompts, reported input rejects, committed shards.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    /// Prompt id → messages digest, of prompts committed runs settled.
    pub settled: HashMap<String, String>,
    /// Keys of input rejects committed runs reported.
    pub reported: std::collections::HashSet<String>,
    /// Shards of this run whose markers exist (a resumed run does not redo them).
    pub resumed: std::collections::HashSet<usize>,
}

/// A reader's share after the incremental filter: new prompts, rejects not yet reported, and
/// its counts for each of the `planners`.
pub fn filter_share(
    share: crate::source::SourceOutput,
    state: &RunState,
    planners: usize,
) -> Vec<ReadItem> {
    let mut stats = ReadStats {
        records: share.records,
        prompts: share.prompts.len() as u64,
        already_committed: 0,
        rejects: 0,
    };
    let mut items = Vec::new();
    let reject = |r: Reject, items: &mut Vec<ReadItem>| {
        if !state.reported.contains(&reject_key(&r)) {
            items.push(ReadItem::Reject(r));
        }
    };
    for r in share.rejects {
        reject(r, &mut items);
    }
    for prompt in share.prompts {
        let key = PromptKey::of(&prompt);
        match state.settled.get(&key.id) {
            None => items.push(ReadItem::Prompt(prompt)),
            Some(digest) if *digest == key.digest => stats.already_committed += 1,
            Some(_) => {
                let mut r = Reject::new(
                    &prompt.source.file,
                    prompt.source.record,
                    Some("messages"),
                    "changed_since_committed",
                    format!(
                        "prompt `{}` was committed by an earlier run with different messages; \
                         give the new prompt a new id",
                        prompt.id
                    ),
                );
                r.prompt_id = Some(prompt.id.clone());
                reject(r, &mut items);
            }
        }
    }
    let rejects: Vec<&Reject> = items
        .iter()
        .filter_map(|i| match i {
            ReadItem::Reject(r) => Some(r),
            _ => None,
        })
        .collect();
    stats.rejects = rejects.len() as u64;
    let first_reject = rejects
        .into_iter()
        .min_by(|a, b| (a.file.as_str(), a.record).cmp(&(b.file.as_str(), b.record)))
        .cloned();
    for to in 0..planners {
        items.push(ReadItem::Stats {
            stats,
            first_reject: first_reject.clone(),
            failed: None,
            to,
        });
    }
    items
}

/// Planning at one worker, once every reader is done: of prompts sharing an id the first in
/// the input (by file, then record) is kept and the others rejected; items of committed shards
/// are left out. Returns the prompts to sample (sorted by shard, then id), the items to settle,
/// and one `Expect` per shard not committed yet.
pub fn plan_items(
    items: Vec<ReadItem>,
    shards: usize,
    resumed: &std::collections::HashSet<usize>,
) -> (Vec<Prompt>, Vec<Settled>) {
    let mut by_id: HashMap<String, Vec<Prompt>> = HashMap::new();
    let mut settle = Vec::new();
    for item in items {
        match item {
            ReadItem::Prompt(p) => by_id.entry(p.id.clone()).or_default().push(p),
            ReadItem::Reject(r) => settle.push(Settled::InputRejected(r)),
            ReadItem::Stats { stats, .. } => settle.push(Settled::Stats(stats)),
        }
    }
    let mut prompts = Vec::new();
    for (_, mut copies) in by_id {
        copies.sort_by(|a, b| {
            (a.source.file.as_str(), a.source.record)
                .cmp(&(b.source.file.as_str(), b.source.record))
        });
        let mut copies = copies.into_iter();
        let Some(first) = copies.next() else { continue };
        for p in copies {
            let mut r = Reject::new(
                &p.source.file,
                p.source.record,
                Some("id"),
                "duplicate_id",
                format!(
                    "prompt id `{}` appeared before ({}:{}); the first is kept",
                    p.id, first.source.file, first.source.record
                ),
            );
            r.prompt_id = Some(p.id);
            settle.push(Settled::InputRejected(r));
        }
        prompts.push(first);
    }
    prompts.retain(|p| !resumed.contains(&shard_of(&p.id, shards)));
    settle.retain(|s| !resumed.contains(&settled_shard(s, shards)));
    prompts.sort_by(|a, b| (shard_of(&a.id, shards), &a.id).cmp(&(shard_of(&b.id, shards), &b.id)));
    let mut counts = vec![0u64; shards];
    for p in &prompts {
        counts[shard_of(&p.id, shards)] += 1;
    }
    for s in &settle {
        counts[settled_shard(s, shards)] += 1;
    }
    for (shard, &items) in counts.iter().enumerate() {
        if !resumed.contains(&shard) {
            settle.push(Settled::Expect { shard, items });
        }
    }
    (prompts, settle)
}

/// Runs the graph on the cluster `spec.cluster` (this process's workers). Every worker reads
/// its share of `files`, drops what committed runs settled (`state`), and routes the rest by
/// prompt id to a planning worker, which settles duplicates and feeds the prompts to sampling,
/// sorted by shard so that shards complete one after another. The owner of shard k (worker
/// k % all workers) commits the shard's part and marker through `store` as soon as everything
/// routed to the shard has arrived. `connected` is set once the dataflow runs.
#[allow(clippy::too_many_arguments)]
pub fn run_graph(
    spec: Arc<RunSpec>,
    models: Models,
    files: Arc<Vec<crate::input::InputFile>>,
    state: Arc<RunState>,
    store: Arc<RunStore>,
    progress: &crate::progress::Progress,
    connected: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<WorkerResult>, PipelineError> {
    let sample_bar = progress.stage("sample", "prompts", 0);
    let score_bar = progress.stage("score", "responses", 0);
    let (sample_bar_w, score_bar_w) = (sample_bar.clone(), score_bar.clone());
    let guards = timely::execute(spec.cluster.timely_config(), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        connected.store(true, std::sync::atomic::Ordering::SeqCst);
        let counters = Rc::new(RefCell::new(StageCounters::default()));
        let markers = Rc::new(RefCell::new(Vec::new()));
        let failure: Rc<RefCell<Option<PipelineError>>> = Rc::new(RefCell::new(None));
        let runtime = Rc::new(crate::storage::io_runtime()?);
        let probe = ProbeHandle::new();
        // This worker's share of the input. A failure is kept for the end: returning now would
        // leave the other workers waiting for this one's part of the dataflow.
        let share = match crate::input::read_share(&files, index, peers, RecordShape::Prompt) {
            Ok(share) => filter_share(share, &state, peers),
            Err(e) => {
                let message = e.to_string();
                *failure.borrow_mut() = Some(e);
                (0..peers)
                    .map(|to| ReadItem::Stats {
                        stats: ReadStats::default(),
                        first_reject: None,
                        failed: Some(message.clone()),
                        to,
                    })
                    .collect()
            }
        };
        worker.dataflow::<u64, _, _>(|scope| {
            let shards = spec.shards;
            let resumed = state.resumed.clone();
            let (max_rejects, failure_p) = (spec.max_rejects, failure.clone());
            let (sample_bar_p, score_bar_p, samples_per_prompt) =
                (sample_bar_w.clone(), score_bar_w.clone(), spec.samples_per_prompt as u64);
            let planned = share
                .to_stream(scope)
                .exchange(|item: &ReadItem| match item {
                    ReadItem::Prompt(p) => route_hash(&p.id),
                    ReadItem::Reject(r) => route_hash(&input_reject_route(r)),
                    ReadItem::Stats { to, .. } => *to as u64,
                })
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Result<Prompt, Settled>>>, _, _, _>(
                    Pipeline,
                    "Plan",
                    move |default_cap, _| {
                        let mut cap = Some(default_cap);
                        let mut items = Vec::new();
                        let mut stats = Vec::new();
                        let mut failed_reader: Option<String> = None;
                        move |(input, frontier), output| {
                            input.for_each_stamp(|_, data| {
                                for batch in data {
                                    for item in batch.drain(..) {
                                        match item {
                                            ReadItem::Stats { stats: s, first_reject, failed, .. } => {
                                                if let Some(message) = failed {
                                                    failed_reader.get_or_insert(message);
                                                }
                                                stats.push((s, first_reject))
                                            }
                                            other => items.push(other),
                                        }
                                    }
                                }
                            });
                            if !frontier.is_empty() {
                                return;
                            }
                            if let Some(c) = cap.take() {
                                if let Some(message) = failed_reader.take() {
                                    failure_p.borrow_mut().get_or_insert(PipelineError::Worker(format!(
                                        "a worker could not read its share of the input: {message}"
                                    )));
                                    return;
                                }
                                // Every planner sees every reader's counts, so all stop together
                                // when the input has more bad records than allowed.
                                let (total, first) = read_totals(&stats);
                                if max_rejects.exceeded(total.rejects, total.records) {
                                    *failure_p.borrow_mut() = Some(PipelineError::TooManyRejects {
                                        count: total.rejects,
                                        limit: max_rejects.to_string(),
                                        first: first.map(|r| r.to_string()).unwrap_or_default(),
                                    });
                                    return;
                                }
                                // Planner 0 settles the totals (into shard 0's part).
                                if index == 0 {
                                    items.push(ReadItem::Stats { stats: total, first_reject: None, failed: None, to: 0 });
                                }
                                let (prompts, settle) = plan_items(std::mem::take(&mut items), shards, &resumed);
                                sample_bar_p.add_total(prompts.len() as u64);
                                score_bar_p.add_total(prompts.len() as u64 * samples_per_prompt);
                                let mut session = output.session(&c);
                                session.give_iterator(settle.into_iter().map(Err));
                                session.give_iterator(prompts.into_iter().map(Ok));
                            }
                        }
                    },
                );
            let (to_sample, to_settle) = planned.ok_err(|r| r);

            let (spec_s, models_s, counters_s, bar, failed) =
                (spec.clone(), models.clone(), counters.clone(), sample_bar_w.clone(), failure.clone());
            // Prompts go to the engine a chunk at a time (enough to keep its batch full), and the
            // operator reschedules itself for the rest: scoring and shard commits run between
            // chunks, so a crash loses at most the shards in flight and samples never pile up.
            let chunk = (4 * spec.engine.max_sequences / spec.samples_per_prompt.max(1) as usize).max(1);
            let sample_scope = to_sample.scope();
            let sampled = to_sample.container::<Vec<Prompt>>().unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Result<Sample, (Reject, PromptKey)>>>, _, _, _>(
                Pipeline,
                "Sample",
                move |default_cap, info| {
                    let activator = sample_scope.activator_for(info.address.clone());
                    let mut cap = Some(default_cap);
                    let mut stash: std::collections::VecDeque<Prompt> = std::collections::VecDeque::new();
                    move |(input, frontier), output| {
                        input.for_each_stamp(|_, data| {
                            for batch in data {
                                stash.extend(batch.drain(..));
                            }
                        });
                        if let (Some(c), false) = (cap.as_ref(), stash.is_empty()) {
                            let prompts: Vec<Prompt> = stash.drain(..chunk.min(stash.len())).collect();
                            // A shard that could not be committed stops the work.
                            let out = sample_prompts(prompts, &spec_s, &models_s, &counters_s, || failed.borrow().is_some(), || bar.advance(1));
                            output.session(c).give_iterator(out.into_iter());
                            if failed.borrow().is_some() {
                                stash.clear();
                            }
                            if !stash.is_empty() {
                                activator.activate();
                            }
                        }
                        if frontier.is_empty() && stash.is_empty() {
                            cap = None;
                        }
                    }
                },
            );
            let (samples, sample_rejects) = sampled.ok_err(|r| r);

            let (spec_c, models_c, counters_c, bar) = (spec.clone(), models.clone(), counters.clone(), score_bar_w.clone());
            // The reward model sees exactly one prompt's samples at a time, whatever the
            // containers timely groups them in: batch composition changes the float results
            // (shared prefixes, padding), and the output must not depend on it.
            let scored = samples.container::<Vec<Sample>>().unary_frontier::<timely::container::CapacityContainerBuilder<Vec<ScoredSample>>, _, _, _>(
                Pipeline,
                "Score",
                move |default_cap, _| {
                    let mut cap = Some(default_cap);
                    let mut groups = PromptGroups::default();
                    move |(input, frontier), output| {
                        let mut complete = Vec::new();
                        input.for_each_stamp(|_, data| {
                            for batch in data {
                                for sample in batch.drain(..) {
                                    complete.extend(groups.add(sample));
                                }
                            }
                        });
                        if frontier.is_empty() {
                            complete.extend(groups.drain());
                        }
                        if let Some(c) = cap.as_ref() {
                            let mut session = output.session(c);
                            for group in complete {
                                let n = group.len() as u64;
                                session.give_iterator(score_samples(group, &spec_c, &models_c, &counters_c).into_iter());
                                bar.advance(n);
                            }
                        }
                        if frontier.is_empty() {
                            cap = None;
                        }
                    }
                },
            );

            // Per-prompt reduce at the owner of the prompt's shard: an outcome leaves as soon as
            // all its samples are in.
            let (min_margin, shards) = (spec.min_margin, spec.shards);
            let outcomes = scored
                .exchange(move |s: &ScoredSample| shard_of(&s.sample.prompt.id, shards) as u64)
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Settled>>, _, _, _>(
                    Pipeline,
                    "SelectPair",
                    |default_cap, _info| {
                        let mut cap = Some(default_cap);
                        let mut groups = PromptGroups::<ScoredSample>::default();
                        move |(input, frontier), output| {
                            let mut complete = Vec::new();
                            input.for_each_stamp(|_, data| {
                                for batch in data {
                                    for s in batch.drain(..) {
                                        complete.extend(groups.add(s));
                                    }
                                }
                            });
                            if frontier.is_empty() {
                                // Groups short of samples (none today: every sample is scored, NaN or not).
                                complete.extend(groups.drain());
                            }
                            if let Some(c) = cap.as_ref() {
                                let mut session = output.session(c);
                                for group in complete {
                                    session.give(Settled::Outcome(reduce_prompt(group, min_margin)));
                                }
                            }
                            if frontier.is_empty() {
                                cap = None;
                            }
                        }
                    },
                );
            let rejected = sample_rejects
                .container::<Vec<(Reject, PromptKey)>>()
                .exchange(move |(_, key): &(Reject, PromptKey)| shard_of(&key.id, shards) as u64)
                .map(|(r, key)| Settled::Rejected(r, key));
            let to_settle = to_settle
                .container::<Vec<Settled>>()
                .exchange(move |s: &Settled| settled_shard(s, shards) as u64);

            // Commit each shard the moment everything routed to it has arrived.
            let (store_c, runtime_c, markers_c, failure_c) =
                (store.clone(), runtime.clone(), markers.clone(), failure.clone());
            outcomes
                .concat(rejected)
                .concat(to_settle)
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<ShardMarker>>, _, _, _>(
                    Pipeline,
                    "CommitShards",
                    move |default_cap, _info| {
                        let mut cap = Some(default_cap);
                        let mut collector = ShardCollector::new(peers);
                        move |(input, frontier), output| {
                            let mut complete = Vec::new();
                            input.for_each_stamp(|_, data| {
                                for batch in data {
                                    for item in batch.drain(..) {
                                        complete.extend(collector.add(settled_shard(&item, shards), item));
                                    }
                                }
                            });
                            for part in complete {
                                if failure_c.borrow().is_some() {
                                    break;
                                }
                                match runtime_c.block_on(store_c.commit_shard(&part, &store_c.writer)) {
                                    Ok(marker) => {
                                        tracing::info!(shard = part.shard, prompts = marker.prompts, "shard committed");
                                        markers_c.borrow_mut().push(marker);
                                    }
                                    Err(e) => *failure_c.borrow_mut() = Some(e),
                                }
                            }
                            if frontier.is_empty() {
                                let incomplete = collector.incomplete();
                                if !incomplete.is_empty() && failure_c.borrow().is_none() {
                                    *failure_c.borrow_mut() = Some(PipelineError::Worker(format!(
                                        "shards left incomplete (shard, items in, items expected, planners heard): {incomplete:?}"
                                    )));
                                }
                                cap = None;
                            }
                            let _ = (&output, &cap);
                        }
                    },
                )
                .probe_with(&probe);
        });
        worker.step_while(|| !probe.done());
        if let Some(e) = failure.borrow_mut().take() {
            return Err(e);
        }
        let counters = counters.borrow().clone();
        let markers = std::mem::take(&mut *markers.borrow_mut());
        Ok::<_, PipelineError>(WorkerResult { index, counters, markers })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(id: &str) -> Settled {
        let mut r = Reject::new("in.jsonl", 1, None, "policy_prompt", "x");
        r.prompt_id = Some(id.into());
        let key = PromptKey {
            id: id.into(),
            digest: "d".into(),
        };
        Settled::Rejected(r, key)
    }

    fn sample(id: &str, index: u32) -> Sample {
        Sample {
            prompt: Prompt {
                id: id.into(),
                messages: vec![],
                source: steerflow_operators::records::SourcePosition {
                    file: "f".into(),
                    record: 1,
                },
            },
            sample_index: index,
            samples_per_prompt: 3,
            text: String::new(),
            prompt_tokens: 1,
            new_tokens: 1,
            finish: steerflow_operators::records::FinishReason::Eos,
            steer: None,
        }
    }

    #[test]
    fn samples_are_scored_per_prompt_whatever_the_batches() {
        let mut groups = PromptGroups::default();
        // Two prompts interleaved, as containers split and merge them.
        assert_eq!(groups.add(sample("a", 2)), None);
        assert_eq!(groups.add(sample("b", 0)), None);
        assert_eq!(groups.add(sample("a", 0)), None);
        let a = groups.add(sample("a", 1)).expect("a is complete");
        assert_eq!(
            a.iter().map(|s| s.sample_index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(a.iter().all(|s| s.prompt.id == "a"));
        let rest = groups.drain();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0][0].prompt.id, "b");
    }

    #[test]
    fn a_shard_is_complete_when_every_planner_has_reported_and_its_items_are_in() {
        let expect = |shard: usize, items: u64| Settled::Expect { shard, items };
        // Two planning workers.
        let mut collector = ShardCollector::new(2);
        assert_eq!(collector.add(0, expect(0, 1)), None);
        assert_eq!(collector.add(0, rejected("b")), None);
        // Counts may arrive after the items; one planner not heard from yet keeps it open.
        assert_eq!(collector.add(1, rejected("c")), None);
        assert_eq!(collector.add(1, expect(1, 1)), None);
        let one = collector
            .add(1, expect(1, 0))
            .expect("shard 1 holds one prompt");
        assert_eq!(one.shard, 1);
        assert_eq!(one.settled.len(), 1);
        assert_eq!(collector.incomplete(), vec![(0, 1, 1, 1)]);
        assert_eq!(collector.add(0, expect(0, 1)), None);
        let zero = collector.add(0, rejected("a")).expect("shard 0 complete");
        let ids: Vec<_> = zero
            .rejects
            .iter()
            .map(|r| r.prompt_id.clone().unwrap())
            .collect();
        assert_eq!(
            ids,
            ["a", "b"],
            "sorted by prompt id, whatever the arrival order"
        );
        assert!(collector.incomplete().is_empty());
        // An empty shard completes once every planner said so.
        let mut empty = ShardCollector::new(2);
        assert_eq!(empty.add(3, expect(3, 0)), None);
        assert!(empty.add(3, expect(3, 0)).is_some());
    }

    #[test]
    fn read_totals_sum_every_reader_and_name_the_first_reject_in_input_order() {
        let stats = |records, rejects| ReadStats {
            records,
            prompts: records - rejects,
            already_committed: 0,
            rejects,
        };
        let bad = |file: &str, record| Reject::new(file, record, None, "invalid_json", "x");
        let (total, first) = read_totals(&[
            (stats(10, 1), Some(bad("b.jsonl", 2))),
            (stats(5, 2), Some(bad("a.jsonl", 9))),
            (stats(3, 0), None),
        ]);
        assert_eq!((total.records, total.rejects, total.prompts), (18, 3, 15));
        assert_eq!(
            first.map(|r| (r.file, r.record)),
            Some(("a.jsonl".to_string(), 9))
        );
    }

    fn prompt(id: &str, file: &str, record: u64) -> Prompt {
        Prompt {
            id: id.into(),
            messages: vec![steerflow_operators::records::Message::new("user", id)],
            source: steerflow_operators::records::SourcePosition {
                file: file.into(),
                record,
            },
        }
    }

    #[test]
    fn planning_keeps_the_first_of_a_duplicated_id_and_counts_every_item() {
        let items = vec![
            ReadItem::Prompt(prompt("x", "b.jsonl", 1)),
            ReadItem::Prompt(prompt("x", "a.jsonl", 7)),
            ReadItem::Prompt(prompt("y", "a.jsonl", 2)),
            ReadItem::Reject(Reject::new("a.jsonl", 3, None, "invalid_json", "bad")),
            ReadItem::Stats {
                to: 0,
                first_reject: None,
                failed: None,
                stats: ReadStats {
                    records: 4,
                    prompts: 3,
                    already_committed: 0,
                    rejects: 1,
                },
            },
        ];
        let (prompts, settle) = plan_items(items, 3, &Default::default());
        let kept: Vec<(&str, &str)> = prompts
            .iter()
            .map(|p| (p.id.as_str(), p.source.file.as_str()))
            .collect();
        assert!(kept.contains(&("x", "a.jsonl")) && kept.contains(&("y", "a.jsonl")));
        assert_eq!(kept.len(), 2);
        let duplicate = settle.iter().find_map(|s| match s {
            Settled::InputRejected(r) if r.reason == "duplicate_id" => Some(r),
            _ => None,
        });
        assert_eq!(
            duplicate.map(|r| (r.file.as_str(), r.record)),
            Some(("b.jsonl", 1))
        );
        // One Expect per shard, together counting every prompt, reject and stats record.
        let expects: Vec<(usize, u64)> = settle
            .iter()
            .filter_map(|s| match s {
                Settled::Expect { shard, items } => Some((*shard, *items)),
                _ => None,
            })
            .collect();
        assert_eq!(expects.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(expects.iter().map(|e| e.1).sum::<u64>(), 2 + 3);
        // Committed shards are left out entirely.
        let resumed: std::collections::HashSet<usize> = (0..3).collect();
        let items = vec![ReadItem::Prompt(prompt("x", "a.jsonl", 1))];
        let (prompts, settle) = plan_items(items, 3, &resumed);
        assert!(prompts.is_empty() && settle.is_empty());
    }
}
