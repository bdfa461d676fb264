//! The LLM judge: an instruct model rates one attribute at a time on 0..4, and the score is the
//! probability-weighted mean over the rating tokens "0".."4" (REFERENCE.md, "Reward model
//! kinds"). The attribute definitions are those of the HelpSteer2 annotation guidelines as
//! printed on the Llama3-70B-SteerLM-RM card.
//!
//! The five questions differ only in their last sentence, so the conversation is prefilled once
//! (the longest common token prefix of the five prompts) and each question forks that session.

use crate::text::TextCodec;
use crate::{LanguageModel, ModelError};
use std::sync::Arc;
use steerflow_kernels::judge_digits::digit_rating;
use steerflow_operators::records::Message;

/// One attribute the judge is asked about.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeAttribute {
    pub name: String,
    pub definition: String,
}

/// The five HelpSteer2 attributes with the card's definitions.
pub fn helpsteer2_attributes() -> Vec<JudgeAttribute> {
    [
        ("helpfulness", "overall helpfulness of the response to the prompt"),
        ("correctness", "inclusion of all pertinent facts without errors"),
        ("coherence", "consistency and clarity of expression"),
        (
            "complexity",
            "intellectual depth required to write the response (whether it could be written by anyone with basic language competency or requires deep domain expertise)",
        ),
        ("verbosity", "amount of detail included in the response, relative to what is asked for in the prompt"),
    ]
    .into_iter()
    .map(|(name, definition)| JudgeAttribute { name: name.into(), definition: definition.into() })
    .collect()
}

const JUDGE_SYSTEM: &str =
    "You are a strict, fair evaluator of AI assistant responses. You answer with a single digit.";
/// Written after the generation prompt so the next token is the rating.
const ANSWER_PREFIX: &str = "Rating: ";
const RATING_DIGITS: [&str; 5] = ["0", "1", "2", "3", "4"];

/// Scores of one response.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgeScore {
    /// Expected rating per attribute, 0..4, in the judge's attribute order.
    pub attributes: Vec<f64>,
    /// Probability mass on the rating digits per attribute (low means the model was not rating).
    pub digit_mass: Vec<f64>,
    /// Tokens run through the model for this response (shared prefix counted once).
    pub tokens_run: u64,
}

/// An LLM judge over any chat model.
#[derive(Clone)]
pub struct Judge {
    model: Arc<dyn LanguageModel>,
    attributes: Vec<JudgeAttribute>,
    digit_ids: Vec<u32>,
}

impl Judge {
    pub fn new(
        model: Arc<dyn LanguageModel>,
        attributes: Vec<JudgeAttribute>,
    ) -> Result<Self, ModelError> {
        if attributes.is_empty() {
            return Err(ModelError::Judge("no attributes to rate".into()));
        }
        let digit_ids = rating_token_ids(model.text())?;
        Ok(Self {
            model,
            attributes,
            digit_ids,
        })
    }

    pub fn model(&self) -> &Arc<dyn LanguageModel> {
        &self.model
    }

    pub fn attribute_names(&self) -> Vec<String> {
        self.attributes.iter().map(|a| a.name.clone()).collect()
    }

    /// The token ids of the question about `attribute` for `response` to `conversation`.
    pub fn question_tokens(
        &self,
        conversation: &[Message],
        response: &str,
        attribute: &JudgeAttribute,
    ) -> Result<Vec<u32>, ModelError> {
        question_tokens(self.model.text(), conversation, response, attribute)
    }

    /// Rates `response` (the assistant's reply to `conversation`) on every attribute.
    pub fn score(
        &self,
        conversation: &[Message],
        response: &str,
    ) -> Result<JudgeScore, ModelError> {
        self.score_group(conversation, &[response])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Judge("no result".into())))
    }

    /// Rates several responses to the same conversation. All their questions run as one prefix
    /// tree: the judge instructions and the conversation once, each response once, then each
    /// attribute's question. A response that does not fit the context fails alone.
    pub fn score_group(
        &self,
        conversation: &[Message],
        responses: &[&str],
    ) -> Vec<Result<JudgeScore, ModelError>> {
        let limit = self.model.context_length();
        let questions: Vec<Result<Vec<Vec<u32>>, ModelError>> = responses
            .iter()
            .map(|response| {
                let qs = self
                    .attributes
                    .iter()
                    .map(|a| self.question_tokens(conversation, response, a))
                    .collect::<Result<Vec<_>, _>>()?;
                match qs.iter().map(Vec::len).max() {
                    Some(longest) if longest > limit => Err(ModelError::ContextOverflow {
                        tokens: longest,
                        limit,
                        what: "judge question".into(),
                    }),
                    _ => Ok(qs),
                }
            })
            .collect();
        let runnable: Vec<Vec<u32>> = questions
            .iter()
            .flat_map(|q| q.iter().flatten().cloned())
            .collect();
        let scored = if runnable.is_empty() {
            Ok((Vec::new(), 0))
        } else {
            crate::prefix_tree::run_shared_prefixes(self.model.as_ref(), &runnable)
        };
        let (logits, tokens_run) = match scored {
            Ok(r) => r,
            Err(e) => {
                let message = e.to_string();
                return responses
                    .iter()
                    .map(|_| Err(ModelError::Judge(message.clone())))
                    .collect();
            }
        };
        // The shared work is split evenly over the responses that ran, so totals add up.
        let ran = questions.iter().filter(|q| q.is_ok()).count().max(1) as u64;
        let mut logits = logits.into_iter();
        let mut k = 0u64;
        questions
            .into_iter()
            .map(|q| {
                let q = q?;
                let mut attributes = Vec::with_capacity(q.len());
                let mut digit_mass = Vec::with_capacity(q.len());
                for _ in &q {
                    let l: Vec<f32> = logits
                        .next()
                        .ok_or_else(|| ModelError::Judge("missing logits".into()))?
                        .to_vec1()?;
                    let rating = digit_rating(&l, &self.digit_ids)?;
                    attributes.push(rating.expected);
                    digit_mass.push(rating.digit_mass);
                }
                let share = tokens_run / ran + u64::from(k < tokens_run % ran);
                k += 1;
                Ok(JudgeScore {
                    attributes,
                    digit_mass,
                    tokens_run: share,
                })
            })
            .collect()
    }
}

