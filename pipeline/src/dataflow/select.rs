//! The per-prompt reduce at the owner of the prompt's shard: once all N scored samples of a
//! prompt are in, [`reduce_prompt`] selects its pairs (`steerflow_operators::pairs`, by the
//! run's [`PairRule`], drawing from the prompt's own seed) and the prompt's goodness stats, and
//! the outcome leaves at once.

use super::groups::PromptGroups;
use crate::records::{PromptOutcome, Settled};
use steerflow_operators::normalize::NormStats;
use steerflow_operators::pairs::{select_pairs, Candidate, PairRule};
use steerflow_operators::records::ScoredSample;
use steerflow_operators::seeding::{pair_draw, shard_of};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Exchange;
use timely::dataflow::StreamVec;

/// Builds the per-prompt outcome from its scored samples (any order).
pub fn reduce_prompt(mut samples: Vec<ScoredSample>, rule: &PairRule, seed: u64) -> PromptOutcome {
    samples.sort_by_key(|s| s.sample.sample_index);
    let prompt = samples[0].sample.prompt.clone();
    let candidates: Vec<Candidate<'_>> = samples
        .iter()
        .map(|s| Candidate {
            sample_index: s.sample.sample_index,
            goodness: s.goodness,
            tokens: s.sample.new_tokens,
            text: &s.sample.text,
        })
        .collect();
    let selection = select_pairs(&candidates, rule, pair_draw(seed, &prompt.id));
    let (pairs, dropped) = match selection.decision {
        Ok(pairs) => (pairs, None),
        Err(reason) => (Vec::new(), Some(reason)),
    };
    let prompt_stats = NormStats::from_values(samples.iter().map(|s| s.goodness));
    PromptOutcome {
        prompt,
        pairs,
        dropped,
        non_finite: selection.non_finite,
        prompt_stats,
        samples,
    }
}

/// Exchanges scored samples to the owner of their prompt's shard and reduces each prompt.
pub(crate) trait SelectPairs<'s> {
    fn select_pairs(self, shards: usize, rule: PairRule, seed: u64) -> StreamVec<'s, u64, Settled>;
}

impl<'s> SelectPairs<'s> for StreamVec<'s, u64, ScoredSample> {
    fn select_pairs(self, shards: usize, rule: PairRule, seed: u64) -> StreamVec<'s, u64, Settled> {
        self.exchange(move |s: &ScoredSample| shard_of(&s.sample.prompt.id, shards) as u64)
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Settled>>, _, _, _>(
                Pipeline,
                "SelectPair",
                move |default_cap, _info| {
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
                                session.give(Settled::Outcome(reduce_prompt(group, &rule, seed)));
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
