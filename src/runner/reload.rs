//! Direct mode that follows the project's files (`tilebox dev`): the project is loaded like
//! `runner start --project` loads it, and loaded again into fresh interpreters whenever the
//! files a release of it would hold change. The new code replaces the old in the catalog the
//! way a redeploy does ([`super::replace_catalog`]): tasks claimed from then on run on the new
//! code, tasks already running finish on the old, whose interpreters are unloaded once no
//! slot uses them.
//!
//! What is watched is what `workflow build-release` would select (`release::select`: include
//! and exclude globs, `.gitignore`; never `.git`, `.venv` or `.tilebox`), plus
//! `tilebox.workflow.toml`, `pyproject.toml` and `uv.lock`. Left out: bytecode
//! (`__pycache__`, `*.pyc`), since loading the project writes it, and what editors write
//! while the user types (`select::select_watched_files`: swap files, lock symlinks, backups;
//! broken symlinks), which would reload on every keystroke or, broken, stop every reload.
//! A change of any other selected file reloads, data files included: the project may read
//! them when it is imported (a table loaded at module level), and a release of it would
//! carry them, so a reload is what a redeploy would do; data a task only reads at run time
//! belongs outside `include`. A change of `pyproject.toml` or `uv.lock` runs `uv sync` again
//! before the load.
//!
//! The watch polls the files every [`POLL_INTERVAL`] rather than asking the OS for change
//! events (`notify`): the rules of what counts are then exactly the release's (one selection
//! routine, not a second filter over events), it behaves the same on every filesystem
//! (network and container mounts, editors that save by rename), a burst of saves is one
//! reload, and it needs no new dependency. A file is read (through a fixed buffer) only when
//! its metadata changed since it was last read ([`Digests`]), so a poll of a project with
//! large data costs a walk and a `stat` per file.
//!
//! A change that cannot be loaded (a `SyntaxError`, an import that raises, a bad
//! configuration, a failing `uv sync`) is reported as [`Event::Failed`] and changes nothing:
//! the last good code keeps serving. It is tried again on the next change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

use super::catalog::{Catalog, LoadedSet};
use super::prepare::{self, EnvironmentSource};
use super::{Phase, Shared, announce, replace_catalog};
use crate::progress::{Progress, Step};
use crate::release::archive::{self, FileDigest};
use crate::release::select::FileKind;
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
    /// `uv sync` of the project's environment starts (it may take minutes, silently).
    Syncing,
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

