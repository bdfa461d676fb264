//! The timely dataflow of an iterative-DPO run.
//!
//! ```text
//! prompts (sorted by shard; each worker takes every peers-th)
//!   ─exchange(hash(prompt id))→ sample (N per prompt) ─ok/err→ rejects ─┐
//!   → score (reward model) → goodness                                     │
//!   ─exchange(owner of the prompt's shard)→ per-prompt reduce (select pair)│
//!   → concat ←─────────────exchange(owner of the prompt's shard)──────────┘
//!   → commit shard (part + marker, as soon as its last prompt is settled)
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

use crate::commit::{RunStore, ShardMarker, ShardPart};
use crate::reject::Reject;
use crate::spec::{Models, RunSpec};
use crate::summary::StageCounters;
use crate::PipelineError;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
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

/// Samples all of one prompt's responses, or says why it cannot.
fn sample_prompt(
    prompt: Prompt,
    spec: &RunSpec,
    models: &Models,
    counters: &RefCell<StageCounters>,
) -> Vec<Result<Sample, Reject>> {
    let started = Instant::now();
    let reject = |reason: &str, detail: String| {
        let mut r = Reject::new(
            &prompt.source.file,
            prompt.source.record,
            None,
            reason,
            detail,
        );
        r.prompt_id = Some(prompt.id.clone());
        vec![Err(r)]
    };
    let tokens = match models.policy.prompt_tokens(&prompt.messages) {
        Ok(t) => t,
        Err(e) if e.is_record_error() => return reject("policy_prompt", e.to_string()),
        Err(e) => return reject("policy_error", e.to_string()),
    };
    let n = spec.samples_per_prompt;
    let seeds: Vec<u64> = (0..n)
        .map(|i| sample_seed(spec.seed, &prompt.id, i))
        .collect();
    let (generations, work) = match models.policy.generate(&tokens, &seeds, &spec.generation) {
        Ok(g) => g,
        Err(e) => return reject("generation_failed", e.to_string()),
    };
    let mut c = counters.borrow_mut();
    c.prompts_sampled += 1;
    c.samples += generations.len() as u64;
    c.prompt_tokens_prefilled += work.prompt_tokens_prefilled;
    c.tokens_decoded += work.tokens_decoded;
    c.prefill_seconds += work.prefill_seconds;
    c.decode_seconds += work.decode_seconds;
    c.sampling_seconds += started.elapsed().as_secs_f64();
    generations
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            *c.finish_reasons
                .entry(g.finish.as_str().to_string())
                .or_default() += 1;
            Ok(Sample {
                prompt: prompt.clone(),
                sample_index: i as u32,
                samples_per_prompt: n,
                text: g.text,
                prompt_tokens: tokens.len() as u32,
                new_tokens: g.new_tokens,
                finish: g.finish,
                steer: models.policy.steer().map(str::to_string),
            })
        })
        .collect()
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
#[derive(Debug, Default)]
pub struct PromptGroups {
    pending: HashMap<String, Vec<Sample>>,
}

impl PromptGroups {
    /// Adds a sample; returns its prompt's samples (sorted by index) once all have arrived.
    pub fn add(&mut self, sample: Sample) -> Option<Vec<Sample>> {
        let expected = sample.samples_per_prompt as usize;
        let id = sample.prompt.id.clone();
        let group = self.pending.entry(id.clone()).or_default();
        group.push(sample);
        if group.len() < expected {
            return None;
        }
        let mut group = self.pending.remove(&id)?;
        group.sort_by_key(|s| s.sample_index);
        Some(group)
    }

    /// Groups still short of samples (none when every prompt's samples arrive), by prompt id.
    pub fn drain(&mut self) -> Vec<Vec<Sample>> {
        let mut rest: Vec<(String, Vec<Sample>)> = self.pending.drain().collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        rest.into_iter().map(|(_, g)| g).collect()
    }
}

/// What reaches a shard's owner for each prompt: its outcome, or why it could not be sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Settled {
    Outcome(PromptOutcome),
    Rejected(Reject),
    /// How many prompts `shard` holds in this run (sent by the worker that feeds the prompts).
    Expect {
        shard: usize,
        prompts: u64,
    },
}

