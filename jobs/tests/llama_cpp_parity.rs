//! Greedy decoding through steerflow's GGUF forward gives llama.cpp's own tokens on the same
//! files: the tiny `qwen2`, `qwen3` and `gemma2` GGUF fixtures (f32, Q8_0, Q4_0, Q4_1, Q5_0 and
//! Q5_1, written from the tiny checkpoints by `scripts/fixtures/hf_to_gguf.py`; Q4_K_M and
//! Q5_K_M files of a tiny `qwen2` with 256-wide rows, quantized by llama.cpp's `llama-quantize`
//! through `scripts/fixtures/kquant_gguf.py`), run by llama.cpp's `llama-server` (built by
//! `scripts/test`) with greedy sampling, no prompt cache, an f32 KV cache and no flash
//! attention; and the log-probabilities after each prompt agree. And the tokens of a
//! SentencePiece GGUF (Gemma 2's real vocabulary) equal llama.cpp's and transformers'.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::Value;
use steerflow_models::gguf::GgufModel;
use steerflow_models::qlinear::CpuMatmul;
use steerflow_models::LanguageModel;
use support::llama::{http, llama_server_with};
use support::workspace;

const STEPS: usize = 8;

/// llama.cpp's greedy continuation of `prompt`: `STEPS` tokens, or fewer ending with an
/// end-of-sequence token. `ignore_eos` is not used: it bans end tokens, which
/// would change the argmax wherever one is the likeliest.
fn llama_cpp_greedy(port: u16, prompt: &[u32]) -> Vec<u32> {
    let body = serde_json::json!({
        "prompt": prompt, "n_predict": STEPS, "temperature": 0.0, "cache_prompt": false,
        "return_tokens": true, "top_k": 1,
    });
    let (status, reply) = http("POST", port, "/completion", &body.to_string());
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    reply["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {reply}"))
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// llama.cpp's log-probabilities of every token after `prompt` (`n_probs` = the vocabulary);
/// `None` when the server holds its first token back (an incomplete UTF-8 sequence, for which
/// it reports no probabilities).
fn llama_cpp_logprobs(port: u16, prompt: &[u32], vocab: usize) -> Option<Vec<f64>> {
    let body = serde_json::json!({
        "prompt": prompt, "n_predict": 1, "temperature": 0.0, "cache_prompt": false,
        "top_k": 1, "n_probs": vocab,
    });
    let (status, reply) = http("POST", port, "/completion", &body.to_string());
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    let mut out = vec![f64::NEG_INFINITY; vocab];
    for c in reply["completion_probabilities"][0]["top_logprobs"].as_array()? {
        out[c["id"].as_u64().unwrap() as usize] = c["logprob"].as_f64().unwrap();
    }
    Some(out)
}

/// The largest difference between steerflow's log-probabilities after `prompt` and `theirs`.
fn logprob_difference(model: &GgufModel, prompt: &[u32], theirs: &[f64]) -> f64 {
    let logits: Vec<f32> = model.start().extend(prompt).unwrap().to_vec1().unwrap();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_total = logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln();
    logits
        .iter()
        .zip(theirs)
        .map(|(&l, t)| (l as f64 - max - log_total - t).abs())
        .fold(0.0, f64::max)
}

/// steerflow's greedy continuation, and the gap between the two largest logits at each step.
fn steerflow_greedy(model: &GgufModel, prompt: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let mut session = model.start();
    let mut logits: Vec<f32> = session.extend(prompt).unwrap().to_vec1().unwrap();
    let (mut tokens, mut gaps) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        gaps.push(logits[order[0]] - logits[order[1]]);
        tokens.push(order[0] as u32);
        logits = session
            .extend(&[order[0] as u32])
            .unwrap()
            .to_vec1()
            .unwrap();
    }
    (tokens, gaps)
}

