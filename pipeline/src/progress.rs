//! Progress of the long stages: indicatif bars on a terminal; otherwise (a batch job's log) a
//! line per active stage every [`LOG_EVERY`] with its count, recent rate and ETA, and one when
//! a stage completes. Everything goes to stderr; stdout stays free for data.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a stage's progress line is logged when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Samples kept per stage for the throughput-over-time plot; beyond it every other one is dropped.
const MAX_SAMPLES: usize = 2000;

/// One stage's counter, shared by all workers.
#[derive(Clone)]
pub struct StageProgress {
    bar: ProgressBar,
    name: &'static str,
    done: Arc<AtomicU64>,
    /// Tokens of the items done (decoded for sampling, run through the model for scoring).
    tokens: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    log_lines: bool,
    unit: String,
    started: Instant,
    /// (seconds since the run started, items done, tokens done): the first when work was first
    /// given to the stage, then at most one per half second and the last.
    samples: Arc<Mutex<Vec<(f64, u64, u64)>>>,
}

impl StageProgress {
    /// Adds to the stage's total (known once planning has run).
    pub fn add_total(&self, n: u64) {
        self.bar.inc_length(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// The stage's work begins (its first input arrived): its throughput is measured from the
    /// first call on any worker.
    pub fn begin(&self) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.is_empty() {
            samples.push((self.started.elapsed().as_secs_f64(), 0, 0));
        }
    }

    /// `n` more items done, with `tokens` tokens between them.
    pub fn advance(&self, n: u64, tokens: u64) {
        let total = self.total.load(Ordering::Relaxed);
        self.bar.inc(n);
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        let tokens = self.tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        self.begin();
        {
            let now = self.started.elapsed().as_secs_f64();
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            let last = samples.last().map(|s| s.0).unwrap_or(f64::NEG_INFINITY);
            if now - last >= 0.5 || before + n == total {
                samples.push((now, before + n, tokens));
                if samples.len() > MAX_SAMPLES {
                    // Every other one, keeping the first and the newest.
                    let newest = samples[samples.len() - 1];
                    let mut thinned: Vec<_> = samples.iter().copied().step_by(2).collect();
                    if thinned.last() != Some(&newest) {
                        thinned.push(newest);
                    }
                    *samples = thinned;
                }
            }
        }
        if self.log_lines && total > 0 && before < total && before + n >= total {
            tracing::info!(
                stage = self.name,
                "progress: {}: {total}/{total} {} done in {:.0} s",
                self.name,
                self.unit,
                self.started.elapsed().as_secs_f64()
            );
        }
    }

    /// The progress line of an active stage, with its rate since `since` (items done then).
    fn line(&self, since: (Instant, u64)) -> Option<String> {
        let done = self.done.load(Ordering::Relaxed);
        describe(
            (self.name, &self.unit),
            (done, self.total.load(Ordering::Relaxed)),
            (
                done.saturating_sub(since.1),
                since.0.elapsed().as_secs_f64(),
            ),
            self.started.elapsed().as_secs_f64(),
        )
    }

    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// The bars of one run.
pub struct Progress {
    multi: MultiProgress,
    log_lines: bool,
    started: Instant,
    stages: Arc<Mutex<Vec<StageProgress>>>,
    /// Stops the thread that logs progress lines (when stderr is not a terminal).
    ticker: Option<std::sync::mpsc::Sender<()>>,
}

impl Progress {
    pub fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let stages = Arc::new(Mutex::new(Vec::new()));
        Self {
            multi: MultiProgress::with_draw_target(target),
            log_lines: !terminal,
            started: Instant::now(),
            ticker: (!terminal).then(|| spawn_ticker(stages.clone(), LOG_EVERY)),
            stages,
        }
    }

    /// Each stage's samples of (seconds since the run started, items done, tokens done), the
    /// first when the stage was given work, as `{stage: {unit, samples}}` for the summary and
    /// the report's throughput plots.
    pub fn timeline(&self) -> serde_json::Value {
        let stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = serde_json::Map::new();
        for stage in stages.iter() {
            let samples = stage
                .samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            out.insert(
                stage.name.to_string(),
                serde_json::json!({ "unit": stage.unit, "samples": samples }),
            );
        }
        serde_json::Value::Object(out)
    }

    pub fn stage(&self, name: &'static str, unit: &str, total: u64) -> StageProgress {
        let bar = self.multi.add(ProgressBar::new(total));
        let template =
            format!("{{prefix:>8}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name);
        let stage = StageProgress {
            bar,
            name,
            done: Arc::new(AtomicU64::new(0)),
            tokens: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(total)),
            log_lines: self.log_lines,
            unit: unit.to_string(),
            started: self.started,
            samples: Arc::new(Mutex::new(Vec::new())),
        };
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stage.clone());
        stage
    }
}

