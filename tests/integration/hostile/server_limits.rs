//! Requests that try to take more than their share of the server: deployment snapshots
//! larger than gRPC's default 4 MiB, OTLP exports that are unauthenticated, too large, too
//! many records or one large resource repeated over many records, gzip bombs and malformed
//! OTLP/JSON, long polls and watches
//! piled on one connection, watch streams dropped by their client, and uploads cut short.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use prost::Message;
use tilebox::api::convert::id;
use tilebox::api::otlp::collector::logs::v1::ExportLogsServiceRequest;
use tilebox::api::otlp::common::v1::{AnyValue, KeyValue, any_value};
use tilebox::api::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tilebox::api::otlp::resource::v1::Resource;
use tilebox::api::selfhosted_v1::{
    UploadArtifactRequest, WatchDeploymentsRequest, WorkReport, WorkRequest, work_report,
};
use tilebox::api::workflows_v1::{
    NextTaskRequest, Path as ReleasePath, QueryJobLogsRequest, ReleaseContent, TaskFailedRequest,
};
use tilebox::client::Client;
use uuid::Uuid;

use super::{
    create_cluster, deploy, deploy_greeter, publish, release_content, start_runner, submit_to,
};
use crate::common::{
    TestServer, ask, client, http_post, identifier, job_request, uuid_of_id, wait_for_job_state,
    wait_until,
};

/// The trace id of [`job_request`]'s `trace_parent`.
const TRACE_ID: [u8; 16] = [
    0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31, 0x9c,
];

// ---- helpers ---------------------------------------------------------------------------------

/// Sends `head` (request line and headers, without the blank line) and `body` in one
/// write, and answers the status code and body of the response. The server may answer
/// before it read anything of the body: only `sent` bytes of it are sent.
fn http_exchange(server: &TestServer, head: &str, body: &[u8]) -> (u16, String) {
    let address = server.url().strip_prefix("http://").expect("http url");
    let mut stream = TcpStream::connect(address).expect("connect");
    // A deadline, not a pace: a server waiting for the rest of the body never answers.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request =
        format!("{head}\r\nHost: {address}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).expect("send the request");
    let mut response = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => response.extend_from_slice(&buffer[..count]),
            Err(error) if response.windows(4).any(|window| window == b"\r\n\r\n") => {
                // The server closed without reading all we sent; what came back is complete
                // enough for the status and the start of the body.
                let _ = error;
                break;
            }
            Err(error) => panic!(
                "no answer from the server: {error}\n--- server stderr ---\n{}",
                server.stderr_tail()
            ),
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn post_logs(server: &TestServer, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let authorization = token
        .map(|token| format!("\r\nAuthorization: Bearer {token}"))
        .unwrap_or_default();
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}{authorization}",
        body.len()
    );
    http_exchange(server, &head, body)
}

fn string_attribute(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
    }
}

/// An export of `records` log records of the test job's trace under one resource with a
/// `resource_bytes`-long attribute.
fn export(records: usize, resource_bytes: usize) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![string_attribute("big", "r".repeat(resource_bytes))],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        trace_id: TRACE_ID.to_vec(),
                        ..LogRecord::default()
                    };
                    records
                ],
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

/// A job whose trace the exports above belong to.
async fn traced_job(client: &mut Client) -> Uuid {
    let job = client
        .jobs
        .submit_job(job_request("Traced", "v1.0", 1, b"{}"))
        .await
        .expect("submit")
        .into_inner();
    uuid_of_id(job.id.as_ref())
}

async fn stored_logs(client: &mut Client, job: Uuid) -> usize {
    client
        .telemetry
        .query_job_logs(QueryJobLogsRequest {
            job_id: Some(id(job)),
            ..QueryJobLogsRequest::default()
        })
        .await
        .expect("query logs")
        .into_inner()
        .resource_logs
        .len()
}

