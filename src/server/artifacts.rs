//! Release artifact bytes, stored content-addressed under the data directory
//! (`artifacts/<sha256 hex>`), written through a temporary file and renamed into place only
//! after their digest checked out, so a stored artifact is never partial or wrong. A
//! temporary file (`.upload-<uuid>`) is removed when its upload ends without being stored
//! (an error, a client that went away), and any left by a killed server at the next start.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why an artifact upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid artifact digest `{0}`: expected 64 lowercase hex characters (sha256)")]
    InvalidDigest(String),
    #[error("the artifact is {size} bytes; this server accepts at most {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("the uploaded bytes hash to {actual}, not to the announced digest {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("the upload announced {expected} bytes but sent {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("the server's disk is full: cannot store the artifact at {path}")]
    StorageFull {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("artifact storage failed at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The prefix of an upload's temporary file name.
const UPLOAD_PREFIX: &str = ".upload-";

/// The error for a failed file operation on `path`; a full disk is told apart, since it is
/// the operator's to fix and passes when space returns.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| {
        if source.kind() == std::io::ErrorKind::StorageFull {
            Error::StorageFull { path, source }
        } else {
            Error::Io { path, source }
        }
    }
}

/// A temporary file removed when dropped, unless it was kept (moved into place).
struct Temporary {
    path: PathBuf,
    kept: bool,
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.kept
            && let Err(error) = fs_err::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, "cannot remove an aborted upload's temporary file");
        }
    }
}

/// Normalises a digest (`sha256:` prefix allowed) to 64 lowercase hex characters.
pub fn normalize_digest(digest: &str) -> Result<String, Error> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    if hex.len() == 64
        && hex
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    {
        Ok(hex.to_string())
    } else {
        Err(Error::InvalidDigest(digest.to_string()))
    }
}

/// Artifact files in a directory.
#[derive(Debug, Clone)]
pub struct ArtifactFiles {
    directory: PathBuf,
    limit: u64,
}

/// An upload in progress.
pub struct Upload {
    expected_digest: String,
    expected_size: u64,
    temporary: Temporary,
    file: fs_err::tokio::File,
    hasher: Sha256,
    written: u64,
    limit: u64,
    final_path: PathBuf,
}

impl ArtifactFiles {
    pub fn new(directory: PathBuf, limit: u64) -> Self {
        Self { directory, limit }
    }

