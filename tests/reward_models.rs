//! Reward models on Hugging Face checkpoints, conversation in, scores out, against transformers.
//!
//! The tiny fixtures in `tests/fixtures/hf/` carry a tokenizer and a Llama-3-style chat template
//! and `conversations.json` (`scripts/fixtures/gen_hf_conversations.py`): for each conversation
//! the text `apply_chat_template` renders, its token ids, and transformers' scores (5, 1 and 9
//! labels) or, for the causal LM, the next-token logit at index 0. Asserted: identical text and
//! ids, scores within 1e-4, batched scores equal to one-at-a-time, and the overlength policies.

mod support;

use serde_json::Value;
use steerflow_models::hf::{HeadKind, HfModel};
use steerflow_models::reward::{
    fit_conversation, NextTokenLogitReward, Overlength, SequenceClassifierReward,
};
use steerflow_models::{ModelError, RewardModel};
use steerflow_operators::records::Message;

fn load(case: &str, kind: HeadKind) -> (HfModel, Value) {
    let dir = support::workspace_root()
        .join("tests/fixtures/hf")
        .join(case);
    let golden =
        serde_json::from_slice(&std::fs::read(dir.join("conversations.json")).unwrap()).unwrap();
    (
        HfModel::load(&dir, kind, &candle_core::Device::Cpu).unwrap(),
        golden,
    )
}

fn split(c: &Value) -> (Vec<Message>, String) {
    let mut messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
    let response = messages.pop().unwrap();
    assert_eq!(response.role, "assistant");
    (messages, response.content)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("a{i}")).collect()
}

