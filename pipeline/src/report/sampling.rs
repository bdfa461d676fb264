//! The report of a sampling run (iterative-dpo): throughput, goodness and margins, length bias
//! (chosen against rejected lengths, and length against goodness with chosen and rejected
//! marked), example pairs, attributes and their correlations, rejects.

use super::examples::{table, ExamplePair};
use super::lengths::PairLengths;
use super::page::Page;
use super::plots::{histogram, scatter, Marker, Series, BLUE, GREEN, GREY, RED};
use super::{correlation, escape};
use std::fmt::Write;

/// What the report needs of one scored response.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseStat {
    pub goodness: f64,
    pub attributes: Vec<f64>,
    /// Tokens the policy generated.
    pub tokens: u32,
    /// The response is the chosen one of some pair.
    pub chosen: bool,
    /// The response is the rejected one of some pair.
    pub rejected: bool,
}

/// What the report needs of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairStat {
    pub margin: f64,
    pub chosen_tokens: u32,
    pub rejected_tokens: u32,
}

/// A sampling run's data for its report.
pub struct SamplingReport<'a> {
    pub title: &'a str,
    pub names: &'a [String],
    pub responses: &'a [ResponseStat],
    pub pairs: &'a [PairStat],
    /// The example pairs (`examples::pick`), each with why it is shown.
    pub examples: &'a [(ExamplePair, &'static str)],
    pub rejects: &'a [(String, u64)],
    pub summary: &'a serde_json::Value,
}

/// Chosen and rejected lengths side by side, and length against goodness with chosen and
/// rejected marked and their mean lengths: DPO data whose chosen responses are much longer
/// teaches length.
fn length_bias(page: &mut Page, r: &SamplingReport<'_>) {
    let lengths = PairLengths::new(
        r.pairs.iter().map(|p| f64::from(p.chosen_tokens)).collect(),
        r.pairs
            .iter()
            .map(|p| f64::from(p.rejected_tokens))
            .collect(),
        "tokens",
    );
    let (mc, mr) = (lengths.chosen_mean, lengths.rejected_mean);
    page.push(lengths.histogram());
    let points = |f: fn(&ResponseStat) -> bool| -> Vec<(f64, f64)> {
        r.responses
            .iter()
            .filter(|s| f(s))
            .map(|s| (f64::from(s.tokens), s.goodness))
            .collect()
    };
    let mut markers = Vec::new();
    if !r.pairs.is_empty() {
        markers.push(Marker {
            x: mc,
            label: format!("chosen mean {mc:.1}"),
            color: GREEN,
        });
        markers.push(Marker {
            x: mr,
            label: format!("rejected mean {mr:.1}"),
            color: RED,
        });
    }
    page.push(&scatter(
        "Response length against goodness",
        ("response length (tokens)", "goodness"),
        &[
            Series {
                name: "not in a pair",
                color: GREY,
                data: points(|s| !s.chosen && !s.rejected),
            },
            Series {
                name: "chosen",
                color: GREEN,
                data: points(|s| s.chosen && !s.rejected),
            },
            Series {
                name: "rejected",
                color: RED,
                data: points(|s| s.rejected && !s.chosen),
            },
            Series {
                name: "chosen and rejected",
                color: "#b07aa1",
                data: points(|s| s.chosen && s.rejected),
            },
        ],
        &markers,
    ));
    page.paragraph("pair-lengths", &lengths.sentence());
}

fn attributes(page: &mut Page, r: &SamplingReport<'_>) {
    let columns: Vec<Vec<f64>> = (0..r.names.len())
        .map(|k| r.responses.iter().map(|s| s.attributes[k]).collect())
        .collect();
    page.section("Attributes");
    for (k, name) in r.names.iter().enumerate() {
        page.push(&histogram(
            name,
            (&format!("{name} (reward model's score)"), "responses"),
            &[Series {
                name,
                color: BLUE,
                data: columns[k].clone(),
            }],
            16,
        ));
    }
    let mut html = String::from(
        "<h3>Correlation between attributes (Pearson, over every response)</h3><table id=\"correlations\"><tr><th></th>",
    );
    for n in r.names {
        let _ = write!(html, "<th>{}</th>", escape(n));
    }
    html.push_str("</tr>");
    for (i, a) in r.names.iter().enumerate() {
        let _ = write!(html, "<tr><th>{}</th>", escape(a));
        for j in 0..r.names.len() {
            match correlation(&columns[i], &columns[j]) {
                Some(c) => {
                    let shade = (255.0 - 120.0 * c.abs()) as u8;
                    let _ = write!(
                        html,
                        "<td style=\"background:rgb({shade},{shade},255)\">{c:.2}</td>"
                    );
                }
                None => html.push_str("<td>–</td>"),
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    page.push(&html);
}

/// The whole page.
pub fn report_html(r: &SamplingReport<'_>) -> String {
    let lead = format!(
        "{} responses scored, {} pairs, {} records rejected.",
        r.responses.len(),
        r.pairs.len(),
        r.rejects.iter().map(|x| x.1).sum::<u64>()
    );
    let mut page = Page::new(r.title, &lead);
    page.throughput(&r.summary["timeline"]);
    let served = &r.summary["served"];
    if served["requests"].as_u64().unwrap_or(0) > 0 {
        page.paragraph(
            "served",
            &format!(
                "Served models: {} requests, {} retried after a transient failure, {} failed.",
                served["requests"], served["retries"], served["failures"]
            ),
        );
    }
    page.section("Scores");
    let goodness: Vec<f64> = r.responses.iter().map(|s| s.goodness).collect();
    page.push(&histogram(
        "Goodness of every response",
        ("goodness (weighted attributes)", "responses"),
        &[Series {
            name: "responses",
            color: BLUE,
            data: goodness,
        }],
        20,
    ));
    let margins: Vec<f64> = r.pairs.iter().map(|p| p.margin).collect();
    page.push(&histogram(
        "Chosen − rejected margin",
        ("margin (goodness)", "pairs"),
        &[Series {
            name: "pairs",
            color: BLUE,
            data: margins,
        }],
        20,
    ));
    page.section("Length");
    length_bias(&mut page, r);
    page.section("Example pairs");
    page.push(&table(r.examples, r.names, "goodness"));
    attributes(&mut page, r);
    page.rejects(r.rejects);
    page.finish(r.summary)
}
