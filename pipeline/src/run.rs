//! A whole iterative-DPO run, exactly once (see [`crate::commit`] for the protocol):
//!
//! 1. read the input; leave out prompts that runs already committed in this output
//!    (incremental runs) and derive the run id from what is left;
//! 2. create the run's plan, skip the shards a crashed attempt already committed (resume);
//! 3. run the graph over the other prompts: each shard's part and marker is committed as soon as
//!    its last prompt is settled;
//! 4. from all parts: run-wide stats, the data files, rejects, summary and report;
//! 5. commit the manifest, then rewrite README, summary and report from the manifests.

use crate::commit::{committed_manifests, new_writer_id, Manifest, RunPlan, RunStore, ShardPart, RUNS};
use crate::dataflow::run_graph;
use crate::records::{PromptKey, PromptOutcome, ReadStats, RunState};
use crate::progress::Progress;
use crate::reject::{enforce_limit, Reject};
use crate::formats::{Shard, ShardFile};
use crate::sink::{dataset_readme, write_run_shard, ModelIds};
use crate::spec::{Models, RunSpec};
use crate::storage::{io_runtime, redact_url, Location};
use crate::summary::{per_second, StageCounters};
use crate::PipelineError;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use steerflow_operators::normalize::NormStats;

/// What a finished run reports (also written as `summary.json`).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub summary: serde_json::Value,
    /// The data files of this run.
    pub files: Vec<ShardFile>,
    /// The work this launch did (zero for shards it resumed).
    pub counters: StageCounters,
    pub rejects: Vec<Reject>,
}

/// The settings that decide a run's rows, apart from its prompts: the run's lineage.
fn lineage_settings(spec: &RunSpec, ids: &ModelIds) -> serde_json::Value {
    let sampling = &spec.generation.sampling;
    json!({
        "job": "iterative-dpo",
        "policy": ids.policy,
        "scorer": ids.scorer,
        "attributes": ids.attribute_names,
        "seed": spec.seed,
        "samples_per_prompt": spec.samples_per_prompt,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "max_new_tokens": spec.generation.max_new_tokens,
        "stop": spec.generation.stop,
        "goodness": spec.goodness_preset,
        "weights": format!("{:?}", spec.goodness),
        "normalization": format!("{:?}", spec.normalization),
        "min_margin": spec.min_margin,
        "shards": spec.shards,
        "formats": spec.formats,
    })
}

