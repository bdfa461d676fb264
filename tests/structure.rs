//! The shape of the code base, checked: no module of a crate imports a module that imports it
//! back (directly or around a longer circle), no source file over 600 lines, and no function
//! over 120 lines in the `pipeline` and `jobs` crates (docs/architecture.md, "House rules").
//!
//! The sources are read as text: a small lexer drops comments, strings and character literals,
//! so braces and `crate::` inside them do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 5] = ["operators", "kernels", "models", "pipeline", "jobs"];
const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 120;
const FN_LIMIT_CRATES: [&str; 2] = ["pipeline", "jobs"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments, strings and char literals blanked (newlines kept, so line numbers
/// stay), lifetimes left alone.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |s: &[u8], out: &mut String| {
        for &c in s {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&rest[..end], &mut out);
            i += end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&rest[..j], &mut out);
            i += j;
        } else if (rest[0] == b'r' || rest.starts_with(b"br"))
            && !b[..i]
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            && raw_string_len(rest).is_some()
        {
            let n = raw_string_len(rest).unwrap_or(1);
            blank(&rest[..n], &mut out);
            i += n;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let n = (j + 1).min(rest.len());
            blank(&rest[..n], &mut out);
            i += n;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let n = if rest.len() > 2 && rest[1] == b'\\' {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else if rest.len() > 2 && rest[2] == b'\'' {
                Some(3)
            } else {
                None
            };
            match n {
                Some(n) => {
                    blank(&rest[..n], &mut out);
                    i += n;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Length of a raw string literal starting at `s` (`r"…"`, `r#"…"#`, `br"…"`), if it is one.
fn raw_string_len(s: &[u8]) -> Option<usize> {
    let mut j = if s.starts_with(b"br") { 2 } else { 1 };
    let hashes = s[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    if s.get(j) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let end = s[j + 1..]
        .windows(close.len())
        .position(|w| w == close.as_slice())?;
    Some(j + 1 + end + close.len())
}

/// The module path of a source file inside its crate (`graph::plan`), `crate` for the root.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let parts: Vec<String> = match parts.as_slice() {
        [only] if only == "lib" || only == "main" => vec![],
        [init @ .., last] if last == "mod" => init.to_vec(),
        _ => parts,
    };
    if parts.is_empty() {
        "crate".into()
    } else {
        parts.join("::")
    }
}

/// Paths named after `crate::` / `super::` / `self::` in `code`, as absolute module paths with
/// every segment (the caller trims them to a known module). `use crate::{a, b::c}` groups are
/// expanded one level.
fn referenced_paths(module: &str, is_mod_file: bool, code: &str) -> Vec<Vec<String>> {
    let own: Vec<String> = if module == "crate" {
        vec![]
    } else {
        module.split("::").map(str::to_string).collect()
    };
    // `super` in a.rs or a/mod.rs names a's parent; `self` in a/mod.rs names a.
    let parent = |levels: usize| -> Vec<String> {
        let keep = own.len().saturating_sub(levels);
        own[..keep].to_vec()
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for anchor in ["crate::", "super::", "self::"] {
        let mut start = 0;
        while let Some(pos) = code[start..].find(anchor) {
            let at = start + pos;
            start = at + anchor.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            // Chained `super::super::`.
            let mut base = match anchor {
                "crate::" => vec![],
                "super::" => parent(1),
                _ if is_mod_file => own.clone(),
                _ => parent(1),
            };
            let mut tail = &code[start..];
            while anchor == "super::" && tail.starts_with("super::") {
                base.truncate(base.len().saturating_sub(1));
                tail = &tail["super::".len()..];
            }
            let mut path = String::new();
            for c in tail.chars() {
                if c.is_alphanumeric() || c == '_' || c == ':' {
                    path.push(c);
                } else {
                    if c == '{' {
                        path.push(c);
                    }
                    break;
                }
            }
            if let Some(prefix) = path.strip_suffix('{') {
                let group_start =
                    start + (tail.as_ptr() as usize - code[start..].as_ptr() as usize) + path.len();
                let group_end = code[group_start..]
                    .find('}')
                    .map_or(code.len(), |e| group_start + e);
                let prefix: Vec<String> = prefix
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                for item in code[group_start..group_end].split(',') {
                    let mut p = base.clone();
                    p.extend(prefix.iter().cloned());
                    p.extend(
                        item.trim()
                            .split("::")
                            .map(|s| s.trim().to_string())
                            .filter(|s| {
                                !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
                            }),
                    );
                    out.push(p);
                }
            } else {
                let mut p = base;
                p.extend(
                    path.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
                out.push(p);
            }
        }
    }
    out
}

struct CrateSource {
    name: &'static str,
    /// Module path → (file, code without comments and strings).
    modules: BTreeMap<String, (PathBuf, String)>,
}

fn crate_source(name: &'static str) -> CrateSource {
    let src = root().join(name).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules = files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("readable source");
            (module_of(&src, &f), (f, code_only(&text)))
        })
        .collect();
    CrateSource { name, modules }
}

/// The known module a path points into: its longest prefix that is a module (`crate` excluded).
fn target_module(path: &[String], modules: &BTreeMap<String, (PathBuf, String)>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// Module → the modules it names (excluding itself, its own submodules and its ancestors' files
/// only when they are named: a parent's `mod x;` is a declaration, not an import).
fn import_graph(source: &CrateSource) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (module, (file, code)) in &source.modules {
        // Unit tests may reach anywhere in their own module tree.
        let code = match code.find("#[cfg(test)]\nmod tests") {
            Some(at) => &code[..at],
            None => code,
        };
        let is_mod_file = file
            .file_name()
            .is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
        let mut targets = BTreeSet::new();
        for path in referenced_paths(module, is_mod_file, code) {
            if let Some(t) = target_module(&path, &source.modules) {
                if &t != module {
                    targets.insert(t);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// (name, first line, lines) of every function body in `code`.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].bytes().filter(|&c| c == b'\n').count() + 1;
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(pos) = code[start..].find("fn ") {
        let at = start + pos;
        start = at + 3;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let name: String = code[start..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue; // `fn(` pointer types
        }
        // The body opens at the first `{` before any `;` (a declaration without a body).
        let Some(open) = code[start..].find(['{', ';']).map(|p| start + p) else {
            continue;
        };
        if bytes[open] == b';' {
            continue;
        }
        let mut depth = 0usize;
        let mut close = open;
        for (j, &c) in bytes[open..].iter().enumerate() {
            match c {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        let first = line_of(at);
        out.push((name, first, line_of(close) - first + 1));
    }
    out
}

#[test]
fn the_lexer_ignores_braces_and_paths_in_strings_and_comments() {
    let code = code_only(
        "fn a() { let s = \"{ crate::x }\"; let r = r#\"}\"#; let c = '{'; // crate::y }\n}\nfn b<'a>(x: &'a str) {}\n",
    );
    assert!(!code.contains("crate::"), "{code}");
    let f = functions(&code);
    assert_eq!(
        f,
        vec![("a".to_string(), 1, 2), ("b".to_string(), 3, 1)],
        "{code}"
    );
}

#[test]
fn the_import_graph_finds_a_circle() {
    let mut modules = BTreeMap::new();
    for (m, code) in [
        ("a", "use crate::b::Thing;"),
        ("b", "use crate::{c::X, d};"),
        ("c", "fn f() { super::a::g() }"),
        ("d", ""),
    ] {
        modules.insert(
            m.to_string(),
            (PathBuf::from(format!("{m}.rs")), code.to_string()),
        );
    }
    let source = CrateSource { name: "t", modules };
    let graph = import_graph(&source);
    assert_eq!(
        graph["b"],
        BTreeSet::from(["c".to_string(), "d".to_string()])
    );
    assert_eq!(
        circles(&graph),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut report = Vec::new();
    for name in CRATES {
        let source = crate_source(name);
        assert!(source.modules.len() > 1, "{} has sources", source.name);
        for circle in circles(&import_graph(&source)) {
            report.push(format!("{}: {}", source.name, circle.join(" <-> ")));
        }
    }
    assert!(
        report.is_empty(),
        "modules importing each other:\n{}",
        report.join("\n")
    );
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    for dir in CRATES
        .iter()
        .map(|c| root().join(c))
        .chain([root().join("tests")])
    {
        rust_files(&dir, &mut files);
    }
    assert!(files.len() > 50);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > MAX_FILE_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn no_function_in_pipeline_or_jobs_is_over_120_lines() {
    let mut long = Vec::new();
    for name in FN_LIMIT_CRATES {
        let mut files = Vec::new();
        rust_files(&root().join(name), &mut files);
        for file in files {
            let code = code_only(&std::fs::read_to_string(&file).expect("readable"));
            for (function, line, lines) in functions(&code) {
                if lines > MAX_FN_LINES {
                    long.push(format!(
                        "{}:{line} {function} ({lines} lines)",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}
