//! Artifact transfer: uploading a release archive once per digest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_stream::StreamExt;

use super::{Client, Error, Result};
use crate::api::selfhosted_v1::{ArtifactInfo, GetArtifactRequest, UploadArtifactRequest};
use crate::progress::{Progress, Step};

/// Bytes per upload message.
const UPLOAD_CHUNK: usize = 1024 * 1024;

impl Client {
    /// Uploads the archive at `path` whose sha256 is `digest`, unless the server already has
    /// that digest; answers the stored artifact. The server verifies the digest before it
    /// stores anything. The bytes handed to the transport are reported to `progress` as the
    /// upload step (none when the server has the artifact).
    pub async fn upload_artifact(
        &mut self,
        path: &Path,
        digest: &str,
        progress: Arc<dyn Progress>,
    ) -> Result<ArtifactInfo> {
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
        progress.begin(Step::Upload, Some(size));
        let mut sent = 0u64;
        let reporting = progress.clone();
        let messages = tokio_stream::iter(messages).map(move |message| {
            sent += message.chunk.len() as u64;
            reporting.advance(Step::Upload, sent);
            message
        });
        let uploaded = self.artifacts.upload_artifact(messages).await;
        progress.end(Step::Upload);
        Ok(uploaded
            .map_err(|status| self.error("UploadArtifact", status))?
            .into_inner())
    }
}
