//! Direct mode that follows the project's files (`tilebox dev`): the project is loaded like
//! `runner start --project` loads it, and loaded again into fresh interpreters whenever the
//! files a release of it would hold change. The new code replaces the old in the catalog the
//! way a redeploy does ([`super::replace_catalog`]): tasks claimed from then on run on the new
//! code, tasks already running finish on the old, whose interpreters are unloaded once no
//! slot uses them.
//!
//! What is watched is what `workflow build-release` would select (`release::select`: include
//! and exclude globs, `.gitignore`; never `.git`, `.venv` or `.tilebox`), plus
//! `tilebox.workflow.toml`, `pyproject.toml` and `uv.lock`; bytecode (`__pycache__`, `*.pyc`)
//! is left out, since loading the project writes it. A change of `pyproject.toml` or
//! `uv.lock` runs `uv sync` again before the load.
//!
//! The watch polls the files' content digests every [`POLL_INTERVAL`] rather than asking the
//! OS for change events (`notify`): the rules of what counts are then exactly the release's
//! (one selection routine, not a second filter over events), it behaves the same on every
//! filesystem (network and container mounts, editors that save by rename), a burst of saves
//! is one reload, and it needs no new dependency. The price is reading the selected files
//! twice a second, which is nothing for a project's code.
//!
//! A change that cannot be loaded (a `SyntaxError`, an import that raises, a bad
//! configuration, a failing `uv sync`) is reported as [`Event::Failed`] and changes nothing:
//! the last good code keeps serving. It is tried again on the next change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::catalog::{Catalog, LoadedSet};
use super::prepare::{self, EnvironmentSource};
use super::{Phase, Shared, announce, replace_catalog};
use crate::release::archive::{self, FileDigest};
use crate::release::{config, select};

/// How often the project's files are compared with the code loaded.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The files at the project's root that `uv sync` reads: a change syncs the environment.
const DEPENDENCY_FILES: [&str; 2] = ["pyproject.toml", "uv.lock"];

/// What to watch and where to tell what happened.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The project directory (`tilebox.workflow.toml` is searched upward from it).
    pub directory: PathBuf,
    /// How often the files are compared ([`POLL_INTERVAL`]).
    pub interval: Duration,
    /// One event per load attempt.
    pub events: mpsc::UnboundedSender<Event>,
}

/// What a load attempt came to.
#[derive(Debug)]
pub enum Event {
    /// The project's code is loaded and its tasks are claimed (the first load, or a reload).
    Loaded {
        /// The workflow slug of the project.
        label: String,
        /// `(name, version)` of each task it registered.
        tasks: Vec<(String, String)>,
        /// Whether `uv sync` ran before the load.
        synced: bool,
        /// Whether this is the first load.
        first: bool,
    },
    /// The project, as it is now, cannot be loaded; the last good code keeps running.
    Failed {
        error: Error,
        /// Whether no code was loaded yet (nothing runs until a change loads).
        first: bool,
    },
}

/// Why the project could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot select the files of {}", root.display())]
    Select {
        root: PathBuf,
        #[source]
        source: select::Error,
    },
    #[error("cannot read the files of {}", root.display())]
    Digest {
        root: PathBuf,
        #[source]
        source: archive::Error,
    },
    #[error("reading the project's files panicked")]
    Panicked(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Prepare(#[from] prepare::Error),
}

/// What the loaded code was made from: every watched file's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    /// SHA-256 of `tilebox.workflow.toml`.
    configuration: String,
    /// SHA-256 over [`DEPENDENCY_FILES`] (a missing one counts as empty, marked).
    dependencies: String,
    /// The files a release would hold, without bytecode.
    files: Vec<FileDigest>,
    /// The project root.
    root: PathBuf,
}

/// Reads the project's watched files as they are now. Blocking.
fn snapshot(directory: &Path) -> Result<Snapshot, Error> {
    let path = config::find(directory)?;
    let configuration = fs_err::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let loaded = config::load(&path)?;
    let root = loaded.root.clone();
    let selected: Vec<select::SelectedFile> = select::select_files(&loaded)
        .map_err(|source| Error::Select {
            root: root.clone(),
            source,
        })?
        .into_iter()
        .filter(|file| !is_bytecode(&file.path))
        .collect();
    let files = archive::digest_files(&root, &selected).map_err(|source| Error::Digest {
        root: root.clone(),
        source,
    })?;
    let mut dependencies = Sha256::new();
    for name in DEPENDENCY_FILES {
        let path = root.join(name);
        match fs_err::read(&path) {
            Ok(bytes) => {
                dependencies.update(b"present\0");
                dependencies.update(Sha256::digest(&bytes));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                dependencies.update(b"missing\0");
            }
            Err(source) => return Err(Error::Read { path, source }),
        }
    }
    Ok(Snapshot {
        configuration: hex::encode(Sha256::digest(&configuration)),
        dependencies: hex::encode(dependencies.finalize()),
        files,
        root,
    })
}

/// Whether `path` (release-relative, `/`-separated) is Python bytecode, which loading the
/// project writes and which is never a reason to load it again.
fn is_bytecode(path: &str) -> bool {
    path.ends_with(".pyc") || path.split('/').any(|component| component == "__pycache__")
}

async fn snapshot_now(directory: PathBuf) -> Result<Snapshot, Error> {
    tokio::task::spawn_blocking(move || snapshot(&directory))
        .await
        .map_err(Error::Panicked)?
}

