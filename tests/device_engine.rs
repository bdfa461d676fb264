//! The GGUF engine on the device under test (`STEERFLOW_TEST_DEVICE`, the CPU by default)
//! against the same file on the CPU: greedy tokens through the KV cache and through the policy's
//! batched engine, and the judge's ratings. The model is `$STEERFLOW_TEST_GGUF` (the GPU check's
//! tiny GGUF, `scripts/fixtures/tiny_gguf.py`) or the default model. On the CPU both sides are
//! the same code and must agree exactly; on a GPU, floats differ in the last bits, so tokens
//! must agree except at a step where the CPU's top two logits are within 1e-3 (a near tie,
//! which the GPU may break the other way; the test then stops comparing that sequence).

mod support;

use candle_core::Device;
use std::sync::Arc;
use steerflow_kernels::sampling::SamplingParams;
use steerflow_models::generation::GenerationParams;
use steerflow_models::gguf::GgufModel;
use steerflow_models::judge::{helpsteer2_attributes, Judge};
use steerflow_models::policy::Policy;
use steerflow_models::LanguageModel;
use steerflow_operators::records::Message;

const NEAR_TIE: f32 = 1e-3;
const PROMPTS: [&str; 3] = [
    "Name a primary colour.",
    "Write one line about the sea.",
    "What is 2 + 2?",
];

fn load(device: &Device) -> Arc<dyn LanguageModel> {
    let path = match std::env::var_os("STEERFLOW_TEST_GGUF") {
        Some(p) => std::path::PathBuf::from(p),
        None => steerflow_models::registry::resolve_model("default").expect("default model"),
    };
    Arc::new(GgufModel::load(&path, device).expect("the GGUF loads"))
}

fn logits_vec(t: &candle_core::Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Greedy tokens and, per step, the gap between the top two logits.
fn greedy(model: &dyn LanguageModel, prompt: &[u32], steps: usize) -> Vec<(u32, f32)> {
    let mut session = model.start();
    let mut logits = logits_vec(&session.extend(prompt).unwrap());
    let mut out = Vec::new();
    for _ in 0..steps {
        let (best, top) = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, v)| (i as u32, *v))
            .unwrap();
        let second = logits
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != best)
            .map(|(_, v)| *v)
            .fold(f32::NEG_INFINITY, f32::max);
        out.push((best, top - second));
        logits = logits_vec(&session.extend(&[best]).unwrap());
    }
    out
}

#[test]
fn greedy_tokens_on_the_device_are_the_cpus() {
    let device = support::device();
    let (cpu, dev) = (load(&Device::Cpu), load(&device));
    let policy = Policy::new(cpu.clone());
    let mut compared = 0;
    for text in PROMPTS {
        let prompt = policy.prompt_tokens(&[Message::new("user", text)]).unwrap();
        let (a, b) = (
            greedy(cpu.as_ref(), &prompt, 24),
            greedy(dev.as_ref(), &prompt, 24),
        );
        for (step, ((ta, gap), (tb, _))) in a.iter().zip(&b).enumerate() {
            if ta != tb {
                assert!(
                    device.is_cuda() && *gap < NEAR_TIE,
                    "{text:?} step {step}: {tb} on {device:?}, {ta} on the CPU (top-2 gap {gap})"
                );
                eprintln!("{text:?}: a near tie at step {step} (gap {gap}); stopped comparing");
                break;
            }
            compared += 1;
        }
    }
    eprintln!("{compared} greedy steps compared on {device:?}");
    assert!(compared >= 24, "too few steps compared: {compared}");
}

#[test]
fn the_batched_engine_and_the_judge_on_the_device_agree_with_the_cpu() {
    let device = support::device();
    let params = GenerationParams {
        sampling: SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        },
        max_new_tokens: 16,
        stop: vec![],
    };
    let (cpu, dev) = (load(&Device::Cpu), load(&device));
    let (on_cpu, on_dev) = (Policy::new(cpu.clone()), Policy::new(dev.clone()));
    let prompt = on_cpu
        .prompt_tokens(&[Message::new("user", PROMPTS[0])])
        .unwrap();
    let (a, _) = on_cpu.generate(&prompt, &[0, 1, 2], &params).unwrap();
    let (b, _) = on_dev.generate(&prompt, &[0, 1, 2], &params).unwrap();
    // Greedy ignores the seeds: three equal rows in one batch, on each device.
    assert!(a.iter().all(|g| *g == a[0]) && b.iter().all(|g| *g == b[0]));
    let near_tie = greedy(cpu.as_ref(), &prompt, 16)
        .iter()
        .any(|(_, gap)| *gap < NEAR_TIE);
    if !near_tie {
        assert_eq!(a[0], b[0], "batched greedy text on {device:?}");
    }
    let conversation = [Message::new("user", PROMPTS[1])];
    let response = "The sea is a mirror of the sky.";
    let rate = |model: Arc<dyn LanguageModel>| {
        Judge::new(model, helpsteer2_attributes())
            .unwrap()
            .score(&conversation, response)
            .unwrap()
            .attributes
    };
    let (ra, rb) = (rate(cpu), rate(dev));
    assert_eq!(ra.len(), 5);
    for (k, (x, y)) in ra.iter().zip(&rb).enumerate() {
        assert!(
            (x - y).abs() < 1e-3,
            "attribute {k}: {y} on {device:?}, {x} on the CPU"
        );
    }
}
