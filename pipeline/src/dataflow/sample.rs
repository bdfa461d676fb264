//! Sampling: N responses per prompt through the policy's continuous-batching engine, each
//! sample seeded by (run seed, prompt id, sample index). Prompts go to the engine a chunk at a
//! time (enough to keep its batch full) and the operator reschedules itself for the rest, so
//! scoring and shard commits run between chunks: a crash loses at most the shards in flight and
//! samples never pile up. A prompt that cannot be sampled leaves as a reject with its key.

// Samples and rejects travel by value as timely records; both are large, so boxing one side
// of the Result buys nothing.
#![allow(clippy::result_large_err)]

use super::worker::Worker;
use crate::records::PromptKey;
use crate::reject::{Reject, RejectReason};
use std::collections::VecDeque;
use std::time::Instant;
use steerflow_models::engine::GenerationRequest;
use steerflow_operators::records::{Prompt, Sample};
use steerflow_operators::seeding::sample_seed;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// A sample, or why its prompt could not be sampled.
pub(crate) type Sampled = Result<Sample, (Reject, PromptKey)>;

/// Samples all the responses of a batch of prompts, or says why a prompt cannot be sampled. The
/// prompts run together through the generation engine's continuous batches; a sample's tokens
/// depend only on its prompt, seed and the sampling settings, never on the batch. `progress` is
/// called with (prompts finished, tokens drawn): once per prompt as it finishes, and after every
/// step of the engine with the tokens it drew; once `cancelled` says so, the rest are left unsampled.
fn sample_prompts(
    prompts: Vec<Prompt>,
    worker: &Worker,
    cancelled: impl Fn() -> bool,
    progress: impl Fn(u64, u64),
) -> Vec<Result<Sample, (Reject, PromptKey)>> {
    let started = Instant::now();
    let (spec, models, counters) = (&worker.spec, &worker.models, &worker.counters);
    let reject = |prompt: &Prompt, reason: RejectReason, detail: String| {
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
                    RejectReason::PolicyPrompt
                } else {
                    RejectReason::PolicyError
                };
                out.push(reject(&prompt, reason, e.to_string()));
                progress(1, 0);
            }
        }
    }
    let prompt_lengths: Vec<u32> = requests
        .iter()
        .map(|r| r.prompt_tokens.len() as u32)
        .collect();
    let messages: Vec<&[steerflow_operators::records::Message]> =
        accepted.iter().map(|p| p.messages.as_slice()).collect();
    models.policy.generate_many(
        requests,
        &messages,
        &spec.generation,
        &spec.engine,
        (
            |i, result| {
                let prompt = &accepted[i];
                match result {
                    // A server that stayed down, or refuses every request, ends the run
                    // (nothing of this prompt is committed, and the rerun samples it again).
                    Err(e) if e.stops_the_run() => {
                        worker.fail_unless_failed(crate::PipelineError::Model(e));
                        return;
                    }
                    Err(e) => out.push(reject(
                        prompt,
                        RejectReason::GenerationFailed,
                        e.to_string(),
                    )),
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
                progress(1, 0);
            },
            |tokens| progress(0, tokens),
        ),
        cancelled,
    );
    counters.borrow_mut().sampling_seconds += started.elapsed().as_secs_f64();
    out
}

/// Samples the prompts of this worker, a chunk at a time.
pub(crate) trait SamplePrompts<'s> {
    fn sample_prompts(self, worker: &Worker) -> StreamVec<'s, u64, Sampled>;
}

impl<'s> SamplePrompts<'s> for StreamVec<'s, u64, Prompt> {
    fn sample_prompts(self, worker: &Worker) -> StreamVec<'s, u64, Sampled> {
        let worker = worker.clone();
        let spec = &worker.spec;
        let chunk =
            (4 * spec.engine.max_sequences / spec.samples_per_prompt.max(1) as usize).max(1);
        let scope = self.scope();
        self.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Sampled>>, _, _, _>(
            Pipeline,
            "Sample",
            move |default_cap, info| {
                let activator = scope.activator_for(info.address.clone());
                let mut cap = Some(default_cap);
                let mut stash: VecDeque<Prompt> = VecDeque::new();
                move |(input, frontier), output| {
                    input.for_each_stamp(|_, data| {
                        for batch in data {
                            stash.extend(batch.drain(..));
                        }
                    });
                    if let (Some(c), false) = (cap.as_ref(), stash.is_empty()) {
                        let prompts: Vec<Prompt> = stash.drain(..chunk.min(stash.len())).collect();
                        worker.sample_bar.begin();
                        // A shard that could not be committed stops the work.
                        let out = sample_prompts(
                            prompts,
                            &worker,
                            || worker.failed(),
                            |prompts, tokens| worker.sample_bar.advance(prompts, tokens),
                        );
                        output.session(c).give_iterator(out.into_iter());
                        if worker.failed() {
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
        )
    }
}
