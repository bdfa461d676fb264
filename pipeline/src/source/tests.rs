//! Unit tests of `source`.
use super::*;

#[test]
fn chunked_jsonl_parses_as_the_whole_file_wherever_it_is_split() {
    let bytes: &[u8] = b"{\"id\": \"a\", \"prompt\": \"x\"}\r\n\n{\"prompt\": 5}\n\xff\n{\"id\": \"b\", \"prompt\": \"\xc3\xa9t\xc3\xa9\"}\n{\"id\": \"c\", \"pro";
    let whole = parse_jsonl("f", bytes, RecordShape::Prompt);
    assert_eq!(whole.prompts.len(), 2);
    assert_eq!(whole.rejects.len(), 3);
    assert_eq!(whole.rejects[2].reason, "truncated_line");
    for size in 1..bytes.len() {
        let mut parser = JsonlParser::new("f", RecordShape::Prompt);
        for chunk in bytes.chunks(size) {
            parser.feed(chunk);
        }
        let chunked = parser.finish();
        assert_eq!(chunked.prompts, whole.prompts, "chunks of {size}");
        assert_eq!(chunked.rejects, whole.rejects, "chunks of {size}");
        assert_eq!(chunked.records, whole.records);
    }
}

#[test]
fn good_records_in_both_shapes() {
    let input = br#"{"prompt": "Hi"}
{"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]}

{"id": "x", "prompt": "Hello", "extra": 1}
"#;
    let out = parse_jsonl("p.jsonl", input, RecordShape::Prompt);
    assert!(out.rejects.is_empty(), "{:?}", out.rejects);
    assert_eq!(out.records, 3);
    assert_eq!(out.prompts.len(), 3);
    assert_eq!(
        out.prompts[0].id,
        prompt_id_from_messages(&[Message::new("user", "Hi")])
    );
    assert_eq!(out.prompts[1].id, "7");
    assert_eq!(out.prompts[1].messages.len(), 2);
    assert_eq!(out.prompts[2].source.record, 4);
}

#[test]
fn bad_records_name_line_field_and_reason() {
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"prompt\": \"ok\"}\n");
    input.extend_from_slice(b"not json\n");
    input.extend_from_slice(b"{\"prompt\": 3}\n");
    input.extend_from_slice(b"{\"prompt\": \"   \"}\n");
    input.extend_from_slice(b"{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n");
    input.extend_from_slice(b"{\"prompt\": \"\xff\"}\n");
    input.extend_from_slice(b"{\"id\": [1], \"prompt\": \"x\"}\n");
    input.extend_from_slice(b"{\"other\": 1}\n");
    input.extend_from_slice(b"{\"prompt\": \"cut");
    let out = parse_jsonl("in.jsonl", &input, RecordShape::Prompt);
    assert_eq!(out.prompts.len(), 1);
    let got: Vec<(u64, Option<&str>, &str)> = out
        .rejects
        .iter()
        .map(|r| (r.record, r.field.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, None, "invalid_json"),
            (3, Some("prompt"), "wrong_type"),
            (4, Some("prompt"), "empty"),
            (5, Some("messages"), "bad_conversation_end"),
            (6, None, "invalid_utf8"),
            (7, Some("id"), "wrong_type"),
            (8, Some("prompt"), "missing_field"),
            (9, None, "truncated_line"),
        ]
    );
    assert!(out.rejects[0].to_string().starts_with("in.jsonl:2"));
    // No reject above had a readable id.
    assert!(out.rejects.iter().all(|r| r.prompt_id.is_none()));
}

#[test]
fn rejects_carry_the_records_readable_id() {
    let input = b"{\"id\":\"b2\",\"prompt\":\"\"}\n{\"id\":7,\"prompt\":3}\n{\"id\":\"\",\"prompt\":\"\"}\n";
    let out = parse_jsonl("r.jsonl", input, RecordShape::Prompt);
    let got: Vec<(Option<&str>, &str)> = out
        .rejects
        .iter()
        .map(|r| (r.prompt_id.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("b2"), "empty"),
            (Some("7"), "wrong_type"),
            (None, "wrong_type")
        ]
    );
}

