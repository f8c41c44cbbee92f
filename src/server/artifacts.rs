//! Release artifact bytes, verified before they become readable, in one of two places
//! ([`ArtifactStorage`]):
//!
//! - files under the data directory (`artifacts/<sha256 hex>`, the SQLite server's): written
//!   through a temporary file and renamed into place only after their digest checked out,
//!   so a stored artifact is never partial or wrong. A temporary file (`.upload-<uuid>`) is
//!   removed when its upload ends without being stored (an error, a client that went
//!   away), and any left by a killed server at the next start.
//! - the PostgreSQL database (`store::postgres::blobs`), so every replica serves every
//!   artifact: chunks under an upload id, which becomes the digest's blob once verified.
//!
//! Both check size, limit and digest the same way ([`Verifier`]).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::server::store;
use crate::server::store::postgres::{PgStore, blobs};

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
    #[error("artifact storage in the database failed")]
    Database(#[source] store::Error),
    #[error("artifact {digest} is registered but its bytes are not stored")]
    Missing { digest: String },
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

/// An upload to a file in progress.
pub struct FileUpload {
    verifier: Verifier,
    temporary: Temporary,
    file: fs_err::tokio::File,
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
    pub async fn begin(&self, digest: &str, size: u64) -> Result<FileUpload, Error> {
        let verifier = Verifier::new(digest, size, self.limit)?;
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
        Ok(FileUpload {
            final_path: self.path(&verifier.expected_digest),
            verifier,
            temporary,
            file,
        })
    }
}

impl FileUpload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        // An error drops the upload, and with it the temporary file.
        self.verifier.accept(chunk)?;
        self.file
            .write_all(chunk)
            .await
            .map_err(io_error(&self.temporary.path))
    }

    /// Verifies size and digest, syncs, and moves the bytes into place; answers the digest.
    pub async fn finish(mut self) -> Result<(String, u64), Error> {
        let (digest, size) = self.verifier.verify()?;
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
        Ok((digest, size))
    }
}

/// Checks an upload as it arrives: the announced size within the limit, no byte beyond
/// it, and at the end the size and sha256 announced.
struct Verifier {
    expected_digest: String,
    expected_size: u64,
    limit: u64,
    hasher: Sha256,
    written: u64,
}

impl Verifier {
    fn new(digest: &str, size: u64, limit: u64) -> Result<Self, Error> {
        let expected_digest = normalize_digest(digest)?;
        if size > limit {
            return Err(Error::TooLarge { size, limit });
        }
        Ok(Self {
            expected_digest,
            expected_size: size,
            limit,
            hasher: Sha256::new(),
            written: 0,
        })
    }

