//! `dedup`: a corpus (jsonl or parquet) without its exact and near duplicates and without the
//! records that contain benchmark items (`configs/dedup.toml`, docs/dedup.md). Kept rows go to
//! `data/` with the columns they came with; `clusters/<run>.parquet` names, for every record
//! of a cluster, the record it kept and how it matched; `contaminated/<run>.parquet` the
//! benchmark item each removed record contained; `dedup-index/<run>.bin` keeps every record's
//! hash and signature, so a run over a grown input deduplicates its new records against the
//! committed ones without reading them again.
//!
//! Per shard (`process`): normalisation, the text hash, the MinHash signature and the n-gram
//! check against the benchmark items, in parallel. Over the whole run (`finish`): the clusters,
//! on differential-dataflow (`steerflow_pipeline::dedup`).

use crate::checks::{plan, store_spec, DryRunShape};
use crate::config::dedup::DedupSection;
use crate::config::sections::Common;
use crate::error::JobError;
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use steerflow_pipeline::cluster::ClusterSpec;
use steerflow_pipeline::dedup::corpus::{rows_batch, text_of, KeptRow};
use steerflow_pipeline::dedup::entries::{decode, deduplicate, encode, Decision, Entry, Indexed};
use steerflow_pipeline::dedup::references::{Contamination, References};
use steerflow_pipeline::dedup::{GraphCounts, NearParams};
use steerflow_pipeline::formats::{ExportFormat, Shard};
use steerflow_pipeline::input::InputFile;
use steerflow_pipeline::publish::ReadmeText;
use steerflow_pipeline::reject::Reject;
use steerflow_pipeline::report::plots::{bars, histogram, Series, BLUE};
use steerflow_pipeline::report::Page;
use steerflow_pipeline::sink::parquet_bytes;
use steerflow_pipeline::storage::redact_url;
use steerflow_pipeline::store_run::{
    read_keyed, run_on_store, FinishRun, Finished, Keyed, Parsed, StoreJob,
};
use steerflow_pipeline::PipelineError;

/// What a dedup run counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// New records read and deduplicated (not rejected).
    pub records: u64,
    pub kept: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    pub contaminated: u64,
    /// Clusters of two or more records that hold a new record.
    pub clusters: u64,
    /// Records of earlier runs this run compared against.
    pub earlier_records: u64,
    /// Records committed as kept by an earlier run that a new record now links to an earlier
    /// kept record (they stay written; see docs/dedup.md).
    pub linked_committed: u64,
    pub graph: GraphCounts,
    /// Benchmark items indexed, and left out for being shorter than `min_words`.
    pub benchmark_items: u64,
    pub benchmark_items_too_short: u64,
    pub rejected: u64,
}

/// What a dedup run did (`summary.json`).
pub type Summary = crate::summary::StoreSummary<Counts>;

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up_to_date {
            return f.write_str(&self.up_to_date_line("record"));
        }
        let c = &self.counts;
        write!(
            f,
            "{} of {} records kept ({} exact and {} near duplicates, {} contaminated) written to {}",
            c.kept, c.records, c.exact_duplicates, c.near_duplicates, c.contaminated, self.output
        )
    }
}

pub type Section = ();

pub const SHAPE: DryRunShape = DryRunShape {
    uses_policy: false,
    uses_reward: false,
    records: None,
    samples: false,
    cluster: false,
};

/// Checks the section without reading anything.
pub fn check(config: &Common, _: &()) -> Result<(), JobError> {
    plan(config)?;
    config.dedup.clone().unwrap_or_default().check()
}

/// A record as read: its text, score and the record itself.
#[derive(Debug, Clone)]
pub struct Item {
    text: String,
    score: Option<f64>,
    row: String,
}

/// A record as processed, kept in the shard parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    entry: Entry,
    row: KeptRow,
    contamination: Option<Contamination>,
}

struct Dedup<'a> {
    section: &'a DedupSection,
    near: NearParams,
    references: Option<Arc<References>>,
    workers: usize,
    lineage: Value,
    output: &'a str,
}

/// The index files of earlier runs: `dedup-index/<run>.bin`.
const INDEX: &str = "dedup-index";

