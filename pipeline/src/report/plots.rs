//! The plots of a report, as inline SVG: histograms with counts on their bars, scatter plots of
//! several marked sets, throughput over time with its mean, and horizontal bars. Every plot has
//! axes with ticks and titled, unit-bearing axis labels (`axes.rs`), and draws them even without
//! data.

use super::axes::{Frame, H, W};
use super::escape;
use std::fmt::Write;

/// Named values drawn in one colour.
#[derive(Debug, Clone)]
pub struct Series<'a, T> {
    pub name: &'a str,
    pub color: &'static str,
    pub data: Vec<T>,
}

/// Colours of the report: chosen, rejected, everything else, a line, a second series.
pub const GREEN: &str = "#59a14f";
pub const RED: &str = "#e15759";
pub const GREY: &str = "#9d9d9d";
pub const BLUE: &str = "#4e79a7";

/// Opens a figure; `attrs` go on the `<figure>` (class, data-*).
fn open(title: &str, attrs: &str) -> String {
    format!(
        "<figure class=\"plot\"{attrs}><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\">\
         <text class=\"title\" x=\"{x}\" y=\"15\" text-anchor=\"middle\" font-size=\"13\">{t}</text>",
        t = escape(title),
        x = W / 2.0
    )
}

fn close(mut svg: String, caption: &str) -> String {
    svg.push_str("</svg>");
    if !caption.is_empty() {
        let _ = write!(svg, "<figcaption>{}</figcaption>", escape(caption));
    }
    svg.push_str("</figure>");
    svg
}

fn no_data(frame: &Frame) -> String {
    let (bottom, top) = frame.y_range();
    format!(
        "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" fill=\"#777\">no data</text>",
        W / 2.0,
        (bottom + top) / 2.0
    )
}

/// A legend in one row under the title, one swatch per series.
fn legend(entries: &[(&str, &str)]) -> String {
    let mut out = String::from("<g class=\"legend\" font-size=\"10\">");
    let mut x = 64.0;
    for (name, color) in entries {
        let _ = write!(
            out,
            "<rect x=\"{x:.0}\" y=\"22\" width=\"9\" height=\"9\" fill=\"{color}\"/>\
             <text x=\"{:.0}\" y=\"30\">{}</text>",
            x + 12.0,
            escape(name)
        );
        x += 24.0 + 5.5 * name.chars().count() as f64;
    }
    out.push_str("</g>");
    out
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A histogram of each series' finite values over shared bins, the series' bars side by side in
/// each bin, every non-empty bar labelled with its count.
pub fn histogram(
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<'_, f64>],
    bins: usize,
) -> String {
    let mut out = open(title, "");
    let Some((lo, hi)) = range(series.iter().flat_map(|s| s.data.iter().copied())) else {
        let frame = Frame::new((0.0, 1.0), (0.0, 1.0));
        out.push_str(&frame.axes(x_label, y_label));
        out.push_str(&no_data(&frame));
        return close(out, "");
    };
    let bins = bins.max(1);
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    };
    let width = (hi - lo) / bins as f64;
    let counts: Vec<Vec<u64>> = series
        .iter()
        .map(|s| {
            let mut c = vec![0u64; bins];
            for v in s.data.iter().filter(|v| v.is_finite()) {
                c[(((v - lo) / width).floor().max(0.0) as usize).min(bins - 1)] += 1;
            }
            c
        })
        .collect();
    let max = counts.iter().flatten().copied().max().unwrap_or(1) as f64;
    let frame = Frame::new((lo, hi), (0.0, max));
    out.push_str(&frame.axes(x_label, y_label));
    let per = series.len().max(1) as f64;
    for (k, (s, c)) in series.iter().zip(&counts).enumerate() {
        for (i, &n) in c.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let (x0, x1) = (
                frame.px(lo + i as f64 * width),
                frame.px(lo + (i + 1) as f64 * width),
            );
            let bar = (x1 - x0) / per;
            let x = x0 + k as f64 * bar;
            let (y, base) = (frame.py(n as f64), frame.py(0.0));
            let _ = write!(
                out,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" \
                 fill-opacity=\"0.85\"><title>{}: {n} in [{:.3}, {:.3})</title></rect>\
                 <text class=\"count\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"8\">{n}</text>",
                (bar - 1.0).max(0.5),
                base - y,
                s.color,
                escape(s.name),
                lo + i as f64 * width,
                lo + (i + 1) as f64 * width,
                x + bar / 2.0,
                y - 2.0
            );
        }
    }
    if series.len() > 1 {
        let entries: Vec<(&str, &str)> = series.iter().map(|s| (s.name, s.color)).collect();
        out.push_str(&legend(&entries));
    }
    close(out, "")
}

