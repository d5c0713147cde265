//! Helpers for tests that run against the local environment (`scripts/env up`).
#![allow(dead_code)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde_json::{Value, json};

pub const NOT_UP: &str = "the local environment is not up: run `scripts/env up` and \
                          `source target/env/env.sh` (make test does both)";

pub fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set; {NOT_UP}"))
}

pub fn prometheus_url() -> String {
    env_var("PROMETHEUS_URL")
}

pub fn alertmanager_url() -> String {
    env_var("ALERTMANAGER_URL")
}

pub fn sim_url() -> String {
    env_var("ROLLGUARD_SIM_URL")
}

pub async fn client() -> Client {
    env_var("KUBECONFIG");
    Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("kube client: {e}; {NOT_UP}"))
}

pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:04x}",
        std::process::id() & 0xfff,
        nanos & 0xffff
    )
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace of its own for one test, deleted by `cleanup`.
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
}

impl TestNamespace {
    pub async fn create(prefix: &str) -> TestNamespace {
        let client = client().await;
        let name = unique(prefix);
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))
            .expect("static namespace manifest");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        // Pods are refused until the namespace's default ServiceAccount exists.
        let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        eventually(
            "the default ServiceAccount",
            Duration::from_secs(30),
            || async { sas.get_opt("default").await.ok().flatten() },
        )
        .await;
        TestNamespace { client, name }
    }

    pub async fn apply(&self, ar: &ApiResource, object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("manifest has a name")
            .to_owned();
        let obj: DynamicObject = serde_json::from_value(object).expect("manifest is an object");
        Api::<DynamicObject>::namespaced_with(self.client.clone(), &self.name, ar)
            .patch(
                &name,
                &PatchParams::apply("rollguard-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("applying {} {}/{name}: {e}", ar.kind, self.name));
    }

    pub async fn wait_deployment_ready(&self, name: &str, replicas: i32) -> Deployment {
        let api = Api::<Deployment>::namespaced(self.client.clone(), &self.name);
        eventually(
            &format!("deployment {name} to have {replicas} ready replicas"),
            Duration::from_secs(90),
            || async {
                let d = api.get(name).await.ok()?;
                let ready = d.status.as_ref()?.ready_replicas.unwrap_or(0);
                (ready == replicas).then_some(d)
            },
        )
        .await
    }

    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
    }
}

/// Applies the generated CRDs with server-side apply and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in rollguard::api::crds() {
        let name = crd.metadata.name.clone().expect("generated CRDs are named");
        crds.patch(
            &name,
            &PatchParams::apply("rollguard-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        eventually(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            || async {
                let c = crds.get(&name).await.ok()?;
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

pub fn core_resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// A Deployment of `replicas` pods labelled `app` and `track`, with an optional fault profile.
pub fn deployment(
    name: &str,
    app: &str,
    track: &str,
    replicas: i32,
    profile: Option<&str>,
) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(p) = profile {
        annotations.insert("sim.rollguard.dev/profile".into(), p.into());
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "track": track}},
            "template": {
                "metadata": {"labels": {"app": app, "track": track}, "annotations": annotations},
                "spec": {"containers": [{"name": app, "image": format!("registry.example/{app}@sha256:{}", "0".repeat(64))}]}
            }
        }
    })
}

