//! A model's text side: tokenizer, chat template and end-of-sequence tokens.

use crate::chat_template::ChatTemplate;
use crate::ModelError;
use steerflow_operators::records::Message;
use tokenizers::Tokenizer;

/// Turns conversations into token ids and token ids back into text, as the model expects.
pub struct TextCodec {
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos_token_ids: Vec<u32>,
}

impl TextCodec {
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate, eos_token_ids: Vec<u32>) -> Self {
        Self {
            tokenizer,
            template,
            eos_token_ids,
        }
    }

    /// The conversation rendered by the model's chat template.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        self.template.render(messages, add_generation_prompt)
    }

    /// Token ids of `text`; special tokens written in the text (as chat templates write them)
    /// become their ids, and nothing is added around the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// A copy whose chat template is `source` (same tokenizer and special tokens).
    pub fn with_template(&self, source: &str) -> Result<Self, ModelError> {
        Ok(Self {
            tokenizer: self.tokenizer.clone(),
            template: self.template.with_source(source)?,
            eos_token_ids: self.eos_token_ids.clone(),
        })
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The rendered conversation, tokenized.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, ModelError> {
        self.encode(&self.render(messages, add_generation_prompt)?)
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}
