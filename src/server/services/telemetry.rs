//! Telemetry: OTLP logs and spans in (gRPC `LogsService`/`TraceService`, and OTLP/HTTP
//! `POST /v1/logs` and `/v1/traces` on the same port: protobuf as the official SDK exports,
//! or OTLP/JSON as collectors and other SDKs may, either optionally gzip-compressed), and `TelemetryQueryService` out. Each record is stored on its own, with the
//! trace id that links it to a job (a job is one trace: its `trace_parent`).
//!
//! Limits, checked before anything is stored (so nothing of a refused export is): the body
//! size (HTTP, checked after authentication and before the body is read, and again on the
//! decompressed bytes of a gzip body; gRPC through the message limit), the records per export, and the bytes one export stores. Each record is
//! stored with its resource and scope, so a large resource attribute repeated over many
//! empty records is refused by the stored-bytes limit, computed before anything is copied.

use std::future::Future;
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{optional_uuid, page_of, required_uuid, store_status};
use crate::api::otlp::collector::logs::v1::ExportLogsServiceRequest;
use crate::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::api::otlp::common::v1::{AnyValue, KeyValue, any_value};
use crate::api::otlp::logs::v1::{ResourceLogs, ScopeLogs};
use crate::api::otlp::trace::v1::{ResourceSpans, ScopeSpans};
use crate::api::otlp_count::{self, Counts, Signal};
use crate::api::otlp_json;
use crate::api::tilebox_v1::{Pagination, SortDirection};
use crate::api::workflows_v1::telemetry_query_service_server::TelemetryQueryService;
use crate::api::workflows_v1::{
    LogSeverityGroup, PaginatedLogsData, PaginatedSpansData, QueryJobLogsRequest,
    QueryJobSpansRequest,
};
use crate::server::auth::{Action, Authenticate, authorize};
use crate::server::store::{self, Store, TelemetryKind, TelemetryRecord};

/// What one OTLP export may carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest OTLP/HTTP body, in bytes.
    pub max_body_bytes: usize,
    /// Most log records (or spans) in one export.
    pub max_records: usize,
    /// Most other elements one export decodes into ([`otlp_count::Counts::elements`]:
    /// attributes at every level, events, links, list entries, resource and scope groups).
    pub max_elements: usize,
    /// Most bytes one export stores, each record with its resource and scope.
    pub max_stored_bytes: usize,
}

/// Why an export was not stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the export carries {count} {what}; this server accepts at most {limit} per request (--max-otlp-records)"
    )]
    TooManyRecords {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error(
        "the export carries {count} attributes, events, links, list entries and resource or scope groups; this server accepts at most {limit} per request (--max-otlp-elements)"
    )]
    TooManyElements { count: usize, limit: usize },
    #[error(
        "the export would store {bytes} bytes (each of its {count} {what} is stored with its resource and scope attributes); this server stores at most {limit} bytes per request (--max-otlp-stored-bytes): send large resource attributes in smaller batches"
    )]
    TooMuchStored {
        what: &'static str,
        count: usize,
        bytes: usize,
        limit: usize,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Store(error) => store_status(error),
            refused => Status::resource_exhausted(refused.to_string()),
        }
    }
}

