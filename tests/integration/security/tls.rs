//! TLS: a server started with `--tls-cert/--tls-key` from a CA made at test time (rcgen).
//! Our CLI and a runner trust it with `--ca-cert` / `TILEBOX_CA_CERT`, the official Python SDK
//! through its usual environment variables; a client without the CA is refused with a
//! certificate error, and bad certificate or key files stop the server at start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;

use crate::common::{
    RunnerProcess, TestServer, json_of, project, project_runner, stderr_of, tilebox, wait_until,
};

/// PEM files of a test CA and of a server certificate it signed for `localhost` and
/// `127.0.0.1`, in a temp dir.
pub(crate) struct TestPki {
    directory: tempfile::TempDir,
}

impl TestPki {
    pub(crate) fn new() -> Self {
        let directory = tempfile::Builder::new()
            .prefix("tilebox-pki-")
            .tempdir()
            .expect("cannot create a temp dir for the certificates");
        let (ca_pem, issuer) = new_ca("tilebox test CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server certificate names");
        // Python 3.13 verifies strictly (VERIFY_X509_STRICT): a leaf needs its issuer's key id.
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params
            .signed_by(&server_key, &issuer)
            .expect("sign the server certificate");
        for (name, pem) in [
            ("ca.pem", ca_pem),
            ("server.pem", server_cert.pem()),
            ("server.key", server_key.serialize_pem()),
        ] {
            fs_err::write(directory.path().join(name), pem).expect("cannot write a PEM file");
        }
        Self { directory }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A server serving TLS with the test certificate.
    fn server(&self) -> TestServer {
        let (cert, key) = (self.path("server.pem"), self.path("server.key"));
        TestServer::start_with(&["--tls-cert", utf8(&cert), "--tls-key", utf8(&key)])
    }
}

/// A self-signed CA: its certificate's PEM and the issuer that signs with it.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert.pem(), Issuer::new(params, key))
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

const APP: &str = r#"
from tilebox.workflows import ExecutionContext, Runner, Task

class Greet(Task):
    def execute(self, context: ExecutionContext) -> None:
        context.submit_subtask(Shout())

class Shout(Task):
    def execute(self, context: ExecutionContext) -> None:
        pass

runner = Runner(tasks=[Greet, Shout])
"#;

#[test]
fn cli_and_runner_complete_a_job_over_tls_with_the_ca_cert() {
    let pki = TestPki::new();
    let server = pki.server();
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );
    let ca = pki.ca();
    // A client that connects and never starts its handshake holds up no one else's.
    let address = server.url().trim_start_matches("https://");
    let silent = std::net::TcpStream::connect(address).expect("connect without speaking");