    fn accept(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.written += chunk.len() as u64;
        if self.written > self.limit {
            return Err(Error::TooLarge {
                size: self.written,
                limit: self.limit,
            });
        }
        if self.written > self.expected_size {
            return Err(Error::SizeMismatch {
                expected: self.expected_size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// The digest (64 hex characters) and size, when both are the announced ones.
    fn verify(&mut self) -> Result<(String, u64), Error> {
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if self.written != self.expected_size {
            return Err(Error::SizeMismatch {
                expected: self.expected_size,
                actual: self.written,
            });
        }
        if actual != self.expected_digest {
            return Err(Error::DigestMismatch {
                expected: self.expected_digest.clone(),
                actual,
            });
        }
        Ok((self.expected_digest.clone(), self.written))
    }
}

/// Where a server keeps artifact bytes.
#[derive(Clone)]
pub enum ArtifactStorage {
    /// Files under the data directory: one server.
    Files(ArtifactFiles),
    /// The PostgreSQL database: every replica reads every artifact.
    Database(DatabaseArtifacts),
}

/// Artifact bytes in a PostgreSQL store.
#[derive(Clone)]
pub struct DatabaseArtifacts {
    blobs: blobs::Blobs,
    limit: u64,
}

/// How old an unpublished upload in the database must be before a start sweeps it: younger
/// ones may be in progress on another replica.
pub const STALE_DATABASE_UPLOAD: std::time::Duration = std::time::Duration::from_secs(3600);

/// Bytes per download message.
pub const DOWNLOAD_CHUNK_BYTES: usize = 256 * 1024;

impl ArtifactStorage {
    /// Artifact bytes in the database of `store`, uploads of at most `limit` bytes.
    pub fn database(store: &PgStore, limit: u64) -> Self {
        Self::Database(DatabaseArtifacts {
            blobs: store.blobs(),
            limit,
        })
    }

    pub fn limit(&self) -> u64 {
        match self {
            Self::Files(files) => files.limit(),
            Self::Database(database) => database.limit,
        }
    }

    /// Removes what uploads cut short by a killed server left behind; answers how many.
    pub async fn remove_stale_uploads(&self) -> Result<usize, Error> {
        match self {
            Self::Files(files) => files.remove_stale_uploads(),
            Self::Database(database) => database
                .blobs
                .remove_stale_uploads(STALE_DATABASE_UPLOAD)
                .await
                .map_err(Error::Database),
        }
    }

    /// Starts an upload of `size` bytes announced to hash to `digest`.
    pub async fn begin(&self, digest: &str, size: u64) -> Result<Upload, Error> {
        match self {
            Self::Files(files) => files.begin(digest, size).await.map(Upload::File),
            Self::Database(database) => {
                let verifier = Verifier::new(digest, size, database.limit)?;
                let id = database.blobs.begin().await.map_err(Error::Database)?;
                Ok(Upload::Database(DatabaseUpload {
                    blobs: database.blobs.clone(),
                    id,
                    verifier,
                    buffer: Vec::new(),
                    next_seq: 0,
                    ended: false,
                }))
            }
        }
    }

    /// Opens the stored bytes of `digest` (64 hex characters) for reading.
    pub async fn open(&self, digest: &str) -> Result<Download, Error> {
        match self {
            Self::Files(files) => {
                let path = files.path(digest);
                let file = fs_err::tokio::File::open(&path)
                    .await
                    .map_err(io_error(&path))?;
                Ok(Download::File(file))
            }
            Self::Database(database) => {
                let (upload, _) = database
                    .blobs
                    .find(digest)
                    .await
                    .map_err(Error::Database)?
                    .ok_or_else(|| Error::Missing {
                        digest: digest.to_string(),
                    })?;
                Ok(Download::Database {
                    blobs: database.blobs.clone(),
                    upload,
                    next_seq: 0,
                    pending: std::collections::VecDeque::new(),
                    done: false,
                })
            }
        }
    }
}

/// An upload in progress.
pub enum Upload {
    File(FileUpload),
    Database(DatabaseUpload),
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        match self {
            Self::File(upload) => upload.write(chunk).await,
            Self::Database(upload) => upload.write(chunk).await,
        }
    }

    /// Verifies size and digest and makes the bytes readable; answers digest and size.
    pub async fn finish(self) -> Result<(String, u64), Error> {
        match self {
            Self::File(upload) => upload.finish().await,
            Self::Database(upload) => upload.finish().await,
        }
    }
}

/// An upload to the database: buffered into chunks of [`blobs::CHUNK_BYTES`], each stored
/// as it fills. Dropped unfinished (an error, a client gone), its chunks are discarded.
pub struct DatabaseUpload {
    blobs: blobs::Blobs,
    id: Uuid,
    verifier: Verifier,
    buffer: Vec<u8>,
    next_seq: i64,
    /// Published or discarded: nothing for the drop to do.
    ended: bool,
}

impl DatabaseUpload {
    async fn write(&mut self, mut chunk: &[u8]) -> Result<(), Error> {
        self.verifier.accept(chunk)?;
        while !chunk.is_empty() {
            let take = (blobs::CHUNK_BYTES - self.buffer.len()).min(chunk.len());
            self.buffer.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buffer.len() == blobs::CHUNK_BYTES {
                self.store_buffer().await?;
            }
        }
        Ok(())
    }

    async fn store_buffer(&mut self) -> Result<(), Error> {
        let bytes = std::mem::replace(&mut self.buffer, Vec::with_capacity(blobs::CHUNK_BYTES));
        self.blobs
            .put_chunk(self.id, self.next_seq, bytes)
            .await
            .map_err(Error::Database)?;
        self.next_seq += 1;
        Ok(())
    }

    async fn finish(mut self) -> Result<(String, u64), Error> {
        let stored = self.verify_and_publish().await;
        if stored.is_err()
            && let Err(error) = self.blobs.discard(self.id).await
        {
            tracing::warn!(%error, upload = %self.id, "cannot discard a refused upload; a later start sweeps it");
        }
        self.ended = true;
        stored
    }

    /// Verifies, stores the last chunk and publishes: the bytes are readable only after.
    async fn verify_and_publish(&mut self) -> Result<(String, u64), Error> {
        let (digest, size) = self.verifier.verify()?;
        if !self.buffer.is_empty() {
            self.store_buffer().await?;
        }
        let won = self
            .blobs
            .publish(self.id, digest.clone(), size)
            .await
            .map_err(Error::Database)?;
        tracing::debug!(%digest, upload = %self.id, won, "stored an artifact");
        Ok((digest, size))
    }
}

impl Drop for DatabaseUpload {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (blobs, upload) = (self.blobs.clone(), self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(error) = blobs.discard(upload).await {
                        tracing::warn!(%error, %upload, "cannot discard an aborted upload; a later start sweeps it");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%upload, "an aborted upload is left for a later start to sweep");
            }
        }
    }
}

/// Stored artifact bytes being read.
pub enum Download {
    File(fs_err::tokio::File),
    Database {
        blobs: blobs::Blobs,
        upload: Uuid,
        next_seq: i64,
        pending: std::collections::VecDeque<Vec<u8>>,
        done: bool,
    },
}

impl Download {
    /// The next at most [`DOWNLOAD_CHUNK_BYTES`] bytes; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, Error> {
        match self {
            Self::File(file) => {
                let mut buffer = vec![0u8; DOWNLOAD_CHUNK_BYTES];
                let count = file.read(&mut buffer).await.map_err(|source| Error::Io {
                    path: file.path().to_path_buf(),
                    source,
                })?;
                buffer.truncate(count);
                Ok((count > 0).then_some(buffer))
            }
            Self::Database {
                blobs,
                upload,
                next_seq,
                pending,
                done,
            } => {
                if pending.is_empty() && !*done {
                    let page = blobs
                        .chunks(*upload, *next_seq)
                        .await
                        .map_err(Error::Database)?;
                    *done = page.is_empty();
                    for (seq, bytes) in page {
                        *next_seq = seq + 1;
                        // Stored chunks are larger than a message: split.
                        pending.extend(bytes.chunks(DOWNLOAD_CHUNK_BYTES).map(<[u8]>::to_vec));
                    }
                }
                Ok(pending.pop_front())
            }
        }
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
