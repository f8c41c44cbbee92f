//! A typed client over the Tilebox workflows API, used by the CLI and the runner.
//!
//! One HTTP/2 channel is shared by every service; the API key travels as
//! `authorization: Bearer <key>` on every call. `https://` URLs use TLS (rustls), verifying
//! the server against the system's roots or, when given, only the CA certificate of
//! `--ca-cert`.
//!
//! Layout:
//! - `mod.rs`: `Client`, connection and authentication, `Error`
//! - `artifacts.rs`: uploading release archives
//! - `backoff.rs`: the retry pacing every caller of the API uses
//! - `runner.rs`: `RunnerClient`, the batched work protocol with the runner's id and retries

mod artifacts;
mod backoff;
mod runner;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::api::otlp::collector::logs::v1::logs_service_client::LogsServiceClient;
use crate::api::otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
use crate::api::selfhosted_v1::artifact_service_client::ArtifactServiceClient;
use crate::api::selfhosted_v1::deployment_service_client::DeploymentServiceClient;
use crate::api::selfhosted_v1::runner_service_client::RunnerServiceClient;
use crate::api::selfhosted_v1::work_service_client::WorkServiceClient;
use crate::api::workflows_v1::job_service_client::JobServiceClient;
use crate::api::workflows_v1::task_service_client::TaskServiceClient;
use crate::api::workflows_v1::telemetry_query_service_client::TelemetryQueryServiceClient;
use crate::api::workflows_v1::workflows_service_client::WorkflowsServiceClient;

pub use backoff::Backoff;
pub use runner::{CallError, RunnerClient, retryable};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid API URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot read the CA certificate {}", path.display())]
    ReadCaCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA certificate file {} holds no PEM certificate", path.display())]
    InvalidCaCert { path: PathBuf },
    #[error("cannot set up TLS for `{url}`")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the API key is not a valid header value")]
    InvalidApiKey,
    #[error("cannot read the artifact {}", path.display())]
    ReadArtifact {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{operation} failed: {}", describe(.status, .url))]
    Status {
        operation: &'static str,
        url: String,
        /// Not a `#[source]`: its text is already part of the message.
        status: tonic::Status,
    },
}

impl Error {
    /// Whether the error is the user's to fix (bad input, unknown id, missing credentials)
    /// rather than an internal fault.
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::InvalidUrl { .. }
            | Error::InvalidApiKey
            | Error::ReadArtifact { .. }
            | Error::ReadCaCert { .. }
            | Error::InvalidCaCert { .. }
            | Error::Tls { .. } => true,
            Error::Status { status, .. } => matches!(
                status.code(),
                tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::AlreadyExists
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unavailable
                    | tonic::Code::OutOfRange
            ),
        }
    }

    /// A hint for the fix, where one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Status { status, url, .. } => match status.code() {
                tonic::Code::Unavailable => match tls_problem(status) {
                    Some(TlsProblem::Certificate(_)) => Some(format!(
                        "the server's certificate is not trusted: pass the CA certificate that signed it with --ca-cert or {}, or check that {url} names the host in the certificate",
                        crate::env::CA_CERT
                    )),
                    Some(TlsProblem::NotTls(_)) => Some(
                        "a server started without --tls-cert speaks plaintext: use an http:// URL"
                            .to_string(),
                    ),
                    Some(TlsProblem::Other(_)) => None,
                    None => Some(format!(
                        "is a server running at {url}? Start one with `tilebox server`, or point --api-url / TILEBOX_API_URL at it"
                    )),
                },
                // A TLS server's handshake alert read as an HTTP/2 frame.
                _ if url.starts_with("http://")
                    && status.message().starts_with("h2 protocol error") =>
                {
                    Some(
                        "if the server was started with --tls-cert, use an https:// URL"
                            .to_string(),
                    )
                }
                tonic::Code::Unauthenticated => {
                    Some("pass a valid key with --api-key or TILEBOX_API_KEY".to_string())
                }
                _ => None,
            },
            Error::InvalidUrl { .. } => {
                Some("use the form http://host:port or https://host[:port]".to_string())
            }
            Error::ReadCaCert { .. } | Error::InvalidCaCert { .. } => Some(format!(
                "--ca-cert / {} takes a PEM file with the certificate of the CA that signed the server's certificate",
                crate::env::CA_CERT
            )),
            Error::InvalidApiKey | Error::ReadArtifact { .. } | Error::Tls { .. } => None,
        }
    }

    /// The gRPC status code, if the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// A short description of a failed call: the server's message and its code, or for a