/// Runs an iterative-DPO job end to end, exactly once. `input_format` is the config's
/// `input.format` (`auto` picks each file's by its extension).
pub fn run_iterative_dpo(
    spec: RunSpec,
    input_format: &str,
    models: Models,
) -> Result<RunReport, PipelineError> {
    let started = Instant::now();
    let output = Location::parse(&spec.output, true)?;
    let rt = io_runtime()?;
    let files = crate::input::list_input(&spec.input, input_format)?;
    let input_identity = crate::input::input_identity(&files);
    tracing::info!(input = %redact_url(&spec.input), files = files.len(), "input");
    let ids = ModelIds {
        policy: models.policy.model().id().to_string(),
        scorer: models.reward.id(),
        attribute_names: models.reward.attribute_names(),
    };
    let settings = lineage_settings(&spec, &ids);
    let lineage = crate::digest::digest(settings.to_string().as_bytes());

    // Incremental state: what committed runs in this output already settled.
    let committed = rt.block_on(committed_manifests(&output))?;
    if let Some(other) = committed.iter().find(|m| m.lineage != lineage) {
        return Err(PipelineError::RunConflict(format!(
            "{} holds run {} made with different settings (models, sampling, scoring or seed; \
             see {RUNS}/{}/plan.json); write this run to a new output location",
            redact_url(&output.display),
            other.run_id,
            other.run_id
        )));
    }
    if let Some(latest) = committed
        .iter()
        .find(|m| m.input_identity == input_identity)
    {
        tracing::info!(run = %latest.run_id, "nothing new to do: run {} read this very input", latest.run_id);
        return up_to_date(&output, rt, &committed, &spec);
    }
    let after_runs: Vec<String> = committed.iter().map(|m| m.run_id.clone()).collect();
    let plan = RunPlan::new(settings, &input_identity, &after_runs, spec.shards);
    let writer = new_writer_id();
    let store = Arc::new(RunStore::new(output.clone(), &plan.run_id, &writer));
    rt.block_on(store.ensure_plan(&plan))?;

    // Resume: shards with a marker are done; nobody reads their prompts into the graph again.
    let markers = rt.block_on(store.markers())?;
    let state = RunState {
        settled: committed
            .iter()
            .flat_map(|m| &m.prompts)
            .map(|k| (k.id.clone(), k.digest.clone()))
            .collect(),
        reported: committed
            .iter()
            .flat_map(|m| m.input_rejects.iter().cloned())
            .collect(),
        resumed: markers.keys().copied().collect(),
    };
    let resumed_shards = markers.len();
    tracing::info!(run = %plan.run_id, resumed_shards, earlier_runs = committed.len(), "plan");

    let spec = Arc::new(spec);
    let progress = Progress::new();
    // Timely waits forever for peers that never come; give up after the configured time.
    let on_timeout = spec.cluster.on_connect_timeout;
    let watch = crate::cluster::ConnectWatch::start(&spec.cluster, move |message| {
        // The run cannot start; nothing was committed.
        tracing::error!("{message}");
        if let Some(action) = on_timeout {
            action(message);
        }
    });
    let results = run_graph(
        spec.clone(),
        models.clone(),
        Arc::new(files),
        Arc::new(state),
        store.clone(),
        &progress,
        watch.flag(),
    )?;
    let mut counters = StageCounters::default();
    for r in &results {
        counters.merge(&r.counters);
    }
    if !spec.cluster.is_leader() {
        tracing::info!(run = %plan.run_id, process = spec.cluster.process, "this process's share is done; process 0 commits the run");
        return Ok(RunReport {
            summary: json!({
                "job": "iterative-dpo",
                "run_id": plan.run_id,
                "output": redact_url(&spec.output),
                "process": spec.cluster.process,
                "processes": spec.cluster.processes,
                "committed_by": 0,
                "tokens": {
                    "prompt_tokens_prefilled": counters.prompt_tokens_prefilled,
                    "tokens_decoded": counters.tokens_decoded,
                    "tokens_scored": counters.tokens_scored,
                    "prompts_sampled": counters.prompts_sampled,
                },
            }),
            files: Vec::new(),
            counters,
            rejects: Vec::new(),
        });
    }

    // Every shard is committed now; the rest is a pure function of the parts.
    let markers = rt.block_on(store.markers())?;
    if let Some(missing) = (0..spec.shards).find(|k| !markers.contains_key(k)) {
        return Err(PipelineError::Worker(format!(
            "shard {missing} of run {} has no marker after the graph finished",
            plan.run_id
        )));
    }
    let parts = markers
        .values()
        .map(|m| rt.block_on(store.read_part(m)))
        .collect::<Result<Vec<_>, _>>()?;
    let outcomes: Vec<&PromptOutcome> = parts.iter().flat_map(|p| &p.outcomes).collect();
    let mut read = ReadStats::default();
    for p in &parts {
        read.add(&p.read_stats);
    }
    let input_rejects: Vec<&Reject> = parts.iter().flat_map(|p| &p.input_rejects).collect();
    let mut settled_keys: Vec<PromptKey> = parts
        .iter()
        .flat_map(|p| p.settled.iter().cloned())
        .collect();
    settled_keys.sort();
    let mut input_reject_keys: Vec<String> = input_rejects.iter().map(|r| r.key()).collect();
    input_reject_keys.sort();
    let mut rejects: Vec<Reject> = input_rejects.iter().map(|r| (*r).clone()).collect();
    rejects.extend(parts.iter().flat_map(|p| p.rejects.iter().cloned()));
    rejects.sort_by(|a, b| {
        (a.file.as_str(), a.record, a.reason.as_str()).cmp(&(
            b.file.as_str(),
            b.record,
            b.reason.as_str(),
        ))
    });
    enforce_limit(spec.max_rejects, &rejects, read.records)?;
    if settled_keys.is_empty() && rejects.is_empty() && !committed.is_empty() {
        tracing::info!(run = %plan.run_id, "nothing new to do: the input changed but holds no prompt the committed runs did not settle");
        return up_to_date(&output, rt, &committed, &spec);
    }

    let run_stats = NormStats::from_values(
        outcomes
            .iter()
            .flat_map(|o| o.samples.iter().map(|s| s.goodness)),
    );
    let text = models.policy.model().text();
    let render = |messages: &[steerflow_operators::records::Message]| text.render(messages, true);
    let mut files = Vec::new();
    for part in &parts {
        let shard_outcomes: Vec<&PromptOutcome> = part.outcomes.iter().collect();
        files.extend(write_run_shard(
            &output,
            rt,
            &spec,
            &ids,
            &shard_outcomes,
            run_stats.as_ref(),
            &render,
            Shard {
                k: part.shard,
                n: spec.shards,
                run: Some(&plan.run_id),
            },
        )?);
        crate::faults::point("data-file");
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let rejects_file = (!rejects.is_empty()).then(|| format!("rejects/{}.jsonl", plan.run_id));
    if let Some(path) = &rejects_file {
        rt.block_on(output.put(path, crate::reject::rejects_jsonl(&rejects)))?;
    }

    let counts = settled_counts(&outcomes, &rejects, &parts);
    let elapsed = started.elapsed().as_secs_f64();
    let summary = run_summary(RunFacts {
        spec: &spec,
        ids: &ids,
        run_id: &plan.run_id,
        counts: &counts,
        run_stats,
        counters: &counters,
        elapsed,
        files: &files,
        incremental: json!({
            "records_read": read.records,
            "prompts_in_input": read.prompts,
            "prompts_already_committed": read.already_committed,
            "prompts_new": settled_keys.len(),
            "earlier_runs": after_runs,
            "resumed_shards": resumed_shards,
        }),
        timeline: progress.timeline(),
    });
    let report = report_for(&spec, &ids, &outcomes, &summary);
    let summary_file = format!("{RUNS}/{}/summary.json", plan.run_id);
    rt.block_on(async {
        output
            .put(
                &summary_file,
                serde_json::to_vec_pretty(&summary).unwrap_or_default(),
            )
            .await?;
        output
            .put(
                &format!("{RUNS}/{}/report.html", plan.run_id),
                report.into_bytes(),
            )
            .await
    })?;

    let manifest = Manifest {
        run_id: plan.run_id.clone(),
        lineage,
        writer: writer.clone(),
        committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        input: redact_url(&spec.input),
        input_identity,
        prompts: settled_keys,
        input_rejects: input_reject_keys,
        files: files.clone(),
        rejects_file,
        summary_file,
        counts: summary["counts"].clone(),
    };
    if rt.block_on(store.commit(&manifest))? {
        tracing::info!(run = %plan.run_id, "run committed");
    } else {
        tracing::info!(run = %plan.run_id, "another launch of the same run committed it first; its commit stands");
    }
    let all = rt.block_on(committed_manifests(&output))?;
    publish(&output, rt, &all, &spec.description)?;
    let swept = rt.block_on(store.sweep_parts(&markers))?;
    if !swept.is_empty() {
        tracing::info!(swept = swept.len(), "removed the parts of losing attempts");
    }
    Ok(RunReport {
        summary,
        files,
        counters,
        rejects,
    })
}

/// Nothing new in the input: make sure the output's README and top-level files reflect the
/// committed runs (a crash may have come between a commit and them) and report the latest run.
fn up_to_date(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    committed: &[Manifest],
    spec: &RunSpec,
) -> Result<RunReport, PipelineError> {
    publish(output, rt, committed, &spec.description)?;
    let latest = committed
        .last()
        .ok_or_else(|| PipelineError::Worker("up_to_date called with no committed run".into()))?;
    let mut summary: serde_json::Value = rt
        .block_on(output.get(&latest.summary_file))?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({"counts": latest.counts}));
    summary["up_to_date"] = json!(true);
    Ok(RunReport {
        summary,
        files: latest.files.clone(),
        counters: StageCounters::default(),
        rejects: Vec::new(),
    })
}

