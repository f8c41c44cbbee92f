//! Counting what an OTLP export would decode into, before it is decoded: its records (log
//! records or spans) and the other structs it multiplies (resources, scopes, attributes,
//! events, links, array and key-value list entries), from the protobuf wire format or from
//! OTLP/JSON, without allocating per element.
//!
//! Decoding builds one struct of 60 to 300 bytes per element, however small the element is
//! on the wire: an empty log record is 2 bytes of protobuf (`{}` and a comma in JSON), so a
//! 16 MiB body is 8 million records and over a gigabyte once decoded. The server counts
//! first and refuses past its limits, and decodes only what it would accept.
//!
//! The count is an upper bound of the structs the decoder builds: every occurrence on the
//! wire counts, even where the decoder merges or replaces (a repeated singular field, a
//! oneof set twice). Both scanners walk the input in the decoder's order and stop at the
//! first byte the decoder would refuse, so a malformed body is counted up to where its
//! decoding would fail too.

use prost::encoding::{WireType, decode_key, decode_varint};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Which export request a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `ExportLogsServiceRequest`: records are log records.
    Logs,
    /// `ExportTraceServiceRequest`: records are spans.
    Traces,
}

/// What an export would decode into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Log records or spans.
    pub records: usize,
    /// Everything else that is one struct per element: resource and scope groups,
    /// attributes at every level, events, links, and array or key-value list entries.
    pub elements: usize,
    /// Whether the whole body was walked; `false` when it is malformed (the counts are
    /// then those up to the point its decoding fails).
    pub complete: bool,
}

impl Counts {
    fn add(&mut self, counted: Counted) {
        match counted {
            Counted::Record => self.records += 1,
            Counted::Element => self.elements += 1,
            Counted::Singular => {}
        }
    }
}

/// The messages of the two export requests that hold other messages.
#[derive(Debug, Clone, Copy)]
enum Kind {
    LogsRequest,
    TracesRequest,
    ResourceLogs,
    ResourceSpans,
    Resource,
    Scope,
    ScopeLogs,
    ScopeSpans,
    LogRecord,
    Span,
    Event,
    Link,
    KeyValue,
    AnyValue,
    /// `ArrayValue` and `KeyValueList` (OTLP/JSON `{"values": [...]}`).
    ArrayValue,
    KeyValueList,
}

/// How a message field counts.
#[derive(Debug, Clone, Copy)]
enum Counted {
    /// A repeated field of records.
    Record,
    /// A repeated field of other messages.
    Element,
    /// A singular message field: one struct per parent at most (the decoder merges
    /// repeats), so it is not counted, only walked into.
    Singular,
}

/// A message-typed field: its protobuf number, its OTLP/JSON key, its position among the
/// JSON decoder's struct fields (serde also reads a struct given as a JSON array), and what
/// it holds.
struct Field {
    number: u32,
    key: &'static str,
    position: usize,
    kind: Kind,
    counted: Counted,
}

/// A [`Field`] literal (a function call would not be promoted to a `'static` table).
macro_rules! field {
    ($number:expr, $key:expr, $position:expr, $kind:expr, $counted:expr) => {
        Field {
            number: $number,
            key: $key,
            position: $position,
            kind: $kind,
            counted: $counted,
        }
    };
}

/// The message fields of each message (field numbers from `proto/opentelemetry`, positions
/// from the structs in `otlp_json.rs`); every other field holds no message and is skipped.
fn fields(kind: Kind) -> &'static [Field] {
    use Counted::{Element, Record, Singular};
    match kind {
        Kind::LogsRequest => &[field!(1, "resourceLogs", 0, Kind::ResourceLogs, Element)],
        Kind::TracesRequest => &[field!(1, "resourceSpans", 0, Kind::ResourceSpans, Element)],
        Kind::ResourceLogs => &[
            field!(1, "resource", 0, Kind::Resource, Singular),
            field!(2, "scopeLogs", 1, Kind::ScopeLogs, Element),
        ],
        Kind::ResourceSpans => &[
            field!(1, "resource", 0, Kind::Resource, Singular),
            field!(2, "scopeSpans", 1, Kind::ScopeSpans, Element),
        ],
        Kind::Resource => &[field!(1, "attributes", 0, Kind::KeyValue, Element)],
        Kind::Scope => &[field!(3, "attributes", 2, Kind::KeyValue, Element)],
        Kind::ScopeLogs => &[
            field!(1, "scope", 0, Kind::Scope, Singular),
            field!(2, "logRecords", 1, Kind::LogRecord, Record),
        ],
        Kind::ScopeSpans => &[
            field!(1, "scope", 0, Kind::Scope, Singular),
            field!(2, "spans", 1, Kind::Span, Record),
        ],
        Kind::LogRecord => &[
            field!(5, "body", 4, Kind::AnyValue, Singular),
            field!(6, "attributes", 5, Kind::KeyValue, Element),
        ],
        Kind::Span => &[
            field!(9, "attributes", 9, Kind::KeyValue, Element),
            field!(11, "events", 11, Kind::Event, Element),
            field!(13, "links", 13, Kind::Link, Element),
        ],
        Kind::Event => &[field!(3, "attributes", 2, Kind::KeyValue, Element)],
        Kind::Link => &[field!(4, "attributes", 3, Kind::KeyValue, Element)],
        Kind::KeyValue => &[field!(2, "value", 1, Kind::AnyValue, Singular)],
        Kind::AnyValue => &[
            field!(5, "arrayValue", 4, Kind::ArrayValue, Singular),
            field!(6, "kvlistValue", 5, Kind::KeyValueList, Singular),
        ],
        Kind::ArrayValue => &[field!(1, "values", 0, Kind::AnyValue, Element)],
        Kind::KeyValueList => &[field!(1, "values", 0, Kind::KeyValue, Element)],
    }
}