/// A vertical dashed line at `x` with its label (a mean, a threshold).
#[derive(Debug, Clone)]
pub struct Marker {
    pub x: f64,
    pub label: String,
    pub color: &'static str,
}

/// A scatter plot of each series' finite points, later series drawn on top, with vertical
/// markers.
pub fn scatter(
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<'_, (f64, f64)>],
    markers: &[Marker],
) -> String {
    let mut out = open(title, "");
    let points = || series.iter().flat_map(|s| s.data.iter().copied());
    let xs = range(points().map(|p| p.0).chain(markers.iter().map(|m| m.x)));
    let ys = range(points().map(|p| p.1));
    let (Some(xs), Some(ys)) = (xs, ys) else {
        let frame = Frame::new((0.0, 1.0), (0.0, 1.0));
        out.push_str(&frame.axes(x_label, y_label));
        out.push_str(&no_data(&frame));
        return close(out, "");
    };
    let frame = Frame::new(xs, ys);
    out.push_str(&frame.axes(x_label, y_label));
    for s in series {
        for (x, y) in s
            .data
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            let _ = write!(
                out,
                "<circle class=\"point\" data-series=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.6\" fill=\"{}\" fill-opacity=\"0.7\"/>",
                escape(s.name),
                frame.px(*x),
                frame.py(*y),
                s.color
            );
        }
    }
    let (bottom, top) = frame.y_range();
    for (i, m) in markers.iter().enumerate() {
        let x = frame.px(m.x);
        let _ = write!(
            out,
            "<line class=\"marker\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{bottom}\" y2=\"{top}\" stroke=\"{c}\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"{c}\">{}</text>",
            x + 3.0,
            bottom - 4.0 - 11.0 * i as f64,
            escape(&m.label),
            c = m.color
        );
    }
    let entries: Vec<(&str, &str)> = series
        .iter()
        .filter(|s| !s.data.is_empty())
        .map(|s| (s.name, s.color))
        .collect();
    if entries.len() > 1 {
        out.push_str(&legend(&entries));
    }
    close(out, "")
}

/// A rate over time (`(seconds, per second)` points) as a line, with the run's mean as a dashed
/// line; the figure carries `data-peak` and `data-mean` (class `throughput`).
pub fn throughput(title: &str, y_label: &str, points: &[(f64, f64)], mean: f64) -> String {
    let peak = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let attrs =
        format!(" data-kind=\"throughput\" data-peak=\"{peak:.4}\" data-mean=\"{mean:.4}\"");
    let mut out = open(title, &attrs);
    let x_label = "time since the run started (s)";
    let Some(xs) = range(points.iter().map(|p| p.0)) else {
        let frame = Frame::new((0.0, 1.0), (0.0, 1.0));
        out.push_str(&frame.axes(x_label, y_label));
        out.push_str(&no_data(&frame));
        return close(out, "");
    };
    let frame = Frame::new(xs, (0.0, peak.max(mean)));
    out.push_str(&frame.axes(x_label, y_label));
    let line: Vec<String> = points
        .iter()
        .map(|(t, r)| format!("{:.1},{:.1}", frame.px(*t), frame.py(*r)))
        .collect();
    let y = frame.py(mean);
    let _ = write!(
        out,
        "<polyline class=\"line\" fill=\"none\" stroke=\"{BLUE}\" stroke-width=\"1.6\" points=\"{}\"/>\
         <line class=\"mean\" x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{RED}\" stroke-dasharray=\"5 3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{RED}\" text-anchor=\"end\">mean {}</text>",
        line.join(" "),
        frame.px(xs.0),
        frame.px(xs.1),
        frame.px(xs.1),
        y - 4.0,
        format_rate(mean)
    );
    close(
        out,
        &format!("peak {} · mean {}", format_rate(peak), format_rate(mean)),
    )
}

/// A rate with three significant digits and its unit.
pub fn format_rate(rate: f64) -> String {
    if rate >= 100.0 {
        format!("{rate:.0}/s")
    } else if rate >= 10.0 {
        format!("{rate:.1}/s")
    } else {
        format!("{rate:.2}/s")
    }
}

