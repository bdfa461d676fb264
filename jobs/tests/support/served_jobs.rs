//! The iterative-DPO job of the served tests: six demo prompts, policy and judge on a server.

use super::workspace;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The first six demo prompts, in `dir`.
pub fn prompts(dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(workspace().join("configs/data/demo-prompts.jsonl")).unwrap();
    let path = dir.join("prompts.jsonl");
    let lines: String = text.lines().take(6).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// An iterative-DPO job on six demo prompts whose policy and judge are the server at `port`.
pub fn served_job(dir: &Path, port: u16, output: &Path, retries: u32) -> PathBuf {
    let prompts = prompts(dir);
    let served = format!(
        "url = \"http://127.0.0.1:{port}/v1\"\nserver = \"llama-cpp\"\nmax_in_flight = 4\nmax_retries = {retries}\ntimeout_seconds = 60\n"
    );
    let job = format!(
        r#"[job]
kind = "iterative-dpo"
seed = 7
workers = 1

[input]
path = "{prompts}"

[policy]
model = "default"

[policy.served]
{served}
[sampling]
samples_per_prompt = 2
temperature = 0.8
top_p = 0.95
max_new_tokens = 16

[reward]
kind = "judge"
model = "default"

[reward.served]
{served}
[output]
path = "{output}"
shards = 4
"#,
        prompts = prompts.display(),
        output = output.display(),
    );
    let path = dir.join("served.toml");
    std::fs::write(&path, job).unwrap();
    path
}

pub fn demo_prompt_ids() -> Vec<String> {
    let text =
        std::fs::read_to_string(workspace().join("configs/data/demo-prompts.jsonl")).unwrap();
    let mut ids: Vec<String> = text
        .lines()
        .take(6)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}
