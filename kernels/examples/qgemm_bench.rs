//! The int8 products at SmolLM2-135M's shapes on every path this CPU runs, and candle's f32
//! matmul at the same shapes, each as a fraction of this machine's measured peak
//! (`qgemm::peak`). All threads (`RAYON_NUM_THREADS`, else the cores), the main thread first.
//!
//! `cargo run -p steerflow-kernels --example qgemm_bench` (the dev profile optimises this crate)

use candle_core::{Device, Tensor};
use std::time::Instant;
use steerflow_kernels::qgemm::{matmul_with, peak, Path, Q8Weights};

/// (outputs, inputs) of the model's products: q and o, k and v, gate and up, down.
const SHAPES: [(usize, usize, &str); 4] = [
    (576, 576, "q/o"),
    (192, 576, "k/v"),
    (1536, 576, "gate/up"),
    (576, 1536, "down"),
];
/// Rows per product: one decode step alone, batches of 10 and 32, a judge prompt's prefill.
const ROWS: [usize; 4] = [1, 10, 32, 300];

/// Seconds per call of `f`, repeated for at least a quarter of a second.
fn per_call(mut f: impl FnMut()) -> f64 {
    f();
    let (started, mut calls) = (Instant::now(), 0u32);
    while started.elapsed().as_secs_f64() < 0.25 {
        f();
        calls += 1;
    }
    started.elapsed().as_secs_f64() / f64::from(calls)
}

fn main() {
    let threads = steerflow_kernels::threads::configured_threads(1);
    let _pool = steerflow_kernels::threads::join(threads);
    println!("threads: {threads}; paths: {:?}\n", Path::available());
    // Each peak is the best of three measurements, all taken before any product runs (a pool
    // thread still spinning after a product would take a core from them).
    let peaks: Vec<_> = Path::available()
        .into_iter()
        .filter_map(|path| {
            let runs = (0..3).filter_map(|_| peak::measure(path, threads));
            runs.reduce(|a, b| peak::Peak {
                int8_macs: a.int8_macs.max(b.int8_macs),
                f32_fmas: a.f32_fmas.max(b.f32_fmas),
            })
            .map(|p| (path, p))
        })
        .collect();
    let mut f32_peak = None;
    for (path, p) in peaks {
        f32_peak = Some(p.f32_fmas.max(f32_peak.unwrap_or(0.0)));
        println!(
            "{path:?} peak: {:.1} G int8 multiply-adds/s, {:.1} G f32 FMAs/s",
            p.int8_macs / 1e9,
            p.f32_fmas / 1e9
        );
        println!("| product | rows | G multiply-adds/s | of peak |\n|---|---|---|---|");
        for (n, k, name) in SHAPES {
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919) % 1001) as f32 * 1e-3 - 0.5)
                .collect();
            let weights = Q8Weights::quantize_as(path.layout(), &w, n, k).expect("shape");
            for m in ROWS {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 31) % 997) as f32 * 1e-2 - 5.0)
                    .collect();
                let s = per_call(|| {
                    std::hint::black_box(matmul_with(path, &x, &weights).expect("product"));
                });
                let rate = (m * n * k) as f64 / s;
                println!(
                    "| {name} {n}×{k} | {m} | {:.1} | {:.0}% |",
                    rate / 1e9,
                    100.0 * rate / p.int8_macs
                );
            }
        }
        println!();
    }
    let Some(f32_peak) = f32_peak else { return };
    println!(
        "candle f32 matmul (x · Wᵀ), of the f32 FMA peak {:.1} G/s:",
        f32_peak / 1e9
    );
    println!("| product | rows | G FMAs/s | of peak |\n|---|---|---|---|");
    for (n, k, name) in SHAPES {
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).expect("w");
        let wt = w.t().expect("transpose");
        for m in ROWS {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).expect("x");
            let s = per_call(|| {
                std::hint::black_box(x.matmul(&wt).expect("matmul"));
            });
            let rate = (m * n * k) as f64 / s;
            println!(
                "| {name} {n}×{k} | {m} | {:.1} | {:.0}% |",
                rate / 1e9,
                100.0 * rate / f32_peak
            );
        }
    }
}