    /// Where an artifact's bytes live.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.directory.join(digest)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Removes the temporary files of uploads that never finished (a server killed during
    /// an upload); run at start, before any upload begins. Answers how many were removed.
    pub fn remove_stale_uploads(&self) -> Result<usize, Error> {
        let entries = match fs_err::read_dir(&self.directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(io_error(&self.directory)(error)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io_error(&self.directory))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(UPLOAD_PREFIX)
            {
                let path = entry.path();
                fs_err::remove_file(&path).map_err(io_error(&path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Starts an upload of `size` bytes announced to hash to `digest`.
    pub async fn begin(&self, digest: &str, size: u64) -> Result<Upload, Error> {
        let digest = normalize_digest(digest)?;
        if size > self.limit {
            return Err(Error::TooLarge {
                size,
                limit: self.limit,
            });
        }
        fs_err::tokio::create_dir_all(&self.directory)
            .await
            .map_err(io_error(&self.directory))?;
        let temporary = self
            .directory
            .join(format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4()));
        let file = fs_err::tokio::File::create(&temporary)
            .await
            .map_err(io_error(&temporary))?;
        let temporary = Temporary {
            path: temporary,
            kept: false,
        };
        Ok(Upload {
            final_path: self.path(&digest),
            expected_digest: digest,
            expected_size: size,
            temporary,
            file,
            hasher: Sha256::new(),
            written: 0,
            limit: self.limit,
        })
    }
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.written += chunk.len() as u64;
        // An error drops the upload, and with it the temporary file.
        if self.written > self.limit || self.written > self.expected_size {
            return Err(if self.written > self.limit {
                Error::TooLarge {
                    size: self.written,
                    limit: self.limit,
                }
            } else {
                Error::SizeMismatch {
                    expected: self.expected_size,
                    actual: self.written,
                }
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(io_error(&self.temporary.path))
    }

    /// Verifies size and digest, syncs, and moves the bytes into place; answers the digest.
    pub async fn finish(mut self) -> Result<(String, u64), Error> {
        let actual = hex::encode(self.hasher.finalize());
        let checked = if self.written != self.expected_size {
            Err(Error::SizeMismatch {
                expected: self.expected_size,
                actual: self.written,
            })
        } else if actual != self.expected_digest {
            Err(Error::DigestMismatch {
                expected: self.expected_digest.clone(),
                actual,
            })
        } else {
            Ok(())
        };
        checked?;
        // A tokio file's `write_all` returns before its last write is done, and `sync_all`
        // does not report that write's error (ENOSPC on a full disk): `flush` does.
        self.file
            .flush()
            .await
            .map_err(io_error(&self.temporary.path))?;
        self.file
            .sync_all()
            .await
            .map_err(io_error(&self.temporary.path))?;
        fs_err::tokio::rename(&self.temporary.path, &self.final_path)
            .await
            .map_err(io_error(&self.final_path))?;
        self.temporary.kept = true;
        Ok((self.expected_digest, self.written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[tokio::test]
    async fn an_upload_is_stored_only_when_its_digest_matches() {
        let directory = tempfile::tempdir().unwrap();
        let files = ArtifactFiles::new(directory.path().to_path_buf(), 1024);
        let mut upload = files
            .begin(&format!("sha256:{HELLO_SHA256}"), 5)
            .await
            .unwrap();
        upload.write(b"hel").await.unwrap();
        upload.write(b"lo").await.unwrap();
        assert_eq!(
            upload.finish().await.unwrap(),
            (HELLO_SHA256.to_string(), 5)
        );
        assert_eq!(fs_err::read(files.path(HELLO_SHA256)).unwrap(), b"hello");

        let wrong = "0".repeat(64);
        let mut upload = files.begin(&wrong, 5).await.unwrap();
        upload.write(b"hello").await.unwrap();
        let error = upload.finish().await.unwrap_err();
        assert!(matches!(error, Error::DigestMismatch { .. }), "{error}");
        assert!(
            !files.path(&wrong).exists(),
            "a mismatching upload leaves nothing behind"
        );
        let leftovers = fs_err::read_dir(directory.path()).unwrap().count();
        assert_eq!(leftovers, 1, "only the good artifact remains");
    }

    #[tokio::test]
    async fn limits_and_bad_digests_are_refused() {
        let directory = tempfile::tempdir().unwrap();
        let files = ArtifactFiles::new(directory.path().to_path_buf(), 4);
        assert!(matches!(
            files.begin(HELLO_SHA256, 5).await,
            Err(Error::TooLarge { size: 5, limit: 4 })
        ));
        assert!(matches!(
            files.begin("sha256:XYZ", 1).await,
            Err(Error::InvalidDigest(_))
        ));
        let mut upload = files.begin(HELLO_SHA256, 2).await.unwrap();
        assert!(matches!(
            upload.write(b"hel").await,
            Err(Error::SizeMismatch { .. })
        ));
        drop(upload);
        assert_eq!(fs_err::read_dir(directory.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_abandoned_upload_leaves_no_temporary_file_and_stale_ones_are_swept() {
        let directory = tempfile::tempdir().unwrap();
        let files = ArtifactFiles::new(directory.path().to_path_buf(), 1024);
        let mut upload = files.begin(HELLO_SHA256, 5).await.unwrap();
        upload.write(b"he").await.unwrap();
        assert_eq!(fs_err::read_dir(directory.path()).unwrap().count(), 1);
        drop(upload);
        assert_eq!(fs_err::read_dir(directory.path()).unwrap().count(), 0);

        fs_err::write(directory.path().join(".upload-stale"), b"x").unwrap();
        fs_err::write(directory.path().join(HELLO_SHA256), b"hello").unwrap();
        assert_eq!(files.remove_stale_uploads().unwrap(), 1);
        let left: Vec<_> = fs_err::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(HELLO_SHA256)]);
    }
}