#[test]
fn duplicates_keep_the_first() {
    let mut out = parse_jsonl(
        "d.jsonl",
        b"{\"id\":\"a\",\"prompt\":\"1\"}\n{\"id\":\"a\",\"prompt\":\"2\"}\n",
        RecordShape::Prompt,
    );
    reject_duplicate_ids("d.jsonl", &mut out);
    assert_eq!(out.prompts.len(), 1);
    assert_eq!(out.prompts[0].messages[0].content, "1");
    assert_eq!(out.rejects[0].reason, "duplicate_id");
    assert_eq!(out.rejects[0].record, 2);
}

#[test]
fn formats_by_extension() {
    assert_eq!(
        InputFormat::resolve("auto", "a/b.parquet"),
        Ok(InputFormat::Parquet)
    );
    assert_eq!(
        InputFormat::resolve("auto", "a/b.jsonl"),
        Ok(InputFormat::Jsonl)
    );
    assert!(InputFormat::resolve("auto", "a/b.csv").is_err());
}

fn parquet_of(batch: RecordBatch) -> bytes::Bytes {
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    bytes::Bytes::from(buf)
}

#[test]
fn parquet_prompts_and_messages() {
    use arrow::array::{ArrayRef, Int64Array, ListArray, StringArray, StructArray};
    use arrow::buffer::OffsetBuffer;
    use arrow::datatypes::{Field, Fields};
    use std::sync::Arc;
    let fields = Fields::from(vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ]);
    let roles = StringArray::from(vec!["system", "user", "user", "assistant"]);
    let contents = StringArray::from(vec!["Be brief.", "Hi?", "Q", "A"]);
    let items = StructArray::new(
        fields.clone(),
        vec![Arc::new(roles) as ArrayRef, Arc::new(contents)],
        None,
    );
    let messages = ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(fields), true)),
        OffsetBuffer::from_lengths([2, 2]),
        Arc::new(items),
        None,
    );
    let ids = Int64Array::from(vec![10, 11]);
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as ArrayRef),
        ("messages", Arc::new(messages)),
    ])
    .unwrap();
    let out = parse_parquet("m.parquet", parquet_of(batch), RecordShape::Prompt).unwrap();
    assert_eq!(out.prompts.len(), 1);
    assert_eq!(out.prompts[0].id, "10");
    assert_eq!(out.prompts[0].messages[1], Message::new("user", "Hi?"));
    // Row 1 ends with an assistant turn: rejected, with its row, field and id.
    assert_eq!(
        (
            out.rejects[0].record,
            out.rejects[0].reason.as_str(),
            out.rejects[0].prompt_id.as_deref()
        ),
        (1, "bad_conversation_end", Some("11"))
    );

    let prompts = StringArray::from(vec![Some("Hello"), None]);
    let batch = RecordBatch::try_from_iter([("prompt", Arc::new(prompts) as ArrayRef)]).unwrap();
    let out = parse_parquet("p.parquet", parquet_of(batch), RecordShape::Prompt).unwrap();
    assert_eq!(out.prompts[0].messages, vec![Message::new("user", "Hello")]);
    assert_eq!(out.rejects[0].reason, "missing_field");

    let other = StringArray::from(vec!["x"]);
    let batch = RecordBatch::try_from_iter([("text", Arc::new(other) as ArrayRef)]).unwrap();
    let err = parse_parquet("t.parquet", parquet_of(batch), RecordShape::Prompt).unwrap_err();
    assert!(
        err.contains("schema mismatch") && err.contains("text"),
        "{err}"
    );
    assert!(parse_parquet(
        "c.parquet",
        bytes::Bytes::from_static(b"PAR1 not really"),
        RecordShape::Prompt
    )
    .is_err());
}

#[test]
fn responses_to_score() {
    let input = br#"{"prompt": "Q?", "response": "A."}
{"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "B."}]}
{"prompt": "Q?"}
{"messages": [{"role": "user", "content": "Q?"}], "response": "C."}
"#;
    let out = parse_jsonl("r.jsonl", input, RecordShape::Response);
    assert_eq!(out.prompts.len(), 2);
    assert_eq!(
        out.prompts[0].messages,
        vec![Message::new("user", "Q?"), Message::new("assistant", "A.")]
    );
    let reasons: Vec<&str> = out.rejects.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(reasons, vec!["bad_conversation_end", "ambiguous"]);
}
