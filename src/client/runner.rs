//! What a runner calls: the batched work protocol (`tilebox.selfhosted.v1.WorkService`),
//! each call carrying the runner's id, and the one retry policy for them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use uuid::Uuid;

use super::{Backoff, Client};
use crate::api::convert::{duration, id};
use crate::api::selfhosted_v1::{ExtendLeasesRequest, WorkRequest, WorkResponse};
use crate::api::workflows_v1::{TaskLease, TaskLeaseRequest};

/// Faults worth retrying: the server is away or overloaded, or failed internally.
pub fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
            | tonic::Code::Cancelled
    )
}

/// A call given up: refused for a reason retrying cannot fix, or cancelled while retrying.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{operation} refused: {} ({:?})", status.message(), status.code())]
    Refused {
        operation: &'static str,
        status: tonic::Status,
    },
    #[error("{operation} cancelled while the server was unreachable")]
    Cancelled { operation: &'static str },
}

/// The API as one runner sees it; cheap to clone.
#[derive(Clone)]
pub struct RunnerClient {
    client: Client,
    runner_id: String,
    header: Option<MetadataValue<Ascii>>,
}

impl RunnerClient {
    pub fn new(client: Client, runner_id: &str) -> Self {
        Self {
            header: runner_id.parse().ok(),
            runner_id: runner_id.to_string(),
            client,
        }
    }

    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert(crate::api::RUNNER_ID_HEADER, header.clone());
        }
        request
    }

    /// Reports finished tasks and claims up to `request.capacity` tasks, retrying while the
    /// server is unreachable (until `cancel`).
    pub async fn work(
        &self,
        request: WorkRequest,
        cancel: &CancellationToken,
    ) -> Result<WorkResponse, CallError> {
        self.retrying("Work", cancel, || {
            let mut client = self.client.work.clone();
            let request = self.request(request.clone());
            async move { client.work(request).await }
        })
        .await
    }

    /// Extends the leases of running tasks, each asking for `requested`; answers one
    /// lease per task, in order (zero: not extended, the task is no longer this runner's).
    /// Not retried: the lease manager asks again on its next tick.
    pub async fn extend_leases(
        &self,
        leases: &[(Uuid, Duration)],
    ) -> Result<Vec<TaskLease>, tonic::Status> {
        let request = ExtendLeasesRequest {
            leases: leases
                .iter()
                .map(|(task, requested)| TaskLeaseRequest {
                    task_id: Some(id(*task)),
                    requested_lease: Some(duration(*requested)),
                })
                .collect(),
        };
        let mut client = self.client.work.clone();
        Ok(client
            .extend_leases(self.request(request))
            .await?
            .into_inner()
            .leases)
    }

    /// Runs `call` until it succeeds, fails for good, or `cancel` fires; retryable faults
    /// wait with [`Backoff::for_server`].
    async fn retrying<T, F, Fut>(
        &self,
        operation: &'static str,
        cancel: &CancellationToken,
        mut call: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut backoff = Backoff::for_server();
        loop {
            match call().await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) => {
                    let delay = backoff.next_delay();
                    if status.code() == tonic::Code::Unavailable {
                        tracing::warn!(operation, error = %status.message(), "the server is unreachable; retrying in {delay:?}");
                    } else {
                        // Busy (a full disk, a limit), or a fault worth another try: say which.
                        tracing::warn!(operation, code = ?status.code(), error = %status.message(), "the server could not answer; retrying in {delay:?}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => return Err(CallError::Cancelled { operation }),
                    }
                }
                Err(status) => return Err(CallError::Refused { operation, status }),
            }
        }
    }
}
