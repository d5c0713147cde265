//! The command line shared by the `rollguard` binary and its `kubectl rollguard` plugin form.

use std::path::PathBuf;

use anyhow::Context as _;
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
    /// Print every rollguard CRD as YAML, or write one file per CRD into directories.
    Crds {
        /// Write `<crd name>.yaml` files here instead of printing a multi-document stream.
        /// Repeat to fill several directories (the repository keeps `crds/` and the chart's copy).
        #[arg(long)]
        dir: Vec<PathBuf>,
    },
}

/// Parses the arguments and runs the command; `main` of both binaries.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("rollguard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Crds { dir } => print_crds(dir),
    }
}

fn print_crds(dirs: Vec<PathBuf>) -> anyhow::Result<()> {
    let crds = crate::api::crds();
    if dirs.is_empty() {
        for crd in &crds {
            print!("---\n{}", crate::api::crd_yaml(crd)?);
        }
    }
    for dir in &dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for crd in &crds {
            let path = dir.join(crate::api::crd_file_name(crd));
            std::fs::write(&path, crate::api::crd_yaml(crd)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
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