fn request_kind(signal: Signal) -> Kind {
    match signal {
        Signal::Logs => Kind::LogsRequest,
        Signal::Traces => Kind::TracesRequest,
    }
}

// ---- protobuf ---------------------------------------------------------------------------------

/// prost's nesting limit (`prost::RECURSION_LIMIT`): deeper, its decoding fails.
const PROTOBUF_DEPTH: u32 = 100;

/// Counts a protobuf export request.
pub fn count_protobuf(body: &[u8], signal: Signal) -> Counts {
    let mut counts = Counts::default();
    counts.complete = scan_message(body, request_kind(signal), 0, &mut counts).is_ok();
    counts
}

/// Where the decoder would fail; the counts so far stand.
struct Malformed;

fn scan_message(
    mut buf: &[u8],
    kind: Kind,
    depth: u32,
    counts: &mut Counts,
) -> Result<(), Malformed> {
    if depth > PROTOBUF_DEPTH {
        return Err(Malformed);
    }
    while !buf.is_empty() {
        let (number, wire_type) = decode_key(&mut buf).map_err(|_| Malformed)?;
        let known = fields(kind).iter().find(|field| field.number == number);
        match (known, wire_type) {
            (Some(field), WireType::LengthDelimited) => {
                let length = decode_varint(&mut buf).map_err(|_| Malformed)?;
                let length = usize::try_from(length).map_err(|_| Malformed)?;
                if length > buf.len() {
                    return Err(Malformed);
                }
                let (inner, rest) = buf.split_at(length);
                counts.add(field.counted);
                scan_message(inner, field.kind, depth + 1, counts)?;
                buf = rest;
            }
            // A message field with another wire type: the decoder refuses it.
            (Some(_), _) => return Err(Malformed),
            // Anything else allocates nothing per element: skipped as the decoder skips it.
            (None, wire_type) => prost::encoding::skip_field(
                wire_type,
                number,
                &mut buf,
                prost::encoding::DecodeContext::default(),
            )
            .map_err(|_| Malformed)?,
        }
    }
    Ok(())
}

// ---- OTLP/JSON --------------------------------------------------------------------------------

/// Counts an OTLP/JSON export request. Nesting is bounded by serde_json's recursion limit,
/// as in the decoder.
pub fn count_json(body: &[u8], signal: Signal) -> Counts {
    let mut counts = Counts::default();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    counts.complete = Scan {
        kind: request_kind(signal),
        counts: &mut counts,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end())
    .is_ok();
    counts
}

/// The `Visitor` methods for JSON scalars, which hold no message: nothing to count (where a
/// message belongs, the decoder refuses them).
macro_rules! scalars_hold_nothing {
    () => {
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
    };
}

/// Walks one message: a JSON object (or an array, read positionally as serde reads a
/// struct), `null` for none; any other value is the decoder's error to report.
struct Scan<'a> {
    kind: Kind,
    counts: &'a mut Counts,
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an OTLP/JSON message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match fields(self.kind).iter().find(|field| field.key == key.0) {
                Some(field) => map.next_value_seed(Value {
                    field,
                    counts: self.counts,
                })?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut position = 0;
        loop {
            let found = match fields(self.kind)
                .iter()
                .find(|field| field.position == position)
            {
                Some(field) => seq.next_element_seed(Value {
                    field,
                    counts: self.counts,
                })?,
                None => seq.next_element::<IgnoredAny>()?.map(|_| ()),
            };
            if found.is_none() {
                return Ok(());
            }
            position += 1;
        }
    }

    // Scalars where a message belongs: nothing to count (the decoder refuses them).
    scalars_hold_nothing!();
}

