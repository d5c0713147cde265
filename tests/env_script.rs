//! `scripts/env` itself: it starts and stops exactly its own processes, and fails cleanly.
//! Each test runs a separate environment in a directory of its own.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The checkout under test. Read at run time: the cargo target dir is shared between
/// checkouts, so the compile-time path may name a clone that no longer exists.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

struct EnvDir(PathBuf);

impl EnvDir {
    fn new(name: &str) -> EnvDir {
        let dir = root()
            .join("target")
            .join(format!("env-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        EnvDir(dir)
    }

    fn run(&self, verb: &str, extra_env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(root().join("scripts/env"))
            .arg(verb)
            .env("ROLLGUARD_ENV_DIR", &self.0);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("running scripts/env")
    }

    /// Live (non-zombie) processes whose command line mentions this environment's directory.
    fn processes(&self) -> Vec<String> {
        let needle = self.0.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("reading /proc").flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("{}: {cmdline}", name.to_string_lossy()));
            }
        }
        found
    }

    fn recorded_pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.0.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }
}

impl Drop for EnvDir {
    fn drop(&mut self) {
        if !self.processes().is_empty() {
            let _ = self.run("down", &[]);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn is_running(pid: u32) -> bool {
    // A zombie has exited; it only waits for its parent to reap it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
#[ignore = "starts a whole environment; run by make test"]
fn up_then_down_leaves_no_process_behind() {
    let env = EnvDir::new("cycle");
    let up = env.run("up", &[]);
    assert!(up.status.success(), "up failed:\n{}", text(&up.stderr));
    let pids = env.recorded_pids();
    assert_eq!(
        pids.len(),
        8,
        "etcd, apiserver, controller-manager, scheduler, kwok, sim, prometheus, alertmanager"
    );
    assert!(pids.iter().all(|p| is_running(*p)));

    let env_sh = std::fs::read_to_string(env.0.join("env.sh")).expect("up writes env.sh");
    for var in [
        "KUBECONFIG=",
        "PROMETHEUS_URL=http://127.0.0.1:",
        "ALERTMANAGER_URL=http://127.0.0.1:",
        "ROLLGUARD_SIM_URL=http://127.0.0.1:",
    ] {
        assert!(
            env_sh.contains(&format!("export {var}")),
            "env.sh lacks {var}:\n{env_sh}"
        );
    }
    let status = env.run("status", &[]);
    assert!(status.status.success(), "{}", text(&status.stdout));
    assert_eq!(
        text(&status.stdout).matches(" running ").count(),
        8,
        "{}",
        text(&status.stdout)
    );

    // A second up is harmless: it reports the running environment and starts nothing.
    let again = env.run("up", &[]);
    assert!(again.status.success());
    assert!(
        text(&again.stderr).contains("already up"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(env.recorded_pids(), pids);

    let down = env.run("down", &[]);
    assert!(
        down.status.success(),
        "down failed:\n{}",
        text(&down.stderr)
    );
    let left: Vec<u32> = pids.iter().copied().filter(|p| is_running(*p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
    assert!(
        env.processes().is_empty(),
        "stray processes: {:?}",
        env.processes()
    );
    assert_eq!(
        env.run("status", &[]).status.code(),
        Some(3),
        "status after down says down"
    );
}

#[test]
#[ignore = "starts a whole environment; run by make test"]
fn a_taken_port_is_a_clear_error_and_starts_nothing() {
    let env = EnvDir::new("port");
    let taken = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = taken
        .local_addr()
        .expect("bound address")
        .port()
        .to_string();
    let up = env.run("up", &[("ROLLGUARD_PORT_PROMETHEUS", &port)]);
    assert!(!up.status.success());
    let stderr = text(&up.stderr);
    assert!(
        stderr.contains(&format!(
            "port {port} for prometheus (ROLLGUARD_PORT_PROMETHEUS) is already in use"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix: unset ROLLGUARD_PORT_PROMETHEUS"),
        "{stderr}"
    );
    assert!(
        env.processes().is_empty(),
        "stray processes: {:?}",
        env.processes()
    );
}

#[test]
#[ignore = "starts a whole environment; run by make test"]
fn a_component_failing_to_start_takes_the_started_ones_down() {
    let env = EnvDir::new("fail");
    // The simulator starts last, after the whole control plane, and refuses a negative rate.
    let up = env.run("up", &[("ROLLGUARD_SIM_RPS", "-1")]);
    assert!(!up.status.success());
    let stderr = text(&up.stderr);
    assert!(
        stderr.contains("FAILED at step \"wait for sim\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("--rps must be a non-negative number"),
        "the log tail is shown:\n{stderr}"
    );
    assert!(
        stderr.contains("no half-started servers remain"),
        "{stderr}"
    );
    assert!(
        env.processes().is_empty(),
        "stray processes: {:?}",
        env.processes()
    );
}

#[test]
#[ignore = "changes the machine's packages when they are missing; run by make test"]
fn a_missing_tool_names_itself_and_the_fix() {
    let env = EnvDir::new("tool");
    // Go is not in the system directories, so this PATH has no go.
    let build = env.run(
        "build",
        &[
            ("PATH", "/usr/bin:/bin"),
            ("ROLLGUARD_CACHE", &env.0.join("cache").to_string_lossy()),
        ],
    );
    assert!(!build.status.success());
    let stderr = text(&build.stderr);
    assert!(
        stderr.contains("required tool 'go' is not on PATH"),
        "{stderr}"
    );
    assert!(stderr.contains("fix: install Go"), "{stderr}");
}

#[test]
#[ignore = "changes the machine's packages when they are missing; run by make test"]
fn an_unreachable_module_proxy_stops_the_build_with_the_step_and_the_fix() {
    let env = EnvDir::new("proxy");
    let cache = env.0.join("cache");
    let build = env.run(
        "build",
        &[
            ("GOPROXY", "off"),
            ("ROLLGUARD_CACHE", &cache.to_string_lossy()),
        ],
    );
    assert!(!build.status.success());
    let stderr = text(&build.stderr);
    assert!(stderr.contains("FAILED at step \"etcd v"), "{stderr}");
    assert!(stderr.contains("check the Go module proxy"), "{stderr}");
    // Nothing half-built is taken for a cached binary.
    assert!(
        !cache
            .join(format!("etcd-v{}", versions("ETCD_VERSION")))
            .join("bin")
            .exists()
    );
}

#[test]
#[ignore = "changes the machine's packages when they are missing; run by make test"]
fn up_before_build_says_to_build_and_starts_nothing() {
    let env = EnvDir::new("nobuild");
    let up = env.run(
        "up",
        &[("ROLLGUARD_CACHE", &env.0.join("cache").to_string_lossy())],
    );
    assert!(!up.status.success());
    let stderr = text(&up.stderr);
    assert!(
        stderr.contains("is missing") && stderr.contains("fix: run 'scripts/env build' first"),
        "{stderr}"
    );
    assert!(
        env.processes().is_empty(),
        "stray processes: {:?}",
        env.processes()
    );
}

fn versions(key: &str) -> String {
    let text =
        std::fs::read_to_string(root().join("scripts/versions.env")).expect("scripts/versions.env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in scripts/versions.env"))
        .to_owned()
}
