//! Plain HTTP/1.1 requests to the server's OTLP/HTTP routes and console over a TCP stream:
//! the exact headers and bytes a collector or browser would send, answered with status,
//! headers and body.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::TestServer;

/// An HTTP response: status code, headers (names lowercased) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name` (lowercase), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `POST path` with `headers` and `body` (its `Content-Length` set), answered in full.
pub fn http_post(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    http_request(server, "POST", path, headers, body)
}

/// `GET path` with `headers`, answered in full.
pub fn http_get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_request(server, "GET", path, headers, b"")
}

/// `method path` with `headers` and `body` (its `Content-Length` set), answered in full. A
/// `Host` among `headers` replaces the server's address.
pub fn http_request(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    request_to(server.url(), method, path, headers, body, &|| {
        server.stderr_tail()
    })
}

/// `GET url` (`http://HOST:PORT/path`) of a server this test did not start as a
/// [`TestServer`] (`tilebox dev`'s), answered in full.
pub fn http_get_url(url: &str) -> HttpResponse {
    let rest = url.strip_prefix("http://").expect("an http:// url");
    let (address, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    request_to(
        &format!("http://{address}"),
        "GET",
        path,
        &[],
        b"",
        &String::new,
    )
}

fn request_to(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    server_log: &dyn Fn() -> String,
) -> HttpResponse {
    let address = url.strip_prefix("http://").expect("http url");
    let mut stream = TcpStream::connect(address).expect("connect");
    // A deadline, not a pace: a server that never answers fails the test.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let host = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map_or(address, |(_, value)| *value);
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    // The server may answer and close before it read the whole body: the answer counts.
    let _ = stream.write_all(&request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "not an HTTP response: {:?}\n--- server stderr ---\n{}",
                String::from_utf8_lossy(&response),
                server_log()
            )
        });
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let mut body = response[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"))
    {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// The payload of a chunked body.
fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = chunked.windows(2).position(|window| window == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&chunked[..end])
                .split(';')
                .next()
                .unwrap_or_default()
                .trim(),
            16,
        )
        .expect("a chunk size");
        if size == 0 {
            break;
        }
        let start = end + 2;
        body.extend_from_slice(&chunked[start..start + size]);
        chunked = &chunked[start + size + 2..];
    }
    body
}
