use super::*;
use crate::source::parse_jsonl;

/// Prompts and rejects as (line, id or reason), in order.
fn lines_of(out: &SourceOutput) -> Vec<(u64, String)> {
    let mut v: Vec<(u64, String)> = out
        .prompts
        .iter()
        .map(|p| (p.source.record, p.id.clone()))
        .chain(
            out.rejects
                .iter()
                .map(|r| (r.record, r.reason.as_str().to_string())),
        )
        .collect();
    v.sort();
    v
}

#[test]
fn ranges_cover_the_file_and_stay_whole_when_small() {
    assert_eq!(ranges(0, 4, 10), vec![0..0]);
    assert_eq!(ranges(25, 4, 10), vec![0..12, 12..25]);
    assert_eq!(ranges(100, 4, 10), vec![0..25, 25..50, 50..75, 75..100]);
    assert_eq!(ranges(100, 1, 1), vec![0..100]);
    assert_eq!(owner(1, 2, 2), 1);
}

#[test]
fn ranges_parse_the_same_records_with_the_same_line_numbers_as_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for i in 0..40 {
        match i % 7 {
            0 => text.push('\n'),
            1 => text.push_str(&format!("{{\"id\": \"crlf{i}\", \"prompt\": \"q\"}}\r\n")),
            2 => text.push_str("not json\n"),
            3 => text.push_str(&format!(
                "{{\"id\": \"long{i}\", \"prompt\": \"{}\"}}\n",
                "x".repeat(90)
            )),
            _ => text.push_str(&format!(
                "{{\"id\": \"p{i}\", \"prompt\": \"question {i}\"}}\n"
            )),
        }
    }
    for ending in [
        "",
        "{\"id\": \"last\", \"prompt\": \"no newline\"}",
        "{\"prompt\": \"cut",
    ] {
        let body = format!("{text}{ending}");
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &body).unwrap();
        let spec = path.to_str().unwrap();
        let whole = lines_of(&parse_jsonl(spec, body.as_bytes(), RecordShape::Prompt));
        let size = body.len() as u64;
        for min_bytes in [1, 7, 64, 300] {
            for workers in 1..=6 {
                let rs = ranges(size, workers, min_bytes);
                let mut before = 0;
                let mut parts = SourceOutput::default();
                for range in rs {
                    let part =
                        parse_range(spec, range.clone(), before, RecordShape::Prompt).unwrap();
                    before += count_newlines(spec, range).unwrap();
                    parts.records += part.records;
                    parts.prompts.extend(part.prompts);
                    parts.rejects.extend(part.rejects);
                }
                assert_eq!(
                    lines_of(&parts),
                    whole,
                    "{workers} ranges of at least {min_bytes} bytes, ending {ending:?}"
                );
                assert_eq!(before, body.matches('\n').count() as u64);
            }
        }
    }
}

#[test]
fn a_range_whose_only_newline_is_its_last_byte_owns_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let body = "{\"id\":\"a\",\"prompt\":\"q\"}\n{\"id\":\"b\",\"prompt\":\"q\"}\n";
    let first_end = body.find('\n').unwrap() as u64 + 1;
    let path = dir.path().join("two.jsonl");
    std::fs::write(&path, body).unwrap();
    let spec = path.to_str().unwrap();
    let size = body.len() as u64;
    // [0, 10) holds the first line's start; [10, first_end) ends on its newline; the rest
    // holds the second line.
    let parts: Vec<SourceOutput> = [0..10, 10..first_end, first_end..size]
        .into_iter()
        .scan(0, |before, range| {
            let part = parse_range(spec, range.clone(), *before, RecordShape::Prompt).unwrap();
            *before += count_newlines(spec, range).unwrap();
            Some(part)
        })
        .collect();
    let ids: Vec<Vec<(u64, String)>> = parts.iter().map(lines_of).collect();
    assert_eq!(
        ids,
        vec![
            vec![(1, "a".to_string())],
            vec![],
            vec![(2, "b".to_string())]
        ]
    );
}
