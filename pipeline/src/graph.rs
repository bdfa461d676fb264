//! The timely dataflow of an iterative-DPO run.
//!
//! ```text
//! prompts (each worker takes every peers-th) ─exchange(hash(prompt id))→ sample (N per prompt)
//!   ─ok/err→ rejects
//!   → score (reward model) → goodness ─exchange(hash(prompt id))→ per-prompt reduce (select pair)
//!   ─exchange(owner of the prompt's output shard)→ collected per worker → that worker's parquet shards
//! goodness ─exchange(worker 0)→ run stats ─broadcast→ every worker (for run-normalised goodness)
//! ```
//!
//! The pure logic (seeds, goodness, normalisation, pair selection) lives in
//! `steerflow-operators`; the operators here only move records and call it.

// Samples and rejects travel by value as timely records; both are large, so boxing one side
// of the Result buys nothing.
#![allow(clippy::result_large_err)]

use crate::reject::Reject;
use crate::sink::{write_worker_shards, ModelIds, ShardFile};
use crate::spec::{Models, RunSpec};
use crate::storage::Location;
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
use timely::dataflow::operators::vec::{Broadcast, Map, ToStream};
use timely::dataflow::operators::{Exchange, Inspect, OkErr, Probe};

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

/// What a worker hands back after the dataflow has finished and its shards are written.
#[derive(Debug, Default)]
pub struct WorkerResult {
    pub index: usize,
    pub counters: StageCounters,
    pub rejects: Vec<Reject>,
    /// The parquet shards this worker wrote.
    pub files: Vec<ShardFile>,
    /// Goodness stats over the whole run (every worker receives them).
    pub run_stats: Option<NormStats>,
    /// Every scored response of the prompts this worker wrote, for the report.
    pub responses: Vec<crate::report::ResponseStat>,
    /// Chosen − rejected margins of this worker's pairs.
    pub margins: Vec<f64>,
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
            let (attributes, tokens) = match result {
                Ok(s) => {
                    if s.dropped_turns > 0 {
                        c.overlength_truncated += 1;
                    }
                    (s.attributes, s.tokens_run)
                }
                Err(e) => {
                    if matches!(e, steerflow_models::ModelError::ContextOverflow { .. }) {
                        c.overlength_skipped += 1;
                    }
                    tracing::warn!(prompt_id = %sample.prompt.id, sample = sample.sample_index, error = %e, "scoring failed; the sample is unscored");
                    (vec![f64::NAN; models.reward.attribute_names().len()], 0)
                }
            };
            let goodness = spec.goodness.goodness(&attributes);
            if goodness.is_finite() {
                c.samples_scored += 1;
            } else {
                c.samples_unscored += 1;
            }
            c.tokens_scored += tokens;
            ScoredSample { sample, attributes, goodness, scored_tokens: tokens }
        })
        .collect();
    c.scoring_seconds += started.elapsed().as_secs_f64();
    scored
}