impl Error {
    fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Error::TooManyRecords { .. }
            | Error::TooManyElements { .. }
            | Error::TooMuchStored { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Store(store::Error::StorageFull { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            Error::Store(error) => {
                tracing::error!(%error, source = ?std::error::Error::source(error), "storing telemetry failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// What a signal's records are called in a refusal.
fn records_of(signal: Signal) -> &'static str {
    match signal {
        Signal::Logs => "log records",
        Signal::Traces => "spans",
    }
}

/// Checks what an export body would decode into against `limits`, before it is decoded:
/// decoding builds a struct of up to 300 bytes per element however small it is on the
/// wire (2 bytes of protobuf for an empty log record), so a body within the size limit
/// could take gigabytes once decoded.
pub fn check_counts(limits: &Limits, signal: Signal, counts: &Counts) -> Result<(), Error> {
    if counts.records > limits.max_records {
        return Err(Error::TooManyRecords {
            what: records_of(signal),
            count: counts.records,
            limit: limits.max_records,
        });
    }
    if counts.elements > limits.max_elements {
        return Err(Error::TooManyElements {
            count: counts.elements,
            limit: limits.max_elements,
        });
    }
    Ok(())
}

/// Checks an export's record count and stored bytes against `limits` before any record is
/// built: `groups` yields, per scope, the bytes its resource and scope add to each record
/// and the encoded size of each record.
fn check_export(
    limits: &Limits,
    what: &'static str,
    groups: impl Iterator<Item = (usize, Vec<usize>)>,
) -> Result<(), Error> {
    /// Room for the envelope fields and length prefixes around one stored record.
    const ENVELOPE_BYTES: usize = 32;
    let (mut count, mut bytes) = (0usize, 0usize);
    for (shared, records) in groups {
        count = count.saturating_add(records.len());
        for record in records {
            bytes =
                bytes.saturating_add(shared.saturating_add(record).saturating_add(ENVELOPE_BYTES));
        }
    }
    if count > limits.max_records {
        return Err(Error::TooManyRecords {
            what,
            count,
            limit: limits.max_records,
        });
    }
    if bytes > limits.max_stored_bytes {
        return Err(Error::TooMuchStored {
            what,
            count,
            bytes,
            limit: limits.max_stored_bytes,
        });
    }
    Ok(())
}

/// Splits a logs export into one stored record per log record (each with its resource and
/// scope), after checking it against `limits`: refused whole, before anything is copied.
pub fn split_logs(
    request: ExportLogsServiceRequest,
    limits: &Limits,
) -> Result<Vec<TelemetryRecord>, Error> {
    check_export(
        limits,
        "log records",
        request.resource_logs.iter().flat_map(|resource_logs| {
            let resource = resource_logs
                .resource
                .as_ref()
                .map_or(0, Message::encoded_len)
                + resource_logs.schema_url.len();
            resource_logs.scope_logs.iter().map(move |scope_logs| {
                let scope = scope_logs.scope.as_ref().map_or(0, Message::encoded_len)
                    + scope_logs.schema_url.len();
                (
                    resource + scope,
                    scope_logs
                        .log_records
                        .iter()
                        .map(Message::encoded_len)
                        .collect(),
                )
            })
        }),
    )?;
    let mut records = Vec::new();
    for resource_logs in request.resource_logs {
        for scope_logs in &resource_logs.scope_logs {
            for record in &scope_logs.log_records {
                let single = ResourceLogs {
                    resource: resource_logs.resource.clone(),
                    scope_logs: vec![ScopeLogs {
                        scope: scope_logs.scope.clone(),
                        log_records: vec![record.clone()],
                        schema_url: scope_logs.schema_url.clone(),
                    }],
                    schema_url: resource_logs.schema_url.clone(),
                };
                let time = if record.time_unix_nano > 0 {
                    record.time_unix_nano
                } else {
                    record.observed_time_unix_nano
                };
                records.push(TelemetryRecord {
                    id: Uuid::now_v7(),
                    trace_id: record.trace_id.clone(),
                    task_id: string_attribute(&record.attributes, "task_id"),
                    severity: record.severity_number,
                    time_unix_nano: time.min(i64::MAX as u64) as i64,
                    encoded: single.encode_to_vec(),
                });
            }
        }
    }
    Ok(records)
}

/// Splits a traces export into one stored record per span, after checking it against
/// `limits`, as `split_logs`.
pub fn split_spans(
    request: ExportTraceServiceRequest,
    limits: &Limits,
) -> Result<Vec<TelemetryRecord>, Error> {
    check_export(
        limits,
        "spans",
        request.resource_spans.iter().flat_map(|resource_spans| {
            let resource = resource_spans
                .resource
                .as_ref()
                .map_or(0, Message::encoded_len)
                + resource_spans.schema_url.len();
            resource_spans.scope_spans.iter().map(move |scope_spans| {
                let scope = scope_spans.scope.as_ref().map_or(0, Message::encoded_len)
                    + scope_spans.schema_url.len();
                (
                    resource + scope,
                    scope_spans.spans.iter().map(Message::encoded_len).collect(),
                )
            })
        }),
    )?;
    let mut records = Vec::new();
    for resource_spans in request.resource_spans {
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                let single = ResourceSpans {
                    resource: resource_spans.resource.clone(),
                    scope_spans: vec![ScopeSpans {
                        scope: scope_spans.scope.clone(),
                        spans: vec![span.clone()],
                        schema_url: scope_spans.schema_url.clone(),
                    }],
                    schema_url: resource_spans.schema_url.clone(),
                };
                records.push(TelemetryRecord {
                    id: Uuid::now_v7(),
                    trace_id: span.trace_id.clone(),
                    task_id: string_attribute(&span.attributes, "task_id"),
                    severity: 0,
                    time_unix_nano: span.start_time_unix_nano.min(i64::MAX as u64) as i64,
                    encoded: single.encode_to_vec(),
                });
            }
        }
    }
    Ok(records)
}

/// The 16-byte trace id in a W3C `traceparent` (`00-<32 hex>-<16 hex>-<flags>`).
pub fn trace_id_of(trace_parent: &str) -> Option<Vec<u8>> {
    let hex = trace_parent.split('-').nth(1)?;
    if hex.len() != 32 {
        return None;
    }
    (0..16)
        .map(|index| u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok())
        .collect()
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| {
            match attribute
                .value
                .as_ref()
                .and_then(|value| value.value.as_ref())
            {
                Some(any_value::Value::StringValue(text)) => Some(text.clone()),
                _ => None,
            }
        })
}

/// Ingests and serves telemetry; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    store: Arc<dyn Store>,
    limits: Limits,
}

impl Telemetry {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        Self { store, limits }
    }

