//! Shared set-up of the cross-service tests: the whole system on port 0 with
//! a fresh store, and helpers to build referral messages.

#![allow(dead_code, reason = "each test binary uses a subset")]

pub mod browser;
pub mod fhir_validator;
pub mod kafka;
pub mod receiver;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use uuid::Uuid;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A running system on a temporary data directory.
pub struct App {
    pub running: Option<mskflow::Running>,
    pub base: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Start the all-in-one system on a fresh store.
pub async fn spawn_app() -> TestResult<App> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let mut app = spawn_app_in(&dir).await?;
    app._tmp = Some(tmp);
    Ok(app)
}

/// The HS256 secret every test system accepts tokens from.
pub const TEST_SECRET: &[u8] = b"mskflow-test-secret-0123456789abcdef";
/// ODS code of the test token (the sender in the referral fixtures).
pub const TEST_ODS: &str = "A81001";
/// Client id of the test token.
pub const TEST_CLIENT: &str = "mskflow-tests";

/// Write the test secret into `dir` and return its path.
pub fn test_secret_file(dir: &Path) -> TestResult<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("test-hs256.secret");
    std::fs::write(&path, TEST_SECRET)?;
    Ok(path)
}

/// Point `config` at the test secret (JWT mode), so [`client`] is accepted.
pub fn use_test_auth(config: &mut mskflow::Config) -> TestResult {
    config.gateway.auth.mode = mskflow_gateway::auth::Mode::Jwt;
    config.gateway.auth.hs256_secret_file = Some(test_secret_file(&config.data_dir)?);
    Ok(())
}

/// The same, for a `mskflow run` child process (environment variables).
pub fn test_auth_env(dir: &Path) -> TestResult<Vec<(String, String)>> {
    Ok(vec![
        ("MSKFLOW__GATEWAY__AUTH__MODE".to_owned(), "jwt".to_owned()),
        (
            "MSKFLOW__GATEWAY__AUTH__HS256_SECRET_FILE".to_owned(),
            test_secret_file(dir)?.display().to_string(),
        ),
    ])
}

/// A token signed with the test secret.
pub fn token_for(claims: &mskflow_gateway::auth::TokenClaims) -> TestResult<String> {
    Ok(mskflow_gateway::auth::sign_hs256(TEST_SECRET, claims)?)
}

/// Claims of a token for `ods` with `scope`, valid for an hour.
pub fn claims(client: &str, ods: &str, scope: &str) -> mskflow_gateway::auth::TokenClaims {
    mskflow_gateway::auth::TokenClaims::new(client, ods, scope, 3600)
}

/// The token [`client`] sends: organisation [`TEST_ODS`], every system
/// scope, provider role (may read every referral).
pub fn test_token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let mut c = claims(TEST_CLIENT, TEST_ODS, "system/*.*");
            c.role = Some("provider".to_owned());
            token_for(&c).unwrap_or_default()
        })
        .clone()
}

/// Start the all-in-one system on a fresh store, with `adjust` applied to the
/// configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut mskflow::Config)) -> TestResult<App> {
    let tmp = tempfile::tempdir()?;
    let mut config = mskflow::Config::ephemeral(tmp.path());
    use_test_auth(&mut config)?;
    adjust(&mut config);
    let running = mskflow::start(&config)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let base = format!("http://{}/fhir", running.gateway_addr);
    Ok(App {
        running: Some(running),
        base,
        dir: tmp.path().to_path_buf(),
        _tmp: Some(tmp),
    })
}

impl App {
    /// A system running elsewhere (other processes), reached at `base`
    /// (`http://host:port/fhir`).
    pub fn remote(base: String) -> App {
        App {
            running: None,
            base,
            dir: PathBuf::new(),
            _tmp: None,
        }
    }
}

/// Start the all-in-one system on an existing data directory.
pub async fn spawn_app_in(dir: &Path) -> TestResult<App> {
    spawn_app_in_with(dir, |_| {}).await
}

/// Start the all-in-one system on an existing data directory, with `adjust`
/// applied to the configuration (a restart with the same settings).
pub async fn spawn_app_in_with(
    dir: &Path,
    adjust: impl FnOnce(&mut mskflow::Config),
) -> TestResult<App> {
    let mut config = mskflow::Config::ephemeral(dir);
    use_test_auth(&mut config)?;
    adjust(&mut config);
    let running = mskflow::start(&config)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let base = format!("http://{}/fhir", running.gateway_addr);
    Ok(App {
        running: Some(running),
        base,
        dir: dir.to_path_buf(),
        _tmp: None,
    })
}

impl App {
    pub async fn stop(&mut self) -> TestResult {
        if let Some(r) = self.running.take() {
            r.stop().await.map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }

    pub fn log(&self) -> TestResult<std::sync::Arc<dyn mskflow_eventlog::EventLog>> {
        Ok(self.running.as_ref().ok_or("not running")?.log.clone())
    }

    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        request_id: Uuid,
    ) -> TestResult<reqwest::Response> {
        Ok(client()
            .post(format!("{}/{path}", self.base))
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-Id", request_id.to_string())
            .header("X-Correlation-Id", Uuid::new_v4().to_string())
            .body(body.to_string())
            .send()
            .await?)
    }

