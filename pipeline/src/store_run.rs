//! Exactly-once runs of the job kinds that read their input on one process and score it without
//! sampling (helpsteer2-pairs, filter-rank, rm-eval, steerlm-annotate), on the same run store
//! as iterative-DPO (`commit.rs`): a run id from the lineage, the input's versions and the runs
//! already committed; one part and marker per shard, committed as soon as the shard is
//! processed (a crash loses at most the shard in flight); files written from the parts alone;
//! one manifest commit; incremental runs that settle only the records no committed run settled.
//!
//! A kind supplies a [`StoreJob`]: how to read a file into keyed records, how to process one
//! shard's records (the expensive part: the models), and how to write the run's files from
//! every shard's outcomes. Records that must be processed together (the responses of one
//! prompt) share a route and so a shard.

use crate::commit::{
    committed_manifests, committed_of_lineage, new_writer_id, Manifest, OtherFile, RunPlan,
    RunStore, ShardPart, RUNS,
};
use crate::formats::ShardFile;
use crate::input::InputFile;
use crate::publish::{publish, ReadmeText};
use crate::records::{PromptKey, ReadStats};
use crate::reject::{enforce_limit, Reject, RejectLimit, RejectReason};
use crate::source::FieldError;
use crate::storage::{io_runtime, redact_url, Location};
use crate::values::{read_values, record_id};
use crate::PipelineError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use steerflow_operators::seeding::shard_of;

/// A record of the input with its key (id and digest of its content) and position.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<T> {
    pub key: PromptKey,
    /// Records with the same route are processed together, in one shard.
    pub route: String,
    pub file: String,
    pub record: u64,
    pub item: T,
}

/// What reading one file gave.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    pub items: Vec<Keyed<T>>,
    pub rejects: Vec<Reject>,
    pub records: u64,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            rejects: Vec::new(),
            records: 0,
        }
    }
}

/// Scores `items` with `reward`; a served model that stayed unavailable through its retries, or
/// refuses every request (401, 403, 404), fails the whole call (the shard is not committed; the
/// run ends as transient in the first case), while any other failure stays with its item.
pub fn score_items(
    reward: &dyn steerflow_models::RewardModel,
    items: &[(&[steerflow_operators::records::Message], &str)],
) -> Result<Vec<Result<steerflow_models::RewardScores, steerflow_models::ModelError>>, PipelineError>
{
    let mut results = reward.score_batch(items);
    if let Some(i) = results
        .iter()
        .position(|r| r.as_ref().is_err_and(|e| e.stops_the_run()))
    {
        if let Err(e) = results.swap_remove(i) {
            return Err(PipelineError::Model(e));
        }
    }
    Ok(results)
}

/// Reads `file` through the one record reader (`values.rs`) and keys every record: its id (`id`,
/// else `line-N` / `row-N`), the digest of its content, and the route `parse` gives (`None`: the
/// id). A record that `parse` refuses becomes a reject naming its field, reason and id.
pub fn read_keyed<T>(
    file: &InputFile,
    parse: impl Fn(&serde_json::Value) -> Result<(T, Option<String>), FieldError>,
) -> Result<Parsed<T>, PipelineError> {
    let values = read_values(file)?;
    let mut parsed = Parsed {
        rejects: values.rejects,
        records: values.count,
        ..Parsed::default()
    };
    for (position, value) in values.records {
        let id = record_id(&value, position, file.parquet);
        match parse(&value) {
            Ok((item, route)) => parsed.items.push(Keyed {
                key: PromptKey {
                    id: id.clone(),
                    digest: crate::digest::digest(value.to_string().as_bytes()),
                },
                route: route.unwrap_or(id),
                file: file.spec.clone(),
                record: position,
                item,
            }),
            Err((field, reason, detail)) => {
                let mut r = Reject::new(&file.spec, position, field, reason, detail);
                r.prompt_id = Some(id);
                parsed.rejects.push(r);
            }
        }
    }
    Ok(parsed)
}

/// Where a finished run writes.
pub struct FinishRun<'a> {
    pub output: &'a Location,
    pub rt: &'a tokio::runtime::Runtime,
    pub run_id: &'a str,
    pub shards: usize,
    /// The runs of this lineage committed before this one (what an incremental run builds on).
    pub committed: &'a [Manifest],
}

