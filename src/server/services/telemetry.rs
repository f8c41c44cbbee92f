//! Telemetry: OTLP logs and spans in (gRPC `LogsService`/`TraceService`, and OTLP/HTTP
//! protobuf `POST /v1/logs` and `/v1/traces` on the same port, as the official SDK
//! exports), and `TelemetryQueryService` out. Each record is stored on its own, with the
//! trace id that links it to a job (a job is one trace: its `trace_parent`).

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{optional_uuid, page_of, required_uuid, store_status};
use crate::api::otlp::collector::logs::v1::logs_service_server::LogsService;
use crate::api::otlp::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use crate::api::otlp::collector::trace::v1::trace_service_server::TraceService;
use crate::api::otlp::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use crate::api::otlp::common::v1::{AnyValue, KeyValue, any_value};
use crate::api::otlp::logs::v1::{ResourceLogs, ScopeLogs};
use crate::api::otlp::trace::v1::{ResourceSpans, ScopeSpans};
use crate::api::tilebox_v1::{Pagination, SortDirection};
use crate::api::workflows_v1::telemetry_query_service_server::TelemetryQueryService;
use crate::api::workflows_v1::{
    LogSeverityGroup, PaginatedLogsData, PaginatedSpansData, QueryJobLogsRequest,
    QueryJobSpansRequest,
};
use crate::server::auth::Authenticate;
use crate::server::store::{Store, TelemetryKind, TelemetryRecord};

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
}

impl Telemetry {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Splits an export into one stored record per log record.
    pub async fn ingest_logs(&self, request: ExportLogsServiceRequest) -> Result<usize, Status> {
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
        let count = records.len();
        self.store
            .insert_telemetry(TelemetryKind::Log, records)
            .await
            .map_err(store_status)?;
        Ok(count)
    }

    /// Splits an export into one stored record per span.
    pub async fn ingest_spans(&self, request: ExportTraceServiceRequest) -> Result<usize, Status> {
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
        let count = records.len();
        self.store
            .insert_telemetry(TelemetryKind::Span, records)
            .await
            .map_err(store_status)?;
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

fn severity_ranges(groups: &[i32]) -> Result<Vec<(i32, i32)>, Status> {
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

#[tonic::async_trait]
impl LogsService for Telemetry {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.ingest_logs(request.into_inner()).await?;
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// The trace collector service; a separate type since both OTLP services name their
/// method `export`.
#[derive(Clone)]
pub struct Traces(pub Telemetry);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.ingest_spans(request.into_inner()).await?;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The OTLP/HTTP routes (`POST /v1/logs`, `POST /v1/traces`, protobuf bodies), with the
/// same bearer authentication as the gRPC API.
pub fn http_routes(telemetry: Telemetry, authenticate: Authenticate) -> axum::Router {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::routing::post;

    fn check(headers: &HeaderMap, authenticate: &Authenticate) -> Result<(), (StatusCode, String)> {
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
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("application/x-protobuf") {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type `{content_type}` is not supported; send application/x-protobuf"
                ),
            ));
        }
        if headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|value| value != "identity")
        {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "compressed bodies are not supported".into(),
            ));
        }
        Ok(())
    }
    let response = |result: Result<Vec<u8>, (StatusCode, String)>| match result {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            body,
        )
            .into_response(),
        Err((status, message)) => (status, message).into_response(),
    };
    use axum::response::IntoResponse;
    let (logs, traces) = (telemetry.clone(), telemetry);
    let (logs_auth, traces_auth) = (authenticate.clone(), authenticate);
    axum::Router::new()
        .route(
            "/v1/logs",
            post(move |headers: HeaderMap, body: Bytes| {
                let (telemetry, authenticate) = (logs.clone(), logs_auth.clone());
                async move {
                    let result = async {
                        check(&headers, &authenticate)?;
                        let request = ExportLogsServiceRequest::decode(body).map_err(|error| {
                            (
                                StatusCode::BAD_REQUEST,
                                format!("undecodable ExportLogsServiceRequest: {error}"),
                            )
                        })?;
                        telemetry.ingest_logs(request).await.map_err(|status| {
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                status.message().to_string(),
                            )
                        })?;
                        Ok(ExportLogsServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec())
                    }
                    .await;
                    response(result)
                }
            }),
        )
        .route(
            "/v1/traces",
            post(move |headers: HeaderMap, body: Bytes| {
                let (telemetry, authenticate) = (traces.clone(), traces_auth.clone());
                async move {
                    let result = async {
                        check(&headers, &authenticate)?;
                        let request = ExportTraceServiceRequest::decode(body).map_err(|error| {
                            (
                                StatusCode::BAD_REQUEST,
                                format!("undecodable ExportTraceServiceRequest: {error}"),
                            )
                        })?;
                        telemetry.ingest_spans(request).await.map_err(|status| {
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                status.message().to_string(),
                            )
                        })?;
                        Ok(ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec())
                    }
                    .await;
                    response(result)
                }
            }),
        )
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
