//! llama.cpp's `llama-server` on loopback, serving the default GGUF (built by `scripts/test`
//! through `scripts/build-llama-cpp`), and a minimal HTTP client for the tests.

use super::servers::{wait_for_port, Server};
use super::{free_port, workspace};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The default model's GGUF file (installed on first use).
pub fn default_gguf() -> PathBuf {
    let out = super::succeed(Command::new(env!("CARGO_BIN_EXE_steerflow")).arg("install-model"));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// `llama-server` serving the default GGUF as `smollm2` with `slots` parallel slots.
pub fn llama_server(slots: usize) -> Server {
    llama_server_with(&default_gguf(), slots, &[])
}

/// `llama-server` serving `model` as `smollm2` with `slots` parallel slots and `extra` flags.
pub fn llama_server_with(model: &std::path::Path, slots: usize, extra: &[&str]) -> Server {
    let bin = workspace().join("target/llama.cpp/build-quick/bin/llama-server");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/test (it builds llama-server with scripts/build-llama-cpp --quick)",
        bin.display()
    );
    let port = free_port();
    let mut child = Command::new(bin)
        .arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--alias", "smollm2", "-np", &slots.to_string()])
        .args(["-c", &(2048 * slots).to_string(), "-t", "2", "--no-webui"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "llama-server");
    // 503 while the model loads, 200 when ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    while http("GET", port, "/health", "").0 != 200 {
        assert!(
            Instant::now() < deadline,
            "llama-server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Server::new(child, port)
}

/// One HTTP/1.0 request on loopback: (status, body). Status 0 when the connection failed.
pub fn http(method: &str, port: u16, path: &str, body: &str) -> (u16, String) {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut reply = String::new();
    if stream.read_to_string(&mut reply).is_err() {
        return (0, String::new());
    }
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
