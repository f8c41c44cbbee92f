//! TLS for the server's one port (rustls with the ring provider).
//!
//! Handshakes run concurrently, each in its own task with [`HANDSHAKE_TIMEOUT`], so a client
//! that connects and never speaks cannot hold up the accept loop. The server offers ALPN `h2`
//! and `http/1.1`: gRPC clients negotiate HTTP/2, OTLP/HTTP exporters (urllib3 offers only
//! `http/1.1`) HTTP/1.1; the connection itself detects the protocol from its first bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client gets to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 64;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the TLS {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the TLS certificate file {} holds no valid PEM certificate", path.display())]
    InvalidCertificate {
        path: PathBuf,
        #[source]
        source: Option<tokio_rustls::rustls::pki_types::pem::Error>,
    },
    #[error("the TLS key file {} holds no valid PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    InvalidKey {
        path: PathBuf,
        #[source]
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    #[error("the TLS key {} cannot be used with the certificate {}", key.display(), cert.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: tokio_rustls::rustls::Error,
    },
}

/// A loaded certificate chain and key, ready to accept connections.
#[derive(Clone)]
pub struct TlsConfig(Arc<ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// Loads the PEM certificate chain (leaf first) and the PEM private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, Error> {
        let cert_pem = read(cert, "certificate")?;
        let key_pem = read(key, "key")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| Error::InvalidCertificate {
                path: cert.to_path_buf(),
                source: Some(source),
            })?;
        if chain.is_empty() {
            return Err(Error::InvalidCertificate {
                path: cert.to_path_buf(),
                source: None,
            });
        }
        let private_key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| Error::InvalidKey {
                path: key.to_path_buf(),
                source,
            })?;
        let unusable = |source| Error::Unusable {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(unusable)?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(unusable)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    fs_err::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The TLS connections of `listener`: accepts TCP connections (TCP_NODELAY set), handshakes
/// each in its own task, and yields those that complete. The accept loop stops when the
/// returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: TlsConfig,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    let acceptor = TlsAcceptor::from(config.0);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // As the plaintext path does: the server reports the accept error.
                    if sender.send(Err(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY; dropping the connection");
                continue;
            }
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(?peer, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(?peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
