//! Helpers shared by the end-to-end tests: job configs for tiny runs and pyarrow read-back.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (where `configs/` and `tests/fixtures/` live): `$STEERFLOW_TEST_ROOT`
/// for test binaries run away from their build (the GPU bundle, `scripts/gpu-check`), else the
/// directory they were built in.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("STEERFLOW_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The device the model tests run on: `$STEERFLOW_TEST_DEVICE` (`cpu`, `cuda` or `cuda:N`;
/// the CUDA ones in a `--features steerflow/cuda` build), else the CPU.
pub fn device() -> candle_core::Device {
    match std::env::var("STEERFLOW_TEST_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("cpu") => candle_core::Device::Cpu,
        Ok(name) => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(n) => n
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("STEERFLOW_TEST_DEVICE={name}: cpu, cuda or cuda:N")),
                None => panic!("STEERFLOW_TEST_DEVICE={name}: cpu, cuda or cuda:N"),
            };
            candle_core::Device::new_cuda(ordinal)
                .unwrap_or_else(|e| panic!("STEERFLOW_TEST_DEVICE={name}: {e}"))
        }
    }
}

/// Where a fixture's golden outputs are read: `$STEERFLOW_TEST_GOLDEN/<case>/golden.json` when
/// set (outputs of transformers on the device under test, `scripts/gpu-check`), else the
/// fixture's own (transformers on the CPU).
pub fn golden_path(fixture_dir: &Path) -> PathBuf {
    match std::env::var_os("STEERFLOW_TEST_GOLDEN") {
        Some(dir) => PathBuf::from(dir)
            .join(fixture_dir.file_name().expect("a fixture folder"))
            .join("golden.json"),
        None => fixture_dir.join("golden.json"),
    }
}

/// The Python with pyarrow that `scripts/test` set up (`STEERFLOW_TEST_PYTHON`, else `.venv-test`).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("STEERFLOW_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv-test/bin/python");
    assert!(
        venv.exists(),
        "no test Python: run ./scripts/test (it creates .venv-test with pyarrow)"
    );
    venv
}

/// Reads every parquet file under `dir/data` with pyarrow and returns the rows as JSON,
/// sorted by prompt_id.
pub fn read_pairs_with_pyarrow(dir: &Path) -> Vec<serde_json::Value> {
    let script = r#"
import json, sys, glob
import pyarrow.parquet as pq
rows = []
for f in sorted(glob.glob(sys.argv[1] + "/data/**/*.parquet", recursive=True)):
    rows.extend(pq.read_table(f).to_pylist())
rows.sort(key=lambda r: r["prompt_id"])
print(json.dumps(rows))
"#;
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json rows")
}

/// Reads one parquet file with pyarrow and returns its rows as JSON, in file order.
pub fn read_parquet_with_pyarrow(file: &Path) -> Vec<serde_json::Value> {
    let script = "import json,sys,pyarrow.parquet as pq; print(json.dumps(pq.read_table(sys.argv[1]).to_pylist()))";
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(file)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "pyarrow failed on {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json rows")
}

/// A tiny iterative-DPO job over `input`, writing to `output`.
pub fn tiny_config(
    input: &Path,
    output: &Path,
    workers: usize,
    samples: u32,
    max_new_tokens: usize,
) -> String {
    format!(
        r#"
[job]
seed = 11
workers = {workers}
[input]
path = "{input}"
[sampling]
samples_per_prompt = {samples}
temperature = 0.9
top_p = 0.95
max_new_tokens = {max_new_tokens}
[output]
path = "{output}"
shards = 2
"#,
        input = input.display(),
        output = output.display(),
    )
}

/// The largest element-wise |a - b| of two f32 tensors of one shape.
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The default model (GGUF, installed on first use), loaded once per test binary.
pub fn default_model() -> std::sync::Arc<dyn steerflow_models::LanguageModel> {
    static MODEL: std::sync::OnceLock<std::sync::Arc<dyn steerflow_models::LanguageModel>> =
        std::sync::OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = steerflow_models::registry::resolve_model("default")
                .expect("default model installed");
            std::sync::Arc::new(
                steerflow_models::gguf::GgufModel::load(&path, &device())
                    .expect("the default model loads"),
            )
        })
        .clone()
}

/// Loads a golden case's `job.toml` (`tests/golden/<case>/`) with its paths resolved inside
/// the case folder and its output in `out`.
pub fn golden_job(case: &Path, out: &Path) -> steerflow::config::JobConfig {
    golden_job_with(case, out, &[])
}

/// [`golden_job`] with `key=value` overrides, as `--set` gives them.
pub fn golden_job_with(
    case: &Path,
    out: &Path,
    overrides: &[String],
) -> steerflow::config::JobConfig {
    let text = std::fs::read_to_string(case.join("job.toml")).unwrap();
    let mut config = steerflow::config::parse_config(&text, "job.toml", overrides).unwrap();
    config.input.path = case.join(&config.input.path).display().to_string();
    if config.reward.model.contains('/') {
        config.reward.model = case.join(&config.reward.model).display().to_string();
    }
    config.output.path = out.display().to_string();
    config
}