    pub async fn post_message(&self, body: &Value) -> TestResult<reqwest::Response> {
        self.post("$process-message", body, Uuid::new_v4()).await
    }

    pub async fn get(&self, path: &str) -> TestResult<reqwest::Response> {
        Ok(client().get(format!("{}/{path}", self.base)).send().await?)
    }

    pub async fn get_json(&self, path: &str) -> TestResult<(u16, Value)> {
        let res = self.get(path).await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await?))
    }

    /// Every event in the log, in order.
    pub async fn all_events(&self) -> TestResult<Vec<mskflow_eventlog::Envelope>> {
        all_events(self.log()?.as_ref()).await
    }
}

/// Every event of `log`, in order, read by a new subscriber from the start.
pub async fn all_events(
    log: &dyn mskflow_eventlog::EventLog,
) -> TestResult<Vec<mskflow_eventlog::Envelope>> {
    let mut sub = log
        .subscribe(
            &format!("test-{}", Uuid::new_v4()),
            mskflow_eventlog::StartFrom::Beginning,
        )
        .await?;
    let mut all = Vec::new();
    loop {
        let batch = sub.poll_batch(1000).await?;
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
}

/// An HTTP client that sends the test bearer token on every request.
pub fn client() -> reqwest::Client {
    client_with_token(&test_token())
}

/// An HTTP client that sends `token` on every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// An HTTP client without a token.
pub fn anonymous_client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> TestResult<Value> {
    let path = repo_root().join("crates/fhir/tests/fixtures").join(name);
    Ok(serde_json::from_str(&std::fs::read_to_string(&path)?)?)
}

/// The canonical referral message with a fresh ServiceRequest identifier, so
/// every call is a new referral.
pub fn new_referral_message() -> TestResult<Value> {
    let mut bundle = fixture("referral-message.json")?;
    let value = Uuid::new_v4().to_string();
    with_resource(&mut bundle, "ServiceRequest", |sr| {
        sr["identifier"] =
            json!([{"system": "https://fhir.example-gp.nhs.uk/Id/referral", "value": value}]);
    })?;
    Ok(bundle)
}

/// Mutate the first entry of `resource_type` in a Bundle.
pub fn with_resource(
    bundle: &mut Value,
    resource_type: &str,
    f: impl FnOnce(&mut Value),
) -> TestResult {
    let entries = bundle["entry"]
        .as_array_mut()
        .ok_or("bundle has no entries")?;
    let resource = entries
        .iter_mut()
        .map(|e| &mut e["resource"])
        .find(|r| r["resourceType"] == resource_type)
        .ok_or_else(|| format!("bundle has no {resource_type}"))?;
    f(resource);
    Ok(())
}

/// Add a red-flag Observation entry to a referral Bundle.
pub fn add_red_flag(bundle: &mut Value, code: &str, present: bool) -> TestResult {
    let id = Uuid::new_v4();
    let entries = bundle["entry"]
        .as_array_mut()
        .ok_or("bundle has no entries")?;
    entries.push(json!({
        "fullUrl": format!("urn:uuid:{id}"),
        "resource": {
            "resourceType": "Observation",
            "id": id.to_string(),
            "status": "final",
            "code": {"coding": [{"system": mskflow_events::RED_FLAG_SYSTEM, "code": code}]},
            "valueBoolean": present
        }
    }));
    Ok(())
}

/// The issue codes of an OperationOutcome.
pub fn issue_codes(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The entries of a Bundle of the given resource type.
pub fn entries_of<'a>(bundle: &'a Value, resource_type: &str) -> Vec<&'a Value> {
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| &e["resource"])
                .filter(|r| r["resourceType"] == resource_type)
                .collect()
        })
        .unwrap_or_default()
}

/// The same referral as an update message (a new MessageHeader id) with the
/// ServiceRequest set to `status` (`revoked` / `entered-in-error` cancel).
pub fn as_update(bundle: &Value, status: &str) -> TestResult<Value> {
    let mut update = bundle.clone();
    with_resource(&mut update, "MessageHeader", |h| {
        h["id"] = json!(Uuid::new_v4().to_string());
        h["reason"]["coding"][0]["code"] = json!("update");
        h["reason"]["coding"][0]["display"] = json!("Update");
    })?;
    with_resource(&mut update, "ServiceRequest", |sr| {
        sr["status"] = json!(status)
    })?;
    Ok(update)
}

fn load_schema(path: &str) -> TestResult<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        repo_root().join(path),
    )?)?)
}

