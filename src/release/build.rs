//! The release build pipeline: select the project's files, write the deterministic archive,
//! validate what was archived, and fingerprint the result.
//!
//! Validation loads Python, which this module does not do itself (no tokio, no pyo3 here):
//! the caller passes a [`Validate`] step that extracts the archive, builds its environment
//! and imports the runner object (`runner::prepare` and `python` do that for the CLI).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::archive::{self, ArchiveInfo};
use super::config::{Config, Entry};
use super::select;
use crate::api::limits::MAX_IDENTIFIERS_PER_CLAIM;
use crate::api::submission::{IdentifierError, parse_identifier};
use crate::api::workflows_v1::{Path as ReleasePath, ReleaseContent, TaskIdentifier};
use crate::progress::{Progress, Step};

/// The boxed error of a validation step.
pub type ValidationError = Box<dyn std::error::Error + Send + Sync>;

/// Why a release could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot select the files of {}", root.display())]
    Select {
        root: PathBuf,
        #[source]
        source: select::Error,
    },
    #[error("no file of {} matches [build] include", root.display())]
    NothingSelected { root: PathBuf },
    #[error("cannot write the archive {}", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: archive::Error,
    },
    #[error("validation of {} failed", slug)]
    Validation {
        slug: String,
        #[source]
        source: ValidationError,
    },
    #[error(
        "release {slug}: {class} registers the invalid identifier ({name:?}, {version:?}); \
         the server would refuse it"
    )]
    InvalidIdentifier {
        slug: String,
        /// The task class, `module.QualName`.
        class: String,
        name: String,
        version: String,
        #[source]
        source: Box<IdentifierError>,
    },
    #[error(
        "release {slug} registers {count} task identifiers; a runner advertises at most \
         {limit}"
    )]
    TooManyIdentifiers {
        slug: String,
        count: usize,
        limit: usize,
    },
    #[error("cannot move the archive into place at {}", path.display())]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What validating an archive found: the tasks its runner object registers and how the
/// release is hosted.
#[derive(Debug, Clone)]
pub struct Validation {
    /// `(name, version)` of each registered task, in registration order.
    pub tasks: Vec<(String, String)>,
    /// The class (`module.QualName`) that registered each of `tasks`, in the same order
    /// (empty when nothing was loaded).
    pub classes: Vec<String>,
    /// How the release runs, e.g. `sub-interpreter`, with the reason for a fallback.
    pub isolation: String,
}

/// The validation step: given the written archive and the runner object (`module:object`),
/// load it and report what it registers.
pub trait Validate {
    fn validate(self, archive: &ArchiveInfo, runner: &str) -> Result<Validation, ValidationError>;
}

impl<F> Validate for F
where
    F: FnOnce(&ArchiveInfo, &str) -> Result<Validation, ValidationError>,
{
    fn validate(self, archive: &ArchiveInfo, runner: &str) -> Result<Validation, ValidationError> {
        self(archive, runner)
    }
}

/// A built and validated release.
#[derive(Debug, Clone)]
pub struct Built {
    pub config: Config,
    pub archive: ArchiveInfo,
    /// `(name, version)` of each registered task (none for a custom command).
    pub tasks: Vec<(String, String)>,
    /// [`release_fingerprint`] of the release.
    pub fingerprint: String,
    /// How the release runs, or that a custom command was not validated.
    pub isolation: String,
}

/// Where `build` writes the archive of a project: `<root>/<slug>.tar.zst`.
pub fn archive_path(config: &Config) -> PathBuf {
    config.root.join(format!("{}.tar.zst", config.slug))
}

/// Where `build` writes the archive before it is validated: `<root>/<slug>.tar.zst.partial`
/// (never selected into an archive).
pub fn partial_archive_path(config: &Config) -> PathBuf {
    config.root.join(format!("{}.tar.zst.partial", config.slug))
}

