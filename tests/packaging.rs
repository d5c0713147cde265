//! The Dockerfile and `scripts/image` (the daemonless build CI runs) make the same image: the
//! same static build, files, user, entrypoint and command. The image itself is built and run by
//! the `scripts/image` tier of `make test`.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The value of `NAME=value` in a shell script.
fn shell_var(script: &str, name: &str) -> String {
    script
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("scripts/image sets no {name}"))
        .trim_matches('"')
        .to_owned()
}

#[test]
fn the_dockerfile_and_the_daemonless_build_make_the_same_image() {
    let docker = read("Dockerfile");
    let script = read("scripts/image");
    let user = shell_var(&script, "IMAGE_USER");
    let flags = shell_var(&script, "STATIC_FLAGS");
    let triple = shell_var(&script, "TRIPLE");
    assert!(docker.contains(&format!("\nUSER {user}\n")), "USER {user}");
    assert!(
        docker.contains(&format!("ENV RUSTFLAGS=\"{flags}\"")),
        "{flags}"
    );
    assert!(docker.contains(&format!("--target {triple} --bin rollguard")));
    assert!(
        docker.contains("\nFROM scratch\n"),
        "a final stage on an empty base"
    );
    assert!(
        docker.contains("ENTRYPOINT [\"/rollguard\"]")
            && script.contains("--entrypoint /rollguard")
    );
    assert!(docker.contains("CMD [\"controller\"]") && script.contains("--cmd controller"));
    assert!(docker.contains("strip --strip-all") && script.contains("strip --strip-all"));
    for file in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/passwd",
        "/etc/group",
    ] {
        assert!(
            docker.contains(&format!(" {file}\n")),
            "the Dockerfile copies {file}"
        );
        assert!(
            script.contains(&format!("\"{}\"", &file[1..]))
                || script.contains(&format!("(\"{}\"", &file[1..])),
            "scripts/image writes {file}"
        );
    }
    let (uid, gid) = user.split_once(':').expect("uid:gid");
    let passwd = format!("nobody:x:{uid}:{gid}:");
    assert!(
        docker.contains(&passwd) && script.contains(&passwd),
        "{passwd}"
    );
    // The chart runs the image as the same user.
    let values = read("charts/rollguard/values.yaml");
    assert!(
        values.contains(&format!("runAsUser: {uid}"))
            && values.contains(&format!("runAsGroup: {gid}"))
    );
}

#[test]
fn the_build_context_leaves_out_build_output_and_history() {
    let ignore = read(".dockerignore");
    for entry in ["target", "dist", ".git"] {
        assert!(ignore.lines().any(|l| l == entry), "{entry}");
    }
}