#[test]
fn greedy_tokens_match_llama_cpp_on_the_qwen_and_gemma2_gguf_fixtures() {
    let fixtures = workspace().join("tests/fixtures");
    // f32 files: both sides compute in f32 (llama.cpp's KV cache set to f32 and its flash
    // attention, which rounds to f16 on the CPU, off), so only the order of sums differs.
    // Q8_0 files through either CPU kernel: the same weights and the same activation
    // quantisation as llama.cpp (8 bits per block of 32, the block scales rounded to f16; with
    // f32 scales steerflow's int8 kernel was up to 0.05 away on these models). Q4_0 and Q4_1
    // files on the int8 kernel's 4-bit weights (kernels/src/qgemm/q4.rs), which computes as
    // llama.cpp does (Q4_1's `d_a·Σa` rounded to f16; unrounded, 5e-2 to 7e-2 away); Q4_0 on
    // candle's kernel too (candle requantizes Q4_1 to Q8_0, other weights). Q5_0 and Q5_1
    // widened to a byte (kernels/src/qgemm/wide.rs). The K-quant files (Q4_K with Q6_K; Q5_K
    // with Q6_K) with the activations quantized per 256 as llama.cpp's `block_q8_K`, on both
    // kernels (quantized per 32 instead, Q4_K_M's log-probabilities were 0.15 away). Gemma 2's
    // f32 file has twice the bound: since short chunks attend one query at a time (FMAs in
    // position order, kernels/src/attention), one prompt's log-probabilities are 6.2e-5 from
    // llama.cpp's (the others 1e-6, as its Q8_0 and 4-bit files'); its GELU rounds the input to
    // f16, as llama.cpp's does, where a last-bit change of a sum can move an activation by
    // 2⁻¹¹. A step whose top two logits are closer than `tie` may go either way, and the
    // comparison of that input stops there; `tie` is twice the largest log-probability difference
    // allowed, and checked, after each prompt.
    for (case, file, kernel, tie) in [
        ("qwen2-f32", "qwen2-f32.gguf", CpuMatmul::Int8, 1e-4f32),
        ("qwen3-f32", "qwen3-f32.gguf", CpuMatmul::Int8, 1e-4),
        ("qwen2-f32", "qwen2-q8_0.gguf", CpuMatmul::Candle, 1e-4),
        ("qwen3-f32", "qwen3-q8_0.gguf", CpuMatmul::Candle, 1e-4),
        ("qwen2-f32", "qwen2-q8_0.gguf", CpuMatmul::Int8, 1e-4),
        ("qwen3-f32", "qwen3-q8_0.gguf", CpuMatmul::Int8, 1e-4),
        ("gemma2-gguf-f32", "gemma2-f32.gguf", CpuMatmul::Int8, 2e-4),
        (
            "gemma2-gguf-f32",
            "gemma2-q8_0.gguf",
            CpuMatmul::Candle,
            1e-4,
        ),
        ("gemma2-gguf-f32", "gemma2-q8_0.gguf", CpuMatmul::Int8, 1e-4),
        ("qwen2-f32", "qwen2-q4_0.gguf", CpuMatmul::Candle, 1e-4),
        ("qwen2-f32", "qwen2-q4_0.gguf", CpuMatmul::Int8, 1e-4),
        ("qwen3-f32", "qwen3-q4_1.gguf", CpuMatmul::Int8, 1e-4),
        ("gemma2-gguf-f32", "gemma2-q4_1.gguf", CpuMatmul::Int8, 1e-4),
        ("qwen2-f32", "qwen2-q5_0.gguf", CpuMatmul::Int8, 1e-4),
        ("gemma2-gguf-f32", "gemma2-q5_1.gguf", CpuMatmul::Int8, 1e-4),
        ("qwen2-f32", "qwen2k-q4_k_m.gguf", CpuMatmul::Int8, 1e-4),
        ("qwen2-f32", "qwen2k-q4_k_m.gguf", CpuMatmul::Candle, 1e-4),
        ("qwen2-f32", "qwen2k-q5_k_m.gguf", CpuMatmul::Int8, 1e-4),
    ] {
        let path = fixtures.join("gguf").join(file);
        let golden: Value = serde_json::from_slice(
            &std::fs::read(fixtures.join("hf").join(case).join("golden.json")).unwrap(),
        )
        .unwrap();
        let server = llama_server_with(
            &path,
            1,
            &[
                "--cache-type-k",
                "f32",
                "--cache-type-v",
                "f32",
                "--flash-attn",
                "off",
            ],
        );
        let model = GgufModel::load_with(&path, &candle_core::Device::Cpu, kernel).unwrap();
        let (mut compared, mut checked) = (0, 0);
        for input in golden["inputs"].as_array().unwrap() {
            let prompt: Vec<u32> = input
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            let vocab = model.start().extend(&prompt).unwrap().dims1().unwrap();
            if let Some(logprobs) = llama_cpp_logprobs(server.port, &prompt, vocab) {
                let d = logprob_difference(&model, &prompt, &logprobs);
                eprintln!("{file} ({kernel:?}): log-probabilities within {d:.2e} of llama.cpp's");
                assert!(
                    d < f64::from(tie) / 2.0,
                    "{file} ({kernel:?}): log-probabilities differ by {d}"
                );
                checked += 1;
            }
            let theirs = llama_cpp_greedy(server.port, &prompt);
            let (ours, gaps) = steerflow_greedy(&model, &prompt);
            for step in 0..STEPS {
                if step == theirs.len() {
                    // llama.cpp stops after an end-of-sequence token (which it returns).
                    let last = theirs.last().copied().unwrap_or_default();
                    assert!(
                        model.text().is_eos(last),
                        "{file} ({kernel:?}): llama.cpp stopped after {last}"
                    );
                    break;
                }
                if gaps[step] < tie {
                    eprintln!(
                        "{file} ({kernel:?}): a near tie at step {step} ({}); compared up to it",
                        gaps[step]
                    );
                    break;
                }
                assert_eq!(
                    ours[step], theirs[step],
                    "{file} ({kernel:?}): step {step}: ours {ours:?}, llama.cpp {theirs:?}"
                );
                compared += 1;
            }
        }
        eprintln!("{file} ({kernel:?}): {compared} greedy tokens equal to llama.cpp's");
        assert!(
            compared >= STEPS,
            "{file} ({kernel:?}): too few steps compared ({compared})"
        );
        assert!(
            checked > 0,
            "{file} ({kernel:?}): no log-probabilities compared"
        );
    }
}

