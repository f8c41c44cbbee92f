//! Deciding where a release runs: import it in two isolated sub-interpreters at once inside
//! a throwaway child process. If that works (and ends cleanly), the release is hosted in a
//! sub-interpreter of this process; if it fails, crashes or hangs, in a child process.
//! Verdicts are remembered per release environment for the life of this process.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::Release;
use super::child::{FromChild, host_arguments, host_binary};

/// How long a probe may take before the release counts as unsafe for sub-interpreters.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
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
    let collect = async {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.read_to_string(&mut out).await;
        }
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_string(&mut err).await;
        }
        let status = child.wait().await;
        (out, err, status)
    };
    let Ok((out, err, status)) = tokio::time::timeout(PROBE_TIMEOUT, collect).await else {
        return fallback(format!(
            "the probe did not finish within {}s",
            PROBE_TIMEOUT.as_secs()
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
