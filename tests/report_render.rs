//! `report.html` rendered by headless Chromium (Debian's package, installed by `scripts/test`):
//! the page loads from a file with no network, and its plots are in the rendered DOM and on the
//! screenshot.

use std::path::PathBuf;
use std::process::Command;
use steerflow_pipeline::report::{report_html, PairStat, ResponseStat};

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

fn headless(profile: &std::path::Path) -> Command {
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

#[test]
fn report_renders_with_its_plots() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = [
        "helpfulness",
        "correctness",
        "coherence",
        "complexity",
        "verbosity",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let responses: Vec<ResponseStat> = (0..40)
        .map(|i| {
            let x = i as f64 / 10.0;
            ResponseStat {
                goodness: 2.0 * x,
                attributes: vec![x, x / 2.0, 4.0 - x, 1.0, x * x / 4.0],
                length_chars: 20 * i,
            }
        })
        .collect();
    let pairs: Vec<PairStat> = (0..10)
        .map(|i| PairStat {
            margin: 0.1 * i as f64,
            chosen_tokens: 40 + i,
            rejected_tokens: 30 + 2 * i,
        })
        .collect();
    let rejects = vec![
        ("invalid_json".to_string(), 3),
        ("duplicate_id".to_string(), 1),
    ];
    let html = report_html(
        "render test",
        &names,
        &responses,
        &pairs,
        &rejects,
        &serde_json::json!({"pairs": 10}),
    );
    let page = dir.path().join("report.html");
    std::fs::write(&page, html).unwrap();
    let url = format!("file://{}", page.display());

    let dom = headless(&dir.path().join("profile"))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    // 5 run plots (goodness, margin, chosen and rejected lengths, length against goodness)
    // + 5 attribute histograms + rejects = 11 figures, bars and points drawn.
    assert_eq!(dom.matches("<svg").count(), 11, "{dom}");
    assert!(dom.contains("id=\"pair-lengths\""), "{dom}");
    assert!(dom.matches("class=\"point\"").count() == 40);
    assert!(dom.contains("id=\"correlations\"") && dom.contains("invalid_json"));

    let shot = dir.path().join("report.png");
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
    let png = std::fs::read(&shot).unwrap();
    // A page of plots compresses far worse than an empty page of the same size.
    let blank_shot = dir.path().join("blank.png");
    let blank = headless(&dir.path().join("profile3"))
        .arg(format!("--screenshot={}", blank_shot.display()))
        .arg("--window-size=1280,1400")
        .arg("about:blank")
        .output()
        .unwrap();
    assert!(blank.status.success());
    let blank = std::fs::read(&blank_shot).unwrap();
    eprintln!(
        "screenshot: report {} bytes, blank page {} bytes",
        png.len(),
        blank.len()
    );
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 3 * blank.len(),
        "report {} vs blank {} bytes",
        png.len(),
        blank.len()
    );
}
