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
