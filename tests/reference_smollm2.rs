//! SmolLM2-135M-Instruct through steerflow against Hugging Face transformers.
//!
//! `tests/fixtures/smollm2_reference.json` was written by `scripts/fixtures/gen_smollm2_reference.py`
//! (transformers 5.23, which builds the tokenizer from the GGUF metadata and dequantizes the
//! weights to f32). This test loads the same GGUF with its weights dequantized to f32 too
//! (`CANDLE_DEQUANTIZE_ALL=1`, set before anything is loaded; this file is its own test process)
//! and checks:
//! - tokenizer ids and decoded text: exactly equal;
//! - chat template rendering: byte-identical;
//! - last-position logits of three prompts: within 1e-3 absolute (f32 on both sides, different
//!   summation orders over 30 layers; measured 2.5e-5 on logits around 25);
//! - greedy continuation: the same token ids, stopping at `<|im_end|>` like transformers;
//! - the judge's shared-prefix ratings equal fresh full prefills within 1e-3 (measured 4e-6).
//!
//! The quantized path (the default at run time, Q4_1 weights with Q8_1 activations) is checked
//! against the same numbers with a looser, stated tolerance in `quantized_logits_stay_close`.

mod support;

use serde_json::Value;
use std::sync::Arc;
use steerflow_kernels::judge_digits::digit_rating;
use steerflow_kernels::sampling::SamplingParams;
use steerflow_models::generation::GenerationParams;
use steerflow_models::gguf::GgufModel;
use steerflow_models::judge::{helpsteer2_attributes, Judge};
use steerflow_models::policy::Policy;
use steerflow_models::registry::resolve_model;
use steerflow_models::LanguageModel;
use steerflow_operators::records::{FinishReason, Message};

