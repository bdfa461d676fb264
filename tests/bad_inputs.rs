//! The bad-input corpus (`tests/bad_inputs/`): every bad record becomes a reject that names its
//! file, line and field, and the good records of the same file are still read.

mod support;

use steerflow_pipeline::source::{read_prompts, InputFormat, RecordShape};

/// (file, expected reason, line, field)
const CASES: &[(&str, &str, u64, Option<&str>)] = &[
    ("invalid_json.jsonl", "invalid_json", 2, None),
    ("invalid_utf8.jsonl", "invalid_utf8", 2, None),
    ("truncated_last_line.jsonl", "truncated_line", 3, None),
    ("missing_field.jsonl", "missing_field", 2, Some("prompt")),
    ("mistyped_field.jsonl", "wrong_type", 2, Some("prompt")),
    ("empty_prompt.jsonl", "empty", 2, Some("prompt")),
    ("empty_messages.jsonl", "empty", 2, Some("messages")),
    (
        "conversation_ends_with_assistant.jsonl",
        "bad_conversation_end",
        2,
        Some("messages"),
    ),
    ("unknown_role.jsonl", "unknown_role", 2, Some("messages")),
    ("duplicate_id.jsonl", "duplicate_id", 2, Some("id")),
    ("prompt_and_messages.jsonl", "ambiguous", 2, Some("prompt")),
    ("not_an_object.jsonl", "not_an_object", 2, None),
];

fn path(name: &str) -> String {
    support::workspace_root()
        .join("tests/bad_inputs")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn every_bad_record_is_rejected_with_its_location_and_the_good_ones_are_read() {
    for (file, reason, line, field) in CASES {
        let out = read_prompts(&path(file), InputFormat::Jsonl, RecordShape::Prompt).unwrap();
        assert_eq!(out.rejects.len(), 1, "{file}: {:?}", out.rejects);
        let r = &out.rejects[0];
        assert_eq!(
            (r.reason.as_str(), r.record, r.field.as_deref()),
            (*reason, *line, *field),
            "{file}: {r}"
        );
        assert!(r.file.ends_with(file), "{file}: {}", r.file);
        let ids: Vec<&str> = out.prompts.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["good-1", "good-2"], "{file}");
    }
}

#[test]
fn a_corrupt_parquet_file_is_an_error_naming_the_file() {
    let err = read_prompts(
        &path("corrupt.parquet"),
        InputFormat::Parquet,
        RecordShape::Prompt,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("corrupt.parquet") && err.contains("not a readable parquet file"),
        "{err}"
    );
}
