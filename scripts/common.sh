# Sourced by the project's scripts: one place for the cache layout shared by build, test and demo.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ROLLGUARD_CACHE:-$HOME/.cache/rollguard}
# Cargo's build output is cached per toolchain, so a fresh clone does not recompile the
# dependency tree (kube, tokio, axum…) and a toolchain change starts a clean directory.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  rustc_version=$(rustc --version 2>/dev/null | awk '{print $2}')
  export CARGO_TARGET_DIR=$CACHE/cargo-target-${rustc_version:-unknown}
  # Cargo names a workspace crate's artifacts the same in every checkout, and judges them
  # fresh by file times. So a binary built in another clone could be reused here, with that
  # clone's code and paths. When the checkout changes, rebuild our own crates (deps stay warm).
  marker=$CARGO_TARGET_DIR/.rollguard-checkout
  if [ "$(cat "$marker" 2>/dev/null)" != "$ROOT" ] && command -v cargo >/dev/null 2>&1; then
    if [ -d "$CARGO_TARGET_DIR" ]; then
      (cd "$ROOT" && cargo clean --quiet -p rollguard -p rollguard-sim 2>/dev/null) || true
    fi
    mkdir -p "$CARGO_TARGET_DIR" && printf '%s\n' "$ROOT" >"$marker"
  fi
fi

# Builds one binary of this checkout and prints its path as cargo reports it. Every script finds
# its binaries this way, so none runs a binary that another build (another checkout, an old
# `target/`) left behind.
#   cargo_bin PACKAGE BINARY
cargo_bin() {
  (cd "$ROOT" && cargo build --quiet -p "$1" --bin "$2" --message-format=json-render-diagnostics) |
    python3 -c '
import json, sys
want = sys.argv[1]
path = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == want:
        path = m["executable"]
if not path:
    sys.exit(f"cargo reported no executable named {want}")
print(path)' "$2"
}
