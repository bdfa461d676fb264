//! A sequence's keys and values per block, and one new token's attention over them on the CPU.
//!
//! On the CPU the keys and values of a block are kept as plain vectors, position after position
//! (`[position][kv_head][head_dim]`), appended in place; a forked session shares its parent's
//! vectors until one of them appends (copy on write, `Arc::make_mut`), so the samples drawn from
//! one prefilled prompt copy its cache once each, not once per step (before, each step
//! concatenated the whole cache anew: ~10% of decode time at batch 32). A decode step (one new
//! token) attends in plain Rust over them ([`decode_attention`]), without the dozen tensors and
//! copies the same few thousand multiply-adds per head cost as candle operations; under
//! `STEERFLOW_CPU_MATMUL=candle` through candle's operations instead, as candle's own model
//! (tests/engine.rs holds the two to 1e-4: at that depth the int8 activations amplify a change
//! of summation order). A prefill chunk reads the cache as a tensor and runs candle's matmuls.
//! On a GPU the cache stays tensors, concatenated each step.

use candle_core::Tensor;
use std::sync::Arc;

/// One block's keys and values of one sequence.
#[derive(Clone, Debug)]
pub(super) enum LayerKv {
    /// `[1, kv_heads, positions, head_dim]` on the model's device.
    Tensors(Tensor, Tensor),
    /// The CPU's: `[position][kv_head][head_dim]`, shared with forked sessions until written.
    Host {
        keys: Arc<Vec<f32>>,
        values: Arc<Vec<f32>>,
    },
}

/// The attention's dimensions and score transform.
#[derive(Clone, Copy, Debug)]
pub(super) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Scores are `q·k / divisor`, then `cap·tanh(score / cap)` with a soft cap.
    pub divisor: f64,
    pub softcap: Option<f64>,
}

impl LayerKv {
    /// Appends `keys` and `values` (`[t][kv_head][head_dim]` each) to the host cache `cache`,
    /// creating it; copies the shared part first if a forked session shares it.
    pub(super) fn append_host(cache: &mut Option<LayerKv>, keys: &[f32], values: &[f32]) {
        match cache {
            Some(LayerKv::Host { keys: k, values: v }) => {
                Arc::make_mut(k).extend_from_slice(keys);
                Arc::make_mut(v).extend_from_slice(values);
            }
            _ => {
                *cache = Some(LayerKv::Host {
                    keys: Arc::new(keys.to_vec()),
                    values: Arc::new(values.to_vec()),
                })
            }
        }
    }
}

/// `a · b`, summed in eight interleaved lanes (so the compiler vectorizes it; a single running
/// sum must add in order, one addition at a time), the lanes then added in order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Numerically stable softmax of `scores` in place (positions holding `-inf` become 0).
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

/// One new token's attention: `q` (`[head][head_dim]`) over the cached `keys` and `values`
/// (`[position][kv_head][head_dim]`, the new token's included), query head h reading kv head
/// `h / (heads / kv_heads)`, seeing the positions `visible` only. Returns `[head][head_dim]`.
/// What candle's path computes (scores, soft cap, softmax, weighted sum), summed in order.
pub(super) fn decode_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    shape: Heads,
    visible: std::ops::Range<usize>,
) -> Vec<f32> {
    let (hd, kv) = (shape.head_dim, shape.kv_heads);
    let rep = shape.heads / kv;
    let divisor = shape.divisor as f32;
    let mut out = vec![0f32; shape.heads * hd];
    let mut scores = vec![0f32; visible.len()];
    for (h, y) in out.chunks_exact_mut(hd).enumerate() {
        let (g, qh) = (h / rep, &q[h * hd..(h + 1) * hd]);
        for (s, j) in scores.iter_mut().zip(visible.clone()) {
            let k = &keys[(j * kv + g) * hd..][..hd];
            let score = dot(qh, k) / divisor;
            *s = match shape.softcap {
                Some(cap) => (score / cap as f32).tanh() * cap as f32,
                None => score,
            };
        }
        softmax(&mut scores);
        for (p, j) in scores.iter().zip(visible.clone()) {
            let v = &values[(j * kv + g) * hd..][..hd];
            for (o, x) in y.iter_mut().zip(v) {
                *o += p * x;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against candle's operations on the same numbers (the path prefill takes): within 1e-6.
    #[test]
    fn decode_attention_is_candles_attention() {
        // Values in [-2, 2) from a linear congruential sequence.
        let mut state = 3u64;
        let (heads, kv, hd, positions) = (6, 2, 16, 37);
        for (softcap, visible) in [(None, 0..positions), (Some(5.0), 10..positions)] {
            let shape = Heads {
                heads,
                kv_heads: kv,
                head_dim: hd,
                divisor: (hd as f64).sqrt(),
                softcap,
            };
            let mut random = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
                    })
                    .collect()
            };
            let (q, keys, values) = (
                random(heads * hd),
                random(positions * kv * hd),
                random(positions * kv * hd),
            );
            let ours = decode_attention(&q, &keys, &values, shape, visible.clone());
            let cpu = Device::Cpu;
            let t = |v: &[f32], n: usize| {
                Tensor::from_slice(v, (n, kv, hd), &cpu)
                    .unwrap()
                    .narrow(0, visible.start, visible.len())
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let (k, v) = (t(&keys, positions), t(&values, positions));
            let q = Tensor::from_slice(&q, (kv, heads / kv, hd), &cpu).unwrap();
            let mut scores = (q.matmul(&k.t().unwrap()).unwrap() / shape.divisor).unwrap();
            if let Some(cap) = softcap {
                scores = ((scores / cap).unwrap().tanh().unwrap() * cap).unwrap();
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let theirs: Vec<f32> = probs
                .matmul(&v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_forked_cache_is_copied_when_written_not_before() {
        let mut parent = None;
        LayerKv::append_host(&mut parent, &[1.0, 2.0], &[3.0, 4.0]);
        let mut child = parent.clone();
        let ptr = |c: &Option<LayerKv>| match c {
            Some(LayerKv::Host { keys, .. }) => Arc::as_ptr(keys),
            _ => std::ptr::null(),
        };
        assert_eq!(ptr(&parent), ptr(&child));
        LayerKv::append_host(&mut child, &[5.0, 6.0], &[7.0, 8.0]);
        assert_ne!(ptr(&parent), ptr(&child));
        let keys = |c: &Option<LayerKv>| match c {
            Some(LayerKv::Host { keys, .. }) => keys.to_vec(),
            _ => vec![],
        };
        assert_eq!(keys(&parent), [1.0, 2.0]);
        assert_eq!(keys(&child), [1.0, 2.0, 5.0, 6.0]);
    }
}
