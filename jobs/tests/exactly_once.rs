//! Exactly-once runs, tested for real: the job killed at every step of the commit protocol and
//! at random moments, then rerun; two launches of one run at once; faults injected between
//! steerflow and S3; an input that grows between scheduled runs. On local disk, on moto (S3) and
//! on azurite (Azure), both started on loopback here (`scripts/test` installs them).
//!
//! The models are the tiny checkpoints of `tests/fixtures/hf` (a causal Llama as the policy, a
//! 5-label head as the reward model), so one run takes a fraction of a second and a test can
//! kill and rerun it dozens of times. Every check compares against an uninterrupted run: the
//! bytes of every data file, the manifest, and the prompt ids.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use steerflow_pipeline::storage::io_runtime;

use support::runs::{committed_prompt_ids, kill_after, run_job, snapshot, steerflow};
use support::servers::{azurite, faulty_proxy, moto, Backend};
use support::workspace;

/// 12 prompts and one bad line.
fn write_input(path: &Path, prompts: std::ops::Range<usize>) {
    let mut text = String::new();
    for i in prompts {
        text.push_str(&format!(
            "{{\"id\": \"p{i:02}\", \"prompt\": \"Question number {i}: name something.\"}}\n"
        ));
        if i == 5 {
            text.push_str("{\"id\": \"broken\", \"prompt\": 7}\n");
        }
    }
    std::fs::write(path, text).unwrap();
}

impl Backend {
    /// A job file `name` in `dir` over the tiny fixture models, writing to output `output` here.
    fn write_job(&self, dir: &Path, name: &str, input: &Path, output: &str) -> PathBuf {
        let output = &self.output(output);
        let fixtures = workspace().join("tests/fixtures/hf");
        let storage_toml = toml::to_string(&toml::Table::from_iter([(
            "storage".to_string(),
            toml::Value::try_from(&self.storage).unwrap(),
        )]))
        .unwrap();
        let job = format!(
            r#"
[job]
seed = 7
workers = 2
[input]
path = "{input}"
max_rejects = 3
[policy]
model = "{policy}"
[sampling]
samples_per_prompt = 3
max_new_tokens = 6
[reward]
kind = "sequence-classification"
model = "{reward}"
[output]
path = "{output}"
shards = 4
{storage_toml}
"#,
            input = input.display(),
            policy = fixtures.join("llama3-f32").display(),
            reward = fixtures.join("llama-seqcls5-f32").display(),
        );
        let path = dir.join(name);
        std::fs::write(&path, job).unwrap();
        path
    }
}

/// The reference: one uninterrupted run.
fn reference(dir: &Path, backend: &Backend, input: &Path) -> BTreeMap<String, String> {
    let job = backend.write_job(dir, "reference.toml", input, "reference");
    let out = run_job(&job, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let location = backend.location("reference");
    let ids = committed_prompt_ids(&location);
    let expected: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    assert_eq!(ids, expected, "every prompt, once");
    snapshot(&location)
}

const CRASH_POINTS: [&str; 9] = [
    "part-written:1",
    "part-written:3",
    "shard-marker:1",
    "shard-marker:2",
    "shard-marker:4",
    "data-file:1",
    "data-file:3",
    "before-commit:1",
    "committed:1",
];

/// Kills the job at every crash point (and then at `random_kills` random moments), reruns it
/// each time, and compares with the uninterrupted run.
fn kill_and_rerun(backend: &Backend, random_kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 0..12);
    let expected = reference(dir.path(), backend, &input);
    assert!(expected.keys().any(|k| k.starts_with("data/")));

    for (i, point) in CRASH_POINTS.iter().enumerate() {
        let name = format!("crash-{i}");
        let job = backend.write_job(dir.path(), &format!("{name}.toml"), &input, &name);
        let crashed = run_job(&job, &[("STEERFLOW_CRASH_AT", point)]);
        assert_eq!(
            crashed.code, None,
            "{point}: the process should have aborted: {}",
            crashed.stderr
        );
        assert!(crashed
            .stderr
            .contains(&format!("aborting at {}", point.split(':').next().unwrap())));
        // A second crash in the rerun, at another step, before the run is let finish.
        let second = CRASH_POINTS[(i + 4) % CRASH_POINTS.len()];
        let _ = run_job(&job, &[("STEERFLOW_CRASH_AT", second)]);
        let rerun = run_job(&job, &[]);
        assert_eq!(
            rerun.code,
            Some(0),
            "{point} then {second}: {}",
            rerun.stderr
        );
        let location = backend.location(&name);
        assert_eq!(
            snapshot(&location),
            expected,
            "output after a crash at {point} then {second}"
        );
        let ids = committed_prompt_ids(&location);
        assert_eq!(ids.len(), 12);
    }

    // SIGKILL at pseudo-random moments (a fixed sequence, so a failure can be replayed).
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut killed_while_running = 0;
    for i in 0..random_kills {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = Duration::from_millis(20 + state % 600);
        let name = format!("kill-{i}");
        let job = backend.write_job(dir.path(), &format!("{name}.toml"), &input, &name);
        if kill_after(&job, after) {
            killed_while_running += 1;
        }
        let rerun = run_job(&job, &[]);
        assert_eq!(
            rerun.code,
            Some(0),
            "killed after {after:?}: {}",
            rerun.stderr
        );
        assert_eq!(
            snapshot(&backend.location(&name)),
            expected,
            "output after a SIGKILL at {after:?}"
        );
    }
    assert!(
        random_kills == 0 || killed_while_running > 0,
        "no random kill landed while the job was running"
    );
}

