//! Turning code into a [`python::Release`] the embedding can load, the one routine every
//! command uses: the runner for deployed releases, `workflow build-release` to validate what
//! it archived, `task run` and `runner start --project` for a local project.
//!
//! - An artifact is downloaded once into a cache keyed by its digest, verified, and extracted
//!   into a staging directory that is marked complete and then renamed into place
//!   ([`unpack_artifact`]), so a half-extracted release is never visible.
//! - A release's environment is built with `uv` ([`EnvironmentSource`]): into a venv shared by
//!   every release with the same lock file and Python version, or into a local project's own
//!   `.venv`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::api::selfhosted_v1::GetArtifactRequest;
use crate::api::workflows_v1::WorkflowRelease;
use crate::client::Client;
use crate::progress::{Progress, Silent, Step};
use crate::python::{self, Release};
use crate::release::archive::{self, ArchiveInfo};
use crate::release::build::Validation;
use crate::release::config::{self, Entry};

/// Why a release could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("release {release} has no artifact")]
    NoArtifact { release: String },
    #[error(
        "release {release} has no runner object (custom worker commands cannot run in-process)"
    )]
    NoRunner { release: String },
    #[error("{} starts a custom worker command ({}); it cannot run in-process", path.display(), command.join(" "))]
    CustomCommand { path: PathBuf, command: Vec<String> },
    #[error("downloading artifact {digest} failed: {message}")]
    Download { digest: String, message: String },
    #[error("artifact {digest} arrived with digest {actual}: refusing it")]
    DigestMismatch { digest: String, actual: String },
    #[error("cannot extract artifact {}", archive.display())]
    Extract {
        archive: PathBuf,
        #[source]
        source: archive::Error,
    },
    #[error("cache I/O failed at {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} panicked")]
    Panicked {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Environment(#[from] python::environment::Error),
    #[error(transparent)]
    Python(#[from] python::Error),
}

impl Error {
    /// Whether trying again later may succeed without a new release: the network, the
    /// server, the cache's disk, `uv` (its exit status does not tell an unreachable index
    /// from an unsatisfiable lock, so every uv failure counts) and timeouts fail for a while;
    /// what the release's own bytes decide (a bad archive or digest, no runner object, an
    /// import that raises) fails the same way every time.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Download { .. }
            | Error::Io { .. }
            | Error::Panicked { .. }
            | Error::Environment(_) => true,
            Error::Python(error) => !matches!(
                error,
                python::Error::Load { .. } | python::Error::Initialize(_)
            ),
            Error::NoArtifact { .. }
            | Error::NoRunner { .. }
            | Error::CustomCommand { .. }
            | Error::DigestMismatch { .. }
            | Error::Extract { .. }
            | Error::Config(_) => false,
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How a release's Python environment is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvironmentSource {
    /// `uv sync --frozen --no-install-project` into a venv under the cache shared by every
    /// release with the same lock file (deployed and built releases).
    Shared,
    /// `uv sync` into the project's own `.venv` (a local project under development).
    Project,
    /// The project's `.venv` as it is, if it has one, without running `uv`
    /// (`task run --no-sync`).
    Existing,
}

/// Where a release's code is and what to load from it.
#[derive(Debug, Clone)]
pub struct Source {
    /// A short name for messages (the workflow slug, or `slug@release`).
    pub label: String,
    /// The directory with the release's files.
    pub root: PathBuf,
    /// The runner object, `module:object`.
    pub runner: String,
    pub environment: EnvironmentSource,
    /// How long `uv sync` may take.
    pub sync_timeout: Duration,
}

/// Builds the environment of `source` and answers the release to load. Nothing is synced
/// when the root has no `pyproject.toml` (a local project's `.venv` is used if it exists).
pub async fn release(source: Source, cache: &Path) -> Result<Release, Error> {
    release_reporting(source, cache, &Silent).await
}

/// [`release`], reporting the environment step to `progress`.
pub async fn release_reporting(
    source: Source,
    cache: &Path,
    progress: &dyn Progress,
) -> Result<Release, Error> {
    let has_project = source.root.join("pyproject.toml").is_file();
    let environment = match source.environment {
        EnvironmentSource::Shared | EnvironmentSource::Project if has_project => {
            let (root, cache, shared, timeout) = (
                source.root.clone(),
                cache.to_path_buf(),
                source.environment == EnvironmentSource::Shared,
                source.sync_timeout,
            );
            progress.begin(Step::Environment, None);
            let environment = tokio::task::spawn_blocking(move || {
                if shared {
                    python::environment::sync_shared(&root, &cache, timeout)
                } else {
                    python::environment::sync(&root, false, timeout)
                }
            })
            .await;
            progress.end(Step::Environment);
            let environment = environment.map_err(|source| Error::Panicked {
                what: "uv sync",
                source,
            })??;
            Some(environment)
        }
        // A local project without `pyproject.toml` may still have a venv of its own.
        EnvironmentSource::Existing | EnvironmentSource::Project => {
            let venv = source.root.join(".venv");
            venv.is_dir().then(|| python::environment::Environment {
                site_packages: python::environment::site_packages_of(&venv),
                venv,
            })
        }
        EnvironmentSource::Shared => None,
    };
    let (venv, site_packages) = match environment {
        Some(environment) => (Some(environment.venv), environment.site_packages),
        None => (None, Vec::new()),
    };
    Ok(Release {
        label: source.label,
        runtime: python::runtime::unpack(cache)?,
        root: source.root,
        site_packages,
        venv,
        runner: source.runner,
    })
}

/// The release of the workflow project around `start` (searched upward for
/// `tilebox.workflow.toml`), or of `start` itself with `runner` given.
pub fn project_source(
    start: &Path,
    runner: Option<&str>,
    environment: EnvironmentSource,
) -> Result<Source, Error> {
    if let Some(runner) = runner {
        return Ok(Source {
            label: "local".to_string(),
            root: std::path::absolute(start).unwrap_or_else(|_| start.to_path_buf()),
            runner: runner.to_string(),
            environment,
            sync_timeout: python::environment::DEFAULT_SYNC_TIMEOUT,
        });
    }
    let path = config::find(start)?;
    let configuration = config::load(&path)?;
    match configuration.entry {
        Entry::Runner(runner) => Ok(Source {
            label: configuration.slug,
            root: configuration.root,
            runner,
            environment,
            sync_timeout: python::environment::DEFAULT_SYNC_TIMEOUT,
        }),
        Entry::Command(command) => Err(Error::CustomCommand { path, command }),
    }
}

/// Extracts an artifact into `directory` (refusing anything `archive` refuses), through a
/// staging directory that is marked complete and renamed into place, so a half-extracted
/// release is never used. An already complete `directory` is kept as it is.
pub fn unpack_artifact(artifact: &Path, directory: &Path) -> Result<(), Error> {
    let marker = directory.join(COMPLETE_MARKER);
    if marker.exists() {
        return Ok(());
    }
    let parent = directory.parent().unwrap_or(Path::new("."));
    fs_err::create_dir_all(parent).map_err(io(parent))?;
    let name = directory
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}-{}", uuid::Uuid::new_v4()));
    let staged = archive::extract_archive(artifact, &staging, archive::Limits::default())
        .map_err(|source| Error::Extract {
            archive: artifact.to_path_buf(),
            source,
        })
        .and_then(|_| fs_err::write(staging.join(COMPLETE_MARKER), b"").map_err(io(&staging)));
    if let Err(error) = staged {
        // A refused archive may have been partly extracted: leave nothing of it behind.
        let _ = fs_err::remove_dir_all(&staging);
        return Err(error);
    }
    match fs_err::rename(&staging, directory) {
        Ok(()) => Ok(()),
        // Another process or task extracted the same artifact first: use theirs.
        Err(_) if marker.exists() => {
            let _ = fs_err::remove_dir_all(&staging);
            Ok(())
        }
        Err(source) => Err(Error::Io {
            path: directory.to_path_buf(),
            source,
        }),
    }
}

/// The file that marks an extracted directory complete.
const COMPLETE_MARKER: &str = ".complete";

/// Extracts a built artifact for validation under `cache/builds/<digest>` and answers the
/// release to load from it, with its environment shared by lock file.
async fn built_release(
    artifact: &Path,
    digest: &str,
    label: &str,
    runner: &str,
    cache: &Path,
    progress: &dyn Progress,
) -> Result<Release, Error> {
    let root = cache.join("builds").join(digest);
    unpack_blocking(artifact.to_path_buf(), root.clone(), progress).await?;
    release_reporting(
        Source {
            label: label.to_string(),
            root,
            runner: runner.to_string(),
            environment: EnvironmentSource::Shared,
            sync_timeout: python::environment::DEFAULT_SYNC_TIMEOUT,
        },
        cache,
        progress,
    )
    .await
}

async fn unpack_blocking(
    artifact: PathBuf,
    directory: PathBuf,
    progress: &dyn Progress,
) -> Result<(), Error> {
    progress.begin(Step::Unpack, None);
    let unpacked = tokio::task::spawn_blocking(move || unpack_artifact(&artifact, &directory))
        .await
        .map_err(|source| Error::Panicked {
            what: "extraction",
            source,
        });
    progress.end(Step::Unpack);
    unpacked?
}

/// Downloads (unless cached), verifies and extracts a deployed artifact, reporting both steps
/// to `progress`; answers the directory with its files.
pub async fn fetch_release(
    client: &Client,
    cache: &Path,
    digest: &str,
    progress: &dyn Progress,
) -> Result<PathBuf, Error> {
    let extracted = cache.join("releases").join(digest);
    if extracted.join(COMPLETE_MARKER).exists() {
        return Ok(extracted);
    }
    let artifacts = cache.join("artifacts");
    fs_err::tokio::create_dir_all(&artifacts)
        .await
        .map_err(io(&artifacts))?;
    let artifact = artifacts.join(format!("{digest}.tar.zst"));
    if !artifact.exists() {
        progress.begin(Step::Download, artifact_size(client, digest).await);
        let downloaded = download(client, digest, &artifact, progress).await;
        progress.end(Step::Download);
        downloaded?;
    }
    unpack_blocking(artifact, extracted.clone(), progress).await?;
    Ok(extracted)
}

/// The stored artifact's size, for the download's progress; `None` if the server does not
/// say (the download itself reports why it fails).
async fn artifact_size(client: &Client, digest: &str) -> Option<u64> {
    let mut client = client.clone();
    let info = client
        .artifacts
        .get_artifact(GetArtifactRequest {
            digest: digest.to_string(),
            id: None,
        })
        .await
        .ok()?
        .into_inner();
    (info.size > 0).then_some(info.size)
}

async fn download(
    client: &Client,
    digest: &str,
    path: &Path,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let failed = |message: String| Error::Download {
        digest: digest.to_string(),
        message,
    };
    let mut client = client.clone();
    let mut stream = client
        .artifacts
        .download_artifact(GetArtifactRequest {
            digest: digest.to_string(),
            id: None,
        })
        .await
        .map_err(|status| failed(status.message().to_string()))?
        .into_inner();
    let partial = path.with_extension(format!("part-{}", uuid::Uuid::new_v4()));
    let mut file = fs_err::tokio::File::create(&partial)
        .await
        .map_err(io(&partial))?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|status| failed(status.message().to_string()))?
    {
        hasher.update(&chunk.chunk);
        file.write_all(&chunk.chunk).await.map_err(io(&partial))?;
        received += chunk.chunk.len() as u64;
        progress.advance(Step::Download, received);
    }
    file.sync_all().await.map_err(io(&partial))?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual != digest {
        let _ = fs_err::tokio::remove_file(&partial).await;
        return Err(Error::DigestMismatch {
            digest: digest.to_string(),
            actual,
        });
    }
    fs_err::tokio::rename(&partial, path)
        .await
        .map_err(io(path))
}

