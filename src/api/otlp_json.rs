//! OTLP/JSON: the JSON encoding of OTLP/HTTP exports (`Content-Type: application/json`),
//! decoded into the same prost types the protobuf path uses.
//!
//! OTLP/JSON is proto3's JSON mapping with deviations
//! (<https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>): `traceId`, `spanId`
//! and `parentSpanId` are hex strings, not base64; enums are integers only; keys are
//! lowerCamelCase. A generic proto3 JSON decoder (pbjson) would read a hex trace id as
//! base64 (hex digits are valid base64) and store wrong ids without an error, so the mapping
//! is written out here, for the two export requests and the messages they hold. Unknown
//! keys are ignored, as the spec asks of receivers; 64-bit integers are accepted as numbers
//! or decimal strings; `bytesValue` is base64. Nesting depth is bounded by serde_json's
//! recursion limit (128).

use base64::Engine;
use serde::{Deserialize, Deserializer, de};

use super::otlp::collector::logs::v1::ExportLogsServiceRequest;
use super::otlp::collector::trace::v1::ExportTraceServiceRequest;
use super::otlp::common::v1 as common;
use super::otlp::logs::v1 as logs;
use super::otlp::resource::v1 as resource;
use super::otlp::trace::v1 as trace;

/// Decodes an OTLP/JSON `ExportLogsServiceRequest`.
pub fn logs_request(body: &[u8]) -> serde_json::Result<ExportLogsServiceRequest> {
    let request: LogsRequest = serde_json::from_slice(body)?;
    Ok(ExportLogsServiceRequest {
        resource_logs: request
            .resource_logs
            .into_iter()
            .map(ResourceLogs::into_proto)
            .collect(),
    })
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub fn traces_request(body: &[u8]) -> serde_json::Result<ExportTraceServiceRequest> {
    let request: TracesRequest = serde_json::from_slice(body)?;
    Ok(ExportTraceServiceRequest {
        resource_spans: request
            .resource_spans
            .into_iter()
            .map(ResourceSpans::into_proto)
            .collect(),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct LogsRequest {
    resource_logs: Vec<ResourceLogs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct TracesRequest {
    resource_spans: Vec<ResourceSpans>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Resource {
    attributes: Vec<KeyValue>,
    dropped_attributes_count: u32,
}

impl Resource {
    fn into_proto(self) -> resource::Resource {
        resource::Resource {
            attributes: attributes(self.attributes),
            dropped_attributes_count: self.dropped_attributes_count,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Scope {
    name: String,
    version: String,
    attributes: Vec<KeyValue>,
    dropped_attributes_count: u32,
}

impl Scope {
    fn into_proto(self) -> common::InstrumentationScope {
        common::InstrumentationScope {
            name: self.name,
            version: self.version,
            attributes: attributes(self.attributes),
            dropped_attributes_count: self.dropped_attributes_count,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ResourceLogs {
    resource: Option<Resource>,
    scope_logs: Vec<ScopeLogs>,
    schema_url: String,
}

impl ResourceLogs {
    fn into_proto(self) -> logs::ResourceLogs {
        logs::ResourceLogs {
            resource: self.resource.map(Resource::into_proto),
            scope_logs: self
                .scope_logs
                .into_iter()
                .map(|scope_logs| logs::ScopeLogs {
                    scope: scope_logs.scope.map(Scope::into_proto),
                    log_records: scope_logs
                        .log_records
                        .into_iter()
                        .map(LogRecord::into_proto)
                        .collect(),
                    schema_url: scope_logs.schema_url,
                })
                .collect(),
            schema_url: self.schema_url,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ScopeLogs {
    scope: Option<Scope>,
    log_records: Vec<LogRecord>,
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct LogRecord {
    #[serde(deserialize_with = "uint64")]
    time_unix_nano: u64,
    #[serde(deserialize_with = "uint64")]
    observed_time_unix_nano: u64,
    severity_number: i32,
    severity_text: String,
    body: Option<AnyValue>,
    attributes: Vec<KeyValue>,
    dropped_attributes_count: u32,
    flags: u32,
    #[serde(deserialize_with = "trace_id")]
    trace_id: Vec<u8>,
    #[serde(deserialize_with = "span_id")]
    span_id: Vec<u8>,
    event_name: String,
}

impl LogRecord {
    fn into_proto(self) -> logs::LogRecord {
        logs::LogRecord {
            time_unix_nano: self.time_unix_nano,
            observed_time_unix_nano: self.observed_time_unix_nano,
            severity_number: self.severity_number,
            severity_text: self.severity_text,
            body: self.body.map(AnyValue::into_proto),
            attributes: attributes(self.attributes),
            dropped_attributes_count: self.dropped_attributes_count,
            flags: self.flags,
            trace_id: self.trace_id,
            span_id: self.span_id,
            event_name: self.event_name,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ResourceSpans {
    resource: Option<Resource>,
    scope_spans: Vec<ScopeSpans>,
    schema_url: String,
}

impl ResourceSpans {
    fn into_proto(self) -> trace::ResourceSpans {
        trace::ResourceSpans {
            resource: self.resource.map(Resource::into_proto),
            scope_spans: self
                .scope_spans
                .into_iter()
                .map(|scope_spans| trace::ScopeSpans {
                    scope: scope_spans.scope.map(Scope::into_proto),
                    spans: scope_spans
                        .spans
                        .into_iter()
                        .map(Span::into_proto)
                        .collect(),
                    schema_url: scope_spans.schema_url,
                })
                .collect(),
            schema_url: self.schema_url,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ScopeSpans {
    scope: Option<Scope>,
    spans: Vec<Span>,
    schema_url: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Span {
    #[serde(deserialize_with = "trace_id")]
    trace_id: Vec<u8>,
    #[serde(deserialize_with = "span_id")]
    span_id: Vec<u8>,
    trace_state: String,
    #[serde(deserialize_with = "span_id")]
    parent_span_id: Vec<u8>,
    flags: u32,
    name: String,
    kind: i32,
    #[serde(deserialize_with = "uint64")]
    start_time_unix_nano: u64,
    #[serde(deserialize_with = "uint64")]
    end_time_unix_nano: u64,
    attributes: Vec<KeyValue>,
    dropped_attributes_count: u32,
    events: Vec<Event>,
    dropped_events_count: u32,
    links: Vec<Link>,
    dropped_links_count: u32,
    status: Option<Status>,
}

impl Span {
    fn into_proto(self) -> trace::Span {
        trace::Span {
            trace_id: self.trace_id,
            span_id: self.span_id,
            trace_state: self.trace_state,
            parent_span_id: self.parent_span_id,
            flags: self.flags,
            name: self.name,
            kind: self.kind,
            start_time_unix_nano: self.start_time_unix_nano,
            end_time_unix_nano: self.end_time_unix_nano,
            attributes: attributes(self.attributes),
            dropped_attributes_count: self.dropped_attributes_count,
            events: self
                .events
                .into_iter()
                .map(|event| trace::span::Event {
                    time_unix_nano: event.time_unix_nano,
                    name: event.name,
                    attributes: attributes(event.attributes),
                    dropped_attributes_count: event.dropped_attributes_count,
                })
                .collect(),
            dropped_events_count: self.dropped_events_count,
            links: self
                .links
                .into_iter()
                .map(|link| trace::span::Link {
                    trace_id: link.trace_id,
                    span_id: link.span_id,
                    trace_state: link.trace_state,
                    attributes: attributes(link.attributes),
                    dropped_attributes_count: link.dropped_attributes_count,
                    flags: link.flags,
                })
                .collect(),
            dropped_links_count: self.dropped_links_count,
            status: self.status.map(|status| trace::Status {
                message: status.message,
                code: status.code,
            }),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Event {
    #[serde(deserialize_with = "uint64")]
    time_unix_nano: u64,
    name: String,
    attributes: Vec<KeyValue>,
    dropped_attributes_count: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Link {
    #[serde(deserialize_with = "trace_id")]
    trace_id: Vec<u8>,
    #[serde(deserialize_with = "span_id")]
    span_id: Vec<u8>,
    trace_state: String,
    attributes: Vec<KeyValue>,
    dropped_attributes_count: u32,
    flags: u32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Status {
    message: String,
    code: i32,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct KeyValue {
    key: String,
    value: Option<AnyValue>,
}

fn attributes(values: Vec<KeyValue>) -> Vec<common::KeyValue> {
    values.into_iter().map(KeyValue::into_proto).collect()
}

impl KeyValue {
    fn into_proto(self) -> common::KeyValue {
        common::KeyValue {
            key: self.key,
            value: self.value.map(AnyValue::into_proto),
        }
    }
}

/// `AnyValue`: at most one of its keys is set; none is an empty value.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AnyValue {
    string_value: Option<String>,
    bool_value: Option<bool>,
    #[serde(deserialize_with = "optional_int64")]
    int_value: Option<i64>,
    #[serde(deserialize_with = "optional_double")]
    double_value: Option<f64>,
    array_value: Option<Values<AnyValue>>,
    kvlist_value: Option<Values<KeyValue>>,
    #[serde(deserialize_with = "optional_base64")]
    bytes_value: Option<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(default)]
struct Values<T> {
    values: Vec<T>,
}

impl<T> Default for Values<T> {
    fn default() -> Self {
        Self { values: Vec::new() }
    }
}

impl AnyValue {
    fn into_proto(self) -> common::AnyValue {
        use common::any_value::Value;
        let value = if let Some(text) = self.string_value {
            Some(Value::StringValue(text))
        } else if let Some(flag) = self.bool_value {
            Some(Value::BoolValue(flag))
        } else if let Some(number) = self.int_value {
            Some(Value::IntValue(number))
        } else if let Some(number) = self.double_value {
            Some(Value::DoubleValue(number))
        } else if let Some(array) = self.array_value {
            Some(Value::ArrayValue(common::ArrayValue {
                values: array.values.into_iter().map(AnyValue::into_proto).collect(),
            }))
        } else if let Some(list) = self.kvlist_value {
            Some(Value::KvlistValue(common::KeyValueList {
                values: attributes(list.values),
            }))
        } else {
            self.bytes_value.map(Value::BytesValue)
        };
        common::AnyValue { value }
    }
}

/// A JSON number or a string holding one (proto3 JSON writes 64-bit integers as strings).
///
/// Read by hand, not as an untagged enum: serde buffers the whole value for an untagged enum
/// before it tries a variant, so an array of millions of elements in a time field (which the
/// record count does not look into) would be copied whole before it is refused. This reads
/// a number or a string and refuses anything else at its first byte.
enum NumberOrString {
    Number(serde_json::Number),
    String(String),
}

impl<'de> Deserialize<'de> for NumberOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = NumberOrString;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a number or a string holding one")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
                Ok(NumberOrString::Number(value.into()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
                Ok(NumberOrString::Number(value.into()))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
                serde_json::Number::from_f64(value)
                    .map(NumberOrString::Number)
                    .ok_or_else(|| E::custom(format!("`{value}` is not a finite number")))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(NumberOrString::String(value.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn uint64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let text = match NumberOrString::deserialize(deserializer)? {
        NumberOrString::Number(number) => number.to_string(),
        NumberOrString::String(text) => text,
    };
    text.parse().map_err(|_| {
        de::Error::custom(format!(
            "`{}` is not an unsigned 64-bit integer",
            shortened(&text)
        ))
    })
}

fn optional_int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let text = match Option::<NumberOrString>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(NumberOrString::Number(number)) => number.to_string(),
        Some(NumberOrString::String(text)) => text,
    };
    text.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "intValue `{}` is not a 64-bit integer",
            shortened(&text)
        ))
    })
}

/// A number, or proto3 JSON's `"NaN"`, `"Infinity"`, `"-Infinity"` (or a number as a string).
fn optional_double<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    match Option::<NumberOrString>::deserialize(deserializer)? {
        None => Ok(None),
        Some(NumberOrString::Number(number)) => number
            .as_f64()
            .map(Some)
            .ok_or_else(|| de::Error::custom(format!("doubleValue `{number}` is not a double"))),
        Some(NumberOrString::String(text)) => match text.as_str() {
            "NaN" => Ok(Some(f64::NAN)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            other => other.parse().map(Some).map_err(|_| {
                de::Error::custom(format!(
                    "doubleValue `{}` is not a double",
                    shortened(other)
                ))
            }),
        },
    }
}

fn optional_base64<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<u8>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    // proto3 JSON parsers accept both the standard and the URL-safe alphabet.
    base64::engine::general_purpose::STANDARD
        .decode(&text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&text))
        .map(Some)
        .map_err(|error| {
            de::Error::custom(format!(
                "bytesValue `{}` is not base64: {error}",
                shortened(&text)
            ))
        })
}

fn trace_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    hex_id(deserializer, "a trace id", 16)
}

fn span_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    hex_id(deserializer, "a span id", 8)
}

/// An id of `bytes` bytes as `2 * bytes` hex digits (OTLP/JSON), or empty for none.
fn hex_id<'de, D: Deserializer<'de>>(
    deserializer: D,
    what: &str,
    bytes: usize,
) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    match hex::decode(&text) {
        Ok(id) if id.len() == bytes => Ok(id),
        _ => Err(de::Error::custom(format!(
            "{what} is {} hex digits in OTLP/JSON (not base64), got `{}`",
            bytes * 2,
            shortened(&text)
        ))),
    }
}

/// At most 64 characters of a refused value, for an error message.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_field_holding_an_array_is_refused_at_its_first_byte() {
        let elements = vec!["0"; 100_000].join(",");
        let body = format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":[{elements}]}}]}}]}}]}}"#
        );
        let error = logs_request(body.as_bytes()).unwrap_err().to_string();
        // Refused where the array starts (column 63), not after reading it (column 200,000+).
        assert!(
            error.contains("invalid type: sequence, expected a number or a string holding one at line 1 column 63"),
            "{error}"
        );
    }

    #[test]
    fn ids_are_hex_and_64_bit_integers_are_strings_or_numbers() {
        let request = logs_request(
            br#"{"resourceLogs":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
                "scopeLogs":[{"scope":{"name":"s"},"logRecords":[
                  {"timeUnixNano":"1700000000000000001","observedTimeUnixNano":5,"severityNumber":9,
                   "traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331",
                   "body":{"kvlistValue":{"values":[{"key":"n","value":{"intValue":"-7"}},
                                                    {"key":"d","value":{"doubleValue":"NaN"}},
                                                    {"key":"b","value":{"bytesValue":"AAE="}}]}},
                   "unknownField":{"ignored":true}}]}]}]}"#,
        )
        .unwrap();
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(record.observed_time_unix_nano, 5);
        assert_eq!(record.severity_number, 9);
        assert_eq!(record.trace_id[0], 0x0a);
        assert_eq!(record.trace_id.len(), 16);
        assert_eq!(record.span_id.len(), 8);
        let Some(common::any_value::Value::KvlistValue(list)) =
            record.body.as_ref().and_then(|body| body.value.clone())
        else {
            panic!("a kvlist body");
        };
        assert_eq!(
            list.values[0].value.as_ref().unwrap().value,
            Some(common::any_value::Value::IntValue(-7))
        );
        assert_eq!(
            list.values[2].value.as_ref().unwrap().value,
            Some(common::any_value::Value::BytesValue(vec![0, 1]))
        );
    }

    #[test]
    fn the_fuzz_seeds_decode() {
        let logs = logs_request(include_bytes!(
            "../../tests/fuzz/seeds/otlp_bodies/logs.json"
        ))
        .expect("the logs seed decodes");
        assert_eq!(logs.resource_logs[0].scope_logs[0].log_records.len(), 1);
        let spans = traces_request(include_bytes!(
            "../../tests/fuzz/seeds/otlp_bodies/spans.json"
        ))
        .expect("the spans seed decodes");
        let span = &spans.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.links.len(), 1);
        assert_eq!(span.events[0].time_unix_nano, 1_700_000_000_100_000_000);
        assert_eq!(span.end_time_unix_nano, 1_700_000_001_500_000_000);
    }

    #[test]
    fn a_base64_trace_id_is_refused_not_misread() {
        let error = traces_request(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"CvdlGRbNQ92ESOshHIAxnA=="}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("a trace id is 32 hex digits"), "{error}");
        assert!(error.contains("CvdlGRbNQ92ESOshHIAxnA=="), "{error}");
    }

    #[test]
    fn enum_names_are_refused() {
        let error = traces_request(
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":"SPAN_KIND_SERVER"}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("SPAN_KIND_SERVER"), "{error}");
    }
}
