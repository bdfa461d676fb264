//! The one reader of "prompt or messages": a record's optional id and its conversation, from
//! `prompt` (a string) or `messages` (a list of `{role, content}`), with `response` for the
//! response shape, checked for the shape the job needs. Prompts (jsonl), responses to score,
//! preference pairs and labelled responses all go through [`conversation`]; every fault is a
//! [`FieldError`] in the one reject vocabulary.

use crate::reject::RejectReason;
use serde_json::Value;
use steerflow_operators::records::Message;

/// What a record must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordShape {
    /// A prompt for the policy: the conversation ends with a user turn.
    Prompt,
    /// A response to score: `messages` ending with an assistant turn, or `prompt` + `response`.
    Response,
}

/// A record's fault: the field, why, and a sentence for people.
pub type FieldError = (Option<&'static str>, RejectReason, String);

/// The prompt of a record from a JSON value: an optional id, and the conversation from `prompt`
/// (a string) or `messages` (a list of `{role, content}`), with `response` appended for the
/// response shape; checked as [`RecordShape`] says. Every reader of prompts, responses,
/// preference pairs and labelled responses goes through it.
pub fn conversation(
    value: &Value,
    shape: RecordShape,
) -> Result<(Option<String>, Vec<Message>), FieldError> {
    let obj = value.as_object().ok_or((
        None,
        RejectReason::NotAnObject,
        "a record must be a JSON object".to_string(),
    ))?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(readable_id(v).ok_or((
            Some("id"),
            RejectReason::WrongType,
            format!("`id` must be a non-empty string or an integer, got {v}"),
        ))?),
    };
    let messages = match (obj.get("prompt"), obj.get("messages")) {
        (Some(_), Some(_)) => {
            return Err((
                Some("prompt"),
                RejectReason::Ambiguous,
                "a record has either `prompt` or `messages`, not both".into(),
            ))
        }
        (Some(Value::String(p)), None) => vec![Message::new("user", p.clone())],
        (Some(other), None) => {
            return Err((
                Some("prompt"),
                RejectReason::WrongType,
                format!("`prompt` must be a string, got {}", type_name(other)),
            ))
        }
        (None, Some(Value::Array(items))) => {
            let mut messages = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                let role = item.get("role").and_then(Value::as_str);
                let content = item.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(r), Some(c)) => messages.push(Message::new(r, c)),
                    _ => {
                        return Err((
                            Some("messages"),
                            RejectReason::WrongType,
                            format!(
                                "messages[{k}] must be an object with string `role` and `content`"
                            ),
                        ))
                    }
                }
            }
            messages
        }
        (None, Some(other)) => {
            return Err((
                Some("messages"),
                RejectReason::WrongType,
                format!("`messages` must be a list, got {}", type_name(other)),
            ))
        }
        (None, None) => {
            return Err((
                Some("prompt"),
                RejectReason::MissingField,
                "neither `prompt` nor `messages` is present".into(),
            ))
        }
    };
    let mut messages = messages;
    if shape == RecordShape::Response {
        match obj.get("response") {
            None | Some(Value::Null) => {}
            Some(Value::String(r)) if obj.contains_key("prompt") => {
                messages.push(Message::new("assistant", r.clone()))
            }
            Some(Value::String(_)) => {
                return Err((
                    Some("response"),
                    RejectReason::Ambiguous,
                    "`response` goes with `prompt`, not with `messages`".into(),
                ))
            }
            Some(other) => {
                return Err((
                    Some("response"),
                    RejectReason::WrongType,
                    format!("`response` must be a string, got {}", type_name(other)),
                ))
            }
        }
    }
    validate_messages(&messages, shape)?;
    Ok((id, messages))
}

/// An id as a record gives it: a non-empty string or an integer.
fn readable_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// The id of a record that may be unusable otherwise, so that its reject can carry it.
pub fn record_id(value: &Value) -> Option<String> {
    value.get("id").and_then(readable_id)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A usable conversation: non-empty, known roles, ending with a user turn (a prompt) or an
/// assistant turn (a response to score).
pub(crate) fn validate_messages(
    messages: &[Message],
    shape: RecordShape,
) -> Result<(), FieldError> {
    if messages.is_empty() {
        return Err((
            Some("messages"),
            RejectReason::Empty,
            "the conversation has no messages".into(),
        ));
    }
    for (k, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err((
                Some("messages"),
                RejectReason::UnknownRole,
                format!("messages[{k}] has role `{}`", m.role),
            ));
        }
    }
    if messages
        .iter()
        .all(|m| m.content.trim().is_empty() || m.role == "system")
    {
        return Err((
            Some("prompt"),
            RejectReason::Empty,
            "the prompt is empty".into(),
        ));
    }
    let (last_role, why) = match shape {
        RecordShape::Prompt => (
            "user",
            "the conversation must end with a user message for the policy to answer",
        ),
        RecordShape::Response => (
            "assistant",
            "the conversation must end with the assistant response to score",
        ),
    };
    if messages.last().is_some_and(|m| m.role != last_role) {
        return Err((
            Some("messages"),
            RejectReason::BadConversationEnd,
            why.into(),
        ));
    }
    Ok(())
}
