//! Chat templates rendered with minijinja so that the text is byte-identical to what
//! transformers' `apply_chat_template` produces.
//!
//! transformers renders with jinja2 using `trim_blocks` and `lstrip_blocks`, registers
//! `raise_exception` and `strftime_now`, and replaces `tojson` by `json.dumps(x,
//! ensure_ascii=False, indent=..., separators=..., sort_keys=...)`. Python's string methods
//! (`.strip()`, `.startswith()`...) come from minijinja-contrib's `pycompat`.

use crate::ModelError;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;
use steerflow_operators::records::Message;

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template and the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ModelError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME.to_string(), source.to_string())
            .map_err(|e| {
                ModelError::Template(format!("cannot compile the chat template: {e:#}"))
            })?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let messages =
            serde_json::to_value(messages).map_err(|e| ModelError::Template(e.to_string()))?;
        self.render_json(&messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// Renders messages given as JSON (so tool calls and non-string content pass through) with
    /// extra template variables, as `apply_chat_template(messages, tools=..., **kwargs)` does.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ModelError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let mut context = extra.clone();
        context.insert("messages".into(), messages.clone());
        context.insert("add_generation_prompt".into(), add_generation_prompt.into());
        context.insert("bos_token".into(), self.bos_token.clone().into());
        context.insert("eos_token".into(), self.eos_token.clone().into());
        template
            .render(Value::from(Serde(&context)))
            .map_err(|e| ModelError::Template(format!("{e:#}")))
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A copy with the same special tokens and another source.
    pub fn with_source(&self, source: &str) -> Result<Self, ModelError> {
        Self::new(source, &self.bos_token, &self.eos_token)
    }

    /// Makes `strftime_now` format this instant instead of the current time (for reproducible
    /// renders and tests).
    pub fn with_clock(mut self, now: chrono::NaiveDateTime) -> Self {
        self.env
            .add_function("strftime_now", move |format: String| {
                now.format(&format).to_string()
            });
        self
    }
}

/// NeMo's SteerLM prompt format (Llama2-70B-SteerLM-Chat card): every assistant turn opens with
/// `<extra_id_2>` and the target attributes given as the template variable `steer_label`.
pub const NEMO_STEERLM_TEMPLATE: &str = concat!(
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}",
    "{% else %}{% set system = 'A chat between a curious user and an artificial intelligence assistant. ",
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' %}{% endif %}",
    "<extra_id_0>System\n{{ system }}\n",
    "{% for m in messages %}{% if m['role'] == 'user' %}<extra_id_1>User\n{{ m['content'] }}\n",
    "{% elif m['role'] == 'assistant' %}<extra_id_1>Assistant\n<extra_id_2>{{ steer_label }}\n{{ m['content'] }}\n",
    "{% endif %}{% endfor %}",
    "{% if add_generation_prompt %}<extra_id_1>Assistant\n<extra_id_2>{{ steer_label }}\n{% endif %}",
);

/// NeMo's SteerLM reward-model input (REFERENCE.md, "Formats"): the conversation in the
/// `<extra_id_*>` format, ending with `<extra_id_2>` where the attribute model reads the response.
pub const NEMO_STEERLM_RM_TEMPLATE: &str = concat!(
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% else %}{% set system = '' %}{% endif %}",
    "<extra_id_0>System\n{{ system }}\n",
    "{% for m in messages %}{% if m['role'] == 'user' %}<extra_id_1>User\n{{ m['content'] }}\n",
    "{% elif m['role'] == 'assistant' %}<extra_id_1>Assistant\n{{ m['content'] }}\n{% endif %}{% endfor %}",
    "<extra_id_2>",
);

/// The template source a config names: `nemo-steerlm`, `nemo-steerlm-rm`, or a `.jinja` path.
pub fn named_template(name: &str) -> Result<String, ModelError> {
    match name {
        "nemo-steerlm" => Ok(NEMO_STEERLM_TEMPLATE.to_string()),
        "nemo-steerlm-rm" => Ok(NEMO_STEERLM_RM_TEMPLATE.to_string()),
        path => std::fs::read_to_string(path).map_err(|e| {
            ModelError::Template(format!("cannot read the chat template {path}: {e}"))
        }),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> String {
    chrono::Local::now().format(&format).to_string()
}

/// `tojson` as transformers defines it: `json.dumps` with `ensure_ascii=False`.
fn python_tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    if sort_keys.unwrap_or(false) {
        json = sorted(json);
    }
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_usize() {
            Some(n) => Some(" ".repeat(n)),
            None => Some(v.to_string()),
        },
    };
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, PythonJsonFormatter::new(indent));
    json.serialize(&mut ser)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = String::from_utf8(out)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(text))
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// serde_json formatter with Python's separators: `", "` and `": "` on one line, or `","` and
/// `": "` with newlines and `indent` when indenting.
struct PythonJsonFormatter {
    indent: Option<String>,
    depth: usize,
    has_value: bool,
}

