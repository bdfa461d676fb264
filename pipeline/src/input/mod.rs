//! The input of a run, split so that no worker reads all of it: a jsonl file's byte ranges
//! ([`jsonl_ranges`]) and a parquet file's row groups are spread over the workers (each fetches
//! only its own byte ranges), and a folder of files spreads its files.
//!
//! `input.path` is one file, or a folder (a local directory, or a URL ending in `/`) whose
//! `.jsonl`, `.json` and `.parquet` files are read in name order.

pub mod jsonl_ranges;

pub use jsonl_ranges::RangeCount;

use crate::source::{parse_batch, InputFormat, RecordShape, SourceOutput};
use crate::storage::{input_error, io_runtime, Location};
use crate::PipelineError;
use object_store::ObjectStoreExt;
// parquet 60 deprecates its object_store reader in favour of hand-written `AsyncFileReader`s; it
// is still the crate's own range-fetching reader, so it is used until its replacement lands.
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use serde::{Deserialize, Serialize};

/// One input file and what identifies its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// As rejects and positions name it: the path or URL.
    pub spec: String,
    pub parquet: bool,
    pub size: u64,
    /// The store's e-tag, else the modification time.
    pub version: String,
}

/// Whether `input.path` names a folder: a local directory, or a URL ending in `/`.
pub fn is_folder(spec: &str) -> bool {
    if spec.contains("://") && !spec.starts_with("file://") {
        return spec.ends_with('/');
    }
    std::path::Path::new(spec.trim_start_matches("file://")).is_dir()
}

/// The files of `spec` (one file, or a folder's data files in name order) with their versions.
pub fn list_input(spec: &str, format: &str) -> Result<Vec<InputFile>, PipelineError> {
    let rt = io_runtime()?;
    let fail = |message: String| PipelineError::Input {
        location: crate::storage::redact_url(spec),
        message,
    };
    let describe = |file: String,
                    size: u64,
                    e_tag: Option<String>,
                    modified: chrono::DateTime<chrono::Utc>|
     -> Result<InputFile, PipelineError> {
        let parquet = InputFormat::resolve(format, &file).map_err(fail)? == InputFormat::Parquet;
        Ok(InputFile {
            version: e_tag.unwrap_or_else(|| modified.to_rfc3339()),
            size,
            parquet,
            spec: file,
        })
    };
    if is_folder(spec) {
        let location = Location::parse(spec, false)?;
        let mut files = Vec::new();
        for object in rt.block_on(location.list(""))? {
            let name = object.path.as_str();
            let data = [".jsonl", ".json", ".parquet"]
                .iter()
                .any(|ext| name.ends_with(ext));
            if !data
                || name
                    .split('/')
                    .any(|part| part.starts_with('.') || part.starts_with('_'))
            {
                continue;
            }
            let file = format!("{}/{}", spec.trim_end_matches('/'), object.path);
            files.push(describe(
                file,
                object.size,
                object.e_tag,
                object.last_modified,
            )?);
        }
        if files.is_empty() {
            return Err(fail(
                "the folder holds no .jsonl, .json or .parquet file".into(),
            ));
        }
        return Ok(files);
    }
    let (location, path) = Location::parse_file(spec)?;
    let meta = rt
        .block_on(location.store.head(&path))
        .map_err(|e| input_error(crate::storage::redact_url(spec), e))?;
    Ok(vec![describe(
        spec.to_string(),
        meta.size,
        meta.e_tag,
        meta.last_modified,
    )?])
}

/// A digest of the files and their versions: the input's identity for run ids.
pub fn input_identity(files: &[InputFile]) -> String {
    crate::digest::digest(serde_json::to_string(files).unwrap_or_default().as_bytes())
}

