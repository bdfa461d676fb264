//! Exactly-once runs of every job kind that runs without sampling (filter-rank,
//! helpsteer2-pairs, rm-eval, steerlm-annotate, dedup), on the run store iterative-DPO uses: killed at
//! every step of the commit protocol and at random moments, then rerun; two launches at once;
//! an input that grows between runs. On local disk and on moto (S3). Each check compares with an
//! uninterrupted run: the bytes of every file a manifest names, the manifests and the record ids.
//!
//! The reward model is the tiny 5-label checkpoint of `tests/fixtures/hf`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;
use steerflow_pipeline::storage::io_runtime;
use support::runs::{committed_prompt_ids, kill_after, run_job, snapshot};
use support::servers::{moto, Backend};
use support::workspace;

/// A job kind under test: its job file's own lines and its input records.
#[derive(Clone, Copy)]
enum Kind {
    FilterRank,
    Helpsteer2Pairs,
    RmEval,
    SteerlmAnnotate,
    Dedup,
}

const KINDS: [Kind; 5] = [
    Kind::FilterRank,
    Kind::Helpsteer2Pairs,
    Kind::RmEval,
    Kind::SteerlmAnnotate,
    Kind::Dedup,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::FilterRank => "filter-rank",
            Kind::Helpsteer2Pairs => "helpsteer2-pairs",
            Kind::RmEval => "rm-eval",
            Kind::SteerlmAnnotate => "steerlm-annotate",
            Kind::Dedup => "dedup",
        }
    }

    /// Record `i` of the input (ids r00, r01, ...).
    fn record(self, i: usize) -> String {
        let prompt = format!("Question number {}: name something.", i / 3);
        match self {
            Kind::FilterRank => format!(
                r#"{{"id": "r{i:02}", "prompt": "{prompt}", "response": "Answer {i}, with {} words."}}"#,
                i % 5
            ),
            Kind::Helpsteer2Pairs => format!(
                r#"{{"id": "r{i:02}", "prompt": "{prompt}", "response": "Answer {i}", "helpfulness": {}, "correctness": 2}}"#,
                (i * 7) % 5
            ),
            Kind::RmEval => format!(
                r#"{{"id": "r{i:02}", "prompt": "{prompt}", "chosen": "A careful answer {i}.", "rejected": "No.", "subset": "hep-go"}}"#
            ),
            Kind::SteerlmAnnotate => format!(
                r#"{{"id": "r{i:02}", "messages": [{{"role": "user", "content": "{prompt}"}}, {{"role": "assistant", "content": "Answer {i}."}}]}}"#
            ),
            // Three copies of each text (differing in case from the second on): a grown input's
            // first new record duplicates committed ones.
            Kind::Dedup if i.is_multiple_of(3) => {
                format!(r#"{{"id": "r{i:02}", "text": "{prompt}"}}"#)
            }
            Kind::Dedup => format!(
                r#"{{"id": "r{i:02}", "text": "{}"}}"#,
                prompt.to_uppercase()
            ),
        }
    }

    /// The lines of the job file beyond input, output and storage.
    fn settings(self) -> String {
        let reward = workspace().join("tests/fixtures/hf/llama-seqcls5-f32");
        let reward = format!(
            "[reward]\nkind = \"sequence-classification\"\nmodel = \"{}\"\n",
            reward.display()
        );
        match self {
            Kind::FilterRank => {
                format!("{reward}[goodness]\nnormalization = \"per-prompt\"\n[filter]\ntop_k = 2\n")
            }
            Kind::Helpsteer2Pairs => "[pairs]\nby = \"helpfulness\"\n".into(),
            Kind::RmEval | Kind::SteerlmAnnotate => reward,
            Kind::Dedup => "[dedup]\nfield = \"text\"\n".into(),
        }
    }
}