impl FinishRun<'_> {
    /// The path of a run's file under `folder`: `<folder>/<run>/<name>`.
    pub fn path(&self, folder: &str, name: &str) -> String {
        format!("{folder}/{}/{name}", self.run_id)
    }

    /// Writes `bytes` to `path` and describes the file.
    pub fn put_other(
        &self,
        path: String,
        bytes: Vec<u8>,
        rows: u64,
    ) -> Result<OtherFile, PipelineError> {
        let size = bytes.len() as u64;
        self.rt.block_on(self.output.put(&path, bytes))?;
        Ok(OtherFile {
            path,
            rows,
            bytes: size,
        })
    }

    /// Writes `_runs/<run>/<name>`, copied to the output's top level while this run is the
    /// latest.
    pub fn put_top(&self, name: &str, bytes: Vec<u8>) -> Result<(), PipelineError> {
        self.rt.block_on(
            self.output
                .put(&format!("{RUNS}/{}/{name}", self.run_id), bytes),
        )
    }
}

/// The files a run wrote and its summary (which must hold `counts`).
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub files: Vec<ShardFile>,
    pub other_files: Vec<OtherFile>,
    /// Names written with [`FinishRun::put_top`].
    pub top_files: Vec<String>,
    pub summary: serde_json::Value,
    /// The run's `report.html`: the kind's sections, to which the run adds its rejects and
    /// whole summary when it commits.
    pub report: Option<crate::report::Page>,
}

/// A job kind that runs on the store without the dataflow.
pub trait StoreJob {
    /// What a record of the input holds.
    type Item: Clone;
    /// What processing a record gives; kept in the shard parts.
    type Outcome: Clone + Serialize + DeserializeOwned;

    /// The settings that decide the output (job kind, models, rules): the run's lineage.
    fn lineage(&self) -> serde_json::Value;
    /// Reads one input file into keyed records and rejects.
    fn read(&self, file: &InputFile) -> Result<Parsed<Self::Item>, PipelineError>;
    /// Processes one shard's records, sorted by route then key; one outcome per record.
    fn process(&self, items: Vec<Keyed<Self::Item>>) -> Result<Vec<Self::Outcome>, PipelineError>;
    /// Writes the run's files from every shard's outcomes (each shard's sorted by route then
    /// key, shards in order) and the run's rejects.
    fn finish(
        &self,
        run: &FinishRun<'_>,
        outcomes: Vec<Self::Outcome>,
        rejects: &[Reject],
    ) -> Result<Finished, PipelineError>;
    /// The README's words.
    fn readme(&self) -> ReadmeText<'_>;
}

/// Where a store run reads and writes.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    pub input: String,
    /// `auto`, `jsonl` or `parquet`.
    pub input_format: String,
    pub output: String,
    pub shards: usize,
    pub max_rejects: RejectLimit,
}

/// How a store run ended.
#[derive(Debug, Clone)]
pub struct StoreOutcome {
    pub run_id: String,
    /// The run's `summary.json` (the latest committed run's when nothing was new).
    pub summary: serde_json::Value,
    /// Every record of the input was already committed.
    pub up_to_date: bool,
}