/// A deployed release's short name: `workflow@` and the first 8 characters of its id.
pub fn release_label(workflow: &str, release: &WorkflowRelease) -> String {
    let release_id = release
        .id
        .as_ref()
        .and_then(|id| uuid::Uuid::from_slice(&id.uuid).ok())
        .map(|id| id.to_string())
        .unwrap_or_default();
    format!("{workflow}@{}", &release_id.get(..8).unwrap_or(&release_id))
}

/// Builds the `Release` to load for a deployed workflow release, its `uv sync` bounded by
/// `sync_timeout`, reporting download, unpack and environment to `progress`.
pub async fn prepare(
    client: &Client,
    cache: &Path,
    workflow: &str,
    release: &WorkflowRelease,
    sync_timeout: Duration,
    progress: &dyn Progress,
) -> Result<Release, Error> {
    let label = release_label(workflow, release);
    let digest = release
        .artifact
        .as_ref()
        .map(|artifact| artifact.digest.clone())
        .filter(|digest| !digest.is_empty())
        .ok_or_else(|| Error::NoArtifact {
            release: label.clone(),
        })?;
    let runner = release
        .content
        .as_ref()
        .map(|content| content.runner_object_path.clone())
        .filter(|runner| !runner.is_empty())
        .ok_or_else(|| Error::NoRunner {
            release: label.clone(),
        })?;
    let root = fetch_release(client, cache, &digest, progress).await?;
    release_reporting(
        Source {
            label,
            root,
            runner,
            environment: EnvironmentSource::Shared,
            sync_timeout,
        },
        cache,
        progress,
    )
    .await
}

/// Validates a built artifact as a runner would load it: extracts it, builds its shared
/// environment, loads the runner object (probing where it can run) and reports the task
/// identifiers it registers. Unpack, environment and load are reported to `progress`.
pub async fn validate_artifact(
    archive: &ArchiveInfo,
    label: &str,
    runner: &str,
    cache: &Path,
    progress: &dyn Progress,
) -> Result<Validation, Error> {
    let release = built_release(
        &archive.path,
        &archive.sha256,
        label,
        runner,
        cache,
        progress,
    )
    .await?;
    progress.begin(Step::Load, None);
    let loaded = python::load(release, python::Placement::Auto).await;
    progress.end(Step::Load);
    let loaded = loaded?;
    let validation = Validation {
        tasks: loaded.identifiers().to_vec(),
        classes: loaded.classes().to_vec(),
        isolation: match &loaded.fallback_reason {
            Some(reason) => format!("{} ({reason})", loaded.isolation()),
            None => loaded.isolation().to_string(),
        },
    };
    loaded.unload().await;
    Ok(validation)
}