/// connection that could not be made, just that.
fn describe(status: &tonic::Status, url: &str) -> String {
    match tls_problem(status) {
        Some(TlsProblem::Certificate(reason)) => {
            return format!("cannot connect to {url}: TLS certificate error: {reason}");
        }
        Some(TlsProblem::NotTls(reason)) => {
            return format!("cannot connect to {url}: the server does not speak TLS ({reason})");
        }
        Some(TlsProblem::Other(reason)) => {
            return format!("cannot connect to {url}: TLS handshake failed: {reason}");
        }
        None => {}
    }
    if status.code() == tonic::Code::Unavailable && status.message().contains("connect") {
        return format!("cannot connect to {url}");
    }
    format!("{} ({:?})", status.message(), status.code())
}

/// Why a TLS connection could not be made.
enum TlsProblem {
    /// The server's certificate is not trusted (issuer, name, validity).
    Certificate(String),
    /// The server answered with something that is not TLS: a plaintext server.
    NotTls(String),
    Other(String),
}

/// The TLS problem that failed a connection, if that is what failed it.
fn tls_problem(status: &tonic::Status) -> Option<TlsProblem> {
    use tokio_rustls::rustls;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = cause {
        // tokio-rustls wraps rustls' error in an io::Error, whose `source` skips it.
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(error), inner].into_iter().flatten() {
            match candidate.downcast_ref::<rustls::Error>() {
                Some(rustls::Error::InvalidCertificate(reason)) => {
                    return Some(TlsProblem::Certificate(format!(
                        "invalid peer certificate: {reason:?}"
                    )));
                }
                Some(problem @ rustls::Error::InvalidMessage(_)) => {
                    return Some(TlsProblem::NotTls(problem.to_string()));
                }
                Some(problem) => return Some(TlsProblem::Other(problem.to_string())),
                None => {}
            }
        }
        cause = error.source();
    }
    None
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Authenticate {
    header: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Authenticate {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

type Authenticated = InterceptedService<Channel, Authenticate>;

/// Largest message sent or received on any service. Above the server's default (256 MiB),
/// so the server's `--max-message-bytes` is the limit that applies: a large deployment
/// snapshot or job listing the server sends is never refused here.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Applies [`MAX_MESSAGE_BYTES`] both ways to a generated service client.
macro_rules! sized {
    ($client:expr) => {
        $client
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
}

/// A client for every service of the API; cheap to clone.
#[derive(Clone)]
pub struct Client {
    url: String,
    pub jobs: JobServiceClient<Authenticated>,
    pub tasks: TaskServiceClient<Authenticated>,
    pub work: WorkServiceClient<Authenticated>,
    pub runners: RunnerServiceClient<Authenticated>,
    pub workflows: WorkflowsServiceClient<Authenticated>,
    pub artifacts: ArtifactServiceClient<Authenticated>,
    pub deployments: DeploymentServiceClient<Authenticated>,
    pub telemetry: TelemetryQueryServiceClient<Authenticated>,
    pub logs: LogsServiceClient<Authenticated>,
    pub traces: TraceServiceClient<Authenticated>,
}

impl Client {
    /// A client for the API at `url`; the connection is made on first use.
    pub async fn connect(url: &str, api_key: Option<&str>) -> Result<Self> {
        Self::connect_with_ca(url, api_key, None).await
    }

    /// A client for the API at `url` that, for an `https://` URL, trusts only the PEM CA
    /// certificate(s) in `ca_cert` (system roots when `None`). Plaintext URLs ignore it.
    pub async fn connect_with_ca(
        url: &str,
        api_key: Option<&str>,
        ca_cert: Option<&Path>,
    ) -> Result<Self> {
        let endpoint = endpoint(url, ca_cert)?;
        let channel = endpoint.connect_lazy();
        let header = match api_key {
            Some(key) if !key.is_empty() => Some(
                MetadataValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| Error::InvalidApiKey)?,
            ),
            _ => None,
        };
        let authenticate = Authenticate { header };
        Ok(Self {
            url: url.to_string(),
            jobs: sized!(JobServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone()
            )),
            tasks: sized!(TaskServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone()
            )),
            work: sized!(WorkServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone()
            )),
            runners: sized!(RunnerServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone()
            )),
            workflows: sized!(WorkflowsServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone(),
            )),
            artifacts: sized!(ArtifactServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone(),
            )),
            deployments: sized!(DeploymentServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone(),
            )),
            telemetry: sized!(TelemetryQueryServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone(),
            )),
            logs: sized!(LogsServiceClient::with_interceptor(
                channel.clone(),
                authenticate.clone()
            )),
            traces: sized!(TraceServiceClient::with_interceptor(channel, authenticate)),
        })
    }

    /// The API URL this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Wraps a failed call's status into an `Error` naming the operation.
    pub fn error(&self, operation: &'static str, status: tonic::Status) -> Error {
        Error::Status {
            operation,
            url: self.url.clone(),
            status,
        }
    }
}

