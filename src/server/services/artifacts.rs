//! `tilebox.selfhosted.v1.ArtifactService`: release artifacts uploaded and downloaded as
//! streams, addressed by sha256, verified on upload, stored once.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{optional_uuid, store_status};
use crate::api::convert::id;
use crate::api::selfhosted_v1::artifact_service_server::ArtifactService;
use crate::api::selfhosted_v1::{
    ArtifactChunk, ArtifactInfo, GetArtifactRequest, UploadArtifactRequest,
};
use crate::server::artifacts::{self, ArtifactStorage};
use crate::server::auth::{Action, authorize};
use crate::server::store::{Artifact, Store};

pub struct Artifacts {
    store: std::sync::Arc<dyn Store>,
    storage: ArtifactStorage,
}

impl Artifacts {
    pub fn new(store: std::sync::Arc<dyn Store>, storage: ArtifactStorage) -> Self {
        Self { store, storage }
    }

    async fn find(&self, request: &GetArtifactRequest) -> Result<Artifact, Status> {
        let digest = if request.digest.is_empty() {
            None
        } else {
            Some(
                artifacts::normalize_digest(&request.digest)
                    .map_err(|error| Status::invalid_argument(error.to_string()))?,
            )
        };
        let id = optional_uuid(request.id.as_ref(), "id")?;
        if digest.is_none() && id.is_none() {
            return Err(Status::invalid_argument(
                "name the artifact by digest or id",
            ));
        }
        self.store
            .get_artifact(digest, id)
            .await
            .map_err(store_status)
    }
}

fn info(artifact: &Artifact) -> ArtifactInfo {
    ArtifactInfo {
        id: Some(id(artifact.id)),
        digest: artifact.digest.clone(),
        size: artifact.size,
    }
}

fn upload_status(error: artifacts::Error) -> Status {
    match error {
        artifacts::Error::Io { .. } => {
            tracing::error!(error = %error, source = ?std::error::Error::source(&error), "artifact storage failed");
            Status::internal(error.to_string())
        }
        artifacts::Error::TooLarge { .. } | artifacts::Error::StorageFull { .. } => {
            Status::resource_exhausted(error.to_string())
        }
        artifacts::Error::Database(error) => store_status(error),
        artifacts::Error::Missing { .. } => {
            tracing::error!(error = %error, "a registered artifact has no bytes");
            Status::internal(error.to_string())
        }
        other => Status::invalid_argument(other.to_string()),
    }
}

#[tonic::async_trait]
impl ArtifactService for Artifacts {
    async fn upload_artifact(
        &self,
        request: Request<Streaming<UploadArtifactRequest>>,
    ) -> Result<Response<ArtifactInfo>, Status> {
        authorize(&request, Action::UploadArtifact)?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an upload needs at least one message"))?;
        let mut upload = self
            .storage
            .begin(&first.digest, first.size)
            .await
            .map_err(upload_status)?;
        upload.write(&first.chunk).await.map_err(upload_status)?;
        while let Some(message) = stream.message().await? {
            upload.write(&message.chunk).await.map_err(upload_status)?;
        }
        let (digest, size) = upload.finish().await.map_err(upload_status)?;
        let artifact = self
            .store
            .register_artifact(digest, size)
            .await
            .map_err(store_status)?;
        Ok(Response::new(info(&artifact)))
    }

    async fn get_artifact(
        &self,
        request: Request<GetArtifactRequest>,
    ) -> Result<Response<ArtifactInfo>, Status> {
        authorize(&request, Action::ReadArtifacts)?;
        let artifact = self.find(request.get_ref()).await?;
        Ok(Response::new(info(&artifact)))
    }

    type DownloadArtifactStream = Pin<Box<dyn Stream<Item = Result<ArtifactChunk, Status>> + Send>>;

    async fn download_artifact(
        &self,
        request: Request<GetArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        authorize(&request, Action::ReadArtifacts)?;
        let artifact = self.find(request.get_ref()).await?;
        let mut download = self.storage.open(&artifact.digest).await.map_err(|error| {
            Status::internal(format!(
                "artifact {} is registered but unreadable: {error}",
                artifact.digest
            ))
        })?;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let message = match download.next().await {
                    Ok(None) => break,
                    Ok(Some(chunk)) => Ok(ArtifactChunk { chunk }),
                    Err(error) => Err(Status::internal(format!(
                        "reading the artifact failed: {error}"
                    ))),
                };
                let failed = message.is_err();
                if sender.send(message).await.is_err() || failed {
                    break;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver).map(|chunk| chunk);
        Ok(Response::new(Box::pin(stream)))
    }
}