/// A progress line: `(name, unit)`, `(done, total)`, the items done in the last `window`
/// seconds, and the seconds since the run started, from which the ETA comes (steadier than the
/// window: work often lands in bursts). None for a stage not started or finished.
fn describe(
    (name, unit): (&str, &str),
    (done, total): (u64, u64),
    (recent, window): (u64, f64),
    run_seconds: f64,
) -> Option<String> {
    if total == 0 || done >= total {
        return None;
    }
    let rate = recent as f64 / window.max(1e-3);
    let overall = done as f64 / run_seconds.max(1e-3);
    let eta = if overall > 0.0 {
        let left = ((total - done) as f64 / overall).round() as u64;
        format!("ETA {}m {:02}s", left / 60, left % 60)
    } else {
        "ETA unknown".to_string()
    };
    Some(format!(
        "{name}: {done}/{total} {unit} ({:.1}%), {rate:.2} {unit}/s over the last {window:.0} s, {eta}",
        100.0 * done as f64 / total as f64
    ))
}

/// Logs every active stage's line each `every` until the sender is dropped.
fn spawn_ticker(
    stages: Arc<Mutex<Vec<StageProgress>>>,
    every: Duration,
) -> std::sync::mpsc::Sender<()> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut last: Vec<(Instant, u64)> = Vec::new();
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
            let stages = stages.lock().unwrap_or_else(|e| e.into_inner());
            let before = Instant::now()
                .checked_sub(every)
                .unwrap_or_else(Instant::now);
            last.resize(stages.len(), (before, 0));
            for (stage, since) in stages.iter().zip(last.iter_mut()) {
                if let Some(line) = stage.line(*since) {
                    tracing::info!(stage = stage.name, "progress: {line}");
                }
                *since = (Instant::now(), stage.done.load(Ordering::Relaxed));
            }
        }
    });
    stop
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Dropping the sender ends the ticker at its next wake-up.
        self.ticker.take();
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_count_rate_and_eta_of_an_active_stage() {
        let stage = ("sample", "prompts");
        assert_eq!(
            describe(stage, (0, 0), (0, 10.0), 5.0),
            None,
            "no total yet"
        );
        assert_eq!(
            describe(stage, (10, 40), (10, 10.0), 20.0).unwrap(),
            "sample: 10/40 prompts (25.0%), 1.00 prompts/s over the last 10 s, ETA 1m 00s"
        );
        // Nothing in the last 10 s: the rate says so; the ETA still comes from the whole run.
        assert_eq!(
            describe(stage, (10, 40), (0, 10.0), 20.0).unwrap(),
            "sample: 10/40 prompts (25.0%), 0.00 prompts/s over the last 10 s, ETA 1m 00s"
        );
        assert!(describe(stage, (0, 40), (0, 10.0), 20.0)
            .unwrap()
            .ends_with("ETA unknown"));
        assert_eq!(
            describe(stage, (40, 40), (30, 10.0), 20.0),
            None,
            "finished: quiet"
        );
    }

    #[test]
    fn a_stage_reports_its_own_counts() {
        let progress = Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            log_lines: true,
            started: Instant::now(),
            stages: Arc::new(Mutex::new(Vec::new())),
            ticker: None,
        };
        let stage = progress.stage("score", "responses", 0);
        assert_eq!(stage.line((Instant::now(), 0)), None);
        stage.add_total(8);
        stage.begin();
        stage.advance(3, 120);
        let line = stage.line((Instant::now(), 0)).unwrap();
        assert!(line.starts_with("score: 3/8 responses (37.5%), "), "{line}");
        stage.advance(5, 200);
        assert_eq!(stage.line((Instant::now(), 0)), None);
        // The timeline starts when work was given and ends with every item and token.
        let timeline = progress.timeline();
        let samples = timeline["score"]["samples"].as_array().unwrap();
        assert_eq!(samples[0][1], 0);
        assert_eq!(samples.last().unwrap()[1], 8);
        assert_eq!(samples.last().unwrap()[2], 320);
    }
}
