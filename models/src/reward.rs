//! Reward models on Hugging Face checkpoints (REFERENCE.md, "Reward model kinds"):
//! - `sequence-classification`: the `score` head (`[num_labels, hidden]`, no bias) read at the
//!   last token of the conversation rendered by the model's chat template; 1 label is a scalar
//!   (Bradley-Terry) reward, 5 or 9 are SteerLM attributes.
//! - `next-token-logit`: the causal LM's next-token logits after the conversation, read at a
//!   configured index (0 for Llama-3.1-Nemotron-70B-Reward-HF).
//!
//! An input longer than the context is never cut silently: [`Overlength::Skip`] refuses it
//! with a reason; [`Overlength::DropTurns`] drops whole turns from the front of the prompt,
//! keeping any system message, the last user turn and the response, and reports how many.

use crate::hf::{HeadKind, HfModel};
use crate::{ModelError, RewardModel, RewardScores};
use steerflow_operators::records::Message;

/// What to do with a conversation that does not fit the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlength {
    Skip,
    DropTurns,
}

/// Token ids of `conversation` + the assistant `response`, fitted to `limit` tokens.
/// Returns the ids and how many messages were dropped from the front.
pub fn fit_conversation(
    model: &HfModel,
    conversation: &[Message],
    response: &str,
    limit: usize,
    policy: Overlength,
) -> Result<(Vec<u32>, u32), ModelError> {
    let text = model.text_codec()?;
    let mut messages: Vec<Message> = conversation.to_vec();
    messages.push(Message::new("assistant", response));
    let mut dropped = 0u32;
    loop {
        let ids = text.encode_chat(&messages, false)?;
        if ids.len() <= limit {
            return Ok((ids, dropped));
        }
        // Earliest droppable turn: not a system message, and not the last user turn or the response.
        let last_user = messages.iter().rposition(|m| m.role == "user").unwrap_or(0);
        let droppable = messages
            .iter()
            .position(|m| m.role != "system")
            .filter(|&i| i < last_user);
        match (policy, droppable) {
            (Overlength::DropTurns, Some(i)) => {
                messages.remove(i);
                dropped += 1;
            }
            _ => {
                return Err(ModelError::ContextOverflow {
                    tokens: ids.len(),
                    limit,
                    what: match policy {
                        Overlength::Skip => "conversation (overlength = skip)".into(),
                        Overlength::DropTurns => {
                            "conversation even with only the last user turn kept".into()
                        }
                    },
                })
            }
        }
    }
}

/// A `*ForSequenceClassification` checkpoint as a reward model.
pub struct SequenceClassifierReward {
    model: HfModel,
    names: Vec<String>,
    context: usize,
    overlength: Overlength,
}

impl SequenceClassifierReward {
    /// `names` label the outputs in order; their number must match the head's `num_labels`.
    pub fn new(
        model: HfModel,
        names: Vec<String>,
        context: Option<usize>,
        overlength: Overlength,
    ) -> Result<Self, ModelError> {
        if model.head_kind() != HeadKind::SequenceClassification {
            return Err(ModelError::Judge(
                "a sequence-classification reward needs a score head".into(),
            ));
        }
        model.text_codec()?;
        if names.len() != model.outputs() {
            return Err(ModelError::Judge(format!(
                "the score head has {} outputs but {} attribute names were given ({})",
                model.outputs(),
                names.len(),
                names.join(", ")
            )));
        }
        let context = context.unwrap_or(model.config().max_position_embeddings.unwrap_or(4096));
        Ok(Self {
            model,
            names,
            context,
            overlength,
        })
    }
}

/// A causal LM read at one next-token logit.
pub struct NextTokenLogitReward {
    model: HfModel,
    index: usize,
    context: usize,
    overlength: Overlength,
}

impl NextTokenLogitReward {
    pub fn new(
        model: HfModel,
        index: usize,
        context: Option<usize>,
        overlength: Overlength,
    ) -> Result<Self, ModelError> {
        if model.head_kind() != HeadKind::CausalLm {
            return Err(ModelError::Judge(
                "a next-token-logit reward needs a causal-LM head".into(),
            ));
        }
        model.text_codec()?;
        if index >= model.outputs() {
            return Err(ModelError::Judge(format!(
                "logit index {index} is outside the vocabulary of {}",
                model.outputs()
            )));
        }
        let context = context.unwrap_or(model.config().max_position_embeddings.unwrap_or(4096));
        Ok(Self {
            model,
            index,
            context,
            overlength,
        })
    }
}

