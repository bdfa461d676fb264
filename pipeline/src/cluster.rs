//! Cluster shape: how many processes, which one this is, where the others listen, and how many
//! workers each runs. Built in code into timely's configuration, so timely's own argument parser
//! never sees the user's flags.
//!
//! Failure: timely waits forever for peers that never come, so [`ConnectWatch`] gives up after a
//! configured time; a peer that dies mid-run makes timely's receive thread panic with
//! "timely communication error", which the `steerflow` binary turns into a clean exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The shape of a run: `processes` × `workers`.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub processes: usize,
    /// This process, 0-based; process 0 commits the run.
    pub process: usize,
    /// `host:port` of every process (empty for a single process).
    pub addresses: Vec<String>,
    /// Workers per process.
    pub workers: usize,
    /// How long to wait for every peer to connect.
    pub connect_timeout: Duration,
    /// What to do when the peers have not connected in time. Timely blocks in its connect loop
    /// and cannot be interrupted, so only the program can decide (the `steerflow` binary exits
    /// with a message); `None` logs the error and keeps waiting.
    pub on_connect_timeout: Option<fn(String)>,
}

impl ClusterSpec {
    /// One process with `workers` threads.
    pub fn single(workers: usize) -> Self {
        Self {
            processes: 1,
            process: 0,
            addresses: Vec::new(),
            workers: workers.max(1),
            connect_timeout: Duration::from_secs(60),
            on_connect_timeout: None,
        }
    }

    /// Whether this process commits the run (process 0).
    pub fn is_leader(&self) -> bool {
        self.process == 0
    }

    /// Workers in the whole cluster.
    pub fn total_workers(&self) -> usize {
        self.processes * self.workers
    }

    /// The timely configuration for this process.
    pub fn timely_config(&self) -> timely::Config {
        let communication = if self.processes <= 1 {
            timely::CommunicationConfig::Process(self.workers.max(1))
        } else {
            timely::CommunicationConfig::Cluster {
                threads: self.workers.max(1),
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            }
        };
        timely::Config {
            communication,
            worker: timely::WorkerConfig::default(),
        }
    }

    /// Checks the shape: the process index in range and one address per process.
    pub fn validate(&self) -> Result<(), String> {
        if self.processes == 0 || self.workers == 0 {
            return Err("processes and workers must be at least 1".into());
        }
        if self.process >= self.processes {
            return Err(format!(
                "process {} does not exist in a cluster of {} processes (they are numbered from 0)",
                self.process, self.processes
            ));
        }
        if self.processes > 1 && self.addresses.len() != self.processes {
            return Err(format!(
                "{} processes need {} addresses (host:port, one per line of the hostfile); got {}",
                self.processes,
                self.processes,
                self.addresses.len()
            ));
        }
        Ok(())
    }
}

/// `host:port` per line; blank lines and `#` comments are skipped.
pub fn parse_hostfile(text: &str, file: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let valid = line
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(format!("{file}:{}: `{line}` is not host:port", i + 1));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// Calls `on_timeout` if the cluster has not connected within the configured time.
pub struct ConnectWatch {
    connected: Arc<AtomicBool>,
}

impl ConnectWatch {
    pub fn start(spec: &ClusterSpec, on_timeout: impl FnOnce(String) + Send + 'static) -> Self {
        let connected = Arc::new(AtomicBool::new(false));
        if spec.processes > 1 {
            let (flag, timeout) = (connected.clone(), spec.connect_timeout);
            let peers = spec.addresses.join(", ");
            let me = spec.process;
            std::thread::spawn(move || {
                std::thread::sleep(timeout);
                if !flag.load(Ordering::SeqCst) {
                    on_timeout(format!(
                        "process {me}: not every peer connected within {} s ({peers}); \
                         start all processes of the cluster, or raise --connect-timeout",
                        timeout.as_secs_f64()
                    ));
                }
            });
        }
        Self { connected }
    }

    /// The flag a worker sets once the dataflow runs (every peer is connected by then).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfiles() {
        let hosts =
            parse_hostfile("# two nodes\n10.0.0.1:2101\n\nnode-b:2101  # b\n", "h").unwrap();
        assert_eq!(hosts, ["10.0.0.1:2101", "node-b:2101"]);
        let err = parse_hostfile("a:1\nb\n", "hosts.txt").unwrap_err();
        assert!(err.contains("hosts.txt:2"), "{err}");
    }

    #[test]
    fn shapes_are_checked() {
        let mut spec = ClusterSpec::single(2);
        assert!(spec.validate().is_ok());
        spec.processes = 2;
        assert!(spec.validate().unwrap_err().contains("2 addresses"));
        spec.addresses = vec!["a:1".into(), "b:2".into()];
        spec.process = 2;
        assert!(spec.validate().unwrap_err().contains("process 2"));
        spec.process = 1;
        assert!(spec.validate().is_ok());
        assert_eq!(spec.total_workers(), 4);
    }
}
