//! Every GGUF weight format the int8 kernel runs, side by side with candle's quantized matmul
//! (`QMatMul`, what ran these formats before) on the same tensor in one run: a 1536 × 1536
//! product (Qwen2-1.5B's q and o; a multiple of 256, so the K-quants apply) at one decode row,
//! batches of 10 and 32, and a 300-token prefill. All threads (`RAYON_NUM_THREADS`, else the
//! cores); each time the best of three quarter-second runs, the two kernels alternating.
//!
//! `cargo run -p steerflow-kernels --example formats_bench` (the dev profile optimises this crate)

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;
use steerflow_kernels::qgemm::{matmul, PackedWeights, Path, Q8Weights, STORED_FORMATS};

const N: usize = 1536;
const K: usize = 1536;
const ROWS: [usize; 4] = [1, 10, 32, 300];

/// Seconds per call of `f`: the best of three runs of at least a quarter of a second.
fn per_call(mut f: impl FnMut()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let (started, mut calls) = (Instant::now(), 0u32);
            while started.elapsed().as_secs_f64() < 0.25 {
                f();
                calls += 1;
            }
            started.elapsed().as_secs_f64() / f64::from(calls)
        })
        .fold(f64::INFINITY, f64::min)
}

/// The tensor repacked for this CPU's fastest path (Q8_0 through its values, as the models
/// load it).
fn packed(q: &QTensor) -> PackedWeights {
    let layout = Path::best().layout();
    let raw = q.data().expect("bytes");
    match PackedWeights::from_gguf(layout, q.dtype(), &raw, (N, K)) {
        Some(weights) => weights.expect("repacked"),
        None => {
            let t = q.dequantize(&Device::Cpu).expect("dequantize");
            let values = t.flatten_all().and_then(|t| t.to_vec1()).expect("values");
            PackedWeights::Q8(Q8Weights::quantize(&values, N, K).expect("q8"))
        }
    }
}

fn main() {
    let threads = steerflow_kernels::threads::configured_threads(1);
    let _pool = steerflow_kernels::threads::join(threads);
    println!("threads: {threads}; path: {:?}; {N} × {K}\n", Path::best());
    println!(
        "| format | rows | steerflow (G multiply-adds/s) | candle | ratio |\n|---|---|---|---|---|"
    );
    let w: Vec<f32> = (0..N * K)
        .map(|i| ((i * 7919) % 1001) as f32 * 1e-3 - 0.5)
        .collect();
    let w = Tensor::from_vec(w, (N, K), &Device::Cpu).expect("w");
    for dtype in std::iter::once(GgmlDType::Q8_0).chain(STORED_FORMATS) {
        let q = QTensor::quantize(&w, dtype).expect("quantize");
        let ours = packed(&q);
        let theirs = QMatMul::from_qtensor(q).expect("qmatmul");
        for m in ROWS {
            let x: Vec<f32> = (0..m * K)
                .map(|i| ((i * 31) % 997) as f32 * 1e-2 - 5.0)
                .collect();
            let xt = Tensor::from_vec(x.clone(), (m, K), &Device::Cpu).expect("x");
            let ours_s = per_call(|| {
                std::hint::black_box(matmul(&x, &ours).expect("product"));
            });
            let theirs_s = per_call(|| {
                std::hint::black_box(theirs.forward(&xt).expect("qmatmul"));
            });
            let rate = |s: f64| (m * N * K) as f64 / s / 1e9;
            println!(
                "| {dtype:?} | {m} | {:.1} | {:.1} | {:.2}× |",
                rate(ours_s),
                rate(theirs_s),
                theirs_s / ours_s
            );
        }
    }
}