/// Runs `job` exactly once.
pub fn run_on_store<J: StoreJob>(job: &J, spec: &StoreSpec) -> Result<StoreOutcome, PipelineError> {
    let output = Location::parse(&spec.output, true)?;
    let rt = io_runtime()?;
    let files = crate::input::list_input(&spec.input, &spec.input_format)?;
    let input_identity = crate::input::input_identity(&files);
    let settings = job.lineage();
    let lineage = crate::digest::digest(settings.to_string().as_bytes());
    let committed = rt.block_on(committed_of_lineage(&output, &lineage))?;
    if committed.iter().any(|m| m.input_identity == input_identity) {
        return up_to_date(job, &output, rt, &committed);
    }
    let after_runs: Vec<String> = committed.iter().map(|m| m.run_id.clone()).collect();
    let plan = RunPlan::new(settings, &input_identity, &after_runs, spec.shards);
    let store = RunStore::new(output.clone(), &plan.run_id, &new_writer_id());
    rt.block_on(store.ensure_plan(&plan))?;
    let resumed = rt.block_on(store.markers())?;
    tracing::info!(run = %plan.run_id, resumed_shards = resumed.len(), earlier_runs = committed.len(), "plan");

    let read = read_new(job, &files, &committed)?;
    enforce_limit(spec.max_rejects, &read.rejects, read.stats.records)?;
    let shards = spec.shards;
    let mut by_shard: BTreeMap<usize, Vec<Keyed<J::Item>>> = BTreeMap::new();
    for item in read.items {
        by_shard
            .entry(shard_of(&item.route, shards))
            .or_default()
            .push(item);
    }
    let mut input_rejects: BTreeMap<usize, Vec<Reject>> = BTreeMap::new();
    for r in read.rejects {
        input_rejects
            .entry(shard_of(&r.route(), shards))
            .or_default()
            .push(r);
    }
    for shard in (0..shards).filter(|k| !resumed.contains_key(k)) {
        let mut items = by_shard.remove(&shard).unwrap_or_default();
        items.sort_by(|a, b| (&a.route, &a.key).cmp(&(&b.route, &b.key)));
        let mut settled: Vec<PromptKey> = items.iter().map(|i| i.key.clone()).collect();
        settled.sort();
        let outcomes = job.process(items)?;
        let mut rejects = input_rejects.remove(&shard).unwrap_or_default();
        crate::reject::sort_in_input_order(&mut rejects);
        let part = ShardPart {
            shard,
            outcomes,
            rejects: Vec::new(),
            input_rejects: rejects,
            settled,
            read_stats: if shard == 0 {
                read.stats
            } else {
                ReadStats::default()
            },
        };
        let marker = rt.block_on(store.commit_shard(&part, &store.writer))?;
        tracing::info!(shard, records = marker.prompts, "shard committed");
    }
    let input = redact_url(&spec.input);
    commit_run(
        job,
        &store,
        (&output, rt),
        &committed,
        &plan,
        (input, input_identity),
    )
}

/// Every record of the input not settled by a committed run, and the new rejects.
struct NewRecords<T> {
    items: Vec<Keyed<T>>,
    rejects: Vec<Reject>,
    stats: ReadStats,
}

/// Reads every file; leaves out what committed runs settled or reported, rejects records whose
/// content changed under a committed id and all but the first record of a duplicated id.
fn read_new<J: StoreJob>(
    job: &J,
    files: &[InputFile],
    committed: &[Manifest],
) -> Result<NewRecords<J::Item>, PipelineError> {
    let settled: HashMap<&str, &str> = committed
        .iter()
        .flat_map(|m| &m.prompts)
        .map(|k| (k.id.as_str(), k.digest.as_str()))
        .collect();
    let reported: HashSet<&str> = committed
        .iter()
        .flat_map(|m| m.input_rejects.iter().map(String::as_str))
        .collect();
    let mut stats = ReadStats::default();
    let mut items = Vec::new();
    let mut rejects = Vec::new();
    let mut first: HashMap<String, (String, u64)> = HashMap::new();
    for file in files {
        let parsed = job.read(file)?;
        stats.records += parsed.records;
        rejects.extend(parsed.rejects);
        for item in parsed.items {
            stats.prompts += 1;
            let reject = |reason: RejectReason, field: &str, detail: String| {
                let mut r = Reject::new(&item.file, item.record, Some(field), reason, detail);
                r.prompt_id = Some(item.key.id.clone());
                r
            };
            if let Some((file, record)) = first.get(&item.key.id) {
                let detail = format!(
                    "id `{}` appeared before ({file}:{record}); the first is kept",
                    item.key.id
                );
                rejects.push(reject(RejectReason::DuplicateId, "id", detail));
                continue;
            }
            first.insert(item.key.id.clone(), (item.file.clone(), item.record));
            match settled.get(item.key.id.as_str()) {
                None => items.push(item),
                Some(digest) if *digest == item.key.digest => stats.already_committed += 1,
                Some(_) => {
                    let detail = format!(
                        "record `{}` was committed by an earlier run with different content; give the new record a new id",
                        item.key.id
                    );
                    rejects.push(reject(RejectReason::ChangedSinceCommitted, "id", detail));
                }
            }
        }
    }
    rejects.retain(|r| !reported.contains(r.key().as_str()));
    stats.rejects = rejects.len() as u64;
    Ok(NewRecords {
        items,
        rejects,
        stats,
    })
}