// ---- message size ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_snapshot_over_4_mib_still_reaches_the_runner() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let scratch = tempfile::tempdir().expect("scratch");
    create_cluster(&mut client, "big").await;

    // A release whose content lists 60,000 files: about 5 MiB in every snapshot of the
    // cluster, above gRPC's default 4 MiB message limit.
    let files: Vec<ReleasePath> = (0..60_000)
        .map(|index| ReleasePath {
            path: format!("data/{index:06}/{}", "f".repeat(64)),
            ..ReleasePath::default()
        })
        .collect();
    let content = ReleaseContent {
        files,
        ..release_content("large-listing", "Listed")
    };
    assert!(content.encoded_len() > 4 * 1024 * 1024);
    let release = publish(
        &mut client,
        "listing",
        b"not an archive, never loaded",
        content,
    )
    .await;
    deploy(&mut client, "listing", release, "big").await;

    // A good release on the same cluster: the runner only runs it if the snapshot arrived.
    deploy_greeter(&server, scratch.path(), "big");
    let runner = start_runner(
        &server,
        "big",
        &scratch.path().join("cache"),
        scratch.path().join("runner.log"),
        &[],
    );
    let job = submit_to(&server, "Hello", "big");
    wait_for_job_state(&server, &job, "completed", Duration::from_secs(90));
    let log = runner.log();
    assert!(
        !log.contains("message length too large"),
        "the runner refused the snapshot:\n{log}"
    );
}

// ---- OTLP ------------------------------------------------------------------------------------

