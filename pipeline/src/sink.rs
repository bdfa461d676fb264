//! The dataset sink: preference pairs as a Hugging Face dataset folder.
//!
//! `data/train-0000k-of-0000n.parquet` in TRL's conversational preference format (`prompt`,
//! `chosen`, `rejected` as message lists) with scores, attributes and run parameters as extra
//! columns; `README.md` whose YAML `configs` lists exactly the files written; `summary.json`;
//! `rejects/rejects.jsonl` when any record was rejected.
//!
//! Each shard is written whole with a single put, so a reader never sees half a file; the README
//! is written last, after every shard, so it only ever lists complete files.

use crate::graph::PromptOutcome;
use crate::spec::{Normalization, RunSpec};
use crate::storage::Location;
use crate::PipelineError;
use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use steerflow_operators::normalize::{normalize_goodness, NormStats};
use steerflow_operators::records::Message;

/// Rows per parquet row group.
pub const ROW_GROUP_SIZE: usize = 10_000;

/// A parquet file the run wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// Ids of the models, written into every row.
#[derive(Debug, Clone)]
pub struct ModelIds {
    pub policy: String,
    pub scorer: String,
    pub attribute_names: Vec<String>,
}

/// The path of shard `k` of `n`, as the Hugging Face hub names split files.
pub fn shard_path(k: usize, n: usize) -> String {
    format!("data/train-{k:05}-of-{n:05}.parquet")
}

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

fn messages_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(message_fields()),
        false,
    )))
}

fn attributes_type(names: &[String]) -> DataType {
    DataType::Struct(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Float64, true))
            .collect(),
    )
}

/// The schema of a pairs shard.
pub fn pairs_schema(attribute_names: &[String]) -> Arc<Schema> {
    let f64_col = |name: &str| Field::new(name, DataType::Float64, true);
    Arc::new(Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("prompt", messages_type(), false),
        Field::new("chosen", messages_type(), false),
        Field::new("rejected", messages_type(), false),
        f64_col("chosen_score"),
        f64_col("rejected_score"),
        f64_col("margin"),
        f64_col("chosen_normalized_score"),
        f64_col("rejected_normalized_score"),
        Field::new("chosen_attributes", attributes_type(attribute_names), false),
        Field::new(
            "rejected_attributes",
            attributes_type(attribute_names),
            false,
        ),
        Field::new("chosen_sample_index", DataType::Int32, false),
        Field::new("rejected_sample_index", DataType::Int32, false),
        Field::new("chosen_finish_reason", DataType::Utf8, false),
        Field::new("rejected_finish_reason", DataType::Utf8, false),
        Field::new("n_samples", DataType::Int32, false),
        Field::new("policy", DataType::Utf8, false),
        Field::new("scorer", DataType::Utf8, false),
        Field::new("temperature", DataType::Float64, false),
        Field::new("top_p", DataType::Float64, false),
        Field::new("top_k", DataType::Int64, false),
        Field::new("max_new_tokens", DataType::Int64, false),
        Field::new("seed", DataType::UInt64, false),
    ]))
}

fn messages_array(rows: &[Vec<Message>]) -> ListArray {
    let roles = StringArray::from_iter_values(rows.iter().flatten().map(|m| m.role.as_str()));
    let contents = StringArray::from_iter_values(rows.iter().flatten().map(|m| m.content.as_str()));
    let values = StructArray::new(
        message_fields(),
        vec![Arc::new(roles) as ArrayRef, Arc::new(contents)],
        None,
    );
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(Vec::len));
    ListArray::new(
        Arc::new(Field::new(
            "item",
            DataType::Struct(message_fields()),
            false,
        )),
        offsets,
        Arc::new(values),
        None,
    )
}

fn attributes_array(names: &[String], rows: &[&[f64]]) -> StructArray {
    let fields: Fields = names
        .iter()
        .map(|n| Field::new(n, DataType::Float64, true))
        .collect();
    let columns: Vec<ArrayRef> = (0..names.len())
        .map(|k| Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r[k]))) as ArrayRef)
        .collect();
    StructArray::new(fields, columns, None)
}

