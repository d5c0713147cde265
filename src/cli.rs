//! The command line shared by the `rollguard` binary and its `kubectl rollguard` plugin form.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rollguard", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version of this build.
    Version,
}

/// Parses the arguments and runs the command; `main` of both binaries.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("rollguard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_subcommand_is_an_error() {
        let err = Cli::try_parse_from(["rollguard", "frobnicate"]).expect_err("unknown command");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }
}
