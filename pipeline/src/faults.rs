//! Crash points for the kill tests: `STEERFLOW_CRASH_AT=point[:n]` aborts the process (no
//! unwinding, no cleanup, like SIGKILL) the n-th time (default: first) that `point` is reached.
//! Points: `part-written`, `shard-marker`, `data-file`, `before-commit`, `committed`.
//! Never set it outside tests.

use std::collections::HashMap;
use std::sync::Mutex;

static HITS: Mutex<Option<HashMap<&'static str, u64>>> = Mutex::new(None);

/// Marks that `name` was reached; aborts here if the environment asks for it.
pub fn point(name: &'static str) {
    let Ok(spec) = std::env::var("STEERFLOW_CRASH_AT") else {
        return;
    };
    let (target, nth) = match spec.split_once(':') {
        Some((t, n)) => (t.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec.clone(), 1),
    };
    if target != name {
        return;
    }
    let mut guard = HITS.lock().unwrap_or_else(|e| e.into_inner());
    let hits = guard
        .get_or_insert_with(HashMap::new)
        .entry(name)
        .or_default();
    *hits += 1;
    if *hits == nth {
        eprintln!("steerflow: STEERFLOW_CRASH_AT={spec}: aborting at {name}");
        std::process::abort();
    }
}
