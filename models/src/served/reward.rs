//! Reward models behind a server: vLLM's (and SGLang's) classification API, or OpenRLHF's
//! remote reward protocol; `steerflow serve` speaks both.
//!
//! - `classify`: one request per response, `{model, messages: conversation + the response,
//!   use_activation: false}` (raw scores, not vLLM's default sigmoid or softmax) →
//!   `data[0].probs`, one number per attribute.
//! - `openrlhf`: `{query: [text]}` with each conversation and response rendered by the reward
//!   model's local chat template → `rewards`, one number per text.

use super::client::Client;
use super::{Endpoint, Outage, ServedCounters};
use crate::text::TextCodec;
use crate::{ModelError, RewardModel, RewardScores, ServedFailure};
use serde_json::{json, Value};
use std::sync::Arc;
use steerflow_operators::records::Message;

/// Texts per OpenRLHF request.
const OPENRLHF_BATCH: usize = 16;

/// The protocol of a reward server.
pub enum RewardProtocol {
    /// vLLM's `/classify` shape.
    Classify,
    /// OpenRLHF's `/get_reward`, with the chat template that renders its texts.
    OpenRlhf(Box<TextCodec>),
}

/// A reward model behind a server.
pub struct ServedReward {
    client: Client,
    protocol: RewardProtocol,
    names: Vec<String>,
    id: String,
}

impl ServedReward {
    /// `endpoint.url` is the route itself (`http://host:8000/classify`); `names` the attributes
    /// the server returns, in order (OpenRLHF returns one).
    pub fn new(
        endpoint: Endpoint,
        protocol: RewardProtocol,
        names: Vec<String>,
        counters: Arc<ServedCounters>,
    ) -> Result<Self, ModelError> {
        if matches!(protocol, RewardProtocol::OpenRlhf(_)) && names.len() != 1 {
            return Err(ModelError::Served {
                endpoint: endpoint.redacted(),
                message: format!(
                    "OpenRLHF's protocol returns one reward per text, not {} attributes",
                    names.len()
                ),
                failure: ServedFailure::Endpoint,
            });
        }
        let model = endpoint.model.clone().unwrap_or_else(|| "-".into());
        let id = format!("served-reward:{model}@{}", endpoint.redacted());
        Ok(Self {
            client: Client::new(endpoint, counters)?,
            protocol,
            names,
            id,
        })
    }

    fn error(&self, message: String) -> ModelError {
        ModelError::Served {
            endpoint: self.client.endpoint().redacted(),
            message,
            failure: ServedFailure::Record,
        }
    }

    async fn classify(
        &self,
        conversation: &[Message],
        response: &str,
    ) -> Result<Vec<f64>, ModelError> {
        let mut messages: Vec<Value> = conversation
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        messages.push(json!({"role": "assistant", "content": response}));
        let mut body = json!({"messages": messages, "use_activation": false});
        if let Some(model) = &self.client.endpoint().model {
            body["model"] = json!(model);
        }
        let reply = self.client.post("", &body).await?;
        let probs = reply
            .pointer("/data/0/probs")
            .and_then(Value::as_array)
            .ok_or_else(|| self.error(format!("the reply has no `data[0].probs`: {reply}")))?;
        let scores: Vec<f64> = probs.iter().filter_map(Value::as_f64).collect();
        if scores.len() != self.names.len() || scores.len() != probs.len() {
            return Err(self.error(format!(
                "the server returned {} scores, the job names {} attributes ({:?})",
                probs.len(),
                self.names.len(),
                self.names
            )));
        }
        Ok(scores)
    }

    async fn openrlhf(&self, texts: Vec<String>) -> Result<Vec<f64>, ModelError> {
        let count = texts.len();
        let reply = self.client.post("", &json!({"query": texts})).await?;
        let rewards: Vec<f64> = reply
            .get("rewards")
            .and_then(Value::as_array)
            .ok_or_else(|| self.error(format!("the reply has no `rewards`: {reply}")))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        if rewards.len() != count {
            return Err(self.error(format!("{} rewards for {count} texts", rewards.len())));
        }
        Ok(rewards)
    }
}

impl RewardModel for ServedReward {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn attribute_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn score(&self, conversation: &[Message], response: &str) -> Result<RewardScores, ModelError> {
        self.score_batch(&[(conversation, response)])
            .pop()
            .unwrap_or_else(|| Err(self.error("no result".into())))
    }

    fn score_batch(&self, items: &[(&[Message], &str)]) -> Vec<Result<RewardScores, ModelError>> {
        let mut out: Vec<Option<Result<Vec<f64>, ModelError>>> =
            items.iter().map(|_| None).collect();
        let outage = Outage::default();
        let mut record = |i: usize, r: Result<Vec<f64>, ModelError>| {
            if let Err(e) = &r {
                outage.note(e);
            }
            out[i] = Some(r);
        };
        match &self.protocol {
            RewardProtocol::Classify => self.client.run_bounded(
                items.to_vec(),
                |(c, r)| self.classify(c, r),
                &mut record,
                || outage.happened(),
            ),
            RewardProtocol::OpenRlhf(text) => {
                let mut chunks: Vec<(Vec<usize>, Vec<String>)> = Vec::new();
                for (i, (conversation, response)) in items.iter().enumerate() {
                    let mut messages = conversation.to_vec();
                    messages.push(Message::new("assistant", *response));
                    match text.render(&messages, false) {
                        Err(e) => record(i, Err(e)),
                        Ok(t) => match chunks.last_mut() {
                            Some((idx, texts)) if idx.len() < OPENRLHF_BATCH => {
                                idx.push(i);
                                texts.push(t);
                            }
                            _ => chunks.push((vec![i], vec![t])),
                        },
                    }
                }
                let indices: Vec<Vec<usize>> = chunks.iter().map(|(i, _)| i.clone()).collect();
                self.client.run_bounded(
                    chunks,
                    |(_, texts)| self.openrlhf(texts),
                    |k, result| match result {
                        Ok(rewards) => {
                            for (&i, r) in indices[k].iter().zip(rewards) {
                                record(i, Ok(vec![r]));
                            }
                        }
                        Err(e) => {
                            let (message, failure) = match e {
                                ModelError::Served {
                                    message, failure, ..
                                } => (message, failure),
                                other => (other.to_string(), ServedFailure::Record),
                            };
                            for &i in &indices[k] {
                                record(
                                    i,
                                    Err(ModelError::Served {
                                        endpoint: self.client.endpoint().redacted(),
                                        message: message.clone(),
                                        failure,
                                    }),
                                );
                            }
                        }
                    },
                    || outage.happened(),
                );
            }
        }
        out.into_iter()
            .map(|r| {
                let attributes =
                    r.unwrap_or_else(|| Err(outage.unanswered(self.client.endpoint().redacted())))?;
                Ok(RewardScores {
                    attributes,
                    tokens_run: 0,
                    dropped_turns: 0,
                })
            })
            .collect()
    }
}
