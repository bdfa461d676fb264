//! `report.html`: a self-contained page (inline SVG, no scripts, no network) that shows what a
//! run produced: goodness distribution, chosen-vs-rejected margins, per-attribute distributions
//! and their correlations, response length against goodness (the length bias the HelpSteer2 paper
//! warns of), and rejects by reason.

use std::fmt::Write;

/// What the report needs of one scored response.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseStat {
    pub goodness: f64,
    pub attributes: Vec<f64>,
    pub length_chars: usize,
}

/// What the report needs of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairStat {
    pub margin: f64,
    pub chosen_tokens: u32,
    pub rejected_tokens: u32,
}

const W: f64 = 420.0;
const H: f64 = 220.0;
const PAD: f64 = 36.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn finite(values: &[f64]) -> Vec<f64> {
    values.iter().copied().filter(|v| v.is_finite()).collect()
}

fn svg_open(title: &str) -> String {
    format!(
        "<figure><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"{x}\" y=\"14\" text-anchor=\"middle\" font-size=\"13\">{t}</text>",
        t = escape(title),
        x = W / 2.0
    )
}

/// A histogram of the finite `values` in `bins` bars.
pub fn histogram(title: &str, values: &[f64], bins: usize) -> String {
    let v = finite(values);
    let mut out = svg_open(title);
    if v.is_empty() || bins == 0 {
        out.push_str("<text x=\"20\" y=\"100\">no data</text></svg></figure>");
        return out;
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut counts = vec![0usize; bins];
    for x in &v {
        counts[(((x - lo) / span) * bins as f64)
            .floor()
            .clamp(0.0, (bins - 1) as f64) as usize] += 1;
    }
    let max = *counts.iter().max().unwrap_or(&1) as f64;
    let bar_w = (W - 2.0 * PAD) / bins as f64;
    for (i, c) in counts.iter().enumerate() {
        let h = (H - 2.0 * PAD) * *c as f64 / max;
        let _ = write!(
            out,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4e79a7\"><title>{c}</title></rect>",
            PAD + i as f64 * bar_w,
            H - PAD - h,
            (bar_w - 1.0).max(1.0),
            h
        );
    }
    let _ = write!(
        out,
        "<text x=\"{PAD}\" y=\"{:.0}\" font-size=\"11\">{lo:.2}</text><text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">{hi:.2}</text></svg></figure>",
        H - PAD + 14.0,
        W - PAD,
        H - PAD + 14.0
    );
    out
}

/// A scatter plot of finite (x, y) points.
pub fn scatter(title: &str, points: &[(f64, f64)]) -> String {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut out = svg_open(title);
    if pts.is_empty() {
        out.push_str("<text x=\"20\" y=\"100\">no data</text></svg></figure>");
        return out;
    }
    let bounds = |f: fn(&(f64, f64)) -> f64| {
        let (lo, hi) = pts
            .iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        (lo, if hi > lo { hi - lo } else { 1.0 })
    };
    let ((x0, xs), (y0, ys)) = (bounds(|p| p.0), bounds(|p| p.1));
    let _ = write!(
        out,
        "<text x=\"{PAD}\" y=\"{:.0}\" font-size=\"11\">x {x0:.0}–{:.0}</text>\
         <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">y {y0:.2}–{:.2}</text>",
        H - PAD + 14.0,
        x0 + xs,
        W - PAD,
        H - PAD + 14.0,
        y0 + ys
    );
    for (x, y) in &pts {
        let _ = write!(
            out,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#e15759\" fill-opacity=\"0.6\"/>",
            PAD + (x - x0) / xs * (W - 2.0 * PAD),
            H - PAD - (y - y0) / ys * (H - 2.0 * PAD)
        );
    }
    out.push_str("</svg></figure>");
    out
}

/// A stage's rate (items per second, y) over the run (seconds, x), from samples of
/// `(seconds since start, items done)`.
pub fn rate_over_time(title: &str, samples: &[(f64, f64)]) -> String {
    let rates: Vec<(f64, f64)> = samples
        .windows(2)
        .filter(|w| w[1].0 > w[0].0)
        .map(|w| (w[1].0, (w[1].1 - w[0].1) / (w[1].0 - w[0].0)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut out = svg_open(title);
    if rates.is_empty() {
        out.push_str("<text x=\"20\" y=\"100\">no data</text></svg></figure>");
        return out;
    }
    let t_max = rates.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let r_max = rates.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let points: Vec<String> = rates
        .iter()
        .map(|(t, r)| {
            format!(
                "{:.1},{:.1}",
                PAD + t / t_max * (W - 2.0 * PAD),
                H - PAD - r / r_max * (H - 2.0 * PAD)
            )
        })
        .collect();
    let _ = write!(
        out,
        "<polyline class=\"line\" fill=\"none\" stroke=\"#4e79a7\" stroke-width=\"1.5\" points=\"{}\"/>\
         <text x=\"{PAD}\" y=\"{:.0}\" font-size=\"11\">0–{t_max:.0} s</text>\
         <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">peak {r_max:.2}/s</text></svg></figure>",
        points.join(" "),
        H - PAD + 14.0,
        W - PAD,
        H - PAD + 14.0,
    );
    out
}

/// Horizontal bars of named counts.
pub fn bars(title: &str, counts: &[(String, u64)]) -> String {
    let mut out = svg_open(title);
    let max = counts.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1) as f64;
    if counts.is_empty() {
        out.push_str("<text x=\"20\" y=\"100\">none</text>");
    }
    for (i, (name, c)) in counts.iter().enumerate() {
        let y = 26.0 + i as f64 * 20.0;
        let w = (W - 180.0) * *c as f64 / max;
        let _ = write!(
            out,
            "<text x=\"150\" y=\"{:.0}\" font-size=\"11\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"156\" y=\"{:.0}\" width=\"{w:.1}\" height=\"14\" fill=\"#59a14f\"/>\
             <text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\">{c}</text>",
            y + 11.0,
            escape(name),
            y,
            160.0 + w,
            y + 11.0
        );
    }
    out.push_str("</svg></figure>");
    out
}

/// Pearson correlation of the pairs where both values are finite (None when undefined).
pub fn correlation(a: &[f64], b: &[f64]) -> Option<f64> {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, y)| (*x, *y))
        .collect();
    let n = pairs.len() as f64;
    if n < 2.0 {
        return None;
    }
    let (ma, mb) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n,
        pairs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = pairs.iter().map(|(x, y)| (x - ma) * (y - mb)).sum();
    let (va, vb): (f64, f64) = (
        pairs.iter().map(|p| (p.0 - ma).powi(2)).sum(),
        pairs.iter().map(|p| (p.1 - mb).powi(2)).sum(),
    );
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// The length distributions of chosen and rejected responses, with their means: DPO data whose
/// chosen responses are much longer teaches length.
fn pair_lengths(pairs: &[PairStat]) -> String {
    let chosen: Vec<f64> = pairs.iter().map(|p| f64::from(p.chosen_tokens)).collect();
    let rejected: Vec<f64> = pairs.iter().map(|p| f64::from(p.rejected_tokens)).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (mc, mr) = (mean(&chosen), mean(&rejected));
    format!(
        "{}{}<p id=\"pair-lengths\">Mean length: chosen {mc:.1} tokens, rejected {mr:.1} tokens \
         (chosen − rejected: {:+.1} tokens over {} pairs).</p>",
        histogram("Chosen response length (tokens)", &chosen, 20),
        histogram("Rejected response length (tokens)", &rejected, 20),
        mc - mr,
        pairs.len()
    )
}

/// The whole page.
pub fn report_html(
    title: &str,
    names: &[String],
    responses: &[ResponseStat],
    pairs: &[PairStat],
    rejects: &[(String, u64)],
    summary: &serde_json::Value,
) -> String {
    let goodness: Vec<f64> = responses.iter().map(|r| r.goodness).collect();
    let columns: Vec<Vec<f64>> = (0..names.len())
        .map(|k| responses.iter().map(|r| r.attributes[k]).collect())
        .collect();
    let mut html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font-family:sans-serif;margin:24px}}figure{{display:inline-block;margin:8px}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:12px}}</style></head>\
         <body><h1>{t}</h1><h2>Scores</h2>",
        t = escape(title)
    );
    html.push_str(&histogram("Goodness of every response", &goodness, 20));
    let margins: Vec<f64> = pairs.iter().map(|p| p.margin).collect();
    html.push_str(&histogram("Chosen − rejected margin", &margins, 20));
    html.push_str(&pair_lengths(pairs));
    html.push_str(&scatter(
        "Response length (characters, x) against goodness (y)",
        &responses
            .iter()
            .map(|r| (r.length_chars as f64, r.goodness))
            .collect::<Vec<_>>(),
    ));
    html.push_str("<h2>Attributes</h2>");
    for (k, name) in names.iter().enumerate() {
        html.push_str(&histogram(name, &columns[k], 16));
    }
    html.push_str(
        "<h3>Correlation between attributes</h3><table id=\"correlations\"><tr><th></th>",
    );
    for n in names {
        let _ = write!(html, "<th>{}</th>", escape(n));
    }
    html.push_str("</tr>");
    for (i, a) in names.iter().enumerate() {
        let _ = write!(html, "<tr><th>{}</th>", escape(a));
        for j in 0..names.len() {
            match correlation(&columns[i], &columns[j]) {
                Some(r) => {
                    let shade = (255.0 - 120.0 * r.abs()) as u8;
                    let _ = write!(
                        html,
                        "<td style=\"background:rgb({shade},{shade},255)\">{r:.2}</td>"
                    );
                }
                None => html.push_str("<td>–</td>"),
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</table><h2>Rejected records</h2>");
    html.push_str(&bars("Rejects by reason", rejects));
    if let Some(timeline) = summary["timeline"].as_object() {
        html.push_str("<h2>Throughput over time</h2>");
        for (stage, samples) in timeline {
            let unit = samples["unit"].as_str().unwrap_or("items");
            let points: Vec<(f64, f64)> = samples["samples"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            html.push_str(&rate_over_time(
                &format!("{stage}: {unit} per second"),
                &points,
            ));
        }
    }
    let _ = write!(
        html,
        "<h2>Summary</h2><pre>{}</pre></body></html>",
        escape(&serde_json::to_string_pretty(summary).unwrap_or_default())
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_have_their_marks() {
        let h = histogram("g", &[1.0, 2.0, 2.0, f64::NAN, 3.0], 3);
        assert_eq!(h.matches("class=\"bar\"").count(), 3);
        assert!(h.contains("<title>2</title>"), "{h}");
        assert_eq!(
            scatter("s", &[(1.0, 2.0), (f64::NAN, 1.0), (3.0, 4.0)])
                .matches("class=\"point\"")
                .count(),
            2
        );
        assert!(histogram("e", &[], 4).contains("no data"));
        assert_eq!(
            bars("r", &[("invalid_json".into(), 3), ("empty".into(), 1)])
                .matches("class=\"bar\"")
                .count(),
            2
        );
        assert!(bars("r<", &[]).contains("r&lt;"));
    }

    #[test]
    fn correlation_by_hand() {
        assert!((correlation(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((correlation(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(correlation(&[1.0, 1.0], &[2.0, 3.0]), None);
    }

    #[test]
    fn the_page_is_self_contained() {
        let names = vec!["helpfulness".to_string(), "verbosity".to_string()];
        let responses: Vec<ResponseStat> = (0..10)
            .map(|i| ResponseStat {
                goodness: i as f64,
                attributes: vec![i as f64, 10.0 - i as f64],
                length_chars: 10 * i,
            })
            .collect();
        let html = report_html(
            "run",
            &names,
            &responses,
            &[
                PairStat {
                    margin: 0.5,
                    chosen_tokens: 30,
                    rejected_tokens: 10,
                },
                PairStat {
                    margin: 1.0,
                    chosen_tokens: 20,
                    rejected_tokens: 20,
                },
            ],
            &[],
            &serde_json::json!({"pairs": 2}),
        );
        // goodness, margin, chosen and rejected lengths, scatter, 2 attributes, rejects.
        assert_eq!(html.matches("<svg").count(), 8);
        assert!(
            html.contains("chosen 25.0 tokens, rejected 15.0 tokens (chosen − rejected: +10.0 tokens over 2 pairs)"),
            "{html}"
        );
        let with_timeline = report_html(
            "run",
            &names,
            &responses,
            &[],
            &[],
            &serde_json::json!({"timeline": {
                "sample": {"unit": "prompts", "samples": [[0.0, 0], [1.0, 2], [2.0, 6]]},
                "score": {"unit": "responses", "samples": [[0.0, 0], [2.0, 8]]},
            }}),
        );
        assert_eq!(with_timeline.matches("class=\"line\"").count(), 2);
        assert!(
            with_timeline.contains("sample: prompts per second")
                && with_timeline.contains("peak 4.00/s")
        );
        assert!(html.contains("id=\"correlations\"") && html.contains("-1.00"));
        // No scripts and no network: the only URLs are the SVG namespace.
        assert!(!html.contains("<script") && !html.contains("https://"));
        assert_eq!(
            html.matches("http://").count(),
            html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
    }
}
