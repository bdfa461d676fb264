//! Throughput over time from a stage's samples of a cumulative count: a centred moving window
//! wide enough to smooth over work that lands in bursts (a prompt's tokens are counted when it
//! finishes), clipped to the stage's span, and the stage's mean over that span.

/// The narrowest window, in seconds.
pub const MIN_WINDOW: f64 = 5.0;
/// The window is at least this fraction of the stage's span.
pub const WINDOW_FRACTION: f64 = 0.1;

/// A rate over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Rate {
    /// (seconds since the run started, units per second).
    pub points: Vec<(f64, f64)>,
    /// Units done over the stage's span.
    pub mean: f64,
    /// The window's width in seconds.
    pub window: f64,
}

/// The count at `t`, linear between samples (work accrues between two samples).
fn count_at(samples: &[(f64, f64)], t: f64) -> f64 {
    match samples.iter().position(|s| s.0 >= t) {
        None => samples.last().map_or(0.0, |s| s.1),
        Some(0) => samples[0].1,
        Some(i) => {
            let (a, b) = (samples[i - 1], samples[i]);
            if b.0 > a.0 {
                a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0)
            } else {
                b.1
            }
        }
    }
}

/// The rate of the cumulative count in `samples` (time-ordered `(seconds, count)`, the first
/// when the stage began) at `points` evenly spaced times over the stage's span; None when the
/// span is empty.
pub fn windowed_rate(samples: &[(f64, f64)], points: usize) -> Option<Rate> {
    let (first, last) = (samples.first()?, samples.last()?);
    let span = last.0 - first.0;
    if span.is_nan() || span <= 0.0 || points < 2 {
        return None;
    }
    let window = (span * WINDOW_FRACTION).max(MIN_WINDOW);
    let rate_at = |t: f64| {
        let (a, b) = (
            (t - window / 2.0).max(first.0),
            (t + window / 2.0).min(last.0),
        );
        (count_at(samples, b) - count_at(samples, a)) / (b - a)
    };
    let points = (0..points)
        .map(|k| {
            let t = first.0 + span * k as f64 / (points - 1) as f64;
            (t, rate_at(t))
        })
        .collect();
    Some(Rate {
        points,
        mean: (last.1 - first.1) / span,
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_flat_at_its_mean() {
        let samples: Vec<(f64, f64)> = (0..=100)
            .map(|i| (10.0 + i as f64, 7.0 * i as f64))
            .collect();
        let r = windowed_rate(&samples, 50).unwrap();
        assert_eq!(r.window, 10.0);
        assert!((r.mean - 7.0).abs() < 1e-12);
        for (t, v) in &r.points {
            assert!((v - 7.0).abs() < 1e-9, "{t}: {v}");
        }
        assert_eq!(r.points[0].0, 10.0);
        assert_eq!(r.points.last().unwrap().0, 110.0);
    }

    #[test]
    fn bursts_are_smoothed_by_the_window() {
        // 40 s; 100 tokens land every 4 s in one instant (prompts finishing in chunks), the
        // samples taken 1 ms apart around each burst: the old two-sample rate peaked at
        // 100 / 0.001 = 100000/s.
        let mut samples = vec![(0.0, 0.0)];
        for k in 1..=10 {
            let t = 4.0 * k as f64;
            samples.push((t - 0.001, 100.0 * (k - 1) as f64));
            samples.push((t, 100.0 * k as f64));
        }
        let r = windowed_rate(&samples, 81).unwrap();
        assert_eq!(r.window, MIN_WINDOW);
        assert!((r.mean - 25.0).abs() < 1e-9);
        let peak = r.points.iter().map(|p| p.1).fold(0.0, f64::max);
        assert!(peak <= 2.0 * r.mean, "peak {peak} mean {}", r.mean);
    }

    #[test]
    fn a_stage_with_no_span_has_no_rate() {
        assert_eq!(windowed_rate(&[(1.0, 0.0), (1.0, 5.0)], 10), None);
        assert_eq!(windowed_rate(&[], 10), None);
        assert_eq!(count_at(&[(0.0, 0.0), (2.0, 10.0)], 1.0), 5.0);
    }
}
