//! Start-up: bad settings stop the controller and say what is wrong.

use std::process::{Command, Stdio};

use crate::common::*;

/// Bad settings stop the controller at once, naming the flag or the object: lease timings
/// that cannot work, and a controller namespace that does not exist (where the Lease lives).
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn bad_start_up_settings_stop_the_controller_naming_what_is_wrong() {
    let start = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rollguard"))
            .args(["controller", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run the controller");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = start(&["--lease-duration", "10s", "--renew-deadline", "10s"]);
    assert!(!ok);
    assert!(
        err.contains(
            "--renew-deadline 10s must be at least 1s and shorter than --lease-duration 10s"
        ),
        "{err}"
    );
    let missing = unique("rg-missing");
    let (ok, err) = start(&["--namespace", &missing]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the namespace {missing} for the leader Lease does not exist: create it"
        )) && !err.contains("ErrorResponse"),
        "one sentence, not the API error's debug form: {err}"
    );
    // A taken port: the controller does not run without /healthz and /metrics.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_rollguard"))
        .args(["controller", "--listen", &addr, "--namespace", "default"])
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run the controller");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot serve /healthz and /metrics on {addr}: another process holds the port"
        )),
        "{err}"
    );
    drop(taken);
}
