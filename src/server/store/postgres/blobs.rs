//! Artifact bytes in the database, so every replica serves every artifact.
//!
//! An upload gets an id (`artifact_uploads`) and writes its bytes as numbered chunks
//! (`artifact_chunks`), each in a short transaction of its own; once the caller verified
//! digest and size, [`Blobs::publish`] makes the upload the digest's blob (`artifact_blobs`),
//! or, when another upload of the same digest won, deletes its own chunks. Only a blob is
//! ever read, so an unverified upload is never readable. Downloads page through a blob's
//! chunks a few at a time, each page its own short read: no transaction lives as long as a
//! transfer (it would hold back vacuum of every table).
//!
//! These run on pooled connections, not on the writer: megabytes of bytes must not wait in,
//! or hold up, the group-commit batches of task writes.

use std::time::Duration;

use uuid::Uuid;

use super::{PgStore, Tx, pg};
use crate::api::convert::now_millis;
use crate::server::store::{Error, Result};

/// Bytes per stored chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks one download read fetches.
const DOWNLOAD_PAGE: i64 = 2;

/// The artifact bytes of a [`PgStore`]; cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: PgStore,
}

impl PgStore {
    /// The store's artifact bytes.
    pub fn blobs(&self) -> Blobs {
        Blobs {
            store: self.clone(),
        }
    }
}

impl Blobs {
    /// Starts an upload; answers its id.
    pub async fn begin(&self) -> Result<Uuid> {
        let upload = Uuid::now_v7();
        self.store
            .write_apart(move |tx| {
                tx.execute(
                    "INSERT INTO artifact_uploads (upload, started_at) VALUES ($1, $2)",
                    &[&upload, &now_millis()],
                )
                .map_err(pg("begin an artifact upload"))?;
                Ok(upload)
            })
            .await
    }

    /// Stores chunk `seq` of `upload`; refused when the upload is gone (swept as stale).
    pub async fn put_chunk(&self, upload: Uuid, seq: i64, bytes: Vec<u8>) -> Result<()> {
        self.store
            .write_apart(move |tx| {
                // The upload's row is locked (shared) so a sweep cannot remove it meanwhile
                // and leave this chunk behind.
                let stored = tx
                    .execute(
                        "INSERT INTO artifact_chunks (upload, seq, bytes)
                         SELECT upload, $2, $3 FROM artifact_uploads WHERE upload = $1 FOR SHARE",
                        &[&upload, &seq, &bytes],
                    )
                    .map_err(pg("store an artifact chunk"))?;
                if stored == 0 {
                    return Err(Error::Conflict(format!(
                        "artifact upload {upload} is gone (swept as stale); upload again"
                    )));
                }
                Ok(())
            })
            .await
    }

    /// Makes the verified bytes of `upload` the blob of `digest` (`size` bytes). Answers
    /// `true` when they are, `false` when another upload of the digest was first (its bytes
    /// are the same; this upload's chunks are deleted).
    pub async fn publish(&self, upload: Uuid, digest: String, size: u64) -> Result<bool> {
        self.store
            .write_apart(move |tx| {
                let ended = tx
                    .execute("DELETE FROM artifact_uploads WHERE upload = $1", &[&upload])
                    .map_err(pg("publish an artifact"))?;
                if ended == 0 {
                    return Err(Error::Conflict(format!(
                        "artifact upload {upload} is gone (swept as stale); upload again"
                    )));
                }
                let stored: i64 = tx
                    .query_one(
                        "SELECT COALESCE(SUM(octet_length(bytes)), 0)::bigint FROM artifact_chunks WHERE upload = $1",
                        &[&upload],
                    )
                    .map_err(pg("publish an artifact"))?
                    .get(0);
                if stored as u64 != size {
                    return Err(Error::Corrupt(format!(
                        "artifact upload {upload} of {digest} holds {stored} bytes, not the {size} verified"
                    )));
                }
                let won = tx
                    .execute(
                        "INSERT INTO artifact_blobs (digest, upload, size) VALUES ($1, $2, $3)
                         ON CONFLICT (digest) DO NOTHING",
                        &[&digest, &upload, &(size as i64)],
                    )
                    .map_err(pg("publish an artifact"))?
                    == 1;
                if !won {
                    delete_chunks(tx, &[upload])?;
                }
                Ok(won)
            })
            .await
    }

