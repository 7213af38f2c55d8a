//! A headless Chromium driven over the DevTools protocol, for the tests that
//! fill in and submit forms: the browser talks CDP on a pair of pipes
//! (`--remote-debugging-pipe`: commands on its fd 3, answers on fd 4, each
//! message a JSON text ended by a NUL byte), made as named pipes in a
//! temporary directory so no port and no extra crate is needed. Also runs
//! axe-core (installed by `make browser` into `~/.cache/mskflow/axe-core`,
//! or `MSKFLOW_AXE`) in the page.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

use super::{TestResult, headless_browser};

/// One browser with one page.
pub struct Browser {
    _child: tokio::process::Child,
    commands: pipe::Sender,
    answers: BufReader<pipe::Receiver>,
    session: String,
    next_id: u64,
    _dir: tempfile::TempDir,
}

/// The WCAG A and AA rule tags axe checks.
const WCAG_TAGS: &[&str] = &[
    "wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22a", "wcag22aa",
];

/// The axe-core script: `MSKFLOW_AXE`, or where `make browser` installs it.
pub fn axe_script() -> TestResult<String> {
    let path = match std::env::var_os("MSKFLOW_AXE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/mskflow/axe-core/node_modules/axe-core/axe.min.js"),
    };
    std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "axe-core not found at {} ({e}): run `make browser` (scripts/axe-core.sh install) or set MSKFLOW_AXE",
            path.display()
        )
        .into()
    })
}