/// Rewrites `README.md` (every committed run's files) and the top-level `summary.json` and
/// `report.html` (the latest committed run's) from the manifests. Idempotent.
pub fn publish(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    committed: &[Manifest],
    description: &str,
) -> Result<(), PipelineError> {
    let Some(latest) = committed.last() else {
        return Ok(());
    };
    let files: Vec<ShardFile> = committed.iter().flat_map(|m| m.files.clone()).collect();
    rt.block_on(async {
        let summary = output.get(&latest.summary_file).await?;
        let mut summary: serde_json::Value = summary
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| json!({}));
        summary["runs"] = json!(committed
            .iter()
            .map(
                |m| json!({"run_id": m.run_id, "committed_at": m.committed_at, "counts": m.counts})
            )
            .collect::<Vec<_>>());
        let report = output
            .get(&format!("{RUNS}/{}/report.html", latest.run_id))
            .await?;
        if let Some(report) = report {
            output.put("report.html", report.to_vec()).await?;
        }
        output
            .put(
                "summary.json",
                serde_json::to_vec_pretty(&summary).unwrap_or_default(),
            )
            .await?;
        let mut readme = dataset_readme(&files, description, &summary);
        readme.push_str("\n## Runs\n\n| run | committed | prompts | pairs |\n|---|---|---|---|\n");
        for m in committed {
            readme.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                m.run_id,
                m.committed_at,
                m.prompts.len(),
                m.counts["pairs"]
            ));
        }
        output.put("README.md", readme.into_bytes()).await
    })
}