impl crate::RewardModel for Judge {
    /// Consecutive items with the same conversation (the N samples of a prompt) are rated as
    /// one group, sharing their prefill.
    fn score_batch(
        &self,
        items: &[(&[Message], &str)],
    ) -> Vec<Result<crate::RewardScores, ModelError>> {
        let mut out = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let conversation = items[start].0;
            let end = start
                + items[start..]
                    .iter()
                    .take_while(|(c, _)| *c == conversation)
                    .count();
            let responses: Vec<&str> = items[start..end].iter().map(|(_, r)| *r).collect();
            for r in self.score_group(conversation, &responses) {
                out.push(r.map(|s| crate::RewardScores {
                    attributes: s.attributes,
                    tokens_run: s.tokens_run,
                    dropped_turns: 0,
                }));
            }
            start = end;
        }
        out
    }

    fn id(&self) -> String {
        format!("judge:{}", self.model.id())
    }
    fn attribute_names(&self) -> Vec<String> {
        Judge::attribute_names(self)
    }
    fn score(
        &self,
        conversation: &[Message],
        response: &str,
    ) -> Result<crate::RewardScores, ModelError> {
        let s = Judge::score(self, conversation, response)?;
        Ok(crate::RewardScores {
            attributes: s.attributes,
            tokens_run: s.tokens_run,
            dropped_turns: 0,
        })
    }
}

fn question(conversation: &[Message], response: &str, attribute: &JudgeAttribute) -> String {
    let mut transcript = String::new();
    for m in conversation {
        transcript.push_str(&format!("[{}]\n{}\n\n", m.role, m.content));
    }
    transcript.push_str(&format!("[assistant]\n{response}\n"));
    format!(
        "Here is a conversation between a user and an AI assistant.\n\n<conversation>\n{transcript}</conversation>\n\n\
         Rate the assistant's last response for {name}: {definition}. Use a scale from 0 (lowest) to 4 (highest) \
         and answer with the digit only.",
        name = attribute.name,
        definition = attribute.definition,
    )
}

/// The token ids of the question about `attribute` for `response` to `conversation`, in the
/// chat format of `text`; the next token is the rating.
pub(crate) fn question_tokens(
    text: &TextCodec,
    conversation: &[Message],
    response: &str,
    attribute: &JudgeAttribute,
) -> Result<Vec<u32>, ModelError> {
    let messages = vec![
        Message::new("system", JUDGE_SYSTEM),
        Message::new("user", question(conversation, response, attribute)),
    ];
    let mut prompt = text.render(&messages, true)?;
    prompt.push_str(ANSWER_PREFIX);
    text.encode(&prompt)
}

/// The token of each rating digit as it follows the answer prefix, checked to be one token.
pub(crate) fn rating_token_ids(text: &TextCodec) -> Result<Vec<u32>, ModelError> {
    let probe = format!(
        "{}{ANSWER_PREFIX}",
        text.render(
            &[
                Message::new("system", JUDGE_SYSTEM),
                Message::new("user", "probe")
            ],
            true
        )?
    );
    let base = text.encode(&probe)?;
    RATING_DIGITS
        .iter()
        .map(|d| {
            let with_digit = text.encode(&format!("{probe}{d}"))?;
            match with_digit.strip_prefix(base.as_slice()) {
                Some([id]) => Ok(*id),
                _ => Err(ModelError::Judge(format!(
                    "the model's tokenizer does not write the rating `{d}` after `{ANSWER_PREFIX}` as one token"
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_differ_only_at_the_end() {
        let conv = [Message::new("user", "What is 2+2?")];
        let attrs = helpsteer2_attributes();
        let a = question(&conv, "4", &attrs[0]);
        let b = question(&conv, "4", &attrs[4]);
        let split = a.find("Rate the assistant").unwrap();
        assert_eq!(a[..split], b[..split]);
    }
}
