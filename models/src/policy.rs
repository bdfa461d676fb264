//! The policy: N sampled responses per prompt from one shared prefill.
//!
//! The prompt is rendered with the model's chat template and prefilled once; each sample forks the
//! prefilled session (sharing its KV cache) and draws from its own seeded sampler, so sample `i`
//! of a prompt is the same tokens whatever else runs and in whatever order. Many prompts run
//! together through the continuous-batching [`crate::engine`].

use crate::engine::{
    generate_batched, EngineLimits, EngineStats, GenerationRequest, GenerationResult,
};
use crate::generation::{Generation, GenerationCounters, GenerationParams};
use crate::{LanguageModel, ModelError};
use std::sync::Arc;
use steerflow_operators::records::Message;

/// A policy model and the way it is prompted.
#[derive(Clone)]
pub struct Policy {
    model: Arc<dyn LanguageModel>,
    steer: Option<String>,
}

impl Policy {
    pub fn new(model: Arc<dyn LanguageModel>) -> Self {
        Self { model, steer: None }
    }

    /// SteerLM 2.0 sampling: prompts carry target attributes (`helpfulness:4,...`) through the
    /// template variable `steer_label`; a template that does not use it is refused, since the
    /// attributes would silently do nothing.
    pub fn with_steer(mut self, label: &str) -> Result<Self, ModelError> {
        if !self
            .model
            .text()
            .template()
            .source()
            .contains("steer_label")
        {
            return Err(ModelError::Template(
                "steered sampling needs a chat template that uses `steer_label` (policy.chat_template = \"nemo-steerlm\")"
                    .into(),
            ));
        }
        self.steer = Some(label.to_string());
        Ok(self)
    }

    /// The target attributes the prompts carry, if steering.
    pub fn steer(&self) -> Option<&str> {
        self.steer.as_deref()
    }

    pub fn model(&self) -> &Arc<dyn LanguageModel> {
        &self.model
    }

    /// The prompt's token ids, refused when it leaves no room for a single new token.
    pub fn prompt_tokens(&self, messages: &[Message]) -> Result<Vec<u32>, ModelError> {
        let text = self.model.text();
        let tokens = match &self.steer {
            None => text.encode_chat(messages, true)?,
            Some(label) => {
                let json = serde_json::to_value(messages)
                    .map_err(|e| ModelError::Template(e.to_string()))?;
                let extra = serde_json::Map::from_iter([(
                    "steer_label".to_string(),
                    serde_json::Value::from(label.as_str()),
                )]);
                text.encode(&text.template().render_json(&json, true, &extra)?)?
            }
        };
        let limit = self.model.context_length();
        if tokens.len() >= limit {
            return Err(ModelError::ContextOverflow {
                tokens: tokens.len(),
                limit,
                what: "prompt".into(),
            });
        }
        Ok(tokens)
    }

    /// Draws one response per seed from a single prefill of `prompt_tokens`.
    pub fn generate(
        &self,
        prompt_tokens: &[u32],
        seeds: &[u64],
        params: &GenerationParams,
    ) -> Result<(Vec<Generation>, GenerationCounters), ModelError> {
        let request = GenerationRequest {
            prompt_tokens: prompt_tokens.to_vec(),
            seeds: seeds.to_vec(),
        };
        let mut result = None;
        generate_batched(
            self.model.as_ref(),
            vec![request],
            params,
            &EngineLimits::default(),
            (|_, r| result = Some(r), |_| {}),
            || false,
        );
        result.expect("the engine reports every request")
    }

    /// Samples many prompts in continuous batches ([`crate::engine`]); `on_done(i, result)` is
    /// called as request i finishes, `on_tokens(n)` after each step with the tokens it drew.
    /// Each sample's tokens are those [`Policy::generate`] draws.
    pub fn generate_many(
        &self,
        requests: Vec<GenerationRequest>,
        params: &GenerationParams,
        limits: &EngineLimits,
        callbacks: (impl FnMut(usize, GenerationResult), impl FnMut(u64)),
        cancelled: impl Fn() -> bool,
    ) -> EngineStats {
        generate_batched(
            self.model.as_ref(),
            requests,
            params,
            limits,
            callbacks,
            cancelled,
        )
    }
}
