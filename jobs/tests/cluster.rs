//! Cluster mode on loopback: the iterative-DPO job as 1 process × 1 worker, 1 × 2, 2 × 1 and
//! 2 × 2 writes identical files; a process whose peer never starts, or dies mid-run, exits
//! non-zero instead of waiting forever. Tiny fixture models keep each run under a few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{python, walk, workspace, write_hostfile};

fn write_input(path: &Path, prompts: usize) {
    let text: String = (0..prompts)
        .map(|i| format!("{{\"id\": \"q{i:03}\", \"prompt\": \"Tell me about item {i}.\"}}\n"))
        .chain(std::iter::once(
            "{\"id\": \"bad\", \"prompt\": []}\n".to_string(),
        ))
        .collect();
    std::fs::write(path, text).unwrap();
}

fn write_job(dir: &Path, input: &Path, output: &Path, max_new_tokens: usize) -> PathBuf {
    let fixtures = workspace().join("tests/fixtures/hf");
    let job = format!(
        r#"
[job]
seed = 3
[input]
path = "{input}"
max_rejects = 2
[policy]
model = "{policy}"
[sampling]
samples_per_prompt = 3
max_new_tokens = {max_new_tokens}
[reward]
kind = "sequence-classification"
model = "{reward}"
[output]
path = "{output}"
shards = 5
"#,
        input = input.display(),
        output = output.display(),
        policy = fixtures.join("llama3-f32").display(),
        reward = fixtures.join("llama-seqcls5-f32").display(),
    );
    let path = dir.join(format!(
        "job-{}.toml",
        output.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, job).unwrap();
    path
}

fn steerflow(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(args)
        .env("RUST_LOG", "info")
        // jsonl ranges of 256 bytes: the 40-line file is split over every worker.
        .env("STEERFLOW_JSONL_RANGE_BYTES", "256")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every data, export and rejects file of the output, by path, with its bytes.
fn files(output: &Path) -> BTreeMap<String, Vec<u8>> {
    ["data", "standard", "nemo", "rejects"]
        .iter()
        .flat_map(|top| walk(&output.join(top)))
        .map(|path| {
            let rel = path.strip_prefix(output).unwrap().display().to_string();
            (rel, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// A folder input: a jsonl file, and a parquet file of 6 row groups that repeats one id of the
/// jsonl file (the jsonl copy, first by file name, is kept).
fn write_folder_input(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    write_input(&dir.join("a.jsonl"), 40);
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
ids = [f"r{i:03}" for i in range(23)] + ["q007"]
prompts = [f"Row {i}: say something." for i in range(24)]
pq.write_table(pa.table({"id": ids, "prompt": prompts}), sys.argv[1], row_group_size=4)
"#;
    let status = Command::new(python())
        .args(["-c", script])
        .arg(dir.join("b.parquet"))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn every_cluster_shape_writes_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    // Enough prompts that timely splits the samples over several containers; the parquet
    // file's row groups are spread over the workers.
    write_folder_input(&input);
    let mut results = Vec::new();
    for (processes, workers) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
        let output = dir.path().join(format!("out-{processes}x{workers}"));
        let job = write_job(dir.path(), &input, &output, 6);
        let (code, stderr) = if processes == 1 {
            steerflow(&[
                "run",
                job.to_str().unwrap(),
                "--workers",
                &workers.to_string(),
            ])
        } else {
            steerflow(&[
                "launch-local",
                job.to_str().unwrap(),
                "--processes",
                &processes.to_string(),
                "--workers",
                &workers.to_string(),
            ])
        };
        assert_eq!(code, Some(0), "{processes}x{workers}: {stderr}");
        if processes == 2 {
            assert!(
                stderr.contains("process 1 of 2: its share of run"),
                "{stderr}"
            );
            assert_eq!(
                stderr.matches(": run committed run=").count(),
                1,
                "{stderr}"
            );
        }
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(output.join("summary.json")).unwrap()).unwrap();
        // 41 jsonl records (one bad) and 24 parquet rows (one id repeated from the jsonl file).
        assert_eq!(summary["counts"]["prompts"], 63, "{summary}");
        assert_eq!(summary["incremental"]["records_read"], 65, "{summary}");
        assert_eq!(
            summary["counts"]["rejected_by_reason"]["duplicate_id"], 1,
            "{summary}"
        );
        assert_eq!(summary["processes"], processes);
        // The work of every process, gathered by process 0: the same tokens for every shape.
        let work = serde_json::json!([
            summary["tokens"]["prompts_sampled"],
            summary["tokens"]["tokens_decoded"],
            summary["tokens"]["tokens_scored"],
        ]);
        assert_eq!(summary["tokens"]["prompts_sampled"], 63, "{summary}");
        results.push((
            (processes, workers),
            files(&output),
            serde_json::json!([summary["counts"], work]),
        ));
    }
    let (_, reference, counts) = &results[0];
    assert!(reference.keys().any(|k| k.starts_with("data/")));
    for (shape, files, shape_counts) in &results[1..] {
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            reference.keys().collect::<Vec<_>>(),
            "{shape:?}"
        );
        for (path, bytes) in files {
            assert!(
                reference[path] == *bytes,
                "{shape:?}: {path} differs from 1x1"
            );
        }
        assert_eq!(shape_counts, counts, "{shape:?}");
    }
}

#[test]
fn a_peer_that_never_starts_ends_the_run_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 4);
    let job = write_job(dir.path(), &input, &dir.path().join("out"), 4);
    let hosts = dir.path().join("hosts");
    write_hostfile(&hosts, 2);
    let started = Instant::now();
    let (code, stderr) = steerflow(&[
        "run",
        job.to_str().unwrap(),
        "--processes",
        "2",
        "--process",
        "0",
        "--hosts",
        hosts.to_str().unwrap(),
        "--connect-timeout",
        "3",
    ]);
    assert_eq!(code, Some(steerflow::exit_code::FAILURE), "{stderr}");
    assert!(
        stderr.contains("not every peer connected within 3 s"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!dir.path().join("out/README.md").exists());
}

#[test]
fn a_peer_killed_mid_run_ends_the_other_process() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_input(&input, 400);
    let output = dir.path().join("out");
    let job = write_job(dir.path(), &input, &output, 48);
    let hosts = dir.path().join("hosts");
    write_hostfile(&hosts, 2);
    let spawn = |process: &str| {
        Command::new(env!("CARGO_BIN_EXE_steerflow"))
            .args([
                "run",
                job.to_str().unwrap(),
                "--processes",
                "2",
                "--process",
                process,
            ])
            .arg("--hosts")
            .arg(&hosts)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut leader = spawn("0");
    let mut peer = spawn("1");
    // Wait until the leader reports sampling progress: both processes are connected and working.
    let stderr = leader.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("leader log");
        log.push_str(&line);
        log.push('\n');
        if line.contains("progress") && line.contains("stage=\"sample\"") {
            break;
        }
        assert!(Instant::now() < deadline, "{log}");
    }
    peer.kill().unwrap(); // SIGKILL
    let _ = peer.wait();
    let killed_at = Instant::now();
    let status = loop {
        if let Some(status) = leader.try_wait().unwrap() {
            break status;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "the leader kept waiting for its dead peer"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
        log.push_str(&line);
        log.push('\n');
    }
    assert_eq!(status.code(), Some(steerflow::exit_code::FAILURE), "{log}");
    assert!(
        log.contains("lost the connection to a peer process"),
        "{log}"
    );
    assert!(
        !output.join("README.md").exists(),
        "nothing may be committed"
    );
}

#[test]
fn a_worker_that_cannot_read_its_share_stops_every_worker_before_any_shard_commits() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    // A parquet file whose footer is sound but whose second row group is corrupt: only the
    // worker that owns that row group fails; the other reads its row group fine.
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
path = sys.argv[1]
pq.write_table(pa.table({"id": [f"r{i}" for i in range(8)], "prompt": [f"Row {i}?" for i in range(8)]}),
               path, row_group_size=4, compression="none")
meta = pq.ParquetFile(path).metadata.row_group(1)
start = min(meta.column(c).data_page_offset for c in range(meta.num_columns))
data = bytearray(open(path, "rb").read())
data[start:start + 16] = b"\xff" * 16
open(path, "wb").write(bytes(data))
"#;
    let status = Command::new(python())
        .args(["-c", script])
        .arg(input.join("b.parquet"))
        .status()
        .unwrap();
    assert!(status.success());
    let output = dir.path().join("out");
    let job = write_job(dir.path(), &input, &output, 4);
    let (code, stderr) = steerflow(&["run", job.to_str().unwrap(), "--workers", "2"]);
    assert_eq!(code, Some(steerflow::exit_code::FAILURE), "{stderr}");
    assert!(
        stderr.contains("b.parquet") && stderr.contains("corrupt parquet data"),
        "{stderr}"
    );
    // The jsonl worker's prompts were not sampled into shards that then look complete.
    let markers: Vec<_> = walk(&output)
        .into_iter()
        .filter(|p| p.display().to_string().contains("/shards/"))
        .collect();
    assert!(markers.is_empty(), "{markers:?}");
    assert!(!output.join("README.md").exists());
}
