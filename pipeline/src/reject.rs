//! Rejected records: every input or intermediate record that cannot be used, with where it came
//! from and why. They are written to `rejects/` in the output and counted in the summary.

use serde::{Deserialize, Serialize};

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
    /// Machine-readable reason (`invalid_json`, `missing_field`, `context_overflow`...).
    pub reason: String,
    /// Human-readable detail.
    pub detail: String,
}

impl Reject {
    pub fn new(
        file: &str,
        record: u64,
        field: Option<&str>,
        reason: &str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_string(),
            record,
            field: field.map(str::to_string),
            prompt_id: None,
            reason: reason.to_string(),
            detail: detail.into(),
        }
    }
}

impl Reject {
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

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.record)?;
        if let Some(field) = &self.field {
            write!(f, " field `{field}`")?;
        }
        write!(f, ": {} ({})", self.detail, self.reason)
    }
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
    if limit.exceeded(rejects.len() as u64, records) {
        return Err(crate::PipelineError::TooManyRejects {
            count: rejects.len() as u64,
            limit: limit.to_string(),
            first: rejects.first().map(|r| r.to_string()).unwrap_or_default(),
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
