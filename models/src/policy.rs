//! The policy: N sampled responses per prompt from one shared prefill.
//!
//! The prompt is rendered with the model's chat template and prefilled once; each sample forks the
//! prefilled session (sharing its KV cache) and draws from its own seeded sampler, so sample `i`
//! of a prompt is the same tokens whatever else runs and in whatever order.

use crate::{LanguageModel, ModelError};
use std::sync::Arc;
use steerflow_kernels::sampling::{SamplingParams, TokenSampler};
use steerflow_operators::records::{FinishReason, Message};

/// What to generate for each sample.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
}

/// One generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub new_tokens: u32,
    pub finish: FinishReason,
}

/// Work counters of one `generate` call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationCounters {
    pub prompt_tokens_prefilled: u64,
    pub tokens_decoded: u64,
    /// Seconds spent prefilling the prompt.
    pub prefill_seconds: f64,
    /// Seconds spent drawing the samples after the prefill.
    pub decode_seconds: f64,
}

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
        let text = self.model.text();
        let started = std::time::Instant::now();
        let mut prefilled = self.model.start();
        let first_logits = prefilled.extend(prompt_tokens)?;
        let mut counters = GenerationCounters {
            prompt_tokens_prefilled: prompt_tokens.len() as u64,
            prefill_seconds: started.elapsed().as_secs_f64(),
            ..GenerationCounters::default()
        };
        let decoding = std::time::Instant::now();
        // The context bounds new tokens too; hitting it ends the sample with `length`, as
        // `max_new_tokens` does, and the summary shows it.
        let budget = params
            .max_new_tokens
            .min(self.model.context_length() - prompt_tokens.len());
        let mut generations = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            let mut sampler = TokenSampler::new(seed, &params.sampling)?;
            let mut session = prefilled.fork();
            let mut logits = first_logits.clone();
            let mut ids: Vec<u32> = Vec::new();
            let mut finish = FinishReason::Length;
            let mut stop_at: Option<usize> = None;
            while ids.len() < budget {
                let next = sampler.sample(&logits)?;
                if text.is_eos(next) {
                    finish = FinishReason::Eos;
                    break;
                }
                ids.push(next);
                if !params.stop.is_empty() {
                    let so_far = text.decode(&ids)?;
                    if let Some(cut) = earliest_stop(&so_far, &params.stop) {
                        stop_at = Some(cut);
                        finish = FinishReason::Stop;
                        break;
                    }
                }
                if ids.len() == budget {
                    break;
                }
                logits = session.extend(&[next])?;
            }
            counters.tokens_decoded += ids.len() as u64;
            let mut text_out = text.decode(&ids)?;
            if let Some(cut) = stop_at {
                text_out.truncate(cut);
            }
            generations.push(Generation {
                text: text_out,
                new_tokens: ids.len() as u32,
                finish,
            });
        }
        counters.decode_seconds = decoding.elapsed().as_secs_f64();
        Ok((generations, counters))
    }
}

/// Byte offset of the earliest occurrence of any stop string.
pub fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

#[cfg(test)]
mod tests {
    use super::earliest_stop;

    #[test]
    fn earliest_of_several_stops() {
        let stops = vec!["\n\n".to_string(), "END".to_string(), String::new()];
        assert_eq!(earliest_stop("abc END x\n\n", &stops), Some(4));
        assert_eq!(earliest_stop("abc", &stops), None);
    }
}
