//! Generation requests and results: what to generate for each sample ([`GenerationParams`]),
//! one generated response ([`Generation`]), the work it took ([`GenerationCounters`]) and the
//! stop-string rule. Below both the engine and the policy, which share them.

use steerflow_kernels::sampling::SamplingParams;
use steerflow_operators::records::FinishReason;

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
