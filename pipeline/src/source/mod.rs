//! Prompt sources: jsonl or parquet, local or object storage.
//!
//! A record is `{"prompt": "..."}` or `{"messages": [{"role", "content"}, ...]}` with an optional
//! `id` (string or integer; else a hash of the messages). Other fields are ignored. A record that
//! cannot be used becomes a [`Reject`] naming the file, line or row, field and reason; the rest go on.

mod conversation;

use crate::reject::{Reject, RejectReason};
use crate::PipelineError;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use conversation::validate_messages;
pub use conversation::{conversation, record_id, FieldError, RecordShape};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use std::collections::HashSet;
use steerflow_operators::records::{Message, Prompt, SourcePosition};
use steerflow_operators::seeding::prompt_id_from_messages;

/// What a source produced: usable prompts in input order, and rejects.
#[derive(Debug, Default)]
pub struct SourceOutput {
    pub prompts: Vec<Prompt>,
    pub rejects: Vec<Reject>,
    /// Records seen (prompts plus rejects).
    pub records: u64,
}

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Jsonl,
    Parquet,
}

impl InputFormat {
    /// `auto` picks by extension.
    pub fn resolve(name: &str, path: &str) -> Result<Self, String> {
        match name {
            "jsonl" => Ok(Self::Jsonl),
            "parquet" => Ok(Self::Parquet),
            "auto" if path.ends_with(".parquet") => Ok(Self::Parquet),
            "auto" if path.ends_with(".jsonl") || path.ends_with(".json") => Ok(Self::Jsonl),
            "auto" => Err(format!(
                "cannot tell the format of `{path}` from its extension; set input.format"
            )),
            other => Err(format!(
                "unknown input format `{other}` (jsonl, parquet, auto)"
            )),
        }
    }
}

/// Reads every prompt of `spec` (a path or URL to one file).
pub fn read_prompts(
    spec: &str,
    format: InputFormat,
    shape: RecordShape,
) -> Result<SourceOutput, PipelineError> {
    let fail = |message: String| PipelineError::Input {
        location: spec.to_string(),
        message,
    };
    let mut out = match format {
        InputFormat::Jsonl => stream_jsonl(spec, shape)?,
        InputFormat::Parquet => {
            parse_parquet(spec, crate::storage::read_file(spec)?, shape).map_err(fail)?
        }
    };
    reject_duplicate_ids(spec, &mut out);
    Ok(out)
}

/// Parses jsonl bytes; blank lines hold no record and are skipped.
pub fn parse_jsonl(file: &str, bytes: &[u8], shape: RecordShape) -> SourceOutput {
    let mut parser = JsonlParser::new(file, shape);
    parser.feed(bytes);
    parser.finish()
}

/// Parses jsonl as it streams in, chunk by chunk, holding only the line being completed: the
/// same records and rejects as [`parse_jsonl`] on the whole file, wherever the chunks split.
pub struct JsonlParser {
    file: String,
    shape: RecordShape,
    out: SourceOutput,
    /// The start of a line whose end has not arrived yet.
    pending: Vec<u8>,
    line_no: u64,
}

impl JsonlParser {
    pub fn new(file: &str, shape: RecordShape) -> Self {
        Self {
            file: file.to_string(),
            shape,
            out: SourceOutput::default(),
            pending: Vec::new(),
            line_no: 0,
        }
    }

    /// Numbers the next line `lines + 1`: for a reader that starts inside a file, after `lines`
    /// lines it does not parse.
    pub fn set_lines_before(&mut self, lines: u64) {
        self.line_no = lines;
    }