/// Records `range` and one bad line.
fn write_input(kind: Kind, path: &Path, range: std::ops::Range<usize>) {
    let mut text = String::new();
    for i in range {
        text.push_str(&kind.record(i));
        text.push('\n');
        if i == 5 {
            text.push_str("{\"id\": \"broken\", \"prompt\": 7\n");
        }
    }
    std::fs::write(path, text).unwrap();
}

fn write_job(kind: Kind, backend: &Backend, dir: &Path, name: &str, input: &Path) -> PathBuf {
    let storage = toml::to_string(&toml::Table::from_iter([(
        "storage".to_string(),
        toml::Value::try_from(&backend.storage).unwrap(),
    )]))
    .unwrap();
    let job = format!(
        "[job]\nkind = \"{}\"\n[input]\npath = \"{}\"\nmax_rejects = 3\n{}[output]\npath = \"{}\"\nshards = 3\nformats = [\"conversational\"]\n{storage}",
        kind.name(),
        input.display(),
        kind.settings(),
        backend.output(name),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, job).unwrap();
    path
}

const CRASH_POINTS: [&str; 7] = [
    "part-written:1",
    "part-written:2",
    "shard-marker:1",
    "shard-marker:3",
    "data-file:1",
    "before-commit:1",
    "committed:1",
];

/// Every crash point (then a second crash in the rerun) and `random_kills` SIGKILLs, each rerun
/// to the end and compared with the uninterrupted run.
fn kill_and_rerun(kind: Kind, backend: &Backend, random_kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(kind, &input, 0..12);
    let name = format!("{}-reference", kind.name());
    let out = run_job(&write_job(kind, backend, dir.path(), &name, &input), &[]);
    assert_eq!(out.code, Some(0), "{}: {}", kind.name(), out.stderr);
    let expected = snapshot(&backend.location(&name));
    let ids = committed_prompt_ids(&backend.location(&name));
    assert_eq!(ids.len(), 12, "{}: every record, once", kind.name());
    assert!(expected.keys().any(|k| k.starts_with("rejects/")));

    for (i, point) in CRASH_POINTS.iter().enumerate() {
        let name = format!("{}-crash-{i}", kind.name());
        let job = write_job(kind, backend, dir.path(), &name, &input);
        let crashed = run_job(&job, &[("STEERFLOW_CRASH_AT", point)]);
        assert_eq!(
            crashed.code,
            None,
            "{} {point}: {}",
            kind.name(),
            crashed.stderr
        );
        let second = CRASH_POINTS[(i + 3) % CRASH_POINTS.len()];
        let _ = run_job(&job, &[("STEERFLOW_CRASH_AT", second)]);
        let rerun = run_job(&job, &[]);
        assert_eq!(
            rerun.code,
            Some(0),
            "{} {point}: {}",
            kind.name(),
            rerun.stderr
        );
        let location = backend.location(&name);
        assert_eq!(
            snapshot(&location),
            expected,
            "{}: output after a crash at {point} then {second}",
            kind.name()
        );
        assert_eq!(committed_prompt_ids(&location).len(), 12);
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..random_kills {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let after = Duration::from_millis(10 + state % 300);
        let name = format!("{}-kill-{i}", kind.name());
        let job = write_job(kind, backend, dir.path(), &name, &input);
        kill_after(&job, after);
        let rerun = run_job(&job, &[]);
        assert_eq!(
            rerun.code,
            Some(0),
            "{} killed after {after:?}: {}",
            kind.name(),
            rerun.stderr
        );
        assert_eq!(
            snapshot(&backend.location(&name)),
            expected,
            "{} killed after {after:?}",
            kind.name()
        );
    }
}

#[test]
fn every_kind_killed_at_any_point_and_rerun_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    for kind in KINDS {
        kill_and_rerun(kind, &Backend::local(dir.path()), 4);
    }
}

#[test]
fn every_kind_killed_at_any_point_and_rerun_on_s3() {
    let server = moto();
    for kind in KINDS {
        kill_and_rerun(kind, &Backend::s3(server.port), 2);
    }
}

