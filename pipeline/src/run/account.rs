//! The account of an iterative-DPO run: counts that depend only on its parts (the same however
//! often it was resumed), `summary.json` and `report.html`.

use crate::commit::ShardPart;
use crate::formats::ShardFile;
use crate::records::PromptOutcome;
use crate::reject::Reject;
use crate::sink::ModelIds;
use crate::spec::RunSpec;
use crate::storage::redact_url;
use crate::summary::{per_second, StageCounters};
use serde_json::json;
use std::collections::BTreeMap;
use steerflow_operators::normalize::NormStats;

/// Counts that depend only on the run's parts and input: identical for a resumed run.
pub(super) fn settled_counts(
    outcomes: &[&PromptOutcome],
    rejects: &[Reject],
    parts: &[ShardPart],
) -> serde_json::Value {
    let samples: Vec<_> = outcomes.iter().flat_map(|o| &o.samples).collect();
    let mut finish_reasons = BTreeMap::<String, u64>::new();
    let mut unscored_by_reason = BTreeMap::<String, u64>::new();
    for s in &samples {
        *finish_reasons
            .entry(s.sample.finish.as_str().to_string())
            .or_default() += 1;
        if let Some(reason) = &s.unscored {
            *unscored_by_reason.entry(reason.clone()).or_default() += 1;
        }
    }
    let mut dropped = BTreeMap::<String, u64>::new();
    for o in outcomes {
        if let Some(reason) = o.dropped {
            *dropped.entry(reason.as_str().to_string()).or_default() += 1;
        }
    }
    let rejected_by_reason = crate::reject::counts_by_reason(rejects);
    let scored = samples.iter().filter(|s| s.goodness.is_finite()).count();
    let prompts_rejected_in_sampling: usize = parts.iter().map(|p| p.rejects.len()).sum();
    json!({
        "prompts": outcomes.len() + prompts_rejected_in_sampling,
        "prompts_sampled": outcomes.len(),
        "samples": samples.len(),
        "samples_scored": scored,
        "samples_unscored": samples.len() - scored,
        "unscored_by_reason": unscored_by_reason,
        "reward_overlength_skipped": unscored_by_reason.get("context_overflow").copied().unwrap_or(0),
        "reward_overlength_truncated": samples.iter().filter(|s| s.dropped_turns > 0).count(),
        "pairs": outcomes.iter().map(|o| o.pairs.len()).sum::<usize>(),
        "prompts_with_pairs": outcomes.iter().filter(|o| !o.pairs.is_empty()).count(),
        "dropped": dropped,
        "rejected": rejects.len(),
        "rejected_by_reason": rejected_by_reason,
        "finish_reasons": finish_reasons,
        "prompt_tokens": outcomes.iter().map(|o| o.samples.first().map(|s| s.sample.prompt_tokens as u64).unwrap_or(0)).sum::<u64>(),
        "response_tokens": samples.iter().map(|s| s.sample.new_tokens as u64).sum::<u64>(),
        "tokens_scored": samples.iter().map(|s| s.scored_tokens).sum::<u64>(),
        // Responses identical to an earlier response of their prompt: scored once, never
        // paired against their copy.
        "identical_responses": outcomes.iter().map(|o| {
            let texts: Vec<&str> = o.samples.iter().map(|s| s.sample.text.as_str()).collect();
            texts.len() - steerflow_operators::dedup::first_copies(&texts).0.len()
        }).sum::<usize>(),
    })
}

pub(super) struct RunFacts<'a> {
    pub(super) spec: &'a RunSpec,
    pub(super) ids: &'a ModelIds,
    pub(super) run_id: &'a str,
    pub(super) counts: &'a serde_json::Value,
    pub(super) run_stats: Option<NormStats>,
    pub(super) counters: &'a StageCounters,
    pub(super) elapsed: f64,
    pub(super) files: &'a [ShardFile],
    pub(super) incremental: serde_json::Value,
    pub(super) timeline: serde_json::Value,
}

