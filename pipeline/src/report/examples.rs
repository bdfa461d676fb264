//! The table of example pairs: what the data looks like. A few prompts drawn by the run's seed,
//! plus the pairs with the largest and the smallest margins, each with its chosen and rejected
//! responses side by side (shortened, the whole text one click away and in the page's text),
//! their goodness, attributes and lengths.

use super::escape;
use std::fmt::Write;

/// One response of an example pair.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleResponse {
    pub text: String,
    /// The score the pair was chosen by (goodness, or the attribute of labelled pairs).
    pub score: f64,
    pub attributes: Vec<f64>,
    /// Tokens, where the response was generated.
    pub tokens: Option<u32>,
}

/// One pair as the report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExamplePair {
    pub prompt_id: String,
    /// The last user turn of the conversation.
    pub prompt: String,
    pub margin: f64,
    pub chosen: ExampleResponse,
    pub rejected: ExampleResponse,
}

impl ExamplePair {
    /// What the table shows of a conversation: its last user turn (empty when it has none).
    pub fn prompt_of(messages: &[steerflow_operators::records::Message]) -> String {
        messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default()
    }
}

/// Characters of a text shown before it is shortened.
const SHORT: usize = 280;

/// Which pairs the table shows, as indices into `candidates` (`(prompt id, margin)` of every
/// pair) with why, in order: the largest margin, the smallest, then up to `drawn` more chosen by
/// `xxh3(seed, prompt id)` (the same for any cluster shape). NaN margins are never shown.
pub fn pick(candidates: &[(&str, f64)], seed: u64, drawn: usize) -> Vec<(usize, &'static str)> {
    let by_margin = |a: &usize, b: &usize| {
        candidates[*a]
            .1
            .total_cmp(&candidates[*b].1)
            .then_with(|| candidates[*a].0.cmp(candidates[*b].0))
    };
    let indices: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].1.is_finite())
        .collect();
    let mut picked: Vec<(usize, &'static str)> = Vec::new();
    if let Some(&i) = indices.iter().max_by(|a, b| by_margin(a, b)) {
        picked.push((i, "largest margin"));
    }
    if let Some(&i) = indices.iter().min_by(|a, b| by_margin(a, b)) {
        if picked.iter().all(|p| p.0 != i) {
            picked.push((i, "smallest margin"));
        }
    }
    let mut rest: Vec<(u64, usize)> = indices
        .iter()
        .filter(|i| picked.iter().all(|p| p.0 != **i))
        .map(|&i| {
            (
                xxhash_rust::xxh3::xxh3_64_with_seed(candidates[i].0.as_bytes(), seed),
                i,
            )
        })
        .collect();
    rest.sort();
    picked.extend(
        rest.into_iter()
            .take(drawn)
            .map(|(_, i)| (i, "drawn by the seed")),
    );
    picked
}

fn text_cell(text: &str) -> String {
    let chars = text.chars().count();
    if chars <= SHORT {
        return format!("<div class=\"text\">{}</div>", escape(text));
    }
    let short: String = text.chars().take(SHORT).collect();
    format!(
        "<div class=\"text\">{}…</div><details><summary>whole text ({chars} characters)</summary>\
         <div class=\"text\">{}</div></details>",
        escape(&short),
        escape(text)
    )
}

fn response_cell(r: &ExampleResponse, names: &[String], score: &str) -> String {
    let attributes: Vec<String> = names
        .iter()
        .zip(&r.attributes)
        .map(|(n, v)| format!("{} {v:.2}", escape(n)))
        .collect();
    let tokens = r
        .tokens
        .map(|t| format!(" · {t} tokens"))
        .unwrap_or_default();
    format!(
        "<td>{}<div class=\"scores\">{} {:.3}{tokens}<br>{}</div></td>",
        text_cell(&r.text),
        escape(score),
        r.score,
        attributes.join(" · ")
    )
}

/// The table (`id="example-pairs"`, one `<tr class="pair">` per pair), each pair with why it
/// is shown; `score` names what the pairs were chosen by.
pub fn table(rows: &[(ExamplePair, &str)], names: &[String], score: &str) -> String {
    if rows.is_empty() {
        return "<p id=\"example-pairs\">No pairs.</p>".into();
    }
    let mut out = String::from(
        "<table id=\"example-pairs\" class=\"examples\"><tr><th>prompt</th><th>chosen</th><th>rejected</th></tr>",
    );
    for (p, why) in rows {
        let _ = write!(
            out,
            "<tr class=\"pair\"><td><div class=\"why\">{} · margin {:.3} · id {}</div>{}</td>{}{}</tr>",
            escape(why),
            p.margin,
            escape(&p.prompt_id),
            text_cell(&p.prompt),
            response_cell(&p.chosen, names, score),
            response_cell(&p.rejected, names, score)
        );
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(id: &str, margin: f64, chosen: &str) -> ExamplePair {
        let response = |text: &str, score| ExampleResponse {
            text: text.into(),
            score,
            attributes: vec![score, 1.0],
            tokens: Some(3),
        };
        ExamplePair {
            prompt_id: id.into(),
            prompt: format!("question {id}"),
            margin,
            chosen: response(chosen, margin),
            rejected: response("no", 0.0),
        }
    }

    #[test]
    fn largest_and_smallest_first_then_the_seeded_draw() {
        let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
        let margins = [3.0, 0.5, 9.0, 1.0, 2.0, f64::NAN, 4.0, 0.1, 5.0, 6.0];
        let pairs: Vec<(&str, f64)> = ids.iter().map(|s| s.as_str()).zip(margins).collect();
        let picked = pick(&pairs, 7, 3);
        assert_eq!(picked[0], (2, "largest margin"));
        assert_eq!(picked[1], (7, "smallest margin"));
        assert_eq!(picked.len(), 5);
        assert!(
            picked.iter().all(|p| p.0 != 5),
            "a NaN margin is never shown"
        );
        // The draw depends on the seed and the ids only.
        let mut reversed = pairs.clone();
        reversed.reverse();
        let ids = |p: &[(&str, f64)], picked: Vec<(usize, &str)>| -> Vec<String> {
            picked.iter().map(|(i, _)| p[*i].0.to_string()).collect()
        };
        assert_eq!(
            ids(&pairs, pick(&pairs, 7, 3)),
            ids(&reversed, pick(&reversed, 7, 3))
        );
        assert_ne!(
            ids(&pairs, pick(&pairs, 7, 3)),
            ids(&pairs, pick(&pairs, 8, 3))
        );
        assert_eq!(pick(&pairs[..1], 7, 3), vec![(0, "largest margin")]);
    }

    #[test]
    fn long_texts_are_shortened_with_the_whole_text_kept() {
        let long = "word ".repeat(100);
        let html = table(
            &[(pair("a<b", 1.0, &long), "largest margin")],
            &["help".into(), "verb".into()],
            "goodness",
        );
        assert_eq!(html.matches("<tr class=\"pair\">").count(), 1);
        assert!(html.contains("id a&lt;b"));
        assert!(html.contains("whole text (500 characters)"));
        assert!(html.contains(&escape(&long)));
        assert!(html.contains("help 1.00 · verb 1.00"));
        assert!(html.contains("largest margin · margin 1.000"));
        assert!(html.contains("goodness 1.000 · 3 tokens"));
        assert!(table(&[], &[], "goodness").contains("No pairs."));
    }
}
