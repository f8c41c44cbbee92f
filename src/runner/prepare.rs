//! Turning a deployed release into something loadable: the artifact downloaded once into a
//! cache keyed by its digest and verified, extracted safely into its own directory, and its
//! environment built with `uv sync --frozen` into a venv shared by every release with the
//! same lock file and Python version.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::api::selfhosted_v1::GetArtifactRequest;
use crate::api::workflows_v1::WorkflowRelease;
use crate::client::Client;
use crate::python::{self, Release};
use crate::release::archive;

/// Why a deployed release could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("release {release} has no artifact")]
    NoArtifact { release: String },
    #[error(
        "release {release} has no runner object (custom worker commands cannot run in-process)"
    )]
    NoRunner { release: String },
    #[error("downloading artifact {digest} failed: {message}")]
    Download { digest: String, message: String },
    #[error("artifact {digest} arrived with digest {actual}: refusing it")]
    DigestMismatch { digest: String, actual: String },
    #[error("cannot extract artifact {digest}")]
    Extract {
        digest: String,
        #[source]
        source: archive::Error,
    },
    #[error("cache I/O failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Environment(#[from] python::environment::EnvironmentError),
    #[error(transparent)]
    Python(#[from] python::Error),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Downloads (unless cached), verifies and extracts a release; answers the directory.
pub async fn fetch_release(client: &Client, cache: &Path, digest: &str) -> Result<PathBuf, Error> {
    let extracted = cache.join("releases").join(digest);
    if extracted.join(".complete").exists() {
        return Ok(extracted);
    }
    let artifacts = cache.join("artifacts");
    tokio::fs::create_dir_all(&artifacts)
        .await
        .map_err(io(&artifacts))?;
    let artifact = artifacts.join(format!("{digest}.tar.zst"));
    if !artifact.exists() {
        download(client, digest, &artifact).await?;
    }
    let staging = cache
        .join("releases")
        .join(format!(".{digest}-{}", uuid::Uuid::new_v4()));
    let (archive_path, target) = (artifact.clone(), staging.clone());
    let digest_owned = digest.to_string();
    let extracted_into_staging = tokio::task::spawn_blocking(move || {
        archive::extract_archive(&archive_path, &target, archive::Limits::default())
    })
    .await
    .map_err(|error| Error::Download {
        digest: digest_owned.clone(),
        message: error.to_string(),
    })?
    .map_err(|source| Error::Extract {
        digest: digest_owned,
        source,
    });
    if let Err(error) = extracted_into_staging {
        // A refused archive may have been partly extracted: leave nothing of it behind.
        let _ = tokio::fs::remove_dir_all(&staging).await;
        return Err(error);
    }
    tokio::fs::write(staging.join(".complete"), b"")
        .await
        .map_err(io(&staging))?;
    match tokio::fs::rename(&staging, &extracted).await {
        Ok(()) => Ok(extracted),
        Err(_) if extracted.join(".complete").exists() => {
            let _ = tokio::fs::remove_dir_all(&staging).await;
            Ok(extracted)
        }
        Err(source) => Err(Error::Io {
            path: extracted,
            source,
        }),
    }
}

async fn download(client: &Client, digest: &str, path: &Path) -> Result<(), Error> {
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
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(io(&partial))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|status| failed(status.message().to_string()))?
    {
        hasher.update(&chunk.chunk);
        file.write_all(&chunk.chunk).await.map_err(io(&partial))?;
    }
    file.sync_all().await.map_err(io(&partial))?;
    drop(file);
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if actual != digest {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(Error::DigestMismatch {
            digest: digest.to_string(),
            actual,
        });
    }
    tokio::fs::rename(&partial, path).await.map_err(io(path))
}

/// Builds the `Release` to load for a deployed workflow release.
pub async fn prepare(
    client: &Client,
    cache: &Path,
    workflow: &str,
    release: &WorkflowRelease,
) -> Result<Release, Error> {
    let release_id = release
        .id
        .as_ref()
        .and_then(|id| uuid::Uuid::from_slice(&id.uuid).ok())
        .map(|id| id.to_string())
        .unwrap_or_default();
    let label = format!("{workflow}@{}", &release_id.get(..8).unwrap_or(&release_id));
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
    let root = fetch_release(client, cache, &digest).await?;
    let (venv, site_packages) = if root.join("pyproject.toml").is_file() {
        let (root, cache) = (root.clone(), cache.to_path_buf());
        let environment =
            tokio::task::spawn_blocking(move || python::environment::sync_shared(&root, &cache))
                .await
                .map_err(|error| Error::Download {
                    digest: digest.clone(),
                    message: error.to_string(),
                })??;
        (Some(environment.venv), environment.site_packages)
    } else {
        (None, Vec::new())
    };
    Ok(Release {
        label,
        runtime: python::runtime::unpack(cache)?,
        root,
        site_packages,
        venv,
        runner,
    })
}
