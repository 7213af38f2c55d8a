//! The production shape for tests: each service binary as its own process
//! over a real Kafka-protocol broker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mskflow_eventlog_kafka::testing::Broker;

use super::{App, TestResult, test_auth_env};

/// A service process, killed when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    launch: Launch,
}

/// How a process was started, to start it again.
#[derive(Clone)]
struct Launch {
    bin: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Launch {
    fn start(&self, log: &Path, append: bool) -> TestResult<Child> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(log)?;
        Ok(Command::new(&self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .env("MSKFLOW_LOG_FORMAT", "pretty")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?)
    }
}

impl Proc {
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL the process and start it again with the same arguments (its
    /// log continues in the same file).
    pub fn restart(&mut self) -> TestResult {
        self.kill();
        self.child = self.launch.start(&self.log, true)?;
        Ok(())
    }

    pub fn check_alive(&mut self) -> TestResult {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("{} exited ({status}):\n{}", self.name, self.output()).into());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback address for a service process to listen on (see
/// [`mskflow_eventlog_kafka::testing::free_port`]: never one a port-0
/// listener of another test can take meanwhile).
pub fn free_addr() -> TestResult<String> {
    Ok(format!(
        "127.0.0.1:{}",
        mskflow_eventlog_kafka::testing::free_port()?
    ))
}

/// The service binaries sit next to the `mskflow` binary (`cargo test
/// --workspace --all-targets` builds them).
pub fn binary(name: &str) -> TestResult<PathBuf> {
    let root = Path::new(env!("CARGO_BIN_EXE_mskflow"))
        .parent()
        .ok_or("no target dir")?;
    let path = root.join(name);
    if !path.exists() {
        return Err(format!(
            "{} is not built: run `cargo build --workspace --bins` (make test does)",
            path.display()
        )
        .into());
    }
    Ok(path)
}

pub fn spawn(
    name: &str,
    bin: &str,
    dir: &Path,
    env: &[(String, String)],
    args: &[String],
) -> TestResult<Proc> {
    let log = dir.join(format!("{name}.log"));
    let launch = Launch {
        bin: binary(bin)?,
        dir: dir.to_path_buf(),
        env: env.to_vec(),
        args: args.to_vec(),
    };
    let child = launch.start(&log, false)?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
        launch,
    })
}

pub async fn wait_http_ready(url: &str, procs: &mut [&mut Proc]) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = reqwest::get(url).await
            && r.status().is_success()
        {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {}\n{}", p.name, p.output()))
                .collect();
            return Err(format!("{url} not ready in 90 s\n{}", logs.join("\n")).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{what}: not reached in {secs} s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connect a gRPC channel, retrying while the service starts.
pub async fn connect(addr: &str) -> TestResult<tonic::transport::Channel> {
    eventually("gRPC connect", 60, || async move {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect()
                .await
                .ok(),
        )
    })
    .await
}

/// The environment every process of a system on `broker` shares.
pub fn kafka_env(broker: &Broker, prefix: &str) -> Vec<(String, String)> {
    vec![
        ("MSKFLOW_KAFKA_BROKERS".into(), broker.bootstrap()),
        ("MSKFLOW_KAFKA_TOPIC_PREFIX".into(), prefix.to_owned()),
        ("MSKFLOW_KAFKA_PARTITIONS".into(), "3".into()),
        ("MSKFLOW_KAFKA_REPLICATION".into(), "1".into()),
        ("MSKFLOW_KAFKA_SESSION_TIMEOUT_MS".into(), "6000".into()),
    ]
}

/// Run `mskflow ARGS` with `env`; returns (success, stdout + stderr).
pub fn mskflow_cli(env: &[(String, String)], args: &[&str]) -> TestResult<(bool, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_mskflow"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// A reader of the system's topics through the event-log port.
pub async fn kafka_reader(
    broker: &Broker,
    prefix: &str,
) -> TestResult<mskflow_eventlog_kafka::KafkaEventLog> {
    let mut options = mskflow_eventlog_kafka::Options::new(
        broker.bootstrap(),
        format!("test-reader-{}", uuid::Uuid::new_v4().simple()),
    );
    options.topics = mskflow_eventlog_kafka::TopicSettings {
        prefix: prefix.to_owned(),
        partitions: 3,
        replication: 1,
    };
    Ok(mskflow_eventlog_kafka::KafkaEventLog::open(options).await?)
}

/// The five services as processes over a broker: intake, `assessment`
/// instances of assessment, scheduling, outcomes and the gateway.
pub struct KafkaSystem {
    pub env: Vec<(String, String)>,
    pub http: String,
    pub intake_grpc: String,
    pub assessment_grpc: Vec<String>,
    pub scheduling_grpc: String,
    pub outcomes_grpc: String,
    pub intake: Proc,
    pub assessment: Vec<Proc>,
    pub scheduling: Proc,
    pub outcomes: Proc,
    pub gateway: Proc,
}

impl KafkaSystem {
    /// Start every service in `dir` with `kafka_env` (the topics must
    /// exist) and wait until the gateway is ready.
    pub async fn start(
        dir: &Path,
        kafka_env: &[(String, String)],
        assessment: usize,
    ) -> TestResult<Self> {
        let intake_grpc = free_addr()?;
        let outcomes_grpc = free_addr()?;
        let assessment_grpc = (0..assessment)
            .map(|_| free_addr())
            .collect::<TestResult<Vec<_>>>()?;
        let scheduling_grpc = free_addr()?;
        let http = free_addr()?;
        let mut env = kafka_env.to_vec();
        env.extend(test_auth_env(dir)?.into_iter().map(|(k, v)| {
            // The gateway binary's own variables.
            let k = k
                .replace("MSKFLOW__GATEWAY__AUTH__MODE", "MSKFLOW_GATEWAY_AUTH_MODE")
                .replace(
                    "MSKFLOW__GATEWAY__AUTH__HS256_SECRET_FILE",
                    "MSKFLOW_GATEWAY_AUTH_HS256_SECRET_FILE",
                );
            (k, v)
        }));
        let ops = |a: &str| -> TestResult<Vec<String>> {
            Ok(vec![
                "--grpc-addr".into(),
                a.to_owned(),
                "--ops-addr".into(),
                free_addr()?,
            ])
        };
        let intake = spawn("intake", "mskflow-intake", dir, &env, &ops(&intake_grpc)?)?;
        let names = ["a", "b", "c", "d"];
        let assessment = assessment_grpc
            .iter()
            .enumerate()
            .map(|(n, a)| {
                spawn(
                    &format!("assessment-{}", names.get(n).copied().unwrap_or("x")),
                    "mskflow-assessment",
                    dir,
                    &env,
                    &ops(a)?,
                )
            })
            .collect::<TestResult<Vec<_>>>()?;
        let scheduling = spawn(
            "scheduling",
            "mskflow-scheduling",
            dir,
            &env,
            &ops(&scheduling_grpc)?,
        )?;
        let outcomes = spawn(
            "outcomes",
            "mskflow-outcomes",
            dir,
            &env,
            &ops(&outcomes_grpc)?,
        )?;
        let gateway = spawn(
            "gateway",
            "mskflow-gateway",
            dir,
            &env,
            &[
                "--http-addr".into(),
                http.clone(),
                "--intake-url".into(),
                format!("http://{intake_grpc}"),
                "--outcomes-url".into(),
                format!("http://{outcomes_grpc}"),
            ],
        )?;
        let mut system = Self {
            env,
            http,
            intake_grpc,
            assessment_grpc,
            scheduling_grpc,
            outcomes_grpc,
            intake,
            assessment,
            scheduling,
            outcomes,
            gateway,
        };
        let url = format!("http://{}/health/ready", system.http);
        let mut procs: Vec<&mut Proc> = system.procs_mut();
        wait_http_ready(&url, &mut procs).await?;
        Ok(system)
    }

    /// The gateway's FHIR base.
    pub fn app(&self) -> App {
        App::remote(format!("http://{}/fhir", self.http))
    }

    pub fn procs_mut(&mut self) -> Vec<&mut Proc> {
        let mut procs = vec![&mut self.intake];
        procs.extend(self.assessment.iter_mut());
        procs.push(&mut self.scheduling);
        procs.push(&mut self.outcomes);
        procs.push(&mut self.gateway);
        procs
    }

    /// Fail with the exit status and log of any process that has exited.
    pub fn check_alive(&mut self) -> TestResult {
        for p in self.procs_mut() {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Every process's log, for a failure message.
    pub fn logs(&mut self) -> String {
        self.procs_mut()
            .iter()
            .map(|p| format!("--- {}\n{}", p.name, p.output()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
