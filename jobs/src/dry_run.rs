//! `steerflow run --dry-run`: checks a job without running it and writes nothing. The config is
//! validated, the models are located (not loaded, not installed), the input is read and parsed
//! with its rejects counted against `input.max_rejects`, the output location is checked for
//! writing, and the plan (prompts, samples, token estimates) is returned as JSON.

use crate::checks::plan;
use crate::config::JobConfig;
use crate::error::{invalid, JobError};
use crate::kinds::{check, dry_run_shape};
use serde_json::{json, Value};
use std::path::Path;
use steerflow_models::registry::{cache_dir, locate_model_without_install, ModelLocation};
use steerflow_pipeline::reject::enforce_limit;
use steerflow_pipeline::source::{read_prompts, RecordShape};
use steerflow_pipeline::storage::redact_url;
use steerflow_pipeline::storage::Location;

/// Where a model would come from, without loading or installing it.
fn describe_model(spec: &str) -> Result<Value, JobError> {
    Ok(match locate_model_without_install(spec)? {
        (ModelLocation::Gguf(path), installed) => json!({
            "spec": spec, "format": "gguf", "path": path, "present": installed,
            "note": if installed { "" } else { "installed on first use" },
        }),
        (ModelLocation::HfDir(dir), _) => {
            json!({ "spec": spec, "format": "hf-checkpoint", "path": dir, "present": true })
        }
    })
}

/// The committed runs in an existing output and the prompt ids they settled (nothing when the
/// output does not exist yet). For a URL this lists the output, which checks the credentials.
fn committed_prompts(output: &str) -> Result<(usize, std::collections::HashSet<String>), JobError> {
    let local = !output.contains("://") || output.starts_with("file://");
    if local && !Path::new(output.trim_start_matches("file://")).is_dir() {
        return Ok((0, Default::default()));
    }
    let location = Location::parse(output, false)?;
    let rt = steerflow_pipeline::storage::io_runtime()?;
    let manifests = rt.block_on(steerflow_pipeline::commit::committed_manifests(&location))?;
    let ids = manifests
        .iter()
        .flat_map(|m| m.prompts.iter().map(|k| k.id.clone()))
        .collect();
    Ok((manifests.len(), ids))
}

/// Whether a local output directory could be created and written; URLs are listed (above), not
/// written.
fn output_writable(output: &str) -> Result<Value, JobError> {
    if output.contains("://") && !output.starts_with("file://") {
        return Ok(
            json!({ "location": redact_url(output), "checked": false, "note": "remote locations are listed, not written, by a dry run" }),
        );
    }
    let path = Path::new(output.trim_start_matches("file://"));
    let mut existing = path;
    while !existing.exists() {
        existing = match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    let meta = std::fs::metadata(existing).map_err(|e| invalid(format!("output {output}: {e}")))?;
    if !meta.is_dir() || meta.permissions().readonly() {
        return Err(invalid(format!(
            "output {output}: {} is not a writable directory",
            existing.display()
        )));
    }
    Ok(
        json!({ "location": output, "checked": true, "exists": path.exists(), "nearest_existing": existing }),
    )
}

/// The plan of a job, as JSON.
pub fn dry_run(config: &JobConfig) -> Result<Value, JobError> {
    check(config, &config.sections)?;
    let plan = plan(config)?;
    let kind = config.job.kind;
    let shape = dry_run_shape(kind);
    let mut models = Vec::new();
    if shape.uses_policy || config.reward.model == "policy" {
        models.push(describe_model(&config.policy.model)?);
    }
    if shape.uses_reward && config.reward.model != "policy" {
        models.push(describe_model(&config.reward.model)?);
    }
    let input = match shape.records {
        Some(records) => {
            let source = if records == RecordShape::Prompt {
                let files = steerflow_pipeline::input::list_input(
                    &config.input.path,
                    config.input.format.as_str(),
                )?;
                steerflow_pipeline::input::read_share_alone(&files, 0, 1, records)?
            } else {
                read_prompts(&config.input.path, plan.input_format, records)?
            };
            enforce_limit(plan.max_rejects, &source.rejects, source.records)?;
            let chars: usize = source
                .prompts
                .iter()
                .flat_map(|p| p.messages.iter())
                .map(|m| m.content.chars().count())
                .sum();
            json!({
                "path": redact_url(&config.input.path),
                "records": source.records,
                "prompt_ids": source.prompts.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
                "usable": source.prompts.len(),
                "rejected": source.rejects.len(),
                "first_rejects": source.rejects.iter().take(5).map(|r| r.to_string()).collect::<Vec<_>>(),
                "characters": chars,
            })
        }
        None => {
            let bytes = steerflow_pipeline::storage::read_file(&config.input.path)?;
            json!({ "path": redact_url(&config.input.path), "bytes": bytes.len(), "note": "records are checked when the job reads them" })
        }
    };
    let mut input = input;
    let ids: Vec<String> = input
        .as_object_mut()
        .and_then(|o| o.remove("prompt_ids"))
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let mut output = output_writable(&config.output.path)?;
    let mut estimate = json!({});
    if shape.samples {
        // What earlier runs in the output already settled (read only; also checks access).
        let committed = committed_prompts(&config.output.path)?;
        let new = ids.iter().filter(|id| !committed.1.contains(*id)).count() as u64;
        output["committed_runs"] = json!(committed.0);
        output["prompts_already_committed"] = json!(ids.len() as u64 - new);
        let prompts = new;
        let n = u64::from(config.sampling.samples_per_prompt);
        estimate = json!({
            "prompts": prompts,
            "samples": prompts * n,
            "max_tokens_decoded": prompts * n * config.sampling.max_new_tokens as u64,
            // About four characters per token for English text; prompts are prefilled once each.
            "approx_prompt_tokens_prefilled": input["characters"].as_u64().unwrap_or(0) / 4,
        });
    }
    Ok(json!({
        "job": kind,
        "dry_run": true,
        "models": models,
        "input": input,
        "output": output,
        "estimate": estimate,
        "cache_dir": cache_dir(),
    }))
}
