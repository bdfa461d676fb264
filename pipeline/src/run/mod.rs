//! A whole iterative-DPO run, exactly once (see [`crate::commit`] for the protocol):
//!
//! 1. read the input; leave out prompts that runs already committed in this output
//!    (incremental runs) and derive the run id from what is left;
//! 2. create the run's plan, skip the shards a crashed attempt already committed (resume);
//! 3. run the graph over the other prompts: each shard's part and marker is committed as soon as
//!    its last prompt is settled;
//! 4. from all parts: run-wide stats, the data files, rejects, summary and report;
//! 5. commit the manifest, then rewrite README, summary and report from the manifests.

use crate::commit::{
    committed_manifests, committed_of_lineage, new_writer_id, Manifest, RunPlan, RunStore,
    ShardPart, RUNS,
};
use crate::dataflow::run_graph;
use crate::formats::{Shard, ShardFile};
use crate::progress::Progress;
use crate::publish::{publish, ReadmeText};
use crate::records::{PromptKey, PromptOutcome, ReadStats, RunState};
use crate::reject::{enforce_limit, Reject};
use crate::sink::{write_run_shard, ModelIds};
use crate::spec::{Models, RunSpec};
use crate::storage::{io_runtime, redact_url, Location};
use crate::summary::StageCounters;
use crate::PipelineError;
use account::{report_for, run_summary, settled_counts, RunFacts};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use steerflow_operators::normalize::NormStats;

mod account;

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
        "pairs": spec.pairs,
        "shards": spec.shards,
        "formats": spec.formats,
        "dedup": spec.prompt_dedup.as_ref().map(|d| &d.lineage),
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
        policy: models.policy.id().to_string(),
        scorer: models.reward.id(),
        attribute_names: models.reward.attribute_names(),
    };
    let settings = lineage_settings(&spec, &ids);
    let lineage = crate::digest::digest(settings.to_string().as_bytes());

    // Incremental state: what committed runs in this output already settled.
    let committed = rt.block_on(committed_of_lineage(&output, &lineage))?;
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
        excluded: Default::default(),
    };
    let mut state = state;
    if let Some(dedup) = &spec.prompt_dedup {
        state.excluded = crate::dedup::prompts::excluded_prompts(dedup, &files, &state.settled)?;
        tracing::info!(prompts_left_out = state.excluded.len(), "dedup");
    }
    let resumed_shards = markers.len();
    tracing::info!(run = %plan.run_id, resumed_shards, "plan");

    let (spec, progress) = (Arc::new(spec), Progress::new());
    let counters = run_dataflow(&spec, &models, files, state, &store, &progress)?;
    if !spec.cluster.is_leader() {
        tracing::info!(run = %plan.run_id, process = spec.cluster.process, "this process's share is done; process 0 commits the run");
        return Ok(share_done(&spec, &plan.run_id, counters));
    }
    let settled = gather_parts(&store, &spec, rt)?;
    enforce_limit(spec.max_rejects, &settled.rejects, settled.read.records)?;
    if settled.keys.is_empty() && settled.rejects.is_empty() && !committed.is_empty() {
        tracing::info!(run = %plan.run_id, "nothing new to do: the input changed but holds no prompt the committed runs did not settle");
        return up_to_date(&output, rt, &committed, &spec);
    }
    let facts = Launch {
        spec: &spec,
        ids: &ids,
        run_id: &plan.run_id,
        counters: &counters,
        started,
        progress: &progress,
        incremental: json!({
            "records_read": settled.read.records,
            "prompts_in_input": settled.read.prompts,
            "prompts_already_committed": settled.read.already_committed,
            "prompts_new": settled.keys.len(),
            "earlier_runs": after_runs,
            "resumed_shards": resumed_shards,
        }),
    };
    let (files, rejects_file, summary) = write_run(&output, rt, &models, &settled, facts)?;
    let manifest = Manifest {
        run_id: plan.run_id.clone(),
        lineage,
        writer: writer.clone(),
        committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        input: redact_url(&spec.input),
        input_identity,
        prompts: settled.keys.clone(),
        input_rejects: settled.input_reject_keys.clone(),
        files: files.clone(),
        rejects_file,
        summary_file: format!("{RUNS}/{}/summary.json", plan.run_id),
        counts: summary["counts"].clone(),
        other_files: Vec::new(),
        top_files: Vec::new(),
    };
    commit_and_publish(
        &output,
        rt,
        &store,
        &manifest,
        &spec.description,
        &settled.markers,
    )?;
    Ok(RunReport {
        summary,
        files,
        counters,
        rejects: settled.rejects,
    })
}

