//! A whole run: read the input, run the graph, write rejects, summary and README.

use crate::graph::run_graph;
use crate::progress::Progress;
use crate::reject::{enforce_limit, Reject};
use crate::sink::{finish_dataset, ModelIds, ShardFile};
use crate::source::{read_prompts, InputFormat, RecordShape};
use crate::spec::{Models, RunSpec};
use crate::storage::{io_runtime, Location};
use crate::summary::{per_second, StageCounters};
use crate::PipelineError;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// What a finished run reports (also written as `summary.json`).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub summary: serde_json::Value,
    pub files: Vec<ShardFile>,
    pub counters: StageCounters,
    pub rejects: Vec<Reject>,
}

/// Runs an iterative-DPO job end to end.
pub fn run_iterative_dpo(
    spec: RunSpec,
    input_format: InputFormat,
    models: Models,
) -> Result<RunReport, PipelineError> {
    let started = Instant::now();
    let output = Location::parse(&spec.output, true)?;
    let source = read_prompts(&spec.input, input_format, RecordShape::Prompt)?;
    tracing::info!(input = %spec.input, prompts = source.prompts.len(), rejected = source.rejects.len(), "read input");
    enforce_limit(spec.max_rejects, &source.rejects, source.records)?;
    let prompts_read = source.records;
    let prompts = Arc::new(source.prompts);
    let ids = ModelIds {
        policy: models.policy.model().id().to_string(),
        scorer: models.reward.id(),
        attribute_names: models.reward.attribute_names(),
    };
    let spec = Arc::new(spec);
    let progress = Progress::new();
    let results = run_graph(
        spec.clone(),
        models,
        prompts.clone(),
        output.clone(),
        ids.clone(),
        &progress,
    )?;

    let mut counters = StageCounters::default();
    let mut rejects = source.rejects;
    let mut files = Vec::new();
    let mut run_stats = None;
    let mut responses = Vec::new();
    let mut margins = Vec::new();
    for r in results {
        responses.extend(r.responses);
        margins.extend(r.margins);
        counters.merge(&r.counters);
        rejects.extend(r.rejects);
        files.extend(r.files);
        run_stats = run_stats.or(r.run_stats);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    rejects.sort_by(|a, b| (a.file.as_str(), a.record).cmp(&(b.file.as_str(), b.record)));
    enforce_limit(spec.max_rejects, &rejects, prompts_read)?;

    let elapsed = started.elapsed().as_secs_f64();
    let mut rejects_by_reason = std::collections::BTreeMap::<String, u64>::new();
    for r in &rejects {
        *rejects_by_reason.entry(r.reason.clone()).or_default() += 1;
    }
    let sampling = &spec.generation.sampling;
    let summary = json!({
        "job": "iterative-dpo",
        "input": spec.input,
        "output": spec.output,
        "policy": ids.policy,
        "scorer": ids.scorer,
        "attributes": ids.attribute_names,
        "seed": spec.seed,
        "workers": spec.workers,
        "sampling": {
            "samples_per_prompt": spec.samples_per_prompt,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "max_new_tokens": spec.generation.max_new_tokens,
            "stop": spec.generation.stop,
        },
        "goodness": { "preset": spec.goodness_preset, "normalization": spec.normalization.name(), "run_stats": run_stats },
        "pairs": { "min_margin": spec.min_margin },
        "counts": {
            "records_read": prompts_read,
            "prompts": prompts.len(),
            "prompts_sampled": counters.prompts_sampled,
            "samples": counters.samples,
            "samples_scored": counters.samples_scored,
            "samples_unscored": counters.samples_unscored,
            "reward_overlength_skipped": counters.overlength_skipped,
            "reward_overlength_truncated": counters.overlength_truncated,
            "pairs": counters.pairs,
            "dropped": counters.dropped,
            "rejected": rejects.len(),
            "rejected_by_reason": rejects_by_reason,
            "finish_reasons": counters.finish_reasons,
        },
        "tokens": {
            "prompt_tokens_prefilled": counters.prompt_tokens_prefilled,
            "tokens_decoded": counters.tokens_decoded,
            "tokens_scored": counters.tokens_scored,
        },
        "timings": {
            "total_seconds": elapsed,
            "sampling_busy_seconds": counters.sampling_seconds,
            "prefill_busy_seconds": counters.prefill_seconds,
            "decode_busy_seconds": counters.decode_seconds,
            "scoring_busy_seconds": counters.scoring_seconds,
        },
        "throughput": {
            "sampling_tokens_per_second": per_second(counters.tokens_decoded, counters.sampling_seconds, spec.workers),
            "prefill_tokens_per_second": per_second(counters.prompt_tokens_prefilled, counters.prefill_seconds, spec.workers),
            "decode_tokens_per_second": per_second(counters.tokens_decoded, counters.decode_seconds, spec.workers),
            "tokens_scored_per_second": per_second(counters.tokens_scored, counters.scoring_seconds, spec.workers),
            "scoring_responses_per_second": per_second(counters.samples_scored + counters.samples_unscored, counters.scoring_seconds, spec.workers),
        },
        "files": files,
    });

    let rejects_by_reason: Vec<(String, u64)> = summary["counts"]["rejected_by_reason"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let report = crate::report::report_html(
        &format!("steerflow run: {}", spec.output),
        &ids.attribute_names,
        &responses,
        &margins,
        &rejects_by_reason,
        &summary,
    );
    let rt = io_runtime()?;
    rt.block_on(output.put("report.html", report.into_bytes()))?;
    finish_dataset(&output, &rt, &files, &rejects, &summary, &spec.description)?;
    Ok(RunReport {
        summary,
        files,
        counters,
        rejects,
    })
}
