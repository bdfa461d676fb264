//! The steerflow dataflow: sources, the timely graph, and sinks.
//!
//! - [`source`] reads prompts (jsonl, parquet) and turns bad records into [`reject::Reject`]s.
//! - [`graph`] runs sample → score → goodness → per-prompt reduce on timely workers.
//! - [`sink`] writes the Hugging Face dataset folder (parquet shards, README) and the summary.
//! - [`storage`] maps paths and URLs to object_store locations.
//! - [`commit`] makes a run exactly-once: run ids, shard markers, the manifest, resume.

pub mod annotate;
pub mod cluster;
pub mod commit;
pub mod dataflow;
pub mod digest;
pub mod error;
pub mod faults;
pub mod filter_rank;
pub mod formats;
pub mod input;
pub mod inspect;
pub mod labelled_pairs;
pub mod progress;
pub mod records;
pub mod reject;
pub mod report;
pub mod rm_eval;
pub mod run;
pub mod score_file;
pub mod sink;
pub mod source;
pub mod spec;
pub mod storage;
pub mod summary;

pub use error::PipelineError;
