//! Policy and reward-model runtimes for steerflow.
//!
//! - [`registry`]: the default model, installed on first use from its registry package.
//! - [`text`]: tokenizer and chat template of a model ([`gguf_tokenizer`], [`chat_template`]).
//! - [`gguf`]: GGUF files of the llama, qwen2, qwen3 and gemma2 architectures.
//! - [`hf`]: Hugging Face checkpoints; [`transformer`] is the decoder shared by the families in
//!   [`llama`], [`mistral`] and [`qwen2`], with causal-LM and sequence-classification heads.
//! - [`reward`]: reward models on those heads (`sequence-classification`, `next-token-logit`);
//!   [`tensor_parallel`] splits their decoder over ranks (threads or GPUs).
//! - [`policy`]: N samples per prompt from one shared prompt prefill; [`engine`] runs many
//!   prompts' samples in continuous ragged batches.
//! - [`judge`]: the LLM-judge reward model (five HelpSteer2 attributes, 0..4).
//! - [`served`]: a policy, a judge and reward models behind HTTP servers.
//!
//! Models implement [`LanguageModel`]; a [`LmSession`] is a position in one sequence whose
//! KV cache can be forked, which is how a prompt is prefilled once for all its samples.

pub mod batching;
pub mod chat_template;
pub mod decoder_spec;
pub mod engine;
pub mod error;
pub mod gemma;
pub mod generation;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hf;
pub mod judge;
mod layers;
pub mod llama;
pub mod mistral;
pub mod policy;
pub mod prefix_tree;
pub mod qlinear;
pub mod qwen2;
pub mod qwen3;
pub mod registry;
pub mod reward;
pub mod served;
pub mod tensor_parallel;
pub mod text;
pub mod transformer;

pub use error::{ModelError, ServedFailure};

use candle_core::Tensor;
use steerflow_operators::records::Message;

/// A causal language model that can start sessions.
pub trait LanguageModel: Send + Sync {
    /// A stable identifier, recorded with every output row (file name and content hash).
    fn id(&self) -> &str;
    /// Tokenizer, chat template and end-of-sequence tokens.
    fn text(&self) -> &text::TextCodec;
    /// The longest sequence (prompt plus generated tokens) the model accepts.
    fn context_length(&self) -> usize;
    /// An empty session at position 0.
    fn start(&self) -> Box<dyn LmSession>;
    /// Extends each of `sessions` (started by this model) by its chunk of `chunks`, in one batch
    /// where the model can, and returns the next-token logits after each chunk, `[sessions,
    /// vocab]`. Row i equals what `sessions[i].extend(chunks[i])` would return: batching never
    /// changes a sequence's numbers. The default runs the sessions one after another.
    fn extend_batch(
        &self,
        sessions: &mut [&mut dyn LmSession],
        chunks: &[&[u32]],
    ) -> Result<Tensor, ModelError> {
        let rows = sessions
            .iter_mut()
            .zip(chunks)
            .map(|(session, chunk)| session.extend(chunk))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// One sequence being run through a model: its KV cache and position.
pub trait LmSession: Send {
    /// Runs `tokens` after the current position and returns the next-token logits `[vocab]`
    /// (f32, on the model's device) after the last of them.
    fn extend(&mut self, tokens: &[u32]) -> Result<Tensor, ModelError>;
    /// How many tokens the session holds.
    fn position(&self) -> usize;
    /// A copy that shares the KV cache computed so far and continues independently.
    fn fork(&self) -> Box<dyn LmSession>;
    /// The concrete session, for a model's batched [`LanguageModel::extend_batch`].
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// Scores of one response from a reward model.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardScores {
    /// Raw attribute floats, in the order of [`RewardModel::attribute_names`].
    pub attributes: Vec<f64>,
    /// Tokens the model ran for this response.
    pub tokens_run: u64,
    /// Messages dropped from the front of the conversation to fit the context.
    pub dropped_turns: u32,
}

/// Anything that scores an assistant response to a conversation.
pub trait RewardModel: Send + Sync {
    /// Identifier recorded with every output row.
    fn id(&self) -> String;
    /// Names of the attributes returned by [`RewardModel::score`], in order.
    fn attribute_names(&self) -> Vec<String>;
    /// Scores `response` as the assistant's reply to `conversation`.
    fn score(&self, conversation: &[Message], response: &str) -> Result<RewardScores, ModelError>;
    /// Scores many (conversation, response) pairs; models that batch override this.
    fn score_batch(&self, items: &[(&[Message], &str)]) -> Vec<Result<RewardScores, ModelError>> {
        items.iter().map(|(c, r)| self.score(c, r)).collect()
    }
    /// Scores texts already rendered in the model's chat format (a conversation and its
    /// response), as reward servers receive them (OpenRLHF's `query`). Models that need the
    /// conversation's structure (the judge) refuse.
    fn score_texts(&self, texts: &[&str]) -> Vec<Result<RewardScores, ModelError>> {
        texts
            .iter()
            .map(|_| {
                Err(ModelError::Template(format!(
                    "`{}` scores conversations, not rendered texts: send messages",
                    self.id()
                )))
            })
            .collect()
    }
}

/// A model whose chat template is replaced (`policy.chat_template`), for example by NeMo's
/// SteerLM format for models trained on it.
pub struct TemplatedModel {
    inner: std::sync::Arc<dyn LanguageModel>,
    text: text::TextCodec,
}

impl TemplatedModel {
    pub fn new(
        inner: std::sync::Arc<dyn LanguageModel>,
        template_source: &str,
    ) -> Result<Self, ModelError> {
        let text = inner.text().with_template(template_source)?;
        Ok(Self { inner, text })
    }
}

impl LanguageModel for TemplatedModel {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn text(&self) -> &text::TextCodec {
        &self.text
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn start(&self) -> Box<dyn LmSession> {
        self.inner.start()
    }
    fn extend_batch(
        &self,
        sessions: &mut [&mut dyn LmSession],
        chunks: &[&[u32]],
    ) -> Result<Tensor, ModelError> {
        self.inner.extend_batch(sessions, chunks)
    }
}
