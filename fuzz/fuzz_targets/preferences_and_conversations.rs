//! Any bytes as a jsonl file read by the one record reader (`values::jsonl_values`) into every
//! record shape: prompts, prompts with responses, preference pairs, labelled responses and NeMo
//! conversations. Never a panic; every record is a value or a reject, and every shape either
//! reads a value or names why not.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steerflow::kinds::{helpsteer2_pairs, rm_eval, steerlm_annotate};
use steerflow_pipeline::source::{conversation, RecordShape};

fuzz_target!(|data: &[u8]| {
    let values = steerflow_pipeline::values::jsonl_values("fuzz.jsonl", data);
    assert_eq!(values.count as usize, values.records.len() + values.rejects.len());
    let names = vec!["helpfulness".to_string(), "verbosity".to_string()];
    for (_, value) in values.records {
        for shape in [RecordShape::Prompt, RecordShape::Response] {
            if let Ok((_, messages)) = conversation(&value, shape) {
                assert!(!messages.is_empty());
            }
        }
        let _ = rm_eval::preference_case(&value);
        if let Ok(r) = helpsteer2_pairs::labelled_from(&value, &names) {
            assert_eq!(r.attributes.len(), names.len());
        }
        let _ = steerlm_annotate::conversation_from(value);
    }
});
