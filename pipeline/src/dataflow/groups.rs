//! Pure bookkeeping of the dataflow: samples grouped by prompt until all of a prompt's samples
//! are in ([`PromptGroups`]), and settled items collected per shard until the shard is complete
//! ([`ShardCollector`]). Tested without timely.

use crate::commit::ShardPart;
use crate::records::{PromptKey, ReadStats, Settled};
use std::collections::HashMap;
use steerflow_operators::records::{Sample, ScoredSample};

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
    crate::reject::sort_in_input_order(&mut part.input_rejects);
    part.settled.sort();
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reject::Reject;
    use steerflow_operators::records::Prompt;

    fn rejected(id: &str) -> Settled {
        let mut r = Reject::new(
            "in.jsonl",
            1,
            None,
            crate::reject::RejectReason::PolicyPrompt,
            "x",
        );
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
}
