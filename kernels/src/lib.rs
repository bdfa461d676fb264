//! Compute below the model: token sampling, the judge's digit-probability extraction, and the
//! collectives of tensor-parallel models.
//!
//! - [`sampling`]: the seeded per-sequence sampler the engine uses on the CPU.
//! - [`device_sampling`]: batched sampling as the GPU does it (threshold cuts, one launch per
//!   batch); its CPU code is the reference for the CUDA kernel.
//! - [`judge_digits`]: the judge's rating from next-token logits, per row or batched.
//! - [`qgemm`]: int8 matrix products on the CPU (Q8_0 weights × int8 activations): AVX-512
//!   VNNI, AVX2 and a plain reference, bit-identical to each other.
//! - [`attention`]: one new token's attention over a sequence's cached keys and values on the
//!   CPU (AVX2 + FMA and a plain reference, bit-identical to each other).
//! - [`threads`]: each thread of work's own pool of compute threads.
//! - [`communicator`]: all-reduce between ranks: threads in-process, NCCL on GPUs.
//! - `cuda` (the `cuda` feature): the CUDA kernels (NVRTC) and the NCCL communicator.

pub mod attention;
pub mod communicator;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device_sampling;
pub mod judge_digits;
pub mod qgemm;
pub mod row_kernel;
pub mod sampling;
pub mod threads;

/// The `[start, end)` of a contiguous layout, or an error naming `what` (every op here reads its
/// input as one flat run, on the CPU and on the device).
pub(crate) fn contiguous(
    layout: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<(usize, usize)> {
    layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))
}

/// The one error type of the kernels crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("invalid sampling parameters: {0}")]
    InvalidParams(String),
    #[error("digit token id {id} is outside the vocabulary of {vocab} tokens")]
    DigitOutOfVocab { id: u32, vocab: usize },
    #[error("collective communication failed: {0}")]
    Communication(String),
}
