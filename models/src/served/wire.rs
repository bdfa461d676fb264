//! The OpenAI-compatible wire format as vLLM, SGLang and llama-server speak it: request bodies
//! with every sampling field explicit (servers' defaults are not neutral), and the parts of the
//! replies served models read. Pure functions, tested on the servers' documented shapes.

use super::{CompletionApi, ServerKind};
use serde_json::{json, Map, Value};
use steerflow_kernels::sampling::SamplingParams;
use steerflow_operators::records::Message;

/// What a completion request asks for.
pub(crate) struct CompletionRequest<'a> {
    pub model: &'a str,
    /// Token ids for `/completions`, messages for `/chat/completions`.
    pub prompt: Prompt<'a>,
    pub sampling: &'a SamplingParams,
    pub max_tokens: usize,
    pub seed: u64,
    pub stop: &'a [String],
    /// How many top log-probabilities to return for each generated token.
    pub logprobs: Option<usize>,
}

pub(crate) enum Prompt<'a> {
    Tokens(&'a [u32]),
    Messages(&'a [Message]),
}

/// The route a completion goes to.
pub(crate) fn route(api: CompletionApi) -> &'static str {
    match api {
        CompletionApi::Completions => "/completions",
        CompletionApi::Chat => "/chat/completions",
    }
}

/// The JSON body of `request` for a server of kind `server`.
pub(crate) fn completion_body(server: ServerKind, request: &CompletionRequest<'_>) -> Value {
    let s = request.sampling;
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    match request.prompt {
        Prompt::Tokens(ids) => body.insert("prompt".into(), json!(ids)),
        Prompt::Messages(messages) => body.insert(
            "messages".into(),
            Value::Array(
                messages
                    .iter()
                    .map(|m| json!({"role": m.role, "content": m.content}))
                    .collect(),
            ),
        ),
    };
    body.insert("n".into(), json!(1));
    body.insert("max_tokens".into(), json!(request.max_tokens));
    body.insert("temperature".into(), json!(s.temperature));
    body.insert("top_p".into(), json!(s.top_p));
    body.insert("seed".into(), json!(request.seed));
    body.insert("stream".into(), json!(false));
    // Penalties off: a server may default them from its command line or the model's
    // `generation_config.json` (vLLM and SGLang take `repetition_penalty` from there).
    body.insert("presence_penalty".into(), json!(0.0));
    body.insert("frequency_penalty".into(), json!(0.0));
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    match server {
        ServerKind::LlamaCpp => {
            body.insert("top_k".into(), json!(s.top_k));
            body.insert("min_p".into(), json!(0.0));
            // llama-server's other samplers, which its command line can turn on.
            body.insert("repeat_penalty".into(), json!(1.0));
            body.insert("typical_p".into(), json!(1.0));
            body.insert("dry_multiplier".into(), json!(0.0));
            body.insert("xtc_probability".into(), json!(0.0));
            body.insert("mirostat".into(), json!(0));
        }
        ServerKind::Vllm | ServerKind::Sglang => {
            let top_k: i64 = if s.top_k == 0 { -1 } else { s.top_k as i64 };
            body.insert("top_k".into(), json!(top_k));
            body.insert("min_p".into(), json!(0.0));
            body.insert("repetition_penalty".into(), json!(1.0));
        }
        ServerKind::OpenAi => {}
    }
    if let Some(k) = request.logprobs {
        match request.prompt {
            Prompt::Tokens(_) => body.insert("logprobs".into(), json!(k)),
            Prompt::Messages(_) => {
                body.insert("logprobs".into(), json!(true));
                body.insert("top_logprobs".into(), json!(k))
            }
        };
    }
    Value::Object(body)
}

/// The one choice of a completion reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Choice {
    pub text: String,
    /// `stop` (an end-of-sequence token or a stop string) or `length`.
    pub finish_reason: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The first choice of a `/completions` or `/chat/completions` reply.
pub(crate) fn parse_choice(reply: &Value, api: CompletionApi) -> Result<Choice, String> {
    let choice = first_choice(reply)?;
    let text = match api {
        CompletionApi::Completions => choice.get("text"),
        CompletionApi::Chat => choice.pointer("/message/content"),
    }
    .and_then(Value::as_str)
    .ok_or("the choice has no text")?
    .to_string();
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let usage = |field: &str| {
        reply
            .pointer(&format!("/usage/{field}"))
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("the reply has no `usage.{field}`"))
    };
    Ok(Choice {
        text,
        finish_reason,
        prompt_tokens: usage("prompt_tokens")?,
        completion_tokens: usage("completion_tokens")?,
    })
}

fn first_choice(reply: &Value) -> Result<&Value, String> {
    reply
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| "the reply has no `choices`".to_string())
}

/// One of the most likely first tokens with its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    /// The token id, where the server gives it (llama-server does, vLLM does not).
    pub id: Option<u32>,
    pub token: String,
    pub logprob: f64,
}

