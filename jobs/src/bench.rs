//! `steerflow bench`: the N-samples-per-prompt workload on a model, measured.
//!
//! Runs the iterative-DPO job over the demo prompts (repeated with fresh ids up to `prompts`)
//! into a temporary directory and reports prefill and decode tokens/s, judge tokens/s,
//! responses scored/s and the process's peak resident memory, as JSON on stdout.
//! `--generate-only` runs just the policy's generation engine on the same prompts, at a given
//! batch size, for side-by-side comparison with llama.cpp and transformers
//! (`scripts/bench-compare`).

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
    /// `job.device` of the run.
    pub device: crate::config::sections::Device,
    /// With `--generate-only`: each prompt's text repeated until its templated prompt holds at
    /// least this many tokens (prefill at the judge's prompt lengths).
    pub prompt_tokens: Option<usize>,
}

/// `messages`' last message repeated (joined by blank lines) until the templated prompt holds
/// at least `min` tokens; its token ids.
fn lengthened(
    policy: &steerflow_models::policy::Policy,
    mut messages: Vec<steerflow_operators::records::Message>,
    min: Option<usize>,
) -> Result<Vec<u32>, JobError> {
    let mut tokens = policy.prompt_tokens(&messages)?;
    let Some(min) = min else { return Ok(tokens) };
    let Some(text) = messages.last().map(|m| m.content.clone()) else {
        return Ok(tokens);
    };
    while tokens.len() < min && !text.is_empty() {
        if let Some(last) = messages.last_mut() {
            last.content.push_str("\n\n");
            last.content.push_str(&text);
        }
        tokens = policy.prompt_tokens(&messages)?;
    }
    Ok(tokens)
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

/// Runs only the generation engine: every prompt's `samples` samples of up to `max_new_tokens`
/// (ending early at EOS), at most `batch` sequences per step. Reports prefill and decode work and
/// the generated tokens per second of wall time.
pub fn run_generation_bench(options: &BenchOptions, batch: usize) -> Result<Value, JobError> {
    use steerflow_models::engine::{EngineLimits, GenerationRequest};
    use steerflow_models::generation::GenerationParams;
    use steerflow_models::policy::Policy;
    let loading = std::time::Instant::now();
    let device = crate::models::devices(options.device, 1)?.remove(0);
    let policy = Policy::new(crate::models::load_language_model(
        &options.policy,
        &device,
    )?);
    let load_seconds = loading.elapsed().as_secs_f64();
    let defaults = crate::config::sections::SamplingSection::default();
    let params = GenerationParams {
        sampling: steerflow_kernels::sampling::SamplingParams {
            temperature: defaults.temperature,
            top_p: defaults.top_p,
            top_k: defaults.top_k,
        },
        max_new_tokens: options.max_new_tokens,
        stop: Vec::new(),
    };
    // The bench prompts, read as the job reads any prompt file.
    let records = steerflow_pipeline::source::parse_jsonl(
        "bench-prompts.jsonl",
        bench_prompts(options.prompts)?.as_bytes(),
        steerflow_pipeline::source::RecordShape::Prompt,
    );
    if let Some(reject) = records.rejects.first() {
        return Err(crate::invalid(format!("bench prompts: {reject:?}")));
    }
    let mut requests = Vec::with_capacity(records.prompts.len());
    for prompt in &records.prompts {
        requests.push(GenerationRequest {
            prompt_tokens: lengthened(&policy, prompt.messages.clone(), options.prompt_tokens)?,
            seeds: (0..options.samples)
                .map(|s| steerflow_operators::seeding::sample_seed(1, &prompt.id, s))
                .collect(),
        });
    }
    let limits = EngineLimits {
        max_sequences: batch.max(1),
        max_tokens: usize::MAX,
    };
    let (mut prefilled, mut decoded, mut prefill_s, mut decode_s) = (0u64, 0u64, 0f64, 0f64);
    let mut failure = None;
    let started = std::time::Instant::now();
    let stats = policy.generate_many(
        requests,
        &[],
        &params,
        &limits,
        (
            |_, result| match result {
                Ok((_, c)) => {
                    prefilled += c.prompt_tokens_prefilled;
                    decoded += c.tokens_decoded;
                    prefill_s += c.prefill_seconds;
                    decode_s += c.decode_seconds;
                }
                Err(e) => failure = Some(e),
            },
            |_| {},
        ),
        || false,
    );
    let wall = started.elapsed().as_secs_f64();
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(json!({
        "workload": {
            "prompts": options.prompts,
            "samples_per_prompt": options.samples,
            "max_new_tokens": options.max_new_tokens,
            "max_batch_sequences": batch,
            "min_prompt_tokens": options.prompt_tokens,
            "policy": policy.id(),
        },
        "prompt_tokens_prefilled": prefilled,
        "tokens_decoded": decoded,
        "steps": stats.steps,
        "mean_batch": stats.rows as f64 / stats.steps.max(1) as f64,
        "model_seconds": stats.model_seconds,
        "sampling_seconds": stats.sampling_seconds,
        "prefill_tokens_per_second": prefilled as f64 / prefill_s.max(1e-9),
        "decode_tokens_per_second": decoded as f64 / decode_s.max(1e-9),
        "generated_tokens_per_wall_second": decoded as f64 / wall.max(1e-9),
        "wall_seconds": wall,
        "load_seconds": load_seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }))
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
    config.job.device = options.device;
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
