# Sourced by the project's scripts: one place for the cache layout shared by build, test and demo.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ROLLGUARD_CACHE:-$HOME/.cache/rollguard}
# Cargo's build output is cached per toolchain, so a fresh clone does not recompile the
# dependency tree (kube, tokio, axum…) and a toolchain change starts a clean directory.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  rustc_version=$(rustc --version 2>/dev/null | awk '{print $2}')
  export CARGO_TARGET_DIR=$CACHE/cargo-target-${rustc_version:-unknown}
fi