impl StoreJob for Dedup<'_> {
    type Item = Item;
    type Outcome = Outcome;

    fn lineage(&self) -> Value {
        self.lineage.clone()
    }

    fn read(&self, file: &InputFile) -> Result<Parsed<Item>, PipelineError> {
        let (field, score_field) = (&self.section.field, &self.section.score_field);
        read_keyed(file, |value| {
            let text = text_of(value, field)?;
            let score = value.get(score_field.as_str()).and_then(Value::as_f64);
            Ok((
                Item {
                    text,
                    score,
                    row: value.to_string(),
                },
                None,
            ))
        })
    }

    fn process(&self, items: Vec<Keyed<Item>>) -> Result<Vec<Outcome>, PipelineError> {
        let norm = &self.section.normalize;
        Ok(items
            .into_par_iter()
            .map(|k| {
                let position = (k.key.id, k.file, k.record);
                let hasher = self.near.threshold.map(|_| &self.near.hasher);
                let entry = Entry::of_text(position, &k.item.text, k.item.score, (norm, hasher));
                let contamination = self.references.as_ref().and_then(|r| r.find(&k.item.text));
                Outcome {
                    entry,
                    row: KeptRow(k.item.row),
                    contamination,
                }
            })
            .collect())
    }

    fn finish(
        &self,
        run: &FinishRun<'_>,
        mut outcomes: Vec<Outcome>,
        rejects: &[Reject],
    ) -> Result<Finished, PipelineError> {
        outcomes
            .sort_by(|a, b| (&a.entry.file, a.entry.record).cmp(&(&b.entry.file, b.entry.record)));
        let indexed = self.earlier_entries(run)?;
        let earlier: Vec<Entry> = indexed.iter().map(|i| i.entry.clone()).collect();
        let (clean, contaminated): (Vec<Outcome>, Vec<Outcome>) = outcomes
            .into_iter()
            .partition(|o| o.contamination.is_none());
        let new: Vec<Entry> = clean.iter().map(|o| o.entry.clone()).collect();
        let spec = ClusterSpec::single(self.workers);
        let (decisions, graph) = deduplicate(&earlier, &new, self.section.keep, &self.near, &spec)?;
        let base = earlier.len();
        let kept_rows: Vec<KeptRow> = clean
            .iter()
            .enumerate()
            .filter(|(i, _)| decisions[base + i].kept == base + i)
            .map(|(_, o)| o.row.clone())
            .collect();
        let mut finished = Finished::default();
        if !kept_rows.is_empty() {
            let batch = rows_batch(&kept_rows)?;
            let shard = Shard {
                k: 0,
                n: 1,
                run: Some(run.run_id),
            };
            let file = steerflow_pipeline::sink::write_parquet_shard(
                run.output,
                run.rt,
                &batch,
                ExportFormat::Conversational,
                shard,
            )?;
            finished.files.push(file);
        }
        let all: Vec<&Entry> = earlier.iter().chain(&new).collect();
        let clusters = clusters_batch(&all, &decisions, base)?;
        finished.other_files.push(run.put_other(
            run.path("clusters", "clusters.parquet"),
            parquet_bytes(&clusters)?,
            clusters.num_rows() as u64,
        )?);
        if !contaminated.is_empty() {
            let batch = contaminated_batch(&contaminated)?;
            finished.other_files.push(run.put_other(
                run.path("contaminated", "contaminated.parquet"),
                parquet_bytes(&batch)?,
                batch.num_rows() as u64,
            )?);
        }
        let index: Vec<Indexed> = new
            .iter()
            .enumerate()
            .map(|(i, e)| Indexed {
                entry: e.clone(),
                kept: decisions[base + i].kept == base + i,
            })
            .collect();
        finished.other_files.push(run.put_other(
            format!("{INDEX}/{}.bin", run.run_id),
            encode(&index)?,
            new.len() as u64,
        )?);
        // Written as kept by an earlier run, now in a cluster that keeps another record.
        let linked = indexed
            .iter()
            .enumerate()
            .filter(|(i, x)| x.kept && decisions[*i].kept != *i)
            .count();
        let counts = self.counts(
            &decisions,
            base,
            (kept_rows.len(), contaminated.len(), rejects.len(), linked),
            graph,
        );
        finished.report = Some(report_page(&counts, &decisions[base..], self.output));
        finished.summary = json!({
            "job": "dedup",
            "output": self.output,
            "method": format!("{:?}", self.section.method).to_lowercase(),
            "keep": self.section.keep,
            "threshold": self.section.threshold,
            "counts": counts,
        });
        Ok(finished)
    }

    fn readme(&self) -> ReadmeText<'_> {
        ReadmeText {
            title: "A corpus deduplicated and decontaminated by steerflow",
            description: "The kept records, with the columns they came with. clusters/ names \
                          the record each duplicate's cluster kept; contaminated/ the benchmark \
                          item each removed record contained.",
            formats_note: "Every run deduplicates its new records against the records of the \
                           runs before it.",
            count: "kept",
        }
    }
}