/// Texts for the tokenizer comparison: real prompts and answers (AlpacaEval's instructions and
/// GPT-4 outputs, Arena-Hard's questions: code, maths, many languages; fetched by
/// `scripts/fetch-dedup-corpus`) and the edges of SentencePiece's space handling, byte
/// fallback and special tokens written in the text.
fn tokenizer_corpus() -> Vec<String> {
    let data = workspace().join("target/test-data/eval-framework");
    let alpaca: Value = serde_json::from_slice(
        &std::fs::read(data.join("alpaca_eval/data/alpaca_eval_gpt4_baseline.json")).unwrap(),
    )
    .unwrap();
    let mut texts: Vec<String> = alpaca
        .as_array()
        .unwrap()
        .iter()
        .take(200)
        .flat_map(|r| [&r["instruction"], &r["output"]])
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let arena =
        std::fs::read_to_string(data.join("arena_hard/data/arena-hard-v2.0/question.jsonl"))
            .unwrap();
    texts.extend(arena.lines().map(|line| {
        let v: Value = serde_json::from_str(line).unwrap();
        v["prompt"].as_str().unwrap().to_string()
    }));
    for edge in [
        " leading space",
        "two  spaces,   three, and a trailing one ",
        "tabs\tand\nnew\n\nlines\r\n",
        "",
        " ",
        "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
        "<bos>text after a special token",
        "html <table><tr><td>cell</td></tr></table>",
        "emoji 🦙🔥 and a rare CJK character 𠮷, Ǆ, \u{1F9D1}\u{200D}\u{1F52C}",
        "numbers 1234567890 3.14159 1e-9",
        "ünïcödé naïve café Ελληνικά русский العربية हिन्दी 日本語",
        "\u{0}\u{1}\u{7f} control bytes",
    ] {
        texts.push(edge.to_string());
    }
    texts
}

/// llama.cpp's tokens of `text`, special tokens in the text parsed as tokens, nothing added.
fn llama_cpp_tokens(port: u16, text: &str) -> Vec<u32> {
    let body = serde_json::json!({"content": text, "add_special": false, "parse_special": true});
    let (status, reply) = http("POST", port, "/tokenize", &body.to_string());
    assert_eq!(status, 200, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    reply["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// A GGUF with Gemma 2's real SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`, 256,000
/// tokens with scores, written by `scripts/fixtures/spm_gguf.py` from the tokenizer.json that
/// transformers' fast tokenizer reads): steerflow's tokens equal llama.cpp's on every text of
/// the corpus, and transformers' (the `tokenizers` crate reading that tokenizer.json, which
/// is what `AutoTokenizer` runs); decoding gives the text back. Then the same vocabulary with
/// `add_space_prefix` on (Llama 2's SentencePiece setting, llama.cpp's default): a space put
/// before the text and after each control or user-defined token, against llama.cpp alone
/// (Gemma's tokenizer.json has no such prefix; and the text no longer decodes to itself, since
/// Gemma's vocabulary has user-defined tokens, such as two newlines, for the prefix to follow).
#[test]
fn sentencepiece_gguf_tokens_match_llama_cpp_and_transformers() {
    let json = workspace().join("target/test-tokenizers/tokenizer-gemma2/tokenizer.json");
    let hf = tokenizers::Tokenizer::from_file(&json).unwrap();
    let texts = tokenizer_corpus();
    for space_prefix in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gemma2-spm.gguf");
        let mut script = std::process::Command::new(support::python());
        script
            .arg(workspace().join("scripts/fixtures/spm_gguf.py"))
            .arg(&json)
            .arg(workspace().join("tests/fixtures/templates/gemma2.json"))
            .arg(&path);
        if space_prefix {
            script.arg("--space-prefix");
        }
        support::succeed(&mut script);
        let server = llama_server_with(&path, 1, &[]);
        let model = GgufModel::load(&path, &candle_core::Device::Cpu).unwrap();
        let mut tokens = 0;
        for text in &texts {
            let ours = model.text().encode(text).unwrap();
            let theirs = llama_cpp_tokens(server.port, text);
            assert_eq!(
                ours, theirs,
                "add_space_prefix {space_prefix}: llama.cpp tokenizes {text:?} otherwise"
            );
            if !space_prefix {
                let hf_ids = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
                assert_eq!(ours, hf_ids, "transformers tokenizes {text:?} otherwise");
                if !text.contains('<') {
                    let decoded = model.text().decode(&ours).unwrap();
                    assert_eq!(&decoded, text, "decoding {ours:?}");
                }
            }
            tokens += ours.len();
        }
        eprintln!(
            "add_space_prefix {space_prefix}: {} texts, {tokens} tokens equal to llama.cpp's",
            texts.len()
        );
    }
}
