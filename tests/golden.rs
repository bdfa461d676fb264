//! Golden-file tests: one folder per case under `tests/golden/` with its job file, inputs and
//! expected output. Outputs are compared after sorting rows by key. Set
//! `STEERFLOW_REGENERATE_GOLDEN=1` to rewrite the expected files from the current code (then
//! review the diff before committing).

mod support;

use serde_json::Value;
use std::path::Path;

fn regenerate() -> bool {
    std::env::var("STEERFLOW_REGENERATE_GOLDEN").is_ok_and(|v| v == "1")
}

use support::golden_job as job;

/// The path of the run's file whose path ends with `suffix` (the summary lists every file).
fn run_file(out: &Path, summary: &Value, suffix: &str) -> std::path::PathBuf {
    let listed = summary["files"]
        .as_array()
        .into_iter()
        .chain(summary["other_files"].as_array())
        .flatten()
        .filter_map(|f| f["path"].as_str())
        .find(|p| p.ends_with(suffix))
        .unwrap_or_else(|| panic!("no file ending in {suffix} in {summary}"));
    out.join(listed)
}

fn compare(case: &Path, actual: Value) {
    let expected_path = case.join("expected.json");
    if regenerate() {
        std::fs::write(
            &expected_path,
            serde_json::to_string_pretty(&actual).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let expected: Value = serde_json::from_slice(&std::fs::read(&expected_path).unwrap()).unwrap();
    assert_eq!(
        actual,
        expected,
        "{} differs from its expected output",
        case.display()
    );
}

#[test]
fn rm_eval_on_a_hand_built_preference_set() {
    let case = support::workspace_root().join("tests/golden/rm-eval");
    let out = tempfile::tempdir().unwrap();
    let summary = steerflow::run_any(&job(&case, out.path())).unwrap();
    let mut cases: Vec<Value> =
        std::fs::read_to_string(run_file(out.path(), &summary, "cases.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    cases.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    // Scores rounded to 1e-6 so the comparison is about behaviour, not the last float bit.
    for c in &mut cases {
        for key in ["chosen_score", "rejected_score"] {
            let v = c[key].as_f64().unwrap();
            c[key] = serde_json::json!((v * 1e6).round() / 1e6);
        }
    }
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("eval.json")).unwrap()).unwrap();
    // The report agrees with the cases: recount correct answers per category from cases.jsonl.
    let correct = cases.iter().filter(|c| c["correct"] == true).count() as u64;
    let subset_total: u64 = report["report"]["subsets"]
        .as_object()
        .unwrap()
        .values()
        .map(|a| a["correct"].as_u64().unwrap())
        .sum();
    assert_eq!(correct, subset_total);
    let md = std::fs::read_to_string(out.path().join("eval.md")).unwrap();
    assert!(md.contains("**Overall**"), "{md}");
    compare(
        &case,
        serde_json::json!({ "cases": cases, "categories": report["report"]["categories"], "overall": report["report"]["overall"] }),
    );
}

#[test]
fn steerlm_annotation_of_single_and_multi_turn_conversations() {
    let case = support::workspace_root().join("tests/golden/steerlm-annotate");
    let out = tempfile::tempdir().unwrap();
    let summary = steerflow::run_any(&job(&case, out.path())).unwrap();
    let annotated: Vec<Value> = std::fs::read_to_string(run_file(out.path(), &summary, ".jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Every assistant turn carries a non-empty label; user turns keep null.
    for record in &annotated {
        for turn in record["conversations"].as_array().unwrap() {
            match turn["from"].as_str().unwrap() {
                "Assistant" => assert!(!turn["label"].as_str().unwrap().is_empty()),
                _ => assert!(turn["label"].is_null()),
            }
        }
    }
    let rows_read = support::read_parquet_with_pyarrow(&run_file(out.path(), &summary, ".parquet"));
    let mut rows: Vec<Value> = rows_read;
    for row in &mut rows {
        if let Some(attrs) = row["attributes"].as_object_mut() {
            for v in attrs.values_mut() {
                if let Some(x) = v.as_f64() {
                    *v = serde_json::json!((x * 1e6).round() / 1e6);
                }
            }
        }
        row.as_object_mut().unwrap().remove("scorer");
    }
    rows.sort_by(|a, b| {
        (a["conversation_id"].as_str(), a["turn"].as_i64())
            .cmp(&(b["conversation_id"].as_str(), b["turn"].as_i64()))
    });
    compare(
        &case,
        serde_json::json!({ "summary": summary["counts"]["turns_labelled"], "defaulted": summary["counts"]["turns_defaulted"], "annotated": annotated, "turns": rows }),
    );
}

#[test]
fn helpsteer2_pairs_with_ties() {
    let case = support::workspace_root().join("tests/golden/helpsteer2-pairs");
    let out = tempfile::tempdir().unwrap();
    let summary = steerflow::run_any(&job(&case, out.path())).unwrap();
    // Known answers: 4 prompts; the tie and the single response are dropped.
    assert_eq!(summary["counts"]["pairs"], 2);
    assert_eq!(summary["counts"]["dropped"]["margin_too_small"], 1);
    assert_eq!(summary["counts"]["dropped"]["too_few_scored"], 1);
    let rows_read = support::read_parquet_with_pyarrow(&run_file(out.path(), &summary, ".parquet"));
    let mut rows: Vec<Value> = rows_read;
    rows.sort_by(|a, b| a["prompt_id"].as_str().cmp(&b["prompt_id"].as_str()));
    // NeMo-Aligner DPO jsonl beside it, prompts rendered by the policy model's chat template.
    let nemo = std::fs::read_to_string(run_file(out.path(), &summary, ".jsonl")).unwrap();
    let nemo: Vec<Value> = nemo
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(nemo.len(), 2);
    for line in &nemo {
        assert!(line["prompt"]
            .as_str()
            .unwrap()
            .ends_with("<|im_start|>assistant\n"));
        assert!(
            line["chosen_reward"].as_f64().unwrap() > line["rejected_reward"].as_f64().unwrap()
        );
    }
    assert!(run_file(out.path(), &summary, "00001.parquet").exists());
    assert!(summary["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["format"] == "standard"));
    compare(
        &case,
        serde_json::json!({ "summary": summary["counts"]["dropped"], "rows": rows }),
    );
}

#[test]
fn filter_rank_each_rule() {
    let case = support::workspace_root().join("tests/golden/filter-rank");
    let rules: [(&str, steerflow::kinds::filter_rank::FilterSection); 5] = [
        (
            "min",
            steerflow::kinds::filter_rank::FilterSection {
                min: [("helpfulness".to_string(), 0.5)].into(),
                ..Default::default()
            },
        ),
        (
            "max",
            steerflow::kinds::filter_rank::FilterSection {
                max: [("verbosity".to_string(), 0.0)].into(),
                ..Default::default()
            },
        ),
        (
            "top_k",
            steerflow::kinds::filter_rank::FilterSection {
                top_k: 1,
                ..Default::default()
            },
        ),
        (
            "quantile",
            steerflow::kinds::filter_rank::FilterSection {
                quantile: Some(0.5),
                ..Default::default()
            },
        ),
        (
            "all",
            steerflow::kinds::filter_rank::FilterSection {
                min: [("normalized_goodness".to_string(), -1.0)].into(),
                max: [("verbosity".to_string(), 1.0)].into(),
                top_k: 2,
                quantile: Some(0.25),
            },
        ),
    ];
    let mut results = serde_json::Map::new();
    for (name, filter) in rules {
        let out = tempfile::tempdir().unwrap();
        let mut config = job(&case, out.path());
        config.sections.filter = filter;
        let summary = steerflow::run_any(&config).unwrap();
        let counts = &summary["counts"];
        let removed: u64 = counts["removed_by"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            counts["kept"].as_u64().unwrap() + removed,
            counts["rows"].as_u64().unwrap(),
            "{name}"
        );
        let rows_read =
            support::read_parquet_with_pyarrow(&run_file(out.path(), &summary, ".parquet"));
        let mut kept: Vec<Value> = rows_read
            .into_iter()
            .map(|r| serde_json::json!({ "id": r["id"], "rank": r["rank"], "response": r["response"] }))
            .collect();
        kept.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        results.insert(
            name.to_string(),
            serde_json::json!({ "removed_by": counts["removed_by"], "kept": kept }),
        );
    }
    compare(&case, Value::Object(results));
}

/// One row of a pairs file as the pair-strategy golden compares it.
fn pair_row(r: &Value) -> Value {
    serde_json::json!({
        "prompt_id": r["prompt_id"],
        "chosen": r["chosen_sample_index"],
        "rejected": r["rejected_sample_index"],
        "chosen_tokens": r["chosen_tokens"],
        "rejected_tokens": r["rejected_tokens"],
        "margin": (r["margin"].as_f64().unwrap() * 1e6).round() / 1e6,
    })
}

#[test]
fn pair_strategies_through_the_job() {
    use steerflow::config::sections::{PairStrategySetting as S, PairsSection};
    let case = support::workspace_root().join("tests/golden/pair-strategies");
    let pairs = |strategy, k, min_margin, length_penalty, max_length_difference| PairsSection {
        strategy,
        k,
        min_margin,
        length_penalty,
        max_length_difference,
        ..Default::default()
    };
    let settings = [
        ("all-pairs", pairs(S::AllPairs, Some(100), 0.0, 0.0, None)),
        ("best-vs-worst", pairs(S::BestVsWorst, None, 0.0, 0.0, None)),
        (
            "best-vs-random",
            pairs(S::BestVsRandom, None, 0.0, 0.0, None),
        ),
        ("random-pair", pairs(S::RandomPair, None, 0.0, 0.0, None)),
        ("best-vs-3rd", pairs(S::BestVsKth, Some(3), 0.0, 0.0, None)),
        (
            "all-pairs-top-2",
            pairs(S::AllPairs, Some(2), 0.05, 0.0, None),
        ),
        (
            "length-penalty",
            pairs(S::BestVsWorst, None, 0.0, 0.2, None),
        ),
        (
            "length-bound",
            pairs(S::BestVsWorst, None, 0.0, 0.0, Some(2)),
        ),
    ];
    let mut results = serde_json::Map::new();
    let mut tables: Vec<(String, Vec<Value>)> = Vec::new();
    for (name, section) in settings {
        let out = tempfile::tempdir().unwrap();
        let mut config = job(&case, out.path());
        config.pairs = section;
        let summary = steerflow::run_any(&config).unwrap();
        let rows: Vec<Value> = support::read_pairs_with_pyarrow(out.path())
            .iter()
            .map(pair_row)
            .collect();
        assert_eq!(summary["counts"]["pairs"], rows.len(), "{name}");
        results.insert(
            name.to_string(),
            serde_json::json!({ "dropped": summary["counts"]["dropped"], "pairs": rows }),
        );
        tables.push((name.to_string(), rows));
    }
    // Cross-checks against the table of every pair (the all-pairs run), whatever was sampled.
    let all = &tables[0].1;
    let of = |prompt: &Value| -> Vec<&Value> {
        all.iter().filter(|r| &r["prompt_id"] == prompt).collect()
    };
    let margin = |r: &Value| r["margin"].as_f64().unwrap();
    for (name, rows) in &tables[1..] {
        for r in rows {
            let best = of(&r["prompt_id"]).first().map(|p| p["chosen"].clone());
            match name.as_str() {
                "best-vs-worst" => {
                    let widest = of(&r["prompt_id"])
                        .into_iter()
                        .map(margin)
                        .fold(0.0, f64::max);
                    assert_eq!(margin(r), widest, "{name}: {r}");
                }
                "best-vs-random" | "best-vs-3rd" => {
                    assert_eq!(Some(r["chosen"].clone()), best, "{name}: {r}")
                }
                "length-bound" => {
                    let d = r["chosen_tokens"].as_i64().unwrap()
                        - r["rejected_tokens"].as_i64().unwrap();
                    assert!(d.abs() <= 2, "{name}: {r}");
                }
                _ => {}
            }
            if !name.starts_with("length-penalty") {
                // Without a length penalty every row is one of the table's pairs.
                assert!(
                    of(&r["prompt_id"]).contains(&r),
                    "{name}: {r} is not a pair of the table"
                );
            }
        }
    }
    // The random draws are per prompt: the same rows with two workers.
    let out = tempfile::tempdir().unwrap();
    let mut config = job(&case, out.path());
    config.pairs = pairs(S::RandomPair, None, 0.0, 0.0, None);
    config.job.workers = 2;
    steerflow::run_any(&config).unwrap();
    let two: Vec<Value> = support::read_pairs_with_pyarrow(out.path())
        .iter()
        .map(pair_row)
        .collect();
    assert_eq!(two, tables[3].1);
    compare(&case, Value::Object(results));
}

#[test]
fn dedup_of_a_hand_built_corpus() {
    let case = support::workspace_root().join("tests/golden/dedup");
    let out = tempfile::tempdir().unwrap();
    let references = format!(
        "dedup.decontaminate.references=[\"{}\"]",
        case.join("benchmark.jsonl").display()
    );
    let config = support::golden_job_with(&case, out.path(), &[references]);
    let summary = steerflow::run_any(&config).unwrap();
    let read =
        |suffix: &str| support::read_parquet_with_pyarrow(&run_file(out.path(), &summary, suffix));
    let kept: Vec<Value> = read("train-00000-of-00001.parquet")
        .into_iter()
        .map(|r| r["id"].clone())
        .collect();
    let mut clusters = read("clusters.parquet");
    clusters.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    // The `file` column holds the input's absolute path, which depends on
    // where the checkout lives: keep only its name.
    for row in &mut clusters {
        if let Some(file) = row["file"].as_str() {
            let name = std::path::Path::new(file).file_name().unwrap();
            row["file"] = Value::from(name.to_string_lossy().into_owned());
        }
    }
    let contaminated = read("contaminated.parquet");
    let counts = &summary["counts"];
    let actual = serde_json::json!({
        "kept": kept,
        "clusters": clusters,
        "contaminated": contaminated.iter().map(|r| {
            serde_json::json!({"id": r["id"], "benchmark_id": r["benchmark_id"], "shared_ngrams": r["shared_ngrams"]})
        }).collect::<Vec<_>>(),
        "counts": {
            "records": counts["records"], "kept": counts["kept"],
            "exact_duplicates": counts["exact_duplicates"], "near_duplicates": counts["near_duplicates"],
            "contaminated": counts["contaminated"], "clusters": counts["clusters"], "rejected": counts["rejected"],
        },
    });
    compare(&case, actual);
}
