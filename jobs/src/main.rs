//! The `steerflow` command.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use steerflow::config::load_config;
use steerflow::config::sections::{
    Attributes, Device, InputFormatSetting, OverlengthSetting, RewardKind, RewardSection,
};
use steerflow::{invalid, run_kind, JobError};
use steerflow_pipeline::cluster::ClusterSpec;
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

/// Cluster mode: every process runs the same command with its own `--process`.
#[derive(clap::Args, Default)]
struct ClusterArgs {
    /// Processes in the cluster (default: `STEERFLOW_PROCESSES`, Slurm's `SLURM_NTASKS`,
    /// `WORLD_SIZE`, or 1).
    #[arg(long)]
    processes: Option<usize>,
    /// This process, from 0 (default: `STEERFLOW_PROCESS`, `SLURM_PROCID`, Kubernetes'
    /// `JOB_COMPLETION_INDEX`, `RANK`, or 0). Process 0 commits the run.
    #[arg(long)]
    process: Option<usize>,
    /// A file with one `host:port` per process, in process order (default: `STEERFLOW_HOSTS`).
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// Seconds to wait for every peer to connect before giving up.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
}

/// The peers of a cluster run never all connected: the run cannot start and nothing was
/// committed. Timely is stuck in its connect loop, so the process exits.
fn exit_on_connect_timeout(message: String) {
    eprintln!("steerflow: error: {message}");
    std::process::exit(steerflow::exit_code::FAILURE);
}

/// The first of these environment variables that is set, as a number.
fn env_number(names: &[&str]) -> Result<Option<usize>, JobError> {
    for name in names {
        if let Ok(value) = std::env::var(name) {
            return value
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| invalid(format!("{name}={value} is not a process count or index")));
        }
    }
    Ok(None)
}

impl ClusterArgs {
    fn resolve(&self, workers: usize) -> Result<ClusterSpec, JobError> {
        let processes = match self.processes {
            Some(p) => p,
            None => {
                env_number(&["STEERFLOW_PROCESSES", "SLURM_NTASKS", "WORLD_SIZE"])?.unwrap_or(1)
            }
        };
        let process = match self.process {
            Some(p) => p,
            None => env_number(&[
                "STEERFLOW_PROCESS",
                "SLURM_PROCID",
                "JOB_COMPLETION_INDEX",
                "RANK",
            ])?
            .unwrap_or(0),
        };
        let hosts = self
            .hosts
            .clone()
            .or_else(|| std::env::var_os("STEERFLOW_HOSTS").map(PathBuf::from));
        let addresses = match (&hosts, processes) {
            (_, 1) => Vec::new(),
            (None, _) => {
                return Err(invalid(format!(
                    "{processes} processes need --hosts (a file with one host:port per process)"
                )))
            }
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    invalid(format!("cannot read hostfile {}: {e}", file.display()))
                })?;
                steerflow_pipeline::cluster::parse_hostfile(&text, &file.display().to_string())
                    .map_err(invalid)?
            }
        };
        let spec = ClusterSpec {
            processes,
            process,
            addresses,
            workers,
            connect_timeout: std::time::Duration::from_secs_f64(self.connect_timeout.max(0.0)),
            on_connect_timeout: Some(exit_on_connect_timeout),
        };
        spec.validate().map_err(invalid)?;
        Ok(spec)
    }
}

/// The reward model of `steerflow score` and `steerflow serve`.
#[derive(clap::Args)]
struct RewardArgs {
    /// The reward model: a checkpoint directory, a hub id in the local cache, a GGUF file or `default`.
    #[arg(long)]
    reward_model: String,
    /// judge, sequence-classification or next-token-logit.
    #[arg(long, default_value = "sequence-classification", value_parser = setting::<RewardKind>)]
    kind: RewardKind,
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
    #[arg(long, default_value = "skip", value_parser = setting::<OverlengthSetting>)]
    overlength: OverlengthSetting,
    /// model (the checkpoint's own), nemo-steerlm-rm, nemo-steerlm, or a .jinja file.
    #[arg(long, default_value = "model")]
    chat_template: String,
    /// Where the model runs: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = setting::<Device>)]
    device: Device,
    /// Ranks the reward model is split over (threads on the CPU, GPUs with cuda).
    #[arg(long, default_value_t = 1)]
    tensor_parallel: usize,
}

