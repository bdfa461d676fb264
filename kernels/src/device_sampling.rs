//! Token sampling as the GPU does it: the CPU reference of `cuda/sampling.rs`.
//!
//! On a GPU the logits of a batch stay on the device: one block per row finds the row's maximum,
//! the unnormalised probabilities `exp((logit - max) / T)`, and the top-k / top-p cut as a
//! *threshold* found by bisection (a sort of the vocabulary per token would dominate), then walks
//! the kept probabilities in token order to the point `u × kept mass`, where `u` is the row's
//! uniform draw from its own seeded generator. Only the token ids come back to the host.
//!
//! The threshold rule keeps every token whose probability is at least the cut, so tokens tied
//! at the boundary are all kept, where the sort-based [`crate::sampling::TokenSampler`] keeps
//! them by id. The two samplers therefore agree on the distribution, not on every draw; each
//! device is deterministic on its own. This file is the reference the CUDA kernel is tested
//! against (same chunking, same order of sums).

pub use crate::row_kernel::{RowParams, BISECTION_STEPS, THREADS};

/// Sums `values` in the kernel's order: `THREADS` contiguous chunks, each summed in order, then
/// the chunk sums in order.
fn chunked_sum(values: impl Fn(usize) -> f32, len: usize) -> f32 {
    let chunk = len.div_ceil(THREADS);
    let mut total = 0f32;
    for t in 0..THREADS {
        total += chunked_range_sum(&values, (t * chunk).min(len)..((t + 1) * chunk).min(len));
    }
    total
}

/// The largest threshold (to bisection precision) whose kept set still satisfies `enough`.
fn bisect_cut(enough: impl Fn(f32) -> bool) -> f32 {
    // Probabilities are in (0, 1]: the largest is exactly 1.
    let (mut low, mut high) = (0f32, 1f32);
    for _ in 0..BISECTION_STEPS {
        let mid = 0.5 * (low + high);
        if enough(mid) {
            low = mid;
        } else {
            high = mid;
        }
    }
    low
}

/// Draws one token from `logits` as the CUDA kernel does.
pub fn sample_row(logits: &[f32], params: &RowParams) -> u32 {
    let len = logits.len();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / params.temperature;
    let prob = |i: usize| ((logits[i] - max) * inv_t).exp();
    let total = chunked_sum(prob, len);
    let mut cut = 0f32;
    if params.top_p < 1.0 {
        let target = params.top_p * total;
        cut = cut.max(bisect_cut(|tau| {
            chunked_sum(|i| if prob(i) >= tau { prob(i) } else { 0.0 }, len) >= target
        }));
    }
    if params.top_k > 0 && (params.top_k as usize) < len {
        let k = params.top_k as f32;
        cut = cut.max(bisect_cut(|tau| {
            chunked_sum(|i| if prob(i) >= tau { 1.0 } else { 0.0 }, len) >= k
        }));
    }
    let kept = |i: usize| if prob(i) >= cut { prob(i) } else { 0.0 };
    let mass = chunked_sum(kept, len);
    let target = params.uniform * mass;
    // The chunk whose kept mass holds the target (sums in order), then the token within it; when
    // rounding leaves the target past the end, the last kept token of the chunk or of the row.
    let chunk = len.div_ceil(THREADS);
    let last_kept = |range: std::ops::Range<usize>| range.rev().find(|&i| kept(i) > 0.0);
    let mut before = 0f32;
    for t in 0..THREADS {
        let range = (t * chunk).min(len)..((t + 1) * chunk).min(len);
        let part = chunked_range_sum(&kept, range.clone());
        if before + part > target {
            let mut running = before;
            for i in range.clone() {
                running += kept(i);
                if kept(i) > 0.0 && running > target {
                    return i as u32;
                }
            }
            return last_kept(range).unwrap_or(0) as u32;
        }
        before += part;
    }
    last_kept(0..len).unwrap_or(0) as u32
}

/// The in-order sum of `values` over `range` (one thread's chunk).
fn chunked_range_sum(values: &impl Fn(usize) -> f32, range: std::ops::Range<usize>) -> f32 {
    let mut part = 0f32;
    for i in range {
        part += values(i);
    }
    part
}

/// The batched sampling op: `[rows, vocab]` f32 logits to `[rows]` u32 token ids, one
/// [`RowParams`] per row. On the CPU it runs [`sample_row`]; on a CUDA device, the kernel in
/// `cuda/sampling.rs`, so that only the ids leave the device.
pub struct SampleRows {
    pub rows: Vec<RowParams>,
}

