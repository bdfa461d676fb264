//! Pure stages of steerflow, kept out of the dataflow so they can be tested alone.
//!
//! Every function here is deterministic and free of I/O: the dataflow in `steerflow-pipeline`
//! calls them, and tests call them directly with hand-computed expectations.
//! The formulas follow the HelpSteer2 paper (Wang et al., 2024, sections 4.3 and 4.4) and the
//! SteerLM reward-model cards, as distilled in `shared/REFERENCE.md`.

pub mod attributes;
pub mod dedup;
pub mod error;
pub mod evaluation;
pub mod filter;
pub mod goodness;
pub mod normalize;
pub mod pairs;
pub mod records;
pub mod seeding;
pub mod steerlm;

pub use error::OperatorError;
