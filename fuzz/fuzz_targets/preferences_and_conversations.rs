//! Any bytes as an rm-eval preference file and as SteerLM conversations: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cases, rejects, records) = steerflow_pipeline::rm_eval::parse_preferences("fuzz.jsonl", data);
    assert_eq!(records as usize, cases.len() + rejects.len());
    let (conversations, rejects, records) = steerflow_pipeline::annotate::parse_conversations("fuzz.jsonl", data);
    assert_eq!(records as usize, conversations.len() + rejects.len());
});