    /// What one export may carry.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stores an export's log records, one stored record each; nothing when it is refused.
    pub async fn ingest_logs(&self, request: ExportLogsServiceRequest) -> Result<usize, Error> {
        let records = split_logs(request, &self.limits)?;
        let count = records.len();
        self.store
            .insert_telemetry(TelemetryKind::Log, records)
            .await?;
        Ok(count)
    }

    /// Stores an export's spans, one stored record each; nothing when it is refused.
    pub async fn ingest_spans(&self, request: ExportTraceServiceRequest) -> Result<usize, Error> {
        let records = split_spans(request, &self.limits)?;
        let count = records.len();
        self.store
            .insert_telemetry(TelemetryKind::Span, records)
            .await?;
        Ok(count)
    }

    async fn job_trace(&self, job: &Option<crate::api::tilebox_v1::Id>) -> Result<Vec<u8>, Status> {
        let id = required_uuid(job.as_ref(), "job_id")?;
        let job = self.store.get_job(id).await.map_err(store_status)?;
        trace_id_of(&job.trace_parent).ok_or_else(|| {
            Status::failed_precondition(format!(
                "job {id} has no valid trace_parent (`{}`)",
                job.trace_parent
            ))
        })
    }
}

pub(crate) fn severity_ranges(groups: &[i32]) -> Result<Vec<(i32, i32)>, Status> {
    groups
        .iter()
        .map(|group| match LogSeverityGroup::try_from(*group) {
            Ok(LogSeverityGroup::Trace) => Ok((1, 4)),
            Ok(LogSeverityGroup::Debug) => Ok((5, 8)),
            Ok(LogSeverityGroup::Info) => Ok((9, 12)),
            Ok(LogSeverityGroup::Warning) => Ok((13, 16)),
            Ok(LogSeverityGroup::Error) => Ok((17, 24)),
            _ => Err(Status::invalid_argument(format!(
                "filters.severity_levels: unknown level {group}"
            ))),
        })
        .collect()
}