#[test]
fn sequence_classification_rewards_match_transformers() {
    for (case, labels) in [
        ("llama-seqcls5-f32", 5),
        ("qwen2-seqcls1-f32", 1),
        ("llama-seqcls9-f32", 9),
    ] {
        let (model, golden) = load(case, HeadKind::SequenceClassification);
        let conversations = golden["conversations"].as_array().unwrap();
        for c in conversations {
            let (conv, response) = split(c);
            let text = model.text_codec().unwrap();
            let mut full = conv.clone();
            full.push(Message::new("assistant", response.clone()));
            assert_eq!(
                text.render(&full, false).unwrap(),
                c["rendered"].as_str().unwrap(),
                "{case}/{}",
                c["id"]
            );
            let (ids, dropped) =
                fit_conversation(&model, &conv, &response, 4096, Overlength::Skip).unwrap();
            let want_ids: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!((ids, dropped), (want_ids, 0), "{case}/{}", c["id"]);
        }
        let reward =
            SequenceClassifierReward::new(model, names(labels), None, Overlength::Skip).unwrap();
        let pairs: Vec<(Vec<Message>, String)> = conversations.iter().map(split).collect();
        let items: Vec<(&[Message], &str)> = pairs
            .iter()
            .map(|(c, r)| (c.as_slice(), r.as_str()))
            .collect();
        let batched = reward.score_batch(&items);
        for (k, c) in conversations.iter().enumerate() {
            let want: Vec<f64> = c["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let alone = reward.score(items[k].0, items[k].1).unwrap();
            let got = &batched[k].as_ref().unwrap().attributes;
            for j in 0..labels {
                assert!(
                    (alone.attributes[j] - want[j]).abs() < 1e-4,
                    "{case}/{}: {:?} vs {want:?}",
                    c["id"],
                    alone.attributes
                );
                assert!(
                    (got[j] - alone.attributes[j]).abs() < 1e-5,
                    "{case}/{}: batched {got:?} vs alone",
                    c["id"]
                );
            }
        }
    }
}

#[test]
fn next_token_logit_reward_matches_transformers() {
    let (model, golden) = load("llama3-f32", HeadKind::CausalLm);
    let reward = NextTokenLogitReward::new(model, 0, None, Overlength::Skip).unwrap();
    assert_eq!(reward.attribute_names(), vec!["reward".to_string()]);
    for c in golden["conversations"].as_array().unwrap() {
        let (conv, response) = split(c);
        let got = reward.score(&conv, &response).unwrap().attributes[0];
        let want = c["last_logits_index0"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "{}: {got} vs {want}", c["id"]);
    }
}

#[test]
fn overlength_is_skipped_or_trimmed_by_whole_turns_never_cut() {
    let (model, golden) = load("llama-seqcls5-f32", HeadKind::SequenceClassification);
    let multi = golden["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["messages"].as_array().unwrap().len() >= 4)
        .unwrap();
    let (conv, response) = split(multi);
    let full = fit_conversation(&model, &conv, &response, 4096, Overlength::Skip)
        .unwrap()
        .0
        .len();
    // One token short: skip refuses, drop-turns drops the earliest turns and keeps the response.
    let err = fit_conversation(&model, &conv, &response, full - 1, Overlength::Skip).unwrap_err();
    assert!(matches!(err, ModelError::ContextOverflow { .. }), "{err}");
    let (ids, dropped) =
        fit_conversation(&model, &conv, &response, full - 1, Overlength::DropTurns).unwrap();
    assert!(dropped >= 1 && ids.len() < full);
    let mut kept: Vec<Message> = conv[dropped as usize..].to_vec();
    kept.push(Message::new("assistant", response.clone()));
    assert_eq!(
        ids,
        model
            .text_codec()
            .unwrap()
            .encode_chat(&kept, false)
            .unwrap()
    );
    // A limit below the last user turn + response cannot be met by dropping turns.
    assert!(fit_conversation(&model, &conv, &response, 5, Overlength::DropTurns).is_err());
}

#[test]
fn attribute_names_must_match_the_head() {
    let (model, _) = load("llama-seqcls5-f32", HeadKind::SequenceClassification);
    let err = SequenceClassifierReward::new(model, names(9), None, Overlength::Skip)
        .err()
        .unwrap();
    assert!(err.to_string().contains("5 outputs"), "{err}");
}

#[test]
fn the_template_may_come_from_chat_template_jinja() {
    // transformers 5 saves the template as chat_template.jinja beside tokenizer_config.json.
    let src = support::workspace_root().join("tests/fixtures/hf/llama-seqcls5-f32");
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "conversations.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut tc: Value =
        serde_json::from_slice(&std::fs::read(src.join("tokenizer_config.json")).unwrap()).unwrap();
    let template = tc.as_object_mut().unwrap().remove("chat_template").unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), tc.to_string()).unwrap();
    // With no template anywhere, loading says where one was looked for.
    let err = HfModel::load(
        dir.path(),
        HeadKind::SequenceClassification,
        &candle_core::Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("chat_template.jinja"), "{err}");
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        template.as_str().unwrap(),
    )
    .unwrap();
    let model = HfModel::load(
        dir.path(),
        HeadKind::SequenceClassification,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let golden: Value =
        serde_json::from_slice(&std::fs::read(src.join("conversations.json")).unwrap()).unwrap();
    let c = &golden["conversations"][0];
    let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
    assert_eq!(
        model
            .text_codec()
            .unwrap()
            .render(&messages, false)
            .unwrap(),
        c["rendered"].as_str().unwrap()
    );
}

#[test]
fn a_reward_model_can_read_nemo_steerlm_input() {
    use steerflow_models::chat_template::NEMO_STEERLM_RM_TEMPLATE;
    let (model, golden) = load("llama-seqcls5-f32", HeadKind::SequenceClassification);
    let model = model.with_chat_template(NEMO_STEERLM_RM_TEMPLATE).unwrap();
    let (conv, response) = split(&golden["conversations"][0]);
    let mut full = conv.clone();
    full.push(Message::new("assistant", response.clone()));
    let text = model.text_codec().unwrap().render(&full, false).unwrap();
    assert!(
        text.starts_with("<extra_id_0>System\n")
            && text.ends_with(&format!("{response}\n<extra_id_2>")),
        "{text}"
    );
    let reward = SequenceClassifierReward::new(model, names(5), None, Overlength::Skip).unwrap();
    let scores = reward.score(&conv, &response).unwrap();
    assert!(scores.attributes.iter().all(|v| v.is_finite()));
}