    let submitted = json_of(&server.tilebox(&[
        "--ca-cert",
        utf8(&ca),
        "--json",
        "job",
        "submit",
        "--name",
        "tls",
        "--task",
        "Greet",
        "--input",
        "",
    ]));
    let id = submitted["id"].as_str().expect("the job's id").to_string();
    // ...it was still waiting (not timed out and dropped) while the submission went through.
    silent.set_nonblocking(true).expect("nonblocking");
    let still_open = matches!(
        std::io::Read::read(&mut &silent, &mut [0u8; 1]),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(
        still_open,
        "the silent connection was dropped before the submission was served"
    );

    // The runner takes the CA from the environment.
    let project = project("tls", APP);
    let log = project.path().join("runner.log");
    let mut runner = RunnerProcess::spawn(
        project_runner(server.url(), project.path(), &[]).env("TILEBOX_CA_CERT", &ca),
        log,
    );
    let mut last = Value::Null;
    wait_until(
        format!("job {id} to complete over TLS"),
        Duration::from_secs(90),
        || {
            last = json_of(&server.tilebox(&["--ca-cert", utf8(&ca), "--json", "job", "get", &id]));
            last["state"] == "completed"
        },
    )
    .unwrap_or_else(|timed_out| {
        panic!(
            "{timed_out}; it is:\n{last:#}\n--- runner log ---\n{}\n--- server ---\n{}",
            runner.log(),
            server.stderr_tail()
        )
    });
    runner.kill();
    assert_eq!(
        last["execution_stats"]["tasks_by_state"]["computed"], 2,
        "{last:#}"
    );

    // Without --ca-cert the system roots apply; OpenSSL's SSL_CERT_FILE names them here.
    let output = crate::common::tilebox_command(&["--json", "job", "get", &id])
        .env("TILEBOX_API_URL", server.url())
        .env("SSL_CERT_FILE", &ca)
        .output()
        .expect("run tilebox");
    assert_eq!(json_of(&output)["state"], "completed");
    server.stop();
}

#[test]
fn a_client_without_the_ca_is_refused_with_a_certificate_error() {
    let pki = TestPki::new();
    let server = pki.server();

    // The system roots do not hold the test CA.
    let output = server.tilebox(&["job", "list"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains(&format!(
            "cannot connect to {}: TLS certificate error",
            server.url()
        )) && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint:") && stderr.contains("--ca-cert"),
        "{stderr}"
    );

    // Another CA is no better.
    let (other_pem, _) = new_ca("some other CA");
    let other = pki.path("other-ca.pem");
    fs_err::write(&other, other_pem).expect("write the other CA");
    let output = server.tilebox(&["--ca-cert", utf8(&other), "job", "list"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("UnknownIssuer"),
        "{}",
        stderr_of(&output)
    );

    // A runner without the CA never gets work: it keeps failing to connect and says why.
    let project = project("tls-refused", APP);
    let log = project.path().join("runner.log");
    let mut runner =
        RunnerProcess::spawn(&mut project_runner(server.url(), project.path(), &[]), log);
    wait_until(
        "the runner to log the certificate error",
        Duration::from_secs(60),
        || runner.log().contains("UnknownIssuer"),
    )
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n--- runner log ---\n{}", runner.log()));
    runner.kill();

    // A file that is not a certificate is named.
    let garbage = pki.path("garbage.pem");
    fs_err::write(&garbage, "not a certificate\n").expect("write");
    let output = server.tilebox(&["--ca-cert", utf8(&garbage), "job", "list"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr_of(&output).contains(&format!("{} holds no PEM certificate", garbage.display())),
        "{}",
        stderr_of(&output)
    );
    server.stop();
}

#[test]
fn a_scheme_that_does_not_match_the_server_is_refused() {
    let pki = TestPki::new();
    let ca = pki.ca();

    // https:// against a plaintext server: named as such, exit 1, with the fix.
    let plain = TestServer::start();
    let https = plain.url().replacen("http://", "https://", 1);
    let output = crate::common::tilebox_command(&["--ca-cert", utf8(&ca), "job", "list"])
        .env("TILEBOX_API_URL", &https)
        .output()
        .expect("run tilebox");
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to {https}: the server does not speak TLS"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("use an http:// URL"), "{stderr}");

    // http:// against a TLS server never gets an answer: no call goes through in clear.
    let tls = pki.server();
    let http = tls.url().replacen("https://", "http://", 1);
    let output = crate::common::tilebox_command(&["job", "list"])
        .env("TILEBOX_API_URL", &http)
        .output()
        .expect("run tilebox");
    assert!(!output.status.success(), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("QueryJobs failed"),
        "{}",
        stderr_of(&output)
    );
    plain.stop();
    tls.stop();
}

#[test]
fn unreadable_or_invalid_certificate_and_key_stop_the_server_naming_the_file() {
    let pki = TestPki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let missing = pki.path("missing.pem");
    let (_, other_issuer) = new_ca("unrelated");
    let other_key = pki.path("other.key");
    fs_err::write(&other_key, other_issuer.key().serialize_pem()).expect("write");
    let data = pki.path("data");

    for (cert_arg, key_arg, expected) in [
        (
            &missing,
            &key,
            format!("cannot read the TLS certificate {}", missing.display()),
        ),
        (
            &cert,
            &missing,
            format!("cannot read the TLS key {}", missing.display()),
        ),
        (
            &key,
            &key,
            format!(
                "the TLS certificate file {} holds no valid PEM certificate",
                key.display()
            ),
        ),
        (
            &cert,
            &cert,
            format!(
                "the TLS key file {} holds no valid PEM private key",
                cert.display()
            ),
        ),
        (
            &cert,
            &other_key,
            format!(
                "the TLS key {} cannot be used with the certificate {}",
                other_key.display(),
                cert.display()
            ),
        ),
    ] {
        let output = tilebox(&[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            utf8(&data),
            "--tls-cert",
            utf8(cert_arg),
            "--tls-key",
            utf8(key_arg),
        ]);
        let stderr = stderr_of(&output);
        assert_eq!(output.status.code(), Some(1), "{expected}: {stderr}");
        assert!(
            stderr.contains(&expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(stderr.contains("hint:"), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "it never listened: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    // One without the other is a usage error.
    let output = tilebox(&["server", "--tls-cert", utf8(&cert)]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("--tls-key"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn the_official_sdk_runs_a_job_and_exports_telemetry_over_tls() {
    let pki = TestPki::new();
    let server = pki.server();
    let ca = pki.ca();
    // grpcio's secure channel, and `requests` under the OTLP/HTTP exporters.
    let env: [(&str, &Path); 3] = [
        ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", &ca),
        ("SSL_CERT_FILE", &ca),
        ("REQUESTS_CA_BUNDLE", &ca),
    ];
    let summary: Value = crate::interop::run_script_with_env(&server, "telemetry.py", &[], &env);

    assert_eq!(summary["runner_exit_code"], 0, "{summary:#}");
    assert_eq!(summary["job"]["state"], "COMPLETED", "{summary:#}");
    assert_eq!(
        summary["job"]["tasks_by_state"]["COMPUTED"], 2,
        "{summary:#}"
    );
    assert_eq!(
        summary["runner_export_problems"],
        Value::Array(Vec::new()),
        "OTLP/HTTP exports over TLS: {summary:#}"
    );
    // QueryJobLogs/QueryJobSpans: the SDK gzips every call on an `https://` channel.
    assert_eq!(summary["logs_error"], Value::Null, "{summary:#}");
    assert_eq!(summary["spans_error"], Value::Null, "{summary:#}");
    let bodies: Vec<&str> = summary["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter_map(|log| log["body"].as_str())
        .collect();
    assert!(
        bodies.contains(&"root starting") && bodies.contains(&"child says hi"),
        "the runner's logs arrived over TLS: {bodies:?}"
    );
    let spans: Vec<&str> = summary["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .filter_map(|span| span["name"].as_str())
        .collect();
    assert!(
        spans.contains(&"task/Root") && spans.contains(&"task/Child"),
        "the runner's spans arrived over TLS: {spans:?}"
    );
    server.stop();
}
