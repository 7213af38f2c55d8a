//! The deployment files checked against the binaries they run.
//!
//! `deploy/compose.yaml` and every manifest in `deploy/k8s/` must parse, run
//! the image the compose file builds, start a binary of this workspace with
//! settings that binary accepts (`--help` lists each `[env: NAME`), listen on
//! the ports the containers declare, probe the health endpoints on the right
//! port, and point every Service and URL at a port something listens on.
//! Each problem names the file and the container.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The binaries of the workspace (all in the image's `/usr/local/bin`).
const BINARIES: [&str; 6] = [
    "mskflow",
    "mskflow-intake",
    "mskflow-assessment",
    "mskflow-scheduling",
    "mskflow-outcomes",
    "mskflow-gateway",
];

/// Images that are not ours and run no mskflow binary (compose only).
const INFRASTRUCTURE_IMAGES: [&str; 1] = ["apache/kafka:"];

/// URL settings that name the public address, not another service.
const PUBLIC_URLS: [&str; 1] = ["MSKFLOW_BASE_URL"];

/// The listening addresses a binary may have: its flag and what it serves.
const ROLES: [(&str, &str); 3] = [
    ("grpc", "--grpc-addr"),
    ("ops", "--ops-addr"),
    ("http", "--http-addr"),
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

// ---------------------------------------------------------------------------
// What each binary accepts, from its own `--help`.

/// One binary's (and subcommand's) options.
#[derive(Debug, Default, Clone)]
struct Help {
    /// Every `--flag`.
    flags: BTreeSet<String>,
    /// Every environment variable (`[env: NAME=`).
    env: BTreeSet<String>,
    /// The environment variable of each flag that has one.
    flag_env: BTreeMap<String, String>,
}

impl Help {
    fn parse(text: &str) -> Help {
        let mut help = Help::default();
        let mut current: Vec<String> = Vec::new();
        for line in text.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with('-') {
                current = trimmed
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                    .filter(|w| w.starts_with("--") && w.len() > 2)
                    .map(str::to_owned)
                    .collect();
                help.flags.extend(current.iter().cloned());
            }
            let mut rest = line;
            while let Some(i) = rest.find("[env: ") {
                rest = &rest[i + "[env: ".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                for flag in &current {
                    help.flag_env.insert(flag.clone(), name.clone());
                }
                help.env.insert(name);
            }
        }
        help
    }

    fn merge(&mut self, other: Help) {
        self.flags.extend(other.flags);
        self.env.extend(other.env);
        self.flag_env.extend(other.flag_env);
    }
}

/// The built binaries and their `--help`, read once each.
struct Binaries {
    dir: PathBuf,
    cache: HashMap<Vec<String>, Help>,
}

impl Binaries {
    fn new() -> TestResult<Binaries> {
        let dir = Path::new(env!("CARGO_BIN_EXE_mskflow"))
            .parent()
            .ok_or("no target directory")?
            .to_path_buf();
        for name in BINARIES {
            if !dir.join(name).exists() {
                return Err(format!(
                    "{} is not built: run `cargo build --workspace --bins` first",
                    dir.join(name).display()
                )
                .into());
            }
        }
        Ok(Binaries {
            dir,
            cache: HashMap::new(),
        })
    }

    /// The options of `binary` with `subcommands`: the union of the help of
    /// the binary and of each subcommand level (clap lists a flattened
    /// argument group on the level that declares it).
    fn help(&mut self, binary: &str, subcommands: &[String]) -> Result<Help, String> {
        let mut merged = Help::default();
        for depth in 0..=subcommands.len() {
            let mut key = vec![binary.to_owned()];
            key.extend(subcommands[..depth].iter().cloned());
            if let Some(h) = self.cache.get(&key) {
                merged.merge(h.clone());
                continue;
            }
            let out = Command::new(self.dir.join(binary))
                .args(&subcommands[..depth])
                .arg("--help")
                .env("COLUMNS", "500")
                .output()
                .map_err(|e| format!("running {binary} --help: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`{} --help` failed: {}",
                    key.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let help = Help::parse(&String::from_utf8_lossy(&out.stdout));
            self.cache.insert(key, help.clone());
            merged.merge(help);
        }
        Ok(merged)
    }
}

// ---------------------------------------------------------------------------
// One container, whether from compose or from a pod template.

#[derive(Debug, Clone)]
struct Probe {
    kind: &'static str,
    port: Option<u16>,
    path: String,
}

#[derive(Debug, Default)]
struct Container {
    /// `deploy/compose.yaml: service intake` and the like.
    place: String,
    image: String,
    argv: Vec<String>,
    /// Value `None`: set from a Secret or another reference.
    env: BTreeMap<String, Option<String>>,
    /// Declared container ports, with their names.
    ports: BTreeMap<u16, Option<String>>,
    probes: Vec<Probe>,
    /// Kubernetes requires liveness and readiness; compose checks readiness.
    needs_liveness: bool,
    mount_paths: Vec<String>,
}

/// A container's ports, with their names.
type Ports = BTreeMap<u16, Option<String>>;

/// Kubernetes labels or a selector.
type Labels = BTreeMap<String, String>;

/// Deployment files as (name, text).
type Files = Vec<(String, String)>;

/// Hosts a URL may name, with the ports they serve.
type Reachable = BTreeMap<String, BTreeSet<u16>>;

/// What a long-running container listens on, by role.
#[derive(Debug, Default)]
struct Listening {
    by_role: BTreeMap<&'static str, u16>,
}

impl Container {
    fn binary(&self) -> Option<&str> {
        let first = self.argv.first()?;
        Some(first.rsplit('/').next().unwrap_or(first))
    }

    fn subcommands(&self) -> Vec<String> {
        self.argv
            .iter()
            .skip(1)
            .take_while(|a| !a.starts_with('-'))
            .cloned()
            .collect()
    }

    /// The value of `--flag` in the arguments (`--flag v` or `--flag=v`).
    fn arg(&self, flag: &str) -> Option<String> {
        let mut it = self.argv.iter();
        while let Some(a) = it.next() {
            if a == flag {
                return it.next().cloned();
            }
            if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
                return Some(v.to_owned());
            }
        }
        None
    }

    /// Check the container against its binary; returns what it listens on.
    fn check(
        &self,
        image: &str,
        binaries: &mut Binaries,
        problems: &mut Vec<String>,
    ) -> Option<Listening> {
        let mut problem = |m: String| problems.push(format!("{}: {m}", self.place));
        if self.image != image {
            problem(format!(
                "image {:?}, expected {image:?} (the image deploy/compose.yaml builds)",
                self.image
            ));
        }
        let Some(binary) = self.binary() else {
            problem("no command: name the binary to run".to_owned());
            return None;
        };
        if !BINARIES.contains(&binary) {
            problem(format!(
                "command {binary:?} is not a binary of the workspace ({})",
                BINARIES.join(", ")
            ));
            return None;
        }
        let help = match binaries.help(binary, &self.subcommands()) {
            Ok(h) => h,
            Err(e) => {
                problem(e);
                return None;
            }
        };
        for name in self.env.keys().filter(|n| n.starts_with("MSKFLOW_")) {
            if !help.env.contains(name) {
                problem(format!(
                    "{name} is not a setting of `{}` (its --help lists no [env: {name}])",
                    self.argv.join(" ")
                ));
            }
        }
        for flag in self.argv.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            if !help.flags.contains(flag) {
                problem(format!("`{binary}` has no option {flag}"));
            }
        }

        // Listening addresses: every one the binary has must be set (the
        // defaults are loopback, unreachable from outside a container).
        let mut listening = Listening::default();
        for (role, flag) in ROLES {
            if !help.flags.contains(flag) {
                continue;
            }
            let env_name = help.flag_env.get(flag).cloned();
            let value = self.arg(flag).or_else(|| {
                env_name
                    .as_ref()
                    .and_then(|n| self.env.get(n).cloned().flatten())
            });
            let Some(value) = value else {
                problem(format!(
                    "{flag} / {} is not set: the default listens on loopback only",
                    env_name.as_deref().unwrap_or("(no env)")
                ));
                continue;
            };
            match value.parse::<SocketAddr>() {
                Ok(addr) => {
                    if !addr.ip().is_unspecified() {
                        problem(format!(
                            "{flag} {value}: listen on 0.0.0.0 inside a container"
                        ));
                    }
                    listening.by_role.insert(role, addr.port());
                }
                Err(e) => problem(format!("{flag} {value:?} is not an address: {e}")),
            }
        }

        if listening.by_role.is_empty() {
            return Some(listening);
        }
        let listen_ports: BTreeSet<u16> = listening.by_role.values().copied().collect();
        let declared: BTreeSet<u16> = self.ports.keys().copied().collect();
        if listen_ports != declared {
            problem(format!(
                "declares ports {declared:?} but the binary listens on {listen_ports:?} ({:?})",
                listening.by_role
            ));
        }

        // Health: on the operations port, or on the HTTP port of a binary
        // without one (the gateway).
        let health_port = listening
            .by_role
            .get("ops")
            .or_else(|| listening.by_role.get("http"))
            .copied();
        let mut wanted = vec![("readiness", "/health/ready")];
        if self.needs_liveness {
            wanted.push(("liveness", "/health/live"));
        }
        for (kind, path) in wanted {
            let Some(probe) = self.probes.iter().find(|p| p.kind == kind) else {
                problem(format!("no {kind} probe (GET {path})"));
                continue;
            };
            if probe.path != path {
                problem(format!(
                    "{kind} probe GET {:?}, expected {path}",
                    probe.path
                ));
            }
            if probe.port.is_none() || probe.port != health_port {
                problem(format!(
                    "{kind} probe on port {:?}, but the health endpoints are on {health_port:?}",
                    probe.port
                ));
            }
        }
        Some(listening)
    }

    /// Every `*_URL` setting (but the public address) names a host and a port that something serves.
    fn check_urls(&self, reachable: &Reachable, problems: &mut Vec<String>) {
        for (name, value) in &self.env {
            let service_url = name.ends_with("_URL") && !PUBLIC_URLS.contains(&name.as_str());
            let (Some(value), true) = (value, service_url) else {
                continue;
            };
            let Some((host, port)) = host_port(value) else {
                problems.push(format!("{}: {name}={value}: no host:port", self.place));
                continue;
            };
            let short = host.split('.').next().unwrap_or(&host).to_owned();
            match reachable.get(&short) {
                Some(ports) if ports.contains(&port) => {}
                Some(ports) => problems.push(format!(
                    "{}: {name}={value}: {short} serves ports {ports:?}, not {port}",
                    self.place
                )),
                None => problems.push(format!(
                    "{}: {name}={value}: no service named {short:?}",
                    self.place
                )),
            }
        }
    }

    /// Every `*_FILE` setting points into a mounted volume.
    fn check_files(&self, problems: &mut Vec<String>) {
        for (name, value) in &self.env {
            let (Some(value), true) = (value, name.ends_with("_FILE")) else {
                continue;
            };
            if !self
                .mount_paths
                .iter()
                .any(|m| Path::new(value).starts_with(m))
            {
                problems.push(format!(
                    "{}: {name}={value} is not inside a mounted volume ({:?})",
                    self.place, self.mount_paths
                ));
            }
        }
    }
}

/// `http://host:port/...` or `host:port`.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().filter_map(str_of).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn port_of(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_yaml(file: &str, text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| format!("{file}: document {} does not parse: {e}", i + 1))?;
        value
            .apply_merge()
            .map_err(|e| format!("{file}: document {}: merge keys: {e}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

// ---------------------------------------------------------------------------
// deploy/compose.yaml

/// What the compose file says, for the Kubernetes checks.
#[derive(Debug)]
struct ComposeFacts {
    image: String,
}

fn check_compose(
    text: &str,
    binaries: &mut Binaries,
    problems: &mut Vec<String>,
) -> Option<ComposeFacts> {
    const FILE: &str = "deploy/compose.yaml";
    let docs = match parse_yaml(FILE, text) {
        Ok(d) => d,
        Err(e) => {
            problems.push(e);
            return None;
        }
    };
    let [doc] = docs.as_slice() else {
        problems.push(format!(
            "{FILE}: expected one document, found {}",
            docs.len()
        ));
        return None;
    };
    let Some(services) = doc["services"].as_mapping() else {
        problems.push(format!("{FILE}: no services"));
        return None;
    };
    let services: BTreeMap<String, &Value> = services
        .iter()
        .filter_map(|(k, v)| Some((str_of(k)?, v)))
        .collect();

    // The image: what the services with `build:` build, from deploy/Dockerfile.
    let mut built = BTreeSet::new();
    for (name, svc) in &services {
        let build = &svc["build"];
        if build.is_null() {
            continue;
        }
        let context = str_of(&build["context"]).unwrap_or_else(|| ".".to_owned());
        let dockerfile = str_of(&build["dockerfile"]).unwrap_or_else(|| "Dockerfile".to_owned());
        let path = deploy_dir().join(&context).join(&dockerfile);
        if !path.is_file() {
            problems.push(format!(
                "{FILE}: service {name}: builds from {} which does not exist",
                path.display()
            ));
        }
        match str_of(&svc["image"]) {
            Some(image) => {
                built.insert(image);
            }
            None => problems.push(format!(
                "{FILE}: service {name}: `build:` without `image:` (tag it mskflow:VERSION)"
            )),
        }
    }
    let image = match built.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => one.clone(),
        other => {
            problems.push(format!(
                "{FILE}: expected the services to build one image, found {other:?}"
            ));
            return None;
        }
    };
    let expected_tag = format!("mskflow:{}", env!("CARGO_PKG_VERSION"));
    if image != expected_tag {
        problems.push(format!(
            "{FILE}: builds image {image:?}, expected {expected_tag:?} (the workspace version)"
        ));
    }

    // Containers.
    let mut containers = Vec::new();
    let mut reachable = Reachable::new();
    let mut kafka_brokers = 0usize;
    let mut one_shots = BTreeSet::new();
    for (name, svc) in &services {
        let svc_image = str_of(&svc["image"]).unwrap_or_default();
        let healthy_no_restart = str_of(&svc["restart"]).as_deref() == Some("no");
        if healthy_no_restart {
            one_shots.insert(name.clone());
        }
        if svc_image != image {
            if INFRASTRUCTURE_IMAGES
                .iter()
                .any(|p| svc_image.starts_with(p))
            {
                if svc_image.starts_with("apache/kafka:") && !healthy_no_restart {
                    kafka_brokers += 1;
                    reachable.insert(name.clone(), [9092].into());
                }
                continue;
            }
            problems.push(format!(
                "{FILE}: service {name}: image {svc_image:?} is neither {image:?} nor a known broker image"
            ));
            continue;
        }
        if !svc["entrypoint"].is_null() {
            problems.push(format!(
                "{FILE}: service {name}: sets an entrypoint; name the binary in `command`"
            ));
        }
        let mut env = BTreeMap::new();
        match &svc["environment"] {
            Value::Mapping(m) => {
                for (k, v) in m {
                    if let Some(k) = str_of(k) {
                        env.insert(k, str_of(v));
                    }
                }
            }
            Value::Sequence(items) => {
                for item in items.iter().filter_map(str_of) {
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    env.insert(k.to_owned(), Some(v.to_owned()));
                }
            }
            _ => {}
        }
        let mut ports = BTreeMap::new();
        for p in svc["expose"].as_sequence().into_iter().flatten() {
            if let Some(p) = str_of(p).and_then(|s| s.split('/').next()?.parse().ok()) {
                ports.insert(p, None);
            }
        }
        for p in svc["ports"].as_sequence().into_iter().flatten() {
            let target = match p {
                Value::Mapping(_) => port_of(&p["target"]),
                other => str_of(other).and_then(|s| {
                    let s = s.split('/').next()?.to_owned();
                    s.rsplit(':').next()?.parse().ok()
                }),
            };
            match target {
                Some(t) => {
                    ports.insert(t, None);
                }
                None => problems.push(format!("{FILE}: service {name}: port {p:?} unreadable")),
            }
        }
        let mut probes = Vec::new();
        let test = strings(&svc["healthcheck"]["test"]).join(" ");
        if let Some(i) = test.find("http://") {
            let url = test[i..].split_whitespace().next().unwrap_or_default();
            let path = url
                .split_once("://")
                .and_then(|(_, r)| r.find('/').map(|j| r[j..].to_owned()))
                .unwrap_or_default();
            probes.push(Probe {
                kind: "readiness",
                port: host_port(url).map(|(_, p)| p),
                path,
            });
        }
        // Compose secrets are files under /run/secrets (or their target).
        let mut mount_paths = Vec::new();
        for sec in svc["secrets"].as_sequence().into_iter().flatten() {
            let (source, target) = match sec {
                Value::Mapping(_) => (str_of(&sec["source"]), str_of(&sec["target"])),
                other => (str_of(other), None),
            };
            let Some(source) = source else {
                problems.push(format!("{FILE}: service {name}: secret {sec:?} unreadable"));
                continue;
            };
            if doc["secrets"][source.as_str()].is_null() {
                problems.push(format!(
                    "{FILE}: service {name}: secret {source} is not defined under top-level `secrets`"
                ));
            }
            let target = target.unwrap_or_else(|| source.clone());
            mount_paths.push(if target.starts_with('/') {
                target
            } else {
                format!("/run/secrets/{target}")
            });
        }
        let container = Container {
            place: format!("{FILE}: service {name}"),
            image: svc_image,
            argv: strings(&svc["command"]),
            env,
            ports,
            probes,
            needs_liveness: false,
            mount_paths,
        };
        reachable.insert(name.clone(), container.ports.keys().copied().collect());
        containers.push((name.clone(), container));
    }
    if kafka_brokers == 0 {
        problems.push(format!("{FILE}: no Kafka broker service"));
    }

    let mut topics_service = None;
    for (name, c) in &containers {
        let listening = c.check(&image, binaries, problems);
        c.check_urls(&reachable, problems);
        if let Some((host, _)) = c
            .env
            .get("MSKFLOW_KAFKA_BROKERS")
            .cloned()
            .flatten()
            .as_deref()
            .and_then(|b| host_port(b.split(',').next()?))
            && !reachable.contains_key(&host)
        {
            problems.push(format!(
                "{}: MSKFLOW_KAFKA_BROKERS names {host:?}, which is no service here",
                c.place
            ));
        }
        let partitions: Option<u64> = c
            .env
            .get("MSKFLOW_KAFKA_PARTITIONS")
            .cloned()
            .flatten()
            .and_then(|p| p.parse().ok());
        let replication: Option<usize> = c
            .env
            .get("MSKFLOW_KAFKA_REPLICATION")
            .cloned()
            .flatten()
            .and_then(|p| p.parse().ok());
        if replication.is_some_and(|r| r > kafka_brokers) {
            problems.push(format!(
                "{}: MSKFLOW_KAFKA_REPLICATION {replication:?} exceeds the {kafka_brokers} broker(s) here",
                c.place
            ));
        }
        if let Some(replicas) = services[name]["deploy"]["replicas"].as_u64()
            && partitions.is_some_and(|p| replicas > p)
        {
            problems.push(format!(
                "{}: {replicas} replicas but {partitions:?} partitions: the extra instances would idle",
                c.place
            ));
        }
        let is_topics = c.argv == ["mskflow", "topics", "create"];
        if is_topics {
            topics_service = Some(name.clone());
        }
        let long_running = listening.is_some_and(|l| !l.by_role.is_empty());
        if long_running && one_shots.contains(name) {
            problems.push(format!("{}: a server with restart \"no\"", c.place));
        }
        if c.binary() == Some("mskflow-gateway") {
            let mode = c.env.get("MSKFLOW_GATEWAY_AUTH_MODE").cloned().flatten();
            if mode.as_deref() != Some("dev") {
                problems.push(format!(
                    "{}: MSKFLOW_GATEWAY_AUTH_MODE {mode:?}: the compose file runs the dev mode",
                    c.place
                ));
            }
        }
    }

    // Start order: dependencies exist, conditions fit them, and every
    // server waits (directly or not) for the topic set.
    let Some(topics_service) = topics_service else {
        problems.push(format!("{FILE}: no service runs `mskflow topics create`"));
        return Some(ComposeFacts { image });
    };
    let depends = |name: &str| -> Vec<(String, Option<String>)> {
        match &services[name]["depends_on"] {
            Value::Mapping(m) => m
                .iter()
                .filter_map(|(k, v)| Some((str_of(k)?, str_of(&v["condition"]))))
                .collect(),
            Value::Sequence(s) => s.iter().filter_map(str_of).map(|k| (k, None)).collect(),
            _ => Vec::new(),
        }
    };
    for name in services.keys() {
        for (dep, condition) in depends(name) {
            let Some(target) = services.get(&dep) else {
                problems.push(format!(
                    "{FILE}: service {name}: depends on unknown service {dep}"
                ));
                continue;
            };
            let ok = match condition.as_deref() {
                Some("service_healthy") => !target["healthcheck"].is_null(),
                Some("service_completed_successfully") => one_shots.contains(&dep),
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "{FILE}: service {name}: depends on {dep} with condition {condition:?}, \
                     which does not fit it (service_healthy needs a healthcheck, \
                     service_completed_successfully a one-shot service)"
                ));
            }
        }
    }
    for (name, c) in &containers {
        if *name == topics_service || one_shots.contains(name) {
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut stack = vec![name.clone()];
        while let Some(n) = stack.pop() {
            if seen.insert(n.clone()) && services.contains_key(&n) {
                stack.extend(depends(&n).into_iter().map(|(d, _)| d));
            }
        }
        if !seen.contains(&topics_service) {
            problems.push(format!(
                "{}: starts without waiting for {topics_service} (`mskflow topics create`)",
                c.place
            ));
        }
    }
    Some(ComposeFacts { image })
}

// ---------------------------------------------------------------------------
// deploy/k8s/

/// The manifests every deployment needs.
const K8S_FILES: [&str; 9] = [
    "namespace.yaml",
    "configmap.yaml",
    "secret-example.yaml",
    "topics-job.yaml",
    "intake.yaml",
    "assessment.yaml",
    "scheduling.yaml",
    "outcomes.yaml",
    "gateway.yaml",
];

struct Object {
    file: String,
    kind: String,
    name: String,
    value: Value,
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((str_of(k)?, str_of(v)?)))
        .collect()
}

