//! A report page: one self-contained HTML file (inline SVG and CSS, no scripts, no network)
//! that reads on a screen and on paper, built section by section by each job kind.

use super::escape;
use super::plots::{bars, throughput};
use super::throughput::windowed_rate;
use std::fmt::Write;

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1500px}\
h2{border-bottom:1px solid #ccc;padding-bottom:2px;margin-top:28px}\
figure{display:inline-block;margin:8px;vertical-align:top}\
figcaption{font-size:11px;color:#555;text-align:center}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:12px;vertical-align:top}\
table.examples td{width:33%}table.examples .text{white-space:pre-wrap}\
.why,.scores{color:#555;font-size:11px;margin:2px 0}\
p.lead{color:#444}\
@media print{body{margin:0}figure,tr{break-inside:avoid}details{display:none}}";

/// Points of a throughput line.
const THROUGHPUT_POINTS: usize = 120;

/// A report being written.
#[derive(Debug, Clone)]
pub struct Page {
    html: String,
}

impl Page {
    /// A page titled `title` with a lead paragraph.
    pub fn new(title: &str, lead: &str) -> Self {
        Self {
            html: format!(
                "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head>\
                 <body><h1>{t}</h1><p class=\"lead\">{}</p>",
                escape(lead),
                t = escape(title)
            ),
        }
    }

    pub fn section(&mut self, heading: &str) -> &mut Self {
        let _ = write!(self.html, "<h2>{}</h2>", escape(heading));
        self
    }

    /// Adds markup (a plot, a table) as it is.
    pub fn push(&mut self, html: &str) -> &mut Self {
        self.html.push_str(html);
        self
    }

    /// Adds a paragraph of text with an id.
    pub fn paragraph(&mut self, id: &str, text: &str) -> &mut Self {
        let _ = write!(self.html, "<p id=\"{}\">{}</p>", escape(id), escape(text));
        self
    }

    /// Rejects by reason as bars, from the rejects themselves.
    pub fn rejects_of(&mut self, rejects: &[crate::reject::Reject]) -> &mut Self {
        let counts: Vec<(String, u64)> = crate::reject::counts_by_reason(rejects)
            .into_iter()
            .collect();
        self.rejects(&counts)
    }

    /// Rejects by reason as bars.
    pub fn rejects(&mut self, counts: &[(String, u64)]) -> &mut Self {
        self.section("Rejected records");
        let total: u64 = counts.iter().map(|c| c.1).sum();
        let values: Vec<(String, f64)> =
            counts.iter().map(|(r, c)| (r.clone(), *c as f64)).collect();
        self.push(&bars(
            &format!("Rejects by reason ({total} records)"),
            ("records", "reason"),
            &values,
            |v| format!("{v:.0}"),
        ))
    }

    /// Throughput over time from the summary's `timeline` (`{stage: {unit, samples: [[t,
    /// items, tokens]]}}`): tokens per second for every stage, and items per second for the
    /// stages whose items are not prompts (a prompt's size varies too much for its count to
    /// be a rate).
    pub fn throughput(&mut self, timeline: &serde_json::Value) -> &mut Self {
        let Some(stages) = timeline.as_object() else {
            return self;
        };
        self.section("Throughput over time");
        let mut windows = 0;
        for (stage, data) in stages {
            let unit = data["unit"].as_str().unwrap_or("items");
            let column = |k: usize| -> Vec<(f64, f64)> {
                data["samples"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|p| Some((p[0].as_f64()?, p.get(k)?.as_f64()?)))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mut plots = vec![(column(2), "tokens")];
            if unit != "prompts" {
                plots.push((column(1), unit));
            }
            for (samples, what) in plots {
                let title = format!("{stage}: {what} per second");
                let y = format!("{what}/s");
                match windowed_rate(&samples, THROUGHPUT_POINTS) {
                    Some(rate) => {
                        windows += 1;
                        self.push(&throughput(&title, &y, &rate.points, rate.mean))
                    }
                    None => self.push(&throughput(&title, &y, &[], 0.0)),
                };
            }
        }
        if windows > 0 {
            let _ = write!(
                self.html,
                "<p class=\"note\">Rates over a centred moving window of a tenth of the stage's span (at least {:.0} s), \
                 from when the stage got its first work to its last. Decoded tokens count as the engine draws them; \
                 scored tokens and responses when a prompt's responses are scored. The dashed line is the stage's mean over that span.</p>",
                super::throughput::MIN_WINDOW
            );
        }
        self
    }

    /// Closes the page with the run's summary.
    pub fn finish(mut self, summary: &serde_json::Value) -> String {
        let _ = write!(
            self.html,
            "<h2>Summary</h2><pre>{}</pre></body></html>",
            escape(&serde_json::to_string_pretty(summary).unwrap_or_default())
        );
        self.html
    }
}