    /// Parses every line that `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if b != b'\n' {
                continue;
            }
            if self.pending.is_empty() {
                self.line(&chunk[start..i], false);
            } else {
                self.pending.extend_from_slice(&chunk[start..i]);
                let line = std::mem::take(&mut self.pending);
                self.line(&line, false);
            }
            start = i + 1;
        }
        self.pending.extend_from_slice(&chunk[start..]);
    }

    /// Parses the last line (one without a final newline may be cut off) and returns all.
    pub fn finish(mut self) -> SourceOutput {
        let line = std::mem::take(&mut self.pending);
        self.line(&line, true);
        self.out
    }

    fn line(&mut self, raw: &[u8], unterminated: bool) {
        self.line_no += 1;
        let (file, line_no, out) = (self.file.as_str(), self.line_no, &mut self.out);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        out.records += 1;
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(e) => {
                out.rejects.push(Reject::new(
                    file,
                    line_no,
                    None,
                    RejectReason::InvalidUtf8,
                    format!("invalid UTF-8: {e}"),
                ));
                return;
            }
        };
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let (reason, detail) = if unterminated && e.is_eof() {
                    (
                        RejectReason::TruncatedLine,
                        format!("the last line is cut off: {e}"),
                    )
                } else {
                    (RejectReason::InvalidJson, format!("invalid JSON: {e}"))
                };
                out.rejects
                    .push(Reject::new(file, line_no, None, reason, detail));
                return;
            }
        };
        let position = SourcePosition {
            file: file.to_string(),
            record: line_no,
        };
        match prompt_from_json(&value, position, self.shape) {
            Ok(p) => out.prompts.push(p),
            Err((field, reason, detail)) => out.rejects.push(
                Reject::new(file, line_no, field, reason, detail).with_prompt_id(record_id(&value)),
            ),
        }
    }
}

/// Streams a jsonl object through a [`JsonlParser`]: the raw file is never held whole.
pub(crate) fn stream_jsonl(spec: &str, shape: RecordShape) -> Result<SourceOutput, PipelineError> {
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    let (location, file) = crate::storage::Location::parse_file(spec)?;
    let mut parser = JsonlParser::new(spec, shape);
    crate::storage::io_runtime()?
        .block_on(async {
            let mut chunks = location.store.get(&file).await?.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk: bytes::Bytes = chunk?;
                parser.feed(&chunk);
            }
            Ok::<_, object_store::Error>(())
        })
        .map_err(|e| crate::storage::input_error(spec.to_string(), e))?;
    Ok(parser.finish())
}

fn prompt_from_json(
    value: &Value,
    source: SourcePosition,
    shape: RecordShape,
) -> Result<Prompt, FieldError> {
    let (id, messages) = conversation(value, shape)?;
    let id = id.unwrap_or_else(|| prompt_id_from_messages(&messages));
    Ok(Prompt {
        id,
        messages,
        source,
    })
}

/// Parses a parquet file of prompts (columns `prompt` or `messages`, optional `id`).
pub fn parse_parquet(
    file: &str,
    bytes: bytes::Bytes,
    shape: RecordShape,
) -> Result<SourceOutput, String> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| format!("not a readable parquet file: {e}"))?;
    let reader = builder.build().map_err(|e| e.to_string())?;
    let mut out = SourceOutput::default();
    let mut row: u64 = 0;
    for batch in reader {
        let batch = batch.map_err(|e| format!("corrupt parquet data after row {row}: {e}"))?;
        parse_batch(file, &batch, &mut row, &mut out, shape)?;
    }
    Ok(out)
}

fn string_at(array: &dyn Array, i: usize) -> Option<String> {
    if array.is_null(i) {
        return None;
    }
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(array.as_string_view().value(i).to_string()),
        DataType::Int64 => Some(
            array
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(i)
                .to_string(),
        ),
        DataType::Int32 => Some(
            array
                .as_primitive::<arrow::datatypes::Int32Type>()
                .value(i)
                .to_string(),
        ),
        DataType::UInt64 => Some(
            array
                .as_primitive::<arrow::datatypes::UInt64Type>()
                .value(i)
                .to_string(),
        ),
        _ => None,
    }
}

/// Parses one parquet batch whose first row is `row` (0-based in its file).
pub(crate) fn parse_batch(
    file: &str,
    batch: &RecordBatch,
    row: &mut u64,
    out: &mut SourceOutput,
    shape: RecordShape,
) -> Result<(), String> {
    let schema = batch.schema();
    let id_col = batch.column_by_name("id");
    let response_col = batch
        .column_by_name("response")
        .filter(|_| shape == RecordShape::Response);
    let prompt_col = batch.column_by_name("prompt");
    let messages_col = batch.column_by_name("messages");
    if prompt_col.is_none() && messages_col.is_none() {
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(format!(
            "schema mismatch: no `prompt` or `messages` column (columns: {})",
            columns.join(", ")
        ));
    }
    for i in 0..batch.num_rows() {
        let record = *row;
        *row += 1;
        out.records += 1;
        let position = SourcePosition {
            file: file.to_string(),
            record,
        };
        let result =
            prompt_from_row(id_col, prompt_col, messages_col, i, position).and_then(|mut p| {
                if let Some(col) = response_col.filter(|c| !c.is_null(i)) {
                    let text = string_at(col.as_ref(), i).ok_or((
                        Some("response"),
                        RejectReason::WrongType,
                        format!(
                            "`response` must be a string column, not {}",
                            col.data_type()
                        ),
                    ))?;
                    p.messages.push(Message::new("assistant", text));
                    p.id = if id_col.is_some_and(|c| !c.is_null(i)) {
                        p.id
                    } else {
                        prompt_id_from_messages(&p.messages)
                    };
                }
                validate_messages(&p.messages, shape)?;
                Ok(p)
            });
        match result {
            Ok(p) => out.prompts.push(p),
            Err((field, reason, detail)) => {
                let id = id_col
                    .filter(|c| !c.is_null(i))
                    .and_then(|c| string_at(c.as_ref(), i))
                    .filter(|id| !id.is_empty());
                out.rejects
                    .push(Reject::new(file, record, field, reason, detail).with_prompt_id(id))
            }
        }
    }
    Ok(())
}