#[test]
fn killed_at_any_point_and_rerun_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    kill_and_rerun(&Backend::local(dir.path()), 16);
}

#[test]
fn killed_at_any_point_and_rerun_on_s3() {
    let server = moto();
    kill_and_rerun(&Backend::s3(server.port), 8);
}

#[test]
fn killed_at_any_point_and_rerun_on_azure() {
    let server = azurite();
    kill_and_rerun(&Backend::azure(server.port), 4);
}

fn two_at_once(backend: &Backend, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 0..12);
    let expected = reference(dir.path(), backend, &input);
    for round in 0..rounds {
        let name = format!("twice-{round}");
        let job = backend.write_job(dir.path(), &format!("{name}.toml"), &input, &name);
        let spawn = || {
            Command::new(env!("CARGO_BIN_EXE_steerflow"))
                .args(["run", job.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let logs = format!(
            "{}\n{}",
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
        assert!(a.status.success() && b.status.success(), "{logs}");
        assert_eq!(
            logs.matches(": run committed run=").count(),
            1,
            "exactly one commit:\n{logs}"
        );
        assert_eq!(snapshot(&backend.location(&name)), expected);
        assert_eq!(committed_prompt_ids(&backend.location(&name)).len(), 12);
    }
}

#[test]
fn two_launches_at_once_commit_once_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    two_at_once(&Backend::local(dir.path()), 4);
}

#[test]
fn two_launches_at_once_commit_once_on_s3_and_azure() {
    let s3 = moto();
    two_at_once(&Backend::s3(s3.port), 3);
    let az = azurite();
    two_at_once(&Backend::azure(az.port), 2);
}

#[test]
fn faults_between_steerflow_and_s3_complete_or_fail_retryably_with_nothing_committed() {
    let server = moto();
    let direct = Backend::s3(server.port);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 0..12);
    let expected = reference(dir.path(), &direct, &input);

    // 503s, resets, slow replies beyond the request timeout and lost replies to creates: the
    // run completes, identical to the reference.
    for (round, faults) in [
        vec![
            "--fail-every",
            "3",
            "--reset-every",
            "7",
            "--drop-create-replies",
        ],
        vec![
            "--slow-every",
            "5",
            "--slow-seconds",
            "2.5",
            "--fail-every",
            "4",
        ],
        vec!["--drop-create-replies", "--reset-every", "5"],
    ]
    .into_iter()
    .enumerate()
    {
        let proxy = faulty_proxy(server.port, &faults);
        let through = Backend::s3(proxy.port);
        let name = format!("faulty-{round}");
        let job = through.write_job(dir.path(), &format!("{name}.toml"), &input, &name);
        let out = run_job(&job, &[]);
        assert_eq!(out.code, Some(0), "{faults:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("retrying") || out.stderr.contains("retry"),
            "{faults:?}: no fault was met"
        );
        assert_eq!(snapshot(&direct.location(&name)), expected, "{faults:?}");
    }

    // An outage: the run fails with the retryable exit code and commits nothing; rerun once the
    // store is back, it finishes with the reference output.
    let proxy = faulty_proxy(server.port, &["--down-after", "12"]);
    let through = Backend::s3(proxy.port);
    let job = through.write_job(dir.path(), "outage.toml", &input, "outage");
    let out = run_job(&job, &[]);
    assert_eq!(
        out.code,
        Some(steerflow::exit_code::RETRYABLE),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("rerun the same command"),
        "{}",
        out.stderr
    );
    let location = direct.location("outage");
    let rt = io_runtime().unwrap();
    assert!(rt
        .block_on(steerflow_pipeline::commit::committed_manifests(&location))
        .unwrap()
        .is_empty());
    assert_eq!(rt.block_on(location.get("README.md")).unwrap(), None);
    let job = direct.write_job(dir.path(), "outage-rerun.toml", &input, "outage");
    let out = run_job(&job, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(snapshot(&location), expected);
}

fn incremental(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 0..8);
    let job = backend.write_job(dir.path(), "job.toml", &input, "incremental");
    let first = run_job(&job, &[]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let location = backend.location("incremental");
    let before = snapshot(&location);

    // The same input again: nothing to do.
    let again = run_job(&job, &[]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stderr.contains("nothing new"), "{}", again.stderr);
    assert_eq!(snapshot(&location), before);

    // The input grows by 4 prompts: only they are sampled, in a second run beside the first.
    write_input(&input, 0..12);
    let grown = run_job(&job, &[]);
    assert_eq!(grown.code, Some(0), "{}", grown.stderr);
    let rt = io_runtime().unwrap();
    let manifests = rt
        .block_on(steerflow_pipeline::commit::committed_manifests(&location))
        .unwrap();
    assert_eq!(manifests.len(), 2);
    let summary: serde_json::Value = serde_json::from_slice(
        &rt.block_on(location.get(&manifests[1].summary_file))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["incremental"]["prompts_new"], 4, "{summary}");
    assert_eq!(summary["incremental"]["prompts_already_committed"], 8);
    assert_eq!(summary["counts"]["prompts"], 4);
    assert_eq!(summary["counts"]["samples"], 12);
    assert_eq!(summary["tokens"]["prompts_sampled"], 4);
    // The bad line was reported by the first run, not again.
    assert_eq!(summary["counts"]["rejected"], 0);
    let ids = committed_prompt_ids(&location);
    assert_eq!(ids.len(), 12);
    // The first run's files are untouched.
    let after = snapshot(&location);
    for (k, v) in &before {
        assert_eq!(after.get(k), Some(v), "{k} changed");
    }
    let runs = steerflow(
        &[
            "runs",
            &backend.output("incremental"),
            "--config",
            job.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(runs.code, Some(0), "{}", runs.stderr);
}

#[test]
fn a_grown_input_processes_only_the_new_prompts_on_every_store() {
    let dir = tempfile::tempdir().unwrap();
    incremental(&Backend::local(dir.path()));
    let server = moto();
    incremental(&Backend::s3(server.port));
    let server = azurite();
    incremental(&Backend::azure(server.port));
}

#[test]
fn runs_lists_committed_and_unfinished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 0..12);
    let backend = Backend::local(dir.path());
    let job = backend.write_job(dir.path(), "job.toml", &input, "out");
    let crashed = run_job(&job, &[("STEERFLOW_CRASH_AT", "shard-marker:2")]);
    assert_eq!(crashed.code, None);
    let out = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(["runs", &backend.output("out")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\tincomplete (") && text.contains(" of 4 shards)"),
        "{text}"
    );
    assert_eq!(run_job(&job, &[]).code, Some(0));
    let out = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(["runs", &backend.output("out")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1).unwrap();
    assert!(
        line.contains("\tcommitted\t") && line.contains("\t12\t"),
        "{text}"
    );
}
