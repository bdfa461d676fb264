//! A jsonl file split by byte ranges, so that every worker parses a share of one large file.
//!
//! A file of `size` bytes is cut into up to `workers` ranges of at least [`MIN_RANGE_BYTES`];
//! range k of file i belongs to worker (i + k) % workers. A range owns the lines that *start*
//! inside it: its reader skips to the first line start at or after the range's start and reads
//! on past the range's end to finish its last line. Line numbers stay those of the whole file:
//! a line's number is 1 + the newlines before it, and the newlines before a range are the sum
//! of the earlier ranges' counts ([`RangeCount`], one cheap byte scan per range, exchanged
//! between the workers by the dataflow before the parse).

use crate::source::{JsonlParser, RecordShape, SourceOutput};
use crate::storage::{input_error, io_runtime, redact_url, Location};
use crate::PipelineError;
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Files smaller than this per worker are not split further (a range costs a request).
pub const MIN_RANGE_BYTES: u64 = 1 << 20;

/// Environment variable that sets the smallest range instead of [`MIN_RANGE_BYTES`] (every
/// process of a run must see the same value).
pub const RANGE_BYTES_ENV: &str = "STEERFLOW_JSONL_RANGE_BYTES";

/// The smallest range a jsonl file is split into: `$STEERFLOW_JSONL_RANGE_BYTES`, else 1 MiB.
pub fn range_bytes() -> u64 {
    std::env::var(RANGE_BYTES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&b| b > 0)
        .unwrap_or(MIN_RANGE_BYTES)
}

/// The byte ranges of a jsonl file of `size` bytes for `workers` workers: consecutive, covering
/// the file, at least `min_bytes` each (one range for a small or empty file).
pub fn ranges(size: u64, workers: usize, min_bytes: u64) -> Vec<Range<u64>> {
    let n = (size / min_bytes.max(1)).clamp(1, workers.max(1) as u64);
    (0..n).map(|k| size * k / n..size * (k + 1) / n).collect()
}

/// The worker that parses range `range` of file `file`.
pub fn owner(file: usize, range: usize, workers: usize) -> usize {
    (file + range) % workers.max(1)
}

/// How many newlines range `range` of input file `file` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RangeCount {
    pub file: usize,
    pub range: usize,
    pub newlines: u64,
}

/// The newlines in `range` of the file `spec`.
pub fn count_newlines(spec: &str, range: Range<u64>) -> Result<u64, PipelineError> {
    if range.is_empty() {
        return Ok(0);
    }
    let (location, path) = Location::parse_file(spec)?;
    io_runtime()?
        .block_on(async {
            let mut chunks = get_from(&*location.store, &path, GetRange::Bounded(range)).await?;
            let mut newlines = 0u64;
            while let Some(chunk) = chunks.next().await {
                newlines += bytecount(&chunk?);
            }
            Ok::<_, object_store::Error>(newlines)
        })
        .map_err(|e| input_error(redact_url(spec), e))
}

fn bytecount(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

async fn get_from(
    store: &dyn ObjectStore,
    path: &object_store::path::Path,
    range: GetRange,
) -> Result<
    futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    object_store::Error,
> {
    let options = GetOptions {
        range: Some(range),
        ..Default::default()
    };
    Ok(store.get_opts(path, options).await?.into_stream())
}

/// Parses the lines that start in `range` of the file `spec`, numbered as in the whole file:
/// `newlines_before` is the count of newlines before `range.start`.
pub fn parse_range(
    spec: &str,
    range: Range<u64>,
    newlines_before: u64,
    shape: RecordShape,
) -> Result<SourceOutput, PipelineError> {
    let mut parser = JsonlParser::new(spec, shape);
    if range.is_empty() {
        return Ok(parser.finish());
    }
    let (location, path) = Location::parse_file(spec)?;
    // From the byte before the range: a line starts at `range.start` when that byte ends a line.
    let from = range.start.saturating_sub(1);
    let mut at = from;
    let mut started = range.start == 0;
    let mut lines_before = newlines_before;
    parser.set_lines_before(lines_before);
    io_runtime()?
        .block_on(async {
            let mut chunks = get_from(&*location.store, &path, GetRange::Offset(from)).await?;
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                let mut bytes = &chunk[..];
                if !started {
                    // Skip the line that began in the range before, up to its newline.
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        at += bytes.len() as u64;
                        continue;
                    };
                    let newline = at + end as u64;
                    if newline >= range.end {
                        // No line starts in this range.
                        return Ok(());
                    }
                    if newline >= range.start {
                        lines_before += 1;
                    }
                    at = newline + 1;
                    bytes = &bytes[end + 1..];
                    started = true;
                    parser.set_lines_before(lines_before);
                    if at >= range.end {
                        // That newline was the range's last byte: the next line is the next
                        // range's.
                        return Ok(());
                    }
                }
                // Feed up to the newline that ends the last line starting in the range: the
                // first newline at or after the range's last byte.
                let last = range.end - 1;
                let skip = last.saturating_sub(at) as usize;
                let stop = bytes
                    .get(skip..)
                    .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
                    .map(|p| skip + p);
                if let Some(p) = stop {
                    parser.feed(&bytes[..=p]);
                    return Ok(());
                }
                parser.feed(bytes);
                at += bytes.len() as u64;
            }
            // The end of the file: `finish` parses a last line without a newline.
            Ok::<_, object_store::Error>(())
        })
        .map_err(|e| input_error(redact_url(spec), e))?;
    Ok(parser.finish())
}

#[cfg(test)]
#[path = "jsonl_ranges_tests.rs"]
mod tests;