/// From every shard's part: the run's files, rejects and summary, then the manifest commit and
/// the README.
fn commit_run<J: StoreJob>(
    job: &J,
    store: &RunStore,
    (output, rt): (&Location, &tokio::runtime::Runtime),
    committed: &[Manifest],
    plan: &RunPlan,
    (input, input_identity): (String, String),
) -> Result<StoreOutcome, PipelineError> {
    let markers = rt.block_on(store.markers())?;
    let parts = (0..plan.shards)
        .map(|k| {
            let marker = markers.get(&k).ok_or_else(|| {
                PipelineError::Worker(format!("shard {k} of run {} has no marker", plan.run_id))
            })?;
            rt.block_on(store.read_part::<J::Outcome>(marker))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut keys: Vec<PromptKey> = parts
        .iter()
        .flat_map(|p| p.settled.iter().cloned())
        .collect();
    keys.sort();
    let mut rejects: Vec<Reject> = parts
        .iter()
        .flat_map(|p| p.input_rejects.iter().cloned())
        .collect();
    crate::reject::sort_in_input_order(&mut rejects);
    if keys.is_empty() && rejects.is_empty() && !committed.is_empty() {
        return up_to_date(job, output, rt, committed);
    }
    let mut read = ReadStats::default();
    for p in &parts {
        read.add(&p.read_stats);
    }
    let run = FinishRun {
        output,
        rt,
        run_id: &plan.run_id,
        shards: plan.shards,
        committed,
    };
    let outcomes = parts.into_iter().flat_map(|p| p.outcomes).collect();
    let mut finished = job.finish(&run, outcomes, &rejects)?;
    crate::faults::point("data-file");
    let rejects_file = (!rejects.is_empty()).then(|| format!("rejects/{}.jsonl", plan.run_id));
    if let Some(path) = &rejects_file {
        rt.block_on(output.put(path, crate::reject::rejects_jsonl(&rejects)))?;
    }
    finished.summary["run_id"] = serde_json::json!(plan.run_id);
    finished.summary["files"] = serde_json::json!(finished.files);
    finished.summary["other_files"] = serde_json::json!(finished.other_files);
    finished.summary["incremental"] = serde_json::json!({
        "records_read": read.records,
        "records_already_committed": read.already_committed,
        "records_new": keys.len(),
        "earlier_runs": plan.after_runs,
    });
    if let Some(mut page) = finished.report.take() {
        page.rejects_of(&rejects);
        run.put_top("report.html", page.finish(&finished.summary).into_bytes())?;
        finished.top_files.push("report.html".into());
    }
    let summary_file = format!("{RUNS}/{}/summary.json", plan.run_id);
    rt.block_on(output.put(
        &summary_file,
        crate::commit::to_json(&finished.summary, "summary.json")?,
    ))?;
    let manifest = Manifest {
        run_id: plan.run_id.clone(),
        lineage: plan.lineage.clone(),
        writer: store.writer.clone(),
        committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        input,
        input_identity,
        prompts: keys,
        input_rejects: {
            let mut k: Vec<String> = rejects.iter().map(Reject::key).collect();
            k.sort();
            k
        },
        files: finished.files,
        rejects_file,
        summary_file,
        counts: finished.summary["counts"].clone(),
        other_files: finished.other_files,
        top_files: finished.top_files,
    };
    if !rt.block_on(store.commit(&manifest))? {
        tracing::info!(run = %plan.run_id, "another launch of the same run committed it first; its commit stands");
    }
    let all = rt.block_on(committed_manifests(output))?;
    publish(output, rt, &all, &job.readme())?;
    rt.block_on(store.sweep_parts(&markers))?;
    Ok(StoreOutcome {
        run_id: plan.run_id.clone(),
        summary: finished.summary,
        up_to_date: false,
    })
}

/// Nothing new: the README and top-level files are made to reflect the committed runs (a crash
/// may have come between a commit and them), and the latest run's summary is reported.
fn up_to_date<J: StoreJob>(
    job: &J,
    output: &Location,
    rt: &tokio::runtime::Runtime,
    committed: &[Manifest],
) -> Result<StoreOutcome, PipelineError> {
    publish(output, rt, committed, &job.readme())?;
    let latest = committed
        .last()
        .ok_or_else(|| PipelineError::Worker("no committed run to report".into()))?;
    tracing::info!(run = %latest.run_id, "nothing new to do: every record of the input is committed");
    let mut summary: serde_json::Value = rt
        .block_on(output.get(&latest.summary_file))?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({ "counts": latest.counts }));
    summary["up_to_date"] = serde_json::json!(true);
    Ok(StoreOutcome {
        run_id: latest.run_id.clone(),
        summary,
        up_to_date: true,
    })
}
