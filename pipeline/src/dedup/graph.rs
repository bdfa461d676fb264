//! The clustering graph: exact duplicates by a reduce over the text hash; near duplicates among
//! the remaining texts by LSH (band keys joined with themselves give candidate pairs), each
//! candidate checked against the threshold by joining both signatures; clusters as connected
//! components of both kinds of edge, by iterated minimum-label propagation (`iterate`).

use super::{Clusters, Fingerprint, GraphCounts, Label, NearParams};
use differential_dataflow::input::Input;
use differential_dataflow::operators::Iterate;
use differential_dataflow::VecCollection;
use std::sync::{Arc, Mutex};
use steerflow_operators::dedup::minhash::estimate;
use timely::dataflow::operators::probe::Handle;
use timely::worker::Worker;

type Node = u64;

/// Builds the graph on one worker, feeds its share, runs it to the end and adds what this
/// worker owns to `sink`.
pub(super) fn run_worker(
    worker: &mut Worker,
    near: &NearParams,
    share: &(dyn Fn(usize, usize) -> Vec<Fingerprint> + Send + Sync),
    sink: &Arc<Mutex<Clusters>>,
) {
    let (index, peers) = (worker.index(), worker.peers());
    let local = Arc::new(Mutex::new(Clusters::default()));
    let probe = Handle::new();
    let mut input = worker.dataflow::<u32, _, _>(|scope| {
        let (input, records) = scope.new_collection::<Fingerprint, isize>();
        let (labels, counts) = clusters(records, near);
        let (out, tally) = (local.clone(), local.clone());
        // Consolidated, so a label revised during the iteration is seen once, as it ends.
        labels
            .consolidate()
            .inspect(move |((node, kept), _, diff)| {
                if *diff > 0 {
                    let label = Label {
                        node: *node,
                        kept: *kept,
                    };
                    out.lock().expect("labels").labels.push(label);
                }
            })
            .probe_with(&probe);
        counts
            .consolidate()
            .inspect(move |(step, _, diff)| {
                let mut c = tally.lock().expect("counts");
                let n = u64::try_from(*diff).unwrap_or(0);
                match step {
                    Step::Exact => c.counts.exact_duplicates += n,
                    Step::Candidate => c.counts.candidate_pairs += n,
                    Step::Similar => c.counts.similar_pairs += n,
                }
            })
            .probe_with(&probe);
        input
    });
    for record in share(index, peers) {
        input.insert(record);
    }
    input.close();
    worker.step_while(|| !probe.done());
    let local = std::mem::take(&mut *local.lock().expect("worker output"));
    let mut all = sink.lock().expect("dedup output");
    all.labels.extend(local.labels);
    let (a, b) = (&mut all.counts, local.counts);
    *a = GraphCounts {
        exact_duplicates: a.exact_duplicates + b.exact_duplicates,
        candidate_pairs: a.candidate_pairs + b.candidate_pairs,
        similar_pairs: a.similar_pairs + b.similar_pairs,
    };
}

/// Which count an edge adds to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
enum Step {
    Exact,
    Candidate,
    Similar,
}

/// The label of every record, and one `Step` per edge found (for the counts).
fn clusters<'s>(
    records: VecCollection<'s, u32, Fingerprint>,
    near: &NearParams,
) -> (
    VecCollection<'s, u32, (Node, Node)>,
    VecCollection<'s, u32, Step>,
) {
    // Exact duplicates: every record of a text hash points at the group's smallest node, the
    // only one that goes on to the near-duplicate search.
    let by_text = records.clone().map(|f| (f.exact, (f.node, f.signature)));
    let firsts = by_text.clone().reduce(|_text, group, out| {
        let (node, signature) = group[0].0;
        out.push(((*node, signature.clone()), 1));
    });
    let exact_edges = by_text
        .map(|(text, (node, _))| (text, node))
        .join_map(
            firsts.clone().map(|(text, (first, _))| (text, first)),
            |_, node, first| (*node, *first),
        )
        .filter(|(node, first)| node != first);
    let mut steps = exact_edges.clone().map(|_| Step::Exact);
    let mut edges = exact_edges;

    if let Some(threshold) = near.threshold {
        let signatures = firsts.flat_map(|(_, (node, signature))| signature.map(|s| (node, s)));
        let hasher = near.hasher.clone();
        let bands = signatures.clone().flat_map(move |(node, s)| {
            hasher.band_keys(&s).into_iter().map(move |key| (key, node))
        });
        let candidates = bands
            .clone()
            .join_map(bands, |_, a, b| (*a, *b))
            .filter(|(a, b)| a < b)
            .distinct();
        let similar = candidates
            .clone()
            .join_map(signatures.clone(), |a, b, sa| (*b, (*a, sa.clone())))
            .join_map(signatures, move |b, (a, sa), sb| {
                (*b, *a, estimate(sa, sb) >= threshold)
            })
            .filter(|(_, _, similar)| *similar)
            .map(|(b, a, _)| (b, a));
        steps = steps
            .concat(candidates.map(|_| Step::Candidate))
            .concat(similar.clone().map(|_| Step::Similar));
        edges = edges.concat(similar);
    }

    // Connected components: every node starts labelled by itself and takes the smallest label
    // among its neighbours' until nothing changes.
    let undirected = edges.clone().concat(edges.map(|(a, b)| (b, a)));
    let nodes = records.map(|f| (f.node, f.node));
    let labels = nodes.clone().iterate(|scope, inner| {
        let edges = undirected.enter(scope);
        let nodes = nodes.enter(scope);
        inner
            .join_map(edges, |_node, label, neighbour| (*neighbour, *label))
            .concat(nodes)
            .reduce(|_node, labels, out| out.push((*labels[0].0, 1)))
    });
    (labels, steps)
}