/// A map key, borrowed from the body unless it holds escapes (serde_json then unescapes it
/// into a scratch buffer: one key at a time, not per element).
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(key)))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(key.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The value of a message field: an array of messages for a repeated field (each counted),
/// one message for a singular one.
struct Value<'a> {
    field: &'static Field,
    counts: &'a mut Counts,
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.field.counted {
            Counted::Singular => Scan {
                kind: self.field.kind,
                counts: self.counts,
            }
            .deserialize(deserializer),
            Counted::Record | Counted::Element => deserializer.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an array of OTLP/JSON messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let scan = Scan {
                kind: self.field.kind,
                counts: &mut *self.counts,
            };
            if seq.next_element_seed(scan)?.is_none() {
                return Ok(());
            }
            self.counts.add(self.field.counted);
        }
    }

    // Anything else where an array belongs holds no message.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        IgnoredAny.visit_map(map).map(|_| ())
    }
    scalars_hold_nothing!();
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::api::otlp::collector::logs::v1::ExportLogsServiceRequest;

    /// Two resources, three scopes, five log records; attributes on the resource (1), the
    /// scope (1) and the records (2 + 1, one an array of 3 values and one a list of 2).
    const LOGS_JSON: &str = r#"{"resourceLogs":[
        {"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"s"}}]},
         "scopeLogs":[{"scope":{"name":"a","attributes":[{"key":"k"}]},
                       "logRecords":[{"attributes":[{"key":"x","value":{"arrayValue":{"values":[{},{"intValue":"1"},{}]}}},{"key":"y"}]},{}]},
                      {"logRecords":[{"body":{"kvlistValue":{"values":[{"key":"a"},{"key":"b"}]}}}]}]},
        {"scopeLogs":[{"logRecords":[{},{"attributes":[{"key":"z"}]}],"unknown":[{},{},{}]}]}]}"#;

    fn expected_logs() -> Counts {
        // Elements: 2 resources + 3 scopes + 1 + 1 + (2 + 3 array values) + 2 list entries + 1.
        Counts {
            records: 5,
            elements: 2 + 3 + 1 + 1 + 2 + 3 + 2 + 1,
            complete: true,
        }
    }

    #[test]
    fn json_and_protobuf_count_the_same_export_alike() {
        assert_eq!(
            count_json(LOGS_JSON.as_bytes(), Signal::Logs),
            expected_logs()
        );
        let request = crate::api::otlp_json::logs_request(LOGS_JSON.as_bytes()).unwrap();
        let records: usize = request
            .resource_logs
            .iter()
            .flat_map(|resource| &resource.scope_logs)
            .map(|scope| scope.log_records.len())
            .sum();
        assert_eq!(records, 5);
        assert_eq!(
            count_protobuf(&request.encode_to_vec(), Signal::Logs),
            expected_logs()
        );
    }

    #[test]
    fn spans_events_and_links_count() {
        let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[
            {"attributes":[{"key":"a"}],"events":[{"attributes":[{"key":"b"},{"key":"c"}]}],
             "links":[{},{"attributes":[{"key":"d"}]}],"status":{"message":"m"}},{}]}]}]}"#;
        let expected = Counts {
            records: 2,
            // resource, scope, 1 attribute, 1 event + 2, 2 links + 1
            elements: 1 + 1 + 1 + 3 + 3,
            complete: true,
        };
        assert_eq!(count_json(body, Signal::Traces), expected);
        let request = crate::api::otlp_json::traces_request(body).unwrap();
        assert_eq!(
            count_protobuf(&request.encode_to_vec(), Signal::Traces),
            expected
        );
        // A traces body read as logs holds no log records.
        assert_eq!(count_json(body, Signal::Logs).records, 0);
    }

    #[test]
    fn a_million_empty_records_are_counted_without_decoding() {
        let mut json = String::from(r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":["#);
        json.push_str(&["{}"; 1_000_000].join(","));
        json.push_str("]}]}]}");
        let counts = count_json(json.as_bytes(), Signal::Logs);
        assert_eq!((counts.records, counts.complete), (1_000_000, true));
        // The same in protobuf: field 2 with length 0, a million times.
        let records = [0x12u8, 0x00].repeat(1_000_000);
        let body = wrap(0x0a, &wrap(0x12, &records));
        let counts = count_protobuf(&body, Signal::Logs);
        assert_eq!((counts.records, counts.elements), (1_000_000, 2));
        assert!(counts.complete);
    }

    /// `inner` as a length-delimited field with key byte `key`.
    fn wrap(key: u8, inner: &[u8]) -> Vec<u8> {
        let mut encoded = vec![key];
        prost::encoding::encode_varint(inner.len() as u64, &mut encoded);
        encoded.extend_from_slice(inner);
        encoded
    }

    #[test]
    fn a_truncated_body_is_counted_up_to_where_it_ends() {
        let request = crate::api::otlp_json::logs_request(LOGS_JSON.as_bytes()).unwrap();
        let encoded = request.encode_to_vec();
        for end in 0..encoded.len() {
            let counts = count_protobuf(&encoded[..end], Signal::Logs);
            assert!(counts.records <= 5 && counts.elements <= expected_logs().elements);
            assert_eq!(
                counts.complete,
                ExportLogsServiceRequest::decode(&encoded[..end]).is_ok(),
                "cut at {end}"
            );
        }
        let cut = &LOGS_JSON.as_bytes()[..LOGS_JSON.len() / 2];
        let counts = count_json(cut, Signal::Logs);
        assert!(!counts.complete);
        assert!(counts.records < 5, "{counts:?}");
    }

    #[test]
    fn garbage_is_skipped_or_stops_the_count_where_the_decoder_fails() {
        // Unknown fields of every wire type, a group among them, then one record: prost skips
        // the unknown fields, and so does the count.
        let mut body = vec![
            0x08, 0x96, 0x01, // field 1 varint: a message field with the wrong wire type
        ];
        assert!(!count_protobuf(&body, Signal::Logs).complete);
        assert!(ExportLogsServiceRequest::decode(body.as_slice()).is_err());
        body = vec![
            0x10, 0x01, // field 2 varint (unknown)
            0x1b, 0x08, 0x01, 0x1c, // field 3 group holding a varint, then its end
            0x25, 0, 0, 0, 0, // field 4 fixed32
            0x29, 0, 0, 0, 0, 0, 0, 0, 0, // field 5 fixed64
            0x0a, 0x04, 0x12, 0x02, 0x12,
            0x00, // resource_logs { scope_logs { log_records {} } }
        ];
        let counts = count_protobuf(&body, Signal::Logs);
        assert!(ExportLogsServiceRequest::decode(body.as_slice()).is_ok());
        assert_eq!(
            counts,
            Counts {
                records: 1,
                elements: 2,
                complete: true
            }
        );
        // A record whose inside is garbage: counted, and the walk stops there.
        let garbage = [0x0a, 0x05, 0x12, 0x03, 0x12, 0x01, 0xff, 0x0a, 0x00];
        let counts = count_protobuf(&garbage, Signal::Logs);
        assert!(!counts.complete);
        assert!(ExportLogsServiceRequest::decode(garbage.as_slice()).is_err());
        // Nesting past prost's limit fails alike.
        let mut nested = Vec::new();
        for _ in 0..120 {
            // AnyValue { array_value (5): ArrayValue { values (1): [AnyValue] } }
            nested = wrap(0x2a, &wrap(0x0a, &nested));
        }
        // request { resource_logs { scope_logs { log_records { body: nested } } } }
        let deep = wrap(0x0a, &wrap(0x12, &wrap(0x12, &wrap(0x2a, &nested))));
        assert!(ExportLogsServiceRequest::decode(deep.as_slice()).is_err());
        assert!(!count_protobuf(&deep, Signal::Logs).complete);
        assert!(!count_protobuf(&[0x2a, 0xff], Signal::Logs).complete);
        assert!(
            !count_json(
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{]}]}]}"#,
                Signal::Logs
            )
            .complete
        );
        assert!(!count_json(br#"{"resourceLogs":[]} trailing"#, Signal::Logs).complete);
    }

    #[test]
    fn json_messages_given_as_arrays_are_read_by_position_as_serde_does() {
        // `[resource, scopeLogs]`, `[scope, logRecords]`: serde reads structs from arrays.
        let body = br#"{"resourceLogs":[[null,[[null,[{},{},{}]]]]]}"#;
        let counts = count_json(body, Signal::Logs);
        assert_eq!((counts.records, counts.complete), (3, true));
        let decoded = crate::api::otlp_json::logs_request(body).unwrap();
        assert_eq!(decoded.resource_logs[0].scope_logs[0].log_records.len(), 3);
    }

    #[test]
    fn escaped_keys_and_wrong_types_are_counted_not_refused() {
        let body = br#"{"resourceLogs":[{"scopeLogs":[{"logR\u0065cords":[{},{}],"scope":5}],"resource":"x"}]}"#;
        let counts = count_json(body, Signal::Logs);
        assert_eq!((counts.records, counts.complete), (2, true));
    }
}
