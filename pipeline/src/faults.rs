//! Crash points for the kill tests: `STEERFLOW_CRASH_AT=point[:n]` aborts the process (no
//! unwinding, no cleanup, like SIGKILL) the n-th time (default: first) that `point` is reached.
//! Points: `part-written`, `shard-marker`, `data-file`, `before-commit`, `committed`.
//!
//! Compiled only with the `crash-points` feature, which the jobs crate turns on for its tests
//! (a dev-dependency feature): a production build has no crash points, so no stray variable can
//! abort a run.

/// Marks that `name` was reached (nothing without the `crash-points` feature).
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

#[cfg(feature = "crash-points")]
static HITS: std::sync::Mutex<Option<std::collections::HashMap<&'static str, u64>>> =
    std::sync::Mutex::new(None);

/// Marks that `name` was reached; aborts here if the environment asks for it.
#[cfg(feature = "crash-points")]
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
        .get_or_insert_with(std::collections::HashMap::new)
        .entry(name)
        .or_default();
    *hits += 1;
    if *hits == nth {
        eprintln!("steerflow: STEERFLOW_CRASH_AT={spec}: aborting at {name}");
        std::process::abort();
    }
}
