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
    total: Arc<AtomicU64>,
    log_lines: bool,
    unit: String,
    started: Instant,
    /// (seconds since the run started, items done), at most one sample per half second.
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
}

impl StageProgress {
    /// Adds to the stage's total (known once planning has run).
    pub fn add_total(&self, n: u64) {
        self.bar.inc_length(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    pub fn advance(&self, n: u64) {
        let total = self.total.load(Ordering::Relaxed);
        self.bar.inc(n);
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        {
            let now = self.started.elapsed().as_secs_f64();
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            let last = samples.last().map(|s| s.0).unwrap_or(f64::NEG_INFINITY);
            if now - last >= 0.5 || before + n == total {
                samples.push((now, before + n));
                if samples.len() > MAX_SAMPLES {
                    let thinned: Vec<_> = samples.iter().copied().step_by(2).collect();
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

    /// The progress line of an active stage: count, rate since `since` (items done then), ETA.
    fn line(&self, since: (Instant, u64)) -> Option<String> {
        let (done, total) = (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        );
        if total == 0 || done >= total {
            return None;
        }
        let seconds = since.0.elapsed().as_secs_f64().max(1e-3);
        let rate = done.saturating_sub(since.1) as f64 / seconds;
        let eta = if rate > 0.0 {
            let left = (total - done) as f64 / rate;
            format!("ETA {}m {:02}s", (left / 60.0) as u64, (left % 60.0) as u64)
        } else {
            "ETA unknown".to_string()
        };
        Some(format!(
            "{}: {done}/{total} {} ({:.1}%), {rate:.2} {}/s over the last {seconds:.0} s, {eta}",
            self.name,
            self.unit,
            100.0 * done as f64 / total as f64,
            self.unit
        ))
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

    /// Each stage's samples of (seconds since start, items done), starting at (0, 0), as
    /// `{stage: {unit, samples}}` for the summary and the report's throughput plot.
    pub fn timeline(&self) -> serde_json::Value {
        let stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = serde_json::Map::new();
        for stage in stages.iter() {
            let mut samples = vec![(0.0, 0)];
            samples.extend(
                stage
                    .samples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .copied(),
            );
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
        let progress = Progress {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
            log_lines: true,
            started: Instant::now(),
            stages: Arc::new(Mutex::new(Vec::new())),
            ticker: None,
        };
        let stage = progress.stage("sample", "prompts", 0);
        assert_eq!(stage.line((Instant::now(), 0)), None, "no total yet");
        stage.add_total(40);
        stage.advance(10);
        let since = (Instant::now() - Duration::from_secs(10), 0);
        let line = stage.line(since).unwrap();
        assert!(
            line.starts_with(
                "sample: 10/40 prompts (25.0%), 1.00 prompts/s over the last 10 s, ETA 0m 3"
            ),
            "{line}"
        );
        let stalled = stage
            .line((Instant::now() - Duration::from_secs(10), 10))
            .unwrap();
        assert!(stalled.ends_with("ETA unknown"), "{stalled}");
        stage.advance(30);
        assert_eq!(stage.line(since), None, "a finished stage is quiet");
    }
}