#[test]
fn an_unauthenticated_otlp_export_is_refused_before_its_body_is_read() {
    let server = TestServer::start_with(&["--token", "secret"]);
    // Announce 64 MiB, send 1 KiB: a server that read the body first would never answer.
    let head = "POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 67108864";
    let (status, body) = http_exchange(&server, head, &[0u8; 1024]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    // With the token, the same announced size is refused for its size, also unread.
    let head = format!("{head}\r\nAuthorization: Bearer secret");
    let (status, body) = http_exchange(&server, &head, &[0u8; 1024]);
    assert_eq!(status, 413, "{body}");
    assert!(
        body.contains("67108864 bytes") && body.contains("--max-otlp-body-bytes"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_body_over_the_limit_is_refused_and_nothing_is_stored() {
    let server = TestServer::start_with(&["--max-otlp-body-bytes", "65536"]);
    let mut client = client(&server).await;
    let job = traced_job(&mut client).await;
    let body = export(20, 70_000).encode_to_vec();
    let (status, message) = post_logs(&server, None, &body);
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("at most 65536 bytes"), "{message}");
    // A chunked body has no declared length: it is read up to the limit, then refused.
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, message) = http_exchange(
        &server,
        "POST /v1/logs HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked",
        &chunked,
    );
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("more than 65536 bytes"), "{message}");
    // Over gRPC the same limit applies to the message.
    let refused = client
        .logs
        .export(export(20, 70_000))
        .await
        .expect_err("an export over the limit");
    // tonic's own refusal (OUT_OF_RANGE), naming the size and the limit.
    assert!(
        refused.message().contains("the limit is: 65536 bytes"),
        "{refused}"
    );
    assert_eq!(stored_logs(&mut client, job).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_export_over_the_record_limit_is_refused_whole() {
    let server = TestServer::start_with(&["--max-otlp-records", "100"]);
    let mut client = client(&server).await;
    let job = traced_job(&mut client).await;
    let (status, message) = post_logs(&server, None, &export(101, 10).encode_to_vec());
    assert_eq!(status, 413, "{message}");
    assert!(
        message.contains("101 log records") && message.contains("at most 100 per request"),
        "{message}"
    );
    let refused = client
        .logs
        .export(export(101, 10))
        .await
        .expect_err("too many records");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-otlp-records"),
        "{refused}"
    );
    assert_eq!(stored_logs(&mut client, job).await, 0, "nothing partial");

    let (status, message) = post_logs(&server, None, &export(100, 10).encode_to_vec());
    assert_eq!(status, 200, "{message}");
    assert_eq!(stored_logs(&mut client, job).await, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_resource_over_many_empty_records_is_refused_not_copied() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let job = traced_job(&mut client).await;
    // Under 2 MiB on the wire; copied into each record it would be 1.5 MiB x 8,000 = 12 GB.
    let body = export(8_000, 1536 * 1024).encode_to_vec();
    assert!(body.len() < 2 * 1024 * 1024, "{} bytes", body.len());
    let (status, message) = post_logs(&server, None, &body);
    assert_eq!(status, 413, "{message}");
    assert!(
        message.contains("8000 log records") && message.contains("--max-otlp-stored-bytes"),
        "{message}"
    );
    assert_eq!(stored_logs(&mut client, job).await, 0);
    // The server is still here, and the database did not grow by the copies.
    let database = server.data_dir().join("tilebox.sqlite3");
    let stored: u64 = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            fs_err::metadata(format!("{}{suffix}", database.display()))
                .ok()
                .map(|metadata| metadata.len())
        })
        .sum();
    assert!(stored < 64 * 1024 * 1024, "the store holds {stored} bytes");
    // The same resource over a few records is fine.
    let (status, message) = post_logs(&server, None, &export(3, 1536 * 1024).encode_to_vec());
    assert_eq!(status, 200, "{message}");
    assert_eq!(stored_logs(&mut client, job).await, 3);
}

/// Peak resident memory of process `pid`, in bytes (`VmHWM`).
fn peak_memory(pid: u32) -> u64 {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmHWM")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_without_inflating_it() {
    use std::io::Write;
    let server = TestServer::start_with(&["--max-otlp-body-bytes", "4194304"]);
    let mut client = client(&server).await;
    let job = traced_job(&mut client).await;
    // 1 GiB of zeros as 1,024 gzip members of 1 MiB each: about 1 MiB on the wire, within
    // the body limit, 256 times the limit once inflated.
    let mut member = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    member.write_all(&vec![0u8; 1 << 20]).expect("compress");
    let member = member.finish().expect("compress");
    let bomb = member.repeat(1024);
    assert!(bomb.len() < 4 * 1024 * 1024, "{} bytes", bomb.len());
    for content_type in ["application/x-protobuf", "application/json"] {
        let response = http_post(
            &server,
            "/v1/logs",
            &[("Content-Type", content_type), ("Content-Encoding", "gzip")],
            &bomb,
        );
        assert_eq!(response.status, 413, "{}", response.text());
        assert!(
            response
                .text()
                .contains("decompresses to more than 4194304 bytes")
                && response.text().contains("--max-otlp-body-bytes"),
            "{}",
            response.text()
        );
    }
    // Refused at the limit, not after inflating the gigabyte.
    let peak = peak_memory(server.pid());
    assert!(
        peak < 512 * 1024 * 1024,
        "the server peaked at {peak} bytes"
    );
    assert_eq!(stored_logs(&mut client, job).await, 0);
    // A gzip export within the limit still goes through.
    let mut small = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    small
        .write_all(&export(3, 10).encode_to_vec())
        .expect("compress");
    let response = http_post(
        &server,
        "/v1/logs",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        &small.finish().expect("compress"),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(stored_logs(&mut client, job).await, 3);
}

/// `inner` as a length-delimited protobuf field with key byte `key`.
fn wrap(key: u8, inner: &[u8]) -> Vec<u8> {
    let mut encoded = vec![key];
    prost::encoding::encode_varint(inner.len() as u64, &mut encoded);
    encoded.extend_from_slice(inner);
    encoded
}

/// A protobuf `ExportLogsServiceRequest` of one record of the test job's trace followed by
/// `empty` empty records (2 bytes each on the wire), built as bytes: as structs they would
/// take gigabytes of the test's own memory.
fn empty_records_protobuf(empty: usize) -> Vec<u8> {
    let first = LogRecord {
        trace_id: TRACE_ID.to_vec(),
        ..LogRecord::default()
    }
    .encode_to_vec();
    let mut records = wrap(0x12, &first);
    records.extend_from_slice(&[0x12, 0x00].repeat(empty));
    // request { resource_logs (1) { scope_logs (2) { log_records (2)... } } }
    wrap(0x0a, &wrap(0x12, &records))
}

/// The same in OTLP/JSON: `{}` per empty record.
fn empty_records_json(empty: usize) -> Vec<u8> {
    let mut json = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"traceId":"{}"}}"#,
        hex::encode(TRACE_ID)
    );
    json.push_str(&",{}".repeat(empty));
    json.push_str("]}]}]}");
    json.into_bytes()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).expect("compress");
    encoder.finish().expect("compress")
}

