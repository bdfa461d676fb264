//! What the row kernels and their CPU references share: the block size the sums are chunked
//! by, the bisection depth of the sampling cuts, and one row's sampling knobs. Below both
//! `device_sampling` (the CPU reference) and `cuda` (the kernels), so neither imports the other
//! back.

/// Threads per block of the CUDA kernel; the reference sums in the same chunks.
pub const THREADS: usize = 256;
/// Bisection steps for a cut: the threshold is found to 2^-STEPS of the largest probability.
pub const BISECTION_STEPS: usize = 30;

/// One row's sampling knobs, as the kernel takes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowParams {
    /// > 0 (greedy rows use an argmax instead).
    pub temperature: f32,
    /// In (0, 1]; 1 keeps everything.
    pub top_p: f32,
    /// 0 keeps everything.
    pub top_k: u32,
    /// The row's uniform draw in [0, 1).
    pub uniform: f32,
}