/// Normalised goodness of `goodness` under the run's normalisation mode.
fn normalized(
    goodness: f64,
    mode: &Normalization,
    run: Option<&NormStats>,
    prompt: Option<&NormStats>,
) -> Option<f64> {
    let stats = match mode {
        Normalization::Reference(s) => Some(s),
        Normalization::Run => run,
        Normalization::PerPrompt => prompt,
    }?;
    goodness
        .is_finite()
        .then(|| normalize_goodness(goodness, stats))
}

/// One shard's rows as an Arrow batch; `outcomes` must hold pairs only, sorted by prompt id.
pub fn pairs_batch(
    outcomes: &[&PromptOutcome],
    spec: &RunSpec,
    ids: &ModelIds,
    run_stats: Option<&NormStats>,
) -> Result<RecordBatch, PipelineError> {
    let mut prompts = Vec::new();
    let mut chosen = Vec::new();
    let mut rejected = Vec::new();
    let (mut cs, mut rs, mut margin, mut cn, mut rn) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut ca, mut ra, mut ci, mut ri, mut cf, mut rf, mut n) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for o in outcomes {
        let Some((c, r, m)) = o.pair else { continue };
        let (c, r) = (&o.samples[c], &o.samples[r]);
        prompts.push(o.prompt.messages.clone());
        chosen.push(vec![Message::new("assistant", c.sample.text.clone())]);
        rejected.push(vec![Message::new("assistant", r.sample.text.clone())]);
        cs.push(c.goodness);
        rs.push(r.goodness);
        margin.push(m);
        cn.push(normalized(
            c.goodness,
            &spec.normalization,
            run_stats,
            o.prompt_stats.as_ref(),
        ));
        rn.push(normalized(
            r.goodness,
            &spec.normalization,
            run_stats,
            o.prompt_stats.as_ref(),
        ));
        ca.push(c.attributes.as_slice());
        ra.push(r.attributes.as_slice());
        ci.push(c.sample.sample_index as i32);
        ri.push(r.sample.sample_index as i32);
        cf.push(c.sample.finish.as_str());
        rf.push(r.sample.finish.as_str());
        n.push((o.samples.len() - o.non_finite) as i32);
    }
    let rows = prompts.len();
    let repeat_str =
        |s: &str| Arc::new(StringArray::from_iter_values(std::iter::repeat_n(s, rows))) as ArrayRef;
    let sampling = &spec.generation.sampling;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            outcomes
                .iter()
                .filter(|o| o.pair.is_some())
                .map(|o| o.prompt.id.as_str()),
        )),
        Arc::new(messages_array(&prompts)),
        Arc::new(messages_array(&chosen)),
        Arc::new(messages_array(&rejected)),
        Arc::new(Float64Array::from(cs)),
        Arc::new(Float64Array::from(rs)),
        Arc::new(Float64Array::from(margin)),
        Arc::new(Float64Array::from(cn)),
        Arc::new(Float64Array::from(rn)),
        Arc::new(attributes_array(&ids.attribute_names, &ca)),
        Arc::new(attributes_array(&ids.attribute_names, &ra)),
        Arc::new(Int32Array::from(ci)),
        Arc::new(Int32Array::from(ri)),
        Arc::new(StringArray::from(cf)),
        Arc::new(StringArray::from(rf)),
        Arc::new(Int32Array::from(n)),
        repeat_str(&ids.policy),
        repeat_str(&ids.scorer),
        Arc::new(Float64Array::from(vec![sampling.temperature; rows])),
        Arc::new(Float64Array::from(vec![sampling.top_p; rows])),
        Arc::new(Int64Array::from(vec![sampling.top_k as i64; rows])),
        Arc::new(Int64Array::from(vec![
            spec.generation.max_new_tokens as i64;
            rows
        ])),
        Arc::new(UInt64Array::from(vec![spec.seed; rows])),
    ];
    Ok(RecordBatch::try_new(
        pairs_schema(&ids.attribute_names),
        columns,
    )?)
}

/// Encodes a batch as a parquet file in memory (snappy, bounded row groups).
pub fn parquet_bytes(batch: &RecordBatch) -> Result<Vec<u8>, PipelineError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_SIZE))
        .build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(buffer)
}