/// The cursor after the last record returned, whenever any was: a reader following a
/// job's logs continues from there (an empty page ends the paging).
fn next_page(limit: usize, rows: &[(Uuid, Vec<u8>)]) -> Option<Pagination> {
    rows.last().map(|(last, _)| Pagination {
        limit: Some(limit as i64),
        starting_after: Some(crate::api::convert::id(*last)),
    })
}

#[tonic::async_trait]
impl TelemetryQueryService for Telemetry {
    async fn query_job_logs(
        &self,
        request: Request<QueryJobLogsRequest>,
    ) -> Result<Response<PaginatedLogsData>, Status> {
        authorize(&request, Action::ReadTelemetry)?;
        let request = request.into_inner();
        let trace = self.job_trace(&request.job_id).await?;
        let descending = request.sort_direction == Some(SortDirection::Descending as i32);
        let page = page_of(request.page.as_ref(), descending)?;
        let task = optional_uuid(request.task_id.as_ref(), "task_id")?.map(|id| id.to_string());
        let severities = severity_ranges(
            &request
                .filters
                .map(|filters| filters.severity_levels)
                .unwrap_or_default(),
        )?;
        let rows = self
            .store
            .query_telemetry(TelemetryKind::Log, trace, task, severities, page)
            .await
            .map_err(store_status)?;
        Ok(Response::new(PaginatedLogsData {
            next_page: next_page(page.limit, &rows),
            resource_logs: rows
                .iter()
                .filter_map(|(_, encoded)| ResourceLogs::decode(encoded.as_slice()).ok())
                .collect(),
        }))
    }

    async fn query_job_spans(
        &self,
        request: Request<QueryJobSpansRequest>,
    ) -> Result<Response<PaginatedSpansData>, Status> {
        authorize(&request, Action::ReadTelemetry)?;
        let request = request.into_inner();
        let trace = self.job_trace(&request.job_id).await?;
        let descending = request.sort_direction == Some(SortDirection::Descending as i32);
        let page = page_of(request.page.as_ref(), descending)?;
        let task = optional_uuid(request.task_id.as_ref(), "task_id")?.map(|id| id.to_string());
        let rows = self
            .store
            .query_telemetry(TelemetryKind::Span, trace, task, Vec::new(), page)
            .await
            .map_err(store_status)?;
        Ok(Response::new(PaginatedSpansData {
            next_page: next_page(page.limit, &rows),
            resource_spans: rows
                .iter()
                .filter_map(|(_, encoded)| ResourceSpans::decode(encoded.as_slice()).ok())
                .collect(),
        }))
    }
}

