//! Any bytes as a parquet prompt file: an error or records, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use steerflow_pipeline::source::{parse_parquet, RecordShape};

fuzz_target!(|data: &[u8]| {
    let _ = parse_parquet("fuzz.parquet", bytes::Bytes::copy_from_slice(data), RecordShape::Prompt);
});
