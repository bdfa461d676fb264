//! The storage servers of the exactly-once tests, on loopback: moto (S3), azurite (Azure Blob)
//! and the fault-injecting proxy (`jobs/tests/servers/`), and the backends a job writes to.

use super::{free_port, python, workspace};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use steerflow_pipeline::storage::{Location, StorageOptions};

pub fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server process on loopback, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server process already listening on `port`.
    pub fn new(child: Child, port: u16) -> Self {
        Self {
            child,
            port,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn setup(kind: &str, port: u16) {
    let status = Command::new(python())
        .arg(workspace().join("jobs/tests/servers/setup.py"))
        .args([kind, &port.to_string(), "steerflow"])
        .status()
        .unwrap();
    assert!(status.success(), "creating the {kind} bucket failed");
}

pub fn moto() -> Server {
    let moto = python().parent().unwrap().join("moto_server");
    assert!(
        moto.exists(),
        "{} is missing: run ./scripts/test (it installs moto into .venv-test)",
        moto.display()
    );
    let port = free_port();
    let mut child = Command::new(moto)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "moto_server");
    setup("s3", port);
    Server {
        child,
        port,
        _dir: None,
    }
}

pub fn azurite() -> Server {
    let bin = workspace().join("target/test-servers/node_modules/.bin/azurite-blob");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/test (it installs azurite from npm)",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(bin)
        .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
        .arg("--location")
        .arg(dir.path())
        .args(["--silent", "--skipApiVersionCheck"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "azurite-blob");
    setup("azure", port);
    Server {
        child,
        port,
        _dir: Some(dir),
    }
}

pub fn faulty_proxy(upstream: u16, faults: &[&str]) -> Server {
    let port = free_port();
    let mut child = Command::new(python())
        .arg(workspace().join("jobs/tests/servers/faulty_proxy.py"))
        .args([port.to_string(), upstream.to_string()])
        .args(faults)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child, "faulty_proxy.py");
    Server {
        child,
        port,
        _dir: None,
    }
}

pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where a test writes: a URL prefix and how to reach it.
pub struct Backend {
    pub root: String,
    pub storage: StorageOptions,
}

impl Backend {
    pub fn local(dir: &Path) -> Self {
        Self {
            root: dir.display().to_string(),
            storage: StorageOptions::default(),
        }
    }

    pub fn s3(port: u16) -> Self {
        Self {
            root: "s3://steerflow".into(),
            storage: StorageOptions {
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                allow_http: Some(true),
                region: Some("us-east-1".into()),
                options: [
                    ("aws_access_key_id".to_string(), "test".to_string()),
                    ("aws_secret_access_key".to_string(), "test".to_string()),
                ]
                .into(),
                max_retries: 6,
                initial_backoff_ms: 20,
                max_backoff_seconds: 0.5,
                retry_timeout_seconds: 20.0,
                request_timeout_seconds: 1.5,
                ..Default::default()
            },
        }
    }

    pub fn azure(port: u16) -> Self {
        Self {
            root: "az://steerflow".into(),
            storage: StorageOptions {
                endpoint: Some(format!("http://127.0.0.1:{port}/devstoreaccount1")),
                allow_http: Some(true),
                options: [
                    (
                        "azure_storage_account_name".to_string(),
                        "devstoreaccount1".to_string(),
                    ),
                    (
                        "azure_storage_account_key".to_string(),
                        AZURITE_KEY.to_string(),
                    ),
                ]
                .into(),
                ..Default::default()
            },
        }
    }

    pub fn output(&self, name: &str) -> String {
        format!("{}/{name}", self.root)
    }

    pub fn location(&self, name: &str) -> Location {
        Location::parse_with(&self.output(name), &self.storage, false).unwrap()
    }
}
