//! Running the `steerflow` binary from a test, killing it, and what a reader of an output can
//! see (for comparing an interrupted run with an uninterrupted one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use steerflow_pipeline::commit::Manifest;
use steerflow_pipeline::digest::digest;
use steerflow_pipeline::storage::{io_runtime, Location};

pub struct Outcome {
    pub code: Option<i32>,
    pub stderr: String,
}

pub fn steerflow(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    Outcome {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn run_job(job: &Path, env: &[(&str, &str)]) -> Outcome {
    steerflow(&["run", job.to_str().unwrap()], env)
}

/// Starts the job and SIGKILLs it after `after`; returns whether it was still running.
pub fn kill_after(job: &Path, after: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(["run", job.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    running
}

/// What a reader of the output can see, minus what legitimately differs between launches
/// (writer ids, commit times, timings): every data file's digest, the manifests' files,
/// prompts and counts. Also checks that no data file outside a manifest is visible and that
/// every committed run's parts are exactly its markers' parts.
pub fn snapshot(location: &Location) -> BTreeMap<String, String> {
    let rt = io_runtime().unwrap();
    let objects = rt.block_on(location.list("")).unwrap();
    let manifests = rt
        .block_on(steerflow_pipeline::commit::committed_manifests(location))
        .unwrap();
    let listed: BTreeSet<String> = manifests
        .iter()
        .flat_map(|m| m.files.iter().map(|f| f.path.clone()))
        .chain(
            manifests
                .iter()
                .flat_map(|m| m.other_files.iter().map(|f| f.path.clone())),
        )
        .chain(manifests.iter().filter_map(|m| m.rejects_file.clone()))
        .collect();
    let mut snap = BTreeMap::new();
    for o in &objects {
        let top = o.path.split('/').next().unwrap();
        if ["data", "standard", "nemo", "rejects", "annotated", "eval"].contains(&top) {
            assert!(
                listed.contains(&o.path),
                "{} is visible but in no manifest",
                o.path
            );
            let bytes = rt.block_on(location.get(&o.path)).unwrap().unwrap();
            snap.insert(o.path.clone(), digest(&bytes));
        }
    }
    for m in &manifests {
        let Manifest {
            run_id,
            lineage,
            prompts,
            input_rejects,
            files,
            rejects_file,
            counts,
            ..
        } = m.clone();
        let stable = serde_json::json!([
            run_id,
            lineage,
            prompts,
            input_rejects,
            files,
            rejects_file,
            counts
        ]);
        snap.insert(format!("manifest {run_id}"), stable.to_string());
        let parts: BTreeSet<String> = objects
            .iter()
            .filter(|o| o.path.starts_with(&format!("_runs/{run_id}/parts/")))
            .map(|o| o.path.clone())
            .collect();
        let markers = rt
            .block_on(
                steerflow_pipeline::commit::RunStore::new(location.clone(), &run_id, "test")
                    .markers(),
            )
            .unwrap();
        let winners: BTreeSet<String> = markers.values().map(|m| m.part.clone()).collect();
        assert_eq!(
            parts, winners,
            "parts of losing attempts were left after the commit"
        );
    }
    let readme = rt.block_on(location.get("README.md")).unwrap();
    if let Some(readme) = readme {
        let readme = String::from_utf8_lossy(&readme);
        for path in listed.iter().filter(|p| p.starts_with("data/")) {
            assert!(
                readme.contains(&format!("    - {path}\n")),
                "README misses {path}"
            );
        }
    }
    snap
}

/// [`committed_prompt_ids`] of the output folder `path`.
pub fn committed_prompt_ids_at(path: &Path) -> Vec<String> {
    committed_prompt_ids(&Location::parse(path.to_str().unwrap(), true).unwrap())
}

/// Prompt ids of every committed run, checked for duplicates.
pub fn committed_prompt_ids(location: &Location) -> Vec<String> {
    let rt = io_runtime().unwrap();
    let manifests = rt
        .block_on(steerflow_pipeline::commit::committed_manifests(location))
        .unwrap();
    let ids: Vec<String> = manifests
        .iter()
        .flat_map(|m| m.prompts.iter().map(|k| k.id.clone()))
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a prompt was committed twice: {ids:?}"
    );
    ids
}
