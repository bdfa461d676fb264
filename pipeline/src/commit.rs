//! Exactly-once runs on object storage: run ids, shard parts and markers, the commit manifest,
//! resume, incremental state and the sweep of orphans.
//!
//! Layout under the output location (`<run>` is the run id):
//!
//! ```text
//! _runs/<run>/plan.json              what the run is; created once, a rerun must find it identical
//! _runs/<run>/parts/<k>-<attempt>.bin  shard k's scored outcomes and rejects, written before...
//! _runs/<run>/shards/<k>.json        ...its marker: the first marker created wins; the parts of
//!                                    other attempts are orphans, never read, swept after commit
//! data/<run>/…, standard/<run>/…, nemo/<run>/…, rejects/<run>.jsonl   written from the parts
//! _runs/<run>/summary.json, report.html
//! _runs/<run>/_COMMITTED.json        the manifest, created once by one writer: the run is
//!                                    committed when, and only when, it exists
//! README.md, summary.json, report.html   rewritten from the manifests after every commit
//! ```
//!
//! A reader that goes by `README.md` or the manifests never sees a file of an uncommitted or
//! losing attempt. Creates are conditional (`PutMode::Create`); one that comes back
//! `AlreadyExists` is read back and accepted when it carries this launch's writer id, so a create
//! whose reply was lost does not fail the commit. Every file named in a manifest is a pure
//! function of the parts, and the parts of a prompt are a pure function of the prompt, the
//! config, the models and the seed, so a rerun after a crash writes the same bytes.

use crate::digest::digest;
use crate::formats::ShardFile;
use crate::records::{PromptKey, PromptOutcome, ReadStats};
use crate::reject::Reject;
use crate::storage::{Created, Location};
use crate::PipelineError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The folder of run state under the output.
pub const RUNS: &str = "_runs";
/// The manifest that commits a run.
pub const COMMITTED: &str = "_COMMITTED.json";

/// An id unique to this launch of the command (process, time, address space), written into the
/// markers and the manifest it creates.
pub fn new_writer_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let local = 0u8;
    let seed = format!(
        "{}:{now}:{:p}:{}",
        std::process::id(),
        &local,
        std::env::var("HOSTNAME").unwrap_or_default()
    );
    digest(seed.as_bytes())[..16].to_string()
}

/// `_runs/<run>/plan.json`: the run's identity. Its id is a digest of all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub run_id: String,
    /// Digest of everything that decides the rows except the prompts: the job kind, models,
    /// sampling, scoring, goodness, pair rules, seed, shards and formats. Runs in one output
    /// must share it.
    pub lineage: String,
    /// The settings the lineage is a digest of, for people.
    pub settings: serde_json::Value,
    /// Digest of the input files and their versions.
    pub input: String,
    /// The runs committed in the output when this run was planned (it settles what they did not).
    pub after_runs: Vec<String>,
    pub shards: usize,
}

impl RunPlan {
    pub fn new(
        settings: serde_json::Value,
        input: &str,
        after_runs: &[String],
        shards: usize,
    ) -> Self {
        let lineage = digest(settings.to_string().as_bytes());
        let mut after_runs = after_runs.to_vec();
        after_runs.sort();
        let run_id = digest(format!("{lineage}:{input}:{}", after_runs.join(",")).as_bytes())[..16]
            .to_string();
        Self {
            run_id,
            lineage,
            settings,
            input: input.to_string(),
            after_runs,
            shards,
        }
    }
}

/// Shard k's outcomes and the rejects of its records: what the expensive part of a run
/// produced, kept so a rerun does not redo it. `T` is the job kind's outcome (a prompt's scored
/// samples and pair for iterative-DPO).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPart<T = PromptOutcome> {
    pub shard: usize,
    /// Sorted by record key.
    pub outcomes: Vec<T>,
    /// Prompts of this shard that could not be sampled, sorted by prompt id.
    pub rejects: Vec<Reject>,
    /// Input records routed to this shard that are not usable prompts (bad records, duplicate
    /// ids, prompts changed since an earlier run committed them), sorted by file and record.
    pub input_rejects: Vec<Reject>,
    /// The prompts this shard settled (outcomes and sampling rejects), sorted.
    pub settled: Vec<PromptKey>,
    /// What the readers read (shard 0 holds the whole input's counts).
    pub read_stats: ReadStats,
}

