//! The LLM judge over a served model: the in-process judge's questions (rendered and tokenized
//! by the judge model's local chat template, sent as token ids to `/completions`), one token
//! asked for with its top log-probabilities, and the same score: the expected rating over the
//! digits "0".."4", renormalised over them.
//!
//! A server returns only the top K log-probabilities. A digit outside them has a probability of
//! at most the smallest returned one; it counts as 0 when that bound moves the rating by at most
//! [`MISSING_DIGIT_TOLERANCE`], and the response fails otherwise (raise `top_logprobs`).

use super::client::Client;
use super::policy::served_model_name;
use super::wire::{self, Candidate, CompletionRequest, Prompt};
use super::{CompletionApi, Endpoint, Outage, ServedCounters};
use crate::judge::{question_tokens, rating_token_ids, JudgeAttribute};
use crate::text::TextCodec;
use crate::{ModelError, RewardModel, RewardScores};
use std::sync::Arc;
use steerflow_kernels::judge_digits::DigitRating;
use steerflow_kernels::sampling::SamplingParams;
use steerflow_operators::records::Message;

/// The most a rating may move because digits fell outside the server's top log-probabilities.
pub const MISSING_DIGIT_TOLERANCE: f64 = 0.01;

/// One question's rating and the prompt tokens the server ran for it.
type Rated = Result<(DigitRating, u64), ModelError>;

/// An LLM judge whose model is served.
pub struct ServedJudge {
    client: Client,
    model: String,
    text: TextCodec,
    attributes: Vec<JudgeAttribute>,
    digit_ids: Vec<u32>,
    digit_texts: Vec<String>,
    top_logprobs: usize,
    id: String,
}

impl ServedJudge {
    /// Connects to `endpoint`; `text` is the judge model's tokenizer and template (local files),
    /// `top_logprobs` how many log-probabilities to ask for (vLLM allows 20 by default).
    pub fn connect(
        endpoint: Endpoint,
        text: TextCodec,
        attributes: Vec<JudgeAttribute>,
        top_logprobs: usize,
        counters: Arc<ServedCounters>,
    ) -> Result<Self, ModelError> {
        if endpoint.api != CompletionApi::Completions {
            return Err(ModelError::Judge(
                "a served judge needs the completions route (its questions go as token ids)".into(),
            ));
        }
        if attributes.is_empty() {
            return Err(ModelError::Judge("no attributes to rate".into()));
        }
        let digit_ids = rating_token_ids(&text)?;
        let digit_texts = digit_ids
            .iter()
            .map(|&id| text.decode(&[id]))
            .collect::<Result<Vec<_>, _>>()?;
        let client = Client::new(endpoint, counters)?;
        let model = served_model_name(&client)?;
        let id = format!("judge:served:{model}@{}", client.endpoint().redacted());
        Ok(Self {
            client,
            model,
            text,
            attributes,
            digit_ids,
            digit_texts,
            top_logprobs: top_logprobs.max(5),
            id,
        })
    }

    /// One question's rating, and the prompt tokens the server ran for it.
    async fn rate(&self, tokens: Vec<u32>) -> Rated {
        let sampling = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        };
        let body = wire::completion_body(
            self.client.endpoint().server,
            &CompletionRequest {
                model: &self.model,
                prompt: Prompt::Tokens(&tokens),
                sampling: &sampling,
                max_tokens: 1,
                seed: 0,
                stop: &[],
                logprobs: Some(self.top_logprobs),
            },
        );
        let reply = self.client.post("/completions", &body).await?;
        let judge_error =
            |m: String| ModelError::Judge(format!("{}: {m}", self.client.endpoint().redacted()));
        let candidates = wire::first_token_candidates(&reply)
            .map_err(judge_error)?
            // Every request would be answered the same way: the run stops.
            .ok_or_else(|| ModelError::Served {
                endpoint: self.client.endpoint().redacted(),
                message:
                    "/completions returned no log-probabilities (a served judge needs `logprobs`)"
                        .into(),
                failure: crate::ServedFailure::Endpoint,
            })?;
        let prompt_tokens = reply
            .pointer("/usage/prompt_tokens")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(tokens.len() as u64);
        let rating = rating_from_candidates(
            &candidates,
            &self.digit_ids,
            &self.digit_texts,
            self.top_logprobs,
        )
        .map_err(judge_error)?;
        Ok((rating, prompt_tokens))
    }
}

/// The rating of one question from the top log-probabilities of its first token; digits are
/// matched by id where the server gives ids, else by their text.
pub(crate) fn rating_from_candidates(
    candidates: &[Candidate],
    digit_ids: &[u32],
    digit_texts: &[String],
    asked: usize,
) -> Result<DigitRating, String> {
    let probability = |i: usize| {
        candidates
            .iter()
            .find(|c| match c.id {
                Some(id) => id == digit_ids[i],
                None => c.token == digit_texts[i],
            })
            .map(|c| c.logprob.exp())
    };
    let found: Vec<Option<f64>> = (0..digit_ids.len()).map(probability).collect();
    let total: f64 = found.iter().flatten().sum();
    let missing = found.iter().filter(|p| p.is_none()).count();
    if total <= 0.0 {
        return Err(format!(
            "no rating digit among the top {asked} log-probabilities (raise top_logprobs)"
        ));
    }
    if missing > 0 {
        let floor = candidates
            .iter()
            .map(|c| c.logprob.exp())
            .fold(f64::INFINITY, f64::min);
        let max_digit = (digit_ids.len() - 1) as f64;
        let bound = max_digit * missing as f64 * floor / total;
        if bound > MISSING_DIGIT_TOLERANCE {
            return Err(format!(
                "{missing} rating digit(s) outside the top {asked} log-probabilities could move the rating by up to {bound:.3} (raise top_logprobs)"
            ));
        }
    }
    let expected = found
        .iter()
        .enumerate()
        .map(|(i, p)| i as f64 * p.unwrap_or(0.0))
        .sum::<f64>()
        / total;
    Ok(DigitRating {
        expected,
        digit_mass: total,
    })
}

