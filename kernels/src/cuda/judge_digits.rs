//! The judge's rating on the device: one block per row reads the full softmax's mass on the
//! digit tokens and their expectation (in f64), the CUDA twin of `judge_digits::digit_rating`.

use super::{driver, one_block_per_row, ptx};
use crate::contiguous;
use candle_core::{CudaStorage, Layout, Shape};
use cudarc::driver::PushKernelArg;
use std::sync::OnceLock;

const SOURCE: &str = r#"
#define THREADS 256

extern "C" __global__ void digit_ratings(
    const float* logits, int vocab, const unsigned int* digits, int n_digits, double* out
) {
    __shared__ double part[THREADS];
    __shared__ double result;
    const float* l = logits + (size_t)blockIdx.x * vocab;
    int chunk = (vocab + THREADS - 1) / THREADS;
    int lo = min((int)threadIdx.x * chunk, vocab);
    int hi = min(((int)threadIdx.x + 1) * chunk, vocab);

    double mine = -INFINITY;
    for (int i = lo; i < hi; i++) if (isfinite(l[i])) mine = fmax(mine, (double)l[i]);
    part[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        double m = -INFINITY;
        for (int t = 0; t < THREADS; t++) m = fmax(m, part[t]);
        result = m;
    }
    __syncthreads();
    double mx = result;
    __syncthreads();

    double sum = 0.0;
    for (int i = lo; i < hi; i++) if (isfinite(l[i])) sum += exp((double)l[i] - mx);
    part[threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int t = 0; t < THREADS; t++) total += part[t];
        double digit_total = 0.0, weighted = 0.0;
        for (int d = 0; d < n_digits; d++) {
            double w = exp((double)l[digits[d]] - mx);
            digit_total += w;
            weighted += d * w;
        }
        out[2 * blockIdx.x] = weighted / digit_total;
        out[2 * blockIdx.x + 1] = digit_total / total;
    }
}
"#;

static PTX: OnceLock<Result<String, String>> = OnceLock::new();

/// Launches `digit_ratings` over `[rows, vocab]` f32 logits; returns `[rows, 2]` f64 on the
/// device. The digit ids are checked against the vocabulary by the caller.
pub fn digit_ratings(
    storage: &CudaStorage,
    layout: &Layout,
    digit_token_ids: &[u32],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (rows, vocab) = layout.shape().dims2()?;
    if let Some(id) = digit_token_ids.iter().find(|&&id| id as usize >= vocab) {
        candle_core::bail!("digit token id {id} is outside the vocabulary of {vocab} tokens");
    }
    let device = storage.device.clone();
    let (start, end) = contiguous(layout, "logits")?;
    let logits = storage.as_cuda_slice::<f32>()?.slice(start..end);
    let func = device.get_or_load_custom_func(
        "digit_ratings",
        "steerflow_judge_digits",
        &ptx(&PTX, SOURCE)?,
    )?;
    let digits = device.clone_htod(digit_token_ids)?;
    let mut out = device.alloc_zeros::<f64>(rows * 2)?;
    let (vocab, n_digits) = (vocab as i32, digit_token_ids.len() as i32);
    let mut launch = func.builder();
    launch
        .arg(&logits)
        .arg(&vocab)
        .arg(&digits)
        .arg(&n_digits)
        .arg(&mut out);
    // SAFETY: the arguments match `digit_ratings` above; block r reads row r of `logits` and the
    // digit ids (all checked < vocab above), and writes only `out[2r]` and `out[2r + 1]`.
    #[allow(unsafe_code)]
    unsafe { launch.launch(one_block_per_row(rows)) }.map_err(driver)?;
    Ok((CudaStorage::wrap_cuda_slice(out, device), (rows, 2).into()))
}