/// `_runs/<run>/shards/<k>.json`: which part holds shard k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMarker {
    pub shard: usize,
    pub part: String,
    pub bytes: u64,
    pub checksum: String,
    pub prompts: u64,
    pub writer: String,
}

/// `_runs/<run>/_COMMITTED.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub lineage: String,
    pub writer: String,
    pub committed_at: String,
    pub input: String,
    /// Digest of the input files and versions the run read (a rerun on the same input has
    /// nothing new to do).
    #[serde(default)]
    pub input_identity: String,
    /// Every prompt this run settled (paired, dropped or rejected), sorted.
    pub prompts: Vec<PromptKey>,
    /// Keys of the input records this run reported as rejects.
    pub input_rejects: Vec<String>,
    /// The data files of the run, the only ones a reader should use.
    pub files: Vec<ShardFile>,
    pub rejects_file: Option<String>,
    pub summary_file: String,
    pub counts: serde_json::Value,
    /// Files of the run that are not dataset shards (annotated jsonl, evaluation reports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_files: Vec<OtherFile>,
    /// Files under `_runs/<run>/` that are copied to the output's top level when this run is
    /// the latest (beside `summary.json` and `report.html`), such as `eval.md`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_files: Vec<String>,
}

/// A file of a run that is not a dataset shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtherFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// A commit-protocol file as pretty JSON; a value that cannot be serialised is an error, never an
/// empty file.
pub fn to_json(value: &impl Serialize, what: &str) -> Result<Vec<u8>, PipelineError> {
    serde_json::to_vec_pretty(value)
        .map_err(|e| PipelineError::Worker(format!("cannot serialise {what}: {e}")))
}

/// The run state under one output location, seen by one launch.
pub struct RunStore {
    pub output: Location,
    pub run_id: String,
    pub writer: String,
}

impl RunStore {
    pub fn new(output: Location, run_id: &str, writer: &str) -> Self {
        Self {
            output,
            run_id: run_id.to_string(),
            writer: writer.to_string(),
        }
    }

    fn path(&self, relative: &str) -> String {
        format!("{RUNS}/{}/{relative}", self.run_id)
    }

    /// Creates `plan.json`, or checks that the one there is identical.
    pub async fn ensure_plan(&self, plan: &RunPlan) -> Result<(), PipelineError> {
        let bytes = to_json(plan, "plan.json")?;
        let expected = bytes.clone();
        match self
            .output
            .create(&self.path("plan.json"), bytes, |b| b == expected)
            .await?
        {
            Created::Ours => Ok(()),
            Created::Theirs(_) => Err(PipelineError::RunConflict(format!(
                "{} holds a different plan for run {}; it was written by another version of \
                 steerflow or edited by hand",
                self.output.describe(&self.path("plan.json")),
                self.run_id
            ))),
        }
    }

    /// The shard markers that exist, by shard.
    pub async fn markers(&self) -> Result<BTreeMap<usize, ShardMarker>, PipelineError> {
        let mut markers = BTreeMap::new();
        for object in self.output.list(&self.path("shards")).await? {
            let Some(bytes) = self.output.get(&object.path).await? else {
                continue;
            };
            let marker: ShardMarker = serde_json::from_slice(&bytes).map_err(|e| {
                PipelineError::RunConflict(format!(
                    "{}: not a shard marker: {e}",
                    self.output.describe(&object.path)
                ))
            })?;
            markers.insert(marker.shard, marker);
        }
        Ok(markers)
    }