/// The OTLP/HTTP routes (`POST /v1/logs`, `POST /v1/traces`), with the same bearer
/// authentication as the gRPC API. Bodies are protobuf (`application/x-protobuf`) or
/// OTLP/JSON (`application/json`), optionally `Content-Encoding: gzip`; the answer is in the
/// request's encoding. The headers are checked (authentication, content type and encoding,
/// declared length) before any of the body is read; the body is read up to the limit only,
/// and a gzip body is decompressed up to the same limit only.
pub fn http_routes(telemetry: Telemetry, authenticate: Authenticate) -> axum::Router {
    use axum::routing::post;

    let (logs, traces) = (telemetry.clone(), telemetry);
    let (logs_auth, traces_auth) = (authenticate.clone(), authenticate);
    axum::Router::new()
        .route(
            "/v1/logs",
            post(move |request: axum::extract::Request| {
                let (telemetry, authenticate) = (logs.clone(), logs_auth.clone());
                async move {
                    export_http(
                        request,
                        &authenticate,
                        telemetry.limits.max_body_bytes,
                        |format, body| async move {
                            const WHAT: &str = "ExportLogsServiceRequest";
                            let counts = format.count(&body, Signal::Logs);
                            check_counts(&telemetry.limits, Signal::Logs, &counts)
                                .map_err(refused)?;
                            let request = match format {
                                Format::Protobuf => {
                                    ExportLogsServiceRequest::decode(body.as_slice())
                                        .map_err(|error| undecodable(WHAT, error))?
                                }
                                Format::Json => otlp_json::logs_request(&body)
                                    .map_err(|error| invalid_json(WHAT, error))?,
                            };
                            telemetry.ingest_logs(request).await.map_err(refused)?;
                            Ok(())
                        },
                    )
                    .await
                }
            }),
        )
        .route(
            "/v1/traces",
            post(move |request: axum::extract::Request| {
                let (telemetry, authenticate) = (traces.clone(), traces_auth.clone());
                async move {
                    export_http(
                        request,
                        &authenticate,
                        telemetry.limits.max_body_bytes,
                        |format, body| async move {
                            const WHAT: &str = "ExportTraceServiceRequest";
                            let counts = format.count(&body, Signal::Traces);
                            check_counts(&telemetry.limits, Signal::Traces, &counts)
                                .map_err(refused)?;
                            let request = match format {
                                Format::Protobuf => {
                                    ExportTraceServiceRequest::decode(body.as_slice())
                                        .map_err(|error| undecodable(WHAT, error))?
                                }
                                Format::Json => otlp_json::traces_request(&body)
                                    .map_err(|error| invalid_json(WHAT, error))?,
                            };
                            telemetry.ingest_spans(request).await.map_err(refused)?;
                            Ok(())
                        },
                    )
                    .await
                }
            }),
        )
}

/// How an OTLP/HTTP body is encoded, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    /// The records and elements of a `signal` export `body` in this encoding, counted from
    /// its bytes (nothing is decoded).
    fn count(self, body: &[u8], signal: Signal) -> otlp_count::Counts {
        match self {
            Format::Protobuf => otlp_count::count_protobuf(body, signal),
            Format::Json => otlp_count::count_json(body, signal),
        }
    }

    fn of(headers: &axum::http::HeaderMap) -> Option<Format> {
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())?;
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if media_type.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Format::Protobuf)
        } else if media_type.eq_ignore_ascii_case("application/json") {
            Some(Format::Json)
        } else {
            None
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

type HttpRefusal = (axum::http::StatusCode, String);

fn undecodable(what: &str, error: prost::DecodeError) -> HttpRefusal {
    (
        axum::http::StatusCode::BAD_REQUEST,
        format!("undecodable {what}: {error}"),
    )
}

fn invalid_json(what: &str, error: serde_json::Error) -> HttpRefusal {
    (
        axum::http::StatusCode::BAD_REQUEST,
        format!("invalid OTLP/JSON {what}: {error}"),
    )
}

fn refused(error: Error) -> HttpRefusal {
    (error.http_status(), error.to_string())
}

/// Checks the headers, reads (and decompresses) the body within the limit, hands it to
/// `ingest`, and answers in the request's encoding.
async fn export_http<F, Fut>(
    request: axum::extract::Request,
    authenticate: &Authenticate,
    limit: usize,
    ingest: F,
) -> axum::response::Response
where
    F: FnOnce(Format, Vec<u8>) -> Fut,
    Fut: Future<Output = Result<(), HttpRefusal>>,
{
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    let (parts, body) = request.into_parts();
    let format = Format::of(&parts.headers);
    let result = async {
        let (format, gzip) = check_headers(&parts.headers, authenticate, limit)?;
        let mut body = read_body(body, limit).await?;
        if gzip {
            body = tokio::task::spawn_blocking(move || gunzip(&body, limit))
                .await
                .map_err(|error| {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("decompressing the body failed: {error}"),
                    )
                })??;
        }
        ingest(format, body).await?;
        Ok::<_, HttpRefusal>(format)
    }
    .await;
    match result {
        // Both export responses are empty when everything was stored (no `partial_success`):
        // no bytes in protobuf, `{}` in JSON.
        Ok(format) => {
            let body: &'static [u8] = match format {
                Format::Protobuf => b"",
                Format::Json => b"{}",
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, format.content_type())],
                body,
            )
                .into_response()
        }
        // A JSON request gets the refusal as a JSON `google.rpc.Status`, as OTLP/HTTP asks.
        Err((status, message)) if format == Some(Format::Json) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "code": grpc_code(status), "message": message }).to_string(),
        )
            .into_response(),
        Err((status, message)) => (status, message).into_response(),
    }
}

