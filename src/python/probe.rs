//! Deciding where a release runs: import it in two isolated sub-interpreters at once inside
//! a throwaway child process. If that works (and ends cleanly), the release is hosted in a
//! sub-interpreter of this process; if it fails, crashes or hangs, in a child process.
//! Verdicts are remembered per release environment for the life of this process.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::Release;
use super::child::{FromChild, host_arguments, host_binary};

/// Sub-interpreters the probe loads the release into at the same time.
const PROBE_INTERPRETERS: usize = 2;

/// Where the probe says a release belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    SubInterpreter,
    ChildProcess { reason: String },
}

static VERDICTS: Mutex<Option<HashMap<String, Verdict>>> = Mutex::new(None);

fn key(release: &Release) -> String {
    format!(
        "{}|{}|{:?}|{}",
        release.root.display(),
        release.runner,
        release.site_packages,
        super::runtime::fingerprint()
    )
}

/// Probes a release (or answers the remembered verdict).
pub async fn probe(release: &Release) -> Verdict {
    let key = key(release);
    if let Some(verdict) = VERDICTS
        .lock()
        .ok()
        .and_then(|map| map.as_ref().and_then(|map| map.get(&key).cloned()))
    {
        return verdict;
    }
    let verdict = run_probe(release).await;
    tracing::debug!(release = %release.label, ?verdict, "probed the release");
    if let Ok(mut map) = VERDICTS.lock() {
        map.get_or_insert_with(HashMap::new)
            .insert(key, verdict.clone());
    }
    verdict
}

/// How much of each of the probe's pipes is kept: its protocol line comes first on stdout,
/// and the last lines of stderr say why it failed.
const KEPT_BYTES: usize = 64 * 1024;

/// Which part of a pipe's text to keep.
#[derive(Clone, Copy)]
enum Keep {
    Head,
    Tail,
}

/// Reads `pipe` to its end and answers its first or last [`KEPT_BYTES`] bytes.
async fn drain(pipe: Option<&mut (impl AsyncRead + Unpin)>, keep: Keep) -> String {
    let mut kept = Vec::new();
    let Some(pipe) = pipe else {
        return String::new();
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                kept.extend_from_slice(&chunk[..read]);
                if kept.len() > KEPT_BYTES {
                    match keep {
                        Keep::Head => kept.truncate(KEPT_BYTES),
                        Keep::Tail => {
                            kept.drain(..kept.len() - KEPT_BYTES);
                        }
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

async fn run_probe(release: &Release) -> Verdict {
    let fallback = |reason: String| Verdict::ChildProcess { reason };
    let binary = match host_binary() {
        Ok(binary) => binary,
        Err(error) => return fallback(format!("cannot find the tilebox binary: {error}")),
    };
    let mut arguments = host_arguments(release);
    arguments.push("--probe".into());
    arguments.push(PROBE_INTERPRETERS.to_string());
    let child = tokio::process::Command::new(&binary)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => return fallback(format!("cannot start the probe: {error}")),
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Both pipes at once: a release that prints more than a pipe holds to one of them at
    // import would otherwise block the probe while this side waits for the other's end.
    // Both are drained to their end, but only what the verdict needs is kept.
    let collect = async {
        let (out, err) = tokio::join!(
            drain(stdout.as_mut(), Keep::Head),
            drain(stderr.as_mut(), Keep::Tail)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let timeout = super::import_timeout();
    let Ok((out, err, status)) = tokio::time::timeout(timeout, collect).await else {
        return fallback(format!(
            "the probe did not finish within {} s",
            timeout.as_secs_f64()
        ));
    };
    let status = match status {
        Ok(status) => status,
        Err(error) => return fallback(format!("cannot wait for the probe: {error}")),
    };
    let message = out
        .lines()
        .next()
        .and_then(|line| serde_json::from_str::<FromChild>(line).ok());
    match message {
        Some(FromChild::Loaded { .. }) if status.success() => Verdict::SubInterpreter,
        Some(FromChild::LoadError { error }) => {
            fallback(format!("{}: {}", error.kind, error.message))
        }
        _ => {
            use std::os::unix::process::ExitStatusExt;
            let how = match status.signal() {
                Some(signal) => format!("the probe was killed by signal {signal}"),
                None => format!("the probe exited with {status}"),
            };
            let tail: String = err
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            fallback(if tail.is_empty() {
                how
            } else {
                format!("{how}: {tail}")
            })
        }
    }
}
