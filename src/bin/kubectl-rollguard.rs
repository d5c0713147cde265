//! `kubectl rollguard …`: kubectl runs any `kubectl-<name>` binary on PATH as a plugin.

fn main() -> anyhow::Result<()> {
    rollguard::cli::run()
}
