//! The one error type of the models crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} is not a usable GGUF file: {message}")]
    Gguf { path: PathBuf, message: String },
    #[error("model file {path} does not exist (models are given as `default`, a path to a .gguf file, or a directory)")]
    NotFound { path: PathBuf },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("installing the default model {model}: {message}")]
    Install { model: String, message: String },
    #[error("input of {tokens} tokens does not fit the context of {limit} tokens ({what})")]
    ContextOverflow {
        tokens: usize,
        limit: usize,
        what: String,
    },
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Kernel(#[from] steerflow_kernels::KernelError),
    #[error("judge: {0}")]
    Judge(String),
    /// A served model (an OpenAI-compatible server, a reward server) failed, for one record or
    /// for the whole endpoint (`failure`).
    #[error("served model {endpoint}: {message}{}", failure.explanation())]
    Served {
        endpoint: String,
        message: String,
        failure: ServedFailure,
    },
}

/// What a served model's failure says about the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedFailure {
    /// This record's request was refused or answered in a shape that cannot be read (400, 422,
    /// a reply without a choice): the record goes to rejects and the run goes on.
    Record,
    /// The endpoint refuses every request (401, 403, 404: a wrong key, route or model name):
    /// the run stops with nothing of the affected prompts committed.
    Endpoint,
    /// The server stayed unavailable (429, 5xx, resets, timeouts) through every retry: the run
    /// stops with the transient-failure exit code, and rerunning the same command resumes.
    Unavailable,
}

impl ServedFailure {
    fn explanation(self) -> &'static str {
        match self {
            ServedFailure::Record => "",
            ServedFailure::Endpoint => " (the endpoint refuses every request: check its url, model and api_key_env; nothing of this prompt was committed)",
            ServedFailure::Unavailable => " (transient: the server stayed unavailable through the retries; rerun the same command to resume)",
        }
    }
}

impl ModelError {
    /// True when the error belongs to one input record (it goes to rejects) rather than to the
    /// model or the machine (the job stops).
    pub fn is_record_error(&self) -> bool {
        matches!(
            self,
            ModelError::ContextOverflow { .. } | ModelError::Template(_)
        )
    }

    /// True when a served model stayed unavailable through its retries: the run stops with the
    /// transient-failure exit code and nothing committed, and a rerun resumes.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ModelError::Served {
                failure: ServedFailure::Unavailable,
                ..
            }
        )
    }

    /// True when a served model's failure is not one record's: the endpoint refuses every
    /// request or stayed unavailable. The run stops rather than reject record after record.
    pub fn stops_the_run(&self) -> bool {
        matches!(
            self,
            ModelError::Served {
                failure: ServedFailure::Endpoint | ServedFailure::Unavailable,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_failure_says_whether_the_run_stops_and_why() {
        let served = |failure| ModelError::Served {
            endpoint: "http://127.0.0.1:8080/v1".into(),
            message: "/completions: HTTP 401".into(),
            failure,
        };
        let record = served(ServedFailure::Record);
        assert!(!record.stops_the_run() && !record.is_transient());
        assert!(!record.to_string().contains('('));
        let refused = served(ServedFailure::Endpoint);
        assert!(refused.stops_the_run() && !refused.is_transient());
        assert!(refused.to_string().contains("refuses every request"));
        let down = served(ServedFailure::Unavailable);
        assert!(down.stops_the_run() && down.is_transient());
        assert!(down.to_string().contains("rerun the same command"));
        assert!(!ModelError::Judge("x".into()).stops_the_run());
    }
}