/// Runs the graph over this process's workers; the work they did, merged: on process 0 the
/// work of every process's workers (gathered by the dataflow), elsewhere this process's.
fn run_dataflow(
    spec: &Arc<RunSpec>,
    models: &Models,
    files: Vec<crate::input::InputFile>,
    state: RunState,
    store: &Arc<RunStore>,
    progress: &Progress,
) -> Result<StageCounters, PipelineError> {
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
        progress,
        watch.flag(),
    )?;
    let mut counters = StageCounters::default();
    let gathered = results
        .iter()
        .find(|r| r.index == 0)
        .map(|r| r.cluster_counters.as_slice())
        .filter(|all| !all.is_empty());
    match gathered {
        Some(all) => all.iter().for_each(|c| counters.merge(c)),
        None => results.iter().for_each(|r| counters.merge(&r.counters)),
    }
    Ok(counters)
}

/// The account of a process other than 0: its share is done, process 0 commits.
fn share_done(spec: &RunSpec, run_id: &str, counters: StageCounters) -> RunReport {
    RunReport {
        summary: json!({
            "job": "iterative-dpo",
            "run_id": run_id,
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
    }
}

/// Everything the winning parts of a run hold, in a fixed order.
struct SettledRun {
    markers: BTreeMap<usize, crate::commit::ShardMarker>,
    parts: Vec<ShardPart>,
    read: ReadStats,
    /// Every prompt settled, sorted.
    keys: Vec<PromptKey>,
    input_reject_keys: Vec<String>,
    /// Input and sampling rejects, sorted by file, record and reason.
    rejects: Vec<Reject>,
}

/// Reads the winning part of every shard (all are committed once the graph is done).
fn gather_parts(
    store: &RunStore,
    spec: &RunSpec,
    rt: &tokio::runtime::Runtime,
) -> Result<SettledRun, PipelineError> {
    let markers = rt.block_on(store.markers())?;
    if let Some(missing) = (0..spec.shards).find(|k| !markers.contains_key(k)) {
        return Err(PipelineError::Worker(format!(
            "shard {missing} of run {} has no marker after the graph finished",
            store.run_id
        )));
    }
    let parts = markers
        .values()
        .map(|m| rt.block_on(store.read_part(m)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut read = ReadStats::default();
    for p in &parts {
        read.add(&p.read_stats);
    }
    let input_rejects: Vec<&Reject> = parts.iter().flat_map(|p| &p.input_rejects).collect();
    let mut keys: Vec<PromptKey> = parts
        .iter()
        .flat_map(|p| p.settled.iter().cloned())
        .collect();
    keys.sort();
    let mut input_reject_keys: Vec<String> = input_rejects.iter().map(|r| r.key()).collect();
    input_reject_keys.sort();
    let mut rejects: Vec<Reject> = input_rejects.iter().map(|r| (*r).clone()).collect();
    rejects.extend(parts.iter().flat_map(|p| p.rejects.iter().cloned()));
    crate::reject::sort_in_input_order(&mut rejects);
    Ok(SettledRun {
        markers,
        parts,
        read,
        keys,
        input_reject_keys,
        rejects,
    })
}

/// What this launch knows beyond the parts, for the summary.
struct Launch<'a> {
    spec: &'a RunSpec,
    ids: &'a ModelIds,
    run_id: &'a str,
    counters: &'a StageCounters,
    started: Instant,
    progress: &'a Progress,
    incremental: serde_json::Value,
}

/// Writes the run's data files, rejects, summary and report from its parts (the same bytes
/// however often the run was resumed); returns the files, the rejects file and the summary.
fn write_run(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    models: &Models,
    settled: &SettledRun,
    launch: Launch<'_>,
) -> Result<(Vec<ShardFile>, Option<String>, serde_json::Value), PipelineError> {
    let (spec, run_id) = (launch.spec, launch.run_id);
    let outcomes: Vec<&PromptOutcome> = settled.parts.iter().flat_map(|p| &p.outcomes).collect();
    let run_stats = NormStats::from_values(
        outcomes
            .iter()
            .flat_map(|o| o.samples.iter().map(|s| s.goodness)),
    );
    let text = models.policy.text();
    let render = |messages: &[steerflow_operators::records::Message]| text.render(messages, true);
    let mut files = Vec::new();
    for part in &settled.parts {
        let shard_outcomes: Vec<&PromptOutcome> = part.outcomes.iter().collect();
        files.extend(write_run_shard(
            output,
            rt,
            spec,
            launch.ids,
            &shard_outcomes,
            run_stats.as_ref(),
            &render,
            Shard {
                k: part.shard,
                n: spec.shards,
                run: Some(run_id),
            },
        )?);
        crate::faults::point("data-file");
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let rejects = &settled.rejects;
    let rejects_file = (!rejects.is_empty()).then(|| format!("rejects/{run_id}.jsonl"));
    if let Some(path) = &rejects_file {
        rt.block_on(output.put(path, crate::reject::rejects_jsonl(rejects)))?;
    }
    let counts = settled_counts(&outcomes, rejects, &settled.parts);
    let summary = run_summary(RunFacts {
        spec,
        ids: launch.ids,
        run_id,
        counts: &counts,
        run_stats,
        counters: launch.counters,
        elapsed: launch.started.elapsed().as_secs_f64(),
        files: &files,
        incremental: launch.incremental,
        timeline: launch.progress.timeline(),
    });
    let report = report_for(spec, launch.ids, &outcomes, &summary);
    rt.block_on(async {
        output
            .put(
                &format!("{RUNS}/{run_id}/summary.json"),
                crate::commit::to_json(&summary, "summary.json")?,
            )
            .await?;
        output
            .put(&format!("{RUNS}/{run_id}/report.html"), report.into_bytes())
            .await
    })?;
    Ok((files, rejects_file, summary))
}

/// Commits the manifest (the first launch to create it wins), rewrites the output's README,
/// summary and report from every manifest, and deletes losing attempts' parts.
fn commit_and_publish(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    store: &RunStore,
    manifest: &Manifest,
    description: &str,
    markers: &BTreeMap<usize, crate::commit::ShardMarker>,
) -> Result<(), PipelineError> {
    if rt.block_on(store.commit(manifest))? {
        tracing::info!(run = %manifest.run_id, "run committed");
    } else {
        tracing::info!(run = %manifest.run_id, "another launch of the same run committed it first; its commit stands");
    }
    let all = rt.block_on(committed_manifests(output))?;
    publish(output, rt, &all, &readme_text(description))?;
    let swept = rt.block_on(store.sweep_parts(markers))?;
    if !swept.is_empty() {
        tracing::info!(swept = swept.len(), "removed the parts of losing attempts");
    }
    Ok(())
}

/// Nothing new in the input: make sure the output's README and top-level files reflect the
/// committed runs (a crash may have come between a commit and them) and report the latest run.
fn up_to_date(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    committed: &[Manifest],
    spec: &RunSpec,
) -> Result<RunReport, PipelineError> {
    publish(output, rt, committed, &readme_text(&spec.description))?;
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

/// The README's words for preference pairs.
fn readme_text(description: &str) -> ReadmeText<'_> {
    ReadmeText {
        description,
        ..ReadmeText::pairs()
    }
}