/// Runs the graph on `spec.workers` threads; each worker then writes the output shards it owns.
pub fn run_graph(
    spec: Arc<RunSpec>,
    models: Models,
    prompts: Arc<Vec<Prompt>>,
    output: Location,
    ids: ModelIds,
    progress: &crate::progress::Progress,
) -> Result<Vec<WorkerResult>, PipelineError> {
    let total_prompts = prompts.len() as u64;
    let sample_bar = progress.stage("sample", "prompts", total_prompts);
    let score_bar = progress.stage(
        "score",
        "responses",
        total_prompts * spec.samples_per_prompt as u64,
    );
    let (sample_bar_w, score_bar_w) = (sample_bar.clone(), score_bar.clone());
    let guards = timely::execute(timely::Config::process(spec.workers.max(1)), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let counters = Rc::new(RefCell::new(StageCounters::default()));
        let rejects = Rc::new(RefCell::new(Vec::new()));
        let outcomes = Rc::new(RefCell::new(Vec::new()));
        let run_stats = Rc::new(RefCell::new(None));
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let mine: Vec<Prompt> =
                prompts.iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, p)| p.clone()).collect();
            let (spec_s, models_s, counters_s, bar) = (spec.clone(), models.clone(), counters.clone(), sample_bar_w.clone());
            let sampled = mine
                .to_stream(scope)
                .exchange(|p: &Prompt| route_hash(&p.id))
                .flat_map(move |prompt| {
                    let out = sample_prompt(prompt, &spec_s, &models_s, &counters_s);
                    bar.advance(1);
                    out
                });
            let (samples, sample_rejects) = sampled.ok_err(|r| r);
            let rejects_sink = rejects.clone();
            sample_rejects
                .container::<Vec<Reject>>()
                .inspect(move |r: &Reject| rejects_sink.borrow_mut().push(r.clone()))
                .probe_with(&probe);
            let (spec_c, models_c, counters_c, bar) = (spec.clone(), models.clone(), counters.clone(), score_bar_w.clone());
            let scored = samples.container::<Vec<Sample>>().unary::<timely::container::CapacityContainerBuilder<Vec<ScoredSample>>, _, _, _>(
                Pipeline,
                "Score",
                move |_, _| {
                    move |input, output| {
                        input.for_each_stamp(|cap, data| {
                            let mut session = output.session(&cap);
                            for batch in data {
                                // One prompt's samples are emitted together by the sample stage.
                                let samples = std::mem::take(batch);
                                let n = samples.len() as u64;
                                session.give_iterator(score_samples(samples, &spec_c, &models_c, &counters_c).into_iter());
                                bar.advance(n);
                            }
                        });
                    }
                },
            );

            // Run-wide goodness stats: gathered on worker 0, then broadcast.
            let stats_sink = run_stats.clone();
            scored
                .clone()
                .map(|s: ScoredSample| s.goodness)
                .exchange(|_| 0)
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<NormStats>>, _, _, _>(
                    Pipeline,
                    "RunStats",
                    |default_cap, _info| {
                        let mut cap = Some(default_cap);
                        let mut values: Vec<f64> = Vec::new();
                        move |(input, frontier), output| {
                            input.for_each_stamp(|_, data| {
                                for batch in data {
                                    values.append(batch);
                                }
                            });
                            if frontier.is_empty() {
                                if let Some(cap) = cap.take() {
                                    if let Some(stats) = NormStats::from_values(values.drain(..)) {
                                        output.session(&cap).give(stats);
                                    }
                                }
                            }
                        }
                    },
                )
                .broadcast()
                .inspect(move |s: &NormStats| *stats_sink.borrow_mut() = Some(*s))
                .probe_with(&probe);

            // Per-prompt reduce: a prompt's outcome leaves as soon as all its samples are in.
            let (min_margin, shards) = (spec.min_margin, spec.shards);
            let outcomes_sink = outcomes.clone();
            let counters_r = counters.clone();
            scored
                .exchange(|s: &ScoredSample| route_hash(&s.sample.prompt.id))
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<PromptOutcome>>, _, _, _>(
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
                                    session.give(reduce_prompt(group, min_margin));
                                }
                            }
                            if frontier.is_empty() {
                                cap = None;
                            }
                        }
                    },
                )
                .inspect(move |o: &PromptOutcome| {
                    let mut c = counters_r.borrow_mut();
                    match o.dropped {
                        None => c.pairs += 1,
                        Some(reason) => *c.dropped.entry(reason.as_str().to_string()).or_default() += 1,
                    }
                })
                .exchange(move |o: &PromptOutcome| shard_of(&o.prompt.id, shards) as u64)
                .inspect(move |o: &PromptOutcome| outcomes_sink.borrow_mut().push(o.clone()))
                .probe_with(&probe);
        });
        worker.step_while(|| !probe.done());
        let counters = counters.borrow().clone();
        let rejects = std::mem::take(&mut *rejects.borrow_mut());
        let outcomes = std::mem::take(&mut *outcomes.borrow_mut());
        let run_stats = *run_stats.borrow();
        let text = models.policy.model().text();
        let render = |messages: &[steerflow_operators::records::Message]| text.render(messages, true);
        let files =
            write_worker_shards(&output, &spec, &ids, index, peers, &outcomes, run_stats.as_ref(), &render)?;
        let responses = outcomes
            .iter()
            .flat_map(|o| &o.samples)
            .map(|s| crate::report::ResponseStat {
                goodness: s.goodness,
                attributes: s.attributes.clone(),
                length_chars: s.sample.text.chars().count(),
            })
            .collect();
        let margins = outcomes.iter().filter_map(|o| o.pair.map(|(_, _, m)| m)).collect();
        Ok::<_, PipelineError>(WorkerResult { index, counters, rejects, files, run_stats, responses, margins })
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