/// The top log-probabilities of the first generated token: vLLM's and SGLang's
/// `logprobs.top_logprobs[0]` (`{token: logprob}`), or llama-server's and the chat API's
/// `logprobs.content[0].top_logprobs` (`[{id?, token, logprob}]`). `None` when the reply has
/// no log-probabilities.
pub(crate) fn first_token_candidates(reply: &Value) -> Result<Option<Vec<Candidate>>, String> {
    let logprobs = match first_choice(reply)?.get("logprobs") {
        None | Some(Value::Null) => return Ok(None),
        Some(l) => l,
    };
    if let Some(first) = logprobs
        .get("top_logprobs")
        .and_then(Value::as_array)
        .and_then(|t| t.first())
    {
        let map = first
            .as_object()
            .ok_or("`logprobs.top_logprobs[0]` is not an object")?;
        return map
            .iter()
            .map(|(token, lp)| {
                Ok(Candidate {
                    id: None,
                    token: token.clone(),
                    logprob: lp.as_f64().ok_or("a log-probability is not a number")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map(Some);
    }
    let Some(list) = logprobs
        .get("content")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(|c| c.get("top_logprobs"))
        .and_then(Value::as_array)
    else {
        return Ok(None);
    };
    list.iter()
        .map(|c| {
            Ok(Candidate {
                id: c.get("id").and_then(Value::as_u64).map(|i| i as u32),
                token: c
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                logprob: c
                    .get("logprob")
                    .and_then(Value::as_f64)
                    .ok_or("a top log-probability has no `logprob`")?,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// The ids of the models `/models` lists (`data[].id`), in its order.
pub(crate) fn listed_models(reply: &Value) -> Vec<String> {
    reply
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(sampling: &'a SamplingParams, stop: &'a [String]) -> CompletionRequest<'a> {
        CompletionRequest {
            model: "m",
            prompt: Prompt::Tokens(&[1, 2, 3]),
            sampling,
            max_tokens: 64,
            seed: 7,
            stop,
            logprobs: None,
        }
    }

    #[test]
    fn every_sampling_field_is_sent_in_each_servers_terms() {
        let sampling = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
        };
        let stop = vec!["\n\n".to_string()];
        let llama = completion_body(ServerKind::LlamaCpp, &request(&sampling, &stop));
        assert_eq!(llama["prompt"], json!([1, 2, 3]));
        assert_eq!(llama["top_k"], json!(0));
        assert_eq!(llama["min_p"], json!(0.0));
        assert_eq!(llama["repeat_penalty"], json!(1.0));
        assert_eq!(llama["dry_multiplier"], json!(0.0));
        assert_eq!(llama["frequency_penalty"], json!(0.0));
        assert_eq!(llama["seed"], json!(7));
        assert_eq!(llama["stop"], json!(["\n\n"]));
        let vllm = completion_body(ServerKind::Vllm, &request(&sampling, &[]));
        assert_eq!(vllm["top_k"], json!(-1));
        assert_eq!(vllm["repetition_penalty"], json!(1.0));
        assert!(vllm.get("stop").is_none());
        let openai = completion_body(ServerKind::OpenAi, &request(&sampling, &[]));
        assert!(openai.get("top_k").is_none() && openai.get("min_p").is_none());
        assert!(openai.get("repetition_penalty").is_none());
        assert_eq!(openai["presence_penalty"], json!(0.0));
        assert_eq!(openai["temperature"], json!(0.7));
        assert_eq!(openai["max_tokens"], json!(64));
    }

    #[test]
    fn choices_and_usage_are_read_from_both_routes() {
        let completion = json!({"choices": [{"index": 0, "text": "hi", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}});
        let c = parse_choice(&completion, CompletionApi::Completions).unwrap();
        assert_eq!(
            (c.text.as_str(), c.finish_reason.as_str()),
            ("hi", "length")
        );
        assert_eq!((c.prompt_tokens, c.completion_tokens), (5, 2));
        let chat = json!({"choices": [{"message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}});
        assert_eq!(parse_choice(&chat, CompletionApi::Chat).unwrap().text, "yo");
        let no_usage = json!({"choices": [{"text": "x", "finish_reason": "stop"}]});
        assert!(parse_choice(&no_usage, CompletionApi::Completions)
            .unwrap_err()
            .contains("usage.prompt_tokens"));
    }

    #[test]
    fn top_logprobs_in_vllm_and_llama_server_shapes() {
        let vllm = json!({"choices": [{"text": "3", "logprobs": {"tokens": ["3"], "token_logprobs": [-0.1],
            "top_logprobs": [{"3": -0.1, "4": -2.5}]}}]});
        let v = first_token_candidates(&vllm).unwrap().unwrap();
        assert_eq!(v.len(), 2);
        assert!(v
            .iter()
            .any(|c| c.token == "4" && c.logprob == -2.5 && c.id.is_none()));
        let llama = json!({"choices": [{"text": "3", "logprobs": {"content": [{"id": 18, "token": "3", "logprob": -0.1,
            "top_logprobs": [{"id": 18, "token": "3", "bytes": [51], "logprob": -0.1}, {"id": 19, "token": "4", "logprob": -2.5}]}]}}]});
        let l = first_token_candidates(&llama).unwrap().unwrap();
        assert_eq!(l[1].id, Some(19));
        let none = json!({"choices": [{"text": "3", "logprobs": null}]});
        assert_eq!(first_token_candidates(&none).unwrap(), None);
    }
}
