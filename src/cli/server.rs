//! `tilebox server`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ServerArgs {}

pub async fn run(_arguments: ServerArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