impl RewardModel for ServedJudge {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn attribute_names(&self) -> Vec<String> {
        self.attributes.iter().map(|a| a.name.clone()).collect()
    }

    fn score(&self, conversation: &[Message], response: &str) -> Result<RewardScores, ModelError> {
        self.score_batch(&[(conversation, response)])
            .pop()
            .unwrap_or_else(|| Err(ModelError::Judge("no result".into())))
    }

    /// Every question of every item goes to the server, at most `max_in_flight` at a time.
    fn score_batch(&self, items: &[(&[Message], &str)]) -> Vec<Result<RewardScores, ModelError>> {
        let per_item = self.attributes.len();
        let mut results: Vec<Vec<Option<Rated>>> = items
            .iter()
            .map(|_| (0..per_item).map(|_| None).collect())
            .collect();
        let mut questions = Vec::new();
        for (i, (conversation, response)) in items.iter().enumerate() {
            for (a, attribute) in self.attributes.iter().enumerate() {
                match question_tokens(&self.text, conversation, response, attribute) {
                    Ok(tokens) => questions.push((i, a, tokens)),
                    Err(e) => results[i][a] = Some(Err(e)),
                }
            }
        }
        let positions: Vec<(usize, usize)> = questions.iter().map(|(i, a, _)| (*i, *a)).collect();
        let outage = Outage::default();
        self.client.run_bounded(
            questions,
            |(_, _, tokens)| self.rate(tokens),
            |k, result| {
                let (i, a) = positions[k];
                if let Err(e) = &result {
                    outage.note(e);
                }
                results[i][a] = Some(result);
            },
            || outage.happened(),
        );
        results
            .into_iter()
            .map(|ratings| {
                let mut attributes = Vec::with_capacity(per_item);
                let mut tokens_run = 0;
                for r in ratings {
                    let (rating, tokens) = r.unwrap_or_else(|| {
                        Err(outage.unanswered(self.client.endpoint().redacted()))
                    })?;
                    attributes.push(rating.expected);
                    tokens_run += tokens;
                }
                Ok(RewardScores {
                    attributes,
                    tokens_run,
                    dropped_turns: 0,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u32, token: &str, p: f64) -> Candidate {
        Candidate {
            id: Some(id),
            token: token.into(),
            logprob: p.ln(),
        }
    }

    fn digits() -> (Vec<u32>, Vec<String>) {
        ((10..15).collect(), (0..5).map(|d| d.to_string()).collect())
    }

    #[test]
    fn all_digits_present_renormalise_over_the_digits() {
        let (ids, texts) = digits();
        let c: Vec<Candidate> = [0.1, 0.1, 0.2, 0.2, 0.2]
            .iter()
            .enumerate()
            .map(|(i, &p)| candidate(10 + i as u32, &i.to_string(), p))
            .chain([candidate(99, "x", 0.2)])
            .collect();
        let r = rating_from_candidates(&c, &ids, &texts, 20).unwrap();
        // (0·0.1 + 1·0.1 + 2·0.2 + 3·0.2 + 4·0.2) / 0.8
        assert!((r.expected - 1.9 / 0.8).abs() < 1e-12);
        assert!((r.digit_mass - 0.8).abs() < 1e-12);
    }

    #[test]
    fn by_text_when_the_server_gives_no_ids() {
        let (ids, texts) = digits();
        let c: Vec<Candidate> = (0..5)
            .map(|i| Candidate {
                id: None,
                token: i.to_string(),
                logprob: 0.2f64.ln(),
            })
            .collect();
        let r = rating_from_candidates(&c, &ids, &texts, 20).unwrap();
        assert!((r.expected - 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_missing_digit_counts_only_when_it_cannot_matter() {
        let (ids, texts) = digits();
        // Digit 4 missing; the smallest returned probability bounds it.
        let small = vec![
            candidate(10, "0", 0.5),
            candidate(11, "1", 0.3),
            candidate(12, "2", 0.1),
            candidate(13, "3", 0.09),
            candidate(99, "x", 0.0001),
        ];
        let r = rating_from_candidates(&small, &ids, &texts, 5).unwrap();
        assert!((r.expected - (0.3 + 0.2 + 0.27) / 0.99).abs() < 1e-12);
        let large = vec![
            candidate(10, "0", 0.5),
            candidate(11, "1", 0.3),
            candidate(99, "x", 0.1),
        ];
        let e = rating_from_candidates(&large, &ids, &texts, 3).unwrap_err();
        assert!(e.contains("raise top_logprobs"), "{e}");
    }
}