/// The `google.rpc.Code` of an HTTP refusal, for a JSON `Status` body.
fn grpc_code(status: axum::http::StatusCode) -> i32 {
    use axum::http::StatusCode;
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            tonic::Code::InvalidArgument as i32
        }
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated as i32,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::INSUFFICIENT_STORAGE => {
            tonic::Code::ResourceExhausted as i32
        }
        _ => tonic::Code::Internal as i32,
    }
}

/// Reads a body of at most `limit` bytes; stops reading at the first byte past it.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<Vec<u8>, HttpRefusal> {
    use tokio_stream::StreamExt;
    let mut stream = body.into_data_stream();
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            (
                axum::http::StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {error}"),
            )
        })?;
        if collected.len() + chunk.len() > limit {
            return Err(too_large_body(None, limit));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected)
}

/// Decompresses a gzip body to at most `limit` bytes. It stops at the first byte past the
/// limit, and the buffer grows only as far as the bytes decompressed so far (never past
/// `limit` and one chunk), so a small body that inflates to gigabytes is refused without
/// allocating them.
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, HttpRefusal> {
    use std::io::Read;
    const CHUNK: usize = 64 * 1024;
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    let mut decoded = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let count = decoder.read(&mut chunk).map_err(|error| {
            (
                axum::http::StatusCode::BAD_REQUEST,
                format!("the body is not valid gzip (Content-Encoding: gzip): {error}"),
            )
        })?;
        if count == 0 {
            return Ok(decoded);
        }
        if decoded.len() + count > limit {
            return Err((
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the gzip body decompresses to more than {limit} bytes; this server accepts at most {limit} bytes per OTLP export (--max-otlp-body-bytes)"
                ),
            ));
        }
        decoded.extend_from_slice(&chunk[..count]);
    }
}

fn too_large_body(declared: Option<u64>, limit: usize) -> HttpRefusal {
    let size = match declared {
        Some(declared) => format!("{declared} bytes"),
        None => format!("more than {limit} bytes"),
    };
    (
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is {size}; this server accepts at most {limit} bytes per OTLP export (--max-otlp-body-bytes)"
        ),
    )
}

/// Checks authentication, the declared length, the content type and the content encoding;
/// answers the body's format and whether it is gzip-compressed.
fn check_headers(
    headers: &axum::http::HeaderMap,
    authenticate: &Authenticate,
    limit: usize,
) -> Result<(Format, bool), HttpRefusal> {
    use axum::http::{StatusCode, header};
    if !authenticate.accepts(
        headers
            .get(header::AUTHORIZATION)
            .map(|value| value.as_bytes()),
    ) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing or invalid `Authorization: Bearer <token>`".into(),
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > limit as u64
    {
        return Err(too_large_body(Some(declared), limit));
    }
    let Some(format) = Format::of(headers) else {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_default();
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type `{content_type}` is not supported; send application/x-protobuf or application/json"
            ),
        ));
    };
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .trim()
                .to_ascii_lowercase()
        })
        .as_deref()
    {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content encoding `{other}` is not supported; send gzip or identity"),
            ));
        }
    };
    Ok((format, gzip))
}

/// A string attribute for OTLP records.
pub fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_comes_from_the_traceparent() {
        let trace = trace_id_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(trace[0], 0x0a);
        assert_eq!(trace[15], 0x9c);
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-xyz-b7ad6b7169203331-01"), None);
    }
}