impl SampleRows {
    /// Runs the op on `logits` (`[rows, vocab]`, on any device) and returns the ids.
    pub fn sample(&self, logits: &candle_core::Tensor) -> Result<Vec<u32>, crate::KernelError> {
        let logits = logits.to_dtype(candle_core::DType::F32)?.contiguous()?;
        Ok(logits.apply_op1_no_bwd(self)?.to_vec1::<u32>()?)
    }

    fn check(&self, layout: &candle_core::Layout) -> candle_core::Result<(usize, usize)> {
        let (rows, vocab) = layout.shape().dims2()?;
        if rows != self.rows.len() {
            candle_core::bail!("{rows} rows of logits for {} samplers", self.rows.len());
        }
        Ok((rows, vocab))
    }
}

impl candle_core::CustomOp1 for SampleRows {
    fn name(&self) -> &'static str {
        "steerflow-sample-rows"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (rows, vocab) = self.check(layout)?;
        let (start, end) = crate::contiguous(layout, "logits")?;
        let logits = &storage.as_slice::<f32>()?[start..end];
        let ids = (0..rows)
            .map(|r| sample_row(&logits[r * vocab..(r + 1) * vocab], &self.rows[r]))
            .collect();
        Ok((candle_core::CpuStorage::U32(ids), rows.into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        let (rows, vocab) = self.check(layout)?;
        crate::cuda::sampling::sample_rows(storage, layout, rows, vocab, &self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: u32, uniform: f32) -> RowParams {
        RowParams {
            temperature,
            top_p,
            top_k,
            uniform,
        }
    }

    #[test]
    fn the_uniform_draw_walks_the_distribution_in_token_order() {
        // Probabilities 0.1, 0.2, 0.3, 0.4 (logits are their logs).
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let draw = |u| sample_row(&logits, &params(1.0, 1.0, 0, u));
        assert_eq!(draw(0.05), 0);
        assert_eq!(draw(0.15), 1);
        assert_eq!(draw(0.45), 2);
        assert_eq!(draw(0.95), 3);
        assert_eq!(draw(0.999_999), 3);
    }

    #[test]
    fn top_k_and_top_p_keep_the_head_only() {
        let logits: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        // top-k 1 is the argmax, whatever the draw.
        for u in [0.0, 0.3, 0.99] {
            assert_eq!(sample_row(&logits, &params(1.0, 1.0, 1, u)), 3);
        }
        // top-p 0.6 keeps 0.4 and 0.3 (0.4 alone is not enough), renormalised: 3/7 and 4/7.
        assert_eq!(sample_row(&logits, &params(1.0, 0.6, 0, 0.4)), 2);
        assert_eq!(sample_row(&logits, &params(1.0, 0.6, 0, 0.5)), 3);
        // Across a long vocabulary the kept set never reaches the tail.
        let long: Vec<f32> = (0..5000).map(|i| if i < 3 { 5.0 } else { -5.0 }).collect();
        for step in 0..100 {
            let token = sample_row(&long, &params(1.0, 0.9, 0, step as f32 / 100.0));
            assert!(token < 3, "{token}");
        }
    }

    #[test]
    fn the_batched_op_samples_each_row_with_its_own_params() {
        let logits: Vec<f32> = (0..3 * 700)
            .map(|i| ((i * 37) % 101) as f32 / 13.0)
            .collect();
        let tensor =
            candle_core::Tensor::from_vec(logits.clone(), (3, 700), &candle_core::Device::Cpu)
                .unwrap();
        let rows = vec![
            params(0.7, 0.9, 0, 0.3),
            params(1.0, 1.0, 5, 0.9),
            params(1.5, 0.5, 40, 0.01),
        ];
        let ids = SampleRows { rows: rows.clone() }.sample(&tensor).unwrap();
        for (r, id) in ids.iter().enumerate() {
            assert_eq!(*id, sample_row(&logits[r * 700..(r + 1) * 700], &rows[r]));
        }
        assert!(SampleRows {
            rows: rows[..2].to_vec()
        }
        .sample(&tensor)
        .is_err());
    }

    #[test]
    fn draws_follow_the_distribution() {
        // With evenly spread draws, counts match the probabilities at temperature 0.5
        // (probabilities squared, renormalised: 1/30, 4/30, 9/30, 16/30).
        let logits: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|p| p.ln()).collect();
        let mut counts = [0usize; 4];
        let n = 3000;
        for i in 0..n {
            let u = (i as f32 + 0.5) / n as f32;
            counts[sample_row(&logits, &params(0.5, 1.0, 0, u)) as usize] += 1;
        }
        assert_eq!(counts, [100, 400, 900, 1600]);
    }
}
