//! The generation engine on the default model: our ragged-batch GGUF decoder against candle's
//! quantized llama, batched rows against single sequences, and continuous batching against
//! one-sequence-at-a-time generation with the same seeds.

mod support;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use steerflow_kernels::sampling::{SamplingParams, TokenSampler};
use steerflow_models::engine::{EngineLimits, GenerationRequest};
use steerflow_models::generation::{earliest_stop, Generation, GenerationParams};
use steerflow_models::gguf::requantize;
use steerflow_models::policy::Policy;
use steerflow_models::registry::resolve_model;
use steerflow_models::LanguageModel;
use steerflow_operators::records::{FinishReason, Message};
use steerflow_operators::seeding::sample_seed;

fn prompt(policy: &Policy, text: &str) -> Vec<u32> {
    policy.prompt_tokens(&[Message::new("user", text)]).unwrap()
}

#[test]
fn our_decoder_computes_what_candles_quantized_llama_computes() {
    // candle's own model on the same (requantized) weights is the reference; the operations are
    // the same, so the tolerance is tight: 1e-4 on logits of magnitude ~10.
    let path = resolve_model("default").unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let (content, mut bytes) = requantize(content, &mut file).unwrap();
    let mut reference = ModelWeights::from_gguf(content, &mut bytes, &Device::Cpu).unwrap();
    // Our decoder with candle's matrix kernel: the same operations as candle's model. (The int8
    // kernel differs from candle's by its f32 activation scales; tests/models.rs holds it to
    // transformers.)
    let ours_model = steerflow_models::gguf::GgufModel::load_with(
        &path,
        &Device::Cpu,
        steerflow_models::qlinear::CpuMatmul::Candle,
    )
    .unwrap();
    let policy = Policy::new(support::default_model());
    let tokens = prompt(&policy, "Name three rivers in Africa.");
    let mut session = ours_model.start();
    let ours = session.extend(&tokens).unwrap();
    let theirs = reference
        .forward(
            &Tensor::new(tokens.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            0,
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert!(
        support::max_abs_diff(&ours, &theirs) < 1e-4,
        "{}",
        support::max_abs_diff(&ours, &theirs)
    );
    let mut position = tokens.len();
    for next in [330u32, 2012, 28] {
        let ours = session.extend(&[next]).unwrap();
        let input = Tensor::new(&[next], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let theirs = reference
            .forward(&input, position)
            .unwrap()
            .squeeze(0)
            .unwrap();
        position += 1;
        let diff = support::max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-4, "decode at {position}: {diff}");
    }
}

#[test]
fn a_ragged_batch_computes_each_row_as_it_would_alone() {
    let model = support::default_model();
    let policy = Policy::new(model.clone());
    let long = prompt(
        &policy,
        "Explain in detail why the sky is blue during the day.",
    );
    let short = prompt(&policy, "Hi");
    // Two sessions at different positions, one decoding a token, one prefilling a chunk.
    let mut a = model.start();
    a.extend(&long).unwrap();
    let mut b = model.start();
    let (mut a_alone, mut b_alone) = (a.fork(), b.fork());
    let batched = model
        .extend_batch(&mut [a.as_mut(), b.as_mut()], &[&[42], &short])
        .unwrap();
    assert_eq!(batched.dims()[0], 2);
    let a_row = a_alone.extend(&[42]).unwrap();
    let b_row = b_alone.extend(&short).unwrap();
    // Each row runs the same kernels on the same numbers: equal to the last bit.
    assert_eq!(support::max_abs_diff(&batched.get(0).unwrap(), &a_row), 0.0);
    assert_eq!(support::max_abs_diff(&batched.get(1).unwrap(), &b_row), 0.0);
    assert_eq!((a.position(), b.position()), (long.len() + 1, short.len()));
}

/// One sample drawn the plain way: its own session, one token per step, no batching at all.
fn one_at_a_time(
    model: &dyn LanguageModel,
    prompt: &[u32],
    seed: u64,
    params: &GenerationParams,
) -> Generation {
    let text = model.text();
    let mut session = model.start();
    let mut logits = session.extend(prompt).unwrap();
    let mut sampler = TokenSampler::new(seed, &params.sampling).unwrap();
    let mut ids = Vec::new();
    let mut finish = FinishReason::Length;
    let mut cut = None;
    while ids.len() < params.max_new_tokens {
        let next = sampler.sample(&logits).unwrap();
        if text.is_eos(next) {
            finish = FinishReason::Eos;
            break;
        }
        ids.push(next);
        if let Some(at) = earliest_stop(&text.decode(&ids).unwrap(), &params.stop) {
            cut = Some(at);
            finish = FinishReason::Stop;
            break;
        }
        if ids.len() == params.max_new_tokens {
            break;
        }
        logits = session.extend(&[next]).unwrap();
    }
    let mut out = text.decode(&ids).unwrap();
    if let Some(at) = cut {
        out.truncate(at);
    }
    Generation {
        text: out,
        new_tokens: ids.len() as u32,
        finish,
    }
}

#[test]
fn continuous_batching_gives_the_tokens_of_one_sequence_at_a_time() {
    let model = support::default_model();
    let policy = Policy::new(model.clone());
    let params = GenerationParams {
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 0,
        },
        max_new_tokens: 14,
        stop: vec![".".to_string()],
    };
    let texts = [
        "Write a haiku about the sea",
        "What is 2 + 2?",
        "List some colours of the rainbow, with a word on each one of them, please",
        "Say hello",
    ];
    let requests: Vec<GenerationRequest> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| GenerationRequest {
            prompt_tokens: prompt(&policy, t),
            seeds: (0..3)
                .map(|s| sample_seed(7, &format!("p{i}"), s))
                .collect(),
        })
        .collect();
    // Room for two prompts' samples at once: the others join as samples leave.
    let limits = EngineLimits {
        max_sequences: 7,
        max_tokens: 100_000,
    };
    let mut results: Vec<Option<Vec<Generation>>> = vec![None; requests.len()];
    let mut order = Vec::new();
    let mut drawn_in_steps = 0u64;
    let stats = policy.generate_many(
        requests.clone(),
        &[],
        &params,
        &limits,
        (
            |i, r| {
                let (generations, counters) = r.unwrap();
                assert_eq!(
                    counters.prompt_tokens_prefilled,
                    requests[i].prompt_tokens.len() as u64
                );
                order.push(i);
                results[i] = Some(generations);
            },
            |n| drawn_in_steps += n,
        ),
        || false,
    );
    assert_eq!(order.len(), requests.len(), "every request reported once");
    // The progress reported step by step adds up to the tokens of the results.
    let generated: u64 = results
        .iter()
        .flatten()
        .flatten()
        .map(|g| u64::from(g.new_tokens))
        .sum();
    assert_eq!(drawn_in_steps, generated);
    assert!(stats.peak_sequences <= limits.max_sequences, "{stats:?}");
    assert!(
        stats.peak_sequences > 3,
        "prompts never shared a batch: {stats:?}"
    );
    for (i, request) in requests.iter().enumerate() {
        let batched = results[i].as_ref().unwrap();
        for (s, &seed) in request.seeds.iter().enumerate() {
            let alone = one_at_a_time(model.as_ref(), &request.prompt_tokens, seed, &params);
            assert_eq!(batched[s], alone, "prompt {i} sample {s}");
        }
    }
    // A token budget smaller than one request still runs it, alone.
    let tight = EngineLimits {
        max_sequences: 64,
        max_tokens: 10,
    };
    let mut again = vec![None; requests.len()];
    let stats = policy.generate_many(
        requests.clone(),
        &[],
        &params,
        &tight,
        (|i, r| again[i] = Some(r.unwrap().0), |_| {}),
        || false,
    );
    assert_eq!(stats.peak_sequences, 3, "{stats:?}");
    assert_eq!(again, results);
}