/// Reads the project's watched files as they are now, reusing `digests` of the files whose
/// metadata did not change. Blocking.
fn snapshot(directory: &Path, digests: &mut Digests) -> Result<Snapshot, Error> {
    let path = config::find(directory)?;
    let configuration = fs_err::read(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let loaded = config::load(&path)?;
    let root = loaded.root.clone();
    let selected: Vec<select::SelectedFile> = select::select_watched_files(&loaded)
        .map_err(|source| Error::Select {
            root: root.clone(),
            source,
        })?
        .into_iter()
        .filter(|file| !is_bytecode(&file.path))
        .collect();
    let files = digests
        .digest(&root, &selected)
        .map_err(|source| Error::Digest {
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

/// How long after its last change a file's metadata is trusted to tell a later change:
/// filesystems stamp times at a coarse granularity (a kernel tick; seconds on some network
/// and FAT mounts), so a write right after a read may leave every stamp as it was. A file
/// changed more recently than this is read again at each poll (git's "racily clean" rule).
const SETTLE_TIME: Duration = Duration::from_secs(2);

/// What a regular file's metadata says of its content: when any of it differs, the file is
/// read again. The change time (ctime) is in it because every write sets it and no user
/// call can (an editor, `touch -d` or a test may put the mtime back after a same-size edit);
/// the inode and device catch a save by rename; the mode an executable bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: u64,
    device: u64,
    mode: u32,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            inode: metadata.ino(),
            device: metadata.dev(),
            mode: metadata.mode(),
        }
    }

    /// Whether the file's last change is at least `settle` before `now`.
    fn settled(&self, now: SystemTime, settle: Duration) -> bool {
        let (seconds, nanoseconds) = self.changed;
        let (Ok(seconds), Ok(nanoseconds)) = (u64::try_from(seconds), u32::try_from(nanoseconds))
        else {
            return false;
        };
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(seconds, 0)
            + Duration::from_nanos(u64::from(nanoseconds));
        now.duration_since(changed).is_ok_and(|age| age >= settle)
    }
}

/// The digests of the watched files with the metadata each was read under, so a poll reads
/// only the files that changed since (a project with `include = ["**"]` may hold gigabytes
/// of data, polled twice a second).
#[derive(Debug)]
struct Digests {
    known: HashMap<String, (Stamp, FileDigest)>,
    /// How long after a change a file's metadata is trusted ([`SETTLE_TIME`]).
    settle: Duration,
    /// How many files were read, in all.
    reads: u64,
}

impl Default for Digests {
    fn default() -> Self {
        Self {
            known: HashMap::new(),
            settle: SETTLE_TIME,
            reads: 0,
        }
    }
}

impl Digests {
    /// The digests of `selected` (relative to `root`), as [`archive::digest_files`] gives
    /// them. Blocking.
    fn digest(
        &mut self,
        root: &Path,
        selected: &[select::SelectedFile],
    ) -> Result<Vec<FileDigest>, archive::Error> {
        let mut known = HashMap::with_capacity(selected.len());
        let mut digests = Vec::with_capacity(selected.len());
        for file in selected {
            // A symlink's digest is of its target path, which the selection read already.
            if !matches!(file.kind, FileKind::File { .. }) {
                digests.push(archive::digest_file(root, file)?);
                continue;
            }
            let path = root.join(&file.path);
            let now = SystemTime::now();
            let metadata = fs_err::metadata(&path).map_err(|source| archive::Error::Read {
                path: path.clone(),
                source,
            })?;
            let stamp = Stamp::of(&metadata);
            let digest = match self.known.remove(&file.path) {
                Some((read_under, digest)) if read_under == stamp => digest,
                _ => {
                    self.reads += 1;
                    archive::digest_file(root, file)?
                }
            };
            if stamp.settled(now, self.settle) {
                known.insert(file.path.clone(), (stamp, digest.clone()));
            }
            digests.push(digest);
        }
        self.known = known;
        Ok(digests)
    }
}

/// Whether `path` (release-relative, `/`-separated) is Python bytecode, which loading the
/// project writes and which is never a reason to load it again.
fn is_bytecode(path: &str) -> bool {
    path.ends_with(".pyc") || path.split('/').any(|component| component == "__pycache__")
}

/// [`snapshot`] on a blocking thread; `digests` is handed there and back.
async fn snapshot_now(
    directory: PathBuf,
    digests: &mut Option<Digests>,
) -> Result<Snapshot, Error> {
    let mut taken = digests.take().unwrap_or_default();
    let (taken, snapshot) = tokio::task::spawn_blocking(move || {
        let snapshot = snapshot(&directory, &mut taken);
        (taken, snapshot)
    })
    .await
    .map_err(Error::Panicked)?;
    *digests = Some(taken);
    snapshot
}

/// Removes the bytecode CPython cached for each `.py` file of `after` that differs from its
/// version in any of `before` (the code loaded, and the last attempt, which may have failed
/// after CPython cached its bytecode: an import that raises). CPython checks a cached module
/// only by its source's size and mtime in whole seconds, so an edit that keeps the size
/// within the second the cache was written would otherwise load the cached code. Best
/// effort: a cache that cannot be removed is left.
fn drop_stale_bytecode(before: &[&Snapshot], after: &Snapshot) {
    for file in &after.files {
        if !file.path.ends_with(".py") || before.iter().all(|before| before.files.contains(file)) {
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
    /// The watched files' digests with their metadata (out while a poll reads the files).
    digests: Option<Digests>,
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
        digests: Some(Digests::default()),
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
        let current = match snapshot_now(self.watch.directory.clone(), &mut self.digests).await {
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
            tracing::trace!(
                files = current.files.len(),
                "the watched files are unchanged"
            );
            return;
        }
        let previous = self.tried.replace(current.clone());
        self.load(current, previous).await;
    }

    /// Loads `current`; `previous` is what was tried before it.
    async fn load(&mut self, mut current: Snapshot, previous: Option<Snapshot>) {
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
                let notice = SyncNotice(&self.watch.events);
                prepare::release_reporting(source, &options.cache_dir, &notice).await
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
            if let Ok(after) = snapshot_now(self.watch.directory.clone(), &mut self.digests).await {
                if after.dependencies != current.dependencies {
                    self.synced = Some(after.dependencies.clone());
                }
                current = after;
                self.tried = Some(current.clone());
            }
        }
        let before: Vec<&Snapshot> = self.loaded.iter().chain(&previous).collect();
        drop_stale_bytecode(&before, &current);
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

/// Tells that `uv sync` starts, which may take minutes and shows nothing of itself.
struct SyncNotice<'a>(&'a mpsc::UnboundedSender<Event>);

impl Progress for SyncNotice<'_> {
    fn begin(&self, step: Step, _: Option<u64>) {
        if step == Step::Environment {
            let _ = self.0.send(Event::Syncing);
        }
    }
    fn advance(&self, _: Step, _: u64) {}
    fn end(&self, _: Step) {}
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

    /// Waits until the clock is past `path`'s change time by more than a timestamp tick, so
    /// a write from now on gets a later change time.
    fn let_the_change_time_pass(path: &Path) {
        let stamp = Stamp::of(&fs_err::metadata(path).unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !stamp.settled(SystemTime::now(), Duration::from_millis(50)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock does not move"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn unchanged_files_are_not_read_again_and_a_same_size_same_mtime_edit_is() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        fs_err::write(root.join("app.py"), "print('old')\n").unwrap();
        fs_err::write(root.join("data.bin"), vec![7u8; 300_000]).unwrap();
        let selected: Vec<select::SelectedFile> = ["app.py", "data.bin"]
            .into_iter()
            .map(|path| select::SelectedFile {
                path: path.into(),
                kind: FileKind::File { executable: false },
            })
            .collect();
        let mut digests = Digests {
            settle: Duration::ZERO,
            ..Digests::default()
        };
        let first = digests.digest(root, &selected).unwrap();
        assert_eq!(first, archive::digest_files(root, &selected).unwrap());
        assert_eq!(digests.reads, 2);
        for _ in 0..3 {
            assert_eq!(digests.digest(root, &selected).unwrap(), first);
        }
        assert_eq!(digests.reads, 2, "unchanged files are not read again");

        // Same size, and the mtime put back: only the change time tells.
        let app = root.join("app.py");
        let modified = fs_err::metadata(&app).unwrap().modified().unwrap();
        let_the_change_time_pass(&app);
        fs_err::write(&app, "print('new')\n").unwrap();
        fs_err::File::options()
            .write(true)
            .open(&app)
            .unwrap()
            .file()
            .set_modified(modified)
            .unwrap();
        let second = digests.digest(root, &selected).unwrap();
        assert_eq!(digests.reads, 3, "only the edited file is read");
        assert_eq!(second, archive::digest_files(root, &selected).unwrap());
        assert_ne!(second[0], first[0]);
        assert_eq!(second[1], first[1]);
    }

    #[test]
    fn a_file_changed_within_the_settle_time_is_read_at_every_poll() {
        let directory = tempfile::tempdir().unwrap();
        fs_err::write(directory.path().join("app.py"), "print('new')\n").unwrap();
        let selected = [select::SelectedFile {
            path: "app.py".into(),
            kind: FileKind::File { executable: false },
        }];
        let mut digests = Digests {
            settle: Duration::from_secs(3600),
            ..Digests::default()
        };
        for _ in 0..3 {
            digests.digest(directory.path(), &selected).unwrap();
        }
        assert_eq!(digests.reads, 3);
    }

    #[test]
    fn bytecode_is_not_watched() {
        assert!(is_bytecode("app/__pycache__/tasks.cpython-313.pyc"));
        assert!(is_bytecode("__pycache__/notes.txt"));
        assert!(is_bytecode("legacy.pyc"));
        assert!(!is_bytecode("app/tasks.py"));
        assert!(!is_bytecode("pycache/tasks.py"));
    }
}
