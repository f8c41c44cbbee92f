//! `tilebox cluster ...` (placeholder until the cluster commands land).

use std::process::ExitCode;

use clap::Subcommand;

use super::ApiArgs;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List clusters.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::List { api: _ } => Ok(ExitCode::SUCCESS),
    }
}
