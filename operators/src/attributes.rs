//! Attribute sets produced by SteerLM reward models and the LLM judge.
//!
//! HelpSteer2 rates five attributes on 0..4; NeMo's SteerLM reward models emit nine outputs,
//! of which HelpSteer2-trained models leave the first four untrained (REFERENCE.md, "Scores").

/// The five HelpSteer2 attributes, in the order the dataset and the paper use.
pub const HELPSTEER2: [&str; 5] = [
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
];

/// The nine outputs of NeMo SteerLM reward models (Llama3-70B-SteerLM-RM card).
pub const NEMO_NINE: [&str; 9] = [
    "quality",
    "toxicity",
    "humor",
    "creativity",
    "helpfulness",
    "correctness",
    "coherence",
    "complexity",
    "verbosity",
];

/// Lowest and highest rating of a HelpSteer2 attribute.
pub const RATING_RANGE: (f64, f64) = (0.0, 4.0);