/// Collects settled prompts per shard and reports a shard as complete once it holds
/// `expected[shard]` prompts. Pure bookkeeping, tested without dataflow.
#[derive(Debug, Default)]
pub struct ShardCollector {
    expected: HashMap<usize, u64>,
    pending: HashMap<usize, Vec<Settled>>,
}

impl ShardCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one settled prompt of `shard`, or the shard's expected count; returns the shard's
    /// part when it is complete (its count is known and that many prompts are in).
    pub fn add(&mut self, shard: usize, item: Settled) -> Option<ShardPart> {
        match item {
            Settled::Expect { prompts, .. } => {
                self.expected.insert(shard, prompts);
            }
            item => self.pending.entry(shard).or_default().push(item),
        }
        let expected = *self.expected.get(&shard)?;
        let have = self.pending.get(&shard).map_or(0, Vec::len) as u64;
        if have != expected {
            return None;
        }
        self.expected.remove(&shard);
        let items = self.pending.remove(&shard).unwrap_or_default();
        Some(shard_part(shard, items))
    }

    /// Shards that never completed: (shard, prompts settled, prompts expected if known).
    pub fn incomplete(&self) -> Vec<(usize, usize, Option<u64>)> {
        let mut shards: Vec<usize> = self
            .pending
            .keys()
            .chain(self.expected.keys())
            .copied()
            .collect();
        shards.sort();
        shards.dedup();
        shards
            .into_iter()
            .map(|k| {
                (
                    k,
                    self.pending.get(&k).map_or(0, Vec::len),
                    self.expected.get(&k).copied(),
                )
            })
            .collect()
    }
}

/// A shard's part from its settled prompts (any order): outcomes and rejects sorted by prompt id.
pub fn shard_part(shard: usize, items: Vec<Settled>) -> ShardPart {
    let mut outcomes = Vec::new();
    let mut rejects = Vec::new();
    for item in items {
        match item {
            Settled::Outcome(o) => outcomes.push(o),
            Settled::Rejected(r) => rejects.push(r),
            Settled::Expect { .. } => {}
        }
    }
    outcomes.sort_by(|a: &PromptOutcome, b| a.prompt.id.cmp(&b.prompt.id));
    rejects.sort_by(|a: &Reject, b| a.prompt_id.cmp(&b.prompt_id));
    ShardPart {
        shard,
        outcomes,
        rejects,
    }
}

/// The output shard a settled prompt belongs to.
fn settled_shard(item: &Settled, shards: usize) -> usize {
    match item {
        Settled::Outcome(o) => shard_of(&o.prompt.id, shards),
        Settled::Rejected(r) => shard_of(r.prompt_id.as_deref().unwrap_or_default(), shards),
        Settled::Expect { shard, .. } => *shard,
    }
}

