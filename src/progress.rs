//! How long work tells how far it got, without knowing who shows it.
//!
//! The release build (`release::build`), a release's preparation (`runner::prepare`: download,
//! unpack, environment, load) and an artifact upload (`client`) report [`Step`]s to a
//! [`Progress`]. The CLI renders them as bars on a terminal (`cli/progress.rs`, the only user
//! of `indicatif`); [`Logged`] writes one log line per step with its duration (the runner, on
//! any output); [`Silent`] ignores them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A step of long work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Selecting a project's files (counted in files).
    Select,
    /// Writing the release archive (files).
    Archive,
    /// Downloading an artifact (bytes).
    Download,
    /// Extracting an archive.
    Unpack,
    /// Building the Python environment (`uv sync`); `uv` tells nothing of its progress.
    Environment,
    /// Loading the runner object into interpreters.
    Load,
    /// Uploading an artifact (bytes).
    Upload,
}

/// What a step counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Files,
    Bytes,
    /// Nothing: a spinner with the elapsed time.
    None,
}

impl Step {
    /// The step's name in progress lines and logs.
    pub fn name(self) -> &'static str {
        match self {
            Step::Select => "select",
            Step::Archive => "archive",
            Step::Download => "download",
            Step::Unpack => "unpack",
            Step::Environment => "environment",
            Step::Load => "load",
            Step::Upload => "upload",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            Step::Select | Step::Archive => Unit::Files,
            Step::Download | Step::Upload => Unit::Bytes,
            Step::Unpack | Step::Environment | Step::Load => Unit::None,
        }
    }
}

/// Where long work reports its steps. One step runs at a time; `advance` and `end` name it.
pub trait Progress: Send + Sync {
    /// `step` starts; `total` is its size in its [`Unit`] when known.
    fn begin(&self, step: Step, total: Option<u64>);
    /// `step` has reached `done` (of its total).
    fn advance(&self, step: Step, done: u64);
    /// `step` ended (successfully or not: the caller's result tells).
    fn end(&self, step: Step);
}

/// Ignores every report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: Step, _: Option<u64>) {}
    fn advance(&self, _: Step, _: u64) {}
    fn end(&self, _: Step) {}
}

/// Makes a [`Progress`] for each piece of work, named by `label` (the runner prepares one
/// release after another, each with its own line).
pub trait Reporter: Send + Sync {
    fn start(&self, label: &str) -> Box<dyn Progress>;
}

impl Reporter for Silent {
    fn start(&self, _: &str) -> Box<dyn Progress> {
        Box::new(Silent)
    }
}

/// Logs one line per ended step with its duration (and amount, if it counted one), and
/// passes every report on to `inner`.
pub struct Logged {
    label: String,
    inner: Box<dyn Progress>,
    current: Mutex<Option<(Step, Instant, u64)>>,
}

impl Logged {
    pub fn new(label: impl Into<String>, inner: Box<dyn Progress>) -> Self {
        Self {
            label: label.into(),
            inner,
            current: Mutex::new(None),
        }
    }
}

impl Progress for Logged {
    fn begin(&self, step: Step, total: Option<u64>) {
        *self
            .current
            .lock()
            .expect("a progress lock is never poisoned") = Some((step, Instant::now(), 0));
        self.inner.begin(step, total);
    }

    fn advance(&self, step: Step, done: u64) {
        if let Some((current, _, amount)) = self
            .current
            .lock()
            .expect("a progress lock is never poisoned")
            .as_mut()
            && *current == step
        {
            *amount = done;
        }
        self.inner.advance(step, done);
    }

    fn end(&self, step: Step) {
        let started = self
            .current
            .lock()
            .expect("a progress lock is never poisoned")
            .take()
            .filter(|(current, _, _)| *current == step);
        self.inner.end(step);
        let Some((_, started, amount)) = started else {
            return;
        };
        let elapsed = round(started.elapsed());
        match step.unit() {
            Unit::Bytes => {
                tracing::info!(release = %self.label, step = step.name(), bytes = amount, elapsed = ?elapsed, "release step done")
            }
            Unit::Files => {
                tracing::info!(release = %self.label, step = step.name(), files = amount, elapsed = ?elapsed, "release step done")
            }
            Unit::None => {
                tracing::info!(release = %self.label, step = step.name(), elapsed = ?elapsed, "release step done")
            }
        }
    }
}

/// A duration to the millisecond, for log lines people read.
fn round(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A shared [`Progress`] is one.
impl<P: Progress + ?Sized> Progress for Arc<P> {
    fn begin(&self, step: Step, total: Option<u64>) {
        (**self).begin(step, total);
    }
    fn advance(&self, step: Step, done: u64) {
        (**self).advance(step, done);
    }
    fn end(&self, step: Step) {
        (**self).end(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records reports as text.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl Progress for Recorded {
        fn begin(&self, step: Step, total: Option<u64>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("begin {} {total:?}", step.name()));
        }
        fn advance(&self, step: Step, done: u64) {
            self.0
                .lock()
                .unwrap()
                .push(format!("advance {} {done}", step.name()));
        }
        fn end(&self, step: Step) {
            self.0.lock().unwrap().push(format!("end {}", step.name()));
        }
    }

    #[test]
    fn logged_passes_every_report_on() {
        let recorded = Arc::new(Recorded::default());
        let logged = Logged::new("w@1", Box::new(recorded.clone()));
        logged.begin(Step::Download, Some(10));
        logged.advance(Step::Download, 10);
        logged.end(Step::Download);
        // An end without a begin is passed on and logs nothing.
        logged.end(Step::Load);
        assert_eq!(
            *recorded.0.lock().unwrap(),
            [
                "begin download Some(10)",
                "advance download 10",
                "end download",
                "end load"
            ]
        );
    }
}