/// A raw gRPC `LogsService/Export` of `body` (protobuf bytes), optionally gzip-compressed.
async fn export_raw(server: &TestServer, body: Vec<u8>, gzip: bool) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(server.url().to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    if gzip {
        grpc = grpc.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    }
    grpc.ready().await.expect("ready");
    grpc.unary::<_, prost::bytes::Bytes, _>(
        tonic::Request::new(prost::bytes::Bytes::from(body)),
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
            .parse()
            .expect("path"),
        tilebox::server::services::otlp_grpc::RawCodec,
    )
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_empty_records_are_refused_before_they_are_decoded() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let job = traced_job(&mut client).await;
    // OTLP/JSON: 5.5 million `{}`, 16.5 MB inflated, about 16 KB gzipped.
    let json = gzip(&empty_records_json(5_500_000));
    assert!(json.len() < 64 * 1024, "{} bytes", json.len());
    let response = http_post(
        &server,
        "/v1/logs",
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &json,
    );
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(
        response.text().contains("5500001 log records")
            && response
                .text()
                .contains("at most 10000 per request (--max-otlp-records)"),
        "{}",
        response.text()
    );
    // Protobuf: 8 million empty records, 16 MB, plain and gzipped, over HTTP and gRPC.
    let protobuf = empty_records_protobuf(8_000_000);
    assert!(
        protobuf.len() < 16 * 1024 * 1024,
        "{} bytes",
        protobuf.len()
    );
    let compressed = gzip(&protobuf);
    for (body, encoding) in [(&protobuf, "identity"), (&compressed, "gzip")] {
        let response = http_post(
            &server,
            "/v1/logs",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", encoding),
            ],
            body,
        );
        assert_eq!(response.status, 413, "{encoding}: {}", response.text());
        assert!(
            response.text().contains("8000001 log records")
                && response.text().contains("--max-otlp-records"),
            "{}",
            response.text()
        );
    }
    for gzip in [false, true] {
        let refused = export_raw(&server, protobuf.clone(), gzip)
            .await
            .expect_err("too many records");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
        assert!(
            refused.message().contains("8000001 log records")
                && refused.message().contains("--max-otlp-records"),
            "{refused}"
        );
    }
    // One record with 5.5 million empty attributes amplifies alike: refused by the element
    // limit.
    let attributes = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"traceId":"{}","attributes":[{{}}{}]}}]}}]}}]}}"#,
        hex::encode(TRACE_ID),
        ",{}".repeat(5_499_999)
    );
    let response = http_post(
        &server,
        "/v1/logs",
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(attributes.as_bytes()),
    );
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(
        response
            .text()
            .contains("5500002 attributes, events, links")
            && response
                .text()
                .contains("at most 500000 per request (--max-otlp-elements)"),
        "{}",
        response.text()
    );
    // Refused from counts: the server never held the decoded structs (1.6 GB and more).
    let peak = peak_memory(server.pid());
    eprintln!("the server's peak memory: {} MiB", peak / (1024 * 1024));
    assert!(
        peak < 200 * 1024 * 1024,
        "the server peaked at {peak} bytes"
    );
    assert_eq!(stored_logs(&mut client, job).await, 0, "nothing partial");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_at_the_record_and_element_limits_are_stored() {
    let server =
        TestServer::start_with(&["--max-otlp-records", "100", "--max-otlp-elements", "203"]);
    let mut client = client(&server).await;
    let job = traced_job(&mut client).await;
    // 100 records of 2 attributes each, under one resource (1 attribute) and one scope:
    // 100 records and 203 other elements.
    let mut request = export(100, 10);
    for record in &mut request.resource_logs[0].scope_logs[0].log_records {
        record.attributes = vec![
            string_attribute("a", "1".into()),
            string_attribute("b", "2".into()),
        ];
    }
    client
        .logs
        .export(request.clone())
        .await
        .expect("an export at the limits");
    assert_eq!(stored_logs(&mut client, job).await, 100);
    let response = http_post(
        &server,
        "/v1/logs",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(&request.encode_to_vec()),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    // One attribute more is refused, over gRPC and HTTP, and nothing of it is stored.
    request.resource_logs[0].scope_logs[0].log_records[0]
        .attributes
        .push(string_attribute("c", "3".into()));
    let refused = client
        .logs
        .export(request.clone())
        .await
        .expect_err("over the element limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("204 attributes")
            && refused
                .message()
                .contains("at most 203 per request (--max-otlp-elements)"),
        "{refused}"
    );
    let (status, message) = post_logs(&server, None, &request.encode_to_vec());
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("--max-otlp-elements"), "{message}");
    let mut all = 0;
    let mut after = None;
    loop {
        let page = client
            .telemetry
            .query_job_logs(QueryJobLogsRequest {
                job_id: Some(id(job)),
                page: Some(tilebox::api::tilebox_v1::Pagination {
                    limit: Some(1000),
                    starting_after: after,
                }),
                ..QueryJobLogsRequest::default()
            })
            .await
            .expect("query logs")
            .into_inner();
        if page.resource_logs.is_empty() {
            break;
        }
        all += page.resource_logs.len();
        after = page.next_page.and_then(|page| page.starting_after);
    }
    assert_eq!(
        all, 200,
        "the two exports at the limits, nothing of the refused ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_otlp_http_exports_are_refused_saying_what_was_wrong() {
    let server = TestServer::start();
    let mut client = client(&server).await;
    let job = traced_job(&mut client).await;
    const JSON: (&str, &str) = ("Content-Type", "application/json");
    /// Path, headers, body, the expected status and what its message names.
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a [u8],
        u16,
        &'a [&'a str],
    );
    let cases: [Case; 7] = [
        (
            "/v1/logs",
            vec![JSON],
            br#"{"resourceLogs": [{"scopeLogs": [}"#,
            400,
            &["invalid OTLP/JSON ExportLogsServiceRequest", "line 1 column"],
        ),
        (
            // A base64 trace id (protobuf's generic JSON mapping) is not silently misread.
            "/v1/logs",
            vec![JSON],
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"CvdlGRbNQ92ESOshHIAxnA=="}]}]}]}"#,
            400,
            &["a trace id is 32 hex digits", "CvdlGRbNQ92ESOshHIAxnA=="],
        ),
        (
            "/v1/traces",
            vec![JSON],
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"xyz"}]}]}]}"#,
            400,
            &["invalid OTLP/JSON ExportTraceServiceRequest", "a span id is 16 hex digits"],
        ),
        (
            "/v1/traces",
            vec![JSON],
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"startTimeUnixNano":"soon"}]}]}]}"#,
            400,
            &["`soon` is not an unsigned 64-bit integer"],
        ),
        (
            "/v1/logs",
            vec![JSON, ("Content-Encoding", "gzip")],
            b"not gzip at all",
            400,
            &["not valid gzip"],
        ),
        (
            "/v1/logs",
            vec![("Content-Type", "text/plain")],
            b"hello",
            415,
            &["`text/plain` is not supported", "application/json"],
        ),
        (
            "/v1/logs",
            vec![JSON, ("Content-Encoding", "br")],
            b"{}",
            415,
            &["content encoding `br` is not supported"],
        ),
    ];
    for (path, headers, body, status, needles) in cases {
        let response = http_post(&server, path, &headers, body);
        let text = response.text();
        assert_eq!(response.status, status, "{path} {headers:?}: {text}");
        for needle in needles {
            assert!(text.contains(needle), "{needle:?} not in {text}");
        }
        // A JSON request is answered with a JSON `google.rpc.Status`.
        if headers.contains(&JSON) {
            assert_eq!(response.header("content-type"), Some("application/json"));
            let status: serde_json::Value = serde_json::from_slice(&response.body)
                .unwrap_or_else(|error| panic!("{error}: {text}"));
            assert_eq!(status["code"], 3, "{text}");
            assert!(
                status["message"]
                    .as_str()
                    .is_some_and(|message| message.contains(needles[0]))
            );
        }
    }
    assert_eq!(stored_logs(&mut client, job).await, 0);
}