/// Horizontal bars of named values, each labelled with `label(value)`.
pub fn bars(
    title: &str,
    (x_label, y_label): (&str, &str),
    values: &[(String, f64)],
    label: impl Fn(f64) -> String,
) -> String {
    let mut out = open(title, "");
    let max = values.iter().map(|v| v.1).fold(0.0, f64::max);
    let longest = values
        .iter()
        .map(|v| v.0.chars().count())
        .max()
        .unwrap_or(0);
    let frame = Frame::bands(
        values.len(),
        max,
        (12.0 + 6.0 * longest as f64).clamp(62.0, 200.0),
    );
    out.push_str(&frame.axes(x_label, y_label));
    if values.is_empty() {
        out.push_str(&no_data(&frame));
    }
    for (i, (name, v)) in values.iter().enumerate() {
        let (y0, y1) = (frame.py(i as f64), frame.py(i as f64 + 1.0));
        let (top, height) = (y0.min(y1), (y0 - y1).abs());
        let x0 = frame.px(0.0);
        let w = frame.px(*v) - x0;
        let _ = write!(
            out,
            "<text class=\"category\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{GREEN}\"/>\
             <text class=\"count\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            x0 - 4.0,
            top + height / 2.0 + 3.5,
            escape(name),
            top + height * 0.15,
            height * 0.7,
            x0 + w + 3.0,
            top + height / 2.0 + 3.5,
            escape(&label(*v))
        );
    }
    close(out, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Vec<Series<'static, f64>> {
        vec![Series {
            name: "g",
            color: BLUE,
            data: values.to_vec(),
        }]
    }

    #[test]
    fn histograms_count_the_finite_values() {
        let h = histogram(
            "g",
            ("goodness", "responses"),
            &series(&[1.0, 2.0, 2.0, f64::NAN, 3.0]),
            3,
        );
        assert_eq!(h.matches("class=\"bar\"").count(), 3);
        let counts: Vec<&str> = h
            .split("class=\"count\"")
            .skip(1)
            .map(|s| s.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect();
        assert_eq!(counts, ["1", "2", "1"]);
        assert_eq!(h.matches("class=\"axis-label").count(), 2);
        let empty = histogram("e", ("x", "y"), &series(&[]), 4);
        assert!(empty.contains("no data") && empty.matches("class=\"axis-label").count() == 2);
    }

    #[test]
    fn two_series_share_the_bins_and_get_a_legend() {
        let two = [
            Series {
                name: "chosen",
                color: GREEN,
                data: vec![10.0, 20.0],
            },
            Series {
                name: "rejected",
                color: RED,
                data: vec![20.0, 20.0, 30.0],
            },
        ];
        let h = histogram("lengths", ("tokens", "pairs"), &two, 2);
        // chosen: [10, 20) 1, [20, 30] 1; rejected: [20, 30] 3.
        assert_eq!(h.matches("class=\"bar\"").count(), 3);
        assert!(h.contains("class=\"legend\"") && h.contains(">rejected<"));
    }

    #[test]
    fn scatter_series_and_markers() {
        let s = scatter(
            "s",
            ("length (tokens)", "goodness"),
            &[
                Series {
                    name: "other",
                    color: GREY,
                    data: vec![(1.0, 2.0), (f64::NAN, 1.0)],
                },
                Series {
                    name: "chosen",
                    color: GREEN,
                    data: vec![(3.0, 4.0)],
                },
            ],
            &[Marker {
                x: 2.0,
                label: "mean chosen".into(),
                color: GREEN,
            }],
        );
        assert_eq!(s.matches("class=\"point\"").count(), 2);
        assert_eq!(s.matches("data-series=\"chosen\"").count(), 1);
        assert_eq!(s.matches("class=\"marker\"").count(), 1);
    }

    #[test]
    fn throughput_carries_its_peak_and_mean() {
        let t = throughput("t", "tokens/s", &[(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)], 2.0);
        assert!(
            t.contains("data-peak=\"3.0000\" data-mean=\"2.0000\""),
            "{t}"
        );
        assert!(t.contains("class=\"line\"") && t.contains("class=\"mean\""));
        assert!(t.contains("peak 3.00/s · mean 2.00/s"));
    }

    #[test]
    fn bars_name_and_label_each_value() {
        let b = bars(
            "r",
            ("records", "reason"),
            &[("invalid_json".into(), 3.0), ("empty<".into(), 1.0)],
            |v| format!("{v:.0}"),
        );
        assert_eq!(b.matches("class=\"bar\"").count(), 2);
        assert!(b.contains(">invalid_json<") && b.contains("empty&lt;"));
        assert!(bars("none", ("x", "y"), &[], |v| v.to_string()).contains("no data"));
    }
}
