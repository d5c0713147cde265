//! The command line as a first-time user meets it, offline: clear errors and exit codes, shell
//! completion, and what the package ships with.

use std::process::Command;

fn rollguard(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollguard"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("runs rollguard");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An unreachable Prometheus stops the backtest with one error and exit 2, instead of a line
/// per evaluation.
#[test]
fn a_backtest_against_an_unreachable_prometheus_is_one_error() {
    // A port that nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let template = root().join("analysis-templates/istio.yaml");
    let (code, stdout, stderr) = rollguard(&[
        "backtest",
        "--prometheus",
        &format!("http://127.0.0.1:{port}"),
        "--template",
        &template.to_string_lossy(),
        "--rollout",
        "checkout",
        "--from",
        "now-10m",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--prometheus") && stderr.contains("cannot reach"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "nothing else printed: {stdout}");
}

#[test]
fn completion_scripts_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = rollguard(&["completion", shell]);
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            stdout.contains("rollback") && stdout.contains("history"),
            "{shell}"
        );
    }
}

/// The license Cargo.toml declares is the one the repository ships.
#[test]
fn the_license_file_is_the_declared_apache_2_0() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    assert!(cargo.contains(r#"license = "Apache-2.0""#));
    let license = std::fs::read_to_string(root().join("LICENSE")).expect("a LICENSE file");
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is the Apache License 2.0"
    );
    assert!(
        license.contains("END OF TERMS AND CONDITIONS"),
        "the whole text"
    );
}

/// A one-shot HTTP server on loopback that answers `status` to its first request.
fn answering(status: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        if let Ok((mut socket, _)) = listener.accept() {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request);
            let _ = write!(
                socket,
                "HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            );
        }
    });
    format!("http://{address}/healthz")
}

/// `rollguard probe`, what the chart's `helm test` runs from the controller's image: 0 on a
/// 2xx answer, 1 on another answer or none.
#[test]
fn probe_exits_zero_only_on_a_success_answer() {
    let (code, stdout, stderr) = rollguard(&["probe", &answering("200 OK")]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("200 OK"), "{stdout}");
    let (code, stdout, _) = rollguard(&["probe", &answering("503 Service Unavailable")]);
    assert_eq!(code, Some(1));
    assert!(stdout.contains("503"), "{stdout}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (code, _, stderr) = rollguard(&[
        "probe",
        &format!("http://127.0.0.1:{port}/healthz"),
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no answer within 2s"), "{stderr}");
    let (code, _, stderr) = rollguard(&["probe", "ftp://example"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("http:// or https://"), "{stderr}");
}

/// `scripts/krew-manifest`: one platform per release archive, with the archive's URL and its
/// exact sha256, the version of this build, and the plugin binary krew puts on PATH; a badly
/// named or incomplete archive is refused.
#[test]
fn the_krew_manifest_names_each_archive_with_its_sha256() {
    use sha2::Digest as _;
    let dir = std::env::temp_dir().join(format!("rollguard-krew-{}", std::process::id()));
    let stage = dir.join("stage");
    std::fs::create_dir_all(&stage).expect("dir");
    for f in ["kubectl-rollguard", "LICENSE"] {
        std::fs::write(stage.join(f), format!("{f}\n")).expect("write");
    }
    let version = env!("CARGO_PKG_VERSION");
    let archive = dir.join(format!("rollguard-v{version}-linux-amd64.tar.gz"));
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&stage)
        .arg("-czf")
        .arg(&archive)
        .args(["kubectl-rollguard", "LICENSE"])
        .status()
        .expect("tar runs");
    assert!(tar.success());
    let script = root().join("scripts/krew-manifest");
    let out = Command::new(&script)
        .args([
            "--version",
            version,
            "--base-url",
            "https://releases.example/v1",
            "--homepage",
            "https://rollguard.example",
        ])
        .arg(&archive)
        .output()
        .expect("the script runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value = serde_saphyr::from_str(&text).expect("YAML");
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "rollguard");
    assert_eq!(manifest["spec"]["version"], format!("v{version}"));
    let p = &manifest["spec"]["platforms"][0];
    assert_eq!(p["selector"]["matchLabels"]["os"], "linux");
    assert_eq!(p["bin"], "kubectl-rollguard");
    assert_eq!(
        p["uri"],
        format!("https://releases.example/v1/rollguard-v{version}-linux-amd64.tar.gz")
    );
    let bytes = std::fs::read(&archive).expect("archive");
    assert_eq!(p["sha256"], hex(&sha2::Sha256::digest(&bytes)));

    let wrong = dir.join("rollguard-linux.tar.gz");
    std::fs::copy(&archive, &wrong).expect("copy");
    let out = Command::new(&script)
        .args([
            "--version",
            version,
            "--base-url",
            "https://r.example",
            "--homepage",
            "https://h.example",
        ])
        .arg(&wrong)
        .output()
        .expect("the script runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("scripts/package"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