/// Runs the graph on the cluster `spec.cluster` (this process's workers). Worker 0 of process 0
/// feeds `prompts` (sorted by shard, so that shards complete one after another) and `expected`
/// (prompts per shard; the other processes pass empty ones); the owner of shard k (worker
/// k % all workers) commits the shard's part and marker through `store` as soon as its
/// prompts are settled. `connected` is set once the dataflow runs (every peer is connected).
#[allow(clippy::too_many_arguments)]
pub fn run_graph(
    spec: Arc<RunSpec>,
    models: Models,
    prompts: Arc<Vec<Prompt>>,
    store: Arc<RunStore>,
    expected: Arc<Vec<u64>>,
    progress: &crate::progress::Progress,
    connected: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<WorkerResult>, PipelineError> {
    let total_prompts = prompts.len() as u64;
    let sample_bar = progress.stage("sample", "prompts", total_prompts);
    let score_bar = progress.stage(
        "score",
        "responses",
        total_prompts * spec.samples_per_prompt as u64,
    );
    let (sample_bar_w, score_bar_w) = (sample_bar.clone(), score_bar.clone());
    let guards = timely::execute(spec.cluster.timely_config(), move |worker| {
        let index = worker.index();
        connected.store(true, std::sync::atomic::Ordering::SeqCst);
        let counters = Rc::new(RefCell::new(StageCounters::default()));
        let markers = Rc::new(RefCell::new(Vec::new()));
        let failure: Rc<RefCell<Option<PipelineError>>> = Rc::new(RefCell::new(None));
        let runtime = Rc::new(crate::storage::io_runtime()?);
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            // One worker of the cluster feeds the prompts; the exchange spreads them.
            let feeder = index == 0;
            let mine: Vec<Prompt> = if feeder { prompts.to_vec() } else { Vec::new() };
            let expect: Vec<Settled> = if feeder {
                expected
                    .iter()
                    .enumerate()
                    .filter(|(_, &n)| n > 0)
                    .map(|(shard, &prompts)| Settled::Expect { shard, prompts })
                    .collect()
            } else {
                Vec::new()
            };
            let (spec_s, models_s, counters_s, bar, failed) =
                (spec.clone(), models.clone(), counters.clone(), sample_bar_w.clone(), failure.clone());
            let sampled = mine
                .to_stream(scope)
                .exchange(|p: &Prompt| route_hash(&p.id))
                .flat_map(move |prompt| {
                    if failed.borrow().is_some() {
                        return Vec::new(); // a shard could not be committed: stop working
                    }
                    let out = sample_prompt(prompt, &spec_s, &models_s, &counters_s);
                    bar.advance(1);
                    out
                });
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
                        let mut groups: HashMap<String, Vec<ScoredSample>> = HashMap::new();
                        move |(input, frontier), output| {
                            let mut complete = Vec::new();
                            input.for_each_stamp(|_, data| {
                                for batch in data {
                                    for s in batch.drain(..) {
                                        let expected = s.sample.samples_per_prompt as usize;
                                        let group = groups.entry(s.sample.prompt.id.clone()).or_default();
                                        group.push(s);
                                        if group.len() == expected {
                                            let id = group[0].sample.prompt.id.clone();
                                            complete.extend(groups.remove(&id));
                                        }
                                    }
                                }
                            });
                            if frontier.is_empty() {
                                // Groups short of samples (none today: every sample is scored, NaN or not).
                                let mut rest: Vec<_> = groups.drain().map(|(_, g)| g).collect();
                                rest.sort_by(|a, b| a[0].sample.prompt.id.cmp(&b[0].sample.prompt.id));
                                complete.extend(rest);
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
                .container::<Vec<Reject>>()
                .exchange(move |r: &Reject| shard_of(r.prompt_id.as_deref().unwrap_or_default(), shards) as u64)
                .map(Settled::Rejected);
            let expectations = expect
                .to_stream(scope)
                .exchange(move |e: &Settled| settled_shard(e, shards) as u64);

            // Commit each shard the moment its last prompt is settled.
            let (store_c, runtime_c, markers_c, failure_c) =
                (store.clone(), runtime.clone(), markers.clone(), failure.clone());
            outcomes
                .concat(rejected)
                .concat(expectations)
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<ShardMarker>>, _, _, _>(
                    Pipeline,
                    "CommitShards",
                    move |default_cap, _info| {
                        let mut cap = Some(default_cap);
                        let mut collector = ShardCollector::new();
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
                                        "shards left incomplete (shard, prompts settled, prompts expected): {incomplete:?}"
                                    )));
                                }
                                if let Some(c) = cap.take() {
                                    drop(c);
                                }
                            }
                            let _ = &output;
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
    for r in guards.join() {
        results.push(r.map_err(PipelineError::Worker)??);
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
        Settled::Rejected(r)
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
    fn a_shard_is_complete_when_all_its_prompts_are_settled() {
        let mut collector = ShardCollector::new();
        assert_eq!(
            collector.add(
                0,
                Settled::Expect {
                    shard: 0,
                    prompts: 2
                }
            ),
            None
        );
        assert_eq!(collector.add(0, rejected("b")), None);
        // The count may arrive after the prompts.
        assert_eq!(collector.add(1, rejected("c")), None);
        let one = collector
            .add(
                1,
                Settled::Expect {
                    shard: 1,
                    prompts: 1,
                },
            )
            .expect("shard 1 holds one prompt");
        assert_eq!(one.shard, 1);
        assert_eq!(collector.incomplete(), vec![(0, 1, Some(2))]);
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
    }
}
