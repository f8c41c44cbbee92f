//! Artifact transfer: uploading a release archive once per digest.

use std::path::{Path, PathBuf};

use super::{Client, Error, Result};
use crate::api::selfhosted_v1::{ArtifactInfo, GetArtifactRequest, UploadArtifactRequest};

/// Bytes per upload message.
const UPLOAD_CHUNK: usize = 1024 * 1024;

impl Client {
    /// Uploads the archive at `path` whose sha256 is `digest`, unless the server already has
    /// that digest; answers the stored artifact. The server verifies the digest before it
    /// stores anything.
    pub async fn upload_artifact(&mut self, path: &Path, digest: &str) -> Result<ArtifactInfo> {
        if let Ok(found) = self
            .artifacts
            .get_artifact(GetArtifactRequest {
                digest: digest.to_string(),
                id: None,
            })
            .await
        {
            return Ok(found.into_inner());
        }
        let bytes = fs_err::read(path).map_err(|source| Error::ReadArtifact {
            path: PathBuf::from(path),
            source,
        })?;
        let size = bytes.len() as u64;
        let mut messages = Vec::with_capacity(bytes.len() / UPLOAD_CHUNK + 1);
        let mut chunks = bytes.chunks(UPLOAD_CHUNK);
        messages.push(UploadArtifactRequest {
            digest: digest.to_string(),
            size,
            chunk: chunks.next().unwrap_or(&[]).to_vec(),
        });
        messages.extend(chunks.map(|chunk| UploadArtifactRequest {
            digest: String::new(),
            size: 0,
            chunk: chunk.to_vec(),
        }));
        Ok(self
            .artifacts
            .upload_artifact(tokio_stream::iter(messages))
            .await
            .map_err(|status| self.error("UploadArtifact", status))?
            .into_inner())
    }
}
