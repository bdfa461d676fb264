//! A `tokenizers::Tokenizer` built from the vocabulary stored in a GGUF file.
//!
//! GGUF files of BPE models (`tokenizer.ggml.model = "gpt2"`) carry the tokens, merges, token
//! types and a pre-tokenizer name (`tokenizer.ggml.pre`). The pre-tokenizers follow llama.cpp's
//! table (`llama-vocab.cpp`) and the `tokenizer.json` files the models were converted from:
//! `smollm` is the GPT-2 byte-level split after splitting every digit on its own (SmolLM2's
//! `Sequence[Digits(individual), ByteLevel]`).

use crate::chat_template::ChatTemplate;
use crate::text::TextCodec;
use crate::ModelError;
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined added tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Llama 3's split regex (also `llama-bpe` in llama.cpp).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex: as Llama 3 but one digit at a time.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn string_list(content: &Content, key: &str) -> Result<Vec<String>, String> {
    let value = content
        .metadata
        .get(key)
        .ok_or_else(|| format!("missing metadata `{key}`"))?;
    let items = value.to_vec().map_err(|e| format!("`{key}`: {e}"))?;
    items
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| format!("`{key}`: {e}")))
        .collect()
}

fn int_list(content: &Content, key: &str) -> Result<Vec<i32>, String> {
    let value = content
        .metadata
        .get(key)
        .ok_or_else(|| format!("missing metadata `{key}`"))?;
    let items = value.to_vec().map_err(|e| format!("`{key}`: {e}"))?;
    items
        .iter()
        .map(|v| v.to_i32().map_err(|e| format!("`{key}`: {e}")))
        .collect()
}

fn metadata_str<'a>(content: &'a Content, key: &str) -> Option<&'a str> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

/// Token id stored under `key` (for example `tokenizer.ggml.eos_token_id`).
pub fn metadata_token_id(content: &Content, key: &str) -> Option<u32> {
    content
        .metadata
        .get(key)
        .and_then(|v: &Value| v.to_u32().ok())
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, String> {
    let byte_level_no_regex = || ByteLevel::new(false, true, false).into();
    let split = |pattern: &str| -> Result<PreTokenizerWrapper, String> {
        Ok(Split::new(
            SplitPattern::Regex(pattern.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| e.to_string())?
        .into())
    };
    Ok(match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into(),
        "gpt2" | "default" => ByteLevel::new(false, true, true).into(),
        "llama-bpe" | "llama3" => Sequence::new(vec![split(LLAMA3_PATTERN)?, byte_level_no_regex()]).into(),
        "qwen2" => Sequence::new(vec![split(QWEN2_PATTERN)?, byte_level_no_regex()]).into(),
        other => {
            return Err(format!(
                "pre-tokenizer `{other}` is not supported from GGUF metadata; give the model's tokenizer.json instead"
            ))
        }
    })
}

/// Builds the tokenizer of a GGUF BPE model.
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, String> {
    let model = metadata_str(content, "tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model `{model}` is not supported from GGUF metadata (only byte-level BPE, `gpt2`); \
             give the model's tokenizer.json instead"
        ));
    }
    let tokens = string_list(content, "tokenizer.ggml.tokens")?;
    let types = int_list(content, "tokenizer.ggml.token_type")?;
    let merges = string_list(content, "tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("bad merge `{m}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = metadata_str(content, "tokenizer.ggml.pre").unwrap_or("default");
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, &t)| AddedToken::from(tok.clone(), t == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

/// Maps a tokenizer error to the model error that names the file.
pub fn tokenizer_error(path: &std::path::Path, message: String) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        message: format!("tokenizer: {message}"),
    }
}

/// Tokens that end a turn in the chat formats of the supported families; each one the vocabulary
/// has also ends generation.
const END_OF_TURN_TOKENS: [&str; 4] = ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"];

/// The text side of a GGUF model of architecture `arch` (tokenizer, chat template,
/// end-of-sequence ids) and its context length (at most `max_len`), from the metadata alone.
pub fn text_codec_from_gguf(
    content: &Content,
    path: &std::path::Path,
    arch: &str,
    max_len: usize,
) -> Result<(TextCodec, usize), ModelError> {
    let context_length = content
        .metadata
        .get(&format!("{arch}.context_length"))
        .and_then(|v| v.to_u32().ok())
        .map(|n| n as usize)
        .unwrap_or(max_len)
        .min(max_len);
    let tokenizer = tokenizer_from_gguf(content).map_err(|m| tokenizer_error(path, m))?;
    let token_text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.id_to_token(id))
            .unwrap_or_default()
    };
    let bos = token_text(metadata_token_id(content, "tokenizer.ggml.bos_token_id"));
    let eos_id = metadata_token_id(content, "tokenizer.ggml.eos_token_id");
    let eos = token_text(eos_id);
    let template_source = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| ModelError::Gguf {
            path: path.to_path_buf(),
            message: "no chat template (`tokenizer.chat_template`) in the metadata".into(),
        })?;
    let template = ChatTemplate::new(&template_source, &bos, &eos)?;
    let mut eos_ids: Vec<u32> = eos_id.into_iter().collect();
    for token in END_OF_TURN_TOKENS {
        if let Some(id) = tokenizer.token_to_id(token) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
    }
    Ok((TextCodec::new(tokenizer, template, eos_ids), context_length))
}

/// The text side of the GGUF file at `path` and its context length, read from the metadata
/// without loading a weight (a served model's local tokenizer and template).
pub fn text_codec_of_gguf_file(path: &std::path::Path) -> Result<(TextCodec, usize), ModelError> {
    let mut file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = Content::read(&mut file).map_err(|e| ModelError::Gguf {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let arch = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    text_codec_from_gguf(&content, path, &arch, usize::MAX)
}