    /// Forgets an upload that will not be published, with its chunks.
    pub async fn discard(&self, upload: Uuid) -> Result<()> {
        self.store
            .write_apart(move |tx| {
                let published = tx
                    .query_opt("SELECT 1 FROM artifact_blobs WHERE upload = $1", &[&upload])
                    .map_err(pg("discard an artifact upload"))?;
                if published.is_none() {
                    tx.execute("DELETE FROM artifact_uploads WHERE upload = $1", &[&upload])
                        .map_err(pg("discard an artifact upload"))?;
                    delete_chunks(tx, &[upload])?;
                }
                Ok(())
            })
            .await
    }

    /// The upload holding the bytes of `digest`, and their size; `None` when none was
    /// published.
    pub async fn find(&self, digest: &str) -> Result<Option<(Uuid, u64)>> {
        let digest = digest.to_string();
        self.store
            .read(move |tx| {
                Ok(tx
                    .query_opt(
                        "SELECT upload, size FROM artifact_blobs WHERE digest = $1",
                        &[&digest],
                    )
                    .map_err(pg("find an artifact"))?
                    .map(|row| (row.get(0), row.get::<_, i64>(1).max(0) as u64)))
            })
            .await
    }

    /// The next few chunks of `upload` from chunk `from` on, in order: (seq, bytes).
    pub async fn chunks(&self, upload: Uuid, from: i64) -> Result<Vec<(i64, Vec<u8>)>> {
        self.store
            .read(move |tx| {
                Ok(tx
                    .query(
                        "SELECT seq, bytes FROM artifact_chunks WHERE upload = $1 AND seq >= $2
                         ORDER BY seq LIMIT $3",
                        &[&upload, &from, &DOWNLOAD_PAGE],
                    )
                    .map_err(pg("read an artifact"))?
                    .iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect())
            })
            .await
    }

    /// Removes uploads begun more than `older_than` ago and never published, with their
    /// chunks: those of a replica killed during an upload. Younger ones are left alone,
    /// since another replica may be receiving them. Answers how many were removed.
    pub async fn remove_stale_uploads(&self, older_than: Duration) -> Result<usize> {
        let before = now_millis() - older_than.as_millis() as i64;
        self.store
            .write_apart(move |tx| {
                let stale: Vec<Uuid> = tx
                    .query(
                        "DELETE FROM artifact_uploads u WHERE started_at < $1
                         AND NOT EXISTS (SELECT 1 FROM artifact_blobs b WHERE b.upload = u.upload)
                         RETURNING upload",
                        &[&before],
                    )
                    .map_err(pg("remove stale artifact uploads"))?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                delete_chunks(tx, &stale)?;
                Ok(stale.len())
            })
            .await
    }
}

