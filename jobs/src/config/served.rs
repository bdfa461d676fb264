//! `[policy.served]` and `[reward.served]`: a model behind a server (docs/served.md).

use crate::error::{invalid, JobError};
use serde::Deserialize;
use std::time::Duration;
use steerflow_models::served::{CompletionApi, Endpoint, ServerKind};

/// `served.server`: which server is behind the URL (it decides the sampling fields sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerSetting {
    LlamaCpp,
    Vllm,
    Sglang,
    Openai,
}

/// `served.api`: the route that generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiSetting {
    /// `/completions`, the prompt as token ids of the job's chat template.
    Completions,
    /// `/chat/completions`, the messages (the server applies its template).
    Chat,
}

/// `served.protocol` of a reward server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolSetting {
    /// vLLM's and SGLang's `/classify` (and `steerflow serve`'s).
    Classify,
    /// OpenRLHF's `/get_reward` (and `steerflow serve`'s).
    Openrlhf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServedSection {
    /// OpenAI-compatible servers: the base URL with `/v1` (`http://host:8000/v1`). Reward
    /// servers: the route itself (`http://host:8000/classify`, `http://host:5000/get_reward`).
    pub url: String,
    /// The model name the server serves; empty: the first one its `/models` lists.
    pub model: String,
    /// The environment variable holding the API key (sent as a bearer token, never printed).
    pub api_key_env: String,
    pub server: ServerSetting,
    pub api: ApiSetting,
    /// Reward servers: `classify` or `openrlhf`.
    pub protocol: ProtocolSetting,
    /// Requests in flight at once, per worker.
    pub max_in_flight: usize,
    /// Seconds one request may take.
    pub timeout_seconds: f64,
    /// Retries of a request after 429, 5xx, a reset or a timeout.
    pub max_retries: u32,
    /// The served judge: top log-probabilities asked for per question (vLLM allows 20 unless
    /// started with a larger `--max-logprobs`).
    pub top_logprobs: usize,
}

impl Default for ServedSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            model: String::new(),
            api_key_env: String::new(),
            server: ServerSetting::Vllm,
            api: ApiSetting::Completions,
            protocol: ProtocolSetting::Classify,
            max_in_flight: 16,
            timeout_seconds: 300.0,
            max_retries: 8,
            top_logprobs: 20,
        }
    }
}

impl ServedSection {
    /// The endpoint, with the API key read from `api_key_env`; `what` names the section.
    pub fn endpoint(&self, what: &str) -> Result<Endpoint, JobError> {
        let parsed = url::Url::parse(&self.url).map_err(|e| {
            invalid(format!(
                "{what}.url `{}`: {e}",
                steerflow_models::served::redact_url(&self.url)
            ))
        })?;
        // Secrets in a URL travel into error messages and logs: the key goes in `api_key_env`.
        if !parsed.username().is_empty()
            || parsed.password().is_some()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(invalid(format!(
                "{what}.url `{}` carries credentials, a query or a fragment: give the key by `api_key_env` and the server's base URL alone",
                steerflow_models::served::redact_url(&self.url)
            )));
        }
        if !["http", "https"].contains(&parsed.scheme()) {
            return Err(invalid(format!(
                "{what}.url must be http or https, not `{}`",
                parsed.scheme()
            )));
        }
        if self.max_in_flight == 0 {
            return Err(invalid(format!("{what}.max_in_flight must be at least 1")));
        }
        if !(self.timeout_seconds.is_finite() && self.timeout_seconds > 0.0) {
            return Err(invalid(format!("{what}.timeout_seconds must be positive")));
        }
        let server = match self.server {
            ServerSetting::LlamaCpp => ServerKind::LlamaCpp,
            ServerSetting::Vllm => ServerKind::Vllm,
            ServerSetting::Sglang => ServerKind::Sglang,
            ServerSetting::Openai => ServerKind::OpenAi,
        };
        let mut endpoint = Endpoint::new(&self.url, server);
        endpoint.model = (!self.model.is_empty()).then(|| self.model.clone());
        endpoint.api = match self.api {
            ApiSetting::Completions => CompletionApi::Completions,
            ApiSetting::Chat => CompletionApi::Chat,
        };
        endpoint.max_in_flight = self.max_in_flight;
        endpoint.timeout = Duration::from_secs_f64(self.timeout_seconds);
        endpoint.max_retries = self.max_retries;
        if !self.api_key_env.is_empty() {
            let key = std::env::var(&self.api_key_env).map_err(|_| {
                invalid(format!(
                    "{what}.api_key_env names `{}`, which is not set",
                    self.api_key_env
                ))
            })?;
            endpoint.api_key = Some(key);
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_from_the_section() {
        let section = ServedSection {
            url: "http://127.0.0.1:8080/v1".into(),
            server: ServerSetting::LlamaCpp,
            ..Default::default()
        };
        let e = section.endpoint("policy.served").unwrap();
        assert_eq!(e.server, ServerKind::LlamaCpp);
        assert_eq!(e.model, None);
        let bad = ServedSection {
            url: "ftp://x".into(),
            ..Default::default()
        };
        assert!(bad.endpoint("policy.served").is_err());
        let missing_key = ServedSection {
            url: "http://x/v1".into(),
            api_key_env: "STEERFLOW_TEST_SURELY_UNSET_KEY".into(),
            ..Default::default()
        };
        let e = missing_key.endpoint("policy.served").unwrap_err();
        assert!(e.to_string().contains("STEERFLOW_TEST_SURELY_UNSET_KEY"));
        for url in [
            "http://user:s3cret@x/v1",
            "http://x/v1?key=s3cret",
            "http://x/v1#s3cret",
        ] {
            let section = ServedSection {
                url: url.into(),
                ..Default::default()
            };
            let e = section.endpoint("reward.served").unwrap_err().to_string();
            assert!(e.contains("api_key_env") && !e.contains("s3cret"), "{e}");
        }
    }
}