/// Writes the shards owned by worker `index` of `peers` (shard k belongs to worker k % peers,
/// the same rule timely's exchange uses), each with its pairs sorted by prompt id.
pub fn write_worker_shards(
    output: &Location,
    spec: &RunSpec,
    ids: &ModelIds,
    index: usize,
    peers: usize,
    outcomes: &[PromptOutcome],
    run_stats: Option<&NormStats>,
) -> Result<Vec<ShardFile>, PipelineError> {
    let rt = crate::storage::io_runtime()?;
    let mut files = Vec::new();
    for shard in (0..spec.shards).filter(|k| k % peers == index) {
        let mut rows: Vec<&PromptOutcome> = outcomes
            .iter()
            .filter(|o| {
                o.pair.is_some()
                    && steerflow_operators::seeding::shard_of(&o.prompt.id, spec.shards) == shard
            })
            .collect();
        rows.sort_by(|a, b| a.prompt.id.cmp(&b.prompt.id));
        let batch = pairs_batch(&rows, spec, ids, run_stats)?;
        let bytes = parquet_bytes(&batch)?;
        let path = shard_path(shard, spec.shards);
        let size = bytes.len() as u64;
        rt.block_on(output.put(&path, bytes))?;
        files.push(ShardFile {
            path,
            rows: batch.num_rows() as u64,
            bytes: size,
        });
    }
    Ok(files)
}

/// The dataset card: YAML `configs` listing exactly `files`, then a description.
pub fn dataset_readme(
    files: &[ShardFile],
    description: &str,
    summary: &serde_json::Value,
) -> String {
    let mut out = String::from(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path:\n",
    );
    for f in files {
        out.push_str(&format!("    - {}\n", f.path));
    }
    out.push_str("---\n\n# Preference pairs generated by steerflow\n\n");
    out.push_str(description);
    out.push_str("\n\nColumns follow TRL's conversational preference format (`prompt`, `chosen`, `rejected` as message lists),\n");
    out.push_str("with goodness scores, per-attribute scores and the sampling parameters as extra columns.\n\n");
    out.push_str("## Files\n\n| file | rows |\n|---|---|\n");
    for f in files {
        out.push_str(&format!("| `{}` | {} |\n", f.path, f.rows));
    }
    out.push_str("\n## Summary\n\n```json\n");
    out.push_str(&serde_json::to_string_pretty(summary).unwrap_or_default());
    out.push_str("\n```\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_follow_the_hub() {
        assert_eq!(shard_path(0, 4), "data/train-00000-of-00004.parquet");
        assert_eq!(shard_path(12, 100), "data/train-00012-of-00100.parquet");
    }

    #[test]
    fn readme_lists_exactly_the_files() {
        let files = vec![
            ShardFile {
                path: shard_path(0, 2),
                rows: 3,
                bytes: 10,
            },
            ShardFile {
                path: shard_path(1, 2),
                rows: 4,
                bytes: 10,
            },
        ];
        let readme = dataset_readme(&files, "demo", &serde_json::json!({"pairs": 7}));
        assert!(readme.starts_with("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path:\n    - data/train-00000-of-00002.parquet\n    - data/train-00001-of-00002.parquet\n---\n"));
    }

    #[test]
    fn normalisation_modes() {
        let reference = NormStats::reference(1.0, 2.0).unwrap();
        let run = NormStats::from_values([0.0, 2.0]).unwrap();
        let prompt = NormStats::from_values([5.0, 5.0]).unwrap();
        assert_eq!(
            normalized(
                3.0,
                &Normalization::Reference(reference),
                Some(&run),
                Some(&prompt)
            ),
            Some(1.0)
        );
        assert_eq!(
            normalized(3.0, &Normalization::Run, Some(&run), Some(&prompt)),
            Some(2.0)
        );
        assert_eq!(
            normalized(5.0, &Normalization::PerPrompt, Some(&run), Some(&prompt)),
            Some(0.0)
        );
        assert_eq!(
            normalized(f64::NAN, &Normalization::Run, Some(&run), None),
            None
        );
    }
}
