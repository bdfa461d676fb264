//! The two reward-server protocols `steerflow serve` speaks, as pure conversions between their
//! JSON and the batcher's items and scores (docs/served.md has request and response examples).
//!
//! - OpenRLHF's remote reward model: `POST /get_reward` `{"query": [text], "prompts"?,
//!   "labels"?}` → `{"rewards": [float], "extra_logs": {attribute: [float]}}`. `query` is the
//!   prompt and response already in the model's chat format; `rewards` is the first attribute
//!   (the only one of a scalar model); `scores` is left out, so trainers use `rewards`.
//! - vLLM's classification API: `POST /classify` (also `/v1/classify`, as SGLang routes it)
//!   with `{"model"?, "input": text | [text]}` or `{"model"?, "messages": [...]}` (a conversation
//!   ending in the assistant response) → `{"object": "list", "model", "data": [{"index",
//!   "label", "probs", "num_classes"}], "usage"}`. As vLLM: `probs` is sigmoid(reward) for one
//!   label and softmax over several unless `use_activation` is false, which returns the raw
//!   rewards.

use super::batcher::{Items, Scores};
use serde::Deserialize;
use serde_json::{json, Value};
use steerflow_operators::records::Message;

/// An OpenRLHF `/get_reward` request (other fields are ignored, as OpenRLHF's servers do).
#[derive(Debug, Deserialize)]
pub struct RewardRequest {
    pub query: Vec<String>,
}

/// A vLLM `/classify` request.
#[derive(Debug, Deserialize)]
pub struct ClassifyRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Input>,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub use_activation: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
}

/// The items a `/classify` request asks to score, or why it cannot be read.
pub fn classify_items(request: &ClassifyRequest) -> Result<Items, String> {
    match (&request.input, &request.messages) {
        (Some(_), Some(_)) => Err("give `input` or `messages`, not both".into()),
        (None, None) => Err("give `input` (text or a list of texts) or `messages`".into()),
        (Some(Input::One(text)), None) => Ok(Items::Texts(vec![text.clone()])),
        (Some(Input::Many(texts)), None) => Ok(Items::Texts(texts.clone())),
        (None, Some(messages)) => {
            let (last, conversation) = messages.split_last().ok_or("`messages` is empty")?;
            if last.role != "assistant" {
                return Err(format!(
                    "`messages` must end with the assistant response to score, not a `{}` message",
                    last.role
                ));
            }
            Ok(Items::Conversations(vec![(
                conversation.to_vec(),
                last.content.clone(),
            )]))
        }
    }
}

/// The first error among `scores`, as the message a client gets.
pub fn first_error(scores: &Scores) -> Option<String> {
    scores
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.as_ref().err().map(|e| format!("item {i}: {e}")))
}

/// The `/get_reward` reply (every score present: the caller checked).
pub fn reward_reply(scores: &Scores, names: &[String]) -> Value {
    let attributes: Vec<&[f64]> = scores
        .iter()
        .map(|s| s.as_ref().map(|s| s.attributes.as_slice()).unwrap_or(&[]))
        .collect();
    let rewards: Vec<f64> = attributes
        .iter()
        .map(|a| a.first().copied().unwrap_or(f64::NAN))
        .collect();
    let extra: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let column: Vec<f64> = attributes
                .iter()
                .map(|a| a.get(k).copied().unwrap_or(f64::NAN))
                .collect();
            (name.clone(), json!(column))
        })
        .collect();
    json!({"rewards": rewards, "extra_logs": extra})
}

/// The `/classify` reply.
pub fn classify_reply(
    scores: &Scores,
    names: &[String],
    model: &str,
    use_activation: bool,
    created: i64,
) -> Value {
    let mut tokens = 0u64;
    let data: Vec<Value> = scores
        .iter()
        .enumerate()
        .map(|(index, s)| {
            let s = s.as_ref().expect("the caller checked for errors");
            tokens += s.tokens_run;
            let probs = if use_activation {
                activation(&s.attributes)
            } else {
                s.attributes.clone()
            };
            let best = probs
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0);
            json!({
                "index": index,
                "label": names.get(best).cloned().unwrap_or_default(),
                "probs": probs,
                "num_classes": probs.len(),
            })
        })
        .collect();
    json!({
        "id": format!("classify-{created}"),
        "object": "list",
        "created": created,
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// vLLM's default activation: sigmoid for one label, softmax over several.
fn activation(values: &[f64]) -> Vec<f64> {
    if values.len() == 1 {
        return vec![1.0 / (1.0 + (-values[0]).exp())];
    }
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = values.iter().map(|v| (v - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use steerflow_models::RewardScores;

    fn scored(values: &[f64]) -> Scores {
        vec![Ok(RewardScores {
            attributes: values.to_vec(),
            tokens_run: 7,
            dropped_turns: 0,
        })]
    }

    #[test]
    fn classify_reads_texts_or_a_conversation() {
        let r: ClassifyRequest = serde_json::from_value(json!({"input": "a"})).unwrap();
        assert!(matches!(classify_items(&r).unwrap(), Items::Texts(t) if t == ["a"]));
        let r: ClassifyRequest = serde_json::from_value(json!({"messages": [
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]}))
        .unwrap();
        match classify_items(&r).unwrap() {
            Items::Conversations(c) => {
                assert_eq!(c[0].0.len(), 1);
                assert_eq!(c[0].1, "r");
            }
            Items::Texts(_) => panic!("a conversation"),
        }
        let r: ClassifyRequest =
            serde_json::from_value(json!({"messages": [{"role": "user", "content": "q"}]}))
                .unwrap();
        assert!(classify_items(&r).unwrap_err().contains("assistant"));
    }

    #[test]
    fn activations_as_vllm_applies_them() {
        let names = vec!["reward".to_string()];
        let with = classify_reply(&scored(&[0.0]), &names, "m", true, 0);
        assert_eq!(with["data"][0]["probs"], json!([0.5]));
        let raw = classify_reply(&scored(&[-1.25]), &names, "m", false, 0);
        assert_eq!(raw["data"][0]["probs"], json!([-1.25]));
        assert_eq!(raw["usage"]["prompt_tokens"], json!(7));
        let two: Vec<String> = vec!["a".into(), "b".into()];
        let soft = classify_reply(&scored(&[0.0, 0.0]), &two, "m", true, 0);
        assert_eq!(soft["data"][0]["probs"], json!([0.5, 0.5]));
    }

    #[test]
    fn rewards_are_the_first_attribute_and_all_are_logged() {
        let names: Vec<String> = vec!["helpfulness".into(), "verbosity".into()];
        let reply = reward_reply(&scored(&[3.5, 1.0]), &names);
        assert_eq!(reply["rewards"], json!([3.5]));
        assert_eq!(reply["extra_logs"]["verbosity"], json!([1.0]));
    }
}
