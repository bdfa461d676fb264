//! The frame every plot draws in: a plot area inside margins, linear scales, and axes with
//! "nice" ticks (steps of 1, 2 or 5 × 10^k), tick labels and an axis title with its unit.

use super::escape;
use std::fmt::Write;

/// Width and height of every plot, in CSS pixels.
pub const W: f64 = 460.0;
pub const H: f64 = 280.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 18.0;
/// Room for the title and a legend row.
const TOP: f64 = 40.0;
const BOTTOM: f64 = 46.0;

/// About `target` evenly spaced round values covering [lo, hi] (at least two).
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude);
    let (first, last) = (
        (lo / step + 1e-9).floor() as i64,
        (hi / step - 1e-9).ceil() as i64,
    );
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label: as many decimals as the step needs.
pub fn tick_label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let s = format!("{value:.decimals$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

/// Linear scales from data onto the plot area; the domains are the outer ticks.
#[derive(Debug, Clone)]
pub struct Frame {
    pub x_ticks: Vec<f64>,
    pub y_ticks: Vec<f64>,
    /// The left margin (wider for the category names of a bar chart).
    pub left: f64,
    /// The y axis holds categories, named by the plot: no numeric tick labels.
    pub categorical: bool,
}

impl Frame {
    /// A frame whose axes cover the data ranges `x` and `y`.
    pub fn new(x: (f64, f64), y: (f64, f64)) -> Self {
        Self {
            x_ticks: nice_ticks(x.0, x.1, 6),
            y_ticks: nice_ticks(y.0, y.1, 5),
            left: LEFT,
            categorical: false,
        }
    }

    /// A frame for `categories` horizontal bars (y 0 at the top band's edge, 1 per band) and
    /// values up to `max` along x, with `left` pixels for their names.
    pub fn bands(categories: usize, max: f64, left: f64) -> Self {
        Self {
            x_ticks: nice_ticks(0.0, if max > 0.0 { max } else { 1.0 }, 5),
            y_ticks: vec![0.0, categories.max(1) as f64],
            left,
            categorical: true,
        }
    }

    fn domain(ticks: &[f64]) -> (f64, f64) {
        (ticks[0], ticks[ticks.len() - 1])
    }

    /// The x pixel of a data value.
    pub fn px(&self, x: f64) -> f64 {
        let (lo, hi) = Self::domain(&self.x_ticks);
        self.left + (x - lo) / (hi - lo) * (W - self.left - RIGHT)
    }

    /// The y pixel of a data value.
    pub fn py(&self, y: f64) -> f64 {
        let (lo, hi) = Self::domain(&self.y_ticks);
        H - BOTTOM - (y - lo) / (hi - lo) * (H - TOP - BOTTOM)
    }

    /// The plot area's bottom and top pixels.
    pub fn y_range(&self) -> (f64, f64) {
        (H - BOTTOM, TOP)
    }

    /// Both axes with their ticks, tick labels, grid lines and titles (`class="axis-label"`).
    pub fn axes(&self, x_label: &str, y_label: &str) -> String {
        let mut out = String::from("<g class=\"axes\" font-size=\"10\" fill=\"#333\">");
        let (bottom, top) = self.y_range();
        let (left, right) = (self.left, W - RIGHT);
        let step = |t: &[f64]| if t.len() > 1 { t[1] - t[0] } else { 1.0 };
        let (xs, ys) = (step(&self.x_ticks), step(&self.y_ticks));
        for &t in self.y_ticks.iter().filter(|_| !self.categorical) {
            let y = self.py(t);
            let _ = write!(
                out,
                "<line x1=\"{left}\" x2=\"{right}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e3e3e3\"/>\
                 <text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left - 4.0,
                y + 3.5,
                tick_label(t, ys)
            );
        }
        for &t in &self.x_ticks {
            let x = self.px(t);
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{bottom}\" y2=\"{:.1}\" stroke=\"#333\"/>\
                 <text class=\"tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                bottom + 4.0,
                bottom + 15.0,
                tick_label(t, xs)
            );
        }
        let _ = write!(
            out,
            "<line x1=\"{left}\" x2=\"{right}\" y1=\"{bottom}\" y2=\"{bottom}\" stroke=\"#333\"/>\
             <line x1=\"{left}\" x2=\"{left}\" y1=\"{bottom}\" y2=\"{top}\" stroke=\"#333\"/>\
             <text class=\"axis-label x\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{}</text>\
             <text class=\"axis-label y\" transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\" font-size=\"11\">{}</text></g>",
            (left + right) / 2.0,
            H - 8.0,
            escape(x_label),
            (bottom + top) / 2.0,
            escape(y_label)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        let t = nice_ticks(0.3, 0.9, 6);
        let labels: Vec<String> = t.iter().map(|v| tick_label(*v, 0.1)).collect();
        assert_eq!(labels, ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]);
        let t = nice_ticks(-1.3, 57.0, 5);
        assert_eq!((t[0], *t.last().unwrap(), t[1] - t[0]), (-20.0, 60.0, 20.0));
        assert_eq!(nice_ticks(-20.0, 40.0, 3), vec![-20.0, 0.0, 20.0, 40.0]);
        // One value: a unit range around it.
        let t = nice_ticks(3.0, 3.0, 5);
        assert!(t[0] <= 2.5 && *t.last().unwrap() >= 3.5, "{t:?}");
        assert_eq!(tick_label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick_label(1500.0, 500.0), "1500");
        assert_eq!(tick_label(-1e-17, 0.1), "0.0");
    }

    #[test]
    fn the_frame_maps_the_outer_ticks_to_the_plot_area() {
        let f = Frame::new((0.0, 9.0), (0.0, 1.0));
        assert_eq!(f.px(f.x_ticks[0]), LEFT);
        assert_eq!(f.px(*f.x_ticks.last().unwrap()), W - RIGHT);
        assert_eq!(f.py(0.0), H - BOTTOM);
        let axes = f.axes("length (tokens)", "responses");
        assert_eq!(axes.matches("class=\"axis-label").count(), 2);
        assert!(axes.contains(">length (tokens)<") && axes.contains(">responses<"));
        assert_eq!(
            axes.matches("class=\"tick\"").count(),
            f.x_ticks.len() + f.y_ticks.len()
        );
    }
}