impl Browser {
    /// Start the browser with an empty page `width` by `height` CSS pixels.
    pub async fn launch(width: u32, height: u32) -> TestResult<Browser> {
        let dir = tempfile::tempdir()?;
        let (to_browser, from_browser) = (dir.path().join("in"), dir.path().join("out"));
        for p in [&to_browser, &from_browser] {
            let status = std::process::Command::new("mkfifo").arg(p).status()?;
            if !status.success() {
                return Err("mkfifo failed".into());
            }
        }
        // Both ends opened read-write: neither open waits for the other side.
        let commands = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&to_browser)?;
        let answers = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&from_browser)?;
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<"$CDP_IN" 4>"$CDP_OUT""#)
            .arg(headless_browser()?)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                &format!("--user-data-dir={}", dir.path().join("profile").display()),
                &format!("--window-size={width},{height}"),
                "about:blank",
            ])
            .env("CDP_IN", &to_browser)
            .env("CDP_OUT", &from_browser)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut browser = Browser {
            _child: child,
            commands,
            answers: BufReader::new(answers),
            session: String::new(),
            next_id: 0,
            _dir: dir,
        };
        let target = browser
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or("no target id")?
            .to_owned();
        let attached = browser
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or("no session")?
            .to_owned();
        browser.call("Page.enable", json!({})).await?;
        browser.call("Network.enable", json!({})).await?;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
            )
            .await?;
        Ok(browser)
    }

    async fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> TestResult<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.commands.write_all(&bytes).await?;
        loop {
            let mut buf = Vec::new();
            let n = tokio::time::timeout(
                Duration::from_secs(60),
                self.answers.read_until(0, &mut buf),
            )
            .await??;
            if n == 0 {
                return Err("the browser closed its pipe".into());
            }
            buf.pop();
            let answer: Value = serde_json::from_slice(&buf)?;
            if answer["id"].as_u64() != Some(id) {
                continue; // an event, or another session's answer
            }
            if let Some(e) = answer.get("error") {
                return Err(format!("{method}: {e}").into());
            }
            return Ok(answer["result"].clone());
        }
    }

    /// A command to the page.
    pub async fn call(&mut self, method: &str, params: Value) -> TestResult<Value> {
        let session = self.session.clone();
        self.send(Some(&session), method, params).await
    }

    /// Evaluate `expression` in the page (promises awaited), returning its value.
    pub async fn eval(&mut self, expression: &str) -> TestResult<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("script failed: {e}").into());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Send these headers with every request of the page.
    pub async fn set_headers(&mut self, headers: Value) -> TestResult {
        self.call("Network.setExtraHTTPHeaders", json!({"headers": headers}))
            .await?;
        Ok(())
    }

    /// Load `url` and wait until the page has loaded.
    pub async fn goto(&mut self, url: &str) -> TestResult {
        self.eval("window.__mskflowLeft = true").await?;
        self.call("Page.navigate", json!({"url": url})).await?;
        self.wait_for_new_page().await
    }

    /// Run `script` (which navigates: a click, a form submit) and wait for
    /// the next page.
    pub async fn navigate_by(&mut self, script: &str) -> TestResult {
        self.eval(&format!("window.__mskflowLeft = true; {script}; true"))
            .await?;
        self.wait_for_new_page().await
    }

    async fn wait_for_new_page(&mut self) -> TestResult {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let loaded = self
                .eval("window.__mskflowLeft === undefined && document.readyState === 'complete'")
                .await
                .unwrap_or(Value::Bool(false));
            if loaded == Value::Bool(true) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("the next page did not load".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page's HTML as the browser holds it.
    pub async fn html(&mut self) -> TestResult<String> {
        Ok(self
            .eval("document.documentElement.outerHTML")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Fill the current page's form: text inputs by name, radios and
    /// checkboxes by name and value.
    pub async fn fill(&mut self, fields: &[(&str, &str)]) -> TestResult {
        let fields = serde_json::to_string(fields)?;
        let missing = self
            .eval(&format!(
                r#"(() => {{
                    const missing = [];
                    for (const [name, value] of {fields}) {{
                        const all = [...document.getElementsByName(name)];
                        const choice = all.find(e => (e.type === 'radio' || e.type === 'checkbox') && e.value === value);
                        if (choice) {{ choice.click(); continue; }}
                        const el = all.find(e => e.type !== 'hidden' && e.type !== 'radio' && e.type !== 'checkbox');
                        if (!el) {{ missing.push(name); continue; }}
                        el.focus();
                        el.value = value;
                        el.dispatchEvent(new Event('input', {{bubbles: true}}));
                        el.dispatchEvent(new Event('change', {{bubbles: true}}));
                    }}
                    return missing;
                }})()"#
            ))
            .await?;
        match missing.as_array() {
            Some(m) if !m.is_empty() => Err(format!("no field for {m:?}").into()),
            _ => Ok(()),
        }
    }

    /// Submit the page's form with its button, as a person would.
    pub async fn submit(&mut self) -> TestResult {
        self.navigate_by("document.querySelector('form button[type=submit]').click()")
            .await
    }

    /// axe-core's WCAG 2.2 A/AA violations on the current page (rule id,
    /// impact, the elements).
    pub async fn axe_violations(&mut self) -> TestResult<Vec<Value>> {
        let loaded = self.eval("typeof window.axe === 'object'").await?;
        if loaded != Value::Bool(true) {
            let script = axe_script()?;
            self.eval(&script).await?;
        }
        let tags = serde_json::to_string(WCAG_TAGS)?;
        let v = self
            .eval(&format!(
                "axe.run(document, {{runOnly: {{type: 'tag', values: {tags}}}, resultTypes: ['violations']}})
                   .then(r => ({{passes: r.passes.length, violations: r.violations.map(v => ({{id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' '))}}))}}))"
            ))
            .await?;
        // A run that checked nothing would find nothing: it must have passed rules.
        if v["passes"].as_u64().unwrap_or_default() == 0 {
            return Err(format!("axe-core checked no rule: {v}").into());
        }
        Ok(v["violations"].as_array().cloned().unwrap_or_default())
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> TestResult<Vec<u8>> {
        use base64::Engine as _;
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &metrics["cssContentSize"];
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
                }),
            )
            .await?;
        Ok(base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().ok_or("no screenshot")?)?)
    }

    /// The browser's cookies for `url`, as a `Cookie` header value.
    pub async fn cookie_header(&mut self, url: &str) -> TestResult<String> {
        let r = self
            .call("Network.getCookies", json!({"urls": [url]}))
            .await?;
        Ok(r["cookies"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        format!(
                            "{}={}",
                            c["name"].as_str().unwrap_or_default(),
                            c["value"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default())
    }
}
