//! A decoder split over ranks (tensor parallelism), one thread per rank.
//!
//! Each rank thread owns its [`Shard`](crate::transformer::Shard) of the weights
//! ([`Decoder::load_shard`]) and a communicator: a [`ThreadGroup`] when the ranks are CPU
//! threads or share one device, NCCL when they are distinct GPUs (the `cuda` feature). A
//! forward pass is handed to every rank in the same order; each runs its heads and MLP columns,
//! the row-parallel layers all-reduce their partial sums, and every rank ends with the same
//! hidden states, of which rank 0's are returned. Reward models use it through `HfModel::load_parallel` (`reward.tensor_parallel`).

use crate::transformer::{Decoder, DecoderSpec, KvCache, Shard};
use crate::ModelError;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use steerflow_kernels::communicator::{Communicator, ThreadGroup};

/// One forward pass for every rank.
struct Job {
    ids: Tensor,
    positions: Tensor,
    key_mask: Tensor,
    reply: mpsc::Sender<Result<Tensor, String>>,
}

/// A decoder whose weights are split over `devices.len()` ranks.
pub struct TensorParallelDecoder {
    ranks: Vec<mpsc::Sender<Job>>,
    /// Jobs reach every rank in the same order: one caller at a time.
    submit: Mutex<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
    spec: DecoderSpec,
    device: Device,
    embedding: Tensor,
}

/// The communicators of a group of ranks on `devices`: threads exchanging tensors in memory
/// when the ranks are CPU threads or share one device (a GPU's ranks then sum on that GPU),
/// NCCL when they are distinct GPUs.
fn communicators(devices: &[Device]) -> Result<Vec<Arc<dyn Communicator>>, ModelError> {
    let one_device = devices.iter().all(|d| d.same_device(&devices[0]));
    if devices.iter().all(Device::is_cpu) || one_device {
        return Ok(ThreadGroup::ranks(devices.len())
            .into_iter()
            .map(|c| Arc::new(c) as Arc<dyn Communicator>)
            .collect());
    }
    #[cfg(feature = "cuda")]
    if devices.iter().all(Device::is_cuda) {
        return Ok(steerflow_kernels::cuda::nccl::NcclGroup::ranks(devices)
            .map_err(|e| ModelError::Tensor(candle_core::Error::Msg(e.to_string())))?
            .into_iter()
            .map(|c| Arc::new(c) as Arc<dyn Communicator>)
            .collect());
    }
    Err(ModelError::Tensor(candle_core::Error::Msg(
        "tensor-parallel ranks must all be CPU threads or all CUDA devices (the `cuda` feature)"
            .into(),
    )))
}

impl TensorParallelDecoder {
    /// Loads one shard per device from `tensors` (the checkpoint's weights, on the CPU) and
    /// starts the rank threads.
    pub fn load(
        spec: DecoderSpec,
        tensors: HashMap<String, Tensor>,
        devices: &[Device],
        dtype: DType,
    ) -> Result<Self, ModelError> {
        Shard::check(&spec, devices.len())
            .map_err(|m| ModelError::Tensor(candle_core::Error::Msg(m)))?;
        let comms = communicators(devices)?;
        let (loaded_tx, loaded_rx) = mpsc::channel::<(usize, Result<Tensor, String>)>();
        let mut ranks = Vec::with_capacity(devices.len());
        let mut threads = Vec::with_capacity(devices.len());
        for (comm, device) in comms.into_iter().zip(devices) {
            let (job_tx, job_rx) = mpsc::channel::<Job>();
            ranks.push(job_tx);
            let (spec, tensors, device, loaded) = (
                spec.clone(),
                tensors.clone(),
                device.clone(),
                loaded_tx.clone(),
            );
            let rank = comm.rank();
            let thread = std::thread::Builder::new()
                .name(format!("tp-rank-{rank}"))
                .spawn(move || {
                    let vb = VarBuilder::from_tensors(tensors, dtype, &device);
                    let group = comm.clone();
                    let decoder = match Decoder::load_shard(spec, vb, Some(comm)) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = loaded.send((rank, Err(e.to_string())));
                            return;
                        }
                    };
                    let _ = loaded.send((rank, Ok(decoder.embedding_weight().clone())));
                    drop(loaded);
                    for job in job_rx {
                        let run = || -> candle_core::Result<Tensor> {
                            let ids = job.ids.to_device(&device)?;
                            let positions = job.positions.to_device(&device)?;
                            let key_mask = job.key_mask.to_device(&device)?;
                            decoder.forward(&ids, &positions, &key_mask, &mut KvCache::default())
                        };
                        let result = run().map_err(|e| e.to_string());
                        if result.is_err() {
                            // The other ranks may be waiting for this one in a collective.
                            group.abort();
                        }
                        let _ = job.reply.send(result);
                    }
                })
                .map_err(|e| {
                    ModelError::Tensor(candle_core::Error::Msg(format!(
                        "cannot start a tensor-parallel rank: {e}"
                    )))
                })?;
            threads.push(thread);
        }
        drop(loaded_tx);
        let mut embedding = None;
        for (rank, result) in loaded_rx {
            match result {
                Ok(e) if rank == 0 => embedding = Some(e),
                Ok(_) => {}
                Err(message) => {
                    return Err(ModelError::Tensor(candle_core::Error::Msg(format!(
                        "tensor-parallel rank {rank}: {message}"
                    ))))
                }
            }
        }
        let embedding = embedding.ok_or_else(|| {
            ModelError::Tensor(candle_core::Error::Msg("rank 0 did not load".into()))
        })?;
        Ok(Self {
            ranks,
            submit: Mutex::new(()),
            threads,
            spec,
            device: devices[0].clone(),
            embedding,
        })
    }

    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    /// Rank 0's device, where inputs are built and results land.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Rank 0's copy of the input embedding matrix (tied output heads use it).
    pub fn embedding_weight(&self) -> &Tensor {
        &self.embedding
    }

    /// Ranks in the group.
    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    /// [`Decoder::forward`] from an empty cache, on every rank; returns rank 0's hidden states.
    pub fn forward(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let failed = |m: String| ModelError::Tensor(candle_core::Error::Msg(m));
        let _turn = self
            .submit
            .lock()
            .map_err(|_| failed("a tensor-parallel call panicked".into()))?;
        let mut replies = Vec::with_capacity(self.ranks.len());
        for rank in &self.ranks {
            let (reply, answer) = mpsc::channel();
            rank.send(Job {
                ids: ids.clone(),
                positions: positions.clone(),
                key_mask: key_mask.clone(),
                reply,
            })
            .map_err(|_| failed("a tensor-parallel rank has stopped".into()))?;
            replies.push(answer);
        }
        let mut first = None;
        for (rank, answer) in replies.into_iter().enumerate() {
            let hidden = answer
                .recv()
                .map_err(|_| failed(format!("tensor-parallel rank {rank} stopped")))?
                .map_err(|m| failed(format!("tensor-parallel rank {rank}: {m}")))?;
            if rank == 0 {
                first = Some(hidden);
            }
        }
        first.ok_or_else(|| failed("no ranks".into()))
    }
}

impl Drop for TensorParallelDecoder {
    fn drop(&mut self) {
        self.ranks.clear(); // closes the job channels: the rank threads end
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
