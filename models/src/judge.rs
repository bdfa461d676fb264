//! The LLM judge: an instruct model rates one attribute at a time on 0..4, and the score is the
//! probability-weighted mean over the rating tokens "0".."4" (REFERENCE.md, "Reward model
//! kinds"). The attribute definitions are those of the HelpSteer2 annotation guidelines as
//! printed on the Llama3-70B-SteerLM-RM card.
//!
//! The five questions differ only in their last sentence, so the conversation is prefilled once
//! (the longest common token prefix of the five prompts) and each question forks that session.

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
        let digit_ids = rating_token_ids(model.as_ref())?;
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
        let text = self.model.text();
        let messages = vec![
            Message::new("system", JUDGE_SYSTEM),
            Message::new("user", question(conversation, response, attribute)),
        ];
        let mut prompt = text.render(&messages, true)?;
        prompt.push_str(ANSWER_PREFIX);
        text.encode(&prompt)
    }

    /// Rates `response` (the assistant's reply to `conversation`) on every attribute.
    pub fn score(
        &self,
        conversation: &[Message],
        response: &str,
    ) -> Result<JudgeScore, ModelError> {
        let questions = self
            .attributes
            .iter()
            .map(|a| self.question_tokens(conversation, response, a))
            .collect::<Result<Vec<_>, _>>()?;
        let limit = self.model.context_length();
        if let Some(longest) = questions.iter().map(Vec::len).max().filter(|&n| n > limit) {
            return Err(ModelError::ContextOverflow {
                tokens: longest,
                limit,
                what: "judge question".into(),
            });
        }
        // Shared prefix, leaving at least one token of its own to every question.
        let shortest = questions.iter().map(Vec::len).min().unwrap_or(0);
        let shared = common_prefix_len(&questions).min(shortest.saturating_sub(1));
        let mut tokens_run = shared as u64;
        let mut prefix = self.model.start();
        if shared > 0 {
            prefix.extend(&questions[0][..shared])?;
        }
        let mut attributes = Vec::with_capacity(questions.len());
        let mut digit_mass = Vec::with_capacity(questions.len());
        for q in &questions {
            let mut session = prefix.fork();
            let logits = session.extend(&q[shared..])?;
            tokens_run += (q.len() - shared) as u64;
            let logits: Vec<f32> = logits.to_vec1()?;
            let rating = digit_rating(&logits, &self.digit_ids)?;
            attributes.push(rating.expected);
            digit_mass.push(rating.digit_mass);
        }
        Ok(JudgeScore {
            attributes,
            digit_mass,
            tokens_run,
        })
    }
}

impl crate::RewardModel for Judge {
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

/// The token of each rating digit as it follows the answer prefix, checked to be one token.
fn rating_token_ids(model: &dyn LanguageModel) -> Result<Vec<u32>, ModelError> {
    let text = model.text();
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

/// Length of the longest common prefix of all sequences.
pub fn common_prefix_len(sequences: &[Vec<u32>]) -> usize {
    let Some(first) = sequences.first() else {
        return 0;
    };
    let mut n = first.len();
    for s in &sequences[1..] {
        n = n.min(first.iter().zip(s).take_while(|(a, b)| a == b).count());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix() {
        assert_eq!(
            common_prefix_len(&[vec![1, 2, 3], vec![1, 2, 4], vec![1, 2]]),
            2
        );
        assert_eq!(common_prefix_len(&[vec![1, 2, 3]]), 3);
        assert_eq!(common_prefix_len(&[]), 0);
        assert_eq!(common_prefix_len(&[vec![5], vec![6]]), 0);
    }

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