fn delete_chunks(tx: &mut Tx<'_>, uploads: &[Uuid]) -> Result<()> {
    tx.execute(
        "DELETE FROM artifact_chunks WHERE upload = ANY($1)",
        &[&uploads],
    )
    .map_err(pg("delete artifact chunks"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use sha2::{Digest, Sha256};

    use super::super::test_cluster::TestCluster;
    use super::super::tests::open;
    use super::super::{Options, PgStore};
    use super::CHUNK_BYTES;
    use crate::server::artifacts::{self, ArtifactStorage, DOWNLOAD_CHUNK_BYTES};

    const LIMIT: u64 = 64 * 1024 * 1024;

    /// `size` bytes that differ from chunk to chunk (a swapped or repeated chunk shows).
    fn bytes(size: usize, seed: u8) -> Vec<u8> {
        (0..size)
            .map(|index| (index as u64 * 31 + index as u64 / 7919 + u64::from(seed)) as u8)
            .collect()
    }

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    async fn upload(
        storage: &ArtifactStorage,
        digest: &str,
        size: u64,
        content: &[u8],
    ) -> Result<(String, u64), artifacts::Error> {
        let mut upload = storage.begin(digest, size).await?;
        // Pieces that do not line up with the stored chunks.
        for piece in content.chunks(300_001) {
            upload.write(piece).await?;
        }
        upload.finish().await
    }

    async fn download(
        storage: &ArtifactStorage,
        digest: &str,
    ) -> Result<Vec<u8>, artifacts::Error> {
        let mut download = storage.open(digest).await?;
        let mut content = Vec::new();
        while let Some(message) = download.next().await? {
            assert!(
                !message.is_empty() && message.len() <= DOWNLOAD_CHUNK_BYTES,
                "a message of {} bytes",
                message.len()
            );
            content.extend(message);
        }
        Ok(content)
    }

    async fn count(url: &str, sql: &str) -> i64 {
        let (url, sql) = (url.to_string(), sql.to_string());
        tokio::task::spawn_blocking(move || TestCluster::psql(&url, &sql))
            .await
            .expect("psql")
            .parse()
            .expect("a count")
    }

    #[tokio::test]
    async fn a_verified_upload_is_readable_in_full_by_another_replica_across_pages() {
        let (store, database) = open().await;
        let storage = ArtifactStorage::database(&store, LIMIT);
        // Ten stored chunks: more than one download page of eight.
        let content = bytes(9 * CHUNK_BYTES + CHUNK_BYTES / 2 + 3, 1);
        let digest = digest_of(&content);
        let (hex, size) = upload(&storage, &digest, content.len() as u64, &content)
            .await
            .expect("upload");
        assert_eq!(
            (format!("sha256:{hex}"), size),
            (digest, content.len() as u64)
        );
        assert_eq!(
            count(&database.url, "SELECT count(*) FROM artifact_chunks").await,
            10
        );

        let replica = PgStore::connect(&database.url, Options::default())
            .await
            .expect("connect another replica");
        let read = download(&ArtifactStorage::database(&replica, LIMIT), &hex)
            .await
            .expect("download");
        assert_eq!(read.len(), content.len());
        assert!(read == content, "the bytes read are the bytes uploaded");
        assert_eq!(
            count(&database.url, "SELECT count(*) FROM artifact_uploads").await,
            0,
            "a published upload is a blob, not an upload in progress"
        );
    }

    #[tokio::test]
    async fn a_wrong_digest_or_size_leaves_nothing_readable_and_no_chunks() {
        let (store, database) = open().await;
        let storage = ArtifactStorage::database(&store, LIMIT);
        let content = bytes(2 * CHUNK_BYTES + 10, 2);
        let wrong = digest_of(b"something else");
        let refused = upload(&storage, &wrong, content.len() as u64, &content)
            .await
            .expect_err("a wrong digest is refused");
        assert!(
            matches!(refused, artifacts::Error::DigestMismatch { .. }),
            "{refused}"
        );
        let hex = wrong.trim_start_matches("sha256:");
        let missing = download(&storage, hex).await.expect_err("nothing stored");
        assert!(
            matches!(missing, artifacts::Error::Missing { .. }),
            "{missing}"
        );

        let right = digest_of(&content);
        let short = upload(&storage, &right, content.len() as u64 + 1, &content)
            .await
            .expect_err("fewer bytes than announced are refused");
        assert!(
            matches!(short, artifacts::Error::SizeMismatch { .. }),
            "{short}"
        );
        let missing = download(&storage, right.trim_start_matches("sha256:"))
            .await
            .expect_err("nothing stored");
        assert!(
            matches!(missing, artifacts::Error::Missing { .. }),
            "{missing}"
        );
        for table in ["artifact_chunks", "artifact_uploads", "artifact_blobs"] {
            assert_eq!(
                count(&database.url, &format!("SELECT count(*) FROM {table}")).await,
                0,
                "{table} is empty after refused uploads"
            );
        }

        // Bytes beyond the announced size: the write is refused and the dropped upload's
        // stored chunks are discarded.
        let mut upload = storage
            .begin(&right, CHUNK_BYTES as u64 + 1)
            .await
            .expect("begin");
        upload.write(&content[..CHUNK_BYTES]).await.expect("write");
        assert_eq!(
            count(&database.url, "SELECT count(*) FROM artifact_chunks").await,
            1
        );
        let over = upload
            .write(&content[..2])
            .await
            .expect_err("too many bytes");
        assert!(
            matches!(over, artifacts::Error::SizeMismatch { .. }),
            "{over}"
        );
        drop(upload);
        let deadline = Instant::now() + Duration::from_secs(10);
        while count(&database.url, "SELECT count(*) FROM artifact_chunks").await != 0 {
            assert!(
                Instant::now() < deadline,
                "the aborted upload's chunk stays"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            count(&database.url, "SELECT count(*) FROM artifact_uploads").await,
            0
        );
    }

    #[tokio::test]
    async fn two_concurrent_uploads_of_one_digest_end_with_one_blob() {
        let (store, database) = open().await;
        let replica = PgStore::connect(&database.url, Options::default())
            .await
            .expect("connect another replica");
        let (one, other) = (
            ArtifactStorage::database(&store, LIMIT),
            ArtifactStorage::database(&replica, LIMIT),
        );
        let content = bytes(3 * CHUNK_BYTES + 5, 3);
        let digest = digest_of(&content);
        let size = content.len() as u64;
        let (first, second) = tokio::join!(
            upload(&one, &digest, size, &content),
            upload(&other, &digest, size, &content)
        );
        let (first, second) = (first.expect("upload"), second.expect("upload"));
        assert_eq!(first, second, "both uploads are answered the same artifact");
        assert_eq!(
            count(&database.url, "SELECT count(*) FROM artifact_blobs").await,
            1
        );
        assert_eq!(
            count(
                &database.url,
                "SELECT count(*) FROM artifact_chunks c JOIN artifact_blobs b ON b.upload = c.upload"
            )
            .await,
            4,
            "the blob's chunks"
        );
        assert_eq!(
            count(&database.url, "SELECT count(*) FROM artifact_chunks").await,
            4,
            "and nothing of the upload that lost"
        );
        assert!(download(&one, &first.0).await.expect("download") == content);
    }

    #[tokio::test]
    async fn the_stale_sweep_removes_old_uploads_and_keeps_a_young_one() {
        let (store, database) = open().await;
        let storage = ArtifactStorage::database(&store, LIMIT);
        let content = bytes(CHUNK_BYTES + 1, 4);
        let digest = digest_of(&content);
        let mut young = storage
            .begin(&digest, content.len() as u64)
            .await
            .expect("begin");
        young.write(&content[..CHUNK_BYTES]).await.expect("write");
        // What a replica killed two hours ago during an upload left.
        let url = database.url.clone();
        tokio::task::spawn_blocking(move || {
            TestCluster::psql(
                &url,
                "INSERT INTO artifact_uploads (upload, started_at)
                 VALUES ('00000000-0000-7000-8000-000000000001', (extract(epoch FROM now()) * 1000)::bigint - 7200000);
                 INSERT INTO artifact_chunks (upload, seq, bytes)
                 VALUES ('00000000-0000-7000-8000-000000000001', 0, '\\x0102')",
            )
        })
        .await
        .expect("insert an old upload");
        assert_eq!(
            storage.remove_stale_uploads().await.expect("sweep"),
            1,
            "the old upload"
        );
        assert_eq!(
            count(&database.url, "SELECT count(*) FROM artifact_chunks").await,
            1,
            "the young upload's chunk is kept"
        );
        young.write(&content[CHUNK_BYTES..]).await.expect("write");
        let (hex, _) = young.finish().await.expect("the young upload finishes");
        assert!(download(&storage, &hex).await.expect("download") == content);
        assert_eq!(storage.remove_stale_uploads().await.expect("sweep"), 0);
    }
}
