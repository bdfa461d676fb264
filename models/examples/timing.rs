//! Measures single-sequence prefill and decode speed: `cargo run --example timing -p steerflow-models`.

use std::time::Instant;
use steerflow_models::gguf::GgufModel;
use steerflow_models::registry::resolve_model;
use steerflow_models::LanguageModel;

/// Prefill and decode speed of the default model, one sequence at a time.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = resolve_model("default")?;
    let model = GgufModel::load(&path, &candle_core::Device::Cpu)?;
    for n in [16usize, 64, 200, 400] {
        let tokens: Vec<u32> = (0..n as u32).map(|i| 100 + i).collect();
        let t = Instant::now();
        let mut s = model.start();
        s.extend(&tokens)?;
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in 0..20 {
            s.extend(&[200 + i])?;
        }
        let decode = t.elapsed().as_secs_f64() / 20.0;
        println!(
            "prefill {n}: {:.3}s ({:.0} tok/s); decode at {n}: {:.1} ms/token",
            prefill,
            n as f64 / prefill,
            decode * 1e3
        );
    }
    Ok(())
}
