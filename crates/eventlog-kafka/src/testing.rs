//! A real Kafka-protocol broker for tests: `nisshi`, started on a free
//! loopback port with its SQLite storage in a temporary directory, and
//! stopped when dropped.
//!
//! The binary comes from `MSKFLOW_KAFKA_BROKER` or, by default,
//! `~/.cache/mskflow/nisshi/bin/nisshi`, where `scripts/kafka-broker.sh
//! install` (run by `make test`) puts it. `MSKFLOW_KAFKA_TEST_STORAGE`
//! sets another storage engine (`memory://nisshi/`, `postgres://…`) to run
//! the same tests against; a restart keeps only what that engine keeps.

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

/// A loopback port nothing listens on now, for a test process to bind.
///
/// Chosen at random below Linux's ephemeral range (32768 and up), where the
/// kernel never hands out ports for `bind(0)` or outgoing connections: a
/// port-0 listener of a test running alongside cannot take it between this
/// check and the process binding it.
pub fn free_port() -> io::Result<u16> {
    for _ in 0..200 {
        let random = uuid::Uuid::new_v4().as_u128();
        let port = 20_000 + (random % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Broker {
    /// Start a broker and wait until it accepts connections.
    pub fn start() -> io::Result<Self> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = tempfile::tempdir()?;
        let child = launch(addr, dir.path())?;
        let mut broker = Self { child, addr, dir };
        broker.wait_listening()?;
        Ok(broker)
    }

    /// Stop the broker process (an outage): asked to shut down (SIGTERM),
    /// killed if it is still running after 10 s. Its storage stays; clients
    /// see connections refused until [`Broker::restart`].
    pub fn stop(&mut self) -> io::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let asked = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if asked.is_ok_and(|s| s.success()) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Freeze the broker (SIGSTOP): it keeps its connections and its state
    /// but answers nothing, as a hung broker or a network black hole does,
    /// until [`Broker::resume`].
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal("-STOP")
    }

    /// Let a [`Broker::pause`]d broker run again (SIGCONT).
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&mut self, signal: &str) -> io::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill {signal} failed: {status}")))
        }
    }

    /// Kill the broker process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
        }
        self.child.wait()?;
        Ok(())
    }

    /// Start the broker again on the same port with the same storage file,
    /// and wait until it accepts connections. Stops it first if it runs.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match launch(self.addr, self.dir.path()) {
                Ok(child) => {
                    self.child = child;
                    match self.wait_listening() {
                        Ok(()) => return Ok(()),
                        // The old socket may hold the port for a moment.
                        Err(e) if Instant::now() < deadline => {
                            tracing::warn!(error = %e, "broker restart failed; trying again");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Is the broker process running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_listening(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "broker exited with {status}: {}",
                    self.log()
                )));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "broker did not listen on {} in 30 s: {}",
                        self.addr,
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// What the broker printed so far (every run, appended).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

/// The broker's `--storage-engine`: SQLite in the broker's directory unless
/// `MSKFLOW_KAFKA_TEST_STORAGE` names another.
pub fn storage_engine() -> String {
    std::env::var("MSKFLOW_KAFKA_TEST_STORAGE")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "sqlite://broker.db".to_owned())
}

/// Start the broker binary on `addr` with its storage in `dir`.
fn launch(addr: SocketAddr, dir: &std::path::Path) -> io::Result<Child> {
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
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))?;
    let url = format!("tcp://{addr}");
    Command::new(&binary)
        .arg("broker")
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", &storage_engine()])
        .current_dir(dir)
        .env_remove("LISTENER_URL")
        .env_remove("ADVERTISED_LISTENER_URL")
        .env_remove("STORAGE_ENGINE")
        .env_remove("CLUSTER_ID")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
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

/// Write one raw record to `topic` (no envelope checks): for tests of what
/// readers do with records they cannot decode.
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> Result<(i32, i64), rdkafka::error::KafkaError> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()?;
    let delivery = producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            rdkafka::util::Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok((delivery.partition, delivery.offset))
}