impl RewardArgs {
    fn section(&self) -> Result<RewardSection, JobError> {
        Ok(RewardSection {
            kind: self.kind,
            model: self.reward_model.clone(),
            attributes: Attributes::parse_flag(&self.attributes).map_err(invalid)?,
            logit_index: self.logit_index,
            max_tokens: self.max_tokens,
            overlength: self.overlength,
            chat_template: self.chat_template.clone(),
            tensor_parallel: self.tensor_parallel,
            served: None,
        })
    }
}

/// `steerflow score`.
#[derive(clap::Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: RewardArgs,
    /// jsonl or parquet with `messages` ending in an assistant turn, or `prompt` + `response`.
    #[arg(long)]
    input: String,
    /// auto, jsonl or parquet.
    #[arg(long, default_value = "auto", value_parser = setting::<InputFormatSetting>)]
    format: InputFormatSetting,
    /// The parquet file to write.
    #[arg(long)]
    output: String,
}

/// `steerflow serve`.
#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    model: RewardArgs,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// The model name `/v1/models` lists and replies carry (default: the reward model's id).
    #[arg(long)]
    model_name: Option<String>,
    /// Most responses scored in one batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Milliseconds the batcher waits for more requests once one is in.
    #[arg(long, default_value_t = 2)]
    batch_wait_ms: u64,
}

/// A config value given as a flag, parsed as the job file would parse it.
fn setting<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, String> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(value))
        .map_err(|e| e.to_string())
}

/// `steerflow score`: the reward model scores every response of the input.
fn score(args: ScoreArgs) -> Result<(), JobError> {
    let reward = args.model.section()?;
    let _compute = steerflow::configure_threads(1);
    let report = steerflow::score_responses(
        &reward,
        &args.input,
        args.format,
        &args.output,
        args.model.device,
    )?;
    eprintln!(
        "steerflow: {} responses scored, {} unscored (reason in the `error` column), {} rejected, {} with turns dropped; written to {}",
        report.scored, report.failed, report.rejected, report.truncated, args.output
    );
    Ok(())
}

/// `steerflow serve`: the reward model behind HTTP until SIGINT or SIGTERM.
fn serve(args: ServeArgs) -> Result<(), JobError> {
    let reward = args.model.section()?;
    let counters = std::sync::Arc::new(steerflow_models::served::ServedCounters::default());
    let model = steerflow::models::load_reward_model(&reward, None, args.model.device, &counters)?;
    let options = steerflow::serve::ServeOptions {
        listen: args.listen,
        model_name: args.model_name,
        max_batch: args.max_batch,
        batch_wait: std::time::Duration::from_millis(args.batch_wait_ms),
    };
    steerflow::serve::serve(model, options, |address| {
        // The line scripts and tests wait for (the port when `--listen` ends in `:0`).
        println!("steerflow serve: listening on http://{address}");
    })
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
        /// Check the job and print its plan as JSON; load no model and write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Run a job as P processes on this machine over loopback (to try cluster mode).
    LaunchLocal {
        /// The TOML job file.
        config: PathBuf,
        #[arg(long, default_value_t = 2)]
        processes: usize,
        /// Workers per process.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Score every response of a file with a reward model, to check a model before a long run.
    Score(ScoreArgs),
    /// Serve a reward model over HTTP: OpenRLHF's `/get_reward` and vLLM's `/classify`
    /// (docs/served.md).
    Serve(ServeArgs),
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
        /// Where the models run: cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu", value_parser = setting::<Device>)]
        device: Device,
        /// Run only the policy's generation engine (no judge, no job), at `--batch` sequences.
        #[arg(long)]
        generate_only: bool,
        /// Most sequences per step of the generation engine (with `--generate-only`).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// The policy model (as `policy.model` in a job file).
        #[arg(long, default_value = "default")]
        policy: String,
        /// The judge model (as `reward.model`; `policy` reuses the policy).
        #[arg(long, default_value = "policy")]
        reward_model: String,
        /// With `--generate-only`: repeat each prompt's text until it holds at least this many
        /// tokens (prefill at the judge's prompt lengths, ~300).
        #[arg(long)]
        prompt_tokens: Option<usize>,
    },
    /// Describe an output: files, schemas, row counts, first rows, summary.
    Inspect {
        /// The output directory or URL.
        output: String,
    },
    /// List the runs committed in an output (and those begun but not committed); `--sweep`
    /// deletes what failed attempts left behind.
    Runs {
        /// The output directory or URL.
        output: String,
        /// A job file whose `[storage]` section says how to reach the output.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Delete the parts of attempts that lost a shard to another attempt.
        #[arg(long)]
        sweep: bool,
        /// With --sweep: also delete runs never committed and untouched for this many hours.
        #[arg(long, value_name = "HOURS")]
        incomplete_older_than: Option<f64>,
    },
    /// Install the default model into the cache (done automatically on first use).
    InstallModel,
}