// ---- open calls per connection ---------------------------------------------------------------

fn live_watches_logged(server: &TestServer, event: &str) -> Vec<usize> {
    server
        .stderr()
        .lines()
        .filter(|line| line.contains(event))
        .filter_map(|line| {
            let value = line.split("live_watches=").nth(1)?;
            value.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_per_connection_are_limited_and_end_when_their_client_goes() {
    let server = TestServer::start_with(&["--max-open-calls-per-connection", "20"]);
    let client = client(&server).await;
    let watch = |client: &Client| {
        let mut client = client.clone();
        async move {
            client
                .deployments
                .watch_deployments(WatchDeploymentsRequest::default())
                .await
        }
    };
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = watch(&client).await.expect("watch").into_inner();
        stream
            .message()
            .await
            .expect("first snapshot")
            .expect("a snapshot");
        streams.push(stream);
    }
    let refused = watch(&client).await.expect_err("the 21st watch");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused
            .message()
            .contains("20 concurrent deployment watches")
            && refused.message().contains("at most 20 per connection"),
        "{refused}"
    );
    assert!(
        live_watches_logged(&server, "deployment watch opened").contains(&20),
        "{}",
        server.stderr_tail()
    );

    // Dropped by the client, with no deploy to wake them: every watch ends on the server.
    drop(streams);
    wait_until(
        "every dropped watch to end on the server",
        Duration::from_secs(30),
        || {
            // Watches ending at once may log out of order: the count reaches 0 on some line.
            let ended = live_watches_logged(&server, "deployment watch ended");
            ended.len() == 20 && ended.contains(&0)
        },
    )
    .unwrap_or_else(|error| panic!("{error}\n{}", server.stderr_tail()));
    // Their permits are back: the connection may watch again.
    watch(&client)
        .await
        .expect("a watch after the others ended");
}

/// A long poll of `name@v1.0` on `client`'s connection: a `Work` call that waits, or a
/// `NextTask`. Answers whether it claimed a task, or the status it was refused with.
async fn long_poll(client: &Client, kind: usize, name: &str) -> Result<bool, tonic::Status> {
    let mut client = client.clone();
    if kind % 2 == 0 {
        let answer = client
            .work
            .work(WorkRequest {
                capacity: 1,
                identifiers: vec![identifier(name, "v1.0")],
                wait: true,
                ..WorkRequest::default()
            })
            .await?
            .into_inner();
        assert!(answer.claim_error.is_empty(), "{}", answer.claim_error);
        Ok(!answer.tasks.is_empty())
    } else {
        let answer = client
            .tasks
            .next_task(NextTaskRequest {
                next_task_to_run: ask(name, "v1.0"),
                ..NextTaskRequest::default()
            })
            .await?
            .into_inner();
        Ok(answer.next_task.is_some())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_per_connection_are_limited_and_their_permits_come_back() {
    const LONG_POLL: Duration = Duration::from_secs(20);
    let server = TestServer::start_with(&[
        "--long-poll-ms",
        &LONG_POLL.as_millis().to_string(),
        "--max-open-calls-per-connection",
        "2",
    ]);
    let mut one = client(&server).await;
    let mut another = client(&server).await;

    // Three long polls at once on one connection for a task nobody submits (a `Work` that
    // waits, a `NextTask`, a `Work`): whichever reaches the server last is refused, the
    // other two wait. (Which one is up to the connection, so none is singled out.)
    let started = std::time::Instant::now();
    let mut polls: Vec<_> = (0..3)
        .map(|kind| {
            tokio::spawn({
                let one = one.clone();
                async move { long_poll(&one, kind, "Nothing").await }
            })
        })
        .collect();
    wait_until(
        "one of three long polls to end",
        Duration::from_secs(30),
        || polls.iter().any(|poll| poll.is_finished()),
    )
    .unwrap_or_else(|error| panic!("{error}\n{}", server.stderr_tail()));
    let refused = polls
        .iter()
        .position(|poll| poll.is_finished())
        .expect("ended");
    let refused = polls
        .remove(refused)
        .await
        .expect("join")
        .expect_err("a refusal");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused
            .message()
            .contains("2 concurrent long polls (Work/NextTask)")
            && refused.message().contains("at most 2 per connection")
            && refused
                .message()
                .contains("--max-open-calls-per-connection"),
        "{refused}"
    );
    assert!(
        polls.iter().all(|poll| !poll.is_finished()),
        "the other two still wait"
    );

    // Calls that cannot wait are served on the full connection: a report-only `Work` (what
    // our runner sends while its claim waits), a `Work` that does not wait, a `NextTask`
    // that only reports.
    let unknown = Uuid::now_v7();
    let reported = one
        .work
        .work(WorkRequest {
            reports: vec![WorkReport {
                report: Some(work_report::Report::Failed(TaskFailedRequest {
                    task_id: Some(id(unknown)),
                    display: "failed".into(),
                    ..TaskFailedRequest::default()
                })),
            }],
            wait: true,
            ..WorkRequest::default()
        })
        .await
        .expect("a report-only call on the full connection")
        .into_inner();
    assert_eq!(
        reported.results[0].message,
        format!("task {unknown} does not exist")
    );
    let answer = one
        .work
        .work(WorkRequest {
            capacity: 1,
            identifiers: vec![identifier("Nothing", "v1.0")],
            wait: false,
            ..WorkRequest::default()
        })
        .await
        .expect("a call that does not wait")
        .into_inner();
    assert!(answer.tasks.is_empty() && answer.suggested_idling.is_some());
    one.tasks
        .next_task(NextTaskRequest::default())
        .await
        .expect("a NextTask that asks for nothing");

    // Work appears: the waiting calls wake, find nothing of theirs and keep waiting. Another
    // connection's long poll is not limited by this one's and claims a task.
    let job = another
        .jobs
        .submit_job(job_request("Hello", "v1.0", 2, b"{}"))
        .await
        .expect("submit")
        .into_inner();
    assert!(job.id.is_some());
    let claimed = long_poll(&another, 0, "Hello").await;
    assert!(matches!(claimed, Ok(true)), "{claimed:?}");
    assert!(
        polls.iter().all(|poll| !poll.is_finished()),
        "both still wait"
    );

    // The client gives up one of them: its permit comes back, and the connection may long
    // poll again (the server sees the reset soon after; until then it refuses).
    polls.remove(0).abort();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let accepted = loop {
        match long_poll(&one, 1, "Hello").await {
            Err(status)
                if status.code() == tonic::Code::ResourceExhausted
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(accepted, Ok(true)),
        "the second Hello task: {accepted:?}"
    );
    let held = polls.remove(0);
    assert!(!held.is_finished(), "the permit came from the aborted call");

    // The other one waits the whole long poll and ends idle, not with an error.
    let ended = held.await.expect("join");
    assert!(matches!(ended, Ok(false)), "{ended:?}");
    assert!(started.elapsed() >= LONG_POLL, "it held the long poll open");
}

// ---- uploads ---------------------------------------------------------------------------------

fn uploads_in(server: &TestServer) -> Vec<String> {
    match fs_err::read_dir(server.data_dir().join("artifacts")) {
        Ok(entries) => entries
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.starts_with(".upload-"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_upload_leaves_no_temporary_file_and_stale_ones_go_at_start() {
    let mut server = TestServer::start();
    let client = client(&server).await;
    let (chunks, stream) = tokio::sync::mpsc::channel(4);
    chunks
        .send(UploadArtifactRequest {
            digest: "ab".repeat(32),
            size: 10 * 1024 * 1024,
            chunk: vec![7u8; 64 * 1024],
        })
        .await
        .expect("first chunk");
    let upload = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .artifacts
                .upload_artifact(tokio_stream::wrappers::ReceiverStream::new(stream))
                .await
        }
    });
    wait_until(
        "the upload's temporary file",
        Duration::from_secs(30),
        || uploads_in(&server).len() == 1,
    )
    .expect("an upload in progress");
    // The client goes mid-stream: the call is cancelled, not ended.
    upload.abort();
    drop(chunks);
    wait_until(
        "the aborted upload's temporary file to go",
        Duration::from_secs(30),
        || uploads_in(&server).is_empty(),
    )
    .unwrap_or_else(|error| panic!("{error}: {:?}", uploads_in(&server)));

    // One left by a server killed mid-upload goes at the next start; artifacts stay.
    let artifacts = server.data_dir().join("artifacts");
    fs_err::write(artifacts.join(".upload-left-by-a-crash"), b"partial").expect("plant");
    let stored = "cd".repeat(32);
    fs_err::write(artifacts.join(&stored), b"kept").expect("plant an artifact file");
    server.restart();
    assert!(uploads_in(&server).is_empty(), "{:?}", uploads_in(&server));
    assert!(artifacts.join(&stored).exists());
    assert!(
        server
            .stderr()
            .contains("removed the temporary files of unfinished uploads"),
        "{}",
        server.stderr_tail()
    );
}

/// A limit of zero open calls would refuse every long poll and watch: the server does not
/// start with it, and says which flag and range.
#[test]
fn a_server_that_would_refuse_every_long_poll_does_not_start() {
    let data = tempfile::tempdir().expect("data dir");
    let output = crate::common::tilebox_command(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--max-open-calls-per-connection",
        "0",
        "--data-dir",
    ])
    .arg(data.path())
    .output()
    .expect("server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("invalid value '0' for '--max-open-calls-per-connection")
            && stderr.contains("0 is not in 1..="),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "the server never listened");
}
