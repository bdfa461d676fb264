//! Batched token sampling on the device: one block per row, the CUDA twin of
//! `device_sampling::sample_row` (same chunks, same order of sums, same bisection).

use super::{driver, one_block_per_row, ptx};
use crate::contiguous;
use crate::row_kernel::{RowParams, BISECTION_STEPS};
use candle_core::{CudaStorage, Layout, Shape};
use cudarc::driver::PushKernelArg;
use std::sync::OnceLock;

const SOURCE: &str = r#"
#define THREADS 256

// The sum over the block of one value per thread, in thread order (as the CPU reference).
__device__ float block_sum(float mine, float* part, float* result) {
    part[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int t = 0; t < THREADS; t++) total += part[t];
        *result = total;
    }
    __syncthreads();
    float total = *result;
    __syncthreads();
    return total;
}

__device__ float prob(const float* l, int i, float mx, float inv_t) {
    return expf((l[i] - mx) * inv_t);
}

// mode 0: kept probability mass at or above tau; mode 1: count of such tokens.
__device__ float chunk_at_least(const float* l, int lo, int hi, float mx, float inv_t, float tau, int mode) {
    float part = 0.0f;
    for (int i = lo; i < hi; i++) {
        float p = prob(l, i, mx, inv_t);
        if (p >= tau) part += (mode == 0) ? p : 1.0f;
    }
    return part;
}

extern "C" __global__ void sample_rows(
    const float* logits, int vocab, int steps,
    const float* temperature, const float* top_p, const unsigned int* top_k, const float* uniform,
    unsigned int* out
) {
    __shared__ float part[THREADS];
    __shared__ float result;
    const float* l = logits + (size_t)blockIdx.x * vocab;
    int chunk = (vocab + THREADS - 1) / THREADS;
    int lo = min((int)threadIdx.x * chunk, vocab);
    int hi = min(((int)threadIdx.x + 1) * chunk, vocab);

    float mine = -INFINITY;
    for (int i = lo; i < hi; i++) mine = fmaxf(mine, l[i]);
    part[threadIdx.x] = mine;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = -INFINITY;
        for (int t = 0; t < THREADS; t++) m = fmaxf(m, part[t]);
        result = m;
    }
    __syncthreads();
    float mx = result;
    __syncthreads();
    float inv_t = 1.0f / temperature[blockIdx.x];

    float total = block_sum(chunk_at_least(l, lo, hi, mx, inv_t, 0.0f, 0), part, &result);
    float cut = 0.0f;
    if (top_p[blockIdx.x] < 1.0f) {
        float target = top_p[blockIdx.x] * total;
        float low = 0.0f, high = 1.0f;
        for (int s = 0; s < steps; s++) {
            float mid = 0.5f * (low + high);
            float mass = block_sum(chunk_at_least(l, lo, hi, mx, inv_t, mid, 0), part, &result);
            if (mass >= target) low = mid; else high = mid;
        }
        cut = fmaxf(cut, low);
    }
    unsigned int k = top_k[blockIdx.x];
    if (k > 0 && k < (unsigned int)vocab) {
        float low = 0.0f, high = 1.0f;
        for (int s = 0; s < steps; s++) {
            float mid = 0.5f * (low + high);
            float count = block_sum(chunk_at_least(l, lo, hi, mx, inv_t, mid, 1), part, &result);
            if (count >= (float)k) low = mid; else high = mid;
        }
        cut = fmaxf(cut, low);
    }

    part[threadIdx.x] = chunk_at_least(l, lo, hi, mx, inv_t, cut, 0);
    __syncthreads();
    if (threadIdx.x == 0) {
        float mass = 0.0f;
        for (int t = 0; t < THREADS; t++) mass += part[t];
        float target = uniform[blockIdx.x] * mass;
        float before = 0.0f;
        int chosen = -1;
        for (int t = 0; t < THREADS && chosen < 0; t++) {
            int a = min(t * chunk, vocab), b = min((t + 1) * chunk, vocab);
            if (before + part[t] > target) {
                float running = before;
                for (int i = a; i < b; i++) {
                    float p = prob(l, i, mx, inv_t);
                    float kept = p >= cut ? p : 0.0f;
                    running += kept;
                    if (kept > 0.0f && running > target) { chosen = i; break; }
                }
                if (chosen < 0) {
                    for (int i = b - 1; i >= a; i--) {
                        if (prob(l, i, mx, inv_t) >= cut) { chosen = i; break; }
                    }
                    if (chosen < 0) chosen = 0;
                }
            }
            before += part[t];
        }
        if (chosen < 0) {
            chosen = 0;
            for (int i = vocab - 1; i >= 0; i--) {
                if (prob(l, i, mx, inv_t) >= cut) { chosen = i; break; }
            }
        }
        out[blockIdx.x] = (unsigned int)chosen;
    }
}
"#;

static PTX: OnceLock<Result<String, String>> = OnceLock::new();

/// Launches `sample_rows` over `[rows, vocab]` f32 logits; returns `[rows]` u32 ids on the device.
pub fn sample_rows(
    storage: &CudaStorage,
    layout: &Layout,
    rows: usize,
    vocab: usize,
    params: &[RowParams],
) -> candle_core::Result<(CudaStorage, Shape)> {
    let device = storage.device.clone();
    let (start, end) = contiguous(layout, "logits")?;
    let logits = storage.as_cuda_slice::<f32>()?.slice(start..end);
    let func =
        device.get_or_load_custom_func("sample_rows", "steerflow_sampling", &ptx(&PTX, SOURCE)?)?;
    let column = |f: fn(&RowParams) -> f32| params.iter().map(f).collect::<Vec<f32>>();
    let temperature = device.clone_htod(&column(|p| p.temperature))?;
    let top_p = device.clone_htod(&column(|p| p.top_p))?;
    let top_k = device.clone_htod(&params.iter().map(|p| p.top_k).collect::<Vec<u32>>())?;
    let uniform = device.clone_htod(&column(|p| p.uniform))?;
    let mut out = device.alloc_zeros::<u32>(rows)?;
    let (vocab, steps) = (vocab as i32, BISECTION_STEPS as i32);
    let mut launch = func.builder();
    launch
        .arg(&logits)
        .arg(&vocab)
        .arg(&steps)
        .arg(&temperature)
        .arg(&top_p)
        .arg(&top_k)
        .arg(&uniform)
        .arg(&mut out);
    // SAFETY: the arguments match `sample_rows` above in number, order and type; block r reads
    // row r of `logits` (rows × vocab elements, checked by the layout) and one element of each
    // per-row array (`rows` long), and writes only `out[r]`.
    #[allow(unsafe_code)]
    unsafe { launch.launch(one_block_per_row(rows)) }.map_err(driver)?;
    Ok((CudaStorage::wrap_cuda_slice(out, device), rows.into()))
}