fn main() {
    // A peer process that dies makes timely's network thread panic with this message; the
    // workers would then wait forever. Exit instead, so the scheduler can rerun the job (it
    // resumes through the commit protocol).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.to_string();
        if message.contains("timely communication error") {
            eprintln!(
                "steerflow: error: lost the connection to a peer process ({message}); \
                 nothing was committed by this process: rerun the whole job to resume"
            );
            std::process::exit(steerflow::exit_code::FAILURE);
        }
        default_hook(info);
    }));
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            set,
            workers,
            dry_run,
            cluster,
        } => run(&config, set, workers, dry_run, &cluster),
        Command::LaunchLocal {
            config,
            processes,
            workers,
            set,
        } => launch_local(&config, processes, workers, &set),
        Command::Score(args) => score(args),
        Command::Serve(args) => serve(args),
        Command::Bench {
            prompts,
            samples,
            max_new_tokens,
            workers,
            device,
            generate_only,
            batch,
            policy,
            reward_model,
            prompt_tokens,
        } => {
            let options = steerflow::bench::BenchOptions {
                prompts,
                samples,
                max_new_tokens,
                workers,
                policy,
                reward_model,
                device,
                prompt_tokens,
            };
            let _compute = steerflow::configure_threads(workers);
            let report = if generate_only {
                steerflow::bench::run_generation_bench(&options, batch)
            } else {
                steerflow::bench::run_bench(&options)
            };
            report.map(|report| {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                )
            })
        }
        Command::Inspect { output } => steerflow_pipeline::inspect::inspect(&output)
            .map(|text| print!("{text}"))
            .map_err(JobError::from),
        Command::Runs {
            output,
            config,
            sweep,
            incomplete_older_than,
        } => runs(&output, config.as_deref(), sweep, incomplete_older_than),
        Command::InstallModel => steerflow_models::registry::resolve_model("default")
            .map(|path| println!("{}", path.display()))
            .map_err(JobError::from),
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("steerflow: error: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// `steerflow launch-local`: P processes of this binary on loopback ports; the first failure's
/// exit code, else 0.
fn launch_local(
    config: &Path,
    processes: usize,
    workers: usize,
    set: &[String],
) -> Result<(), JobError> {
    if processes == 0 {
        return Err(invalid("--processes must be at least 1"));
    }
    let ports: Vec<u16> = (0..processes)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("no free loopback port: {e}")))?;
    let hostfile = tempfile::NamedTempFile::new()
        .map_err(|e| invalid(format!("cannot write a hostfile: {e}")))?;
    let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(hostfile.path(), hosts)
        .map_err(|e| invalid(format!("cannot write a hostfile: {e}")))?;
    let exe = std::env::current_exe().map_err(|e| invalid(e.to_string()))?;
    let mut children = Vec::new();
    for process in 0..processes {
        let mut command = std::process::Command::new(&exe);
        command
            .arg("run")
            .arg(config)
            .args(["--workers", &workers.to_string()])
            .args(["--processes", &processes.to_string()])
            .args(["--process", &process.to_string()])
            .arg("--hosts")
            .arg(hostfile.path());
        for s in set {
            command.args(["--set", s]);
        }
        // The processes share this machine's cores: give each its share of compute threads.
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            command.env(
                "RAYON_NUM_THREADS",
                (cores / (processes * workers.max(1))).max(1).to_string(),
            );
        }
        children.push(
            command
                .spawn()
                .map_err(|e| invalid(format!("cannot start process {process}: {e}")))?,
        );
    }
    let mut first_failure = None;
    for (process, mut child) in children.into_iter().enumerate() {
        let status = child.wait().map_err(|e| invalid(e.to_string()))?;
        if !status.success() && first_failure.is_none() {
            first_failure = Some((
                process,
                status.code().unwrap_or(steerflow::exit_code::FAILURE),
            ));
        }
    }
    match first_failure {
        None => Ok(()),
        Some((process, code)) => {
            eprintln!("steerflow: launch-local: process {process} failed");
            std::process::exit(code)
        }
    }
}

