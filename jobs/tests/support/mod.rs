//! Helpers shared by the `steerflow` command's integration tests.

#![allow(dead_code, clippy::unwrap_used)]

pub mod llama;
pub mod runs;
pub mod served_jobs;
pub mod servers;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python with pyarrow and moto that `scripts/test` set up.
pub fn python() -> PathBuf {
    std::env::var_os("STEERFLOW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv-test/bin/python"))
}

/// Runs `command` to its end and returns its output; a failure fails the test with its stderr.
pub fn succeed(command: &mut std::process::Command) -> std::process::Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every row of the parquet file at `path`, or of every parquet file under the folder `path`
/// (in path order), read by pyarrow.
pub fn read_parquet(path: &Path) -> Vec<serde_json::Value> {
    let script = "import glob,json,os,sys,pyarrow.parquet as pq\np=sys.argv[1]\nfiles=sorted(glob.glob(p+'/**/*.parquet', recursive=True)) if os.path.isdir(p) else [p]\nrows=[]\nfor f in files: rows += pq.read_table(f).to_pylist()\nprint(json.dumps(rows, default=str))";
    let out = succeed(
        std::process::Command::new(python())
            .args(["-c", script])
            .arg(path),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A loopback port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A hostfile of `processes` free loopback ports, written at `path`.
pub fn write_hostfile(path: &Path, processes: usize) {
    let hosts: String = (0..processes)
        .map(|_| format!("127.0.0.1:{}\n", free_port()))
        .collect();
    std::fs::write(path, hosts).unwrap();
}

/// Every file under `dir`, recursively (none when it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
