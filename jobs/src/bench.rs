//! `steerflow bench`: the N-samples-per-prompt workload on a model, measured.
//!
//! Runs the iterative-DPO job over the demo prompts (repeated with fresh ids up to `prompts`)
//! into a temporary directory and reports prefill and decode tokens/s, judge tokens/s,
//! responses scored/s and the process's peak resident memory, as JSON on stdout.

use crate::config::JobConfig;
use crate::{run_job, JobError};
use serde_json::{json, Value};

/// The demo prompts, written for the project.
const PROMPTS: &str = include_str!("../../configs/data/demo-prompts.jsonl");

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub prompts: usize,
    pub samples: u32,
    pub max_new_tokens: usize,
    pub workers: usize,
    pub policy: String,
    pub reward_model: String,
}

/// Peak resident set size of this process in bytes (`VmHWM`), where the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `count` prompt records built from the demo prompts, each with its own id.
pub fn bench_prompts(count: usize) -> Result<String, JobError> {
    let base: Vec<Value> = PROMPTS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| crate::invalid(format!("bench prompts: {e}")))?;
    let mut out = String::new();
    for i in 0..count {
        let mut record = base[i % base.len()].clone();
        record["id"] = json!(format!("bench-{i:05}"));
        out.push_str(&record.to_string());
        out.push('\n');
    }
    Ok(out)
}

/// Runs the benchmark and returns its report.
pub fn run_bench(options: &BenchOptions) -> Result<Value, JobError> {
    let dir = tempfile::tempdir()
        .map_err(|e| crate::invalid(format!("bench: cannot create a temporary directory: {e}")))?;
    let input = dir.path().join("prompts.jsonl");
    std::fs::write(&input, bench_prompts(options.prompts)?)
        .map_err(|e| crate::invalid(format!("bench: cannot write {}: {e}", input.display())))?;
    let mut config = JobConfig::default();
    config.input.path = input.display().to_string();
    config.output.path = dir.path().join("out").display().to_string();
    config.job.workers = options.workers;
    config.job.seed = 1;
    config.policy.model = options.policy.clone();
    config.reward.model = options.reward_model.clone();
    config.sampling.samples_per_prompt = options.samples;
    config.sampling.max_new_tokens = options.max_new_tokens;
    let report = run_job(&config)?;
    let s = &report.summary;
    Ok(json!({
        "workload": {
            "prompts": options.prompts,
            "samples_per_prompt": options.samples,
            "max_new_tokens": options.max_new_tokens,
            "workers": options.workers,
            "policy": s["policy"],
            "scorer": s["scorer"],
        },
        "tokens": s["tokens"],
        "throughput": s["throughput"],
        "wall_seconds": s["timings"]["total_seconds"],
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_prompts_have_unique_ids_and_cycle() {
        let text = bench_prompts(40).unwrap();
        let ids: std::collections::BTreeSet<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 40);
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }
}