/// Check every event in the log against the envelope schema and its event
/// type's schema in `schemas/`; return the event types seen.
pub async fn check_event_schemas(app: &App) -> TestResult<std::collections::BTreeSet<String>> {
    let envelope_schema =
        jsonschema::validator_for(&load_schema("schemas/envelope.v1.schema.json")?)?;
    let mut validators = std::collections::HashMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for e in app.all_events().await? {
        let envelope = serde_json::to_value(&e)?;
        let errors: Vec<String> = envelope_schema
            .iter_errors(&envelope)
            .map(|err| err.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "envelope of {} breaks its schema: {errors:?}",
            e.event_type
        );
        let key = format!(
            "schemas/events/{}.v{}.schema.json",
            e.event_type, e.schema_version
        );
        if !validators.contains_key(&key) {
            validators.insert(key.clone(), jsonschema::validator_for(&load_schema(&key)?)?);
        }
        let validator = validators.get(&key).ok_or("validator missing")?;
        let errors: Vec<String> = validator
            .iter_errors(&e.payload)
            .map(|err| err.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} breaks its schema: {errors:?}",
            e.event_type
        );
        seen.insert(e.event_type.clone());
    }
    Ok(seen)
}

/// Poll the Task until `check` holds (consumers work asynchronously).
pub async fn task_when(
    app: &App,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> TestResult<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, task) = app.get_json(&format!("Task/{id}")).await?;
        if status == 200 && check(&task) {
            return Ok(task);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("Task never became {what}: {task}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The Task's business status code.
pub fn business(task: &Value) -> &str {
    task["businessStatus"]["coding"][0]["code"]
        .as_str()
        .unwrap_or_default()
}

/// Events on referral streams (what intake recorded); downstream services
/// append to their own streams asynchronously.
pub async fn intake_event_count(app: &App) -> TestResult<usize> {
    Ok(app
        .all_events()
        .await?
        .iter()
        .filter(|e| e.stream_id.starts_with("referral-"))
        .count())
}

/// `mskflow run` on `dir` as a child process: every listener on port 0 (so
/// nothing else on the machine can hold a port it needs), stdout and stderr
/// piped, killed when dropped. Add the auth environment as the test needs.
pub fn all_in_one_command(dir: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mskflow"));
    command
        .args([
            "run",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .env("MSKFLOW__ASSESSMENT__GRPC_ADDR", "127.0.0.1:0")
        .env("MSKFLOW__SCHEDULING__GRPC_ADDR", "127.0.0.1:0")
        .env("MSKFLOW__OUTCOMES__GRPC_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Read a `mskflow run` child's stdout up to its `ready` line and return the
/// FHIR base URL it printed; the rest of stdout is drained in the background.
/// If the child exits first, the error carries its exit status.
pub async fn gateway_url(child: &mut tokio::process::Child) -> TestResult<String> {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().ok_or("stdout is not piped")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut base = None;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Some(line) = tokio::time::timeout_at(deadline, lines.next_line()).await?? {
        if let Some(url) = line.trim().strip_prefix("FHIR gateway:") {
            base = Some(url.trim().to_owned());
        }
        if line.trim() == "ready" {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match base {
        Some(base) => Ok(base),
        None => {
            let status =
                tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
            Err(format!("mskflow run printed no gateway URL (exit: {status:?})").into())
        }
    }
}

/// The headless browser the dashboard tests drive: `MSKFLOW_BROWSER`, or the
/// first of `chromium-headless-shell`, `chromium`, `google-chrome` on the
/// PATH (`make browser` installs one).
pub fn headless_browser() -> TestResult<PathBuf> {
    if let Some(path) = std::env::var_os("MSKFLOW_BROWSER") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium-headless-shell", "chromium", "google-chrome"] {
        if let Some(found) = std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
        {
            return Ok(found);
        }
    }
    Err(
        "no headless browser: run `make browser` (installs chromium-headless-shell) \
         or set MSKFLOW_BROWSER"
            .into(),
    )
}

/// Load `url` in the headless browser, let its scripts run, and return the
/// document as the browser then holds it. A browser that crashes (killed by
/// a signal, or a wrapper reporting one: exit status 128 and up) is started
/// again, twice at most: a crash says nothing about the page. Any other
/// failure is returned at once.
pub async fn rendered_dom(url: &str) -> TestResult<String> {
    use std::os::unix::process::ExitStatusExt as _;
    let mut crashes = Vec::new();
    loop {
        let profile = tempfile::tempdir()?;
        let output = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::process::Command::new(headless_browser()?)
                .arg("--headless")
                .arg("--no-sandbox")
                .arg("--disable-gpu")
                .arg("--no-first-run")
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg("--virtual-time-budget=15000")
                .arg("--dump-dom")
                .arg(url)
                .kill_on_drop(true)
                .output(),
        )
        .await??;
        if output.status.success() {
            return Ok(String::from_utf8(output.stdout)?);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let crashed =
            output.status.signal().is_some() || output.status.code().is_some_and(|c| c >= 128);
        if !crashed || crashes.len() == 2 {
            crashes.push(stderr);
            return Err(format!("the browser failed: {}", crashes.join("\n--- then ---\n")).into());
        }
        eprintln!("the browser crashed ({}); starting it again", output.status);
        crashes.push(stderr);
    }
}
