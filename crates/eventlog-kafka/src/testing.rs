//! A real Kafka-protocol broker for tests: `nisshi`, started on a free
//! loopback port with its SQLite storage in a temporary directory, and
//! stopped when dropped.
//!
//! The binary comes from `MSKFLOW_KAFKA_BROKER` or, by default,
//! `~/.cache/mskflow/nisshi/bin/nisshi`, where `scripts/kafka-broker.sh
//! install` (run by `make test`) puts it.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// Where the broker binary is expected.
pub fn broker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MSKFLOW_KAFKA_BROKER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/mskflow/nisshi/bin/nisshi")
}

impl Broker {
    /// Start a broker and wait until it accepts connections.
    pub fn start() -> io::Result<Self> {
        let binary = broker_binary();
        if !binary.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no Kafka-protocol broker at {} (run `scripts/kafka-broker.sh install` or `make test`, or set MSKFLOW_KAFKA_BROKER)",
                    binary.display()
                ),
            ));
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir()?;
        let log = std::fs::File::create(dir.path().join("broker.log"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://broker.db"])
            .current_dir(dir.path())
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("CLUSTER_ID")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut broker = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(broker);
            }
            if let Some(status) = broker.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "broker exited with {status}: {}",
                    broker.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("broker did not listen on {addr} in 30 s: {}", broker.log()),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// What the broker printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A topic prefix no other test uses (the broker's topics outlive tests
/// within one broker; topics are never deleted).
pub fn unique_prefix(name: &str) -> String {
    format!("t{}-{name}", uuid::Uuid::new_v4().simple())
}
