//! The dataset sink: preference pairs as a Hugging Face dataset folder.
//!
//! `data/train-0000k-of-0000n.parquet` in TRL's conversational preference format (`prompt`,
//! `chosen`, `rejected` as message lists) with scores, attributes and run parameters as extra
//! columns; `README.md` whose YAML `configs` lists exactly the files written; `summary.json`;
//! `rejects/rejects.jsonl` when any record was rejected.
//!
//! Each shard is written whole with a single put, so a reader never sees half a file; the README
//! is written last, after every shard, so it only ever lists complete files.

use crate::formats::{ExportFormat, Shard, ShardFile};
use crate::records::PromptOutcome;
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
use std::sync::Arc;
use steerflow_operators::normalize::{normalize_goodness, NormStats};
use steerflow_operators::records::Message;

/// Rows per parquet row group.
pub const ROW_GROUP_SIZE: usize = 10_000;

/// Renders a prompt as the policy sees it (chat template with the generation prompt).
pub type PromptRenderer<'a> =
    &'a dyn Fn(&[Message]) -> Result<String, steerflow_models::ModelError>;

/// Ids of the models, written into every row.
#[derive(Debug, Clone)]
pub struct ModelIds {
    pub policy: String,
    pub scorer: String,
    pub attribute_names: Vec<String>,
}

pub(crate) fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
    ])
}

pub(crate) fn messages_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(message_fields()),
        false,
    )))
}

pub(crate) fn attributes_type(names: &[String]) -> DataType {
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
        Field::new("chosen_tokens", DataType::Int32, false),
        Field::new("rejected_tokens", DataType::Int32, false),
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
        Field::new("steer_label", DataType::Utf8, true),
    ]))
}

pub fn messages_array(rows: &[Vec<Message>]) -> ListArray {
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

pub fn attributes_array(names: &[String], rows: &[&[f64]]) -> StructArray {
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

/// One shard's rows as an Arrow batch: one row per pair, in the order of `outcomes` (sorted by
/// prompt id) and, within a prompt, in the order its strategy gave them.
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
    let (mut chosen_len, mut rejected_len, mut ids_col, mut steer) =
        (vec![], vec![], vec![], vec![]);
    for (o, pair) in outcomes
        .iter()
        .flat_map(|o| o.pairs.iter().map(move |p| (o, p)))
    {
        let (c, r, m) = (
            &o.samples[pair.chosen],
            &o.samples[pair.rejected],
            pair.margin,
        );
        ids_col.push(o.prompt.id.as_str());
        steer.push(c.sample.steer.clone());
        chosen_len.push(c.sample.new_tokens as i32);
        rejected_len.push(r.sample.new_tokens as i32);
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
        Arc::new(StringArray::from(ids_col)),
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
        Arc::new(Int32Array::from(chosen_len)),
        Arc::new(Int32Array::from(rejected_len)),
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
        Arc::new(StringArray::from(steer)),
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

/// One preference pair as the string exports need it.
#[derive(Debug, Clone, Copy)]
pub struct PairText<'a> {
    pub prompt_id: &'a str,
    pub prompt: &'a [Message],
    pub chosen: &'a str,
    pub rejected: &'a str,
    pub chosen_score: f64,
    pub rejected_score: f64,
}

/// The pairs of per-prompt outcomes, as text, in the order of the rows of `pairs_batch`.
pub fn outcome_pairs<'a>(outcomes: &[&'a PromptOutcome]) -> Vec<PairText<'a>> {
    outcomes
        .iter()
        .flat_map(|o| {
            o.pairs.iter().map(move |p| PairText {
                prompt_id: &o.prompt.id,
                prompt: &o.prompt.messages,
                chosen: &o.samples[p.chosen].sample.text,
                rejected: &o.samples[p.rejected].sample.text,
                chosen_score: o.samples[p.chosen].goodness,
                rejected_score: o.samples[p.rejected].goodness,
            })
        })
        .collect()
}