    /// Writes shard k's part under this launch's name, then creates its marker. Returns the
    /// winning marker: ours, or an earlier attempt's (ours is then an orphan).
    pub async fn commit_shard<T: Serialize>(
        &self,
        part: &ShardPart<T>,
        attempt: &str,
    ) -> Result<ShardMarker, PipelineError> {
        let bytes = bincode::serialize(part)
            .map_err(|e| PipelineError::Worker(format!("cannot encode shard part: {e}")))?;
        let part_path = self.path(&format!("parts/{:05}-{attempt}.bin", part.shard));
        let marker = ShardMarker {
            shard: part.shard,
            part: part_path.clone(),
            bytes: bytes.len() as u64,
            checksum: digest(&bytes),
            prompts: part.settled.len() as u64,
            writer: self.writer.clone(),
        };
        self.output.put(&part_path, bytes).await?;
        crate::faults::point("part-written");
        let marker_bytes = to_json(&marker, "a shard marker")?;
        let writer = self.writer.clone();
        let created = self
            .output
            .create(
                &self.path(&format!("shards/{:05}.json", part.shard)),
                marker_bytes,
                |b| {
                    serde_json::from_slice::<ShardMarker>(b)
                        .is_ok_and(|m| m.writer == writer && m.part == part_path)
                },
            )
            .await?;
        crate::faults::point("shard-marker");
        match created {
            Created::Ours => Ok(marker),
            Created::Theirs(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                PipelineError::RunConflict(format!("shard marker {}: {e}", part.shard))
            }),
        }
    }

    /// Reads the part a marker names and checks it against the marker.
    pub async fn read_part<T: serde::de::DeserializeOwned>(
        &self,
        marker: &ShardMarker,
    ) -> Result<ShardPart<T>, PipelineError> {
        let bytes = self.output.get(&marker.part).await?.ok_or_else(|| {
            PipelineError::RunConflict(format!(
                "{} is named by shard marker {} but missing",
                self.output.describe(&marker.part),
                marker.shard
            ))
        })?;
        if digest(&bytes) != marker.checksum {
            return Err(PipelineError::RunConflict(format!(
                "{} does not match the checksum in its shard marker",
                self.output.describe(&marker.part)
            )));
        }
        bincode::deserialize(&bytes).map_err(|e| {
            PipelineError::RunConflict(format!("{}: {e}", self.output.describe(&marker.part)))
        })
    }

    /// Creates the manifest. `Ok(true)` when this launch committed the run, `Ok(false)` when
    /// another launch of the same run committed it first (its manifest stands).
    pub async fn commit(&self, manifest: &Manifest) -> Result<bool, PipelineError> {
        crate::faults::point("before-commit");
        let bytes = to_json(manifest, COMMITTED)?;
        let writer = self.writer.clone();
        let created = self
            .output
            .create(&self.path(COMMITTED), bytes, |b| {
                serde_json::from_slice::<Manifest>(b).is_ok_and(|m| m.writer == writer)
            })
            .await?;
        crate::faults::point("committed");
        Ok(created == Created::Ours)
    }

    /// Deletes the parts of this run that no marker names (attempts that lost a shard) and
    /// returns their paths.
    pub async fn sweep_parts(
        &self,
        markers: &BTreeMap<usize, ShardMarker>,
    ) -> Result<Vec<String>, PipelineError> {
        let winners: Vec<&str> = markers.values().map(|m| m.part.as_str()).collect();
        let mut swept = Vec::new();
        for object in self.output.list(&self.path("parts")).await? {
            if !winners.contains(&object.path.as_str()) {
                self.output.delete(&object.path).await?;
                swept.push(object.path);
            }
        }
        Ok(swept)
    }
}