/// `steerflow runs`: one line per run on stdout.
fn runs(
    output: &str,
    config: Option<&Path>,
    sweep: bool,
    incomplete_older_than: Option<f64>,
) -> Result<(), JobError> {
    if let Some(config) = config {
        let config = load_config(config, &steerflow::config::env_overrides(std::env::vars()))?;
        steerflow_pipeline::storage::configure(config.common.storage);
    }
    let location = steerflow_pipeline::storage::Location::parse(output, false)?;
    let rt = steerflow_pipeline::storage::io_runtime()?;
    let runs = rt.block_on(steerflow_pipeline::commit::list_runs(&location))?;
    println!("run_id\tstate\tcommitted_at\trecords\tfiles\tcounts");
    for run in &runs {
        match &run.manifest {
            Some(m) => println!(
                "{}\tcommitted\t{}\t{}\t{}\t{}",
                m.run_id,
                m.committed_at,
                m.prompts.len(),
                m.files.len() + m.other_files.len(),
                top_level_counts(&m.counts)
            ),
            None => println!(
                "{}\tincomplete ({} of {} shards)\t-\t-\t-\t-",
                run.run_id,
                run.shards_done,
                run.plan.as_ref().map(|p| p.shards).unwrap_or(0),
            ),
        }
    }
    if sweep {
        let age = incomplete_older_than.map(|h| chrono::Duration::seconds((h * 3600.0) as i64));
        let deleted = rt.block_on(steerflow_pipeline::commit::sweep(&location, age))?;
        eprintln!("steerflow: swept {} files", deleted.len());
        for path in deleted {
            tracing::info!(%path, "deleted");
        }
    }
    Ok(())
}

/// The numbers at the top of a run's counts, as `name=value` pairs (`pairs=16 prompts=16 ...`).
fn top_level_counts(counts: &serde_json::Value) -> String {
    counts
        .as_object()
        .map(|c| {
            c.iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `steerflow run`: any job kind, with a one-line account on stderr.
fn run(
    config: &Path,
    mut overrides: Vec<String>,
    workers: Option<usize>,
    dry_run: bool,
    cluster: &ClusterArgs,
) -> Result<(), JobError> {
    // Embedded defaults < the file < STEERFLOW_SECTION__KEY variables < --set and --workers.
    let mut layered = steerflow::config::env_overrides(std::env::vars());
    layered.append(&mut overrides);
    if let Some(w) = workers {
        layered.push(format!("job.workers={w}"));
    }
    let config = load_config(config, &layered)?;
    if dry_run {
        let plan = steerflow::dry_run::dry_run(&config)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
        return Ok(());
    }
    let compute = steerflow::configure_threads(config.job.workers);
    tracing::info!(
        workers = config.job.workers,
        compute_threads = compute.threads(),
        "threads"
    );
    let cluster = cluster.resolve(config.job.workers)?;
    let summary = run_kind(&config, &cluster)?;
    eprintln!("steerflow: {summary}");
    Ok(())
}
