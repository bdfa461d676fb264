//! The `steerflow` command's contract: clear errors and distinct exit codes.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn steerflow(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("job.toml");
    std::fs::write(&config, "[sampling]\ntemprature = 0.5\n").unwrap();
    let (code, stderr) = steerflow(&["run", config.to_str().unwrap()]);
    assert_eq!(code, steerflow::exit_code::CONFIG, "{stderr}");
    assert!(stderr.contains("temprature"), "{stderr}");
    let (code, stderr) = steerflow(&["run", config.to_str().unwrap(), "--set", "sampling.nope=1"]);
    assert_eq!(code, steerflow::exit_code::CONFIG, "{stderr}");
}

#[test]
fn too_many_rejects_stop_the_run_with_their_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"fine\"}\nnot json\n").unwrap();
    let config = dir.path().join("job.toml");
    let out = dir.path().join("out");
    std::fs::write(
        &config,
        format!(
            "[input]\npath = \"{}\"\nmax_rejects = 0\n[output]\npath = \"{}\"\n",
            input.display(),
            out.display()
        ),
    )
    .unwrap();
    let (code, stderr) = steerflow(&["run", config.to_str().unwrap()]);
    assert_eq!(code, steerflow::exit_code::TOO_MANY_REJECTS, "{stderr}");
    assert!(
        stderr.contains("in.jsonl:2") && stderr.contains("invalid JSON"),
        "{stderr}"
    );
    // Nothing that looks like a finished dataset was written.
    assert!(!out.join("README.md").exists());
}

#[test]
fn a_missing_input_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("job.toml");
    std::fs::write(
        &config,
        "[input]\npath = \"/nonexistent/prompts.jsonl\"\n[output]\npath = \"/tmp/x\"\n",
    )
    .unwrap();
    let (code, stderr) = steerflow(&["run", config.to_str().unwrap()]);
    assert_eq!(code, steerflow::exit_code::FAILURE, "{stderr}");
    assert!(stderr.contains("/nonexistent/prompts.jsonl"), "{stderr}");
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"one\"}\n{\"prompt\": \"two\"}\nbroken\n",
    )
    .unwrap();
    let config = dir.path().join("job.toml");
    let out = dir.path().join("out/nested");
    std::fs::write(
        &config,
        format!(
            "[input]\npath = \"{}\"\nmax_rejects = 1\n[sampling]\nsamples_per_prompt = 3\nmax_new_tokens = 10\n[output]\npath = \"{}\"\n",
            input.display(),
            out.display()
        ),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_steerflow"))
        .args(["run", "--dry-run"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(plan["input"]["usable"], 2);
    assert_eq!(plan["input"]["rejected"], 1);
    assert_eq!(plan["estimate"]["samples"], 6);
    assert_eq!(plan["estimate"]["max_tokens_decoded"], 60);
    assert_eq!(plan["output"]["checked"], true);
    assert!(
        !dir.path().join("out").exists(),
        "a dry run wrote the output directory"
    );
    // Over max_rejects: the same exit code as a real run.
    let (code, stderr) = steerflow(&[
        "run",
        "--dry-run",
        config.to_str().unwrap(),
        "--set",
        "input.max_rejects=0",
    ]);
    assert_eq!(code, steerflow::exit_code::TOO_MANY_REJECTS, "{stderr}");
}