/// Reads the part of the input that worker `worker` of `workers` owns: range k of jsonl file i
/// when (i + k) % workers == worker ([`jsonl_ranges`]), and row group j of parquet file i when
/// (i + j) % workers == worker. Records keep their file and line (jsonl, from 1) or row
/// (parquet, from 0). `counts` holds the newline counts of the jsonl ranges before this
/// worker's ([`count_own_ranges`] of every worker); [`read_share_alone`] counts them itself.
pub fn read_share(
    files: &[InputFile],
    worker: usize,
    workers: usize,
    shape: RecordShape,
    counts: &[RangeCount],
) -> Result<SourceOutput, PipelineError> {
    read_share_with(
        files,
        worker,
        workers,
        shape,
        counts,
        jsonl_ranges::range_bytes(),
    )
}

/// [`read_share`] for a reader with no peers to exchange range counts with (tests, dry runs):
/// it counts the newlines before its ranges itself.
pub fn read_share_alone(
    files: &[InputFile],
    worker: usize,
    workers: usize,
    shape: RecordShape,
) -> Result<SourceOutput, PipelineError> {
    let counts = (0..workers)
        .map(|w| count_own_ranges(files, w, workers))
        .collect::<Result<Vec<_>, _>>()?;
    read_share(files, worker, workers, shape, &counts.concat())
}

/// The newline counts of the jsonl ranges that `worker` reads.
pub fn count_own_ranges(
    files: &[InputFile],
    worker: usize,
    workers: usize,
) -> Result<Vec<RangeCount>, PipelineError> {
    count_own_ranges_with(files, worker, workers, jsonl_ranges::range_bytes())
}

fn count_own_ranges_with(
    files: &[InputFile],
    worker: usize,
    workers: usize,
    min_bytes: u64,
) -> Result<Vec<RangeCount>, PipelineError> {
    let mut counts = Vec::new();
    for (i, file) in files.iter().enumerate().filter(|(_, f)| !f.parquet) {
        let ranges = jsonl_ranges::ranges(file.size, workers, min_bytes);
        // The last range's count is nobody's offset.
        for (k, range) in ranges.iter().enumerate().take(ranges.len() - 1) {
            if jsonl_ranges::owner(i, k, workers) == worker {
                counts.push(RangeCount {
                    file: i,
                    range: k,
                    newlines: jsonl_ranges::count_newlines(&file.spec, range.clone())?,
                });
            }
        }
    }
    Ok(counts)
}

fn read_share_with(
    files: &[InputFile],
    worker: usize,
    workers: usize,
    shape: RecordShape,
    counts: &[RangeCount],
    min_bytes: u64,
) -> Result<SourceOutput, PipelineError> {
    let mut out = SourceOutput::default();
    for (i, file) in files.iter().enumerate() {
        let mut parts = Vec::new();
        if file.parquet {
            parts.push(read_row_groups(file, i, worker, workers, shape)?);
        } else {
            let ranges = jsonl_ranges::ranges(file.size, workers, min_bytes);
            for (k, range) in ranges.into_iter().enumerate() {
                if jsonl_ranges::owner(i, k, workers) != worker {
                    continue;
                }
                let before = (0..k)
                    .map(|earlier| {
                        counts
                            .iter()
                            .find(|c| c.file == i && c.range == earlier)
                            .map(|c| c.newlines)
                            .ok_or_else(|| {
                                PipelineError::Worker(format!(
                                    "a worker could not read the newline count of range \
                                     {earlier} of {}",
                                    crate::storage::redact_url(&file.spec)
                                ))
                            })
                    })
                    .sum::<Result<u64, _>>()?;
                parts.push(jsonl_ranges::parse_range(&file.spec, range, before, shape)?);
            }
        }
        for part in parts {
            out.records += part.records;
            out.prompts.extend(part.prompts);
            out.rejects.extend(part.rejects);
        }
    }
    Ok(out)
}

