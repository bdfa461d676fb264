//! Deduplication on differential-dataflow (`graph.rs`): records arrive as [`Fingerprint`]s (a
//! node number that is the record's keep priority, the hash of its normalised text and its
//! MinHash signature; made by `operators::dedup`), and leave as the cluster of every record,
//! labelled by the node it keeps. [`cluster`] runs the graph on any timely configuration (the
//! threads of one process, or processes connected over TCP) and gives back the labels of the
//! records this process's workers own; the labels depend only on the fingerprints, never on
//! how many workers or processes computed them.

pub mod corpus;
pub mod entries;
mod graph;
pub mod prompts;
pub mod references;

use crate::cluster::ClusterSpec;
use crate::PipelineError;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use steerflow_operators::dedup::MinHasher;

/// What the clustering needs of one record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The record's keep priority: of a cluster, the smallest node is kept. Unique.
    pub node: u64,
    /// The hash of the normalised text (xxh3-128): equal hashes are exact duplicates.
    pub exact: u128,
    /// The MinHash signature; `None` for a text with no shingles (matched exactly only).
    pub signature: Option<Vec<u64>>,
}

/// How near duplicates are found.
#[derive(Debug, Clone)]
pub struct NearParams {
    pub hasher: MinHasher,
    /// Candidate pairs whose signature estimate of Jaccard similarity is below this are not
    /// duplicates. `None`: only exact duplicates are looked for.
    pub threshold: Option<f64>,
}

/// The cluster of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub node: u64,
    /// The node the cluster keeps (the smallest of the cluster); `node` itself for a record
    /// that duplicates nothing.
    pub kept: u64,
}

/// How many pairs each step found (summed over workers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphCounts {
    /// Records whose normalised text equals an earlier record's.
    pub exact_duplicates: u64,
    /// Distinct pairs sharing at least one LSH band.
    pub candidate_pairs: u64,
    /// Candidate pairs at or above the threshold.
    pub similar_pairs: u64,
}

/// What one process's workers computed.
#[derive(Debug, Clone, Default)]
pub struct Clusters {
    /// The label of every record this process's workers own, sorted by node.
    pub labels: Vec<Label>,
    pub counts: GraphCounts,
}

/// Runs the clustering on `cluster`'s workers. `share(worker, workers)` gives the fingerprints a
/// worker feeds in (every record must be fed by exactly one worker of the whole cluster).
pub fn cluster<F>(
    spec: &ClusterSpec,
    near: &NearParams,
    share: F,
) -> Result<Clusters, PipelineError>
where
    F: Fn(usize, usize) -> Vec<Fingerprint> + Send + Sync + 'static,
{
    let out = Arc::new(Mutex::new(Clusters::default()));
    let (near, sink) = (near.clone(), out.clone());
    let guards = timely::execute(spec.timely_config(), move |worker| {
        graph::run_worker(worker, &near, &share, &sink);
    })
    .map_err(|e| PipelineError::Worker(format!("dedup dataflow: {e}")))?;
    for result in guards.join() {
        result.map_err(|e| PipelineError::Worker(format!("dedup worker: {e}")))?;
    }
    let mut clusters = std::mem::take(&mut *out.lock().expect("dedup output"));
    clusters.labels.sort();
    Ok(clusters)
}

/// The fingerprints of `records` a worker feeds in: those whose index is `worker` modulo
/// `workers`.
pub fn round_robin(records: &[Fingerprint], worker: usize, workers: usize) -> Vec<Fingerprint> {
    records
        .iter()
        .skip(worker)
        .step_by(workers.max(1))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
