//! Tensor parallelism on the CPU: reward models split over 2 and 4 in-process ranks (threads
//! exchanging partial sums through `ThreadGroup`) give the rewards of the unsplit model within
//! 1e-5 (f32), for a sequence-classification head with 5 and with 1 outputs (Qwen2: biased q,
//! k, v; Qwen3: per-head query and key norms), a causal-LM head read at a logit (Llama, Qwen3), and 4 ranks over 2 key/value heads (replicated kv).
//! With `STEERFLOW_TEST_DEVICE=cuda` (`scripts/gpu-check`) the ranks share that one GPU and the
//! in-process group; `kernels/tests/cuda.rs` runs NCCL itself.

mod support;

use candle_core::Device;
use std::path::PathBuf;
use steerflow_models::hf::{HeadKind, HfModel};

fn fixture(name: &str) -> PathBuf {
    support::workspace_root()
        .join("tests/fixtures/hf")
        .join(name)
}

/// Token sequences of different lengths (one batch, right-padded inside).
fn sequences(vocab: u32) -> Vec<Vec<u32>> {
    (0..6)
        .map(|s| {
            (0..(3 + 5 * s))
                .map(|i| (i * 31 + s * 7 + 1) % vocab)
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn split_reward_models_score_as_the_whole_model() {
    for (name, kind) in [
        ("llama-seqcls5-f32", HeadKind::SequenceClassification),
        ("qwen2-seqcls1-f32", HeadKind::SequenceClassification),
        ("qwen3-seqcls1-f32", HeadKind::SequenceClassification),
        ("qwen3-f32", HeadKind::CausalLm),
        ("llama-mlphead1-f32", HeadKind::SequenceClassification),
        ("gemma2-seqcls2-f32", HeadKind::SequenceClassification),
        ("gemma2-f32", HeadKind::CausalLm),
        ("gemma3-seqcls1-f32", HeadKind::SequenceClassification),
        ("gemma3-f32", HeadKind::CausalLm),
        ("llama3-f32", HeadKind::CausalLm),
    ] {
        let device = support::device();
        let whole = HfModel::load(&fixture(name), kind, &device).unwrap();
        let seqs = sequences(whole.config().vocab_size as u32);
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let expected = whole.last_token_outputs(&refs).unwrap();
        let scale = expected.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            scale > 1e-3,
            "{name}: outputs are all ~0, the test would prove nothing"
        );
        for ranks in [2, 4] {
            let split =
                HfModel::load_parallel(&fixture(name), kind, &vec![device.clone(); ranks]).unwrap();
            assert_eq!(split.tensor_parallel(), ranks);
            let got = split.last_token_outputs(&refs).unwrap();
            let diff = max_abs_diff(&got, &expected);
            assert!(
                diff <= 1e-5,
                "{name} over {ranks} ranks: outputs differ by {diff}"
            );
            // The hidden states too, position by position.
            let a = whole.hidden_states(refs[3]).unwrap();
            let b = split.hidden_states(refs[3]).unwrap();
            let diff = support::max_abs_diff(&a, &b);
            assert!(
                diff <= 1e-5,
                "{name} over {ranks} ranks: hidden states differ by {diff}"
            );
        }
    }
}

#[test]
fn a_split_that_does_not_divide_the_model_is_refused_and_split_models_do_not_generate() {
    // 4 heads: 3 ranks cannot share them.
    let err = HfModel::load_parallel(
        &fixture("llama-seqcls5-f32"),
        HeadKind::SequenceClassification,
        &vec![Device::Cpu; 3],
    )
    .err()
    .expect("3 ranks over 4 heads is refused")
    .to_string();
    assert!(err.contains("tensor_parallel = 3"), "{err}");
    let split = HfModel::load_parallel(
        &fixture("llama3-f32"),
        HeadKind::CausalLm,
        &[Device::Cpu, Device::Cpu],
    )
    .unwrap();
    assert!(split.start_session().is_err());
    assert!(split.into_language_model().is_err());
}
