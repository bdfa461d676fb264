//! Collective communication between the ranks of a tensor-parallel model.
//!
//! A [`Communicator`] is one rank's handle on its group. Two implementations: [`ThreadGroup`]
//! connects ranks that are threads of one process (CPU tensor parallelism, and the way the
//! sharding logic is tested on every machine), and `NcclCommunicator` (the `cuda` feature,
//! `cuda/nccl.rs`) connects GPUs through NCCL.

use crate::KernelError;
use candle_core::Tensor;
use std::sync::{Arc, Barrier, Mutex};

/// One rank's view of its group.
pub trait Communicator: Send + Sync {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `x` over all ranks, returned to every rank. Every rank must call
    /// it with a tensor of the same shape and dtype, in the same order as its other collectives.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, KernelError>;
}

/// What the threads of one group share.
struct Exchange {
    slots: Mutex<Vec<Option<Tensor>>>,
    deposited: Barrier,
    read: Barrier,
}

/// Ranks that are threads of one process, exchanging tensors through shared memory.
pub struct ThreadGroup;

impl ThreadGroup {
    /// One communicator per rank, to hand to `world` threads.
    pub fn ranks(world: usize) -> Vec<ThreadCommunicator> {
        let exchange = Arc::new(Exchange {
            slots: Mutex::new(vec![None; world]),
            deposited: Barrier::new(world),
            read: Barrier::new(world),
        });
        (0..world)
            .map(|rank| ThreadCommunicator {
                rank,
                world,
                exchange: exchange.clone(),
            })
            .collect()
    }
}

/// A rank of a [`ThreadGroup`].
pub struct ThreadCommunicator {
    rank: usize,
    world: usize,
    exchange: Arc<Exchange>,
}

impl Communicator for ThreadCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    /// Every rank sums the deposited tensors in rank order, so all ranks hold bit-identical
    /// results (as NCCL guarantees for its ring all-reduce).
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        if self.world == 1 {
            return Ok(x.clone());
        }
        self.slots()?[self.rank] = Some(x.clone());
        self.exchange.deposited.wait();
        let parts: Vec<Tensor> = self.slots()?.iter().flatten().cloned().collect();
        // Nobody may deposit the next collective's tensor until every rank has read this one.
        self.exchange.read.wait();
        if parts.len() != self.world {
            return Err(KernelError::Communication(format!(
                "all-reduce: {} of {} ranks deposited a tensor",
                parts.len(),
                self.world
            )));
        }
        let mut sum = parts[0].clone();
        for part in &parts[1..] {
            sum = (sum + part)?;
        }
        Ok(sum)
    }
}

impl ThreadCommunicator {
    fn slots(&self) -> Result<std::sync::MutexGuard<'_, Vec<Option<Tensor>>>, KernelError> {
        self.exchange
            .slots
            .lock()
            .map_err(|_| KernelError::Communication("a rank panicked during a collective".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn all_reduce_sums_over_ranks_and_every_rank_gets_the_same() {
        for world in [1, 2, 4] {
            let results: Vec<Vec<f32>> = std::thread::scope(|scope| {
                let handles: Vec<_> = ThreadGroup::ranks(world)
                    .into_iter()
                    .map(|comm| {
                        scope.spawn(move || {
                            let mut last = Vec::new();
                            // Several collectives in a row reuse the slots safely.
                            for round in 0..5 {
                                let x = Tensor::new(
                                    &[comm.rank() as f32 + round as f32, 1.0],
                                    &Device::Cpu,
                                )
                                .unwrap();
                                last = comm.all_reduce_sum(&x).unwrap().to_vec1().unwrap();
                                let expected_first: f32 =
                                    (0..world).map(|r| r as f32 + round as f32).sum();
                                assert_eq!(last, vec![expected_first, world as f32]);
                            }
                            last
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(results.windows(2).all(|w| w[0] == w[1]));
        }
    }
}
