//! The policy: N sampled responses per prompt from one shared prefill.
//!
//! The prompt is rendered with the model's chat template and prefilled once; each sample forks the
//! prefilled session (sharing its KV cache) and draws from its own seeded sampler, so sample `i`
//! of a prompt is the same tokens whatever else runs and in whatever order. Many prompts run
//! together through the continuous-batching [`crate::engine`]; or the samples go to a server
//! ([`crate::served::policy`]), one request per sample with the sample's seed.

use crate::engine::{
    generate_batched, EngineLimits, EngineStats, GenerationRequest, GenerationResult,
};
use crate::generation::{Generation, GenerationCounters, GenerationParams};
use crate::served::policy::ServedPolicy;
use crate::text::TextCodec;
use crate::{LanguageModel, ModelError};
use std::sync::Arc;
use steerflow_operators::records::Message;

/// A policy model and the way it is prompted.
#[derive(Clone)]
pub struct Policy {
    backend: Backend,
    steer: Option<String>,
}

/// Where the policy runs.
#[derive(Clone)]
enum Backend {
    InProcess(Arc<dyn LanguageModel>),
    Served(Arc<ServedPolicy>),
}

impl Policy {
    pub fn new(model: Arc<dyn LanguageModel>) -> Self {
        Self {
            backend: Backend::InProcess(model),
            steer: None,
        }
    }

    /// A policy behind a server.
    pub fn served(model: ServedPolicy) -> Self {
        Self {
            backend: Backend::Served(Arc::new(model)),
            steer: None,
        }
    }

    /// The model's identifier (a served one names the server's model and endpoint).
    pub fn id(&self) -> &str {
        match &self.backend {
            Backend::InProcess(m) => m.id(),
            Backend::Served(s) => s.id(),
        }
    }

    /// The tokenizer and chat template prompts are rendered with.
    pub fn text(&self) -> &TextCodec {
        match &self.backend {
            Backend::InProcess(m) => m.text(),
            Backend::Served(s) => s.text(),
        }
    }

    fn context_length(&self) -> usize {
        match &self.backend {
            Backend::InProcess(m) => m.context_length(),
            Backend::Served(s) => s.context_length(),
        }
    }

    /// SteerLM 2.0 sampling: prompts carry target attributes (`helpfulness:4,...`) through the
    /// template variable `steer_label`; a template that does not use it is refused, since the
    /// attributes would silently do nothing.
    pub fn with_steer(mut self, label: &str) -> Result<Self, ModelError> {
        if let Backend::Served(s) = &self.backend {
            if s.api() == crate::served::CompletionApi::Chat {
                return Err(ModelError::Template(
                    "steered sampling renders the prompt with the job's template: a served policy needs the completions route".into(),
                ));
            }
        }
        if !self.text().template().source().contains("steer_label") {
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

    /// The prompt's token ids, refused when it leaves no room for a single new token.
    pub fn prompt_tokens(&self, messages: &[Message]) -> Result<Vec<u32>, ModelError> {
        let text = self.text();
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
        let limit = self.context_length();
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
        self.generate_many(
            vec![request],
            &[],
            params,
            &EngineLimits::default(),
            (|_, r| result = Some(r), |_| {}),
            || false,
        );
        result.expect("every request is reported")
    }

    /// Samples many prompts: in process in continuous batches ([`crate::engine`]), or on the
    /// server at most `max_in_flight` requests at a time. `on_done(i, result)` is called as
    /// request i finishes, `on_tokens(n)` with the tokens drawn since the last call; `messages[i]`
    /// is request i's conversation. Each sample's tokens are those [`Policy::generate`] draws.
    pub fn generate_many(
        &self,
        requests: Vec<GenerationRequest>,
        messages: &[&[Message]],
        params: &GenerationParams,
        limits: &EngineLimits,
        callbacks: (impl FnMut(usize, GenerationResult), impl FnMut(u64)),
        cancelled: impl Fn() -> bool,
    ) -> EngineStats {
        match &self.backend {
            Backend::InProcess(model) => generate_batched(
                model.as_ref(),
                requests,
                params,
                limits,
                callbacks,
                cancelled,
            ),
            Backend::Served(served) => {
                served.generate_many(&requests, messages, params, callbacks, cancelled);
                EngineStats::default()
            }
        }
    }
}
