//! `report.html`: a self-contained page (inline SVG and CSS, no scripts, no network) that shows
//! what a run produced and how fast. `page.rs` builds a page, `plots.rs` and `axes.rs` draw its
//! plots, `throughput.rs` turns a stage's progress into rates, `examples.rs` is the example-pairs
//! table, `lengths.rs` chosen against rejected lengths; `sampling.rs` is the sampling run's
//! report, and each job kind of the run store builds its own from the same parts.

pub mod axes;
pub mod examples;
pub mod lengths;
pub mod page;
pub mod plots;
pub mod sampling;
pub mod throughput;

pub use examples::{ExamplePair, ExampleResponse};
pub use lengths::PairLengths;
pub use page::Page;
pub use sampling::{report_html, PairStat, ResponseStat, SamplingReport};

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_by_hand() {
        assert!((correlation(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((correlation(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(correlation(&[1.0, 1.0], &[2.0, 3.0]), None);
    }

    fn example(id: &str, margin: f64) -> ExamplePair {
        let response = |score| ExampleResponse {
            text: format!("answer {score}"),
            score,
            attributes: vec![score, 0.0],
            tokens: Some(4),
        };
        ExamplePair {
            prompt_id: id.into(),
            prompt: "q".into(),
            margin,
            chosen: response(margin),
            rejected: response(0.0),
        }
    }

    #[test]
    fn the_sampling_page_is_self_contained_and_complete() {
        let names = vec!["helpfulness".to_string(), "verbosity".to_string()];
        let responses: Vec<ResponseStat> = (0..10)
            .map(|i| ResponseStat {
                goodness: i as f64,
                attributes: vec![i as f64, 10.0 - i as f64],
                tokens: 10 * i,
                chosen: i == 9,
                rejected: i == 0,
            })
            .collect();
        let pairs = [
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
        ];
        let examples = [
            (example("a", 1.0), "largest margin"),
            (example("b", 0.5), "smallest margin"),
        ];
        let summary = serde_json::json!({"pairs": 2, "timeline": {
            "sample": {"unit": "prompts", "samples": [[1.0, 0, 0], [11.0, 2, 60], [21.0, 6, 200]]},
            "score": {"unit": "responses", "samples": [[2.0, 0, 0], [22.0, 8, 800]]},
        }});
        let html = report_html(&SamplingReport {
            title: "run",
            names: &names,
            responses: &responses,
            pairs: &pairs,
            examples: &examples,
            rejects: &[("invalid_json".into(), 2)],
            summary: &summary,
        });
        // 3 throughput lines (sample tokens, score tokens and responses), goodness, margin,
        // lengths, length against goodness, 2 attributes, rejects.
        assert_eq!(html.matches("<svg").count(), 10);
        assert_eq!(html.matches("class=\"line\"").count(), 3);
        assert_eq!(html.matches("class=\"axis-label").count(), 2 * 10);
        assert!(
            html.contains("sample: tokens per second")
                && html.contains("score: responses per second")
        );
        assert!(!html.contains("sample: prompts per second"));
        // Sample tokens: 200 over 20 s.
        assert!(html.contains("data-mean=\"10.0000\""), "{html}");
        assert!(
            html.contains("chosen 25.0 tokens, rejected 15.0 tokens (chosen − rejected: +10.0 tokens over 2 pairs)"),
            "{html}"
        );
        assert_eq!(html.matches("<tr class=\"pair\">").count(), 2);
        assert!(
            html.contains("data-series=\"chosen\"") && html.contains("data-series=\"rejected\"")
        );
        assert!(html.contains("chosen mean 25.0") && html.contains("rejected mean 15.0"));
        assert!(html.contains("id=\"correlations\"") && html.contains("-1.00"));
        // No scripts and no network: the only URLs are the SVG namespace.
        assert!(!html.contains("<script") && !html.contains("https://"));
        assert_eq!(
            html.matches("http://").count(),
            html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
    }
}
