//! The kind-agnostic machinery of steerflow: the dataflow, sources, sinks and the run store.
//!
//! - [`records`]: the records travelling between operators and into committed parts.
//! - [`input`], [`source`], [`values`] read the input (jsonl, parquet; files or folders, local or
//!   object storage) and turn bad records into [`reject::Reject`]s.
//! - [`dataflow`]: the timely graph of an iterative-DPO run, one file per operator (plan, sample,
//!   score, select, commit shards); [`run`] drives it exactly once.
//! - [`store_run`]: exactly-once runs of the kinds that score without sampling.
//! - [`commit`]: the run store (run ids, parts, shard markers, the manifest, resume, sweep);
//!   [`publish`]: README and top-level files from the manifests.
//! - [`sink`] and [`formats`]: parquet and jsonl exports; [`report`]: the run report.
//! - [`storage`]: paths and URLs as object_store locations with retries.

pub mod cluster;
pub mod commit;
pub mod dataflow;
pub mod dedup;
pub mod digest;
pub mod error;
pub mod faults;
pub mod formats;
pub mod input;
pub mod inspect;
pub mod progress;
pub mod publish;
pub mod records;
pub mod reject;
pub mod report;
pub mod run;
pub mod score_file;
pub mod sink;
pub mod source;
pub mod spec;
pub mod storage;
pub mod store_run;
pub mod summary;
pub mod values;

pub use error::PipelineError;