/// The TRL standard form: strings, the prompt rendered by the chat template.
pub fn standard_batch(
    pairs: &[PairText<'_>],
    render: PromptRenderer<'_>,
) -> Result<RecordBatch, PipelineError> {
    let prompts = pairs
        .iter()
        .map(|p| render(p.prompt))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_from_iter([
        (
            "prompt_id",
            Arc::new(StringArray::from_iter_values(
                pairs.iter().map(|p| p.prompt_id),
            )) as ArrayRef,
        ),
        ("prompt", Arc::new(StringArray::from(prompts)) as ArrayRef),
        (
            "chosen",
            Arc::new(StringArray::from_iter_values(
                pairs.iter().map(|p| p.chosen),
            )) as ArrayRef,
        ),
        (
            "rejected",
            Arc::new(StringArray::from_iter_values(
                pairs.iter().map(|p| p.rejected),
            )) as ArrayRef,
        ),
        (
            "chosen_score",
            Arc::new(Float64Array::from_iter_values(
                pairs.iter().map(|p| p.chosen_score),
            )) as ArrayRef,
        ),
        (
            "rejected_score",
            Arc::new(Float64Array::from_iter_values(
                pairs.iter().map(|p| p.rejected_score),
            )) as ArrayRef,
        ),
        (
            "margin",
            Arc::new(Float64Array::from_iter_values(
                pairs.iter().map(|p| p.chosen_score - p.rejected_score),
            )) as ArrayRef,
        ),
    ])?)
}

/// NeMo-Aligner DPO jsonl lines.
pub fn nemo_jsonl(
    pairs: &[PairText<'_>],
    render: PromptRenderer<'_>,
) -> Result<Vec<u8>, PipelineError> {
    let mut out = String::new();
    for p in pairs {
        let line = serde_json::json!({
            "prompt": render(p.prompt)?,
            "chosen_response": p.chosen,
            "rejected_response": p.rejected,
            "chosen_reward": p.chosen_score,
            "rejected_reward": p.rejected_score,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// Writes the string exports (`standard`, `nemo`) of shard `k` of `n` and returns the files.
pub fn write_text_exports(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    formats: &[ExportFormat],
    pairs: &[PairText<'_>],
    render: PromptRenderer<'_>,
    shard: Shard<'_>,
) -> Result<Vec<ShardFile>, PipelineError> {
    let mut files = Vec::new();
    for &format in formats {
        let bytes = match format {
            ExportFormat::Conversational => continue,
            ExportFormat::Standard => parquet_bytes(&standard_batch(pairs, render)?)?,
            ExportFormat::Nemo => nemo_jsonl(pairs, render)?,
        };
        let path = format.path_of(shard);
        let size = bytes.len() as u64;
        rt.block_on(output.put(&path, bytes))?;
        files.push(ShardFile {
            path,
            rows: pairs.len() as u64,
            bytes: size,
            format,
        });
    }
    Ok(files)
}

/// Writes one shard of a run in every requested format from its outcomes (the pairs among them
/// are written, sorted by prompt id) and returns the files.
#[allow(clippy::too_many_arguments)]
pub fn write_run_shard(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    spec: &RunSpec,
    ids: &ModelIds,
    outcomes: &[&PromptOutcome],
    run_stats: Option<&NormStats>,
    render: PromptRenderer<'_>,
    shard: Shard<'_>,
) -> Result<Vec<ShardFile>, PipelineError> {
    let mut rows: Vec<&PromptOutcome> = outcomes
        .iter()
        .copied()
        .filter(|o| !o.pairs.is_empty())
        .collect();
    rows.sort_by(|a, b| a.prompt.id.cmp(&b.prompt.id));
    let mut files = Vec::new();
    if spec.formats.contains(&ExportFormat::Conversational) {
        let batch = pairs_batch(&rows, spec, ids, run_stats)?;
        files.push(write_parquet_shard(
            output,
            rt,
            &batch,
            ExportFormat::Conversational,
            shard,
        )?);
    }
    let pairs = outcome_pairs(&rows);
    files.extend(write_text_exports(
        output,
        rt,
        &spec.formats,
        &pairs,
        render,
        shard,
    )?);
    Ok(files)
}

/// Writes `batch` as parquet shard `k` of `n` in `format`'s folder and returns the file.
pub fn write_parquet_shard(
    output: &Location,
    rt: &tokio::runtime::Runtime,
    batch: &RecordBatch,
    format: ExportFormat,
    shard: Shard<'_>,
) -> Result<ShardFile, PipelineError> {
    let bytes = parquet_bytes(batch)?;
    let path = format.path_of(shard);
    let size = bytes.len() as u64;
    rt.block_on(output.put(&path, bytes))?;
    Ok(ShardFile {
        path,
        rows: batch.num_rows() as u64,
        bytes: size,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