/// A grown input: the rerun of the same input does nothing; the grown one settles only the new
/// records, in a second run beside the first, whose files stay untouched.
fn grown_input(kind: Kind, backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(kind, &input, 0..8);
    let name = format!("{}-incremental", kind.name());
    let job = write_job(kind, backend, dir.path(), &name, &input);
    let first = run_job(&job, &[]);
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    let location = backend.location(&name);
    let before = snapshot(&location);
    let again = run_job(&job, &[]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again.stderr.contains("nothing new"),
        "{}: {}",
        kind.name(),
        again.stderr
    );
    assert_eq!(snapshot(&location), before);

    write_input(kind, &input, 0..12);
    let grown = run_job(&job, &[]);
    assert_eq!(grown.code, Some(0), "{}", grown.stderr);
    let rt = io_runtime().unwrap();
    let manifests = rt
        .block_on(steerflow_pipeline::commit::committed_manifests(&location))
        .unwrap();
    assert_eq!(manifests.len(), 2, "{}", kind.name());
    assert_eq!(
        manifests[1].prompts.len(),
        4,
        "{}: only the new records",
        kind.name()
    );
    // The bad line was reported by the first run, not again.
    assert!(manifests[1].rejects_file.is_none(), "{}", kind.name());
    assert_eq!(committed_prompt_ids(&location).len(), 12);
    let after = snapshot(&location);
    for (k, v) in &before {
        if !k.starts_with("manifest") || k.contains(&manifests[0].run_id) {
            assert_eq!(after.get(k), Some(v), "{}: {k} changed", kind.name());
        }
    }
    // A record whose content changed under a committed id is rejected, not settled again.
    let mut text = std::fs::read_to_string(&input).unwrap();
    text = text.replacen("Question number 0", "Question number zero", 1);
    text.push_str(&kind.record(12));
    text.push('\n');
    std::fs::write(&input, text).unwrap();
    let changed = run_job(&job, &[]);
    assert_eq!(changed.code, Some(0), "{}", changed.stderr);
    let manifests = rt
        .block_on(steerflow_pipeline::commit::committed_manifests(&location))
        .unwrap();
    let last = manifests.last().unwrap();
    assert_eq!(last.prompts.len(), 1, "{}", kind.name());
    assert!(last
        .input_rejects
        .iter()
        .any(|k| k.ends_with("changed_since_committed")));
}

#[test]
fn every_kind_processes_only_the_new_records_of_a_grown_input() {
    let dir = tempfile::tempdir().unwrap();
    let server = moto();
    for kind in KINDS {
        grown_input(kind, &Backend::local(dir.path()));
        grown_input(kind, &Backend::s3(server.port));
    }
}

#[test]
fn every_kind_commits_once_when_launched_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::local(dir.path());
    for kind in KINDS {
        let input = dir.path().join(format!("{}.jsonl", kind.name()));
        write_input(kind, &input, 0..12);
        let reference = format!("{}-alone", kind.name());
        let out = run_job(
            &write_job(kind, &backend, dir.path(), &reference, &input),
            &[],
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let expected = snapshot(&backend.location(&reference));
        let name = format!("{}-twice", kind.name());
        let job = write_job(kind, &backend, dir.path(), &name, &input);
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| run_job(&job, &[]));
            let b = s.spawn(|| run_job(&job, &[]));
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(
            (a.code, b.code),
            (Some(0), Some(0)),
            "{}\n{}",
            a.stderr,
            b.stderr
        );
        let location = backend.location(&name);
        let rt = io_runtime().unwrap();
        let manifests = rt
            .block_on(steerflow_pipeline::commit::committed_manifests(&location))
            .unwrap();
        assert_eq!(manifests.len(), 1, "{}: one commit", kind.name());
        assert_eq!(snapshot(&location), expected, "{}", kind.name());
    }
}