/// Selects the files of `config`'s project, writes the archive to [`archive_path`], validates
/// it (a runner object is loaded by `validate`, and every identifier it registers must pass
/// the server's rules; a custom command is not validated) and fingerprints the release. The
/// archive is written to [`partial_archive_path`] and moved into place only once it is valid:
/// a refused release leaves no archive behind. Selecting and archiving report to `progress`
/// (validation reports its own steps). Blocking: call it off the async runtime.
pub fn build(
    config: Config,
    validate: impl Validate,
    progress: &dyn Progress,
) -> Result<Built, Error> {
    let partial = partial_archive_path(&config);
    let result = write(&config, &partial, progress).and_then(|archive| {
        let validation = validate_archive(&config, &archive, validate)?;
        Ok((archive, validation))
    });
    let (mut archive, validation) = match result {
        Ok(built) => built,
        Err(error) => {
            // Best effort: the archive may not have been created at all.
            let _ = fs_err::remove_file(&partial);
            return Err(error);
        }
    };
    let path = archive_path(&config);
    if let Err(source) = fs_err::rename(&partial, &path) {
        let _ = fs_err::remove_file(&partial);
        return Err(Error::Rename { path, source });
    }
    archive.path = path;
    let fingerprint = release_fingerprint(&archive.fingerprint, &config.entry, &validation.tasks);
    Ok(Built {
        config,
        archive,
        tasks: validation.tasks,
        fingerprint,
        isolation: validation.isolation,
    })
}

/// Loads the archive's runner object (unless the entry is a custom command) and checks that
/// every identifier it registers is one the server accepts, and that there are no more of
/// them than one claim may advertise.
fn validate_archive(
    config: &Config,
    archive: &ArchiveInfo,
    validate: impl Validate,
) -> Result<Validation, Error> {
    let Entry::Runner(runner) = &config.entry else {
        return Ok(Validation {
            tasks: Vec::new(),
            classes: Vec::new(),
            isolation: "custom command (not validated)".to_string(),
        });
    };
    let validation = validate
        .validate(archive, runner)
        .map_err(|source| Error::Validation {
            slug: config.slug.clone(),
            source,
        })?;
    for (index, (name, version)) in validation.tasks.iter().enumerate() {
        let identifier = TaskIdentifier {
            name: name.clone(),
            version: version.clone(),
        };
        parse_identifier(&identifier).map_err(|source| Error::InvalidIdentifier {
            slug: config.slug.clone(),
            class: validation
                .classes
                .get(index)
                .cloned()
                .unwrap_or_else(|| "a task class".to_string()),
            name: name.clone(),
            version: version.clone(),
            source: Box::new(source),
        })?;
    }
    // The server refuses a whole claim over the limit: a runner would skip this release.
    let count = validation
        .tasks
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    if count > MAX_IDENTIFIERS_PER_CLAIM {
        return Err(Error::TooManyIdentifiers {
            slug: config.slug.clone(),
            count,
            limit: MAX_IDENTIFIERS_PER_CLAIM,
        });
    }
    Ok(validation)
}

/// Selects the project's files and writes their archive to `out`, reporting both steps
/// (files selected, files archived) to `progress`.
pub fn write(config: &Config, out: &Path, progress: &dyn Progress) -> Result<ArchiveInfo, Error> {
    progress.begin(Step::Select, None);
    let files = select::select_files(config).map_err(|source| Error::Select {
        root: config.root.clone(),
        source,
    });
    if let Ok(files) = &files {
        progress.advance(Step::Select, files.len() as u64);
    }
    progress.end(Step::Select);
    let files = files?;
    if files.is_empty() {
        return Err(Error::NothingSelected {
            root: config.root.clone(),
        });
    }
    progress.begin(Step::Archive, Some(files.len() as u64));
    let archive = archive::write_archive_reporting(&config.root, &files, out, &mut |archived| {
        progress.advance(Step::Archive, archived as u64);
    })
    .map_err(|source| Error::Archive {
        path: out.to_path_buf(),
        source,
    });
    progress.end(Step::Archive);
    archive
}

