//! The corpus side of deduplication: the text of a record (a named field: a string, a list of
//! strings, or a list of messages), the record as it is kept, and kept records back as a
//! parquet batch with the columns the input had.

use crate::reject::RejectReason;
use crate::source::FieldError;
use crate::PipelineError;
use arrow::array::RecordBatch;
use arrow::json::reader::{infer_json_schema_from_iterator, ReaderBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// The fields tried, in order, when no field is named (`dedup.decontaminate.field = ""`).
pub const AUTO_FIELDS: &[&str] = &[
    "text",
    "prompt",
    "instruction",
    "question",
    "turns",
    "messages",
    "conversations",
];

/// The text of `value`'s field `field` (dots reach into objects: `meta.text`). A string is the
/// text; a list of strings, or of messages (objects with `content` or `value`), is its items
/// joined by newlines.
pub fn text_of(value: &Value, field: &str) -> Result<String, FieldError> {
    let wrong = |detail: String| (None, RejectReason::WrongType, detail);
    let mut at = value;
    for part in field.split('.') {
        at = match at.get(part) {
            Some(v) => v,
            None => {
                let detail = format!("the record has no field `{field}` (dedup.field)");
                return Err((None, RejectReason::MissingField, detail));
            }
        };
    }
    match at {
        Value::String(s) => Ok(s.clone()),
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let text = match item {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(m) => m
                        .get("content")
                        .or_else(|| m.get("value"))
                        .and_then(Value::as_str),
                    _ => None,
                };
                parts.push(text.ok_or_else(|| {
                    wrong(format!(
                        "`{field}[{i}]` is neither a string nor a message with a `content` string"
                    ))
                })?);
            }
            Ok(parts.join("\n"))
        }
        other => Err(wrong(format!(
            "`{field}` must be a string, a list of strings or a list of messages, got {}",
            kind_of(other)
        ))),
    }
}

/// The text of the first of [`AUTO_FIELDS`] the record has.
pub fn auto_text(value: &Value) -> Result<String, FieldError> {
    let field = AUTO_FIELDS
        .iter()
        .find(|f| value.get(**f).is_some())
        .ok_or_else(|| {
            let detail = format!(
                "the record has none of the fields {}",
                AUTO_FIELDS.join(", ")
            );
            (None, RejectReason::MissingField, detail)
        })?;
    text_of(value, field)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A kept record: its JSON text, as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptRow(pub String);

/// The kept records as one batch: the columns are inferred from the records (every field of
/// every record; a field a record lacks is null there).
pub fn rows_batch(rows: &[KeptRow]) -> Result<RecordBatch, PipelineError> {
    let values: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.0))
        .collect::<Result<_, _>>()
        .map_err(|e| PipelineError::Worker(format!("a kept record is no longer JSON: {e}")))?;
    let schema = infer_json_schema_from_iterator(values.iter().map(|v| Ok(v.clone())))?;
    let schema = Arc::new(schema);
    let mut decoder = ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(&values)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_from_strings_lists_and_messages() {
        let v = json!({"text": "a", "meta": {"t": "b"}, "turns": ["c", "d"],
            "messages": [{"role": "user", "content": "e"}, {"from": "User", "value": "f"}], "n": 3});
        assert_eq!(text_of(&v, "text").unwrap(), "a");
        assert_eq!(text_of(&v, "meta.t").unwrap(), "b");
        assert_eq!(text_of(&v, "turns").unwrap(), "c\nd");
        assert_eq!(text_of(&v, "messages").unwrap(), "e\nf");
        let (_, reason, detail) = text_of(&v, "n").unwrap_err();
        assert_eq!(reason, RejectReason::WrongType);
        assert!(detail.contains("got a number"), "{detail}");
        assert_eq!(
            text_of(&v, "nope").unwrap_err().1,
            RejectReason::MissingField
        );
        assert_eq!(auto_text(&json!({"question": "q"})).unwrap(), "q");
        assert!(auto_text(&json!({"x": "q"})).is_err());
    }

    #[test]
    fn kept_rows_keep_their_columns() {
        let rows = vec![
            KeptRow(json!({"id": "a", "text": "x", "score": 1.5}).to_string()),
            KeptRow(json!({"id": "b", "text": "y"}).to_string()),
        ];
        let batch = rows_batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let names: Vec<&str> = batch
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["id", "text", "score"]);
        assert_eq!(batch.column(2).null_count(), 1);
    }
}
