//! The shard commit at each shard's owner (worker k % all workers): settled items are collected
//! per shard, and the moment everything the planners routed to a shard has arrived its part and
//! marker are committed through the run store (`crate::commit`). The markers this worker
//! created are kept for the run's account.

use super::groups::ShardCollector;
use super::worker::Worker;
use crate::commit::{RunStore, ShardMarker};
use crate::records::Settled;
use crate::PipelineError;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Exchange;
use timely::dataflow::StreamVec;

/// Exchanges settled items to their shard's owner and commits each complete shard.
pub(crate) trait CommitShards<'s> {
    fn commit_shards(
        self,
        worker: &Worker,
        store: Arc<RunStore>,
        markers: Rc<RefCell<Vec<ShardMarker>>>,
    ) -> StreamVec<'s, u64, ShardMarker>;
}

impl<'s> CommitShards<'s> for StreamVec<'s, u64, Settled> {
    fn commit_shards(
        self,
        worker: &Worker,
        store: Arc<RunStore>,
        markers: Rc<RefCell<Vec<ShardMarker>>>,
    ) -> StreamVec<'s, u64, ShardMarker> {
        let worker = worker.clone();
        let shards = worker.spec.shards;
        self.exchange(move |s: &Settled| s.shard(shards) as u64)
            .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<ShardMarker>>, _, _, _>(
                Pipeline,
                "CommitShards",
                move |default_cap, _info| {
                    let mut cap = Some(default_cap);
                    let mut collector = ShardCollector::new(worker.peers);
                    move |(input, frontier), output| {
                        let mut complete = Vec::new();
                        input.for_each_stamp(|_, data| {
                            for batch in data {
                                for item in batch.drain(..) {
                                    complete.extend(collector.add(item.shard(shards), item));
                                }
                            }
                        });
                        for part in complete {
                            if worker.failed() {
                                break;
                            }
                            let committed = crate::storage::io_runtime()
                                .and_then(|rt| rt.block_on(store.commit_shard(&part, &store.writer)));
                            match committed {
                                Ok(marker) => {
                                    tracing::info!(shard = part.shard, prompts = marker.prompts, "shard committed");
                                    markers.borrow_mut().push(marker);
                                }
                                Err(e) => worker.fail(e),
                            }
                        }
                        if frontier.is_empty() {
                            let incomplete = collector.incomplete();
                            if !incomplete.is_empty() && !worker.failed() {
                                worker.fail(PipelineError::Worker(format!(
                                    "shards left incomplete (shard, items in, items expected, planners heard): {incomplete:?}"
                                )));
                            }
                            cap = None;
                        }
                        let _ = (&output, &cap);
                    }
                },
            )
    }
}