impl Built {
    /// `name@version` of each registered task.
    pub fn task_names(&self) -> Vec<String> {
        self.tasks
            .iter()
            .map(|(name, version)| format!("{name}@{version}"))
            .collect()
    }

    /// The release's content as `PublishWorkflowRelease` sends it.
    pub fn content(&self) -> ReleaseContent {
        let (runner_object_path, command_override) = match &self.config.entry {
            Entry::Runner(runner) => (runner.clone(), Vec::new()),
            Entry::Command(command) => (String::new(), command.clone()),
        };
        ReleaseContent {
            fingerprint: self.fingerprint.clone(),
            tasks: self
                .tasks
                .iter()
                .map(|(name, version)| TaskIdentifier {
                    name: name.clone(),
                    version: version.clone(),
                })
                .collect(),
            files: file_tree(&self.archive.files),
            runner_object_path,
            command_override,
        }
    }
}

/// The files as a directory tree, as `ReleaseContent.files` holds them.
pub fn file_tree(files: &[String]) -> Vec<ReleasePath> {
    fn insert(level: &mut Vec<ReleasePath>, parts: &[&str], prefix: &str) {
        let Some((first, rest)) = parts.split_first() else {
            return;
        };
        let path = if prefix.is_empty() {
            first.to_string()
        } else {
            format!("{prefix}/{first}")
        };
        let position = match level.iter().position(|entry| entry.path == path) {
            Some(position) => position,
            None => {
                level.push(ReleasePath {
                    path: path.clone(),
                    directory: !rest.is_empty(),
                    children: Vec::new(),
                });
                level.len() - 1
            }
        };
        insert(&mut level[position].children, rest, &path);
    }
    let mut tree = Vec::new();
    for file in files {
        let parts: Vec<&str> = file.split('/').collect();
        insert(&mut tree, &parts, "");
    }
    tree
}

/// The release fingerprint: the files' fingerprint, how the release starts and the tasks
/// it registers, hashed in a fixed text form (`tilebox-release-v1`).
pub fn release_fingerprint(files: &str, entry: &Entry, tasks: &[(String, String)]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tilebox-release-v1\n");
    hasher.update(format!("files {files}\n"));
    match entry {
        Entry::Runner(runner) => hasher.update(format!("runner {runner}\n")),
        Entry::Command(command) => hasher.update(format!(
            "command {}\n",
            serde_json::Value::from(command.clone())
        )),
    }
    let mut sorted = tasks.to_vec();
    sorted.sort();
    for (name, version) in sorted {
        hasher.update(format!("task {name} {version}\n"));
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_become_a_directory_tree() {
        let tree = file_tree(&["a/b.py".into(), "a/c/d.py".into(), "e.toml".into()]);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[0].path, "a");
        assert!(tree[0].directory);
        assert_eq!(tree[0].children[1].path, "a/c");
        assert_eq!(tree[0].children[1].children[0].path, "a/c/d.py");
        assert!(!tree[1].directory);
    }

    #[test]
    fn the_release_fingerprint_depends_on_files_entry_and_tasks_not_their_order() {
        let entry = Entry::Runner("runner:runner".into());
        let tasks = vec![
            ("B".to_string(), "v0.0".to_string()),
            ("A".to_string(), "v1.0".to_string()),
        ];
        let reversed: Vec<_> = tasks.iter().rev().cloned().collect();
        let base = release_fingerprint("f", &entry, &tasks);
        assert_eq!(base, release_fingerprint("f", &entry, &reversed));
        assert_ne!(base, release_fingerprint("g", &entry, &tasks));
        assert_ne!(
            base,
            release_fingerprint("f", &Entry::Runner("other:runner".into()), &tasks)
        );
        assert_ne!(base, release_fingerprint("f", &entry, &tasks[..1]));
    }
}