impl Dedup<'_> {
    /// The entries earlier runs of this lineage indexed, in commit order.
    fn earlier_entries(&self, run: &FinishRun<'_>) -> Result<Vec<Indexed>, PipelineError> {
        let mut entries = Vec::new();
        for manifest in run.committed {
            for file in manifest
                .other_files
                .iter()
                .filter(|f| f.path.starts_with(INDEX))
            {
                let bytes = run
                    .rt
                    .block_on(run.output.get(&file.path))?
                    .ok_or_else(|| PipelineError::Input {
                        location: file.path.clone(),
                        message: format!(
                            "the dedup index of committed run {} is missing",
                            manifest.run_id
                        ),
                    })?;
                entries.extend(decode(&bytes, &file.path)?);
            }
        }
        Ok(entries)
    }

    fn counts(
        &self,
        decisions: &[Decision],
        base: usize,
        (kept, contaminated, rejected, linked): (usize, usize, usize, usize),
        graph: GraphCounts,
    ) -> Counts {
        use steerflow_pipeline::dedup::entries::Match;
        let new = &decisions[base..];
        let count = |m: Match| new.iter().filter(|d| d.matched == Some(m)).count() as u64;
        let mut clusters: Vec<usize> = new
            .iter()
            .filter(|d| d.cluster_size > 1)
            .map(|d| d.kept)
            .collect();
        clusters.sort_unstable();
        clusters.dedup();
        let refs = self.references.as_ref();
        Counts {
            records: (new.len() + contaminated) as u64,
            kept: kept as u64,
            exact_duplicates: count(Match::Exact),
            near_duplicates: count(Match::Near),
            contaminated: contaminated as u64,
            clusters: clusters.len() as u64,
            earlier_records: base as u64,
            linked_committed: linked as u64,
            graph,
            benchmark_items: refs.map_or(0, |r| r.items() as u64),
            benchmark_items_too_short: refs.map_or(0, |r| r.too_short),
            rejected: rejected as u64,
        }
    }
}

/// Every record of a cluster of two or more (earlier runs' too): the record its cluster keeps
/// and how it matched it.
fn clusters_batch(
    all: &[&Entry],
    decisions: &[Decision],
    base: usize,
) -> Result<RecordBatch, PipelineError> {
    let rows: Vec<usize> = (0..all.len())
        .filter(|&i| decisions[i].cluster_size > 1)
        .collect();
    let strings = |f: &dyn Fn(usize) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|&i| f(i))))
    };
    Ok(RecordBatch::try_from_iter([
        ("id", strings(&|i| all[i].id.clone())),
        ("file", strings(&|i| all[i].file.clone())),
        (
            "record",
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|&i| all[i].record),
            )) as ArrayRef,
        ),
        ("kept_id", strings(&|i| all[decisions[i].kept].id.clone())),
        (
            "kept",
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|&i| Some(decisions[i].kept == i)),
            )) as ArrayRef,
        ),
        (
            "match",
            strings(&|i| {
                decisions[i]
                    .matched
                    .map_or("kept", |m| m.as_str())
                    .to_string()
            }),
        ),
        (
            "similarity",
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|&i| decisions[i].similarity),
            )) as ArrayRef,
        ),
        (
            "cluster_size",
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|&i| decisions[i].cluster_size as u32),
            )) as ArrayRef,
        ),
        (
            "earlier_run",
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|&i| Some(i < base)),
            )) as ArrayRef,
        ),
    ])?)
}

