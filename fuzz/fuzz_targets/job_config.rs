//! Any text as a job file, then checked: a config error or a plan, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = steerflow::config::parse_config(text, "fuzz.toml", &[]) {
            let _ = steerflow::kinds::check(&config.common, &config.sections);
        }
    }
});
