//! A `tokenizers::Tokenizer` built from the vocabulary stored in a GGUF file.
//!
//! GGUF files of BPE models (`tokenizer.ggml.model = "gpt2"`) carry the tokens, merges, token
//! types and a pre-tokenizer name (`tokenizer.ggml.pre`). The pre-tokenizers follow llama.cpp's
//! table (`llama-vocab.cpp`) and the `tokenizer.json` files the models were converted from:
//! `smollm` is the GPT-2 byte-level split after splitting every digit on its own (SmolLM2's
//! `Sequence[Digits(individual), ByteLevel]`).
//!
//! GGUF files of SentencePiece models (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2,
//! Mistral v0.1) carry tokens with scores instead of merges. llama.cpp's SPM tokenizer
//! (`llm_tokenizer_spm_session`) starts from the text's characters, spaces written `▁` (and one
//! put before the text and after each special token with `add_space_prefix`, its default), and
//! repeatedly joins the adjacent pair whose concatenation is the token of highest score;
//! characters left without a token become their bytes' `<0xXX>` tokens. That is a BPE whose
//! merges are every split of every token into two tokens, ranked by the joined token's score,
//! with byte fallback: transformers builds its Llama and Gemma fast tokenizers the same way.

use crate::chat_template::ChatTemplate;
use crate::text::TextCodec;
use crate::ModelError;
use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::{Prepend, Replace};
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

/// The array under `key`, each item read by `item`.
fn list<T>(
    content: &Content,
    key: &str,
    item: impl Fn(&Value) -> candle_core::Result<T>,
) -> Result<Vec<T>, String> {
    let value = content
        .metadata
        .get(key)
        .ok_or_else(|| format!("missing metadata `{key}`"))?;
    let items = value.to_vec().map_err(|e| format!("`{key}`: {e}"))?;
    items
        .iter()
        .map(|v| item(v).map_err(|e| format!("`{key}`: {e}")))
        .collect()
}

fn string_list(content: &Content, key: &str) -> Result<Vec<String>, String> {
    list(content, key, |v| v.to_string().cloned())
}

fn float_list(content: &Content, key: &str) -> Result<Vec<f32>, String> {
    list(content, key, Value::to_f32)
}

fn int_list(content: &Content, key: &str) -> Result<Vec<i32>, String> {
    list(content, key, Value::to_i32)
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

/// Builds the tokenizer of a GGUF BPE (`gpt2`) or SentencePiece (`llama`) model.
pub fn tokenizer_from_gguf(content: &Content) -> Result<Tokenizer, String> {
    let model = metadata_str(content, "tokenizer.ggml.model").unwrap_or("");
    let tokens = string_list(content, "tokenizer.ggml.tokens")?;
    let types = int_list(content, "tokenizer.ggml.token_type")?;
    if types.len() != tokens.len() {
        return Err(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        ));
    }
    let mut tokenizer = match model {
        "gpt2" => byte_level_bpe(content, &tokens)?,
        "llama" => sentencepiece(content, &tokens)?,
        other => {
            return Err(format!(
                "tokenizer model `{other}` is not supported from GGUF metadata (byte-level BPE \
                 `gpt2`, SentencePiece `llama`); give the model's tokenizer.json instead"
            ))
        }
    };
    // llama.cpp cuts the raw text at control and user-defined tokens before anything else, and
    // SentencePiece's space prefix then starts every piece after one: so for `llama` vocabularies
    // user-defined tokens are matched before normalisation too (`normalized(false)`).
    let raw_match = model == "llama";
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, &t)| {
            let token = AddedToken::from(tok.clone(), t == TOKEN_TYPE_CONTROL);
            match raw_match {
                true => token.normalized(false),
                false => token,
            }
        })
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| e.to_string())?;
    Ok(tokenizer)
}

fn vocab_of(tokens: &[String]) -> tokenizers::models::bpe::Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

fn byte_level_bpe(content: &Content, tokens: &[String]) -> Result<Tokenizer, String> {
    let merges = string_list(content, "tokenizer.ggml.merges")?;
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("bad merge `{m}`"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), merges)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = metadata_str(content, "tokenizer.ggml.pre").unwrap_or("default");
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

/// Every split of every token into two tokens, ranked by the joined token's score (highest
/// first; equal scores by the joined token's id, then the split's left token's id).
fn merges_by_score(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (joined, token) in tokens.iter().enumerate() {
        for (cut, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(cut);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                ranked.push((scores[joined], joined, l, r));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, _, l, r)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

fn sentencepiece(content: &Content, tokens: &[String]) -> Result<Tokenizer, String> {
    let scores = float_list(content, "tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        ));
    }
    let flag = |key: &str, default: bool| {
        content.metadata.get(key).map_or(Ok(default), |v| {
            v.to_bool().map_err(|e| format!("`{key}`: {e}"))
        })
    };
    if flag("tokenizer.ggml.remove_extra_whitespaces", false)? {
        return Err("SentencePiece with remove_extra_whitespaces is not supported".into());
    }
    let space_prefix = flag("tokenizer.ggml.add_space_prefix", true)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(tokens), merges_by_score(tokens, &scores))
        .byte_fallback(true)
        .build()
        .map_err(|e| e.to_string())?;
    let mut tokenizer = Tokenizer::new(bpe);
    let escape: NormalizerWrapper = Replace::new(" ", "\u{2581}")
        .map_err(|e| e.to_string())?
        .into();
    let normalizer: NormalizerWrapper = match space_prefix {
        true => tokenizers::normalizers::Sequence::new(vec![
            Prepend::new("\u{2581}".into()).into(),
            escape,
        ])
        .into(),
        false => escape,
    };
    tokenizer
        .with_normalizer(Some(normalizer))
        .map_err(|e| e.to_string())?;
    let unescape = Replace::new("\u{2581}", " ").map_err(|e| e.to_string())?;
    let mut decoders = vec![
        unescape.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
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
