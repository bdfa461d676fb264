//! Rejected records: every input or intermediate record that cannot be used, with where it came
//! from and why. They are written to `rejects/` in the output and counted in the summary.

use serde::{Deserialize, Serialize};

/// Why a record was rejected: one vocabulary for every reader and stage, written as the
/// snake_case names in `rejects/*.jsonl` and the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RejectReason {
    /// The line is not UTF-8.
    InvalidUtf8,
    /// The line is not JSON.
    InvalidJson,
    /// The file's last line is cut off.
    TruncatedLine,
    /// The record is JSON but not an object.
    NotAnObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or form.
    WrongType,
    /// Two fields that exclude each other are both present (`prompt` and `messages`).
    Ambiguous,
    /// A message's role is not system, user or assistant.
    UnknownRole,
    /// The conversation or prompt is empty.
    Empty,
    /// The conversation does not end as the job needs (a user turn to answer, an assistant turn
    /// to score).
    BadConversationEnd,
    /// A conversation to annotate has no assistant turn.
    NoAssistantTurn,
    /// A record id that appeared before in the input (the first is kept).
    DuplicateId,
    /// A record whose content changed under an id a committed run settled.
    ChangedSinceCommitted,
    /// The policy cannot take the prompt (its template refuses it, or it is too long).
    PolicyPrompt,
    /// The policy failed on the prompt.
    PolicyError,
    /// Generation failed.
    GenerationFailed,
    /// The prompt duplicates another that is sampled (`[dedup]`): a decision, not an error, so
    /// it does not count against `input.max_rejects`.
    DuplicatePrompt,
    /// The prompt contains a benchmark item (`[dedup.decontaminate]`): a decision, not an error.
    Contaminated,
}

impl RejectReason {
    /// The name written in rejects files and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::TruncatedLine => "truncated_line",
            Self::NotAnObject => "not_an_object",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::Ambiguous => "ambiguous",
            Self::UnknownRole => "unknown_role",
            Self::Empty => "empty",
            Self::BadConversationEnd => "bad_conversation_end",
            Self::NoAssistantTurn => "no_assistant_turn",
            Self::DuplicateId => "duplicate_id",
            Self::ChangedSinceCommitted => "changed_since_committed",
            Self::PolicyPrompt => "policy_prompt",
            Self::PolicyError => "policy_error",
            Self::GenerationFailed => "generation_failed",
            Self::DuplicatePrompt => "duplicate_prompt",
            Self::Contaminated => "contaminated",
        }
    }

    /// Whether the record was bad (counted against `input.max_rejects`), as opposed to left out
    /// by a rule of the job.
    pub fn is_error(self) -> bool {
        !matches!(self, Self::DuplicatePrompt | Self::Contaminated)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for RejectReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// The input file.
    pub file: String,
    /// 1-based line (jsonl) or 0-based row (parquet).
    pub record: u64,
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// The prompt id, when it was known.
    pub prompt_id: Option<String>,
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// Human-readable detail.
    pub detail: String,
}

impl Reject {
    pub fn new(
        file: &str,
        record: u64,
        field: Option<&str>,
        reason: RejectReason,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_string(),
            record,
            field: field.map(str::to_string),
            prompt_id: None,
            reason,
            detail: detail.into(),
        }
    }
}

impl Reject {
    /// The reject with the record's id, when it could be read.
    pub fn with_prompt_id(mut self, id: Option<String>) -> Self {
        self.prompt_id = id;
        self
    }

    /// The key by which an input reject is recognised in later runs (file, record, field,
    /// reason).
    pub fn key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.file,
            self.record,
            self.field.as_deref().unwrap_or(""),
            self.reason
        )
    }

    /// What a reject is routed to a shard by: its prompt id when it has one, else its file and
    /// record.
    pub fn route(&self) -> String {
        self.prompt_id
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.file, self.record))
    }
}

/// Sorts rejects in input order: by file, record, then reason (stable), the order every rejects
/// file and part keeps.
pub fn sort_in_input_order(rejects: &mut [Reject]) {
    rejects.sort_by(|a, b| {
        (a.file.as_str(), a.record, a.reason.as_str()).cmp(&(
            b.file.as_str(),
            b.record,
            b.reason.as_str(),
        ))
    });
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.record)?;
        if let Some(field) = &self.field {
            write!(f, " field `{field}`")?;
        }
        write!(f, ": {} ({})", self.detail, self.reason)
    }
}

/// How many rejects there are of each reason, by reason name.
pub fn counts_by_reason(rejects: &[Reject]) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for r in rejects {
        *counts.entry(r.reason.as_str().to_string()).or_default() += 1;
    }
    counts
}

/// Rejects as `rejects.jsonl` lines.
pub fn rejects_jsonl(rejects: &[Reject]) -> Vec<u8> {
    let mut out = String::new();
    for r in rejects {
        out.push_str(&serde_json::to_string(r).unwrap_or_default());
        out.push('\n');
    }
    out.into_bytes()
}

/// Fails with `TooManyRejects` when `rejects` of `records` exceed `limit`.
pub fn enforce_limit(
    limit: RejectLimit,
    rejects: &[Reject],
    records: u64,
) -> Result<(), crate::PipelineError> {
    let errors: Vec<&Reject> = rejects.iter().filter(|r| r.reason.is_error()).collect();
    if limit.exceeded(errors.len() as u64, records) {
        return Err(crate::PipelineError::TooManyRejects {
            count: errors.len() as u64,
            limit: limit.to_string(),
            first: errors.first().map(|r| r.to_string()).unwrap_or_default(),
        });
    }
    Ok(())
}

/// How many rejects a run tolerates: a count, or a fraction of the records read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RejectLimit {
    Count(u64),
    Fraction(f64),
}

impl RejectLimit {
    pub fn exceeded(&self, rejects: u64, records: u64) -> bool {
        match *self {
            RejectLimit::Count(n) => rejects > n,
            RejectLimit::Fraction(f) => rejects as f64 > f * records as f64,
        }
    }
}

impl std::fmt::Display for RejectLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectLimit::Count(n) => write!(f, "{n} records"),
            RejectLimit::Fraction(x) => write!(f, "{x} of the records"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(!RejectLimit::Count(2).exceeded(2, 10));
        assert!(RejectLimit::Count(2).exceeded(3, 10));
        assert!(!RejectLimit::Fraction(0.1).exceeded(1, 10));
        assert!(RejectLimit::Fraction(0.1).exceeded(2, 10));
        assert!(RejectLimit::Count(0).exceeded(1, 1000));
    }
}
