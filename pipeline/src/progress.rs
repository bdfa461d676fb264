//! Progress of the long stages: indicatif bars on a terminal, periodic log lines otherwise.
//! Everything goes to stderr; stdout stays free for data.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
        if self.log_lines && total > 0 {
            // A line each time another tenth of the stage is done (at least every 5 items).
            let step = (total / 10).max(5);
            if (before + n) / step > before / step || before + n == total {
                tracing::info!(stage = self.name, done = before + n, total, "progress");
            }
        }
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
    stages: Mutex<Vec<StageProgress>>,
}

impl Progress {
    pub fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            log_lines: !terminal,
            started: Instant::now(),
            stages: Mutex::new(Vec::new()),
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

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
