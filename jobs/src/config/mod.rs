//! Job configuration: TOML with every key known (unknown keys are errors), defaults that are the
//! HelpSteer2 iterative-DPO recipe, and `--set key=value` overrides applied before validation.
//! Layers, lowest first: embedded defaults, the file, `STEERFLOW_SECTION__KEY` variables,
//! `--set` and `--workers`. Documented in `docs/configuration.md`.
//!
//! [`sections`] holds the sections every kind shares; each kind's own section (`[filter]`,
//! `[eval]`, `[annotate]`) lives in its file under `kinds/` and is gathered in
//! [`KindSections`].

pub mod dedup;
pub mod sections;
pub mod served;

pub use crate::error::ConfigError;
use crate::kinds::KindSections;
use sections::Common;
use std::path::Path;

/// A whole job file: the shared sections (reachable directly, `config.input.path`) and the
/// kinds' own sections.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobConfig {
    pub common: Common,
    pub sections: KindSections,
}

impl std::ops::Deref for JobConfig {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.common
    }
}

impl std::ops::DerefMut for JobConfig {
    fn deref_mut(&mut self) -> &mut Common {
        &mut self.common
    }
}

/// Prefix of environment variables that set config keys: `STEERFLOW_SECTION__KEY=value`
/// (double underscore between section and key), e.g. `STEERFLOW_SAMPLING__MAX_NEW_TOKENS=64`.
pub const ENV_PREFIX: &str = "STEERFLOW_";

/// Config overrides (`section.key=value`) from environment variables, in name order. Variables
/// without a `__` (such as `STEERFLOW_CACHE_DIR`) are settings of the tool, not config keys.
pub fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut out: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            let (section, key) = rest.split_once("__")?;
            Some((
                format!("{}.{}", section.to_lowercase(), key.to_lowercase()),
                value,
            ))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Reads `path`, applies `overrides` (`section.key=value`, value in TOML syntax or a bare string)
/// and checks every key.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<JobConfig, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    parse_config(&text, &display, overrides)
}

/// As [`load_config`] on a string.
pub fn parse_config(
    text: &str,
    display: &str,
    overrides: &[String],
) -> Result<JobConfig, ConfigError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: display.into(),
            message: e.to_string(),
        })?;
    for item in overrides {
        apply_override(&mut table, item)?;
    }
    // The kinds' own sections are parsed apart from the shared ones (each with unknown keys
    // refused): serde cannot refuse unknown keys across a flattened struct.
    let mut own = toml::Table::new();
    for name in KindSections::NAMES {
        if let Some(section) = table.remove(*name) {
            own.insert(name.to_string(), section);
        }
    }
    let parse_error = |e: toml::de::Error| ConfigError::Parse {
        path: display.into(),
        message: e.to_string(),
    };
    let common: Common = toml::Value::Table(table).try_into().map_err(parse_error)?;
    let sections: KindSections = toml::Value::Table(own).try_into().map_err(parse_error)?;
    Ok(JobConfig { common, sections })
}

fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let fail = |message: &str| ConfigError::Override {
        item: item.into(),
        message: message.into(),
    };
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| fail("expected key=value"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(fail("empty key"));
    }
    // A TOML value if it parses as one (numbers, booleans, quoted strings, arrays), else a string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let (last, sections) = parts.split_last().ok_or_else(|| fail("empty key"))?;
    let mut current = table;
    for section in sections {
        current = current
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| fail(&format!("`{section}` is not a table")))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_paper_recipe() {
        let c = parse_config("", "t.toml", &[]).unwrap();
        assert_eq!(c.sampling.samples_per_prompt, 10);
        assert_eq!(c.sampling.temperature, 0.7);
        assert_eq!(c.sampling.top_p, 0.9);
        assert_eq!(c.goodness.preset, sections::GoodnessPreset::Helpsteer2Paper);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = parse_config("[sampling]\ntemprature = 0.5\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("temprature") && err.contains("t.toml"),
            "{err}"
        );
        let err = parse_config("", "t.toml", &["sampling.nope=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn environment_variables_become_overrides_and_flags_win() {
        let vars = [
            (
                "STEERFLOW_SAMPLING__MAX_NEW_TOKENS".to_string(),
                "64".to_string(),
            ),
            ("STEERFLOW_CACHE_DIR".to_string(), "/tmp/x".to_string()),
            ("STEERFLOW_OUTPUT__PATH".to_string(), "out/env".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let env = env_overrides(vars);
        assert_eq!(
            env,
            vec![
                "output.path=out/env".to_string(),
                "sampling.max_new_tokens=64".to_string()
            ]
        );
        // File < environment < flags.
        let mut overrides = env.clone();
        overrides.push("output.path=out/flag".into());
        let c = parse_config(
            "[sampling]\nmax_new_tokens = 8\n[output]\npath = \"out/file\"\n",
            "t.toml",
            &overrides,
        )
        .unwrap();
        assert_eq!(c.sampling.max_new_tokens, 64);
        assert_eq!(c.output.path, "out/flag");
        let bad = env_overrides([(
            "STEERFLOW_SAMPLING__TEMPRATURE".to_string(),
            "1".to_string(),
        )]);
        assert!(parse_config("", "t.toml", &bad)
            .unwrap_err()
            .to_string()
            .contains("temprature"));
    }

    #[test]
    fn overrides_replace_values_and_types_are_checked() {
        let c = parse_config(
            "[sampling]\ntemperature = 0.7\n",
            "t.toml",
            &[
                "sampling.temperature=0.2".into(),
                "output.path=out/x".into(),
                "sampling.stop=[\"\\n\\n\"]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.sampling.temperature, 0.2);
        assert_eq!(c.output.path, "out/x");
        assert_eq!(c.sampling.stop, vec!["\n\n".to_string()]);
        assert!(parse_config("", "t.toml", &["sampling.temperature=hot".into()]).is_err());
        assert!(parse_config("", "t.toml", &["novalue".into()]).is_err());
    }

    #[test]
    fn a_value_out_of_a_set_is_an_error_naming_the_file_the_key_and_the_choices() {
        let err = parse_config("[goodness]\nnormalization = \"bogus\"\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml") && err.contains("normalization") && err.contains("per-prompt"),
            "{err}"
        );
        let err = parse_config("[job]\ndevice = \"tpu\"\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("device") && err.contains("cuda:N"), "{err}");
        let err = parse_config("[job]\nkind = \"dpo\"\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("kind") && err.contains("iterative-dpo"),
            "{err}"
        );
        let err = parse_config("[filter]\ntop_kk = 1\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("top_kk") && err.contains("t.toml"), "{err}");
    }

    #[test]
    fn kind_sections_and_enums_are_typed() {
        let c = parse_config(
            "[job]\nkind = \"rm-eval\"\ndevice = \"cuda:1\"\n[eval]\ncategories = { a = \"Chat\" }\n[input]\nmax_rejects = 0.25\n",
            "t.toml",
            &["output.formats=[\"nemo\"]".into()],
        )
        .unwrap();
        assert_eq!(c.job.kind, crate::job_kind::JobKind::RmEval);
        assert_eq!(c.job.device, sections::Device::Cuda(1));
        assert_eq!(c.input.max_rejects, sections::MaxRejects::Fraction(0.25));
        assert_eq!(
            c.output.formats,
            vec![steerflow_pipeline::formats::ExportFormat::Nemo]
        );
        assert_eq!(
            c.sections.eval.categories.map(),
            [("a".to_string(), "Chat".to_string())].into()
        );
    }

    #[test]
    fn pair_rules_from_the_pairs_section() {
        use steerflow_operators::pairs::{PairRule, PairStrategy};
        let rule = |text: &str| {
            let c = parse_config(text, "t.toml", &[]).unwrap();
            crate::checks::pair_rule(&c.pairs).map_err(|e| e.to_string())
        };
        assert_eq!(rule(""), Ok(PairRule::best_vs_worst(0.0)));
        assert_eq!(
            rule("[pairs]\nstrategy = \"all-pairs\"\nk = 3\nmin_margin = 0.5\nlength_penalty = 0.01\nmax_length_difference = 40\n"),
            Ok(PairRule {
                strategy: PairStrategy::AllPairs { max_per_prompt: 3 },
                min_margin: 0.5,
                length_penalty: 0.01,
                max_length_difference: Some(40),
                max_similarity: None,
            })
        );
        assert_eq!(
            rule("[pairs]\nstrategy = \"best-vs-kth\"\nk = 2\n").map(|r| r.strategy),
            Ok(PairStrategy::BestVsKth { k: 2 })
        );
        let err = rule("[pairs]\nstrategy = \"best-vs-kth\"\n").unwrap_err();
        assert!(
            err.contains("pairs.k is required") && err.contains("best-vs-kth"),
            "{err}"
        );
        let err = rule("[pairs]\nstrategy = \"best-vs-kth\"\nk = 1\n").unwrap_err();
        assert!(err.contains("k >= 2"), "{err}");
        let err = rule("[pairs]\nstrategy = \"random-pair\"\nk = 4\n").unwrap_err();
        assert!(err.contains("only read by"), "{err}");
        let err = rule("[pairs]\nlength_penalty = -1.0\n").unwrap_err();
        assert!(err.contains("length_penalty"), "{err}");
        let err = parse_config("[pairs]\nstrategy = \"max-min\"\n", "t.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("strategy") && err.contains("best-vs-random"),
            "{err}"
        );
    }
}
