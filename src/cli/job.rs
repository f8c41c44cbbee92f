//! `tilebox job ...` (placeholder until the job commands land).

use std::process::ExitCode;

use clap::Subcommand;

use super::ApiArgs;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List jobs.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn run(command: JobCommand) -> anyhow::Result<ExitCode> {
    match command {
        JobCommand::List { api: _ } => Ok(ExitCode::SUCCESS),
    }
}
