//! Progress on long work, one rule for every command: bars on stderr when stderr is a
//! terminal and `--json` is not given; nothing at all otherwise (stdout stays data). No colour
//! is used, so `NO_COLOR` has nothing to remove.
//!
//! The library reports [`crate::progress::Step`]s; [`Display`] renders them (`publish-release`,
//! the runner's release preparation) and the bars of a job being waited for. Log lines from
//! `tracing` go through [`LogWriter`], which clears the bars while it writes, so the two
//! never garble each other.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use indicatif::{BinaryBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::{Progress, Reporter, Silent, Step, Unit};

/// How often a spinner turns, so its elapsed time moves while `uv` gives no news.
const TICK: Duration = Duration::from_millis(100);

/// The bars of this process on stderr: one set, so log lines can clear them.
static TERMINAL: LazyLock<MultiProgress> =
    LazyLock::new(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));

/// Whether progress is shown: stderr is a terminal and the output is not `--json`.
pub fn is_shown(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A command's progress display: bars on stderr, or nothing when [`is_shown`] says no.
#[derive(Clone)]
pub struct Display {
    terminal: Option<MultiProgress>,
}

impl Display {
    pub fn new(json: bool) -> Self {
        Self {
            terminal: is_shown(json).then(|| TERMINAL.clone()),
        }
    }

    /// One line per step of long work, each left on screen with its amount and duration when
    /// it ends (`publish-release`).
    pub fn steps(&self) -> Arc<dyn Progress> {
        match &self.terminal {
            Some(terminal) => Arc::new(Steps::new(terminal.clone(), String::new(), true)),
            None => Arc::new(Silent),
        }
    }

    /// A live line per piece of work named by its label, cleared when each step ends (the
    /// runner, which also logs every step).
    pub fn lines(&self) -> Arc<dyn Reporter> {
        match &self.terminal {
            Some(terminal) => Arc::new(Lines(terminal.clone())),
            None => Arc::new(Silent),
        }
    }

    /// The bars of a job being waited for.
    pub fn job(&self) -> JobBars {
        JobBars {
            terminal: self.terminal.clone(),
            tasks: None,
            labels: Vec::new(),
        }
    }
}

struct Lines(MultiProgress);

impl Reporter for Lines {
    fn start(&self, label: &str) -> Box<dyn Progress> {
        Box::new(Steps::new(self.0.clone(), format!("{label} "), false))
    }
}

/// Renders steps: a bar while a step runs, then its summary line (`keep`) or nothing.
struct Steps {
    terminal: MultiProgress,
    prefix: String,
    keep: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Steps {
    fn new(terminal: MultiProgress, prefix: String, keep: bool) -> Self {
        Self {
            terminal,
            prefix,
            keep,
            bar: Mutex::new(None),
        }
    }
}

/// A template of ours; they are constants, so a bad one is a bug caught by the unit test.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("the progress templates are valid")
        .progress_chars("=> ")
}

fn step_style(unit: Unit, known_total: bool) -> ProgressStyle {
    match (unit, known_total) {
        (Unit::Bytes, true) => style(
            "{prefix}{msg:<11} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        ),
        (Unit::Bytes, false) => {
            style("{prefix}{spinner} {msg:<11} {binary_bytes} {binary_bytes_per_sec}")
        }
        (Unit::Files, true) => style("{prefix}{msg:<11} [{bar:30}] {pos}/{len} files"),
        (Unit::Files, false) | (Unit::None, _) => style("{prefix}{spinner} {msg:<11} {elapsed}"),
    }
}

impl Progress for Steps {
    fn begin(&self, step: Step, total: Option<u64>) {
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        let bar = self.terminal.add(
            bar.with_style(step_style(step.unit(), total.is_some()))
                .with_prefix(self.prefix.clone())
                .with_message(step.name()),
        );
        if total.is_none() {
            bar.enable_steady_tick(TICK);
        }
        let replaced = self
            .bar
            .lock()
            .expect("a progress lock is never poisoned")
            .replace(bar);
        if let Some(replaced) = replaced {
            replaced.finish_and_clear();
        }
    }

    fn advance(&self, _: Step, done: u64) {
        if let Some(bar) = &*self.bar.lock().expect("a progress lock is never poisoned") {
            bar.set_position(done);
        }
    }

    fn end(&self, step: Step) {
        let Some(bar) = self
            .bar
            .lock()
            .expect("a progress lock is never poisoned")
            .take()
        else {
            return;
        };
        if !self.keep {
            bar.finish_and_clear();
            return;
        }
        let amount = match step.unit() {
            Unit::Files => format!("{} files ", bar.position()),
            Unit::Bytes => format!("{} ", BinaryBytes(bar.position())),
            Unit::None => String::new(),
        };
        let summary = format!(
            "{:<11} {amount}in {:.1}s",
            step.name(),
            bar.elapsed().as_secs_f64()
        );
        bar.set_style(style("{prefix}done {msg}"));
        bar.finish_with_message(summary);
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if let Some(bar) = self
            .bar
            .lock()
            .expect("a progress lock is never poisoned")
            .take()
        {
            bar.finish_and_clear();
        }
    }
}

/// A job's bars: tasks done of total, then one per labelled progress indicator in the order
/// they first appear. Does nothing when progress is not shown.
pub struct JobBars {
    terminal: Option<MultiProgress>,
    tasks: Option<ProgressBar>,
    labels: Vec<(String, ProgressBar)>,
}

/// One labelled progress indicator of a job: `(label, done, total)`.
pub type Indicator<'a> = (&'a str, u64, u64);

impl JobBars {
    /// Shows the job's latest counts: `done` of `total` tasks, `failed` of them failed.
    pub fn update(&mut self, done: u64, total: u64, failed: u64, indicators: &[Indicator<'_>]) {
        let Some(terminal) = &self.terminal else {
            return;
        };
        let message = if failed > 0 {
            format!("tasks ({failed} failed)")
        } else {
            "tasks".to_string()
        };
        let tasks = self
            .tasks
            .get_or_insert_with(|| terminal.add(job_bar(total, message.clone())));
        tasks.set_length(total);
        tasks.set_position(done);
        tasks.set_message(message);
        for &(label, done, total) in indicators {
            let bar = match self.labels.iter().find(|(known, _)| known == label) {
                Some((_, bar)) => bar,
                None => {
                    let name = if label.is_empty() { "progress" } else { label };
                    let bar = terminal.add(job_bar(total, name.to_string()));
                    self.labels.push((label.to_string(), bar));
                    &self.labels.last().expect("just pushed").1
                }
            };
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    /// Leaves the bars on screen with their last counts.
    pub fn finish(&mut self) {
        for bar in self
            .tasks
            .iter()
            .chain(self.labels.iter().map(|(_, bar)| bar))
        {
            bar.finish();
        }
    }
}

/// A bar of [`JobBars`], styled and named before it is first drawn.
fn job_bar(total: u64, message: String) -> ProgressBar {
    let bar = ProgressBar::new(total).with_style(style("{msg:<16} [{bar:30}] {pos}/{len}"));
    bar.set_message(message);
    bar
}

/// `tracing`'s writer: stderr, with the bars cleared while a log line is written and drawn
/// again below it.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

impl Write for LogWriter {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        TERMINAL.suspend(|| std::io::stderr().write(buffer))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_valid() {
        for unit in [Unit::Bytes, Unit::Files, Unit::None] {
            for known in [true, false] {
                step_style(unit, known);
            }
        }
    }

    #[test]
    fn hidden_displays_report_nothing() {
        let display = Display { terminal: None };
        let steps = display.steps();
        steps.begin(Step::Upload, Some(3));
        steps.end(Step::Upload);
        let mut bars = display.job();
        bars.update(1, 2, 0, &[("label", 1, 2)]);
        assert!(bars.tasks.is_none() && bars.labels.is_empty());
    }
}