/// The endpoint for an API URL: `http://host:port` (or no scheme) is plaintext HTTP/2,
/// `https://` is HTTP/2 over TLS.
fn endpoint(url: &str, ca_cert: Option<&Path>) -> Result<Endpoint> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let normalized = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let tls = normalized.starts_with("https://");
    if !tls && !normalized.starts_with("http://") {
        return Err(invalid("the scheme must be http:// or https://"));
    }
    let mut endpoint = Endpoint::from_shared(normalized.trim_end_matches('/').to_string())
        .map_err(|error| invalid(&error.to_string()))?;
    if tls {
        let config = match ca_cert {
            Some(path) => ClientTlsConfig::new().ca_certificate(read_ca_cert(path)?),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint.tls_config(config).map_err(|source| Error::Tls {
            url: url.to_string(),
            source,
        })?;
    }
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// The PEM CA certificate(s) of `--ca-cert`, checked to hold at least one certificate so a
/// wrong file fails here rather than as an untrusted server.
fn read_ca_cert(path: &Path) -> Result<Certificate> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let pem = fs_err::read(path).map_err(|source| Error::ReadCaCert {
        path: path.to_path_buf(),
        source,
    })?;
    let certificates = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(Certificate::from_pem(pem)),
        _ => Err(Error::InvalidCaCert {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_plain_schemeless_and_tls_urls() {
        assert!(endpoint("http://127.0.0.1:8083", None).is_ok());
        assert!(endpoint("127.0.0.1:8083", None).is_ok());
        assert!(endpoint("http://localhost:1/", None).is_ok());
        assert!(endpoint("https://api.tilebox.com", None).is_ok());
    }

    #[test]
    fn endpoint_refuses_other_schemes_with_a_reason() {
        let error = endpoint("ftp://api.tilebox.com", None).unwrap_err();
        assert!(
            error.to_string().contains("ftp://api.tilebox.com"),
            "{error}"
        );
    }

    #[test]
    fn ca_cert_errors_name_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing.pem");
        let error = endpoint("https://localhost:1", Some(&missing)).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let garbage = directory.path().join("garbage.pem");
        fs_err::write(&garbage, "not a certificate").unwrap();
        let error = endpoint("https://localhost:1", Some(&garbage)).unwrap_err();
        assert!(
            error.to_string().contains("garbage.pem") && error.to_string().contains("no PEM"),
            "{error}"
        );
    }
}
