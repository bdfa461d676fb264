//! The `steerflow` command.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use steerflow::config::load_config;
use steerflow::{exit_code, run_any};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "steerflow",
    version,
    about = "Alignment data from a dataflow of policy and reward models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job file (for example configs/demo.toml).
    Run {
        /// The TOML job file.
        config: PathBuf,
        /// Override a config value: `section.key=value` (TOML syntax, or a bare string). Repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Dataflow worker threads (overrides job.workers).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Score every response of a file with a reward model, to check a model before a long run.
    Score {
        /// The reward model: a checkpoint directory, a hub id in the local cache, a GGUF file or `default`.
        #[arg(long)]
        reward_model: String,
        /// judge, sequence-classification or next-token-logit.
        #[arg(long, default_value = "sequence-classification")]
        kind: String,
        /// Score names: helpsteer2, nemo9, scalar, or a comma-separated list.
        #[arg(long, default_value = "helpsteer2")]
        attributes: String,
        /// The logit a next-token-logit model is read at.
        #[arg(long, default_value_t = 0)]
        logit_index: usize,
        /// Context limit (default: the model's).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// skip or drop-turns.
        #[arg(long, default_value = "skip")]
        overlength: String,
        /// jsonl or parquet with `messages` ending in an assistant turn, or `prompt` + `response`.
        #[arg(long)]
        input: String,
        /// auto, jsonl or parquet.
        #[arg(long, default_value = "auto")]
        format: String,
        /// The parquet file to write.
        #[arg(long)]
        output: String,
    },
    /// Measure the N-samples-per-prompt workload (prefill and decode tokens/s, responses scored/s,
    /// peak memory); prints JSON on stdout.
    Bench {
        #[arg(long, default_value_t = 16)]
        prompts: usize,
        #[arg(long, default_value_t = 4)]
        samples: u32,
        #[arg(long, default_value_t = 48)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The policy model (as `policy.model` in a job file).
        #[arg(long, default_value = "default")]
        policy: String,
        /// The judge model (as `reward.model`; `policy` reuses the policy).
        #[arg(long, default_value = "policy")]
        reward_model: String,
    },
    /// Install the default model into the cache (done automatically on first use).
    InstallModel,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            config,
            set,
            workers,
        } => {
            let mut overrides = set;
            if let Some(w) = workers {
                overrides.push(format!("job.workers={w}"));
            }
            match load_config(&config, &overrides)
                .map_err(steerflow::JobError::from)
                .and_then(|c| {
                    let threads = steerflow::configure_threads(c.job.workers);
                    tracing::info!(
                        workers = c.job.workers,
                        compute_threads = threads,
                        "threads"
                    );
                    run_any(&c)
                }) {
                Ok(summary) if summary["job"] == "steerlm-annotate" => {
                    eprintln!(
                        "steerflow: {} conversations annotated ({} turns labelled, {} given the default label, {} records rejected) into {}",
                        summary["conversations"], summary["turns_labelled"], summary["turns_defaulted"], summary["rejected"],
                        summary["output"].as_str().unwrap_or_default()
                    );
                    0
                }
                Ok(summary) if summary["job"] == "rm-eval" => {
                    eprintln!(
                        "steerflow: reward-model evaluation written to {}: overall {}",
                        summary["output"].as_str().unwrap_or_default(),
                        summary["report"]["overall"]
                    );
                    0
                }
                Ok(summary) => {
                    let counts = &summary["counts"];
                    let throughput = &summary["throughput"];
                    let dropped: u64 = counts["dropped"]
                        .as_object()
                        .map(|d| d.values().filter_map(|v| v.as_u64()).sum())
                        .unwrap_or(0);
                    eprintln!(
                        "steerflow: {} pairs from {} prompts ({} dropped, {} rejected) written to {}; sampling {:.1} tokens/s, scoring {:.2} responses/s",
                        counts["pairs"],
                        counts["prompts"],
                        dropped,
                        counts["rejected"],
                        summary["output"].as_str().unwrap_or_default(),
                        throughput["sampling_tokens_per_second"].as_f64().unwrap_or(0.0),
                        throughput["scoring_responses_per_second"].as_f64().unwrap_or(0.0),
                    );
                    0
                }
                Err(e) => {
                    eprintln!("steerflow: error: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Score {
            reward_model,
            kind,
            attributes,
            logit_index,
            max_tokens,
            overlength,
            input,
            format,
            output,
        } => {
            let attributes = if attributes.contains(',') {
                toml::Value::Array(
                    attributes
                        .split(',')
                        .map(|a| toml::Value::String(a.trim().to_string()))
                        .collect(),
                )
            } else {
                toml::Value::String(attributes)
            };
            let reward = steerflow::config::RewardSection {
                kind,
                model: reward_model,
                attributes,
                logit_index,
                max_tokens,
                overlength,
            };
            match steerflow::score_responses(&reward, &input, &format, &output) {
                Ok(report) => {
                    eprintln!(
                        "steerflow: {} responses scored, {} unscored (reason in the `error` column), {} rejected, {} with turns dropped; written to {output}",
                        report.scored, report.failed, report.rejected, report.truncated
                    );
                    0
                }
                Err(e) => {
                    eprintln!("steerflow: error: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Bench {
            prompts,
            samples,
            max_new_tokens,
            workers,
            policy,
            reward_model,
        } => {
            let options = steerflow::bench::BenchOptions {
                prompts,
                samples,
                max_new_tokens,
                workers,
                policy,
                reward_model,
            };
            steerflow::configure_threads(workers);
            match steerflow::bench::run_bench(&options) {
                Ok(report) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("steerflow: error: {e}");
                    e.exit_code()
                }
            }
        }
        Command::InstallModel => match steerflow_models::registry::resolve_model("default") {
            Ok(path) => {
                println!("{}", path.display());
                0
            }
            Err(e) => {
                eprintln!("steerflow: error: {e}");
                exit_code::FAILURE
            }
        },
    };
    std::process::exit(code);
}
