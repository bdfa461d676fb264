//! Progress of the long stages: indicatif bars on a terminal, periodic log lines otherwise.
//! Everything goes to stderr; stdout stays free for data.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One stage's counter, shared by all workers.
#[derive(Clone)]
pub struct StageProgress {
    bar: ProgressBar,
    name: &'static str,
    done: Arc<AtomicU64>,
    total: u64,
    log_lines: bool,
}

impl StageProgress {
    pub fn advance(&self, n: u64) {
        self.bar.inc(n);
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        if self.log_lines && self.total > 0 {
            // A line each time another tenth of the stage is done (at least every 5 items).
            let step = (self.total / 10).max(5);
            if (before + n) / step > before / step || before + n == self.total {
                tracing::info!(
                    stage = self.name,
                    done = before + n,
                    total = self.total,
                    "progress"
                );
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
        }
    }

    pub fn stage(&self, name: &'static str, unit: &str, total: u64) -> StageProgress {
        let bar = self.multi.add(ProgressBar::new(total));
        let template =
            format!("{{prefix:>8}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(name);
        StageProgress {
            bar,
            name,
            done: Arc::new(AtomicU64::new(0)),
            total,
            log_lines: self.log_lines,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}
