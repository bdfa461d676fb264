//! `steerflow inspect OUTPUT`: what a steerflow output holds, for any job: the files, each
//! parquet file's schema, row count and first rows, jsonl line counts, and the summary.

use crate::storage::{io_runtime, Location};
use crate::PipelineError;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::fmt::Write;

/// Rows shown per parquet file.
pub const SAMPLE_ROWS: usize = 3;
/// Longest string shown in a sample row.
const MAX_FIELD_CHARS: usize = 120;

fn shorten(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) if s.chars().count() > MAX_FIELD_CHARS => {
            *s = format!("{}…", s.chars().take(MAX_FIELD_CHARS).collect::<String>());
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(shorten),
        serde_json::Value::Object(map) => map.values_mut().for_each(shorten),
        _ => {}
    }
}

/// A text description of the output at `spec` (a directory or URL).
pub fn inspect(spec: &str) -> Result<String, PipelineError> {
    let location = Location::parse(spec, false)?;
    let fail = |message: String| PipelineError::Input {
        location: spec.to_string(),
        message,
    };
    let rt = io_runtime()?;
    let mut objects: Vec<object_store::ObjectMeta> = rt
        .block_on(location.store.list(Some(&location.prefix)).try_collect())
        .map_err(|e| fail(e.to_string()))?;
    if objects.is_empty() {
        return Err(fail("nothing here: not a steerflow output".into()));
    }
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    let relative = |path: &object_store::path::Path| {
        let full = path.as_ref();
        full.strip_prefix(location.prefix.as_ref())
            .unwrap_or(full)
            .trim_start_matches('/')
            .to_string()
    };
    // Run state (plans, parts, markers, manifests) is summarised under Runs, not listed.
    objects.retain(|o| !relative(&o.location).starts_with(&format!("{}/", crate::commit::RUNS)));
    let runs = rt.block_on(crate::commit::list_runs(&location))?;
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", crate::storage::redact_url(spec));
    write_runs(&mut out, &runs);
    let _ = writeln!(out, "## Files\n");
    for o in &objects {
        let _ = writeln!(out, "- {} ({} bytes)", relative(&o.location), o.size);
    }
    for o in &objects {
        let name = relative(&o.location);
        if name.ends_with(".parquet") {
            let bytes = rt
                .block_on(async { location.store.get(&o.location).await?.bytes().await })
                .map_err(|e| fail(e.to_string()))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(|e| fail(format!("{name} is not a readable parquet file: {e}")))?;
            let rows = builder.metadata().file_metadata().num_rows();
            let _ = writeln!(out, "\n## {name}\n\n{rows} rows\n\n### Schema\n");
            for field in builder.schema().fields() {
                let _ = writeln!(out, "- {}: {}", field.name(), field.data_type());
            }
            let mut reader = builder
                .with_batch_size(SAMPLE_ROWS)
                .build()
                .map_err(|e| fail(e.to_string()))?;
            if let Some(batch) = reader.next() {
                let batch = batch.map_err(|e| fail(format!("{name}: {e}")))?;
                let mut writer = arrow::json::ArrayWriter::new(Vec::new());
                writer.write(&batch).map_err(|e| fail(e.to_string()))?;
                writer.finish().map_err(|e| fail(e.to_string()))?;
                let mut sample: serde_json::Value = serde_json::from_slice(&writer.into_inner())
                    .map_err(|e| fail(e.to_string()))?;
                shorten(&mut sample);
                let _ = writeln!(
                    out,
                    "\n### First rows\n\n{}",
                    serde_json::to_string_pretty(&sample).unwrap_or_default()
                );
            }
        } else if name.ends_with(".jsonl") {
            let bytes = rt
                .block_on(async { location.store.get(&o.location).await?.bytes().await })
                .map_err(|e| fail(e.to_string()))?;
            let lines = bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            let _ = writeln!(out, "\n## {name}\n\n{lines} lines");
        }
    }
    if let Some(summary) = objects
        .iter()
        .find(|o| relative(&o.location) == "summary.json")
    {
        let bytes = rt
            .block_on(async { location.store.get(&summary.location).await?.bytes().await })
            .map_err(|e| fail(e.to_string()))?;
        let _ = writeln!(
            out,
            "\n## summary.json\n\n{}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(out)
}

/// The runs of an output, committed or not, one line each.
fn write_runs(out: &mut String, runs: &[crate::commit::RunListing]) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(out, "## Runs\n");
    for run in runs {
        match &run.manifest {
            Some(m) => {
                let counts: Vec<String> = m
                    .counts
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, v)| v.is_number())
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "- {}: committed {}, {} records, {} files ({})",
                    m.run_id,
                    m.committed_at,
                    m.prompts.len(),
                    m.files.len() + m.other_files.len(),
                    counts.join(", ")
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "- {}: not committed ({} shards done); rerun its command to finish it",
                    run.run_id, run.shards_done
                );
            }
        }
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;

    #[test]
    fn describes_files_schema_rows_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(500);
        let batch = RecordBatch::try_from_iter([
            (
                "prompt_id",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as ArrayRef,
            ),
            (
                "text",
                Arc::new(StringArray::from(vec![long.as_str(), "t", "u", "v"])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
        ])
        .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("data/train-00000-of-00001.parquet"),
            crate::sink::parquet_bytes(&batch).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("summary.json"),
            "{\"counts\": {\"pairs\": 4}}",
        )
        .unwrap();
        std::fs::write(dir.path().join("annotated.jsonl"), "{}\n{}\n").unwrap();
        let text = inspect(dir.path().to_str().unwrap()).unwrap();
        assert!(text.contains("4 rows"), "{text}");
        assert!(
            text.contains("- prompt_id: Utf8") && text.contains("- n: Int64"),
            "{text}"
        );
        assert!(
            text.contains("\"prompt_id\": \"c\"") && !text.contains("\"prompt_id\": \"d\""),
            "3 sample rows: {text}"
        );
        assert!(
            !text.contains(&long) && text.contains('…'),
            "long strings are shortened"
        );
        assert!(text.contains("## annotated.jsonl\n\n2 lines"), "{text}");
        assert!(text.contains("\"pairs\": 4"), "{text}");
        let err = inspect("/nonexistent/out").unwrap_err().to_string();
        assert!(err.contains("no such directory"), "{err}");
    }
}
