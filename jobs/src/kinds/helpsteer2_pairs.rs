//! `helpsteer2-pairs`: pairs from responses that already carry attribute labels (chosen = higher
//! `pairs.by`, ties discarded), as HelpSteer2's DPO data was made; also reads `steerflow score`
//! output (`configs/helpsteer2-pairs.toml`).

use crate::checks::plan;
use crate::config::sections::Common;
use crate::error::{invalid, JobError};
use crate::models::{load_language_model, with_chat_template};
use serde::Serialize;
use std::collections::BTreeMap;
use steerflow_operators::records::Message;
use steerflow_pipeline::formats::ExportFormat;

/// What a helpsteer2-pairs run did (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub job: &'static str,
    pub output: String,
    pub pairs: u64,
    pub prompts: u64,
    pub responses: u64,
    pub dropped: BTreeMap<String, u64>,
    pub rejected: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pairs from {} prompts ({} responses; dropped {}; {} records rejected) written to {}",
            self.pairs,
            self.prompts,
            self.responses,
            serde_json::to_string(&self.dropped).unwrap_or_default(),
            self.rejected,
            self.output
        )
    }
}

/// Checks the job without loading a model: `pairs.by` must be one of `pairs.attributes`.
pub fn check(config: &Common) -> Result<Vec<String>, JobError> {
    plan(config)?;
    let names = config.pairs.attributes.names();
    if !names.contains(&config.pairs.by) {
        return Err(invalid(format!(
            "pairs.by `{}` is not among pairs.attributes ({})",
            config.pairs.by,
            names.join(", ")
        )));
    }
    Ok(names)
}

pub fn run(config: &Common) -> Result<Summary, JobError> {
    let names = check(config)?;
    let plan = plan(config)?;
    // The string exports render prompts with the template of the model to be trained.
    let template_model = if plan
        .formats
        .iter()
        .any(|f| *f != ExportFormat::Conversational)
    {
        Some(with_chat_template(
            load_language_model(&config.policy.model, &candle_core::Device::Cpu)?,
            &config.policy.chat_template,
        )?)
    } else {
        None
    };
    let render = |messages: &[Message]| match &template_model {
        Some(m) => m.text().render(messages, true),
        None => Err(steerflow_models::ModelError::Template(
            "no template model".into(),
        )),
    };
    let report = steerflow_pipeline::labelled_pairs::run_labelled_pairs(
        &config.input.path,
        plan.input_format,
        &config.output.path,
        &names,
        &config.pairs.by,
        plan.max_rejects,
        &plan.formats,
        &render,
    )?;
    Ok(Summary {
        job: "helpsteer2-pairs",
        output: config.output.path.clone(),
        pairs: report.pairs,
        prompts: report.prompts,
        responses: report.responses,
        dropped: report.dropped,
        rejected: report.rejected,
    })
}