impl PythonJsonFormatter {
    fn new(indent: Option<String>) -> Self {
        Self {
            indent,
            depth: 0,
            has_value: false,
        }
    }

    fn newline<W: ?Sized + std::io::Write>(&self, writer: &mut W) -> std::io::Result<()> {
        if let Some(indent) = &self.indent {
            writer.write_all(b"\n")?;
            for _ in 0..self.depth {
                writer.write_all(indent.as_bytes())?;
            }
        }
        Ok(())
    }

    fn begin_item<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if !first {
            writer.write_all(if self.indent.is_some() { b"," } else { b", " })?;
        }
        self.newline(writer)
    }

    fn end_container<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        close: &[u8],
    ) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(writer)?;
        }
        self.has_value = true;
        writer.write_all(close)
    }
}

impl serde_json::ser::Formatter for PythonJsonFormatter {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.end_container(writer, b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.begin_item(writer, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        _writer: &mut W,
    ) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        self.end_container(writer, b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.begin_item(writer, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        _writer: &mut W,
    ) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as stored in its GGUF metadata.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t.render(&[Message::new("user", "Hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_jinja2() {
        let src = "{% for m in messages %}\n    {% if m.role == 'user' %}\nU:{{ m.content | trim }}\n    {% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", " a ")], false).unwrap(),
            "U:a\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let err = t
            .render(&[Message::new("assistant", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first must be user"), "{err}");
    }

    #[test]
    fn tojson_formats_like_python_json_dumps() {
        let src = "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t
            .render(&[Message::new("user", "é <b> 'q' \"d\"\n")], false)
            .unwrap();
        // json.dumps([{"role": "user", "content": "é <b> 'q' \"d\"\n"}], ensure_ascii=False)
        let expected_compact = r#"[{"role": "user", "content": "é <b> 'q' \"d\"\n"}]"#;
        let expected_indented =
            "{\n  \"role\": \"user\",\n  \"content\": \"é <b> 'q' \\\"d\\\"\\n\"\n}";
        assert_eq!(out, format!("{expected_compact}|{expected_indented}"));
    }

    #[test]
    fn python_string_methods() {
        let src = "{{ messages[0].content.strip().upper() }}{% if messages[0].content.startswith(' h') %}!{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", " hi ")], false).unwrap(),
            "HI!"
        );
    }

    #[test]
    fn nemo_steerlm_format_as_on_the_card() {
        // The Llama2-70B-SteerLM-Chat card's single- and multi-turn templates.
        let t = ChatTemplate::new(NEMO_STEERLM_TEMPLATE, "", "").unwrap();
        let label = "quality:4,toxicity:0,humor:0,creativity:0,helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4";
        let extra = serde_json::Map::from_iter([(
            "steer_label".to_string(),
            serde_json::Value::from(label),
        )]);
        let system = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
        let single = serde_json::json!([{"role": "user", "content": "Write a poem on NVIDIA in the style of Shakespeare"}]);
        assert_eq!(
            t.render_json(&single, true, &extra).unwrap(),
            format!("<extra_id_0>System\n{system}\n<extra_id_1>User\nWrite a poem on NVIDIA in the style of Shakespeare\n<extra_id_1>Assistant\n<extra_id_2>{label}\n")
        );
        let multi = serde_json::json!([
            {"role": "user", "content": "P1"}, {"role": "assistant", "content": "R1"}, {"role": "user", "content": "P2"}
        ]);
        assert_eq!(
            t.render_json(&multi, true, &extra).unwrap(),
            format!(
                "<extra_id_0>System\n{system}\n<extra_id_1>User\nP1\n<extra_id_1>Assistant\n<extra_id_2>{label}\nR1\n\
                 <extra_id_1>User\nP2\n<extra_id_1>Assistant\n<extra_id_2>{label}\n"
            )
        );
    }

    #[test]
    fn nemo_steerlm_reward_model_input() {
        let t = ChatTemplate::new(NEMO_STEERLM_RM_TEMPLATE, "", "").unwrap();
        let messages = [
            Message::new("system", "S"),
            Message::new("user", "U"),
            Message::new("assistant", "A"),
        ];
        assert_eq!(
            t.render(&messages, false).unwrap(),
            "<extra_id_0>System\nS\n<extra_id_1>User\nU\n<extra_id_1>Assistant\nA\n<extra_id_2>"
        );
        assert!(named_template("/nonexistent.jinja").is_err());
    }
}
