//! Collective communication between the ranks of a tensor-parallel model.
//!
//! A [`Communicator`] is one rank's handle on its group. Two implementations: [`ThreadGroup`]
//! connects ranks that are threads of one process (CPU tensor parallelism, and the way the
//! sharding logic is tested on every machine), and `NcclCommunicator` (the `cuda` feature,
//! `cuda/nccl.rs`) connects GPUs through NCCL.

use crate::KernelError;
use candle_core::Tensor;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// One rank's view of its group.
pub trait Communicator: Send + Sync {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Ranks in the group.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `x` over all ranks, returned to every rank. Every rank must call
    /// it with a tensor of the same shape and dtype, in the same order as its other collectives.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, KernelError>;
    /// Called by a rank that failed between collectives: the other ranks' pending and later
    /// collectives return an error instead of waiting for it forever. (cudarc's safe NCCL API has
    /// no abort, so on GPUs this does nothing and a failed rank still leaves the others waiting.)
    fn abort(&self) {}
}

/// What the threads of one group share: the deposited tensors and a barrier that a failing rank
/// can break.
struct Exchange {
    state: Mutex<ExchangeState>,
    turn: Condvar,
}

struct ExchangeState {
    slots: Vec<Option<Tensor>>,
    arrived: usize,
    generation: u64,
    aborted: bool,
}

/// Ranks that are threads of one process, exchanging tensors through shared memory.
pub struct ThreadGroup;

impl ThreadGroup {
    /// One communicator per rank, to hand to `world` threads.
    pub fn ranks(world: usize) -> Vec<ThreadCommunicator> {
        let exchange = Arc::new(Exchange {
            state: Mutex::new(ExchangeState {
                slots: vec![None; world],
                arrived: 0,
                generation: 0,
                aborted: false,
            }),
            turn: Condvar::new(),
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

type Guard<'a> = MutexGuard<'a, ExchangeState>;

impl ThreadCommunicator {
    fn lock(&self) -> Result<Guard<'_>, KernelError> {
        let state = self.exchange.state.lock().map_err(|_| {
            KernelError::Communication("a rank panicked during a collective".into())
        })?;
        if state.aborted {
            return Err(KernelError::Communication(
                "another rank of the tensor-parallel group failed".into(),
            ));
        }
        Ok(state)
    }

    /// Waits until every rank has arrived (or one aborted).
    fn all_arrive<'a>(&'a self, mut state: Guard<'a>) -> Result<Guard<'a>, KernelError> {
        let generation = state.generation;
        state.arrived += 1;
        if state.arrived == self.world {
            state.arrived = 0;
            state.generation += 1;
            self.exchange.turn.notify_all();
            return Ok(state);
        }
        loop {
            state = self.exchange.turn.wait(state).map_err(|_| {
                KernelError::Communication("a rank panicked during a collective".into())
            })?;
            if state.aborted {
                return Err(KernelError::Communication(
                    "another rank of the tensor-parallel group failed".into(),
                ));
            }
            if state.generation != generation {
                return Ok(state);
            }
        }
    }
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
        let mut state = self.lock()?;
        state.slots[self.rank] = Some(x.clone());
        let state = self.all_arrive(state)?;
        let parts: Vec<Tensor> = state.slots.iter().flatten().cloned().collect();
        // Nobody may deposit the next collective's tensor until every rank has read this one.
        drop(self.all_arrive(state)?);
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

    fn abort(&self) {
        if let Ok(mut state) = self.exchange.state.lock() {
            state.aborted = true;
        }
        self.exchange.turn.notify_all();
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

    #[test]
    fn a_failed_rank_releases_the_others_with_an_error() {
        let mut ranks = ThreadGroup::ranks(3);
        let failed = ranks.remove(0);
        std::thread::scope(|scope| {
            let waiting: Vec<_> = ranks
                .iter()
                .map(|comm| {
                    scope.spawn(move || {
                        let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
                        comm.all_reduce_sum(&x)
                    })
                })
                .collect();
            // Rank 0 fails instead of joining the collective (whether the others are already
            // waiting or not yet arrived, they get the error).
            std::thread::sleep(std::time::Duration::from_millis(50));
            failed.abort();
            for handle in waiting {
                let result = handle.join().unwrap();
                assert!(
                    matches!(result, Err(KernelError::Communication(ref m)) if m.contains("failed")),
                    "{result:?}"
                );
            }
        });
        // The group stays failed.
        let x = Tensor::new(&[1f32], &Device::Cpu).unwrap();
        assert!(ranks[0].all_reduce_sum(&x).is_err());
    }
}
