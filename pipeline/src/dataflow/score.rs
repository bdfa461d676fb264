//! Scoring: the reward model scores one prompt's samples at a time, whatever containers timely
//! groups them in (batch composition changes the float results through shared prefixes and
//! padding, and the output must not depend on it); goodness is the bound weights' dot product.

use super::groups::PromptGroups;
use super::worker::Worker;
use std::time::Instant;
use steerflow_operators::dedup::first_copies;
use steerflow_operators::records::{Sample, ScoredSample};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

/// What scoring gave one distinct response: attributes, tokens run, turns dropped, and why it
/// is unscored.
type Outcome = (Vec<f64>, u64, u32, Option<String>);

/// Scores samples as they arrive: consecutive samples of one prompt go to the reward model
/// together, so it can share their prompt's prefill (the judge) or batch them (trained heads).
/// Identical responses of one prompt are scored once and share the scores (the model scores a
/// row as it would alone, so a second copy could only repeat them). A failure leaves NaN
/// attributes (never chosen, counted as unscored).
fn score_samples(samples: Vec<Sample>, worker: &Worker) -> Vec<ScoredSample> {
    let started = Instant::now();
    let (spec, models) = (&worker.spec, &worker.models);
    let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
    let (firsts, slots) = first_copies(&texts);
    let items: Vec<(&[steerflow_operators::records::Message], &str)> = firsts
        .iter()
        .map(|&i| {
            (
                samples[i].prompt.messages.as_slice(),
                samples[i].text.as_str(),
            )
        })
        .collect();
    let results = models.reward.score_batch(&items);
    // A served reward model that stayed down, or refuses every request, ends the run: none of
    // this prompt's samples go on (so no shard commits them), and the rerun scores them again.
    if let Some(i) = results
        .iter()
        .position(|r| r.as_ref().is_err_and(|e| e.stops_the_run()))
    {
        if let Some(Err(e)) = results.into_iter().nth(i) {
            worker.fail_unless_failed(crate::PipelineError::Model(e));
        }
        return Vec::new();
    }
    let mut c = worker.counters.borrow_mut();
    let outcomes: Vec<Outcome> = results
        .into_iter()
        .zip(&firsts)
        .map(|(result, &i)| match result {
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
                let sample = &samples[i];
                tracing::warn!(prompt_id = %sample.prompt.id, sample = sample.sample_index, error = %e, "scoring failed; the sample is unscored");
                (vec![f64::NAN; models.reward.attribute_names().len()], 0, 0, Some(reason.to_string()))
            }
        })
        .collect();
    let scored: Vec<ScoredSample> = samples
        .into_iter()
        .enumerate()
        .map(|(i, sample)| {
            let (attributes, tokens, dropped_turns, mut unscored) = outcomes[slots[i]].clone();
            // Tokens count once, on the copy that was scored.
            let tokens = if firsts[slots[i]] == i { tokens } else { 0 };
            let goodness = spec.goodness.goodness(&attributes);
            if goodness.is_finite() {
                c.samples_scored += 1;
            } else {
                c.samples_unscored += 1;
                unscored.get_or_insert_with(|| "non_finite_score".to_string());
            }
            c.tokens_scored += tokens;
            ScoredSample {
                sample,
                attributes,
                goodness,
                scored_tokens: tokens,
                dropped_turns,
                unscored,
            }
        })
        .collect();
    c.scoring_seconds += started.elapsed().as_secs_f64();
    scored
}

/// Scores each prompt's samples once all of them are in.
pub(crate) trait ScoreSamples<'s> {
    fn score_samples(self, worker: &Worker) -> StreamVec<'s, u64, ScoredSample>;
}

impl<'s> ScoreSamples<'s> for StreamVec<'s, u64, Sample> {
    fn score_samples(self, worker: &Worker) -> StreamVec<'s, u64, ScoredSample> {
        let worker = worker.clone();
        self.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<ScoredSample>>, _, _, _>(
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
                            worker.score_bar.begin();
                            let scored = score_samples(group, &worker);
                            let tokens = scored.iter().map(|s| s.scored_tokens).sum();
                            worker.score_bar.advance(scored.len() as u64, tokens);
                            session.give_iterator(scored.into_iter());
                        }
                    }
                    if frontier.is_empty() {
                        cap = None;
                    }
                }
            },
        )
    }
}