/// Scores a batch: fits every conversation, runs the fitted ones together, maps head outputs.
fn score_batch_with(
    model: &HfModel,
    items: &[(&[Message], &str)],
    context: usize,
    overlength: Overlength,
    pick: impl Fn(Vec<f32>) -> Vec<f64>,
) -> Vec<Result<RewardScores, ModelError>> {
    let fitted: Vec<Result<(Vec<u32>, u32), ModelError>> = items
        .iter()
        .map(|(c, r)| fit_conversation(model, c, r, context, overlength))
        .collect();
    run_fitted(model, fitted, pick)
}

/// Token ids of texts already in the model's chat format, refused when longer than `context`
/// (a rendered text has no turns to drop).
fn fit_texts(
    model: &HfModel,
    texts: &[&str],
    context: usize,
) -> Vec<Result<(Vec<u32>, u32), ModelError>> {
    texts
        .iter()
        .map(|t| {
            let ids = model.text_codec()?.encode(t)?;
            if ids.is_empty() {
                return Err(ModelError::Template(
                    "an empty text has no token to score".into(),
                ));
            }
            if ids.len() > context {
                return Err(ModelError::ContextOverflow {
                    tokens: ids.len(),
                    limit: context,
                    what: "rendered text".into(),
                });
            }
            Ok((ids, 0))
        })
        .collect()
}

/// Runs the fitted sequences together and maps each one's head outputs through `pick`.
fn run_fitted(
    model: &HfModel,
    fitted: Vec<Result<(Vec<u32>, u32), ModelError>>,
    pick: impl Fn(Vec<f32>) -> Vec<f64>,
) -> Vec<Result<RewardScores, ModelError>> {
    let runnable: Vec<(usize, &[u32])> = fitted
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.as_ref().ok().map(|(ids, _)| (i, ids.as_slice())))
        .collect();
    let seqs: Vec<&[u32]> = runnable.iter().map(|(_, s)| *s).collect();
    let outputs = model.last_token_outputs(&seqs);
    let mut results: Vec<Result<RewardScores, ModelError>> = Vec::with_capacity(fitted.len());
    let mut outputs_iter = match outputs {
        Ok(o) => o.into_iter(),
        Err(e) => {
            let message = e.to_string();
            return (0..fitted.len())
                .map(|_| Err(ModelError::Judge(message.clone())))
                .collect();
        }
    };
    for f in fitted {
        results.push(match f {
            Ok((ids, dropped)) => {
                let values = outputs_iter.next().unwrap_or_default();
                Ok(RewardScores {
                    attributes: pick(values),
                    tokens_run: ids.len() as u64,
                    dropped_turns: dropped,
                })
            }
            Err(e) => Err(e),
        });
    }
    results
}

impl RewardModel for SequenceClassifierReward {
    fn id(&self) -> String {
        format!("sequence-classification:{}", self.model.id())
    }
    fn attribute_names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn score(&self, conversation: &[Message], response: &str) -> Result<RewardScores, ModelError> {
        self.score_batch(&[(conversation, response)])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Judge("no result".into())))
    }
    fn score_batch(&self, items: &[(&[Message], &str)]) -> Vec<Result<RewardScores, ModelError>> {
        score_batch_with(&self.model, items, self.context, self.overlength, |v| {
            v.into_iter().map(f64::from).collect()
        })
    }
    fn score_texts(&self, texts: &[&str]) -> Vec<Result<RewardScores, ModelError>> {
        let fitted = fit_texts(&self.model, texts, self.context);
        run_fitted(&self.model, fitted, |v| {
            v.into_iter().map(f64::from).collect()
        })
    }
}

impl RewardModel for NextTokenLogitReward {
    fn id(&self) -> String {
        format!("next-token-logit[{}]:{}", self.index, self.model.id())
    }
    fn attribute_names(&self) -> Vec<String> {
        vec!["reward".to_string()]
    }
    fn score(&self, conversation: &[Message], response: &str) -> Result<RewardScores, ModelError> {
        self.score_batch(&[(conversation, response)])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Judge("no result".into())))
    }
    fn score_batch(&self, items: &[(&[Message], &str)]) -> Vec<Result<RewardScores, ModelError>> {
        let index = self.index;
        score_batch_with(&self.model, items, self.context, self.overlength, |v| {
            vec![f64::from(v[index])]
        })
    }
    fn score_texts(&self, texts: &[&str]) -> Vec<Result<RewardScores, ModelError>> {
        let index = self.index;
        let fitted = fit_texts(&self.model, texts, self.context);
        run_fitted(&self.model, fitted, |v| vec![f64::from(v[index])])
    }
}
