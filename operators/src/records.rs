//! The records that flow through the graph, from prompt to preference pair.
//!
//! They derive serde so that timely can exchange them between processes.

use serde::{Deserialize, Serialize};

/// One chat message, as in TRL's conversational format and OpenAI-style `messages` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Where an input record came from, so every error and reject can name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub file: String,
    /// 1-based line for jsonl, 0-based row for parquet.
    pub record: u64,
}

/// A prompt: a conversation that the policy continues with one assistant turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub id: String,
    pub messages: Vec<Message>,
    pub source: SourcePosition,
}

/// Why generation of a sample stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A configured stop string appeared; the text ends before it.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One sampled response to a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: Prompt,
    pub sample_index: u32,
    /// How many samples were drawn for this prompt (the per-prompt reduce waits for all).
    pub samples_per_prompt: u32,
    pub text: String,
    pub prompt_tokens: u32,
    pub new_tokens: u32,
    pub finish: FinishReason,
    /// The target attributes the policy was prompted with (SteerLM 2.0), if any.
    pub steer: Option<String>,
}

/// A sample with its reward-model attributes and goodness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    pub sample: Sample,
    /// Raw attribute floats in the scorer's attribute order.
    pub attributes: Vec<f64>,
    pub goodness: f64,
    /// Tokens the scorer ran for this sample (prefill it could not share).
    pub scored_tokens: u64,
    /// Earliest turns dropped to fit the scorer's context (`overlength = "drop-turns"`).
    pub dropped_turns: u32,
    /// Why the scorer gave no score (`context_overflow`, `scoring_failed`), when it gave none.
    pub unscored: Option<String>,
}
