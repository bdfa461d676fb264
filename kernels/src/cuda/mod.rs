//! CUDA kernels and NCCL (the `cuda` feature), through cudarc.
//!
//! The kernels are CUDA C compiled to PTX by NVRTC the first time a process uses them (so the
//! build needs no `nvcc` for them) and loaded once per device through candle's module cache;
//! they run on candle's stream for the device, ordered with the model's own kernels. Each has a
//! CPU reference that the GPU tests compare against: `device_sampling::sample_row` and
//! `judge_digits::digit_rating`.

pub mod judge_digits;
pub mod nccl;
pub mod sampling;

use std::sync::OnceLock;

/// Threads per block of the row kernels (the CPU references sum in the same chunks).
pub const THREADS: u32 = crate::row_kernel::THREADS as u32;

/// PTX of `source`, compiled once per process.
fn ptx(
    cache: &'static OnceLock<Result<String, String>>,
    source: &str,
) -> candle_core::Result<String> {
    cache
        .get_or_init(|| {
            cudarc::nvrtc::compile_ptx(source)
                .map(|p| p.to_src())
                .map_err(|e| format!("NVRTC could not compile a steerflow kernel: {e:?}"))
        })
        .clone()
        .map_err(candle_core::Error::Msg)
}

/// A driver error as a candle error.
fn driver(e: cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::Msg(format!("CUDA: {e}"))
}

/// The launch of a row kernel: one block of `THREADS` per row.
fn one_block_per_row(rows: usize) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
