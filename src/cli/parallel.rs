//! `tilebox parallel -n N -- CMD...`: runs N copies of a command, prefixes every output line
//! with the copy's index, forwards SIGINT/SIGTERM to all, and exits with the first non-zero
//! exit code (or 0).

use std::process::{ExitCode, Stdio};

use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::UserError;

#[derive(Debug, Args)]
pub struct ParallelArgs {
    /// How many copies to run.
    #[arg(short = 'n', default_value_t = 2)]
    count: usize,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn forward_lines(
    index: usize,
    stream: impl AsyncRead + Unpin + Send + 'static,
    to_stderr: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if to_stderr {
                eprintln!("[{index}] {line}");
            } else {
                println!("[{index}] {line}");
            }
        }
    })
}

pub async fn run(arguments: ParallelArgs) -> anyhow::Result<ExitCode> {
    if arguments.count == 0 {
        return Err(UserError::new("-n must be at least 1").into());
    }
    let (program, rest) = arguments
        .command
        .split_first()
        .ok_or_else(|| UserError::new("no command given after --"))?;
    let mut children = Vec::with_capacity(arguments.count);
    let mut forwarders = Vec::new();
    for index in 0..arguments.count {
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .env(crate::env::PARALLEL_INDEX, index.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| UserError::new(format!("cannot start `{program}`: {error}")))?;
        if let Some(stdout) = child.stdout.take() {
            forwarders.push(forward_lines(index, stdout, false));
        }
        if let Some(stderr) = child.stderr.take() {
            forwarders.push(forward_lines(index, stderr, true));
        }
        children.push(child);
    }
    let pids: Vec<i32> = children
        .iter()
        .filter_map(|child| child.id())
        .map(|pid| pid as i32)
        .collect();
    let forward_signals = tokio::spawn(async move {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            return;
        };
        let Ok(mut interrupt) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        else {
            return;
        };
        loop {
            let signal = tokio::select! {
                _ = terminate.recv() => libc::SIGTERM,
                _ = interrupt.recv() => libc::SIGINT,
            };
            for pid in &pids {
                // SAFETY: sending a signal to our own child processes.
                unsafe { libc::kill(*pid, signal) };
            }
        }
    });
    let mut first_failure: Option<i32> = None;
    for mut child in children {
        let status = child.wait().await?;
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        if code != 0 && first_failure.is_none() {
            first_failure = Some(code);
        }
    }
    forward_signals.abort();
    for forwarder in forwarders {
        let _ = forwarder.await;
    }
    Ok(match first_failure {
        Some(code) => ExitCode::from(code.clamp(1, 255) as u8),
        None => ExitCode::SUCCESS,
    })
}