/// A run found under an output location.
#[derive(Debug, Clone)]
pub struct RunListing {
    pub run_id: String,
    pub manifest: Option<Manifest>,
    pub plan: Option<RunPlan>,
    /// Shard markers present (for runs not committed yet).
    pub shards_done: usize,
    pub last_modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every run under `output`, committed or not, committed first in commit order.
pub async fn list_runs(output: &Location) -> Result<Vec<RunListing>, PipelineError> {
    let mut by_run: BTreeMap<String, RunListing> = BTreeMap::new();
    for object in output.list(RUNS).await? {
        let mut parts = object.path.splitn(3, '/');
        let (Some(_), Some(run), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let entry = by_run.entry(run.to_string()).or_insert_with(|| RunListing {
            run_id: run.to_string(),
            manifest: None,
            plan: None,
            shards_done: 0,
            last_modified: None,
        });
        entry.last_modified = entry.last_modified.max(Some(object.last_modified));
        if rest == COMMITTED {
            if let Some(bytes) = output.get(&object.path).await? {
                entry.manifest = Some(serde_json::from_slice(&bytes).map_err(|e| {
                    PipelineError::RunConflict(format!("{}: {e}", output.describe(&object.path)))
                })?);
            }
        } else if rest == "plan.json" {
            if let Some(bytes) = output.get(&object.path).await? {
                entry.plan = serde_json::from_slice(&bytes).ok();
            }
        } else if rest.starts_with("shards/") {
            entry.shards_done += 1;
        }
    }
    let mut runs: Vec<RunListing> = by_run.into_values().collect();
    runs.sort_by(|a, b| {
        let key = |r: &RunListing| {
            (
                r.manifest.is_none(),
                r.manifest.as_ref().map(|m| m.committed_at.clone()),
                r.run_id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(runs)
}

/// The committed manifests under `output`, in commit order.
pub async fn committed_manifests(output: &Location) -> Result<Vec<Manifest>, PipelineError> {
    Ok(list_runs(output)
        .await?
        .into_iter()
        .filter_map(|r| r.manifest)
        .collect())
}

/// The runs committed in `output`, which must all be of `lineage`: an output holding runs made
/// with other settings is refused (a run of other settings needs a new output location).
pub async fn committed_of_lineage(
    output: &Location,
    lineage: &str,
) -> Result<Vec<Manifest>, PipelineError> {
    let committed = committed_manifests(output).await?;
    if let Some(other) = committed.iter().find(|m| m.lineage != lineage) {
        return Err(PipelineError::RunConflict(format!(
            "{} holds run {} made with different settings (models, sampling, scoring or seed; \
             see {RUNS}/{}/plan.json); write this run to a new output location",
            crate::storage::redact_url(&output.display),
            other.run_id,
            other.run_id
        )));
    }
    Ok(committed)
}

/// Deletes what runs left behind: the losing parts of committed runs and, when `incomplete_older_than`
/// is given, every file of runs not committed and not touched for that long (a crashed run that
/// will not be rerun). Returns the paths deleted.
pub async fn sweep(
    output: &Location,
    incomplete_older_than: Option<chrono::Duration>,
) -> Result<Vec<String>, PipelineError> {
    let mut deleted = Vec::new();
    let now = chrono::Utc::now();
    for run in list_runs(output).await? {
        let store = RunStore::new(output.clone(), &run.run_id, "sweep");
        if run.manifest.is_some() {
            let markers = store.markers().await?;
            deleted.extend(store.sweep_parts(&markers).await?);
            continue;
        }
        let Some(age) = incomplete_older_than else {
            continue;
        };
        if run.last_modified.is_some_and(|t| now - t < age) {
            continue;
        }
        let mut paths: Vec<String> = Vec::new();
        for folder in [
            format!("{RUNS}/{}", run.run_id),
            format!("data/{}", run.run_id),
            format!("standard/{}", run.run_id),
            format!("nemo/{}", run.run_id),
        ] {
            paths.extend(output.list(&folder).await?.into_iter().map(|o| o.path));
        }
        paths.push(format!("rejects/{}.jsonl", run.run_id));
        // The plan last, so an interrupted sweep leaves a run that is still recognisable.
        paths.sort_by_key(|p| p.ends_with("/plan.json"));
        for path in paths {
            output.delete(&path).await?;
            deleted.push(path);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::io_runtime;

    fn part(shard: usize) -> ShardPart {
        ShardPart {
            shard,
            outcomes: Vec::new(),
            rejects: vec![Reject::new(
                "in.jsonl",
                3,
                None,
                crate::reject::RejectReason::PolicyPrompt,
                "too long",
            )],
            input_rejects: Vec::new(),
            settled: vec![PromptKey {
                id: "p".into(),
                digest: "d".into(),
            }],
            read_stats: Default::default(),
        }
    }

    #[test]
    fn run_ids_depend_on_settings_input_and_earlier_runs() {
        let settings = serde_json::json!({"seed": 1});
        let runs = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = RunPlan::new(settings.clone(), "in1", &runs(&["r1", "r2"]), 2);
        let b = RunPlan::new(settings.clone(), "in1", &runs(&["r2", "r1"]), 2);
        let c = RunPlan::new(settings, "in2", &runs(&["r1", "r2"]), 2);
        let d = RunPlan::new(
            serde_json::json!({"seed": 2}),
            "in2",
            &runs(&["r1", "r2"]),
            2,
        );
        assert_eq!(a.run_id, b.run_id);
        assert_ne!(a.run_id, c.run_id);
        assert_eq!(c.lineage, a.lineage);
        assert_ne!(c.lineage, d.lineage);
    }

    #[test]
    fn the_first_marker_wins_and_losing_parts_are_swept() {
        let rt = io_runtime().unwrap();
        let output = Location::parse("memory://commit-markers/out", true).unwrap();
        let first = RunStore::new(output.clone(), "r1", "writer-a");
        let second = RunStore::new(output.clone(), "r1", "writer-b");
        let won = rt.block_on(first.commit_shard(&part(0), "a")).unwrap();
        let lost = rt.block_on(second.commit_shard(&part(0), "b")).unwrap();
        assert_eq!(won, lost, "the second attempt adopts the first marker");
        assert_eq!(won.writer, "writer-a");
        // A retried create by the winner (its reply lost) is still its own.
        assert_eq!(rt.block_on(first.commit_shard(&part(0), "a")).unwrap(), won);
        let markers = rt.block_on(first.markers()).unwrap();
        assert_eq!(rt.block_on(first.read_part(&markers[&0])).unwrap(), part(0));
        assert_eq!(rt.block_on(first.sweep_parts(&markers)).unwrap().len(), 1);
        assert_eq!(rt.block_on(output.list("_runs/r1/parts")).unwrap().len(), 1);
    }

    #[test]
    fn one_commit_per_run() {
        let rt = io_runtime().unwrap();
        let output = Location::parse("memory://commit-once/out", true).unwrap();
        let manifest = |writer: &str| Manifest {
            run_id: "r1".into(),
            lineage: "l".into(),
            writer: writer.into(),
            committed_at: "2026-11-23T00:00:00Z".into(),
            input: "in".into(),
            input_identity: "i".into(),
            prompts: vec![],
            input_rejects: vec![],
            files: vec![],
            rejects_file: None,
            summary_file: "s".into(),
            counts: serde_json::json!({}),
            other_files: vec![],
            top_files: vec![],
        };
        let a = RunStore::new(output.clone(), "r1", "a");
        let b = RunStore::new(output.clone(), "r1", "b");
        assert!(rt.block_on(a.commit(&manifest("a"))).unwrap());
        assert!(!rt.block_on(b.commit(&manifest("b"))).unwrap());
        assert!(
            rt.block_on(a.commit(&manifest("a"))).unwrap(),
            "a lost reply"
        );
        let committed = rt.block_on(committed_manifests(&output)).unwrap();
        assert_eq!(committed.len(), 1);
        assert_eq!(committed[0].writer, "a");
    }

    #[test]
    fn a_corrupt_part_is_refused() {
        let rt = io_runtime().unwrap();
        let output = Location::parse("memory://commit-corrupt/out", true).unwrap();
        let store = RunStore::new(output.clone(), "r1", "a");
        let marker = rt.block_on(store.commit_shard(&part(1), "a")).unwrap();
        rt.block_on(output.put(&marker.part, b"garbage".to_vec()))
            .unwrap();
        let err = rt
            .block_on(store.read_part::<PromptOutcome>(&marker))
            .unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
