//! Any bytes as a jsonl prompt file, in both record shapes: never a panic; every line is a
//! prompt or a reject.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steerflow_pipeline::source::{parse_jsonl, RecordShape};

fuzz_target!(|data: &[u8]| {
    for shape in [RecordShape::Prompt, RecordShape::Response] {
        let out = parse_jsonl("fuzz.jsonl", data, shape);
        assert_eq!(out.records as usize, out.prompts.len() + out.rejects.len());
    }
});
