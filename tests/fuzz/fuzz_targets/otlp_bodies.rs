//! Arbitrary bytes as an OTLP/HTTP body, protobuf and OTLP/JSON, for `/v1/logs` and
//! `/v1/traces` alike, split into stored records under small limits: never a panic; an
//! accepted export stores exactly one record per log record or span, within the record and
//! stored-byte limits, each a self-contained export of one record that decodes back to it;
//! and whatever decodes is counted whole beforehand, with at least as many records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tilebox::api::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tilebox::api::otlp::collector::trace::v1::ExportTraceServiceRequest;
use tilebox::api::otlp::logs::v1::ResourceLogs;
use tilebox::api::otlp::trace::v1::ResourceSpans;
use tilebox::api::otlp_count::{self, Signal};
use tilebox::server::services::telemetry::{self, Limits};

const LIMITS: Limits = Limits {
    max_body_bytes: 64 * 1024,
    max_records: 64,
    max_elements: 256,
    max_stored_bytes: 16 * 1024,
};

fuzz_target!(|data: &[u8]| {
    let counts = |json: bool, signal| {
        if json {
            otlp_count::count_json(data, signal)
        } else {
            otlp_count::count_protobuf(data, signal)
        }
    };
    if let Ok(request) = ExportLogsServiceRequest::decode(data) {
        check_logs_counted(&request, counts(false, Signal::Logs));
        check_logs(request);
    }
    if let Ok(request) = tilebox::api::otlp_json::logs_request(data) {
        check_logs_counted(&request, counts(true, Signal::Logs));
        check_logs(request);
    }
    if let Ok(request) = ExportTraceServiceRequest::decode(data) {
        check_spans_counted(&request, counts(false, Signal::Traces));
        check_spans(request);
    }
    if let Ok(request) = tilebox::api::otlp_json::traces_request(data) {
        check_spans_counted(&request, counts(true, Signal::Traces));
        check_spans(request);
    }
});

/// What decodes was walked whole by the count, and its records were counted (at least: the
/// count is an upper bound of what decoding builds).
fn check_logs_counted(request: &ExportLogsServiceRequest, counts: otlp_count::Counts) {
    assert!(counts.complete, "a decodable body is counted whole");
    let records: usize = request
        .resource_logs
        .iter()
        .flat_map(|resource| &resource.scope_logs)
        .map(|scope| scope.log_records.len())
        .sum();
    assert!(counts.records >= records, "{counts:?} for {records} records");
}

fn check_spans_counted(request: &ExportTraceServiceRequest, counts: otlp_count::Counts) {
    assert!(counts.complete, "a decodable body is counted whole");
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .map(|scope| scope.spans.len())
        .sum();
    assert!(counts.records >= spans, "{counts:?} for {spans} spans");
}

fn check_logs(request: ExportLogsServiceRequest) {
    let sent: Vec<_> = request
        .resource_logs
        .iter()
        .flat_map(|resource| &resource.scope_logs)
        .flat_map(|scope| scope.log_records.clone())
        .collect();
    if let Ok(records) = telemetry::split_logs(request, &LIMITS) {
        assert_eq!(records.len(), sent.len());
        assert!(records.len() <= LIMITS.max_records);
        let stored: usize = records.iter().map(|record| record.encoded.len()).sum();
        assert!(stored <= LIMITS.max_stored_bytes, "{stored} bytes stored");
        for (record, sent) in records.iter().zip(&sent) {
            let single = ResourceLogs::decode(record.encoded.as_slice()).expect("decodes");
            assert_eq!(single.scope_logs.len(), 1);
            assert_eq!(single.scope_logs[0].log_records, [sent.clone()]);
            assert_eq!(record.trace_id, sent.trace_id);
        }
    }
}

fn check_spans(request: ExportTraceServiceRequest) {
    let sent: Vec<_> = request
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .flat_map(|scope| scope.spans.clone())
        .collect();
    if let Ok(records) = telemetry::split_spans(request, &LIMITS) {
        assert_eq!(records.len(), sent.len());
        assert!(records.len() <= LIMITS.max_records);
        let stored: usize = records.iter().map(|record| record.encoded.len()).sum();
        assert!(stored <= LIMITS.max_stored_bytes, "{stored} bytes stored");
        for (record, sent) in records.iter().zip(&sent) {
            let single = ResourceSpans::decode(record.encoded.as_slice()).expect("decodes");
            assert_eq!(single.scope_spans.len(), 1);
            assert_eq!(single.scope_spans[0].spans, [sent.clone()]);
            assert_eq!(record.trace_id, sent.trace_id);
            assert!(record.time_unix_nano >= 0);
        }
    }
}
