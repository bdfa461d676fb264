//! Reading and planning. Each worker reads its share of the input and leaves out what committed
//! runs settled ([`filter_share`]); the items are exchanged by prompt id, and once every reader
//! is done each planner keeps the first of a duplicated id, drops the shards a crashed attempt
//! already committed and counts what it routes to every shard ([`plan_items`]). Every planner
//! sees every reader's counts, so all stop together when the input has more bad records than
//! `input.max_rejects` allows, before any sampling.

// Prompts and settled items travel by value as timely records.
#![allow(clippy::result_large_err)]

use super::worker::Worker;
use crate::records::{read_totals, PromptKey, ReadItem, ReadStats, RunState, Settled};
use crate::reject::{Reject, RejectReason};
use crate::source::SourceOutput;
use crate::PipelineError;
use std::collections::{HashMap, HashSet};
use steerflow_operators::records::Prompt;
use steerflow_operators::seeding::shard_of;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Exchange;
use timely::dataflow::StreamVec;

/// A prompt to sample, or an item that goes straight to its shard's owner.
pub(crate) type Planned = Result<Prompt, Settled>;

/// A reader's share after the incremental filter: new prompts, rejects not yet reported, and
/// its counts for each of the `planners`.
pub fn filter_share(share: SourceOutput, state: &RunState, planners: usize) -> Vec<ReadItem> {
    let mut stats = ReadStats {
        records: share.records,
        prompts: share.prompts.len() as u64,
        already_committed: 0,
        rejects: 0,
    };
    let mut items = Vec::new();
    let reject = |r: Reject, items: &mut Vec<ReadItem>| {
        if !state.reported.contains(&r.key()) {
            items.push(ReadItem::Reject(r));
        }
    };
    for r in share.rejects {
        reject(r, &mut items);
    }
    for prompt in share.prompts {
        let key = PromptKey::of(&prompt);
        match state.settled.get(&key.id) {
            None => match state.excluded.get(&prompt.id) {
                None => items.push(ReadItem::Prompt(prompt)),
                Some((reason, detail)) => {
                    let mut r = Reject::new(
                        &prompt.source.file,
                        prompt.source.record,
                        Some("messages"),
                        *reason,
                        detail.clone(),
                    );
                    r.prompt_id = Some(prompt.id.clone());
                    reject(r, &mut items);
                }
            },
            Some(digest) if *digest == key.digest => stats.already_committed += 1,
            Some(_) => {
                let mut r = Reject::new(
                    &prompt.source.file,
                    prompt.source.record,
                    Some("messages"),
                    RejectReason::ChangedSinceCommitted,
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
    // Prompts a rule left out are reported, but only bad records count against the limit.
    let rejects: Vec<&Reject> = items
        .iter()
        .filter_map(|i| match i {
            ReadItem::Reject(r) if r.reason.is_error() => Some(r),
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
    resumed: &HashSet<usize>,
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
                RejectReason::DuplicateId,
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
    settle.retain(|s| !resumed.contains(&s.shard(shards)));
    prompts.sort_by(|a, b| (shard_of(&a.id, shards), &a.id).cmp(&(shard_of(&b.id, shards), &b.id)));
    let mut counts = vec![0u64; shards];
    for p in &prompts {
        counts[shard_of(&p.id, shards)] += 1;
    }
    for s in &settle {
        counts[s.shard(shards)] += 1;
    }
    for (shard, &items) in counts.iter().enumerate() {
        if !resumed.contains(&shard) {
            settle.push(Settled::Expect { shard, items });
        }
    }
    (prompts, settle)
}

/// Exchanges read items to their planners and plans once every reader is done.
pub(crate) trait PlanPrompts<'s> {
    fn plan_prompts(self, worker: &Worker, resumed: HashSet<usize>) -> StreamVec<'s, u64, Planned>;
}

impl<'s> PlanPrompts<'s> for StreamVec<'s, u64, ReadItem> {
    fn plan_prompts(self, worker: &Worker, resumed: HashSet<usize>) -> StreamVec<'s, u64, Planned> {
        let worker = worker.clone();
        self.exchange(|item: &ReadItem| item.route())
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Planned>>, _, _, _>(
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
                                        ReadItem::Stats {
                                            stats: s,
                                            first_reject,
                                            failed,
                                            ..
                                        } => {
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
                        let Some(c) = cap.take() else { return };
                        if let Some(message) = failed_reader.take() {
                            worker.fail_unless_failed(PipelineError::Worker(format!(
                                "a worker could not read its share of the input: {message}"
                            )));
                            return;
                        }
                        let (total, first) = read_totals(&stats);
                        let max_rejects = worker.spec.max_rejects;
                        if max_rejects.exceeded(total.rejects, total.records) {
                            worker.fail(PipelineError::TooManyRejects {
                                count: total.rejects,
                                limit: max_rejects.to_string(),
                                first: first.map(|r| r.to_string()).unwrap_or_default(),
                            });
                            return;
                        }
                        // Planner 0 settles the totals (into shard 0's part).
                        if worker.index == 0 {
                            items.push(ReadItem::Stats {
                                stats: total,
                                first_reject: None,
                                failed: None,
                                to: 0,
                            });
                        }
                        let shards = worker.spec.shards;
                        let (prompts, settle) =
                            plan_items(std::mem::take(&mut items), shards, &resumed);
                        worker.sample_bar.add_total(prompts.len() as u64);
                        worker.score_bar.add_total(
                            prompts.len() as u64 * worker.spec.samples_per_prompt as u64,
                        );
                        let mut session = output.session(&c);
                        session.give_iterator(settle.into_iter().map(Err));
                        session.give_iterator(prompts.into_iter().map(Ok));
                    }
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ReadItem::Reject(Reject::new(
                "a.jsonl",
                3,
                None,
                crate::reject::RejectReason::InvalidJson,
                "bad",
            )),
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
