//! Every job kind's `report.html`, from a real run of its golden case, rendered by headless
//! Chromium (Debian's package, installed by `scripts/test`): the page loads from a file with no
//! network, and the rendered DOM is checked: every plot has its two axis labels, throughput
//! peaks stay within a small factor of their mean, the example-pairs tables have rows. The
//! screenshot of the sampling report is compared with a blank page's.

mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> PathBuf {
    let path = std::env::var_os("STEERFLOW_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        path.exists(),
        "{} is missing: scripts/test installs Debian's chromium",
        path.display()
    );
    path
}

fn headless(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Runs the golden case `case` with `overrides` into `out` and returns its rendered
/// `report.html` DOM.
fn run_and_render(case: &str, out: &Path, overrides: &[&str]) -> String {
    let dir = support::workspace_root().join("tests/golden").join(case);
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let config = support::golden_job_with(&dir, out, &overrides);
    let summary: Value = steerflow::run_any(&config).unwrap();
    let page = out.join("report.html");
    assert!(page.exists(), "{case}: no report.html ({summary})");
    let dom = headless(&out.join("profile"))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

/// The value of attribute `name` of every element that has it.
fn attribute(dom: &str, name: &str) -> Vec<f64> {
    dom.split(&format!(" {name}=\""))
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect()
}

/// Checks what every report must have, and returns its number of plots.
fn readable(case: &str, dom: &str) -> usize {
    let plots = dom.matches("<svg").count();
    assert!(plots > 0, "{case}: no plots");
    assert_eq!(
        dom.matches("class=\"axis-label").count(),
        2 * plots,
        "{case}: a plot without its two axis labels"
    );
    assert!(dom.contains("class=\"tick\""), "{case}: no ticks");
    assert!(dom.contains("<h2>Rejected records</h2>") && dom.contains("<h2>Summary</h2>"));
    assert!(
        !dom.contains("<script") && !dom.contains("https://"),
        "{case}: not self-contained"
    );
    plots
}

fn example_rows(dom: &str) -> usize {
    dom.matches("<tr class=\"pair\">").count()
}

#[test]
fn the_sampling_report_shows_throughput_examples_and_length_bias() {
    let dir = tempfile::tempdir().unwrap();
    let dom = run_and_render("pair-strategies", dir.path(), &[]);
    readable("iterative-dpo", &dom);
    let (peaks, means) = (attribute(&dom, "data-peak"), attribute(&dom, "data-mean"));
    // Sampling tokens, scoring tokens and scoring responses.
    assert_eq!(peaks.len(), 3, "{dom}");
    for (peak, mean) in peaks.iter().zip(&means) {
        eprintln!("throughput: peak {peak}/s, mean {mean}/s");
        assert!(
            *mean > 0.0 && *peak <= 4.0 * mean,
            "peak {peak} against mean {mean}"
        );
    }
    // 5 prompts, one pair each: the largest and smallest margins and the three drawn.
    assert_eq!(example_rows(&dom), 5, "{dom}");
    assert!(dom.contains("data-series=\"chosen\"") && dom.contains("data-series=\"rejected\""));
    assert!(dom.contains("id=\"pair-lengths\"") && dom.contains("chosen mean"));

    // The screenshot: a page of plots compresses far worse than an empty page of the same size.
    let shot = dir.path().join("report.png");
    let url = format!("file://{}", dir.path().join("report.html").display());
    let out = headless(&dir.path().join("profile2"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1400")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blank_shot = dir.path().join("blank.png");
    let blank = headless(&dir.path().join("profile3"))
        .arg(format!("--screenshot={}", blank_shot.display()))
        .arg("--window-size=1280,1400")
        .arg("about:blank")
        .output()
        .unwrap();
    assert!(blank.status.success());
    let (png, blank) = (
        std::fs::read(&shot).unwrap(),
        std::fs::read(&blank_shot).unwrap(),
    );
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 3 * blank.len(),
        "report {} vs blank {} bytes",
        png.len(),
        blank.len()
    );
}

#[test]
fn the_store_kinds_reports_show_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let rm_eval = run_and_render("rm-eval", &dir.path().join("rm-eval"), &[]);
    readable("rm-eval", &rm_eval);
    assert!(rm_eval.contains("Accuracy per category") && rm_eval.contains("Accuracy per subset"));
    assert!(
        rm_eval.contains("%</text>"),
        "accuracies are labelled in percent"
    );

    let filter = run_and_render(
        "filter-rank",
        &dir.path().join("filter-rank"),
        &["filter.top_k=1", "filter.quantile=0.5"],
    );
    readable("filter-rank", &filter);
    for bar in [
        ">kept</text>",
        ">removed by top_k</text>",
        ">removed by quantile</text>",
    ] {
        assert!(filter.contains(bar), "{bar}: {filter}");
    }

    let annotate = run_and_render("steerlm-annotate", &dir.path().join("annotate"), &[]);
    // One label distribution per attribute, and the rejects.
    assert_eq!(readable("steerlm-annotate", &annotate), 5 + 1);
    assert!(annotate.contains(">helpfulness:4</text>"));

    let pairs = run_and_render("helpsteer2-pairs", &dir.path().join("pairs"), &[]);
    readable("helpsteer2-pairs", &pairs);
    assert!(example_rows(&pairs) > 0 && pairs.contains("id=\"pair-lengths\""));

    let bench = support::workspace_root().join("tests/golden/dedup/benchmark.jsonl");
    let references = format!("dedup.decontaminate.references=[\"{}\"]", bench.display());
    let dedup = run_and_render("dedup", &dir.path().join("dedup"), &[&references]);
    // Kept and removed, cluster sizes, similarities, and the rejects.
    assert_eq!(readable("dedup", &dedup), 3 + 1);
    for bar in [
        ">kept</text>",
        ">near duplicate</text>",
        ">contaminated</text>",
    ] {
        assert!(dedup.contains(bar), "{bar}: {dedup}");
    }
}