/// The row groups of parquet file `index` that belong to `worker`, fetched by range.
#[allow(deprecated)]
fn read_row_groups(
    file: &InputFile,
    index: usize,
    worker: usize,
    workers: usize,
    shape: RecordShape,
) -> Result<SourceOutput, PipelineError> {
    use futures::TryStreamExt;
    let (location, path) = Location::parse_file(&file.spec)?;
    let fail = |message: String| PipelineError::Input {
        location: crate::storage::redact_url(&file.spec),
        message,
    };
    let rt = io_runtime()?;
    rt.block_on(async {
        // The footer is fetched once; each row group then reuses it.
        let mut reader =
            ParquetObjectReader::new(location.store.clone(), path).with_file_size(file.size);
        let metadata = ArrowReaderMetadata::load_async(&mut reader, Default::default())
            .await
            .map_err(|e| fail(format!("not a readable parquet file: {e}")))?;
        let groups: Vec<i64> = metadata
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        let mut out = SourceOutput::default();
        let mut first_row = 0u64;
        let mut mine = Vec::new();
        for (j, rows) in groups.iter().enumerate() {
            if (index + j) % workers == worker {
                mine.push((j, first_row));
            }
            first_row += *rows as u64;
        }
        for (j, start) in mine {
            let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(
                reader.clone(),
                metadata.clone(),
            )
            .with_row_groups(vec![j])
            .build()
            .map_err(|e| fail(e.to_string()))?;
            let mut row = start;
            while let Some(batch) = stream
                .try_next()
                .await
                .map_err(|e| fail(format!("corrupt parquet data after row {row}: {e}")))?
            {
                parse_batch(&file.spec, &batch, &mut row, &mut out, shape).map_err(fail)?;
            }
        }
        Ok::<_, PipelineError>(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_record_once() {
        let dir = tempfile::tempdir().unwrap();
        // A parquet file of 5 row groups and two jsonl files in a folder.
        let rows: Vec<String> = (0..23).map(|i| format!("prompt {i}")).collect();
        let batch = arrow::array::RecordBatch::try_from_iter([(
            "prompt",
            std::sync::Arc::new(arrow::array::StringArray::from(rows)) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let mut bytes = Vec::new();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(5))
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        std::fs::write(dir.path().join("b.parquet"), bytes).unwrap();
        std::fs::write(
            dir.path().join("a.jsonl"),
            "{\"prompt\": \"x\"}\n{\"prompt\": 1}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("c.jsonl"), "{\"prompt\": \"y\"}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let spec = dir.path().to_str().unwrap();
        let files = list_input(spec, "auto").unwrap();
        assert_eq!(files.len(), 3);
        let whole = read_share_alone(&files, 0, 1, RecordShape::Prompt).unwrap();
        assert_eq!(whole.records, 26);
        for workers in [2, 3, 4] {
            let mut rows: Vec<(String, u64)> = Vec::new();
            let mut records = 0;
            // jsonl ranges of at least 8 bytes: the 2-line file is split too.
            let counts: Vec<RangeCount> = (0..workers)
                .flat_map(|w| count_own_ranges_with(&files, w, workers, 8).unwrap())
                .collect();
            for w in 0..workers {
                let share =
                    read_share_with(&files, w, workers, RecordShape::Prompt, &counts, 8).unwrap();
                records += share.records;
                rows.extend(
                    share
                        .prompts
                        .iter()
                        .map(|p| (p.source.file.clone(), p.source.record)),
                );
                rows.extend(share.rejects.iter().map(|r| (r.file.clone(), r.record)));
            }
            rows.sort();
            let mut expected: Vec<(String, u64)> = whole
                .prompts
                .iter()
                .map(|p| (p.source.file.clone(), p.source.record))
                .chain(whole.rejects.iter().map(|r| (r.file.clone(), r.record)))
                .collect();
            expected.sort();
            assert_eq!(records, 26, "{workers} workers");
            assert_eq!(rows, expected, "{workers} workers");
        }
        let parquet_rows: Vec<u64> = whole
            .prompts
            .iter()
            .filter(|p| p.source.file.ends_with(".parquet"))
            .map(|p| p.source.record)
            .collect();
        assert_eq!(
            parquet_rows,
            (0..23).collect::<Vec<_>>(),
            "rows keep their file position"
        );
    }
}