fn prompt_from_row(
    id_col: Option<&arrow::array::ArrayRef>,
    prompt_col: Option<&arrow::array::ArrayRef>,
    messages_col: Option<&arrow::array::ArrayRef>,
    i: usize,
    source: SourcePosition,
) -> Result<Prompt, FieldError> {
    let id = match id_col {
        Some(col) if !col.is_null(i) => Some(string_at(col.as_ref(), i).ok_or((
            Some("id"),
            RejectReason::WrongType,
            format!(
                "`id` must be a string or integer column, not {}",
                col.data_type()
            ),
        ))?),
        _ => None,
    };
    let prompt = prompt_col.filter(|c| !c.is_null(i));
    let messages = messages_col.filter(|c| !c.is_null(i));
    let messages = match (prompt, messages) {
        (Some(_), Some(_)) => {
            return Err((
                Some("prompt"),
                RejectReason::Ambiguous,
                "a row has either `prompt` or `messages`, not both".into(),
            ))
        }
        (Some(col), None) => {
            let text = string_at(col.as_ref(), i).ok_or((
                Some("prompt"),
                RejectReason::WrongType,
                format!("`prompt` must be a string column, not {}", col.data_type()),
            ))?;
            vec![Message::new("user", text)]
        }
        (None, Some(col)) => messages_at(col.as_ref(), i)?,
        (None, None) => {
            return Err((
                Some("prompt"),
                RejectReason::MissingField,
                "both `prompt` and `messages` are null".into(),
            ))
        }
    };
    let id = id
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| prompt_id_from_messages(&messages));
    Ok(Prompt {
        id,
        messages,
        source,
    })
}

fn messages_at(col: &dyn Array, i: usize) -> Result<Vec<Message>, FieldError> {
    let wrong = || {
        (
            Some("messages"),
            RejectReason::WrongType,
            format!(
                "`messages` must be a list of structs with string `role` and `content`, not {}",
                col.data_type()
            ),
        )
    };
    let list = match col.data_type() {
        DataType::List(_) => col.as_list::<i32>().value(i),
        DataType::LargeList(_) => col.as_list::<i64>().value(i),
        _ => return Err(wrong()),
    };
    let items = list.as_struct_opt().ok_or_else(wrong)?;
    let roles = items.column_by_name("role").ok_or_else(wrong)?;
    let contents = items.column_by_name("content").ok_or_else(wrong)?;
    (0..items.len())
        .map(|k| {
            match (
                string_at(roles.as_ref(), k),
                string_at(contents.as_ref(), k),
            ) {
                (Some(r), Some(c)) => Ok(Message::new(r, c)),
                _ => Err((
                    Some("messages"),
                    RejectReason::WrongType,
                    format!("messages[{k}] has a null or non-string role or content"),
                )),
            }
        })
        .collect()
}

/// Keeps the first record of each prompt id and rejects the others.
fn reject_duplicate_ids(file: &str, out: &mut SourceOutput) {
    let mut seen = HashSet::new();
    let mut kept = Vec::with_capacity(out.prompts.len());
    for p in std::mem::take(&mut out.prompts) {
        if seen.insert(p.id.clone()) {
            kept.push(p);
        } else {
            let mut r = Reject::new(
                file,
                p.source.record,
                Some("id"),
                RejectReason::DuplicateId,
                format!("prompt id `{}` appeared before; the first is kept", p.id),
            );
            r.prompt_id = Some(p.id);
            out.rejects.push(r);
        }
    }
    out.prompts = kept;
}

#[cfg(test)]
mod tests;