/// Counts that depend only on the run's parts and input: identical for a resumed run.
fn settled_counts(
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
    let mut rejected_by_reason = BTreeMap::<String, u64>::new();
    for r in rejects {
        *rejected_by_reason.entry(r.reason.clone()).or_default() += 1;
    }
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
        "pairs": outcomes.iter().filter(|o| o.pair.is_some()).count(),
        "dropped": dropped,
        "rejected": rejects.len(),
        "rejected_by_reason": rejected_by_reason,
        "finish_reasons": finish_reasons,
        "prompt_tokens": outcomes.iter().map(|o| o.samples.first().map(|s| s.sample.prompt_tokens as u64).unwrap_or(0)).sum::<u64>(),
        "response_tokens": samples.iter().map(|s| s.sample.new_tokens as u64).sum::<u64>(),
        "tokens_scored": samples.iter().map(|s| s.scored_tokens).sum::<u64>(),
    })
}

struct RunFacts<'a> {
    spec: &'a RunSpec,
    ids: &'a ModelIds,
    run_id: &'a str,
    counts: &'a serde_json::Value,
    run_stats: Option<NormStats>,
    counters: &'a StageCounters,
    elapsed: f64,
    files: &'a [ShardFile],
    incremental: serde_json::Value,
    timeline: serde_json::Value,
}

/// `summary.json`: `counts` describe the run's rows (the same however often it was resumed);
/// `tokens`, `timings` and `throughput` describe the work this launch did.
fn run_summary(f: RunFacts<'_>) -> serde_json::Value {
    let (spec, c) = (f.spec, f.counters);
    let sampling = &spec.generation.sampling;
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
        "pairs": { "min_margin": spec.min_margin },
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
            "sampling_tokens_per_second": per_second(c.tokens_decoded, c.sampling_seconds, spec.workers),
            "prefill_tokens_per_second": per_second(c.prompt_tokens_prefilled, c.prefill_seconds, spec.workers),
            "decode_tokens_per_second": per_second(c.tokens_decoded, c.decode_seconds, spec.workers),
            "tokens_scored_per_second": per_second(c.tokens_scored, c.scoring_seconds, spec.workers),
            "scoring_responses_per_second": per_second(c.samples_scored + c.samples_unscored, c.scoring_seconds, spec.workers),
        },
        "files": f.files,
        "timeline": f.timeline,
    })
}

/// The run's `report.html`.
fn report_for(
    spec: &RunSpec,
    ids: &ModelIds,
    outcomes: &[&PromptOutcome],
    summary: &serde_json::Value,
) -> String {
    let responses: Vec<crate::report::ResponseStat> = outcomes
        .iter()
        .flat_map(|o| &o.samples)
        .map(|s| crate::report::ResponseStat {
            goodness: s.goodness,
            attributes: s.attributes.clone(),
            length_chars: s.sample.text.chars().count(),
        })
        .collect();
    let margins: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.pair.map(|(_, _, m)| m))
        .collect();
    let rejects_by_reason: Vec<(String, u64)> = summary["counts"]["rejected_by_reason"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    crate::report::report_html(
        &format!("steerflow run: {}", redact_url(&spec.output)),
        &ids.attribute_names,
        &responses,
        &margins,
        &rejects_by_reason,
        summary,
    )
}
