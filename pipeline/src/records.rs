//! The records of an iterative-DPO run as they travel between the dataflow's operators and into
//! the committed parts: what a reader hands to planning ([`ReadItem`]), what reaches a shard's
//! owner ([`Settled`]), a prompt's outcome ([`PromptOutcome`]) and the keys the incremental
//! state remembers ([`PromptKey`]). Below the operators, the commit protocol and the sinks, which
//! all use them.

use crate::reject::Reject;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use steerflow_operators::normalize::NormStats;
use steerflow_operators::pairs::{ChosenRejected, DropReason};
use steerflow_operators::records::{Prompt, ScoredSample};
use steerflow_operators::seeding::{prompt_id_from_messages, route_hash, shard_of};

/// A prompt as the incremental state knows it: its id and a digest of its messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PromptKey {
    pub id: String,
    pub digest: String,
}

impl PromptKey {
    pub fn of(prompt: &Prompt) -> Self {
        Self {
            id: prompt.id.clone(),
            digest: prompt_id_from_messages(&prompt.messages),
        }
    }
}

/// The result of the per-prompt reduce: all scored samples of a prompt and the pair, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptOutcome {
    pub prompt: Prompt,
    /// Scored samples, sorted by sample index.
    pub samples: Vec<ScoredSample>,
    /// The prompt's pairs (indices into `samples` and their margin); empty when dropped.
    pub pairs: Vec<ChosenRejected>,
    pub dropped: Option<DropReason>,
    /// Samples with NaN or infinite goodness.
    pub non_finite: usize,
    /// Mean and std of this prompt's finite goodness values.
    pub prompt_stats: Option<NormStats>,
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

impl Settled {
    /// The output shard of a settled item (`Expect` names its own; read counts go to shard 0).
    pub fn shard(&self, shards: usize) -> usize {
        match self {
            Settled::Outcome(o) => shard_of(&o.prompt.id, shards),
            Settled::Rejected(_, key) => shard_of(&key.id, shards),
            Settled::InputRejected(r) => shard_of(&r.route(), shards),
            Settled::Stats(_) => 0,
            Settled::Expect { shard, .. } => *shard,
        }
    }
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

impl ReadItem {
    /// The planning worker an item goes to: by prompt id (rejects by their route), stats to
    /// the planner they name.
    pub fn route(&self) -> u64 {
        match self {
            ReadItem::Prompt(p) => route_hash(&p.id),
            ReadItem::Reject(r) => route_hash(&r.route()),
            ReadItem::Stats { to, .. } => *to as u64,
        }
    }
}

/// What the run already holds: committed prompts, reported input rejects, committed shards.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    /// Prompt id → messages digest, of prompts committed runs settled.
    pub settled: HashMap<String, String>,
    /// Keys of input rejects committed runs reported.
    pub reported: HashSet<String>,
    /// Shards of this run whose markers exist (a resumed run does not redo them).
    pub resumed: HashSet<usize>,
    /// Prompts a rule of the job leaves out before sampling (`[dedup]`: duplicates of a sampled
    /// prompt, prompts holding a benchmark item): id → why, naming the copy kept or the item.
    pub excluded: HashMap<String, (crate::reject::RejectReason, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_totals_sum_every_reader_and_name_the_first_reject_in_input_order() {
        let stats = |records, rejects| ReadStats {
            records,
            prompts: records - rejects,
            already_committed: 0,
            rejects,
        };
        let bad = |file: &str, record| {
            Reject::new(
                file,
                record,
                None,
                crate::reject::RejectReason::InvalidJson,
                "x",
            )
        };
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
}
