//! Counters of a run, merged over workers, and the `summary.json` written beside the data.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What one worker's stages did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageCounters {
    pub prompts_sampled: u64,
    pub samples: u64,
    pub prompt_tokens_prefilled: u64,
    pub tokens_decoded: u64,
    /// Seconds the sampling stage kept its worker busy.
    pub sampling_seconds: f64,
    /// Of which: prompt prefill, and drawing samples after it.
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub samples_scored: u64,
    /// Samples whose scores are NaN or infinite (never chosen; reported here).
    pub samples_unscored: u64,
    pub tokens_scored: u64,
    pub scoring_seconds: f64,

    /// Responses the reward model could not fit in its context (overlength = skip).
    pub overlength_skipped: u64,
    /// Responses scored after dropping earliest turns (overlength = drop-turns).
    pub overlength_truncated: u64,
    pub finish_reasons: BTreeMap<String, u64>,
    pub pairs: u64,
    pub dropped: BTreeMap<String, u64>,
    /// Requests to served models (policy, judge, reward server), counted once per process.
    #[serde(default)]
    pub served: steerflow_models::served::ServedStats,
}

impl StageCounters {
    pub fn merge(&mut self, other: &StageCounters) {
        self.prompts_sampled += other.prompts_sampled;
        self.samples += other.samples;
        self.prompt_tokens_prefilled += other.prompt_tokens_prefilled;
        self.tokens_decoded += other.tokens_decoded;
        self.sampling_seconds += other.sampling_seconds;
        self.prefill_seconds += other.prefill_seconds;
        self.decode_seconds += other.decode_seconds;
        self.samples_scored += other.samples_scored;
        self.samples_unscored += other.samples_unscored;
        self.tokens_scored += other.tokens_scored;
        self.scoring_seconds += other.scoring_seconds;
        self.overlength_skipped += other.overlength_skipped;
        self.overlength_truncated += other.overlength_truncated;
        self.pairs += other.pairs;
        self.served.add(other.served);
        for (k, v) in &other.finish_reasons {
            *self.finish_reasons.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.dropped {
            *self.dropped.entry(k.clone()).or_default() += v;
        }
    }
}

/// Rates per second of worker time: a stage's count divided by the busy seconds of the workers
/// that ran it, times the number of workers (the stage's throughput with all workers busy).
pub fn per_second(count: u64, busy_seconds: f64, workers: usize) -> f64 {
    if busy_seconds <= 0.0 {
        0.0
    } else {
        count as f64 / busy_seconds * workers as f64
    }
}
