fn main() -> anyhow::Result<()> {
    rollguard::cli::run()
}