fn fixture() -> Value {
    let path = support::workspace_root().join("tests/fixtures/smollm2_reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_logit_error(model: &GgufModel, case: &Value) -> f32 {
    let input = ids(&case["ids"]);
    let logits: Vec<f32> = model.start().extend(&input).unwrap().to_vec1().unwrap();
    let mut worst = 0f32;
    for pair in case["last_logits_top"].as_array().unwrap() {
        let (id, expected) = (
            pair[0].as_u64().unwrap() as usize,
            pair[1].as_f64().unwrap() as f32,
        );
        worst = worst.max((logits[id] - expected).abs());
    }
    for (k, expected) in case["digit_logits"].as_array().unwrap().iter().enumerate() {
        worst = worst.max((logits[32 + k] - expected.as_f64().unwrap() as f32).abs());
    }
    worst
}

#[test]
fn smollm2_matches_transformers() {
    // Safe here: set before any thread of this process reads it.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let f = fixture();
    let path = resolve_model("default").expect("default model installed");
    let model = GgufModel::load(&path, &candle_core::Device::Cpu).unwrap();
    let text = model.text();

    for case in f["tokenizer"].as_array().unwrap() {
        let s = case["text"].as_str().unwrap();
        assert_eq!(
            text.encode(s).unwrap(),
            ids(&case["ids"]),
            "encoding of {s:?}"
        );
    }
    for case in f["decode"].as_array().unwrap() {
        assert_eq!(
            text.decode(&ids(&case["ids"])).unwrap(),
            case["text"].as_str().unwrap()
        );
    }
    for case in f["chat_template"]["cases"].as_array().unwrap() {
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        assert_eq!(
            text.render(&messages, add).unwrap(),
            case["rendered"].as_str().unwrap(),
            "{messages:?}"
        );
    }
    for (k, d) in ["0", "1", "2", "3", "4"].iter().enumerate() {
        assert_eq!(
            text.encode(d).unwrap(),
            vec![f["digits"][k].as_u64().unwrap() as u32]
        );
    }

    for case in f["logits"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(text.encode(prompt).unwrap(), ids(&case["ids"]));
        let err = max_logit_error(&model, case);
        eprintln!("max abs logit error vs transformers (f32): {err}");
        assert!(
            err < 1e-3,
            "max |logit - transformers| = {err} for {prompt:?}"
        );
    }

    // Greedy decoding through the policy (prefill once, then one token at a time) gives the
    // same ids as transformers' generate(do_sample=False), and stops at <|im_end|>.
    let model: Arc<dyn LanguageModel> = Arc::new(model);
    let policy = Policy::new(model.clone());
    let greedy = GenerationParams {
        sampling: SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
        },
        max_new_tokens: 12,
        stop: vec![],
    };
    for case in f["logits"].as_array().unwrap() {
        let question = case["question"].as_str().unwrap();
        let prompt = policy
            .prompt_tokens(&[Message::new("user", question)])
            .unwrap();
        assert_eq!(prompt, ids(&case["ids"]));
        let (gens, counters) = policy.generate(&prompt, &[1], &greedy).unwrap();
        let expected = ids(&case["greedy"]);
        let ends_with_eos = expected.last() == Some(&2);
        let expected_text: Vec<u32> = expected.iter().copied().filter(|&t| t != 2).collect();
        assert_eq!(
            gens[0].text,
            model.text().decode(&expected_text).unwrap(),
            "{question}"
        );
        assert_eq!(
            gens[0].finish,
            if ends_with_eos {
                FinishReason::Eos
            } else {
                FinishReason::Length
            }
        );
        assert_eq!(counters.prompt_tokens_prefilled, prompt.len() as u64);
    }

    // The judge's shared prefill computes the same ratings as a fresh prefill of each question
    // (in f32; the quantized kernels round differently by chunk shape, see tests/models.rs).
    let judge = Judge::new(model.clone(), helpsteer2_attributes()).unwrap();
    let conversation = [Message::new("user", "What is 2 + 2?")];
    let shared = judge.score(&conversation, "2 + 2 = 4.").unwrap();
    for (k, attribute) in helpsteer2_attributes().iter().enumerate() {
        let q = judge
            .question_tokens(&conversation, "2 + 2 = 4.", attribute)
            .unwrap();
        let logits: Vec<f32> = model.start().extend(&q).unwrap().to_vec1().unwrap();
        let fresh = digit_rating(&logits, &[32, 33, 34, 35, 36])
            .unwrap()
            .expected;
        eprintln!(
            "{}: shared {} fresh {fresh}",
            attribute.name, shared.attributes[k]
        );
        assert!(
            (fresh - shared.attributes[k]).abs() < 1e-3,
            "{}: {fresh} vs {}",
            attribute.name,
            shared.attributes[k]
        );
    }

    // Several responses to one prompt rated as a group (one prefix tree) get the ratings they get
    // alone, for fewer tokens.
    let responses = ["2 + 2 = 4.", "It is 5.", "Four."];
    let group = judge.score_group(&conversation, &responses);
    let mut alone_tokens = 0;
    let mut group_tokens = 0;
    for (r, g) in responses.iter().zip(&group) {
        let alone = judge.score(&conversation, r).unwrap();
        let g = g.as_ref().unwrap();
        for (a, b) in alone.attributes.iter().zip(&g.attributes) {
            assert!((a - b).abs() < 1e-3, "{r}: alone {a} vs group {b}");
        }
        alone_tokens += alone.tokens_run;
        group_tokens += g.tokens_run;
    }
    // The part every question shares (instructions and prompt) runs once instead of 3 times.
    let all: Vec<Vec<u32>> = responses
        .iter()
        .flat_map(|r| helpsteer2_attributes().into_iter().map(move |a| (r, a)))
        .map(|(r, a)| judge.question_tokens(&conversation, r, &a).unwrap())
        .collect();
    let shared = (0..all[0].len())
        .take_while(|&i| all.iter().all(|q| q.get(i) == all[0].get(i)))
        .count() as u64;
    eprintln!("judge tokens run: {alone_tokens} one response at a time, {group_tokens} as a group; shared prefix {shared}");
    assert!(
        shared > 20 && group_tokens <= alone_tokens - 2 * shared,
        "{group_tokens} vs {alone_tokens}"
    );

    // A stop string ends the text before it.
    let with_stop = GenerationParams {
        stop: vec![" Paris".into()],
        ..greedy
    };
    let prompt = policy
        .prompt_tokens(&[Message::new("user", "What is the capital of France?")])
        .unwrap();
    let (gens, _) = policy.generate(&prompt, &[1], &with_stop).unwrap();
    assert_eq!(gens[0].text, "The capital of France is");
    assert_eq!(gens[0].finish, FinishReason::Stop);
}