/// `summary.json`: `counts` describe the run's rows (the same however often it was resumed);
/// `tokens`, `timings` and `throughput` describe the work this launch did.
pub(super) fn run_summary(f: RunFacts<'_>) -> serde_json::Value {
    let (spec, c) = (f.spec, f.counters);
    let sampling = &spec.generation.sampling;
    // The counters are every process's (gathered by the dataflow), so every worker counts.
    let workers = spec.workers * spec.cluster.processes;
    json!({
        "job": "iterative-dpo",
        "run_id": f.run_id,
        "input": redact_url(&spec.input),
        "output": redact_url(&spec.output),
        "policy": f.ids.policy,
        "scorer": f.ids.scorer,
        "attributes": f.ids.attribute_names,
        "seed": spec.seed,
        "workers": spec.workers,
        "processes": spec.cluster.processes,
        "sampling": {
            "samples_per_prompt": spec.samples_per_prompt,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_new_tokens": spec.generation.max_new_tokens,
            "stop": spec.generation.stop,
        },
        "goodness": { "preset": spec.goodness_preset, "normalization": spec.normalization.name(), "run_stats": f.run_stats },
        "pairs": spec.pairs,
        "counts": f.counts,
        "incremental": f.incremental,
        "tokens": {
            "prompt_tokens_prefilled": c.prompt_tokens_prefilled,
            "tokens_decoded": c.tokens_decoded,
            "tokens_scored": c.tokens_scored,
            "prompts_sampled": c.prompts_sampled,
        },
        "timings": {
            "total_seconds": f.elapsed,
            "sampling_busy_seconds": c.sampling_seconds,
            "prefill_busy_seconds": c.prefill_seconds,
            "decode_busy_seconds": c.decode_seconds,
            "scoring_busy_seconds": c.scoring_seconds,
        },
        "throughput": {
            "sampling_tokens_per_second": per_second(c.tokens_decoded, c.sampling_seconds, workers),
            "prefill_tokens_per_second": per_second(c.prompt_tokens_prefilled, c.prefill_seconds, workers),
            "decode_tokens_per_second": per_second(c.tokens_decoded, c.decode_seconds, workers),
            "tokens_scored_per_second": per_second(c.tokens_scored, c.scoring_seconds, workers),
            "scoring_responses_per_second": per_second(c.samples_scored + c.samples_unscored, c.scoring_seconds, workers),
        },
        "served": c.served,
        "files": f.files,
        "timeline": f.timeline,
    })
}

/// Pairs of the report's examples drawn by the run's seed, besides the largest and smallest
/// margins.
const EXAMPLES_DRAWN: usize = 4;

/// The run's `report.html`.
pub(super) fn report_for(
    spec: &RunSpec,
    ids: &ModelIds,
    outcomes: &[&PromptOutcome],
    summary: &serde_json::Value,
) -> String {
    use crate::report::{ExamplePair, ExampleResponse, PairStat, ResponseStat, SamplingReport};
    let mut responses: Vec<ResponseStat> = Vec::new();
    let mut pairs: Vec<PairStat> = Vec::new();
    // (prompt id, margin, outcome, pair) of every pair; only the few shown are copied.
    let mut candidates: Vec<(&str, f64, usize, usize)> = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        let first = responses.len();
        responses.extend(o.samples.iter().map(|s| ResponseStat {
            goodness: s.goodness,
            attributes: s.attributes.clone(),
            tokens: s.sample.new_tokens,
            chosen: false,
            rejected: false,
        }));
        for (k, p) in o.pairs.iter().enumerate() {
            responses[first + p.chosen].chosen = true;
            responses[first + p.rejected].rejected = true;
            pairs.push(PairStat {
                margin: p.margin,
                chosen_tokens: o.samples[p.chosen].sample.new_tokens,
                rejected_tokens: o.samples[p.rejected].sample.new_tokens,
            });
            candidates.push((&o.prompt.id, p.margin, i, k));
        }
    }
    let keys: Vec<(&str, f64)> = candidates.iter().map(|c| (c.0, c.1)).collect();
    let examples: Vec<(ExamplePair, &'static str)> =
        crate::report::examples::pick(&keys, spec.seed, EXAMPLES_DRAWN)
            .into_iter()
            .map(|(j, why)| {
                let (o, pair) = (
                    outcomes[candidates[j].2],
                    &outcomes[candidates[j].2].pairs[candidates[j].3],
                );
                let response = |k: usize| ExampleResponse {
                    text: o.samples[k].sample.text.clone(),
                    score: o.samples[k].goodness,
                    attributes: o.samples[k].attributes.clone(),
                    tokens: Some(o.samples[k].sample.new_tokens),
                };
                let example = ExamplePair {
                    prompt_id: o.prompt.id.clone(),
                    prompt: ExamplePair::prompt_of(&o.prompt.messages),
                    margin: pair.margin,
                    chosen: response(pair.chosen),
                    rejected: response(pair.rejected),
                };
                (example, why)
            })
            .collect();
    let rejects_by_reason: Vec<(String, u64)> = summary["counts"]["rejected_by_reason"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    crate::report::report_html(&SamplingReport {
        title: &format!("steerflow run: {}", redact_url(&spec.output)),
        names: &ids.attribute_names,
        responses: &responses,
        pairs: &pairs,
        examples: &examples,
        rejects: &rejects_by_reason,
        summary,
    })
}
