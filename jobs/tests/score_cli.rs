//! `steerflow score` on a fixture checkpoint, read back with pyarrow.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use support::workspace;

#[test]
fn score_command_writes_every_row_with_transformers_scores_whole_and_tensor_parallel() {
    let fixture = workspace().join("tests/fixtures/hf/llama-seqcls5-f32");
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("conversations.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("conversations.jsonl");
    let mut lines = String::new();
    for (k, c) in golden["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        lines.push_str(
            &serde_json::json!({"id": format!("c{k}"), "messages": c["messages"]}).to_string(),
        );
        lines.push('\n');
    }
    lines.push_str("{\"prompt\": \"no response here\"}\n");
    std::fs::write(&input, lines).unwrap();
    // Whole, and split over 4 tensor-parallel ranks (threads): the same transformers scores.
    for ranks in ["1", "4"] {
        let output = dir.path().join(format!("scores-tp{ranks}.parquet"));
        let out = Command::new(env!("CARGO_BIN_EXE_steerflow"))
            .args(["score", "--reward-model"])
            .arg(&fixture)
            .args([
                "--kind",
                "sequence-classification",
                "--attributes",
                "helpsteer2",
                "--input",
            ])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(["--tensor-parallel", ranks])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("4 responses scored") && stderr.contains("1 rejected"),
            "{stderr}"
        );
        let rows = support::read_parquet(&output);
        assert_eq!(rows.len(), 4);
        for (k, row) in rows.iter().enumerate() {
            assert_eq!(row["id"], format!("c{k}"));
            let want = golden["conversations"][k]["scores"].as_array().unwrap();
            for (j, name) in [
                "helpfulness",
                "correctness",
                "coherence",
                "complexity",
                "verbosity",
            ]
            .iter()
            .enumerate()
            {
                let got = row["scores"][name].as_f64().unwrap();
                assert!(
                    (got - want[j].as_f64().unwrap()).abs() < 1e-4,
                    "tensor_parallel {ranks}: row {k} {name}: {got} vs {}",
                    want[j]
                );
            }
            assert!(row["error"].is_null());
        }
        let rejects = std::fs::read_to_string(
            dir.path()
                .join(format!("scores-tp{ranks}.parquet.rejects.jsonl")),
        )
        .unwrap();
        assert!(
            rejects.contains("bad_conversation_end") && rejects.contains("\"record\":5"),
            "{rejects}"
        );
    }
}