/// The removed records and the benchmark item each contained.
fn contaminated_batch(removed: &[Outcome]) -> Result<RecordBatch, PipelineError> {
    let hit = |o: &Outcome| {
        o.contamination
            .clone()
            .expect("contaminated records carry their match")
    };
    let strings = |f: &dyn Fn(&Outcome) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(removed.iter().map(f)))
    };
    Ok(RecordBatch::try_from_iter([
        ("id", strings(&|o| o.entry.id.clone())),
        ("file", strings(&|o| o.entry.file.clone())),
        (
            "record",
            Arc::new(UInt64Array::from_iter_values(
                removed.iter().map(|o| o.entry.record),
            )) as ArrayRef,
        ),
        (
            "benchmark_file",
            strings(&|o| redact_url(&hit(o).item.file)),
        ),
        ("benchmark_id", strings(&|o| hit(o).item.id)),
        (
            "shared_ngrams",
            Arc::new(UInt32Array::from_iter_values(
                removed.iter().map(|o| hit(o).grams),
            )) as ArrayRef,
        ),
    ])?)
}

/// The report: what was kept and removed, cluster sizes, and the similarity of near duplicates.
fn report_page(c: &Counts, new: &[Decision], output: &str) -> Page {
    let mut page = Page::new(
        &format!("steerflow dedup: {}", redact_url(output)),
        &format!(
            "{} records: {} kept, {} exact and {} near duplicates, {} contaminated.",
            c.records, c.kept, c.exact_duplicates, c.near_duplicates, c.contaminated
        ),
    );
    page.section("Kept and removed");
    let outcome = [
        ("kept", c.kept),
        ("exact duplicate", c.exact_duplicates),
        ("near duplicate", c.near_duplicates),
        ("contaminated", c.contaminated),
    ];
    let values: Vec<(String, f64)> = outcome
        .iter()
        .map(|(k, v)| (k.to_string(), *v as f64))
        .collect();
    page.push(&bars(
        "Records kept and removed",
        ("records", "outcome"),
        &values,
        |v| format!("{v:.0}"),
    ));
    page.section("Clusters");
    let sizes: Vec<f64> = new
        .iter()
        .filter(|d| d.cluster_size > 1 && d.matched.is_none())
        .map(|d| d.cluster_size as f64)
        .collect();
    page.push(&histogram(
        "Records per cluster (kept by this run)",
        ("records in the cluster", "clusters"),
        &[Series {
            name: "clusters",
            color: BLUE,
            data: sizes,
        }],
        20,
    ));
    let similarity: Vec<f64> = new
        .iter()
        .filter(|d| d.matched.is_some())
        .map(|d| d.similarity)
        .collect();
    page.push(&histogram(
        "Similarity of each duplicate to the record kept",
        (
            "Jaccard similarity, estimated from the signatures",
            "records",
        ),
        &[Series {
            name: "duplicates",
            color: BLUE,
            data: similarity,
        }],
        20,
    ));
    let graph = format!(
        "LSH found {} candidate pairs, {} of them at or above the threshold; {} records were \
         compared against earlier runs'.",
        c.graph.candidate_pairs, c.graph.similar_pairs, c.earlier_records
    );
    page.paragraph("graph", &graph);
    page
}

pub fn run(config: &Common, _: &(), cluster: &ClusterSpec) -> Result<Summary, JobError> {
    check(config, &())?;
    let plan = plan(config)?;
    let dedup = config.dedup.clone().unwrap_or_default();
    let references = dedup.references()?;
    let mut lineage = dedup.lineage(references.as_deref());
    lineage["job"] = json!("dedup");
    lineage["shards"] = json!(config.output.shards);
    let job = Dedup {
        near: dedup.near(),
        section: &dedup,
        lineage,
        references,
        workers: cluster.workers,
        output: &config.output.path,
    };
    Summary::from_outcome(run_on_store(&job, &store_spec(config, plan.max_rejects))?)
}
