//! End-to-end runs of the iterative-DPO job on the real default model (SmolLM2-135M-Instruct as
//! policy and judge, or the 5-label fixture head where the judge's scores are not the point),
//! with tiny settings.

mod support;

use std::collections::BTreeSet;
use steerflow::config::parse_config;
use steerflow::run_job;
use steerflow_operators::records::Message;
use steerflow_operators::seeding::prompt_id_from_messages;
use support::{read_pairs_with_pyarrow, tiny_config};

const PROMPTS: &str = r#"{"id": "a", "prompt": "Name a primary colour."}
{"id": "b", "prompt": "What is 2 + 2?"}
{"id": "c", "messages": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of Italy?"}]}
{"prompt": "Say hello."}
{"id": "bad", "prompt": 5}
"#;

fn run(
    dir: &std::path::Path,
    workers: usize,
    extra: &[String],
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let input = dir.join("prompts.jsonl");
    // Written once: the run id depends on the input file's version.
    if !input.exists() {
        std::fs::write(&input, PROMPTS).unwrap();
    }
    let output = dir.join(format!("out-{workers}"));
    let mut overrides = vec!["input.max_rejects=1".to_string()];
    overrides.extend_from_slice(extra);
    let config = parse_config(
        &tiny_config(&input, &output, workers, 3, 10),
        "tiny.toml",
        &overrides,
    )
    .unwrap();
    let report = run_job(&config).expect("run succeeds");
    let rows = read_pairs_with_pyarrow(&output);
    (report.summary, rows)
}

/// `reward.model=` the 5-label fixture head (HelpSteer2's attributes, as the judge's).
fn fixture_head() -> String {
    format!(
        "reward.model={}",
        support::workspace_root()
            .join("tests/fixtures/hf/llama-seqcls5-f32")
            .display()
    )
}

#[test]
fn iterative_dpo_end_to_end_is_identical_with_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (summary1, rows1) = run(dir.path(), 1, &[]);
    let (summary2, rows2) = run(dir.path(), 2, &[]);
    assert_eq!(rows1, rows2, "rows differ between 1 and 2 workers");

    // Counts add up: 4 usable prompts, one rejected with its line and field.
    let counts = &summary1["counts"];
    assert_eq!(counts["prompts"], 4);
    assert_eq!(counts["samples"], 12);
    assert_eq!(counts["rejected"], 1);
    let dropped: u64 = counts["dropped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counts["pairs"].as_u64().unwrap() + dropped, 4);
    assert_eq!(rows1.len() as u64, counts["pairs"].as_u64().unwrap());
    assert!(!rows1.is_empty(), "the tiny run produced no pair at all");
    assert_eq!(summary1["counts"], summary2["counts"]);

    let out = dir.path().join("out-1");
    let run = summary1["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        run, summary2["run_id"],
        "the run id does not depend on the workers"
    );
    let rejects = std::fs::read_to_string(out.join(format!("rejects/{run}.jsonl"))).unwrap();
    let reject: serde_json::Value = serde_json::from_str(rejects.lines().next().unwrap()).unwrap();
    assert_eq!(reject["record"], 5);
    assert_eq!(reject["field"], "prompt");
    assert_eq!(reject["reason"], "wrong_type");

    // Every pair is a real preference: different texts, chosen scores above rejected by the margin.
    for row in &rows1 {
        let chosen = &row["chosen"][0];
        let rejected = &row["rejected"][0];
        assert_eq!(chosen["role"], "assistant");
        assert_ne!(chosen["content"], rejected["content"]);
        let (c, r) = (
            row["chosen_score"].as_f64().unwrap(),
            row["rejected_score"].as_f64().unwrap(),
        );
        assert!(c > r + 0.0, "{row}");
        assert!((row["margin"].as_f64().unwrap() - (c - r)).abs() < 1e-12);
        // goodness = 0.65 h + 0.8 c + 0.45 coh, from the stored attributes.
        let a = &row["chosen_attributes"];
        let g = 0.65 * a["helpfulness"].as_f64().unwrap()
            + 0.8 * a["correctness"].as_f64().unwrap()
            + 0.45 * a["coherence"].as_f64().unwrap();
        assert!((g - c).abs() < 1e-9, "goodness {g} vs chosen_score {c}");
        for name in [
            "helpfulness",
            "correctness",
            "coherence",
            "complexity",
            "verbosity",
        ] {
            let v = a[name].as_f64().unwrap();
            assert!((0.0..=4.0).contains(&v), "{name} = {v}");
        }
        assert_eq!(
            row["prompt"].as_array().unwrap().last().unwrap()["role"],
            "user"
        );
        assert_eq!(row["temperature"], 0.9);
        assert_eq!(row["n_samples"], 3);
        assert!(row["policy"].as_str().unwrap().contains("SmolLM2"));
        assert!(
            row["chosen_normalized_score"].as_f64().unwrap()
                > row["rejected_normalized_score"].as_f64().unwrap()
        );
    }
    let ids: BTreeSet<&str> = rows1
        .iter()
        .map(|r| r["prompt_id"].as_str().unwrap())
        .collect();
    let hello = prompt_id_from_messages(&[Message::new("user", "Say hello.")]);
    let known: BTreeSet<&str> = ["a", "b", "c", hello.as_str()].into_iter().collect();
    assert!(ids.is_subset(&known), "{ids:?}");

    // The README lists exactly the parquet files written, and they exist.
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for shard in [
        &format!("data/{run}/train-00000-of-00002.parquet"),
        &format!("data/{run}/train-00001-of-00002.parquet"),
    ] {
        assert!(readme.contains(&format!("    - {shard}\n")), "{readme}");
        assert!(out.join(shard.as_str()).exists());
    }
    // The run report: self-contained, with its plots.
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        report.contains("Goodness of every response") && report.contains("id=\"correlations\"")
    );
    assert!(report.matches("<svg").count() >= 8 && !report.contains("<script"));

    // The same pairs in TRL's standard form and NeMo-Aligner's DPO jsonl, the prompt rendered by
    // the policy's chat template.
    let nemo: Vec<serde_json::Value> = [
        &format!("nemo/{run}/train-00000-of-00002.jsonl"),
        &format!("nemo/{run}/train-00001-of-00002.jsonl"),
    ]
    .iter()
    .flat_map(|f| {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<serde_json::Value>>()
    })
    .collect();
    assert_eq!(nemo.len(), rows1.len());
    for line in &nemo {
        let prompt = line["prompt"].as_str().unwrap();
        assert!(
            prompt.starts_with("<|im_start|>") && prompt.ends_with("<|im_start|>assistant\n"),
            "{line}"
        );
        assert!(
            line["chosen_reward"].as_f64().unwrap() > line["rejected_reward"].as_f64().unwrap()
        );
        let row = rows1
            .iter()
            .find(|r| r["chosen"][0]["content"] == line["chosen_response"])
            .expect("same pair");
        assert_eq!(row["rejected"][0]["content"], line["rejected_response"]);
    }
    assert!(readme.contains("- config_name: standard\n"), "{readme}");
    for shard in [
        &format!("standard/{run}/train-00000-of-00002.parquet"),
        &format!("standard/{run}/train-00001-of-00002.parquet"),
    ] {
        assert!(readme.contains(&format!("    - {shard}\n")) && out.join(shard.as_str()).exists());
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert!(
        summary["throughput"]["sampling_tokens_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(summary["tokens"]["tokens_decoded"].as_u64().unwrap() > 0);
}

#[test]
fn a_margin_larger_than_any_score_gap_drops_every_prompt_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture head's goodness values lie within about 2 of each other: no pair is 8 apart.
    // The fixture head scores as the judge would for this purpose, in a fraction of the time.
    let (summary, rows) = run(
        dir.path(),
        1,
        &[
            "pairs.min_margin=8.0".into(),
            "sampling.max_new_tokens=4".into(),
            "reward.kind=sequence-classification".into(),
            fixture_head(),
        ],
    );
    assert!(rows.is_empty());
    assert_eq!(summary["counts"]["pairs"], 0);
    let dropped = summary["counts"]["dropped"].as_object().unwrap();
    let total: u64 = dropped.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 4);
    assert!(
        dropped.contains_key("margin_too_small") || dropped.contains_key("identical_responses")
    );
}

#[test]
fn iterative_dpo_with_trained_reward_heads() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = support::workspace_root().join("tests/fixtures/hf");
    let (summary, rows) = run(
        dir.path(),
        1,
        &[
            "reward.kind=sequence-classification".into(),
            fixture_head(),
            "sampling.max_new_tokens=6".into(),
        ],
    );
    assert_eq!(summary["counts"]["samples_scored"], 12);
    assert!(summary["scorer"]
        .as_str()
        .unwrap()
        .starts_with("sequence-classification:llama-seqcls5-f32"));
    for row in &rows {
        let a = &row["chosen_attributes"];
        let g = 0.65 * a["helpfulness"].as_f64().unwrap()
            + 0.8 * a["correctness"].as_f64().unwrap()
            + 0.45 * a["coherence"].as_f64().unwrap();
        assert!((g - row["chosen_score"].as_f64().unwrap()).abs() < 1e-9);
    }

    // A scalar reward cannot be normalised over the whole run (it only ranks within a prompt).
    let scalar = format!(
        "reward.model={}",
        fixtures.join("qwen2-seqcls1-f32").display()
    );
    let input = dir.path().join("prompts.jsonl");
    let config = |normalization: &str| {
        parse_config(
            &tiny_config(
                &input,
                &dir.path().join(format!("out-scalar-{normalization}")),
                1,
                2,
                4,
            ),
            "tiny.toml",
            &[
                "input.max_rejects=1".into(),
                "reward.kind=sequence-classification".into(),
                scalar.clone(),
                "reward.attributes=scalar".into(),
                "goodness.preset=scalar".into(),
                format!("goodness.normalization={normalization}"),
            ],
        )
        .unwrap()
    };
    let err = run_job(&config("run")).unwrap_err().to_string();
    assert!(err.contains("per-prompt"), "{err}");
    let report = run_job(&config("per-prompt")).unwrap();
    assert_eq!(report.summary["attributes"], serde_json::json!(["reward"]));
}

#[test]
fn steerlm2_sampling_prompts_with_targets_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, rows) = run(
        dir.path(),
        1,
        &[
            "policy.chat_template=nemo-steerlm".into(),
            "sampling.steer=steerlm2-paper".into(),
            "sampling.max_new_tokens=4".into(),
            "reward.kind=sequence-classification".into(),
            fixture_head(),
        ],
    );
    assert_eq!(summary["counts"]["samples"], 12);
    for row in &rows {
        assert_eq!(
            row["steer_label"],
            "helpfulness:4,correctness:4,coherence:4,complexity:2,verbosity:2"
        );
    }
    // The model's own template has no place for targets: refused rather than silently ignored.
    let input = dir.path().join("prompts.jsonl");
    let config = parse_config(
        &tiny_config(&input, &dir.path().join("out-refused"), 1, 2, 4),
        "tiny.toml",
        &[
            "sampling.steer=steerlm2-paper".into(),
            "input.max_rejects=1".into(),
        ],
    )
    .unwrap();
    let err = run_job(&config).unwrap_err().to_string();
    assert!(err.contains("steer_label"), "{err}");
}