pub fn service(name: &str, selector: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

/// An instant query; returns (labels, value) for each series.
pub async fn prometheus_query(query: &str) -> Vec<(Value, f64)> {
    let url = format!("{}/api/v1/query", prometheus_url());
    let body: Value = reqwest::Client::new()
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("decoding the answer to {query}: {e}"));
    assert_eq!(body["status"], "success", "query {query} failed: {body}");
    body["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .map(|s| {
                    let value = s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN);
                    (s["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The checkout under test, from the runtime CARGO_MANIFEST_DIR: the cargo target dir is shared
/// between checkouts, so the compile-time value can name another one.
pub fn repo_root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

/// What a command printed, and whether it succeeded.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a tool from the environment's PATH (kubectl, helm), optionally feeding `stdin`.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Run {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}; {NOT_UP}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {program}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like `run`, but a failure panics with the command and its output.
pub fn run_ok(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let r = run(program, args, stdin);
    assert!(
        r.ok,
        "{program} {} failed:\n{}{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// A server that accepts connections and never answers, for the lifetime of the test.
/// Bounded: it holds at most 32 connections and lets go after 30 s.
pub async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..32 {
            match listener.accept().await {
                Ok((socket, _)) => held.push(socket),
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    (address, task)
}

/// `rollguard controller` as a child process, killed (SIGKILL) when dropped.
pub struct ControllerProcess {
    child: std::process::Child,
    /// Where it serves /metrics, /readyz and /log-level.
    pub port: u16,
    pub log: String,
}

static LEASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl ControllerProcess {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn start(log: &str) -> ControllerProcess {
        ControllerProcess::launch(log, &[], &[])
    }

    pub fn start_with(log: &str, env: &[(&str, &str)]) -> ControllerProcess {
        ControllerProcess::launch(log, env, &[])
    }

    /// With extra flags. Unless they name a `--lease-name`, the process stands alone on a
    /// Lease of its own, so that a controller killed by an earlier test does not hold it.
    pub fn launch(log: &str, env: &[(&str, &str)], args: &[&str]) -> ControllerProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("controller log file");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let own_lease = format!(
            "rg-e2e-{}-{}",
            std::process::id(),
            LEASES.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rollguard"));
        command.args(["controller", "--listen", &listen]);
        if !args.contains(&"--namespace") {
            command.args(["--namespace", "default"]);
        }
        if !args.contains(&"--concurrency") {
            command.args(["--concurrency", "4"]);
        }
        if !args.contains(&"--lease-name") {
            command.args(["--lease-name", &own_lease]);
        }
        let child = command
            .args(args)
            .env("RUST_LOG", "info,rollguard=debug,kube=warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting rollguard controller");
        ControllerProcess {
            child,
            port,
            log: log.to_owned(),
        }
    }

    /// Its `/metrics` text, or an empty string while it does not answer.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sends a signal by name (STOP, CONT, TERM) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name} {}", self.child.id());
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit; its exit status.
    pub fn terminate(mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first sample in a Prometheus text exposition whose line starts with
/// `series` (name and labels as written); None when there is none.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request an [`HttpRecorder`] received, and the status it answered.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: std::collections::HashMap<String, String>,
    pub raw: Vec<u8>,
    pub body: Value,
    pub status: u16,
}

type Script = std::collections::HashMap<String, std::collections::VecDeque<u16>>;

/// A loopback HTTP server that records every POST and answers 202, or the statuses scripted
/// for a path (in order; `always` repeats one for good). It stands in for PagerDuty, Slack and
/// webhook receivers.
pub struct HttpRecorder {
    pub url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    script: std::sync::Arc<std::sync::Mutex<Script>>,
    always: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpRecorder {
    pub async fn start() -> HttpRecorder {
        HttpRecorder::start_on(0).await
    }

    /// On a given loopback port (a receiver that comes back where it was).
    pub async fn start_on(port: u16) -> HttpRecorder {
        use axum::extract::State;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the recorder");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = std::sync::Arc::new(std::sync::Mutex::new(Script::new()));
        let always = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        type Shared = (
            std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
            std::sync::Arc<std::sync::Mutex<Script>>,
            std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u16>>>,
        );
        async fn handle(
            State((requests, script, always)): State<Shared>,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let path = uri.path().to_owned();
            let status = always
                .lock()
                .expect("lock")
                .get(&path)
                .copied()
                .or_else(|| script.lock().expect("lock").get_mut(&path)?.pop_front())
                .unwrap_or(202);
            requests.lock().expect("lock").push(Recorded {
                path,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
                raw: body.to_vec(),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                status,
            });
            axum::http::StatusCode::from_u16(status).expect("status")
        }
        let app = axum::Router::new().fallback(handle).with_state((
            requests.clone(),
            script.clone(),
            always.clone(),
        ));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpRecorder {
            url,
            requests,
            script,
            always,
            task,
        }
    }

    /// Answer the next requests to `path` with `statuses`, then 202 again.
    pub fn respond(&self, path: &str, statuses: &[u16]) {
        self.script
            .lock()
            .expect("lock")
            .insert(path.to_owned(), statuses.iter().copied().collect());
    }

    /// Answer every request to `path` with `status`.
    pub fn always(&self, path: &str, status: u16) {
        self.always
            .lock()
            .expect("lock")
            .insert(path.to_owned(), status);
    }

    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for HttpRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