fn check_k8s(
    files: &[(String, String)],
    image: &str,
    binaries: &mut Binaries,
    problems: &mut Vec<String>,
) {
    let mut objects = Vec::new();
    for (file, text) in files {
        match parse_yaml(file, text) {
            Ok(docs) => {
                for value in docs {
                    let kind = str_of(&value["kind"]).unwrap_or_default();
                    let name = str_of(&value["metadata"]["name"]).unwrap_or_default();
                    if kind.is_empty() || name.is_empty() || value["apiVersion"].is_null() {
                        problems.push(format!(
                            "{file}: a document without apiVersion, kind or metadata.name"
                        ));
                        continue;
                    }
                    objects.push(Object {
                        file: file.clone(),
                        kind,
                        name,
                        value,
                    });
                }
            }
            Err(e) => problems.push(e),
        }
    }
    let of_kind = |kind: &'static str| objects.iter().filter(move |o| o.kind == kind);

    let namespaces: Vec<&Object> = of_kind("Namespace").collect();
    let [namespace] = namespaces.as_slice() else {
        problems.push(format!(
            "deploy/k8s: expected one Namespace, found {}",
            namespaces.len()
        ));
        return;
    };
    for o in objects.iter().filter(|o| o.kind != "Namespace") {
        let ns = str_of(&o.value["metadata"]["namespace"]);
        if ns.as_deref() != Some(namespace.name.as_str()) {
            problems.push(format!(
                "{}: {} {} in namespace {ns:?}, expected {:?}",
                o.file, o.kind, o.name, namespace.name
            ));
        }
    }

    let data_keys = |o: &Object| -> BTreeMap<String, Option<String>> {
        ["data", "stringData"]
            .iter()
            .flat_map(|d| o.value[*d].as_mapping().into_iter().flatten())
            .filter_map(|(k, v)| Some((str_of(k)?, str_of(v))))
            .collect()
    };
    let config_maps: BTreeMap<String, BTreeMap<String, Option<String>>> = of_kind("ConfigMap")
        .map(|o| (o.name.clone(), data_keys(o)))
        .collect();
    let secrets: BTreeMap<String, BTreeSet<String>> = of_kind("Secret")
        .map(|o| (o.name.clone(), data_keys(o).into_keys().collect()))
        .collect();

    // Services: what URLs may reach.
    let mut reachable = Reachable::new();
    for s in of_kind("Service") {
        let ports = s.value["spec"]["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| port_of(&p["port"]))
            .collect();
        reachable.insert(s.name.clone(), ports);
    }

    let partitions: Option<u64> = config_maps
        .values()
        .find_map(|m| m.get("MSKFLOW_KAFKA_PARTITIONS").cloned().flatten())
        .and_then(|p| p.parse().ok());

    let mut topics_job = false;
    // Pod labels and container ports (by number and name) of each workload
    // (Deployment or StatefulSet).
    let workload = |kind: &str| kind == "Deployment" || kind == "StatefulSet";
    let mut pods: Vec<(String, Labels, Ports)> = Vec::new();
    for o in objects
        .iter()
        .filter(|o| workload(&o.kind) || o.kind == "Job")
    {
        let template = &o.value["spec"]["template"];
        let pod = &template["spec"];
        let volumes: BTreeMap<String, &Value> = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| Some((str_of(&v["name"])?, v)))
            .collect();
        // A StatefulSet's claim templates: one persistent volume per instance.
        let claims: BTreeSet<String> = o.value["spec"]["volumeClaimTemplates"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| str_of(&v["metadata"]["name"]))
            .collect();
        let mut pod_ports = BTreeMap::new();
        let Some(containers) = pod["containers"].as_sequence() else {
            problems.push(format!("{}: {} {}: no containers", o.file, o.kind, o.name));
            continue;
        };
        for c in containers {
            let cname = str_of(&c["name"]).unwrap_or_default();
            let place = format!("{}: {} {}, container {cname}", o.file, o.kind, o.name);
            let mut env = BTreeMap::new();
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                if let Some(cm) = str_of(&from["configMapRef"]["name"]) {
                    match config_maps.get(&cm) {
                        Some(keys) => env.extend(keys.clone()),
                        None => problems.push(format!("{place}: envFrom unknown ConfigMap {cm}")),
                    }
                }
                if let Some(sec) = str_of(&from["secretRef"]["name"]) {
                    match secrets.get(&sec) {
                        Some(keys) => env.extend(keys.iter().map(|k| (k.clone(), None))),
                        None => problems.push(format!("{place}: envFrom unknown Secret {sec}")),
                    }
                }
            }
            for e in c["env"].as_sequence().into_iter().flatten() {
                let Some(name) = str_of(&e["name"]) else {
                    continue;
                };
                let secret_ref = &e["valueFrom"]["secretKeyRef"];
                if let Some(sec) = str_of(&secret_ref["name"]) {
                    let key = str_of(&secret_ref["key"]).unwrap_or_default();
                    if !secrets.get(&sec).is_some_and(|k| k.contains(&key)) {
                        problems.push(format!("{place}: {name} refers to missing {sec}/{key}"));
                    }
                }
                env.insert(name, str_of(&e["value"]));
            }
            let mut ports = BTreeMap::new();
            for p in c["ports"].as_sequence().into_iter().flatten() {
                match port_of(&p["containerPort"]) {
                    Some(n) => {
                        ports.insert(n, str_of(&p["name"]));
                    }
                    None => problems.push(format!("{place}: a port without containerPort")),
                }
            }
            let resolve = |port: &Value| -> Option<u16> {
                match port {
                    Value::String(s) if s.parse::<u16>().is_err() => ports
                        .iter()
                        .find(|(_, n)| n.as_deref() == Some(s.as_str()))
                        .map(|(p, _)| *p),
                    other => port_of(other),
                }
            };
            let mut probes = Vec::new();
            for (kind, key) in [
                ("liveness", "livenessProbe"),
                ("readiness", "readinessProbe"),
            ] {
                let get = &c[key]["httpGet"];
                if !get.is_null() {
                    probes.push(Probe {
                        kind,
                        port: resolve(&get["port"]),
                        path: str_of(&get["path"]).unwrap_or_default(),
                    });
                }
            }
            let mut mount_paths = Vec::new();
            let mut persistent_paths = Vec::new();
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let (Some(vname), Some(path)) = (str_of(&m["name"]), str_of(&m["mountPath"]))
                else {
                    continue;
                };
                if claims.contains(&vname) {
                    persistent_paths.push(path.clone());
                    mount_paths.push(path);
                    continue;
                }
                match volumes.get(&vname) {
                    None => problems.push(format!("{place}: mounts unknown volume {vname}")),
                    Some(v) => {
                        if let Some(sec) = str_of(&v["secret"]["secretName"]) {
                            if !secrets.contains_key(&sec) {
                                problems.push(format!(
                                    "{place}: volume {vname} names Secret {sec}, defined nowhere in deploy/k8s"
                                ));
                            }
                            // A file read from the Secret is one of its keys.
                            for (ename, value) in &env {
                                if let Some(file) = value
                                    .as_deref()
                                    .and_then(|f| Path::new(f).strip_prefix(&path).ok())
                                    && !secrets.get(&sec).is_some_and(|k| {
                                        k.contains(&file.to_string_lossy().into_owned())
                                    })
                                {
                                    problems.push(format!(
                                        "{place}: {ename} reads {}, which Secret {sec} does not hold",
                                        file.display()
                                    ));
                                }
                            }
                        }
                    }
                }
                mount_paths.push(path);
            }
            for (what, key) in [("requests", "requests"), ("limits", "limits")] {
                for r in ["cpu", "memory"] {
                    if c["resources"][key][r].is_null() {
                        problems.push(format!("{place}: no resources.{what}.{r}"));
                    }
                }
            }
            let container = Container {
                place: place.clone(),
                image: str_of(&c["image"]).unwrap_or_default(),
                argv: strings(&c["command"])
                    .into_iter()
                    .chain(strings(&c["args"]))
                    .collect(),
                env,
                ports,
                probes,
                needs_liveness: workload(&o.kind),
                mount_paths,
            };
            // Every long-running instance keeps its read models and its
            // index of the topics on a persistent volume of its own.
            if workload(&o.kind) {
                check_state_dir(&place, &container.env, &persistent_paths, problems);
            }
            let listening = container.check(image, binaries, problems);
            container.check_urls(&reachable, problems);
            container.check_files(problems);
            if workload(&o.kind) && listening.is_some_and(|l| l.by_role.is_empty()) {
                problems.push(format!("{place}: a {} whose binary serves nothing", o.kind));
            }
            if o.kind == "Job" && container.argv == ["mskflow", "topics", "create"] {
                topics_job = true;
            }
            if container.binary() == Some("mskflow-gateway") {
                let mode = container
                    .env
                    .get("MSKFLOW_GATEWAY_AUTH_MODE")
                    .cloned()
                    .flatten();
                if mode.as_deref() != Some("jwt") {
                    problems.push(format!(
                        "{place}: MSKFLOW_GATEWAY_AUTH_MODE {mode:?}: a cluster runs jwt"
                    ));
                }
            }
            pod_ports.extend(container.ports);
        }
        if o.kind == "Job" {
            let restart = str_of(&pod["restartPolicy"]);
            if !matches!(restart.as_deref(), Some("Never" | "OnFailure")) {
                problems.push(format!(
                    "{}: Job {}: restartPolicy {restart:?} (a Job needs Never or OnFailure)",
                    o.file, o.name
                ));
            }
            continue;
        }
        let pod_labels = labels(&template["metadata"]["labels"]);
        let selector = labels(&o.value["spec"]["selector"]["matchLabels"]);
        if selector.is_empty() || selector.iter().any(|(k, v)| pod_labels.get(k) != Some(v)) {
            problems.push(format!(
                "{}: {} {}: selector {selector:?} does not match the pod labels {pod_labels:?}",
                o.file, o.kind, o.name
            ));
        }
        let replicas = o.value["spec"]["replicas"].as_u64().unwrap_or(1);
        if partitions.is_some_and(|p| replicas > p) {
            problems.push(format!(
                "{}: {} {}: {replicas} replicas but {partitions:?} partitions: the extra instances would idle",
                o.file, o.kind, o.name
            ));
        }
        if o.kind == "StatefulSet" && str_of(&o.value["spec"]["serviceName"]).is_none() {
            problems.push(format!(
                "{}: StatefulSet {}: no serviceName",
                o.file, o.name
            ));
        }
        pods.push((format!("{} {}", o.file, o.name), pod_labels, pod_ports));
    }
    if !topics_job {
        problems.push("deploy/k8s: no Job runs `mskflow topics create`".to_owned());
    }

    // Every Service selects one workload and targets its ports.
    for s in of_kind("Service") {
        let selector = labels(&s.value["spec"]["selector"]);
        let matching: Vec<_> = pods
            .iter()
            .filter(|(_, l, _)| {
                !selector.is_empty() && selector.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .collect();
        let [(_, _, ports)] = matching.as_slice() else {
            problems.push(format!(
                "{}: Service {}: selector {selector:?} matches {} workloads, expected 1",
                s.file,
                s.name,
                matching.len()
            ));
            continue;
        };
        for p in s.value["spec"]["ports"].as_sequence().into_iter().flatten() {
            let target = &p["targetPort"];
            let target = if target.is_null() { &p["port"] } else { target };
            let found = match target {
                Value::String(n) if n.parse::<u16>().is_err() => ports
                    .values()
                    .any(|name| name.as_deref() == Some(n.as_str())),
                other => port_of(other).is_some_and(|n| ports.contains_key(&n)),
            };
            if !found {
                problems.push(format!(
                    "{}: Service {}: targetPort {target:?} is no container port ({ports:?})",
                    s.file, s.name
                ));
            }
        }
    }
}

/// `MSKFLOW_STATE_DIR` of a Kubernetes workload's container must be set and
/// lie on one of `persistent` (mount paths of its volume claim templates):
/// on an `emptyDir`, or unset, every restart rebuilds the read models and
/// reads every topic from offset 0; on a volume the instances share, the
/// second instance is refused the file.
fn check_state_dir(
    place: &str,
    env: &BTreeMap<String, Option<String>>,
    persistent: &[String],
    problems: &mut Vec<String>,
) {
    match env.get("MSKFLOW_STATE_DIR").cloned().flatten() {
        None => problems.push(format!(
            "{place}: no MSKFLOW_STATE_DIR: every restart would rebuild its read models from offset 0"
        )),
        Some(dir) => {
            if !persistent.iter().any(|p| Path::new(&dir).starts_with(p)) {
                problems.push(format!(
                    "{place}: MSKFLOW_STATE_DIR {dir} is on no volume claim template (a persistent volume per instance)"
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The tests.

fn read_k8s() -> TestResult<Vec<(String, String)>> {
    let dir = deploy_dir().join("k8s");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let name = path
                .file_name()
                .ok_or("no file name")?
                .to_string_lossy()
                .into_owned();
            files.push((
                format!("deploy/k8s/{name}"),
                std::fs::read_to_string(&path)?,
            ));
        }
    }
    files.sort();
    Ok(files)
}

fn check_all(compose: &str, k8s: &[(String, String)], binaries: &mut Binaries) -> Vec<String> {
    let mut problems = Vec::new();
    match check_compose(compose, binaries, &mut problems) {
        Some(facts) => check_k8s(k8s, &facts.image, binaries, &mut problems),
        None => problems.push("deploy/k8s: not checked: the compose file names no image".into()),
    }
    problems
}

#[test]
fn compose_and_kubernetes_manifests_fit_the_binaries() -> TestResult {
    let mut binaries = Binaries::new()?;
    let compose = std::fs::read_to_string(deploy_dir().join("compose.yaml"))?;
    let k8s = read_k8s()?;
    for wanted in K8S_FILES {
        assert!(
            k8s.iter().any(|(f, _)| f.ends_with(&format!("/{wanted}"))),
            "deploy/k8s/{wanted} is missing"
        );
    }
    let problems = check_all(&compose, &k8s, &mut binaries);
    assert!(
        problems.is_empty(),
        "{} problem(s) in deploy/:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
    Ok(())
}

/// The image the manifests run holds every binary they name, and runs as an
/// unprivileged user.
#[test]
fn the_image_carries_every_binary() -> TestResult {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile"))?;
    let copy_loop = dockerfile
        .lines()
        .find(|l| l.trim_start().starts_with("&& for b in "))
        .ok_or("deploy/Dockerfile: no `for b in ...` loop copying the binaries")?;
    let list = copy_loop
        .split_once(" in ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(list, _)| list)
        .ok_or("deploy/Dockerfile: unreadable `for b in ...;` loop")?;
    let copied: BTreeSet<&str> = list.split_whitespace().collect();
    let expected: BTreeSet<&str> = BINARIES.into_iter().collect();
    assert_eq!(
        copied, expected,
        "deploy/Dockerfile copies {copied:?}, the workspace builds {expected:?}"
    );
    assert!(
        dockerfile.contains("cargo build --release --locked --workspace --bins"),
        "deploy/Dockerfile: the builder must build every binary of the workspace"
    );
    let runtime = dockerfile
        .split("AS runtime")
        .nth(1)
        .ok_or("deploy/Dockerfile: no runtime stage")?;
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .ok_or("deploy/Dockerfile: the runtime stage sets no USER")?;
    assert!(
        !user.trim().starts_with("root") && !user.trim().starts_with("0"),
        "deploy/Dockerfile: runs as {user:?}, expected an unprivileged user"
    );
    Ok(())
}

/// The checks catch what they are there for: each mistake below is one an
/// operator could make, and each must be reported against its file.
#[test]
fn mistakes_in_the_manifests_are_reported() -> TestResult {
    let mut binaries = Binaries::new()?;
    let compose = std::fs::read_to_string(deploy_dir().join("compose.yaml"))?;
    let k8s = read_k8s()?;

    let edit = |file: &str, from: &str, to: &str| -> Vec<(String, String)> {
        k8s.iter()
            .map(|(f, t)| {
                if f.ends_with(file) {
                    assert!(t.contains(from), "{f} no longer contains {from:?}");
                    (f.clone(), t.replacen(from, to, 1))
                } else {
                    (f.clone(), t.clone())
                }
            })
            .collect()
    };
    let cases: Vec<(&str, String, Files, &str)> = vec![
        (
            "a setting the binary does not have",
            compose.clone(),
            edit(
                "gateway.yaml",
                "MSKFLOW_GATEWAY_AUTH_ISSUER",
                "MSKFLOW_GATEWAY_ISSUER",
            ),
            "deploy/k8s/gateway.yaml: StatefulSet mskflow-gateway, container gateway: MSKFLOW_GATEWAY_ISSUER",
        ),
        (
            "a container port that differs from the listening address",
            compose.clone(),
            edit(
                "intake.yaml",
                "containerPort: 50051",
                "containerPort: 50061",
            ),
            "deploy/k8s/intake.yaml: StatefulSet mskflow-intake, container intake: declares ports",
        ),
        (
            "a probe on the wrong path",
            compose.clone(),
            edit("outcomes.yaml", "path: /health/ready", "path: /ready"),
            "deploy/k8s/outcomes.yaml: StatefulSet mskflow-outcomes, container outcomes: readiness probe",
        ),
        (
            "a Service aimed at a port nothing declares",
            compose.clone(),
            edit("scheduling.yaml", "targetPort: grpc", "targetPort: rpc"),
            "deploy/k8s/scheduling.yaml: Service scheduling: targetPort",
        ),
        (
            "a Deployment without limits",
            compose.clone(),
            edit("assessment.yaml", "limits:", "limitz:"),
            "deploy/k8s/assessment.yaml: StatefulSet mskflow-assessment, container assessment: no resources.limits",
        ),
        (
            "read models on a volume that does not outlive the pod",
            compose.clone(),
            edit(
                "scheduling.yaml",
                "value: /var/lib/mskflow/state",
                "value: /tmp/state",
            ),
            "deploy/k8s/scheduling.yaml: StatefulSet mskflow-scheduling, container scheduling: MSKFLOW_STATE_DIR /tmp/state is on no volume claim template",
        ),
        (
            "an instance without a state directory",
            compose.clone(),
            edit(
                "outcomes.yaml",
                "name: MSKFLOW_STATE_DIR",
                "name: MSKFLOW_STATE",
            ),
            "deploy/k8s/outcomes.yaml: StatefulSet mskflow-outcomes, container outcomes: no MSKFLOW_STATE_DIR",
        ),
        (
            "a JWKS file the Secret does not hold",
            compose.clone(),
            edit(
                "gateway.yaml",
                "/etc/mskflow/auth/jwks.json",
                "/etc/mskflow/auth/keys.json",
            ),
            "MSKFLOW_GATEWAY_AUTH_JWKS_FILE reads keys.json",
        ),
        (
            "a binary that does not exist",
            compose.replacen("[\"mskflow-scheduling\"]", "[\"mskflow-schedule\"]", 1),
            k8s.clone(),
            "deploy/compose.yaml: service scheduling: command \"mskflow-schedule\"",
        ),
        (
            "a gateway URL naming a port the service does not serve",
            compose.replacen("http://intake:50051", "http://intake:50055", 1),
            k8s.clone(),
            "deploy/compose.yaml: service gateway: MSKFLOW_INTAKE_URL=http://intake:50055",
        ),
        (
            "a service listening on loopback",
            compose.replacen("0.0.0.0:50054", "127.0.0.1:50054", 1),
            k8s.clone(),
            "deploy/compose.yaml: service outcomes: --grpc-addr 127.0.0.1:50054",
        ),
        (
            "a healthcheck on the gRPC port",
            compose.replacen(
                "http://127.0.0.1:8080/health/ready",
                "http://127.0.0.1:50051/health/ready",
                1,
            ),
            k8s.clone(),
            "deploy/compose.yaml: service gateway: readiness probe on port Some(50051)",
        ),
        (
            "a file that is not YAML",
            compose.clone(),
            edit("configmap.yaml", "data:", "data: [\n"),
            "deploy/k8s/configmap.yaml: document 1 does not parse",
        ),
    ];
    for (what, compose, k8s, expected) in cases {
        let problems = check_all(&compose, &k8s, &mut binaries);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected a problem containing {expected:?}, got:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}
