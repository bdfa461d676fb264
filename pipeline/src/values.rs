//! Every record of an input file as a JSON value with its position: jsonl lines (from 1; blank
//! lines skipped but counted, so positions are the file's own line numbers) or parquet rows
//! (from 0). A line that is not UTF-8 or not JSON becomes a reject with its line and reason;
//! the shape of a record (prompt, prompt + response, labelled responses, preference pairs, NeMo
//! conversations) is the caller's to check.

use crate::input::InputFile;
use crate::reject::{Reject, RejectReason};
use crate::storage::read_file;
use crate::PipelineError;
use serde_json::Value;

/// The records of a file.
#[derive(Debug, Clone, Default)]
pub struct Values {
    /// (position, record).
    pub records: Vec<(u64, Value)>,
    pub rejects: Vec<Reject>,
    /// Records read, good or bad (blank lines are not records).
    pub count: u64,
}

/// Reads `file` whole.
pub fn read_values(file: &InputFile) -> Result<Values, PipelineError> {
    let bytes = read_file(&file.spec)?;
    if file.parquet {
        parquet_values(&file.spec, bytes)
    } else {
        Ok(jsonl_values(&file.spec, &bytes))
    }
}

/// The lines of a jsonl file.
pub fn jsonl_values(file: &str, bytes: &[u8]) -> Values {
    let mut out = Values::default();
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    for (i, raw) in lines.into_iter().enumerate() {
        let line = i as u64 + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        out.count += 1;
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                let detail = format!("invalid UTF-8: {e}");
                out.rejects.push(Reject::new(
                    file,
                    line,
                    None,
                    RejectReason::InvalidUtf8,
                    detail,
                ));
                continue;
            }
        };
        match serde_json::from_str(text) {
            Ok(v) => out.records.push((line, v)),
            Err(e) => {
                let (reason, detail) = if i == last && e.is_eof() {
                    (
                        RejectReason::TruncatedLine,
                        format!("the last line is cut off: {e}"),
                    )
                } else {
                    (RejectReason::InvalidJson, format!("invalid JSON: {e}"))
                };
                out.rejects
                    .push(Reject::new(file, line, None, reason, detail));
            }
        }
    }
    out
}

/// The rows of a parquet file, as arrow's JSON writer renders them.
fn parquet_values(spec: &str, bytes: bytes::Bytes) -> Result<Values, PipelineError> {
    let fail = |message: String| PipelineError::Input {
        location: crate::storage::redact_url(spec),
        message,
    };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| fail(format!("not a readable parquet file: {e}")))?;
    let mut out = Values::default();
    for batch in reader {
        let batch = batch.map_err(|e| fail(format!("corrupt parquet data: {e}")))?;
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer.write(&batch).map_err(|e| fail(e.to_string()))?;
        writer.finish().map_err(|e| fail(e.to_string()))?;
        let rows: Vec<Value> =
            serde_json::from_slice(&writer.into_inner()).map_err(|e| fail(e.to_string()))?;
        for row in rows {
            out.records.push((out.count, row));
            out.count += 1;
        }
    }
    Ok(out)
}

/// A record's `id` as a string (numbers too), else `line-N` / `row-N` from its position.
pub fn record_id(value: &Value, position: u64, parquet: bool) -> String {
    match value.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ if parquet => format!("row-{position}"),
        _ => format!("line-{position}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_numbers_and_bad_lines_are_rejected() {
        let v = jsonl_values("f.jsonl", b"{\"a\":1}\n\n nope\n\xff\n{\"b\":");
        assert_eq!(v.count, 4);
        assert_eq!(v.records.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
        let reasons: Vec<(u64, &str)> = v
            .rejects
            .iter()
            .map(|r| (r.record, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (3, "invalid_json"),
                (4, "invalid_utf8"),
                (5, "truncated_line")
            ]
        );
        assert_eq!(record_id(&serde_json::json!({"id": 7}), 3, false), "7");
        assert_eq!(record_id(&serde_json::json!({}), 3, false), "line-3");
    }
}
