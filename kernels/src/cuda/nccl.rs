//! Tensor-parallel ranks on GPUs: a [`Communicator`] over NCCL, one rank per device of this
//! process (`ncclCommInitAll`), each communicator on candle's stream for its device so that
//! collectives are ordered with the model's kernels.

use crate::communicator::Communicator;
use crate::KernelError;
use candle_core::{CudaStorage, Device, Layout, Shape, Tensor};
use cudarc::nccl::safe::{Comm, ReduceOp};
use std::sync::Mutex;

/// An NCCL communicator that may move to its rank's thread.
struct RankComm(Comm);

// SAFETY: an NCCL communicator may be used from any host thread as long as calls on it do not
// overlap (NCCL's thread-safety rules); every use goes through the `Mutex` in `NcclCommunicator`,
// and the raw handle is only released by `Comm`'s own `Drop`.
#[allow(unsafe_code)]
unsafe impl Send for RankComm {}

/// The communicators of one process's GPUs.
pub struct NcclGroup;

impl NcclGroup {
    /// One communicator per device, in order (rank i on `devices[i]`); all must be CUDA.
    pub fn ranks(devices: &[Device]) -> Result<Vec<NcclCommunicator>, KernelError> {
        let streams = devices
            .iter()
            .map(|d| match d {
                Device::Cuda(cuda) => Ok(cuda.cuda_stream()),
                other => Err(KernelError::Communication(format!(
                    "NCCL ranks must be CUDA devices, got {:?}",
                    other.location()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let world = streams.len();
        let comms = Comm::from_devices(streams)
            .map_err(|e| KernelError::Communication(format!("NCCL initialisation: {e:?}")))?;
        Ok(comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| NcclCommunicator {
                rank,
                world,
                comm: Mutex::new(RankComm(comm)),
            })
            .collect())
    }
}

/// A rank of an [`NcclGroup`].
pub struct NcclCommunicator {
    rank: usize,
    world: usize,
    comm: Mutex<RankComm>,
}

/// The all-reduce as a candle op, so that it reads and writes the tensors' device memory.
struct AllReduce<'a> {
    comm: &'a Comm,
}

impl candle_core::CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "steerflow-nccl-all-reduce"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("an NCCL all-reduce needs tensors on a CUDA device")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (start, end) = crate::contiguous(layout, "an all-reduced tensor")?;
        let device = storage.device.clone();
        let send = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let mut receive = device.alloc_zeros::<f32>(end - start)?;
        self.comm
            .all_reduce(&send, &mut receive, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(receive, device),
            layout.shape().clone(),
        ))
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        let comm = self.comm.lock().map_err(|_| {
            KernelError::Communication("a rank panicked during a collective".into())
        })?;
        let dtype = x.dtype();
        let x = x.to_dtype(candle_core::DType::F32)?.contiguous()?;
        Ok(x.apply_op1_no_bwd(&AllReduce { comm: &comm.0 })?
            .to_dtype(dtype)?)
    }
}