/// Removes the bytecode CPython cached for each `.py` file that differs between `before` and
/// `after`. CPython checks a cached module only by its source's size and mtime in whole
/// seconds, so an edit that keeps the size within the second the cache was written would
/// otherwise load the old code. Best effort: a cache that cannot be removed is left.
fn drop_stale_bytecode(before: &Snapshot, after: &Snapshot) {
    for file in &after.files {
        if !file.path.ends_with(".py") || before.files.contains(file) {
            continue;
        }
        let source = after.root.join(&file.path);
        let (Some(directory), Some(stem)) = (source.parent(), source.file_stem()) else {
            continue;
        };
        let cache = directory.join("__pycache__");
        let Ok(entries) = fs_err::read_dir(&cache) else {
            continue;
        };
        let prefix = format!("{}.", stem.to_string_lossy());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".pyc") {
                let _ = fs_err::remove_file(entry.path());
            }
        }
    }
}

/// The watch of one runner: what is loaded and what was last tried.
struct Follower {
    shared: Arc<Shared>,
    catalog: watch::Sender<Arc<Catalog>>,
    watch: Watch,
    /// What the code in the catalog was loaded from.
    loaded: Option<Snapshot>,
    /// What was last tried (loaded or not): nothing is tried again until the files change.
    tried: Option<Snapshot>,
    /// The dependency digest the project's `.venv` was last synced to.
    synced: Option<String>,
    /// The message of the last failure to read the files, so it is told once, not per poll.
    unreadable: Option<String>,
    /// Counts loads, for the catalog key of each.
    generation: u64,
}

/// Loads the project, then loads it again whenever its files change, until the runner is
/// asked to stop.
pub(super) async fn follow_project(
    shared: Arc<Shared>,
    catalog: watch::Sender<Arc<Catalog>>,
    mut phase: watch::Receiver<Phase>,
    watch: Watch,
) {
    let interval = watch.interval;
    let mut follower = Follower {
        shared,
        catalog,
        watch,
        loaded: None,
        tried: None,
        synced: None,
        unreadable: None,
        generation: 0,
    };
    loop {
        if *phase.borrow() != Phase::Running {
            return;
        }
        follower.poll().await;
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            changed = phase.changed() => if changed.is_err() { return },
        }
    }
}

impl Follower {
    fn first(&self) -> bool {
        self.loaded.is_none()
    }

    fn fail(&self, error: Error) {
        tracing::debug!(
            error = &error as &dyn std::error::Error,
            "cannot load the project"
        );
        let _ = self.watch.events.send(Event::Failed {
            error,
            first: self.first(),
        });
    }

    /// Compares the files with what was last tried and loads them if they changed.
    async fn poll(&mut self) {
        let current = match snapshot_now(self.watch.directory.clone()).await {
            Ok(current) => current,
            Err(error) => {
                // A file may vanish between selecting and reading it (an editor saving by
                // rename): told once, and the next poll reads the files again.
                let message = chain(&error);
                if self.unreadable.as_ref() != Some(&message) {
                    self.unreadable = Some(message);
                    self.fail(error);
                }
                return;
            }
        };
        self.unreadable = None;
        if self.tried.as_ref() == Some(&current) {
            return;
        }
        self.tried = Some(current.clone());
        self.load(current).await;
    }

    async fn load(&mut self, mut current: Snapshot) {
        let sync = self.synced.as_ref() != Some(&current.dependencies);
        let environment = if sync {
            EnvironmentSource::Project
        } else {
            EnvironmentSource::Existing
        };
        let options = &self.shared.options;
        let source = prepare::project_source(&self.watch.directory, None, environment);
        let release = match source {
            Ok(mut source) => {
                source.sync_timeout = options.sync_timeout;
                prepare::release(source, &options.cache_dir).await
            }
            Err(error) => Err(error),
        };
        let release = match release {
            Ok(release) => release,
            Err(error) => return self.fail(error.into()),
        };
        if sync {
            self.synced = Some(current.dependencies.clone());
            // `uv sync` may have rewritten `uv.lock`: what is loaded is the files as they are
            // after it (the load reads them later still, so no edit falls in between).
            if let Ok(after) = snapshot_now(self.watch.directory.clone()).await {
                if after.dependencies != current.dependencies {
                    self.synced = Some(after.dependencies.clone());
                }
                current = after;
                self.tried = Some(current.clone());
            }
        }
        if let Some(before) = &self.loaded {
            drop_stale_bytecode(before, &current);
        }
        self.generation += 1;
        let key = format!("{}#{}", release.root.display(), self.generation);
        let label = release.label.clone();
        let set = match LoadedSet::load(release, key, options.slots).await {
            Ok(set) => set,
            Err(error) => return self.fail(prepare::Error::from(error).into()),
        };
        announce(&set);
        let tasks = set.identifiers.clone();
        let mut next = Catalog::default();
        next.releases.insert(label.clone(), Arc::new(set));
        let replaced = self.catalog.borrow().clone();
        replace_catalog(&self.catalog, &replaced, next);
        let first = self.first();
        self.loaded = Some(current);
        let _ = self.watch.events.send(Event::Loaded {
            label,
            tasks,
            synced: sync,
            first,
        });
    }
}

/// `error` with its causes, for comparing one failure with the next.
fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytecode_is_not_watched() {
        assert!(is_bytecode("app/__pycache__/tasks.cpython-313.pyc"));
        assert!(is_bytecode("__pycache__/notes.txt"));
        assert!(is_bytecode("legacy.pyc"));
        assert!(!is_bytecode("app/tasks.py"));
        assert!(!is_bytecode("pycache/tasks.py"));
    }
}
